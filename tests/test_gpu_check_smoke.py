"""benchmarks/gpu_check.py --smoke on the CPU: the GPU check's every code path a CPU can take
(the worker processes, each sweep's first point, the fp32 references, the in-memory 8B, the
compared settings, its own Ray head and the job rows, the targets), with tiny models on the
bundled sample, so a plumbing bug never costs GPU minutes. It starts its own `ray start
--head` on loopback and stops it by its PID, like the other e2e tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
BUDGET_S = 300  # what the smoke run may take on a 2-core machine


@pytest.fixture
def ray_head() -> None:
    """(Named as conftest's `ray_head`, which it overrides here, so that this test is in the
    e2e tier and the session's head is not started for it: the smoke run starts its own.)"""
    return None


@pytest.mark.usefixtures("ray_head")
def test_the_smoke_run_takes_every_cpu_path_within_five_minutes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_SCIFACT", "GPU_TOKENIZERS", "RAY_ADDRESS")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke"], cwd=REPO,
                          env=env | {"OUT": str(tmp_path)}, capture_output=True, text=True, timeout=2 * BUDGET_S)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(r["key"], r["contender"]): r for r in data["rows"]}
    assert not [(k, r["error"]) for k, r in rows.items() if r["error"]]
    assert data["info"]["data"] == str(REPO / "samples" / "cranfield" / "candidates")  # (never ../shared)
    expected = {
        ("bge", "CrossEncoder.predict fp32 (Δ reference)"), ("bge", "CrossEncoder.predict batch 32"),
        ("bge", "tokenize only (encode_pairs)"), ("bge", "ours bare"), ("bge", "job 1x0 GPU"),
        ("qwen3-0.6b", "card recipe fp32 (Δ reference)"), ("qwen3-0.6b", "card recipe chunks of 8"),
        ("qwen3-0.6b", "ours bare"), ("qwen3-0.6b", "job 1x0 GPU"),
        ("minilm", "CrossEncoder.predict batch 32"), ("minilm", "ours bare"),
        ("qwen3-8b", "ours fp32 (Δ reference)"), ("qwen3-8b", "ours bare"),
        ("minilm", "compile: ours padded"), ("minilm", "compile: ours compiled"),
        ("minilm", "attention: ours padded"), ("minilm", "attention: ours packed")}
    assert expected <= set(rows), sorted(expected - set(rows))
    timed = [r for r in rows.values() if r["dtype"] and r["pairs_per_s"] and not r["contender"].startswith("job")]
    for r in timed:  # each contender measured in its own worker, its setup noted, its validity checked
        assert "torch" in r["setup"] and "TOKENIZERS_PARALLELISM" in r["setup"], r["contender"]
        assert r["busy_pct"] is not None and r["peak_pct"] is not None and not r["invalid"], r["contender"]
    for key in ("bge", "minilm", "qwen3-0.6b"):  # fp32 on both sides here, or bf16 where the CPU has it
        assert rows[(key, "ours bare")]["max_abs_delta"] < 2e-2
    assert "median of 3 rounds" in rows[("minilm", "compile: ours compiled")]["note"]
    assert len(data["targets"]) == 8
    assert seconds < BUDGET_S, f"the smoke run took {seconds:.0f} s"
