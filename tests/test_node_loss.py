"""Losing a machine mid-run, on a real multi-node Ray on loopback (tests/multinode.py): a head
with no CPUs, where only the job's driver runs, and two worker nodes that alone offer the
custom resource `scorer_node` the scoring actors ask for, so each worker hosts one of the two
scoring actors and the read and normalize tasks run on the workers too.

- A worker node is SIGKILLed mid-run (its process group: `ray start`, raylet and object
  store, agents, workers), as a lost machine: one whose scoring actor is running a batch
  then, after both actors have started and some batches are done. The job finishes on the surviving node with no
  manual step and the output holds every input pair exactly once with the direct scores:
  Ray restarts the lost actor on the survivor (Ray Data's actors have max_restarts=-1 and
  max_task_retries=-1) and retries its batches, and rebuilds the blocks that were in the lost
  node's object store from their lineage (the driver, on the head, owns them). Each worker
  offers room for both actors (scorer_node: 2, and a CPU left for reads), so the restarted
  actor starts at once instead of waiting for the end of the input.
- The driver is SIGKILLed mid-run and the same command run again on the same cluster: the
  rerun resumes from the checkpoints, scoring fewer pairs than the input, and the output is
  again exactly once.

Work counts come from BATCH_RERANK_TEST_FAULTS' count_file: every batch a model scored,
on any node, appends its pair count, so the sum is the work done, redone work included.
(The driver-kill test runs first: it leaves both workers up for the node-loss test.)
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import job_config, published, sample_pairs, write_config, write_shards
from tests.multinode import MultiNodeCluster, NodeProcess, multinode_cluster
from tests.ray_head import RayHead, driver
from tests.test_resilience import assert_exactly_once, scores_by_pair

SHARDS = 6
WORKERS = 2
WORKER_CPUS = 2  # two actors of 0.5 CPU and one CPU for reads, normalize and rebuilds
WORKER_RESOURCES = {"scorer_node": 2}  # room for both actors, should the other node go
DRIVER_TIMEOUT_S = 240
SCORER = "MapWorker(MapBatches(ScoreActor))"  # the title of a scoring actor's process

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster() -> Iterator[MultiNodeCluster]:
    with multinode_cluster(WORKERS, WORKER_CPUS, WORKER_RESOURCES) as c:
        yield c


@pytest.fixture
def ray_head(cluster: MultiNodeCluster) -> RayHead:
    """The multi-node cluster's head, with both workers up, for tests/ray_head.py's `driver()`.
    (Named as conftest's `ray_head`, which it overrides here, so that these tests are in the
    e2e tier and the session's single-node head is not started for them.)"""
    missing = WORKERS - len(cluster.live_workers())
    if missing:
        cluster.add_workers(missing, WORKER_CPUS, WORKER_RESOURCES)
    # A stall fails within 2 minutes instead of Ray Data's 30 (no progress at all that long).
    return RayHead("", cluster.head.gcs, cluster.head.env | {"RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120"})


@pytest.fixture(scope="module")
def expected(tiny_bert_dir: str) -> dict[tuple[str, str], float]:
    """The direct scores of the sample's pairs, by (query_id, doc_id)."""
    return scores_by_pair(tiny_bert_dir, sample_pairs())


def setup_job(tmp_path: Path, model: str) -> tuple[Path, pa.Table]:
    table = sample_pairs()  # 600 pairs
    step = len(table) // SHARDS
    in_dir = write_shards(tmp_path / "in", [table.slice(i * step, step) for i in range(SHARDS)])
    cfg = job_config(tmp_path, in_dir, model, actor={
        "pool_size": 2, "num_cpus": 0.5, "threads": 1, "batch_size": 25, "resources": {"scorer_node": 1}})
    return write_config(tmp_path / "job.yaml", cfg), table


def counted(path: Path) -> int:
    return sum(int(n) for n in path.read_text().split()) if path.exists() else 0


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the driver did not finish within {DRIVER_TIMEOUT_S} s:\n{out[-4000:]}")
    return proc.returncode, out


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before {what}:\n{finish(proc)[1][-4000:]}")
        assert time.time() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.1)


def checkpointed(out: Path) -> bool:
    """Whether the run has committed a checkpoint (a manifest entry; see jobs/checkpoints.py)."""
    return any(p.parent.name == "manifest" for p in (out / "_checkpoints").rglob("*.json"))


def scoring_now(cluster: MultiNodeCluster) -> NodeProcess | None:
    """A worker node whose scoring actor (a Ray Data MapWorker) is running a batch now."""
    busy = [w for w in cluster.live_workers()
            if any(title.endswith(".submit") for title in w.processes(SCORER).values())]
    return busy[-1] if busy else None


def test_a_driver_killed_mid_run_on_a_multi_node_cluster_resumes_exactly_once(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str, expected: dict) -> None:
    config, table = setup_job(tmp_path, tiny_bert_dir)
    first_count, second_count = tmp_path / "scored-1", tmp_path / "scored-2"
    out = tmp_path / "out"
    # (slow batches, so the kill lands mid-run: 24 batches x 1 s on 2 actors)
    began = time.time()
    proc = driver(ray_head, config, {"sleep_per_batch": 1.0, "count_file": str(first_count)})
    wait_for("a checkpoint after a third of the pairs",
             lambda: counted(first_count) >= len(table) // 3 and checkpointed(out), proc)
    proc.kill()
    first_s = time.time() - began
    proc.wait(timeout=30)
    before = counted(first_count)
    assert before < len(table), "the kill must land mid-run"
    assert not published(out)

    began = time.time()
    code, log = finish(driver(ray_head, config, {"count_file": str(second_count)}))
    assert code == 0, log[-4000:]
    report = json.loads((out / "_run_report.json").read_text())
    rerun = counted(second_count)
    print(f"\ndriver kill: the first run scored {before} pairs before its driver was killed at {first_s:.1f} s; "
          f"the rerun scored {rerun} of {len(table)} in {time.time() - began:.1f} s")
    assert 0 < rerun == report["scored_now"] < len(table)  # the checkpoints saved work
    assert_exactly_once(out, table, expected)


def test_a_worker_node_lost_mid_run_the_job_finishes_on_the_survivor_exactly_once(
        ray_head: RayHead, cluster: MultiNodeCluster, tmp_path: Path, tiny_bert_dir: str,
        expected: dict) -> None:
    config, table = setup_job(tmp_path, tiny_bert_dir)
    count, started = tmp_path / "scored", tmp_path / "actors"
    began = time.time()
    proc = driver(ray_head, config, {"sleep_per_batch": 0.4, "count_file": str(count),
                                     "resources_file": str(started)})
    # Kill a node while its actor scores a batch, once both actors are up and 4 batches are
    # scored (the input has been listed by then: a node lost while the footer-reading actor
    # lists the files fails the run, which a rerun then resumes).
    wait_for("4 scored batches", lambda: lines(started) >= 2 and lines(count) >= 4, proc)
    deadline = time.time() + 30
    while (victim := scoring_now(cluster)) is None:
        assert proc.poll() is None and time.time() < deadline, "no scoring actor was seen running a batch"
        time.sleep(0.05)
    survivor = next(w for w in cluster.live_workers() if w is not victim)
    at_kill, actors = counted(count), victim.processes(SCORER)
    victim.kill()
    killed = time.time()

    code, log = finish(proc)
    took = time.time() - killed
    scored = counted(count)
    print(f"\nnode loss: {victim.name} (actor pids {actors}) killed at {killed - began:.1f} s, after {at_kill} of "
          f"{len(table)} pairs were scored; the job finished {took:.1f} s later; pairs scored in all {scored} "
          f"({scored - len(table)} redone, {scored / len(table):.2f}x the input); actor starts {lines(started)}")
    assert code == 0, log[-4000:]
    assert survivor.alive() and not victim.alive()
    assert_exactly_once(tmp_path / "out", table, expected)
    assert lines(started) >= 3, "the lost node's actor must have been restarted on the survivor"
    assert len(table) <= scored <= 2 * len(table)  # at least once, and what was redone is bounded
