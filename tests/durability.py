"""When scored rows become durable: the checkpoint manifest entries as they appear, and the
batches as they leave the actor (BATCH_RERANK_TEST_FAULTS' batch_log). Used by
tests/test_resilience.py and benchmarks/resume.py."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

Pair = tuple[str, str]


class ManifestWatch:
    """When each checkpoint manifest entry appeared (its file's mtime) and the pairs its part
    holds, read as it appears (a successful run removes them at its commit)."""

    def __init__(self, out: Path) -> None:
        self.out, self.stopped = out, threading.Event()
        self.seen: dict[Path, tuple[float, set[Pair]]] = {}
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.is_set():
            for path in self.out.glob("_checkpoints/*/manifest/*.json"):
                if path not in self.seen:
                    with contextlib.suppress(OSError, ValueError):  # (removed by a commit meanwhile)
                        written = path.stat().st_mtime
                        entry = json.loads(path.read_text())
                        part = pq.read_table(path.parent.parent / "parts" / entry["file"])
                        self.seen[path] = (written, set(zip(part["query_id"].to_pylist(),
                                                            part["doc_id"].to_pylist(), strict=True)))
            time.sleep(0.02)

    def stop(self) -> dict[Pair, float]:
        """When each pair became durable."""
        self.stopped.set()
        self.thread.join()
        return {pair: written for written, pairs in self.seen.values() for pair in pairs}


def batches(log: Path) -> list[tuple[float, set[Pair]]]:
    """(when it left the actor, its pairs) per batch, from the actor's batch_log."""
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [(b["end"], {tuple(p) for p in b["pairs"]}) for b in lines]


def time_to_durable(left: list[tuple[float, set[Pair]]], durable: dict[Pair, float]) -> list[float | None]:
    """Per batch, seconds from leaving the actor until its last pair was durable (None: never)."""
    return [max(durable[p] for p in pairs) - end if pairs <= durable.keys() else None for end, pairs in left]


def kill_after_batches(proc: subprocess.Popen, log: Path, count: int, settle_s: float = 1.5,
                       timeout_s: float = 300) -> None:
    """SIGKILL the driver `proc` once `count` batches left the actor (its batch_log) and
    `settle_s` more passed (their checkpoints written)."""
    deadline = time.time() + timeout_s
    while len(batches(log)) < count:
        assert proc.poll() is None, "the driver ended before the kill"
        assert time.time() < deadline, f"{count} batches were not scored within {timeout_s:.0f} s"
        time.sleep(0.05)
    time.sleep(settle_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
