"""Cut the run-layout sample from the bundled flat sample and ../shared/data/cranfield (run
from the repo root).

    python samples/cut_run_layout.py ../shared/data/cranfield samples/cranfield samples/cranfield-run

The same 20 queries x BM25 top-30 as samples/cranfield, as retrievers and IR collections
ship them: a TREC run of ids (`run.trec`), a BEIR corpus (`corpus.jsonl`: every document
the run names, plus the next 100 of the collection that it does not), BEIR queries
(`queries.jsonl`) and BEIR qrels (`qrels/test.tsv`). A document's BEIR title and text
rebuild the flat sample's text exactly as BEIR's reranker joins them, so the run layout
and the flat layout score the same pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EXTRA_DOCS = 100


def title_and_text(doc: str, title: str) -> dict[str, str]:
    """BEIR fields whose `(title + " " + text).strip()` is `doc`."""
    if title and doc.startswith(f"{title} "):
        return {"title": title, "text": doc[len(title) + 1:]}
    return {"title": "", "text": doc}


def main(collection: str, flat: str, dest: str) -> None:
    pairs = pa.concat_tables(pq.read_table(p) for p in sorted((Path(flat) / "candidates").glob("*.parquet")))
    titles = {r["doc_id"]: r["title"] for r in pq.read_table(Path(collection) / "corpus.parquet").to_pylist()}
    out = Path(dest)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    rows = pairs.to_pylist()
    with open(out / "run.trec", "w") as f:
        for r in rows:
            f.write(f"{r['query_id']} Q0 {r['doc_id']} {r['bm25_rank']} {r['bm25_score']!r} bm25\n")
    docs = {r["doc_id"]: r["doc"] for r in rows}
    unused = [d for d in sorted(titles, key=int) if d not in docs][:EXTRA_DOCS]
    corpus = pq.read_table(Path(collection) / "corpus.parquet").to_pylist()
    docs |= {r["doc_id"]: r["text"] for r in corpus if r["doc_id"] in set(unused)}
    with open(out / "corpus.jsonl", "w") as f:
        for doc_id in sorted(docs, key=int):
            f.write(json.dumps({"_id": doc_id, **title_and_text(docs[doc_id], titles[doc_id])}) + "\n")
    queries = {r["query_id"]: r["query"] for r in rows}
    with open(out / "queries.jsonl", "w") as f:
        for query_id in sorted(queries, key=int):
            f.write(json.dumps({"_id": query_id, "text": queries[query_id]}) + "\n")
    qrels = pq.read_table(Path(flat) / "qrels.parquet").to_pylist()
    with open(out / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for r in qrels:
            f.write(f"{r['query_id']}\t{r['doc_id']}\t{r['relevance']}\n")
    print(f"{len(rows)} pairs, {len(queries)} queries, {len(docs)} documents -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
