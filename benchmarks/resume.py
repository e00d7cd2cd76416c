"""What a crash costs: the whole job run once, then run again with its driver SIGKILLed at
60% of that run's wall time, then rerun into the same output (the "rerun the same command"
contract), for each actor batch size. Prints both times, the ratio, the pairs durable at
the kill, each batch's time from leaving the actor to being durable, and checks the
resumed output: every pair exactly once, scores equal to the full run's.

    .venv/bin/python benchmarks/resume.py [--data ../shared/data/cranfield] [--queries 48] [--top 30] \
        [--files 8] [--batch-sizes 512,128] [--repeats 3]

Each batch size is measured `--repeats` times (the batch sizes alternating), and the
ratio is judged on the median: a kill just before a batch ends costs that whole batch,
just after it costs nothing, so one repeat's ratio moves by a batch time over the run.

Input: the first `--queries` queries' BM25 top `--top` (48 x 30 = 1,440 pairs), cut into
`--files` Parquet files row by row, so every query is spread over every file: the nightly
shape of many small files written by many upstream tasks. Model: MiniLM-L6 cross-encoder
(real all-MiniLM-L6-v2 weights, seeded random head), float32, on a local Ray the job starts
(2 CPUs, 1 actor, 2 threads). Each run is `python -m jobs.rerank` as a subprocess in its own
process group; the kill stops that group and every process of the local Ray it started.

Warm against warm: a short job on one file runs first, so that no measured run pays for a
cold page cache (imports, model files). Every run starts its own local Ray and loads the
model, so the full run and the rerun pay the same start-up. The actors log when each batch
leaves them (BATCH_RERANK_TEST_FAULTS' batch_log, which slows nothing down) and a watcher
records when each checkpoint manifest entry appears: their difference is a batch's time
to durable. The machine's load average is printed before and after: the ratios are only
comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import model_dir
from reranker_actors.faults import ENV as FAULTS_ENV
from tests.durability import ManifestWatch, batches, time_to_durable

REPO = Path(__file__).resolve().parents[1]
TARGETS = {128: 0.60, 512: 0.80}  # rerun / full (issue 22), on the median of the repeats


def spread_input(data: Path, queries: int, top: int, files: int, dest: Path) -> pa.Table:
    table = pq.read_table(data / "candidates.parquet")
    first = table["query_id"].unique()[:queries]
    table = table.filter(pc.and_(pc.is_in(table["query_id"], first), pc.less_equal(table["bm25_rank"], top)))
    dest.mkdir(parents=True)
    for i in range(files):
        pq.write_table(table.filter(pa.array(np.arange(len(table)) % files == i)), dest / f"part-{i}.parquet")
    return table


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('Model name', '?').strip()} ({isa}), {os.cpu_count()} CPUs"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def start(config: Path, log: Path) -> subprocess.Popen:
    env = os.environ | {FAULTS_ENV: json.dumps({"batch_log": str(log)})}
    return subprocess.Popen([sys.executable, "-m", "jobs.rerank", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def crash(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of the local Ray it started, as a crash of its
    machine would (a worker outside the driver's process group would otherwise finish its
    batch beside the rerun)."""
    import psutil

    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def run(config: Path, log: Path) -> float:
    began = time.perf_counter()
    proc = start(config, log)
    if proc.wait() != 0:
        raise SystemExit(f"the job failed (config {config})")
    return time.perf_counter() - began


def scores(out: Path) -> dict[tuple[str, str], float]:
    table = pads.dataset(str(out)).to_table(columns=["query_id", "doc_id", "score"])
    pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    if len(set(pairs)) != len(pairs):
        raise SystemExit(f"{out}: {len(pairs) - len(set(pairs))} duplicated pairs")
    return dict(zip(pairs, table["score"].to_pylist(), strict=True))


def write_config(work: Path, name: str, inputs: Path, model: str, batch_size: int) -> Path:
    cfg = {"input": {"path": str(inputs), "columns": {"score": "bm25_score", "rank": "bm25_rank"}},
           "output": {"path": str(work / name)},
           "reranker": {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 512},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": 2, "batch_size": batch_size}, "ray": {"num_cpus": 2}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def lags(left: list[tuple[float, set[tuple[str, str]]]], durable: dict[tuple[str, str], float]) -> str:
    shown = time_to_durable(left, durable)
    return ", ".join("never" if s is None else f"{s:.2f}" for s in shown) or "-"


def measure(work: Path, inputs: Path, table: pa.Table, model: str, batch_size: int, at: float,
            repeat: int) -> tuple[list[str], float]:
    """The table rows of one batch size: full run, kill, rerun; and rerun / full."""
    name = f"{batch_size}-{repeat}"
    full_cfg = write_config(work, f"full-{name}", inputs, model, batch_size)
    killed_cfg = write_config(work, f"killed-{name}", inputs, model, batch_size)
    logs = {run_name: work / f"batches-{run_name}-{name}" for run_name in ("full", "killed", "rerun")}

    watch = ManifestWatch(work / f"full-{name}")
    full_s = run(full_cfg, logs["full"])
    full_durable = watch.stop()

    watch = ManifestWatch(work / f"killed-{name}")
    proc = start(killed_cfg, logs["killed"])
    time.sleep(at * full_s)
    if proc.poll() is not None:
        raise SystemExit("the run ended before the kill")
    crash(proc)
    killed_at = time.time()
    killed_durable = watch.stop()
    # (as of the kill: the actor of a killed driver may still finish its batch and log it)
    left = [(end, pairs) for end, pairs in batches(logs["killed"]) if end <= killed_at]

    watch = ManifestWatch(work / f"killed-{name}")
    rerun_s = run(killed_cfg, logs["rerun"])
    rerun_durable = watch.stop()
    report = json.loads((work / f"killed-{name}" / "_run_report.json").read_text())

    full, resumed = scores(work / f"full-{name}"), scores(work / f"killed-{name}")
    if set(full) != set(resumed) or len(full) != len(table):
        raise SystemExit(f"pairs differ: full run {len(full)}, resumed {len(resumed)}, input {len(table)}")
    delta = max(abs(full[p] - resumed[p]) for p in full)
    head = f"| {batch_size} | {repeat} |"
    return [
        f"{head} full | {full_s:.1f} | {len(table):,} | | {lags(batches(logs['full']), full_durable)} |",
        f"{head} killed at {at:.0%} | {at * full_s:.1f} | {sum(len(p) for _, p in left):,} left the actor | "
        f"{len(killed_durable):,} durable at the kill | {lags(left, killed_durable)} |",
        f"{head} rerun | {rerun_s:.1f} | {report['scored_now']:,} | {report['resumed_pairs']:,} resumed; "
        f"**rerun / full = {rerun_s / full_s:.2f}**; output {len(resumed):,} pairs, each once, "
        f"max abs diff {delta:.1e} | {lags(batches(logs['rerun']), rerun_durable)} |",
    ], rerun_s / full_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cranfield")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--batch-sizes", default="512,128", help="actor.batch_size values, one full/kill/rerun each")
    parser.add_argument("--at", type=float, default=0.6, help="kill at this share of the full run's time")
    parser.add_argument("--repeats", type=int, default=3,
                        help="full/kill/rerun sequences per batch size: where the kill falls between two "
                             "batch ends moves one repeat's ratio by a batch time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="resume-"))
    table = spread_input(args.data, args.queries, args.top, args.files, work / "in")
    model = model_dir("minilm", None, None)
    before = load()
    run(write_config(work, "warm-up", work / "in" / "part-0.parquet", model, 32), work / "batches-warm-up")
    rows: list[str] = []
    ratios: dict[int, list[float]] = {}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for repeat in range(1, args.repeats + 1):  # (the batch sizes alternate)
        for batch_size in sizes:
            shown, ratio = measure(work, work / "in", table, model, batch_size, args.at, repeat)
            rows += shown
            ratios.setdefault(batch_size, []).append(ratio)
    print(f"input: {len(table):,} pairs ({args.queries} queries x top {args.top}) in {args.files} files, "
          f"every query in every file; MiniLM-L6 cross-encoder, float32, local Ray, 1 actor x 2 threads; "
          f"{cpu_model()}; load average (1/5/15 min) {before} before, {load()} after\n")
    print("| batch size | repeat | run | wall s | pairs scored | note "
          "| each batch: s from leaving the actor to durable |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(sorted(rows, key=lambda r: -int(r.split("|")[1]))))  # (by batch size, in run order)
    print("\n| batch size | rerun / full, per repeat | median | range | target | |")
    print("|---|---|---|---|---|---|")
    for batch_size, values in ratios.items():
        target = TARGETS.get(batch_size)
        verdict = "" if target is None else "met" if np.median(values) <= target else "MISSED"
        print(f"| {batch_size} | {', '.join(f'{v:.2f}' for v in values)} | {np.median(values):.2f} | "
              f"{min(values):.2f}-{max(values):.2f} | {'' if target is None else f'<= {target:.2f}'} | {verdict} |")


if __name__ == "__main__":
    main()
