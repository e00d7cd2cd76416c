"""Ranking metrics against graded relevance judgments, computed as trec_eval does.

    python -m jobs.evaluate --run <ranked output dir> --qrels <qrels.parquet> [--k 10]

Definitions (trec_eval / pytrec_eval, which the tests check against):
  - nDCG@k: gain = relevance grade (negative grades count as 0), discount log2(rank + 1),
    ideal from all judged docs.
  - MRR@k: 1 / rank of the first doc with grade > 0 within the top k, else 0.
  - Recall@k: relevant docs (grade > 0) in the top k / all relevant docs.
  - MAP: mean over relevant docs of precision at their rank, over the whole ranking.
A query counts when it has judgments and at least one ranked doc. Docs with equal
scores are ordered by doc id descending, as trec_eval does.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.errors import InputError, UserError
from jobs.fs import arrow_filesystem, visible_parquet
from jobs.schema import DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE, QUERY_ID, RANK
from jobs.text_formats import read_qrels_text

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]  # query -> doc -> score (higher is better)


def ranked(scores: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_at_k(docs: list[str], rels: dict[str, int], k: int) -> float:
    dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(docs: list[str], rels: dict[str, int], k: int) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(docs[:k]) if rels.get(d, 0) > 0), 0.0)


def recall_at_k(docs: list[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(docs[:k])) / len(relevant) if relevant else 0.0


def average_precision(docs: list[str], rels: dict[str, int]) -> float:
    num_rel = sum(r > 0 for r in rels.values())
    hits, total = 0, 0.0
    for i, d in enumerate(docs):
        if rels.get(d, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / num_rel if num_rel else 0.0


def evaluate(run: Run, qrels: Qrels, k: int = 10) -> dict[str, dict[str, float]]:
    """Per-query metrics for every query that has judgments and ranked docs."""
    out = {}
    for qid, scores in run.items():
        if qid not in qrels or not scores:
            continue
        docs, rels = ranked(scores), qrels[qid]
        out[qid] = {
            f"ndcg@{k}": ndcg_at_k(docs, rels, k), f"mrr@{k}": mrr_at_k(docs, rels, k),
            f"recall@{k}": recall_at_k(docs, rels, k), "map": average_precision(docs, rels),
        }
    return out


def mean(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    if not per_query:
        return {}
    names = next(iter(per_query.values()))
    return {m: sum(q[m] for q in per_query.values()) / len(per_query) for m in names}


def load_qrels(url: str) -> Qrels:
    """Read qrels: Parquet (query_id, doc_id, relevance; a .parquet file, a directory, or
    any file that starts with Parquet's magic bytes), else text qrels, TREC's or BEIR's
    (jobs.text_formats.read_qrels_text). Ids are read as strings."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise InputError(f"eval.qrels {url!r}: no such file or directory")
    if _is_parquet(fs, path):
        table = _parquet_qrels(fs, path, url)
    else:
        try:
            table = read_qrels_text(fs, path, url)
        except InputError as e:
            raise InputError(f"eval.qrels {e}") from None
    qrels: Qrels = defaultdict(dict)
    for q, d, r in zip(table[QUERY_ID].cast(pa.string()).to_pylist(),
                       table[DOC_ID].cast(pa.string()).to_pylist(), table["relevance"].to_pylist(), strict=True):
        qrels[q][d] = int(r)
    return dict(qrels)


def _is_parquet(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    if path.lower().endswith(".parquet") or fs.isdir(path):
        return True
    with fs.open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _parquet_qrels(fs: fsspec.AbstractFileSystem, path: str, url: str) -> pa.Table:
    try:
        table = pads.dataset(path, filesystem=arrow_filesystem(fs)).to_table()
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"eval.qrels {url!r}: cannot read as Parquet ({e})") from e
    missing = {QUERY_ID, DOC_ID, "relevance"} - set(table.column_names)
    if missing:
        raise InputError(f"eval.qrels {url!r}: missing column(s) {sorted(missing)}; "
                         f"needs query_id, doc_id, relevance; present: {table.column_names}")
    if not pa.types.is_integer(table["relevance"].type):
        raise InputError(f"eval.qrels {url!r}: column 'relevance' has type "
                         f"{table['relevance'].type}; accepted: an integer type")
    return table


def read_run(fs: fsspec.AbstractFileSystem, paths: list[str], query_ids: set[str],
             by: str, where_valid: str | None = None) -> Run:
    """A run from ranked/scored Parquet files, only for `query_ids`.

    `by` names the column to order by: a rank column (1 = best) or a score column.
    Rows where `by` (or the `where_valid` column) is null are left out.
    """
    data = pads.dataset(paths, filesystem=arrow_filesystem(fs), format="parquet")
    if by not in data.schema.names:
        return {}
    row_filter = pc.field(QUERY_ID).isin(pa.array(sorted(query_ids), pa.string())) & pc.field(by).is_valid()
    if where_valid:
        row_filter &= pc.field(where_valid).is_valid()
    table = data.to_table(columns=[QUERY_ID, DOC_ID, by], filter=row_filter)
    sign = -1.0 if by in (RANK, FIRST_STAGE_RANK) else 1.0
    run: Run = defaultdict(dict)
    for q, d, v in zip(table[QUERY_ID].to_pylist(), table[DOC_ID].to_pylist(), table[by].to_pylist(), strict=True):
        run[q][d] = sign * float(v)
    return dict(run)


def first_stage_column(names: list[str]) -> str | None:
    """The column that orders the first stage: its rank if given, else its score."""
    return next((c for c in (FIRST_STAGE_RANK, FIRST_STAGE_SCORE) if c in names), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="ranked output directory or file")
    parser.add_argument("--qrels", required=True,
                        help="qrels: Parquet (query_id, doc_id, relevance), TREC qrels or BEIR qrels TSV")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        qrels = load_qrels(args.qrels)
        fs, path = fsspec.core.url_to_fs(args.run)
        files = visible_parquet(fs, path) if fs.isdir(path) else [path]
        if not files:
            raise InputError(f"--run {args.run!r}: no Parquet files")
        names = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet").schema.names
        rows = [("reranked", RANK), ("first stage", first_stage_column(names))]
        print(f"| stage | queries | nDCG@{args.k} | MRR@{args.k} | Recall@{args.k} | MAP |")
        print("|---|---|---|---|---|---|")
        for label, column in rows:
            if column is None:
                continue
            per_query = evaluate(read_run(fs, files, set(qrels), column), qrels, args.k)
            m = mean(per_query)
            print(f"| {label} | {len(per_query)} | " + " | ".join(f"{v:.4f}" for v in m.values()) + " |")
    except UserError as e:
        print(f"batch-rerank: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
