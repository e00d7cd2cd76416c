"""Cut the bundled demo sample from ../shared/data/cranfield (run from the repo root).

    python samples/cut_cranfield.py ../shared/data/cranfield samples/cranfield

Keeps the first 20 queries (by numeric id) that have judgments, with their BM25 top-30
candidates in the flat layout, split over two files so that one query's candidates
sit in both; plus the qrels of those queries.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

QUERIES, TOP = 20, 30


def main(src: str, dest: str) -> None:
    cands = pq.read_table(Path(src) / "candidates.parquet")
    qrels = pq.read_table(Path(src) / "qrels.parquet")
    judged = sorted(set(qrels["query_id"].to_pylist()), key=int)[:QUERIES]
    keep = pa.array(judged)
    cands = cands.filter(pc.and_(pc.is_in(cands["query_id"], keep), pc.less_equal(cands["bm25_rank"], TOP)))
    order = sorted(range(len(cands)), key=lambda i: (int(cands["query_id"][i].as_py()), cands["bm25_rank"][i].as_py()))
    cands = cands.take(order)
    out = Path(dest)
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    half = len(cands) // 2 + TOP // 2  # mid-query, so that query spans both files
    pq.write_table(cands.slice(0, half), out / "candidates" / "part-0.parquet", compression="zstd")
    pq.write_table(cands.slice(half), out / "candidates" / "part-1.parquet", compression="zstd")
    pq.write_table(qrels.filter(pc.is_in(qrels["query_id"], keep)), out / "qrels.parquet", compression="zstd")
    print(f"{len(cands)} pairs, {len(judged)} queries -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
