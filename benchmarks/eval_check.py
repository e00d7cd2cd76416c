"""jobs.evaluate against pytrec_eval on the full collections in ../shared/data.

    .venv/bin/python benchmarks/eval_check.py [--data-root ../shared/data] [--k 10]
        [--reranked scifact=/tmp/eval-scifact cranfield=/tmp/eval-cranfield]

For each collection: the BM25 run (`bm25_score` of candidates.parquet) and, given an
output directory of `jobs.rerank` on that collection, its reranked run (its `rank` column). Prints
our means, pytrec_eval's, and the largest per-query |difference| over every metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fsspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.evaluate import Qrels, Run, evaluate, load_qrels, mean, read_run
from tests.test_evaluate import pytrec_reference


def run_of(paths: list[str], qrels: Qrels, column: str) -> Run:
    fs, _ = fsspec.core.url_to_fs(paths[0])
    return read_run(fs, paths, set(qrels), column)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--reranked", nargs="*", default=[], metavar="COLLECTION=OUTPUT_DIR")
    args = parser.parse_args()
    reranked = dict(item.split("=", 1) for item in args.reranked)
    k = args.k
    print(f"| collection | run | queries | ndcg@{k} | mrr@{k} | recall@{k} | map | pytrec_eval ndcg@{k} "
          "| max per-query abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("scifact", "cranfield"):
        root = Path(args.data_root) / name
        qrels = load_qrels(str(root / "qrels.parquet"))
        runs = {"bm25": run_of([str(root / "candidates.parquet")], qrels, "bm25_score")}
        if name in reranked:
            out = Path(reranked[name])
            runs["reranked"] = run_of(sorted(str(p) for p in out.glob("part-*.parquet")), qrels, "rank")
        for label, run in runs.items():
            ours, ref = evaluate(run, qrels, k), pytrec_reference(run, qrels, k)
            assert set(ours) == set(ref), f"{name} {label}: different query sets"
            diff = max(abs(ours[q][m] - ref[q][m]) for q in ref for m in ref[q])
            ours_mean, ref_mean = mean(ours), mean(ref)
            print(f"| {name} | {label} | {len(ours)} | {ours_mean[f'ndcg@{k}']:.4f} | {ours_mean[f'mrr@{k}']:.4f} "
                  f"| {ours_mean[f'recall@{k}']:.4f} | {ours_mean['map']:.4f} | {ref_mean[f'ndcg@{k}']:.4f} "
                  f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
