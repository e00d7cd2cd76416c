"""What a crash costs: the whole job run once, then run again with its driver SIGKILLed at
60% of that run's wall time, then rerun into the same output (the "rerun the same command"
contract). Prints both times, the ratio, the pairs that were durable at the kill, and
checks the resumed output: every pair exactly once, scores equal to the full run's.

    .venv/bin/python benchmarks/resume.py [--data ../shared/data/cranfield] [--queries 48] [--top 30] [--files 8]

Input: the first `--queries` queries' BM25 top `--top` (48 x 30 = 1,440 pairs), cut into
`--files` Parquet files row by row, so every query is spread over every file: the nightly
shape of many small files written by many upstream tasks. Model: MiniLM-L6 cross-encoder
(real all-MiniLM-L6-v2 weights, seeded random head), float32, on a local Ray the job starts
(2 CPUs, 1 actor, 2 threads). Each run is `python -m jobs.rerank` as a subprocess in its own
process group; the kill stops that group (the driver and the local Ray it started).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import model_dir

REPO = Path(__file__).resolve().parents[1]


def spread_input(data: Path, queries: int, top: int, files: int, dest: Path) -> pa.Table:
    table = pq.read_table(data / "candidates.parquet")
    first = table["query_id"].unique()[:queries]
    table = table.filter(pc.and_(pc.is_in(table["query_id"], first), pc.less_equal(table["bm25_rank"], top)))
    dest.mkdir(parents=True)
    for i in range(files):
        pq.write_table(table.filter(pa.array(np.arange(len(table)) % files == i)), dest / f"part-{i}.parquet")
    return table


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.rerank", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run(config: Path) -> float:
    began = time.perf_counter()
    proc = start(config)
    if proc.wait() != 0:
        raise SystemExit(f"the job failed (config {config})")
    return time.perf_counter() - began


def scores(out: Path) -> dict[tuple[str, str], float]:
    table = pads.dataset(str(out)).to_table(columns=["query_id", "doc_id", "score"])
    pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    if len(set(pairs)) != len(pairs):
        raise SystemExit(f"{out}: {len(pairs) - len(set(pairs))} duplicated pairs")
    return dict(zip(pairs, table["score"].to_pylist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cranfield")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--at", type=float, default=0.6, help="kill at this share of the full run's time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="resume-"))
    table = spread_input(args.data, args.queries, args.top, args.files, work / "in")
    model = model_dir("minilm", None, None)
    configs = {}
    for name in ("full", "killed"):
        cfg = {"input": {"path": str(work / "in"), "columns": {"score": "bm25_score", "rank": "bm25_rank"}},
               "output": {"path": str(work / name)},
               "reranker": {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 512},
               "actor": {"pool_size": 1, "num_cpus": 1, "threads": 2, "batch_size": 32}, "ray": {"num_cpus": 2}}
        configs[name] = work / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))

    full_s = run(configs["full"])
    proc = start(configs["killed"])
    time.sleep(args.at * full_s)
    if proc.poll() is not None:
        raise SystemExit("the run ended before the kill")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    durable = sum(json.loads(p.read_text())["rows"] for p in (work / "killed").glob("_checkpoints/*/manifest/*.json"))
    rerun_s = run(configs["killed"])
    report = json.loads((work / "killed" / "_run_report.json").read_text())

    full, resumed = scores(work / "full"), scores(work / "killed")
    if set(full) != set(resumed) or len(full) != len(table):
        raise SystemExit(f"pairs differ: full run {len(full)}, resumed {len(resumed)}, input {len(table)}")
    delta = max(abs(full[p] - resumed[p]) for p in full)
    print(f"input: {len(table):,} pairs ({args.queries} queries x top {args.top}) in {args.files} files, "
          f"every query in every file; MiniLM-L6 cross-encoder, float32, local Ray on {os.cpu_count()} CPUs\n")
    print("| run | wall s | pairs scored | note |")
    print("|---|---|---|---|")
    print(f"| full | {full_s:.1f} | {len(table):,} | |")
    print(f"| killed at {args.at:.0%} | {args.at * full_s:.1f} | | {durable:,} pairs durable at the kill |")
    print(f"| rerun | {rerun_s:.1f} | {report['scored_now']:,} | {report['resumed_pairs']:,} resumed |")
    print(f"\nrerun / full = {rerun_s / full_s:.2f}; output: {len(resumed):,} pairs, each once; "
          f"max |score - full run's| = {delta:.1e}")


if __name__ == "__main__":
    main()
