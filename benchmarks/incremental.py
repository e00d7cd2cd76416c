"""Incremental nightly runs with the score cache: what a second night costs when 10% of the
pairs changed, and whether its output equals a full rescoring.

    .venv/bin/python benchmarks/incremental.py [--data ../shared/data/cranfield] [--queries 50] [--changed 0.1]

Data: the first `--queries` queries' BM25 top 100 from ../shared/data. Night 2 edits the
document text of a seeded random `--changed` share of the pairs (so their cache keys
change) and keeps the rest. Model: MiniLM-L6 cross-encoder (real all-MiniLM-L6-v2 weights,
seeded random head), float32, so "equal to a full rescoring" can be checked to float32
rounding. Each night is the whole job (local Ray, 1 actor, 2 threads); the score stage's
wall time includes starting the actor and loading the model (shown apart as start-up).
Four runs, one process: an untimed warm-up night (the same job on the first 100 pairs, no
cache: the process's imports, the first Ray start, the model files read from disk), so that
no timed night starts cold; night 1 (empty cache); night 2 (cache from night 1); and night 2
again without the cache (the full rescoring its output is compared with).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import model_dir


def night_two(table: pa.Table, share: float, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    changed = np.random.default_rng(seed).random(len(table)) < share
    docs = [f"Revised: {d}" if c else d for d, c in zip(table["doc"].to_pylist(), changed, strict=True)]
    return table.set_column(table.column_names.index("doc"), "doc", pa.array(docs, pa.string())), changed


def run_night(work: Path, name: str, table: pa.Table, model: str, cache: Path | None) -> tuple[dict, pa.Table]:
    from jobs.config import load_config
    from jobs.rerank import run

    (work / name / "in").mkdir(parents=True)
    pq.write_table(table, work / name / "in" / "pairs.parquet")
    cfg = {"input": {"path": str(work / name / "in")}, "output": {"path": str(work / name / "out")},
           "reranker": {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 512},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": 2, "batch_size": 256}, "ray": {"num_cpus": 2}}
    if cache:
        cfg["cache"] = {"path": str(cache)}
    (work / name / "job.yaml").write_text(yaml.safe_dump(cfg))
    summary = run(load_config(work / name / "job.yaml"))
    return summary.to_dict(), pads.dataset(str(work / name / "out")).to_table()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/cranfield")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--changed", type=float, default=0.1)
    args = parser.parse_args()
    table = pq.read_table(Path(args.data) / "candidates.parquet", columns=["query_id", "query", "doc_id", "doc"])
    ids = list(dict.fromkeys(table["query_id"].to_pylist()))[: args.queries]
    table = table.filter(pc.is_in(table["query_id"], pa.array(ids, table["query_id"].type)))
    second, changed = night_two(table, args.changed)
    model = model_dir("minilm", None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    cache = work / "cache"
    run_night(work, "warm-up", table.slice(0, min(100, len(table))), model, None)  # (untimed: see the docstring)
    one, _ = run_night(work, "night1", table, model, cache)
    two, incremental = run_night(work, "night2", second, model, cache)
    full, rescored = run_night(work, "full", second, model, None)

    def by_pair(t: pa.Table, column: str) -> dict:
        keys = zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist(), strict=True)
        return dict(zip(keys, t[column].to_pylist(), strict=True))

    inc, ref = by_pair(incremental, "score"), by_pair(rescored, "score")
    inc_rank, ref_rank = by_pair(incremental, "rank"), by_pair(rescored, "rank")
    keys = list(zip(second["query_id"].to_pylist(), second["doc_id"].to_pylist(), strict=True))
    unchanged = [k for k, c in zip(keys, changed, strict=True) if not c]
    diff = max(abs(inc[k] - ref[k]) for k in unchanged)
    same_rank = np.mean([inc_rank[k] == ref_rank[k] for k in keys])
    print(f"{len(ids)} queries x top 100 from {args.data}, {len(table):,} pairs; night 2 changes "
          f"{int(changed.sum()):,} ({changed.mean():.1%}); MiniLM-L6 cross-encoder, float32, 1 actor x 2 threads; "
          "every night below ran after an untimed warm-up night, so none starts cold\n")
    print("| run | pairs | scored by the model | from the cache | score stage s | of it start-up s | vs night 1 "
          "| vs the full rescoring |")
    print("|---|---|---|---|---|---|---|---|")
    base, rescoring = one["seconds"]["score"], full["seconds"]["score"]
    for label, r in (("night 1 (empty cache)", one), ("night 2 (cache)", two), ("night 2, full rescoring", full)):
        score = r["seconds"]["score"]
        print(f"| {label} | {r['pairs']:,} | {r['scored_now']:,} | {r['cached']:,} | {score:.1f} | "
              f"{r['score_startup_s']:.1f} | {score / base:.0%} | {score / rescoring:.0%} |")
    print(f"\nnight 2 vs its full rescoring: unchanged pairs max |score diff| {diff:.2e}; "
          f"ranks identical for {same_rank:.2%} of all {len(keys):,} pairs")


if __name__ == "__main__":
    main()
