"""llm_yes_no against the Qwen3-Reranker model card's reference code at its best: same machine,
pairs, threads and dtype, each contender in its own fresh process.

    .venv/bin/python benchmarks/llm_reranker.py [--data ../shared/data/scifact] [--pairs 200]
        [--card-batches 8,16,32,64,128] [--layers 28] [--repeats 3] [--warmup-pairs 0]

Model: random weights in the real Qwen3-Reranker-0.6B shape (28 layers, hidden 1024, 16 heads,
8 KV heads, head dim 128, intermediate 3072, tied embeddings) with the real Qwen3 tokenizer.
Random weights change no cost: the work per token is the same. `--layers N` keeps every
layer's shape and runs N of them (for a CPU, where 28 layers make a sweep take hours): the
work per pair scales by about N/28 for every contender alike.
How each contender is measured (benchmarks/common.py): in its own fresh process, the same
warm-up (`--warmup-pairs` untimed pairs first; 0, the default, is one full untimed pass),
then one timed pass (perf_counter; on CUDA the device is synced before and after).

Table 1 - SciFact: the first `--pairs` BM25 candidates (top 100 of the first queries).
  card recipe chunks of C: the card's format_instruction + process_inputs + compute_logits
  (tests/test_llm_yes_no.CardReference, logits of the last position only), called on
  consecutive chunks of C pairs in input order, once per C of `--card-batches`; the best
  of them is the baseline ours is compared with.
  ours: the backend (length buckets under a token budget, last position only, yes/no rows
  of the LM head, shared query prefix where it pays: on the CPU).
Table 2 - the shared-prefix KV cache on a realistic mix: 1 query x `--mix-candidates`
  candidates with documents cut to about 200 tokens; ours with and without prefix sharing,
  in one process, each warmed up, then `--repeats` timed rounds in alternating order;
  median pairs/s (range) and the median (range) of the per-round ratios.
Every row notes its setup (dtype, attention implementation, threads, tokenizer thread
settings, library versions) and its busy share (CPU time over threads x wall time); a row
whose useful FLOPs (jobs.plan.pair_flops over each prompt's tokens) exceed that share of the
measured matmul peak is flagged INVALID.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternating, setup_note, setup_of, spread, timed, validity, warm_up_pairs
from benchmarks.throughput import matmul_peak
from jobs.plan import pair_flops

SHAPE_0_6B = dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=3072)


def flops_shape(layers: int) -> dict[str, Any]:
    return {"layers": layers, "hidden": 1024, "intermediate": 3072, "heads": 16, "kv_heads": 8, "head_dim": 128,
            "gated": True}


def pairs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    table = pq.read_table(f"{args.data}/candidates.parquet").slice(0, args.pairs)
    return table["query"].to_pylist(), table["doc"].to_pylist()


def build_ours(args: argparse.Namespace) -> Any:
    import torch

    from reranker_actors.registry import build_reranker

    return build_reranker({"backend": "llm_yes_no", "model": args.model, "dtype": args.dtype, "max_length": 8192},
                          torch.device(args.device))


def card_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tests.test_llm_yes_no import CardReference

    queries, docs = pairs(args)
    warm, step = warm_up_pairs(len(queries), args.warmup_pairs), args.batch
    t0 = time.perf_counter()
    ref = CardReference(args.model, 8192)
    ref.model = ref.model.to(device=args.device, dtype=getattr(torch, args.dtype))

    def card(n: int) -> np.ndarray:
        parts = []
        for i in range(0, n, step):
            q, d = queries[i:min(i + step, n)], docs[i:min(i + step, n)]
            parts.append(ref.scores(q, d, [None] * len(q)))
        return np.concatenate(parts)

    card(warm)
    startup = time.perf_counter() - t0
    scores, t = timed(lambda: card(len(queries)), args.device, torch.get_num_threads())
    return {"scores": scores.astype(np.float64).tolist(), "seconds": t.seconds, "busy": t.busy_pct,
            "startup": startup, "setup": setup_of(ref.model)}


def ours_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    queries, docs = pairs(args)
    warm = warm_up_pairs(len(queries), args.warmup_pairs)
    t0 = time.perf_counter()
    ours = build_ours(args)
    ours.score(queries[:warm], docs[:warm])
    startup = time.perf_counter() - t0
    scores, t = timed(lambda: ours.score(queries, docs).values, args.device, torch.get_num_threads())
    return {"scores": np.asarray(scores, np.float64).tolist(), "seconds": t.seconds, "busy": t.busy_pct,
            "startup": startup, "setup": setup_of(ours.model, ours.attention),
            "lengths": ours.encoder.encode(queries, docs).lengths.tolist(),
            "params": sum(p.numel() for p in ours.model.parameters())}


def prefix_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Ours with and without the shared-prefix KV cache, alternating rounds in this process."""
    import torch
    from transformers import AutoTokenizer

    queries, docs = pairs(args)
    tok = AutoTokenizer.from_pretrained(args.model)
    n = min(args.mix_candidates, len(docs))
    mix_q = [queries[0]] * n
    mix_d = [tok.decode(tok(d, add_special_tokens=False)["input_ids"][:200]) for d in docs[:n]]
    warm = warm_up_pairs(n, args.warmup_pairs)
    ours = build_ours(args)
    settings = {"without prefix sharing": False, "with prefix sharing": True}
    out: dict[str, dict[str, Any]] = {}
    for name, share in settings.items():
        ours.logits(mix_q[:warm], mix_d[:warm], share_prefix=share)  # the warm-up, each setting alike
        out[name] = {"seconds": [], "busy": []}
    for name in alternating(list(settings), args.repeats):
        logits, t = timed(lambda s=settings[name]: ours.logits(mix_q, mix_d, share_prefix=s)[0], args.device,
                          torch.get_num_threads())
        out[name]["seconds"].append(t.seconds)
        out[name]["busy"].append(t.busy_pct)
        out[name]["logits"] = logits.astype(np.float64).tolist()
    batch = ours.encoder.encode(mix_q, mix_d)
    return {"settings": out, "order": alternating(list(settings), args.repeats), "n": n,
            "shared": int(batch.groups[0].shared), "mean_tokens": float(batch.lengths.mean()),
            "lengths": batch.lengths.tolist(), "setup": setup_of(ours.model, ours.attention)}


WORKERS = {"card": card_worker, "ours": ours_worker, "prefix": prefix_worker}


def run_worker(kind: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--data", args.data,
           "--pairs", str(args.pairs), "--dtype", args.dtype, "--device", args.device,
           "--warmup-pairs", str(args.warmup_pairs), "--repeats", str(args.repeats),
           "--mix-candidates", str(args.mix_candidates), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {' '.join(extra)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def share(lengths: list[int], seconds: float, layers: int, peak: float) -> float:
    """Useful FLOPs per second of a pass over prompts of `lengths`, as % of the matmul peak."""
    return 100 * sum(pair_flops(flops_shape(layers), n) for n in lengths) / seconds / 1e9 / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--card-batches", default="8,16,32,64,128", help="card recipe: pairs per call, to sweep")
    parser.add_argument("--layers", type=int, default=28, help="layers of the 0.6B shape to build (28: all)")
    parser.add_argument("--mix-candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of the prefix-sharing comparison")
    parser.add_argument("--warmup-pairs", type=int, default=0, help="untimed pairs each contender runs first "
                                                                    "(0: one full pass)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None, help="default: cuda where available, else cpu")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    from tests.tiny_models import build_tiny_qwen3

    args.model = tempfile.mkdtemp(prefix="qwen3-0.6b-shape-")
    build_tiny_qwen3(args.model, init=0.02, **(SHAPE_0_6B | {"num_hidden_layers": args.layers}))
    peak = matmul_peak(args.dtype)  # (this process only builds and reports; it never times a contender)
    sweep = [int(b) for b in args.card_batches.split(",")]
    cards = {b: run_worker("card", args, "--batch", str(b)) for b in sweep}  # the baselines first
    ours = run_worker("ours", args)
    prefix = run_worker("prefix", args)
    report(args, peak, cards, ours, prefix)


def report(args: argparse.Namespace, peak: float, cards: dict[int, dict], ours: dict, prefix: dict) -> None:
    import torch

    n, lengths = len(ours["scores"]), ours["lengths"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {ours['setup']['torch_threads']} threads"
    warm = "one full pass" if args.warmup_pairs <= 0 else f"the first {args.warmup_pairs} pairs"
    print(f"Qwen3 0.6B shape with {args.layers} of its 28 layers ({ours['params'] / 1e9:.2f}B params, random "
          f"weights), {args.dtype}, {where}, {n} SciFact pairs, {sum(lengths)} prompt tokens; warm-up {warm} "
          f"untimed for every contender; matmul peak {peak:,.0f} GFLOP/s\n")
    print("| contender | seconds | pairs/s | vs the best card | useful % of peak | busy | check | "
          "max abs diff vs card chunks of " + f"{min(cards)} | setup |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref = np.array(cards[min(cards)]["scores"])
    best = min(cards, key=lambda b: cards[b]["seconds"])
    rows = [(f"card recipe chunks of {b}" + (" (best)" if b == best else ""), r) for b, r in cards.items()]
    for name, r in [*rows, ("llm_yes_no", ours)]:
        useful = share(lengths, r["seconds"], args.layers, peak)
        print(f"| {name} | {r['seconds']:.1f} | {n / r['seconds']:.2f} | {cards[best]['seconds'] / r['seconds']:.2f}x "
              f"| {useful:.0f}% | {r['busy']:.0f}% | {validity(useful, r['busy']) or 'ok'} | "
              f"{np.abs(np.array(r['scores']) - ref).max():.2e} | {setup_note(r['setup'])} |")

    m, settings = prefix["n"], prefix["settings"]
    (a_name, a), (b_name, b) = settings.items()
    print(f"\nShared-prefix KV cache: 1 query x {m} candidates of ~200 tokens; {prefix['shared']} of "
          f"{int(prefix['mean_tokens'])} mean prompt tokens shared; one process, both settings warmed up, then "
          f"{args.repeats} rounds in the order {', '.join(prefix['order'])}\n")
    print("| llm_yes_no | pairs/s, median (range) | gain per round, median (range) | busy | check | "
          "max abs diff of logits | setup |")
    print("|---|---|---|---|---|---|---|")
    gains = spread([x / y for x, y in zip(a["seconds"], b["seconds"], strict=True)])
    for name, s, gain in ((a_name, a, "1.00x"), (b_name, b, gains.ratio())):
        busy = statistics.median(s["busy"])
        # (useful work: the plain path's; sharing skips some of it, so its share may exceed busy)
        useful = share(prefix["lengths"], statistics.median(s["seconds"]), args.layers, peak)
        check = validity(useful, busy) if s is a else "n/a (skips work)"
        print(f"| {name} | {spread([m / x for x in s['seconds']])} | {gain} | {busy:.0f}% | {check or 'ok'} | "
              f"{np.abs(np.array(b['logits']) - np.array(a['logits'])).max() if s is b else 0:.2e} | "
              f"{setup_note(prefix['setup'])} |")


if __name__ == "__main__":
    main()
