"""Nightly reliability on a real cluster (`ray start --head`), with the driver as a subprocess:
rows are durable within 2 s of leaving the actor, and a driver SIGKILLed mid-run resumes
exactly once having lost only the batch in flight; a killed actor
costs nothing; an actor that dies every time stops the job after actor.max_restarts; and a row
that makes the model raise is quarantined while the rest of the job finishes.

Faults are injected through BATCH_RERANK_TEST_FAULTS (reranker_actors/faults.py), which
the job forwards to its workers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from reranker_actors.registry import build_reranker
from tests.conftest import job_config, published, sample_pairs, write_config, write_shards
from tests.durability import ManifestWatch, batches, time_to_durable
from tests.ray_head import RayHead, driver, finish

pytestmark = pytest.mark.slow  # (each over 25 s on 2 cores: make test-slow)

SHARDS = 6
FILES = 8


def setup_job(tmp_path: Path, model: str, **sections: Any) -> tuple[Path, pa.Table]:
    table = sample_pairs()
    step = len(table) // SHARDS
    in_dir = write_shards(tmp_path / "in", [table.slice(i * step, step) for i in range(SHARDS)])
    cfg = job_config(tmp_path, in_dir, model, **{"actor": {"batch_size": 25}, **sections})
    return write_config(tmp_path / "job.yaml", cfg), table


def scores_by_pair(model: str, table: pa.Table) -> dict[tuple[str, str], float]:
    reranker = build_reranker({"backend": "cross_encoder", "model": model, "dtype": "float32",
                               "max_length": 128}, torch.device("cpu"))
    scores = reranker.score(table["query"].to_pylist(), table["doc"].to_pylist()).values
    pairs = zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True)
    return dict(zip(pairs, scores.tolist(), strict=True))


def assert_exactly_once(out_dir: Path, table: pa.Table, expected: dict[tuple[str, str], float]) -> None:
    out = pads.dataset(str(out_dir)).to_table()
    pairs = list(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) == len(expected)  # none duplicated
    assert set(pairs) == set(expected)  # none lost
    got = np.array(out["score"].to_pylist())
    assert np.abs(got - np.array([expected[p] for p in pairs])).max() < 1e-5


def assert_no_texts(log: str, table: pa.Table) -> None:
    """Logs name ids only: no query or document text of the input appears in them."""
    texts = {t for t in table["query"].to_pylist() + table["doc"].to_pylist() if len(t) > 30}
    leaked = [t for t in texts if t in log]
    assert not leaked, f"{len(leaked)} input texts in the logs, e.g. {leaked[0][:80]!r}"


def counted(path: Path) -> int:
    return sum(int(n) for n in path.read_text().split()) if path.exists() else 0


def assert_durable_within(gap_s: float, left: list[tuple[float, set[tuple[str, str]]]],
                          durable: dict[tuple[str, str], float]) -> None:
    lags = time_to_durable(left, durable)
    assert None not in lags, f"{lags.count(None)} of {len(lags)} batches never became durable"
    assert max(lags) <= gap_s, f"a batch's pairs became durable {max(lags):.2f} s after they left the actor"


@pytest.mark.parametrize("kill_after_s", [0.5, 2.5])
def test_rows_are_durable_within_2_s_of_leaving_the_actor_and_a_kill_loses_only_the_batch_in_flight(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str, kill_after_s: float) -> None:
    """Every batch takes 4 s, far longer than the promise: any lag of a batch behind the
    next one would show. The nightly shape: many small files, every query spread over all.
    Killed 0.5 s after a batch left (inside the 2 s it may take to be durable) and 2.5 s after."""
    table = sample_pairs()
    files = [table.filter(pa.array(np.arange(len(table)) % FILES == i)) for i in range(FILES)]
    in_dir = write_shards(tmp_path / "in", files)
    config = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir,
                                                            actor={"batch_size": 100}))
    first_log, second_log, count = tmp_path / "batches-1", tmp_path / "batches-2", tmp_path / "scored-2"
    watch = ManifestWatch(tmp_path / "out")
    proc = driver(ray_head, config, {"sleep_per_batch": 4.0, "batch_log": str(first_log)})
    deadline = time.time() + 300
    while len(batches(first_log)) < 3:  # of 6
        assert proc.poll() is None, f"driver ended before the kill: {finish(proc)[1][-3000:]}"
        assert time.time() < deadline, "3 batches were not scored within 300 s"
        time.sleep(0.05)
    time.sleep(max(0.0, batches(first_log)[-1][0] + kill_after_s - time.time()))  # the 4th is in flight
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not published(tmp_path / "out")
    left = batches(first_log)
    assert len(left) == 3, "the kill was meant to land while the 4th batch was being scored"
    durable = watch.stop()
    assert_durable_within(2.0, [(end, pairs) for end, pairs in left if end <= killed_at - 2.0], durable)
    recent = set().union(*(pairs for end, pairs in left if end > killed_at - 2.0))
    lost = set().union(*(pairs for _, pairs in left)) - durable.keys()
    assert lost <= recent and durable.keys() <= set().union(*(pairs for _, pairs in left))
    if kill_after_s >= 2.0:
        assert not lost  # (every batch out of the pool was durable: lost is the batch in flight only)

    watch = ManifestWatch(tmp_path / "out")
    code, log = finish(driver(ray_head, config, {"sleep_per_batch": 4.0, "batch_log": str(second_log),
                                                 "count_file": str(count)}))
    assert code == 0, log[-4000:]
    assert_durable_within(2.0, batches(second_log), watch.stop())
    report = json.loads((tmp_path / "out" / "_run_report.json").read_text())
    assert report["resumed_pairs"] == len(durable)
    # The rerun's model saw exactly the pairs that were not durable, once each.
    rescored = [p for _, pairs in batches(second_log) for p in pairs]
    assert len(rescored) == counted(count) == report["scored_now"] == len(table) - len(durable)
    assert set(rescored) == set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(),
                                    strict=True)) - durable.keys()
    assert_exactly_once(tmp_path / "out", table, scores_by_pair(tiny_bert_dir, table))
    assert not (tmp_path / "out" / "_checkpoints").exists()  # removed after the commit


def test_an_actor_killed_mid_batch_is_restarted_and_the_output_is_exact(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str) -> None:
    config, table = setup_job(tmp_path, tiny_bert_dir)
    marker = tmp_path / "faults"
    marker.mkdir()
    code, log = finish(driver(ray_head, config, {"kill_on_call": 3, "marker_dir": str(marker)}))
    assert code == 0, log[-4000:]
    assert (marker / "killed").exists(), "the fault must have fired"
    assert_exactly_once(tmp_path / "out", table, scores_by_pair(tiny_bert_dir, table))


def test_an_actor_that_dies_on_every_try_stops_the_job_after_max_restarts(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str) -> None:
    """Ray Data restarts a dead actor and retries its batch without limit; the actor bounds it."""
    config, _ = setup_job(tmp_path, tiny_bert_dir)
    code, log = finish(driver(ray_head, config, {"kill_on_call": 1}, "actor.max_restarts=1"))
    assert code == 2, log[-4000:]
    assert "died and was restarted 2 times, more than actor.max_restarts (1)" in log
    assert not published(tmp_path / "out")


def test_a_row_that_makes_the_model_raise_is_quarantined_and_the_rest_finishes(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str) -> None:
    config, table = setup_job(tmp_path, tiny_bert_dir)
    bad = table.slice(123, 1).to_pylist()[0]
    faults = {"raise_on_doc_id": bad["doc_id"]}
    code, log = finish(driver(ray_head, config, faults))  # default on_invalid: error
    assert code == 2, log[-4000:]
    assert f"doc_id='{bad['doc_id']}'): scoring failed: InjectedFault" in log and "on_invalid: skip" in log
    assert not published(tmp_path / "out")
    assert_no_texts(log, table)

    code, log = finish(driver(ray_head, config, faults, "input.on_invalid=skip"))
    assert code == 0, log[-4000:]
    assert_no_texts(log, table)
    hit = [r for r in table.to_pylist() if r["doc_id"] == bad["doc_id"]]  # the doc may recur
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine").to_pylist()
    assert sorted((q["query_id"], q["doc_id"]) for q in quarantine) == sorted(
        (r["query_id"], r["doc_id"]) for r in hit)
    assert all(q["reason"].startswith("scoring failed: InjectedFault") for q in quarantine)
    assert all(os.path.basename(q["input_file"]).startswith("shard-") for q in quarantine)
    report = json.loads((tmp_path / "out" / "_run_report.json").read_text())
    assert (report["skipped"], report["quarantined"], report["rows_out"]) == (
        len(hit), len(hit), len(table) - len(hit))
    expected = scores_by_pair(tiny_bert_dir, table)
    for r in hit:
        del expected[(r["query_id"], r["doc_id"])]
    assert_exactly_once(tmp_path / "out", table, expected)
