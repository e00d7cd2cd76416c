"""Long documents: pairs/s and passages/s with passages against plain 512-token pairs (issue 26).

    .venv/bin/python benchmarks/passages.py --data ../shared/data/scifact [--queries 3] [--tokens 2000]

Documents of about `--tokens` MiniLM tokens, each a SciFact candidate's abstract followed by
the next abstracts of the corpus; `--queries` queries x their BM25 top 100. The MiniLM-L6
cross-encoder (real all-MiniLM-L6-v2 weights, a seeded random 1-label head: the shape of
ms-marco-MiniLM-L-6-v2), max_length 512, float32, on the CPU. Contenders, each in its own
process after the same untimed warm-up (benchmarks/common.py):
  plain     each pair cut to 512 tokens (one forward row a pair)
  passages  passages.length 256, stride 128, max: every window of every document
Padding efficiency: real tokens over the rows x padded length of the forward batches the
engine builds (reranker_actors.batching.token_budget_batches).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import setup_note, setup_of, timed
from benchmarks.pipeline_scale import cpu

MAX_LENGTH, LENGTH, STRIDE = 512, 256, 128
WARM_UP = 8


def long_pairs(data: Path, queries: int, tokens: int, tokenizer_dir: str) -> tuple[list[str], list[str]]:
    """(queries, documents) of `queries` queries x top 100, each document about `tokens` tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cands = pq.read_table(data / "candidates.parquet")
    ids = list(dict.fromkeys(cands["query_id"].to_pylist()))[:queries]
    cands = cands.filter(pc.and_(pc.is_in(cands["query_id"], pc.cast(ids, cands["query_id"].type)),
                                 pc.less_equal(cands["bm25_rank"], 100)))
    corpus = pq.read_table(data / "corpus.parquet")
    texts = [f"{t} {x}".strip() for t, x in zip(corpus["title"].to_pylist(), corpus["text"].to_pylist(),
                                                   strict=True)]
    where = {d: i for i, d in enumerate(corpus["doc_id"].cast("string").to_pylist())}
    lengths = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    docs = []
    for doc_id in cands["doc_id"].cast("string").to_pylist():
        i, parts, n = where[doc_id], [], 0
        while n < tokens:
            parts.append(texts[i % len(texts)])
            n += lengths[i % len(texts)]
            i += 1
        docs.append(" ".join(parts))
    return cands["query"].to_pylist(), docs


def worker(contender: str, model: str, data: Path, queries: int, tokens: int, threads: int) -> dict:
    import torch

    from reranker_actors.batching import token_budget_batches
    from reranker_actors.registry import build_reranker

    torch.set_num_threads(threads)
    config = {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": MAX_LENGTH}
    if contender == "passages":
        config["passages"] = {"length": LENGTH, "stride": STRIDE, "max_per_doc": 64}
    reranker = build_reranker(config, torch.device("cpu"))
    qs, docs = long_pairs(data, queries, tokens, model)
    reranker.score(qs[:WARM_UP], docs[:WARM_UP])
    out, t = timed(lambda: reranker.score(qs, docs), "cpu", threads)
    if contender == "passages":
        enc, _, _ = reranker.encoder.encode_passages(qs, docs, reranker.config.passages)
        rows = int(out.passages.sum())
    else:
        enc, rows = reranker.encoder.encode_pairs(qs, docs), len(docs)
    lengths = enc.lengths
    padded = sum(len(idx) * int(lengths[idx].max()) for idx in token_budget_batches(lengths, reranker.max_tokens))
    return {"contender": contender, "pairs": len(docs), "rows": rows, "seconds": t.seconds, "busy": t.busy_pct,
            "real_tokens": int(lengths.sum()), "padded_tokens": padded, "mean_tokens": float(lengths.mean()),
            "setup": setup_note(setup_of(reranker.model))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="SciFact directory (../shared/data/scifact)")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.data, args.queries, args.tokens, args.threads)))
        return
    from benchmarks.throughput import model_dir

    model = model_dir("minilm", None, None)
    rows = []
    for contender in ("plain", "passages"):  # (the baseline first)
        cmd = [sys.executable, __file__, "--data", str(args.data), "--queries", str(args.queries), "--tokens",
               str(args.tokens), "--threads", str(args.threads), "--worker", contender, "--model", model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    plain = rows[0]["rows"] / rows[0]["seconds"]
    print(f"MiniLM-L6 cross-encoder, max_length {MAX_LENGTH}, float32, {args.threads} threads; {rows[0]['pairs']} "
          f"pairs ({args.queries} SciFact queries x BM25 top 100), documents of about {args.tokens} tokens; {cpu()}\n")
    print("| contender | pairs | forward rows | mean row tokens | s | pairs/s | rows/s (passages/s) | "
          "rows/s vs plain 512 | padding efficiency | CPU busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["rows"] / r["seconds"]
        print(f"| {r['contender']} | {r['pairs']} | {r['rows']:,} | {r['mean_tokens']:.0f} | {r['seconds']:.1f} | "
              f"{r['pairs'] / r['seconds']:.1f} | {rate:.1f} | {rate / plain:.2f}x | "
              f"{r['real_tokens'] / r['padded_tokens']:.1%} | {r['busy']:.0f}% |")
    print(f"\nsetup: {rows[0]['setup']}")
    ratio = rows[1]["rows"] / rows[1]["seconds"] / plain
    print(f"passages per pair: {rows[1]['rows'] / rows[1]['pairs']:.2f}; passages/s over plain 512-token pairs/s: "
          f"{ratio:.3f} (target: at least 0.9)")


if __name__ == "__main__":
    main()
