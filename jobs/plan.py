"""Capacity planner: GPU-hours, wall time and cost of a rerank, from recorded benchmark figures.

    python -m jobs.plan --pairs 1e9 --mean-tokens 300 --model BAAI/bge-reranker-v2-m3 --gpu L4
        [--passages-per-pair 15] [--workers 1,8,32] [--price-per-gpu-hour USD] [--compiled]
        [--figures benchmarks/figures.json] [--json]

--mean-tokens counts everything one pair computes: query + doc + special tokens (and, for
an LLM reranker, its prompt); with `passages:`, what one passage computes, and
--passages-per-pair how many a pair has (a document of D tokens: ceil((D - length) / stride)
+ 1, at most passages.max_per_doc; 1 if D <= length). Model: the useful FLOPs of one forward pass over n tokens,
per layer 2·(h·q + 2·h·kv + q·h)·n for the Q/K/V/O projections (q = kv = h unless GQA),
2·(2 or 3 if gated)·h·ffn·n for the MLP, and 4·n²·q for attention (QKᵀ and AV), as
benchmarks/throughput.py counts them. A recorded figure gives an achieved FLOP/s
(pairs/s × FLOPs of a pair of its mean length); the plan assumes that FLOP/s for the
target pairs. Without a figure for the model's shape on the GPU it takes the nearest
shape (FLOPs per token) on that GPU; without any figure on that GPU it scales a measured
GPU's by the ratio of dense fp16 tensor-core peaks: an estimate, not a measurement.
Worker count divides wall time only; cost = GPU-hours × price. The scorer's steady
state only: start-up, reading and ranking are not counted. With --gpu cpu a "GPU" is one
worker with the recorded CPU figure's threads, and there is no default price.

Figures file (benchmarks/figures.json; benchmarks/throughput.py may append rows):
    {"figures": [{"model": "xlmr-large", "shape": {"layers": 24, "hidden": 1024,
      "intermediate": 4096, "heads": 16}, "device": "NVIDIA H100 80GB HBM3", "dtype": "float16",
      "contender": "ours", "pairs_per_s": 813.3, "real_tokens_per_s": 321776.0, "mean_tokens": 395.6,
      "date": "2026-11-23", "command": "benchmarks/throughput.py ...", "source": "...", "data": "..."}]}
shape may add kv_heads, head_dim (GQA) and gated (SwiGLU MLP); data (the sample) is optional;
"old_counting": true marks a figure recorded before its tokens were counted per sequence on
packed batches and before each contender ran in its own process: the plan still uses it and
says so;
device is torch.cuda.get_device_name(), or "CPU ..." for a CPU run. A row is chosen by
GPU, then shape, then contender ("job" - the whole job's steady state - before "ours", the
bare scorer; "job compiled" before "compiled" with --compiled), fast dtype, newest date.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from jobs.errors import ConfigError, UserError
from reranker_actors.registry import known_models

FIGURES = Path(__file__).resolve().parents[1] / "benchmarks" / "figures.json"
# Hub id -> architecture shape, as each reranker family declares its known models.
KNOWN = tuple(known_models())
MODELS = {model.lower(): shape for model, shape in known_models().items()}
# Dense (no sparsity) fp16 tensor-core TFLOPS, NVIDIA datasheets (nvidia.com/en-us/data-center/<gpu>/; their
# headline numbers are with 2:4 sparsity, twice these): H100 SXM 989 (1,979 sparse), H100 PCIe 756 (1,513),
# H200 989, A100 312 (624), L4 121 (242), L40S 362 (733). A10G: AWS's variant of the A10 has no public NVIDIA
# datasheet; 125 is the A10's, and reviews report lower tensor throughput for A10G, so its estimate is optimistic.
# Regexes match torch.cuda.get_device_name() (the H100 SXM reports "NVIDIA H100 80GB HBM3").
GPUS = {"H100-SXM": (989, r"H100 (80GB HBM3|SXM)"), "H100-PCIE": (756, r"H100 PCIe"), "H200": (989, r"H200"),
        "A100": (312, r"A100"), "L4": (121, r"\bL4\b"), "A10G": (125, r"A10G"), "L40S": (362, r"L40S"),
        "CPU": (None, r"^CPU")}
ALIASES = {"H100": "H100-SXM"}
OLD_COUNTING = ("the figure used was recorded with the old counting (a packed batch counted as one sequence, "
                "every contender in one long-lived process) and not yet re-recorded on a GPU; its pairs/s and mean "
                "tokens, and so this plan, may be off")
# On-demand list prices per GPU-hour: AWS EC2 Linux, us-east-1 (aws.amazon.com/ec2/pricing/on-demand/), instance
# price / GPUs, P4/P5 after AWS's June 2025 cut. Prices change: pass --price-per-gpu-hour for yours.
PRICES = {"L4": (0.805, "g6.xlarge"), "A10G": (1.006, "g5.xlarge"), "L40S": (1.861, "g6e.xlarge"),
          "A100": (21.96 / 8, "p4d.24xlarge / 8"), "H100-SXM": (55.04 / 8, "p5.48xlarge / 8")}


def arch(shape: dict) -> tuple:
    """What the FLOPs depend on: layers, hidden, intermediate, Q and KV widths, gated MLP."""
    h, d = shape["hidden"], shape.get("head_dim")
    q, kv = (shape["heads"] * d, shape["kv_heads"] * d) if d else (h, h)
    return shape["layers"], h, shape["intermediate"], q, kv, bool(shape.get("gated"))


def pair_flops(shape: dict, n: float) -> float:
    """Useful FLOPs of one forward pass over a pair of n tokens."""
    layers, h, ffn, q, kv, gated = arch(shape)
    linear = 2 * (2 * h * q + 2 * h * kv) + 2 * (3 if gated else 2) * h * ffn
    return layers * (linear * n + 4 * n * n * q)


def describe(shape: dict) -> str:
    extra = f", {shape['kv_heads']} KV heads" if shape.get("kv_heads") else ""
    n = shape.get("params", 0)
    params = f", {n / 1e9:.3g}B params" if n >= 1e9 else f", {n / 1e6:.3g}M params" if n else ""
    return f"{shape['layers']} layers, hidden {shape['hidden']}, intermediate {shape['intermediate']}{extra}{params}"


def gpu_key(name: str) -> str | None:
    up = name.strip().upper()
    if up in GPUS or up in ALIASES:
        return ALIASES.get(up, up)
    return next((k for k, (_, rx) in GPUS.items() if re.search(rx, name, re.I)), None)


def load_figures(path: str) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text())["figures"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--figures {path!r}: cannot read a {{\"figures\": [...]}} JSON file ({e})") from e
    need = ("model", "shape", "device", "dtype", "contender", "pairs_per_s", "mean_tokens", "date", "command")
    for i, r in enumerate(rows):
        missing = [k for k in need if k not in r] + [f"shape.{k}" for k in ("layers", "hidden", "intermediate")
                                                     if k not in r.get("shape", {})]
        if missing:
            raise ConfigError(f"--figures {path!r}: figure {i} lacks {', '.join(missing)} (schema: jobs/plan.py)")
    return rows


def choose(rows: list[dict], shape: dict, gpu: str, contenders: tuple[str, ...]) -> dict:
    """The figure to scale from: on `gpu` if any, else on the GPU with the closest peak; of
    the same shape if any; of the first of `contenders` that has one."""
    rows = [r for r in rows if r["contender"] in contenders and gpu_key(r["device"])]
    here = [r for r in rows if gpu_key(r["device"]) == gpu]
    pool = here or ([] if gpu == "CPU" else [r for r in rows if GPUS[gpu_key(r["device"])][0]])
    if not pool:
        raise ConfigError(f"--gpu {gpu}: no recorded figure for {' or '.join(contenders)} on {gpu}"
                          + ("" if gpu == "CPU" else " or any GPU") + " to scale from; run benchmarks/throughput.py "
                          "there and add its rows to --figures")
    per_token = pair_flops(shape, 1)

    def rank(r: dict) -> tuple:
        peak = GPUS[gpu_key(r["device"])][0]
        return (0 if arch(r["shape"]) == arch(shape) else abs(math.log(pair_flops(r["shape"], 1) / per_token)),
                abs(math.log(peak / GPUS[gpu][0])) if peak and GPUS[gpu][0] else 0,
                contenders.index(r["contender"]), r["dtype"] in ("float32", "fp32"),
                [-int(x) for x in str(r["date"]).split("-") if x.isdigit()])
    return min(pool, key=rank)


def plan(pairs: float, tokens: float, model: str, shape: dict, gpu: str, price: float | None = None,
         workers: tuple[int, ...] = (1,), *, rows: list[dict], compiled: bool = False, passages: float = 1.0) -> dict:
    # The whole job's steady state where measured (reading, tokenizing and assembling
    # included), else the bare scorer's.
    fig = choose(rows, shape, gpu, ("job compiled", "compiled") if compiled else ("job", "ours"))
    src, row = gpu_key(fig["device"]), pair_flops(shape, tokens)
    fpp = row * passages  # (a pair is `passages` forward rows of `tokens`)
    achieved = fig["pairs_per_s"] * pair_flops(fig["shape"], fig["mean_tokens"])
    scaling, work = [], pair_flops(fig["shape"], fig["mean_tokens"]) / row
    flops = (f"same achieved FLOP/s, {row / 1e9:.1f} GFLOP per row of {tokens:g} tokens instead of "
             f"{pair_flops(fig['shape'], fig['mean_tokens']) / 1e9:.1f} for {fig['mean_tokens']:g}")
    if arch(fig["shape"]) != arch(shape):
        scaling.append(dict(kind="model", factor=work, why=f"no {fig['contender']} figure for this shape on {src}: "
                            f"took the nearest shape by FLOPs per token ({fig['model']}); {flops}"))
    elif abs(work - 1) > 1e-9:
        scaling.append(dict(kind="tokens", factor=work,
                            why=f"mean tokens {fig['mean_tokens']:g} -> {tokens:g}: {flops}"))
    if passages != 1:
        scaling.append(dict(kind="passages", factor=1 / passages,
                            why=f"{passages:g} passages per pair, each a forward row of {tokens:g} tokens"))
    device = GPUS[gpu][0] / GPUS[src][0] if src != gpu else 1.0
    if src != gpu:
        use = achieved / (GPUS[src][0] * 1e12)
        scaling.append(dict(kind="device", factor=device, why=f"{src} -> {gpu} by dense fp16 tensor-core peaks "
                            f"{GPUS[gpu][0]}/{GPUS[src][0]} TFLOPS: an estimate, no measurement on {gpu}" + (
                                f"; the figure used {use:.0%} of {src}'s peak, so it was not compute-bound and "
                                f"this likely underestimates {gpu}" if use < 0.1 else "")))
    per_gpu = achieved * device / fpp
    gpu_hours = pairs / per_gpu / 3600
    listed = PRICES.get(gpu)
    price_src = ("given (--price-per-gpu-hour)" if price is not None else
                 f"assumed price: AWS on-demand us-east-1, {listed[1]}" if listed else None)
    price = price if price is not None else (listed[0] if listed else None)
    warnings = [OLD_COUNTING] if fig.get("old_counting") else []
    return dict(model=model, shape=shape, gpu=gpu, pairs=pairs, mean_tokens=tokens, passages_per_pair=passages,
                flops_per_pair=fpp,
                pairs_per_s_per_gpu=per_gpu, achieved_flops_per_s=achieved * device, gpu_hours=gpu_hours,
                price_per_gpu_hour=price, price_source=price_src, cost=None if price is None else gpu_hours * price,
                estimate=any(x["kind"] in ("model", "device") for x in scaling), figure=fig, scaling=scaling,
                warnings=warnings,
                workers=[dict(workers=n, pairs_per_s=per_gpu * n, wall_hours=gpu_hours / n) for n in workers])


def duration(hours: float) -> str:
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} d"


def render(p: dict) -> str:
    f, est, usd = p["figure"], " (estimate)" if p["estimate"] else "", p["price_per_gpu_hour"]
    cost = "n/a" if usd is None else f"${p['cost']:,.0f}"
    price = (f"${usd:.2f}" if usd >= 1 else f"${usd:.3f}") + f" per GPU-hour ({p['price_source']})" if usd else (
        f"n/a: no list price for {p['gpu']} here; pass --price-per-gpu-hour")
    per = f"{p['passages_per_pair']:g} passages x " if p.get("passages_per_pair", 1) != 1 else ""
    lines = [f"# {p['pairs']:,.0f} pairs x {per}{p['mean_tokens']:g} tokens, {p['model']} on {p['gpu']}", "",
             f"model      {describe(p['shape'])}",
             f"work       {p['flops_per_pair'] / 1e9:,.1f} GFLOP per pair (useful forward FLOPs)",
             f"per GPU    {p['pairs_per_s_per_gpu']:,.1f} pairs/s{est} = {p['achieved_flops_per_s'] / 1e12:,.1f} "
             "TFLOP/s useful", f"GPU-hours  {p['gpu_hours']:,.1f}", f"price      {price}", "",
             "| workers (GPUs) | pairs/s | wall time | GPU-hours | cost |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {w['workers']} | {w['pairs_per_s']:,.0f} | {duration(w['wall_hours'])} | {p['gpu_hours']:,.1f} | "
              f"{cost} |" for w in p["workers"]]
    data = f"; {f['data']}" if f.get("data") else ""
    lines += ["", f"figure used: {f['model']} ({describe(f['shape'])}) on {f['device']}, {f['dtype']}, contender "
              f"{f['contender']}: {f['pairs_per_s']:,} pairs/s at {f['mean_tokens']:g} mean tokens per pair; "
              f"{f['date']}; `{f['command']}`{data}; source: {f.get('source', '-')}"]
    lines += [f"scaling: {s['kind']} x{s['factor']:.4f}: {s['why']}" for s in p["scaling"]] or ["scaling: none"]
    what = ("the job's steady state (score stage, actors up)" if f["contender"].startswith("job")
            else "the bare scorer's steady state")
    lines += [f"warning: {w}" for w in p.get("warnings", [])]
    return "\n".join([*lines, f"note: {what}; actor start-up and ranking come on top"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", required=True, help="query-document pairs to score, e.g. 1e9")
    parser.add_argument("--mean-tokens", required=True, help="mean tokens per pair (query + doc + special tokens)")
    parser.add_argument("--model", help="reranker model id: " + ", ".join(KNOWN))
    parser.add_argument("--shape", help="custom shape instead of --model: layers,hidden,intermediate")
    parser.add_argument("--gpu", required=True, help="H100, H100-SXM, H100-PCIe, H200, A100, L4, A10G, L40S or cpu")
    parser.add_argument("--passages-per-pair", default="1", help="with passages: forward rows per pair (default 1)")
    parser.add_argument("--workers", default="1", help="GPUs (workers), a comma-separated list, e.g. 1,8,32")
    parser.add_argument("--price-per-gpu-hour", help="USD; default: an on-demand list price (printed)")
    parser.add_argument("--compiled", action="store_true", help="use figures with reranker.compile: true")
    parser.add_argument("--figures", default=str(FIGURES), help="recorded figures (default: benchmarks/figures.json)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    try:
        p = plan(*parse(args), rows=load_figures(args.figures), compiled=args.compiled,
                 passages=number("--passages-per-pair", args.passages_per_pair))
    except UserError as e:
        print(f"batch-rerank: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(p, indent=1) if args.json else render(p))
    return 0


def number(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ConfigError(f"{flag} {text!r}: accepted: a positive number, e.g. 1e9 or 2.5")
    return value


def parse(args: argparse.Namespace) -> tuple:
    """(pairs, tokens, model, shape, gpu, price, workers) from the flags."""
    gpu = ALIASES.get(args.gpu.upper(), args.gpu.upper())
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {args.gpu!r}: unknown; accepted: H100, H100-SXM, H100-PCIe, H200, A100, L4, A10G, "
                          "L40S, cpu (case-insensitive)")
    workers = tuple(int(x) for x in args.workers.split(",") if x.strip().isdigit())
    if len(workers) != len(args.workers.split(",")) or min(workers, default=0) < 1:
        raise ConfigError(f"--workers {args.workers!r}: accepted: positive integers separated by commas, e.g. 1,8,32")
    price = None if args.price_per_gpu_hour is None else number("--price-per-gpu-hour", args.price_per_gpu_hour)
    flags = (number("--pairs", args.pairs), number("--mean-tokens", args.mean_tokens))
    if args.shape:
        dims = [int(x) for x in args.shape.split(",") if x.strip().isdigit() and int(x) > 0]
        if len(dims) != 3 or len(args.shape.split(",")) != 3:
            raise ConfigError(f"--shape {args.shape!r}: accepted: layers,hidden,intermediate, e.g. 24,1024,4096")
        shape = dict(zip(("layers", "hidden", "intermediate"), dims, strict=True))
        return *flags, args.model or "custom", shape, gpu, price, workers
    if (args.model or "").lower() not in MODELS:
        raise ConfigError(f"--model {args.model!r}: unknown; accepted: {', '.join(KNOWN)} (case-insensitive), "
                          "or --shape layers,hidden,intermediate")
    return *flags, args.model, MODELS[args.model.lower()], gpu, price, workers


if __name__ == "__main__":
    sys.exit(main())
