"""The bundled sample in the run layout, in each format a retriever or IR collection ships:
the same pairs as samples/cranfield (the flat layout), as ids plus a corpus and queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tests.conftest import REPO, sample_pairs

RUN_SAMPLE = REPO / "samples" / "cranfield-run"
FORMATS = ("parquet", "trec", "msmarco")


def run_input(tmp_path: Path, fmt: str) -> dict[str, Any]:
    """The `input` section of a run-layout job over the sample in format `fmt`:
    parquet  two Parquet run files (ids, bm25 score and rank), a Parquet corpus and queries;
    trec     the shipped TREC run, BEIR corpus.jsonl and queries.jsonl;
    msmarco  an MS MARCO run (qid<TAB>pid<TAB>rank), collection.tsv.gz and queries.tsv."""
    if fmt == "trec":
        return {"layout": "run", "path": str(RUN_SAMPLE / "run.trec"), "corpus": str(RUN_SAMPLE / "corpus.jsonl"),
                "queries": str(RUN_SAMPLE / "queries.jsonl")}
    pairs = sample_pairs()
    docs = dict(zip(pairs["doc_id"].to_pylist(), pairs["doc"].to_pylist(), strict=True))
    queries = dict(zip(pairs["query_id"].to_pylist(), pairs["query"].to_pylist(), strict=True))
    root = tmp_path / f"run-{fmt}"
    root.mkdir()
    if fmt == "msmarco":
        import gzip

        rows = zip(pairs["query_id"].to_pylist(), pairs["doc_id"].to_pylist(), pairs["bm25_rank"].to_pylist(),
                   strict=True)
        (root / "run.tsv").write_text("".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows))
        with gzip.open(root / "collection.tsv.gz", "wt") as f:
            f.writelines(f"{d}\t{t}\n" for d, t in docs.items())
        (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
        return {"layout": "run", "path": str(root / "run.tsv"), "corpus": str(root / "collection.tsv.gz"),
                "queries": str(root / "queries.tsv")}
    run = pairs.select(["query_id", "doc_id", "bm25_score", "bm25_rank"])
    (root / "run").mkdir()
    half = len(run) // 2 + 7  # (a query in both files)
    pq.write_table(run.slice(0, half), root / "run" / "part-0.parquet")
    pq.write_table(run.slice(half), root / "run" / "part-1.parquet")
    pq.write_table(pa.table({"doc_id": list(docs), "doc": list(docs.values())}), root / "corpus.parquet")
    pq.write_table(pa.table({"query_id": list(queries), "query": list(queries.values())}), root / "queries.parquet")
    return {"layout": "run", "path": str(root / "run"), "corpus": str(root / "corpus.parquet"),
            "queries": str(root / "queries.parquet"), "columns": {"score": "bm25_score", "rank": "bm25_rank"}}


def flat_input() -> dict[str, Any]:
    return {"path": str(REPO / "samples" / "cranfield" / "candidates"),
            "columns": {"score": "bm25_score", "rank": "bm25_rank"}}


def by_pair(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    table = pads.dataset(str(out)).to_table()
    rows = table.to_pylist()
    pairs = {(r["query_id"], r["doc_id"]): r for r in rows}
    assert len(pairs) == len(rows), "a pair twice in the output"
    return pairs


def assert_same_output(run: Path, flat: Path, tolerance: float = 1e-6) -> None:
    """The same pairs, scores within `tolerance`, identical ranks (and first-stage ranks)."""
    a, b = by_pair(run), by_pair(flat)
    assert a.keys() == b.keys()
    keys = sorted(a)
    delta = np.abs(np.array([a[k]["score"] for k in keys]) - np.array([b[k]["score"] for k in keys]))
    assert delta.max() <= tolerance, f"max |score difference| {delta.max():.2e}"
    assert [a[k]["rank"] for k in keys] == [b[k]["rank"] for k in keys]
    assert [a[k]["first_stage_rank"] for k in keys] == [b[k]["first_stage_rank"] for k in keys]


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "_run_report.json").read_text())
