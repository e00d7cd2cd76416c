"""How the benchmarks measure (benchmarks/common.py, throughput.py, gpu_check.py): what they
count, what they flag, the order they run settings in, and what they compare with."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, throughput
from benchmarks.common import alternating, spread, timed, validity
from reranker_actors.registry import build_reranker
from tests.conftest import sample_pairs


def test_packed_batches_are_counted_sequence_by_sequence(tiny_bert_dir: str) -> None:
    rows = sample_pairs().slice(0, 40)
    queries, docs = rows["query"].to_pylist(), rows["doc"].to_pylist()
    config = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 128,
              "max_tokens_per_batch": 1024}
    counters, forwards = {}, {}
    for path in ("padded", "packed"):
        reranker = build_reranker(config, torch.device("cpu"))
        if path == "packed":
            reranker.use_packing()
        counters[path] = throughput.hook(reranker.model)
        reranker.model.base_model.register_forward_pre_hook(lambda *_, p=path: forwards.update({p: forwards.get(
            p, 0) + 1}))
        reranker.score(queries, docs)
    lengths = sorted(int(n) for n in reranker.encoder.encode_pairs(queries, docs).lengths)
    assert forwards["packed"] < len(queries)  # (several sequences per packed row)
    for path, counter in counters.items():
        assert sorted(counter.lengths) == lengths, path
        assert counter.real == sum(lengths)
    assert counters["packed"].computed == counters["packed"].real  # no padding
    assert counters["padded"].computed > counters["padded"].real


def test_a_row_doing_more_useful_work_than_it_was_busy_is_invalid() -> None:
    assert validity(20.9, 16.0).startswith("INVALID: useful FLOPs 20.9% of peak > busy 16%")
    assert validity(59.4, 92.0) == "" and validity(None, 10.0) == "" and validity(50.0, None) == ""


def test_settings_alternate_and_each_runs_every_round() -> None:
    assert alternating(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]
    order = alternating(["x", "y", "z"], 4)
    assert all(order.count(s) == 4 for s in "xyz") and order[:6] == ["x", "y", "z", "z", "y", "x"]
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)


def spin_cpu(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_a_timed_pass_is_wall_time_and_busy_is_cpu_over_wall() -> None:
    """busy x wall is the CPU the pass used, however loaded the machine is (a fixed
    busy share would fail on a CI host whose other tenants take half the core)."""
    _, idle = timed(lambda: time.sleep(0.2), "cpu", 1)
    _, spinning = timed(lambda: spin_cpu(0.1), "cpu", 1)
    assert idle.seconds >= 0.2 and idle.busy_pct * idle.seconds / 100 < 0.02
    assert 0.1 <= spinning.busy_pct * spinning.seconds / 100 < 0.13
    assert spinning.window[1] - spinning.window[0] == pytest.approx(spinning.seconds, abs=0.05)


def row(contender: str, pairs_per_s: float, key: str = "bge", invalid: str = "") -> gpu_check.Row:
    return gpu_check.Row(key, key, contender, pairs_per_s=pairs_per_s, invalid=invalid)


def test_the_baseline_is_the_best_of_its_sweep_and_invalid_rows_are_not_read() -> None:
    sweep = [row("CrossEncoder.predict batch 32", 300.0), row("CrossEncoder.predict batch 64", 500.0),
             row("CrossEncoder.predict batch 128", 450.0)]
    speedup = gpu_check.targets([*sweep, row("ours bare", 1000.0)])[0]
    assert speedup["value"] == pytest.approx(2.0) and speedup["pass"] is True and "batch 64" in speedup["shown"]
    fast_but_impossible = row("CrossEncoder.predict batch 256", 5000.0, invalid="INVALID: ...")
    assert gpu_check.targets([*sweep, fast_but_impossible, row("ours bare", 1000.0)])[0]["value"] == pytest.approx(2.0)
    assert gpu_check.targets([*sweep, row("ours bare", 1000.0, invalid="INVALID: ...")])[0]["pass"] is None
    card = [row("card recipe chunks of 8", 50.0, "qwen3-0.6b"), row("card recipe chunks of 64", 200.0, "qwen3-0.6b"),
            row("job 1x1 GPU", 500.0, "qwen3-0.6b")]
    over_card = next(t for t in gpu_check.targets(card) if "card recipe" in t["target"])
    assert over_card["value"] == pytest.approx(2.5) and over_card["pass"] is False


def test_recording_replaces_the_figures_it_measures_again(tmp_path: Path) -> None:
    def figure(contender: str, device: str, pairs_per_s: float) -> dict:
        return {"model": "minilm", "device": device, "dtype": "float32", "contender": contender, "data": "d",
                "pairs_per_s": pairs_per_s}

    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"figures": [figure("ours", "CPU a", 1.0), figure("ours", "NVIDIA H200", 2.0),
                                            figure("job", "CPU a", 3.0)]}))
    throughput.record(path, [figure("ours", "CPU a", 10.0)])
    rows = json.loads(path.read_text())["figures"]
    assert [(r["contender"], r["device"], r["pairs_per_s"]) for r in rows] == [
        ("ours", "NVIDIA H200", 2.0), ("job", "CPU a", 3.0), ("ours", "CPU a", 10.0)]
