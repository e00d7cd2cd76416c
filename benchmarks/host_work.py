"""Where one actor call's time goes, per pair, for the engine-host-work target of issue 24
(>= 20,000 pairs/s end to end with a tiny BERT at max_length 64 on 10^6 short pairs).

    .venv/bin/python benchmarks/host_work.py [--batch 4096] [--batches 8] [--budgets 0,65536]

Builds the tiny random BERT of tests/tiny_models.py (hidden 32, 2 layers, the real MiniLM
tokenizer), makes a ScoreActor of it (cross_encoder, float32, max_length 64, 1 thread, as
one actor on one core), and calls it on `--batches` batches of pipeline_scale.py's short
flat pairs (queries of 3-10 words, documents of 12-40, every document distinct), the first
untimed. Then times, on the same batches, the Arrow-to-list conversion, `encode_pairs` and
its documents' `encode_batch` alone, and the reranker's `score` (encoding + forward): the
forward is score minus encode_pairs, the rest is the call minus score. Per token budget
(`--budgets`, 0 = the CPU default of 4,096 tokens a forward).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_scale import _texts, cpu, pairs_table
from reranker_actors.actor import ScoreActor
from tests.tiny_models import build_tiny_bert


def batch(i: int, size: int, texts: tuple) -> pa.Table:
    t = pairs_table(np.arange(i * size, (i + 1) * size, dtype=np.int64), 100, texts)
    n = len(t)
    return (t.append_column("_skip_reason", pa.nulls(n, pa.string()))
            .append_column("_shard", pa.array(np.zeros(n, np.int32)))
            .append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
            .append_column("_units", pa.array(np.ones(n, np.int32))))


def us_per_pair(fn: Callable[[pa.Table], object], batches: list[pa.Table]) -> float:
    began = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - began) / sum(len(b) for b in batches) * 1e6


def lists(b: pa.Table) -> tuple[list, list]:
    return b["query"].to_pylist(), b["doc"].to_pylist()


def row(model: str, budget: int, warm_up: pa.Table, timed: list[pa.Table]) -> str:
    config = {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 64}
    if budget:
        config["max_tokens_per_batch"] = budget
    actor = ScoreActor(config, expect_gpu=False, threads=1, on_invalid="skip")
    reranker = actor.reranker
    encoder = reranker.encoder  # type: ignore[attr-defined]
    actor(warm_up)
    call = us_per_pair(actor, timed)
    to_lists = us_per_pair(lists, timed)
    encode = us_per_pair(lambda b: encoder.encode_pairs(*lists(b)), timed)
    docs = us_per_pair(lambda b: encoder._encode_capped(list(dict.fromkeys(b["doc"].to_pylist())), 60), timed)
    score = us_per_pair(lambda b: reranker.score(*lists(b)), timed)
    return (f"| {budget or 'default (4,096)'} | {call:.1f} | {to_lists:.1f} | {encode - to_lists:.1f} | "
            f"{docs - to_lists / 2:.1f} | {score - encode:.1f} | {call - score:.1f} | {1e6 / call:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--budgets", default="0,65536", help="reranker.max_tokens_per_batch values; 0 = default")
    args = parser.parse_args()
    model = str(build_tiny_bert(Path(tempfile.mkdtemp(prefix="tiny-bert-")) / "model"))
    texts = _texts()
    batches = [batch(i, args.batch, texts) for i in range(args.batches)]
    timed = batches[1:]
    print(f"tiny BERT (hidden 32, 2 layers), max_length 64, 1 thread; {len(timed)} x {args.batch} short flat pairs "
          f"(every document distinct); {cpu()}\n")
    print("| token budget | call µs/pair | to lists | encode_pairs | of which documents' encode_batch | forward "
          "| the rest | pairs/s |")
    print("|---|---|---|---|---|---|---|---|")
    for budget in [int(b) for b in args.budgets.split(",")]:
        print(row(model, budget, batches[0], timed))


if __name__ == "__main__":
    main()
