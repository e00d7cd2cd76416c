"""llm_yes_no against the Qwen3-Reranker model card's reference code: same machine, pairs,
threads and dtype, in one run.

    .venv/bin/python benchmarks/llm_reranker.py [--data ../shared/data/scifact] [--pairs 200]

Model: random weights in the real Qwen3-Reranker-0.6B shape (28 layers, hidden 1024,
16 heads, 8 KV heads, head dim 128, intermediate 3072, tied embeddings) with the real
Qwen3 tokenizer. Random weights change no cost: the work per token is the same.

Table 1 - SciFact: the first `--pairs` BM25 candidates (top 100 of the first queries).
  reference: the card's format_instruction + process_inputs + compute_logits, called on
  consecutive chunks of `--ref-batch` pairs in input order (one call on all pairs would
  need the full-vocabulary logits of every position at once: tens of GB).
  ours: the backend (length buckets under a token budget, last position only, yes/no
  rows of the LM head, shared query prefix).
Table 2 - the shared-prefix KV cache on a realistic mix: 100 candidates per query with
  documents cut to about 200 tokens; ours with and without prefix sharing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reranker_actors.registry import build_reranker
from tests.test_llm_yes_no import CardReference
from tests.tiny_models import build_tiny_qwen3

T = TypeVar("T")
SHAPE_0_6B = dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=3072)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()  # (returns numpy arrays: any CUDA work is finished)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--ref-batch", type=int, default=8)
    parser.add_argument("--mix-candidates", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    model_dir = tempfile.mkdtemp(prefix="qwen3-0.6b-shape-")
    build_tiny_qwen3(model_dir, init=0.02, **SHAPE_0_6B)
    table = pq.read_table(f"{args.data}/candidates.parquet").slice(0, args.pairs)
    queries, docs = table["query"].to_pylist(), table["doc"].to_pylist()
    cfg = {"backend": "llm_yes_no", "model": model_dir, "dtype": args.dtype, "max_length": 8192}
    ours = build_reranker(cfg, device)
    params = sum(p.numel() for p in ours.model.parameters()) / 1e9
    tokens = int(sum(ours.encoder.encode(queries, docs).lengths))

    ref = CardReference(model_dir, 8192)
    ref.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval().to(device)
    def reference() -> np.ndarray:
        step = args.ref_batch
        return np.concatenate([ref.scores(queries[i:i + step], docs[i:i + step], [None] * len(docs[i:i + step]))
                               for i in range(0, len(queries), step)])

    ref.scores(queries[:2], docs[:2], [None, None])  # warm-up, both contenders
    ours.score(queries[:2], docs[:2])
    ref_scores, ref_s = timed(reference)
    our_scores, our_s = timed(lambda: ours.score(queries, docs).values)

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"Qwen3 0.6B shape ({params:.2f}B params, random weights), {args.dtype}, {where}, "
          f"{len(queries)} SciFact pairs, {tokens} prompt tokens\n")
    print("| contender | seconds | pairs/s | speed-up | max abs diff vs reference |")
    print("|---|---|---|---|---|")
    print(f"| card reference (chunks of {args.ref_batch}) | {ref_s:.1f} | {len(queries) / ref_s:.2f} | 1.00x | - |")
    print(f"| llm_yes_no | {our_s:.1f} | {len(queries) / our_s:.2f} | {ref_s / our_s:.2f}x | "
          f"{np.abs(our_scores - ref_scores).max():.2e} |")

    tok = AutoTokenizer.from_pretrained(model_dir)
    mix_docs = [tok.decode(tok(d, add_special_tokens=False)["input_ids"][:200]) for d in docs]
    n = min(args.mix_candidates, len(mix_docs))
    mix_q, mix_d = [queries[0]] * n, mix_docs[:n]
    plain, plain_s = timed(lambda: ours.logits(mix_q, mix_d, share_prefix=False)[0])
    shared, shared_s = timed(lambda: ours.logits(mix_q, mix_d, share_prefix=True)[0])
    batch = ours.encoder.encode(mix_q, mix_d)
    print(f"\nShared-prefix KV cache: 1 query x {n} candidates of ~200 tokens; "
          f"{batch.groups[0].shared} of {int(batch.lengths.mean())} mean prompt tokens shared\n")
    print("| llm_yes_no | seconds | pairs/s | gain | max abs diff of logits |")
    print("|---|---|---|---|---|")
    print(f"| without prefix sharing | {plain_s:.1f} | {n / plain_s:.2f} | 1.00x | - |")
    print(f"| with prefix sharing | {shared_s:.1f} | {n / shared_s:.2f} | {plain_s / shared_s:.2f}x | "
          f"{np.abs(shared - plain).max():.2e} |")


if __name__ == "__main__":
    main()
