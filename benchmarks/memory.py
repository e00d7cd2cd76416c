"""Peak memory of the whole job as the input grows: 10k pairs against 100k pairs.

    .venv/bin/python benchmarks/memory.py [--small 10000] [--large 100000]

The input streams when peak RSS for the large input stays within 1.3x of the small one.
Input: SciFact BM25 candidates (texts and all), repeated under fresh query ids until the
wanted number of pairs, in Parquet files of 10k rows. Model: a tiny random BERT with the
real MiniLM tokenizer (tests/tiny_models.py), so the pipeline's memory is what grows, not
the model's, and 100k pairs take minutes. Each run is its own process (the driver, which
starts a local Ray: GCS, raylet, workers, object store are its descendants); RSS is summed
over that process tree every 0.1 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import run_measured
from tests.tiny_models import build_tiny_bert

ROWS_PER_FILE = 10_000


def write_input(source: Path, pairs: int, dest: Path) -> None:
    base = pq.read_table(source, columns=["query_id", "query", "doc_id", "doc"])
    base = base.set_column(0, "query_id", base["query_id"].cast(pa.string()))
    dest.mkdir(parents=True)
    written, copy = 0, 0
    while written < pairs:
        part = base.slice(0, min(base.num_rows, pairs - written))
        ids = pa.array([f"{q}#{copy}" for q in part["query_id"].to_pylist()])
        part = part.set_column(0, "query_id", ids)
        for start in range(0, part.num_rows, ROWS_PER_FILE):
            pq.write_table(part.slice(start, ROWS_PER_FILE), dest / f"part-{copy:04d}-{start:06d}.parquet")
        written += part.num_rows
        copy += 1


def run_job(work: Path, model: str) -> tuple[int, str]:
    cfg = {"input": {"path": str(work / "in")}, "output": {"path": str(work / "out")},
           "reranker": {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 256},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": 1, "batch_size": 512},
           "ray": {"num_cpus": 2}}
    (work / "job.yaml").write_text(yaml.safe_dump(cfg))
    code, out, peak = run_measured([sys.executable, "-m", "jobs.rerank", "--config", str(work / "job.yaml")],
                                   stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    if code != 0:
        raise RuntimeError(f"job on {work} failed (exit {code}):\n{out[-3000:]}")
    return peak, next((line.strip() for line in out.splitlines() if "pairs " in line and "read" in line), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact/candidates.parquet")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    model = str(build_tiny_bert(root / "model"))
    rows = []
    for pairs in (args.small, args.large):
        work = root / f"pairs-{pairs}"
        write_input(Path(args.data), pairs, work / "in")
        peak, counts = run_job(work, model)
        rows.append((pairs, peak, counts))
    print("| pairs | peak RSS (driver + local Ray) | ratio to the smallest | job's counts |")
    print("|---|---|---|---|")
    for pairs, peak, counts in rows:
        print(f"| {pairs:,} | {peak / 2**20:,.0f} MiB | {peak / rows[0][1]:.2f} | {counts} |")


if __name__ == "__main__":
    main()
