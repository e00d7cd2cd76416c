"""How the whole job scales with its input when scoring costs nothing: 10^5, 10^6 and 10^7 pairs.

    .venv/bin/python benchmarks/pipeline_scale.py [--sizes 1e5,1e6,1e7] [--files 64] [--spread]
        [--candidates 100] [--batch-size 4096] [--rank-partition-rows N] [--work DIR]
        [--cache-nights [--changed 0.1] [--shard-pairs 4e6]]

Data: synthetic pairs, `--candidates` per query, over `--files` Parquet files: ids `q<n>` and
`d<n>`, a query of 3-10 and a document of 12-40 words drawn from 1,024 sentences of made-up
words (the document ends with its id, so every text is distinct), and a first-stage score and
rank that the job passes through. "by file" puts each query's candidates in one file, so the
job ranks file by file; `--spread` also runs every size with each query's candidates spread
over all the files (pair j of query q in file (candidates * q + j) mod files), so the rank
stage must gather queries: one task up to 10^6 pairs (10^6 included), a groupby(query_id)
shuffle above (10 partitions at 10^7); `--rank-partition-rows` lowers that threshold (the
job's jobs.stages.ROWS_PER_RANK_PARTITION, patched in the run's driver) to try the shuffle at
small sizes. The files are generated with vectorised pyarrow, one file at a time, and kept
under `--work` (default $TMPDIR/batch-rerank-pipeline-scale): a rerun skips generating them.

Scorer: `ZeroCostScorer`, defined here and not shipped as a backend: a CrossEncoderReranker
that loads nothing and scores a pair by the CRC-32 of its texts (float32 in [0, 1), nothing
truncated). The job validates `reranker:` against the families in
`reranker_actors.registry.BACKENDS`, so it takes the place of `cross_encoder`'s class
there (its config and capabilities stay the same), in the driver and, through Ray's
`worker_process_setup_hook` (`register_scorer`), in every Ray worker. `reranker.model` names
no model anywhere, so an actor the hook missed fails to load it and the run fails; every
run also checks output scores against the CRC of the input texts, and counts the worker
processes the hook ran in.

Each run is its own process (`--child`): it starts a local Ray (2 CPUs, loopback, auth off,
one Parquet footer actor) with that hook, then `jobs.rerank.run` on it in-process, with 1
actor (num_cpus 1, 1 thread) and `actor.batch_size` 4096 (one call's fixed costs spread over
4,096 pairs, as in the shipped GPU configs; it is also the job's unit of reading and
checkpointing: 2,442 units at 10^7).
Columns: Ray start (ray.init, not in wall); wall = `run()` from validation to `_SUCCESS`, and
pairs/s = pairs / wall (end to end); the stage seconds of the RunSummary, with the score
stage's start-up (stage start to the first batch: actor scheduled, torch imported); other =
wall - the stages (quarantine, report); the driver's peak RSS (ru_maxrss of the run's
process, which is the driver, taken before it checks the output); the peak RSS of its process
tree (driver + local Ray: GCS, raylet, workers; shared memory counted in every process that
maps it), sampled every 0.1 s; the object store's peak bytes used, sampled every 0.5 s in a
driver thread from the raylet (`ray._private.internal_api.get_memory_info_reply(
get_state_from_address(gcs)).store_stats.object_store_bytes_used`, summed over nodes), and the
bytes it spilled to disk. A second table places those peaks in time (the same thread samples
the driver's RSS): in the score stage's start-up, its steady state, or after it.
The fit: b of time = a * pairs^b, least squares on log-log over the by-file runs.
With --spread, each spread run gates against the by-file run of its size (gates.baseline: the
same scores, so every gate passes), and a table shows the gates stage (score health; drift
against the baseline on the spread runs) against the rank stage: the target is at most 10%
at 10^6.
Targets: at 10^7 pairs >= 20,000 pairs/s end to end; driver peak RSS at 10^7 within 1.5x of
10^6; wall time at 10^7 within 12x of 10^6 (without both sizes, the two largest by-file
sizes run are compared instead, and labelled so).

--cache-nights: per size, after the by-file run (no cache), two nights with `cache.path` and
`cache.shard_pairs` = `--shard-pairs`: night 1 scores everything and writes the cache; night 2
reads the same pairs with the document text of every pair whose number is divisible by
round(1 / `--changed`) revised (so its key changes), serves night 1's cache from
ceil(pairs / shard_pairs) shard actors, and scores only the changed pairs. The table adds the
pairs taken from the cache and scored, the shard actors, and the driver's peak RSS against
the run without a cache (the target: flat in the cache size, within 1.1x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reranker_actors.base import Scores
from reranker_actors.cross_encoder import CrossEncoderReranker

ROOT = Path(__file__).resolve().parents[1]
HOOK = "benchmarks.pipeline_scale.register_scorer"
HOOK_DIR_ENV = "BATCH_RERANK_PIPELINE_SCALE_HOOKS"  # where the hook leaves one file per process it ran in
MODEL = "zero-cost-scorer"  # no such model: an actor without the hook fails to load it
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
DATA_VERSION = 1  # bump when the generator changes: cached inputs of another version are made again
TEXTS = 1024  # distinct query sentences and document sentences
TARGET_PAIRS_PER_S = 20_000
TARGET_GATES_SHARE = 0.10  # the gates stage (one read of the output) against the rank stage, at 10^6
TARGET_RSS_RATIO = 1.5
TARGET_TIME_RATIO = 12.0
TARGET_CACHE_RSS_RATIO = 1.1
VERIFY_ROWS = 20_000  # input rows of the first file whose output scores are checked


# --- the scorer ------------------------------------------------------------------------------

def zero_cost_scores(queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    """CRC-32 of each pair's texts, scaled to [0, 1): deterministic in every process."""
    crc = [zlib.crc32(f"{q}\0{d}".encode()) for q, d in zip(queries, docs, strict=True)]
    return (np.array(crc, dtype=np.float64) / 2.0**32).astype(np.float32)


class ZeroCostScorer(CrossEncoderReranker):
    """cross_encoder's config and capabilities; loads nothing, scores by a hash."""

    attention = "padded"  # (HFReranker's property asks the model, which there is none of)

    def __init__(self, config: Any, device: Any) -> None:  # (no super().__init__: nothing to load)
        self.config, self.device, self.dtype = config, device, "float32"

    def warm_up(self) -> None:
        return None

    def can_pack(self) -> bool:
        return False

    def score(self, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> Scores:
        return Scores(zero_cost_scores(queries, docs), np.zeros(len(queries), dtype=bool))


def register_scorer() -> None:
    """Ray's worker_process_setup_hook (and called in the driver): `cross_encoder` scores with
    ZeroCostScorer in this process. Leaves a file named after the process id in $HOOK_DIR_ENV."""
    from reranker_actors import registry

    registry.BACKENDS["cross_encoder"] = ZeroCostScorer
    if os.environ.get(HOOK_DIR_ENV):
        Path(os.environ[HOOK_DIR_ENV], str(os.getpid())).touch()


# --- synthetic input ---------------------------------------------------------------------------

def _sentences(rng: np.random.Generator, vocabulary: list[str], low: int, high: int) -> list[str]:
    lengths = rng.integers(low, high + 1, TEXTS)
    return [" ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), n)) for n in lengths]


def _texts() -> tuple[Any, Any]:
    import pyarrow as pa

    rng = np.random.default_rng(16)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = ["".join(rng.choice(letters, n)) for n in rng.integers(2, 10, 2000)]
    return pa.array(_sentences(rng, vocabulary, 3, 10)), pa.array(_sentences(rng, vocabulary, 12, 40))


def file_rows(index: int, files: int, pairs: int, candidates: int, spread: bool) -> np.ndarray:
    """The global pair numbers (query * candidates + candidate) file `index` holds."""
    if spread:
        return np.arange(index, pairs, files, dtype=np.int64)
    queries = pairs // candidates
    first, last = index * queries // files, (index + 1) * queries // files
    return np.arange(first * candidates, last * candidates, dtype=np.int64)


def pairs_table(rows: np.ndarray, candidates: int, texts: tuple[Any, Any], revise_every: int = 0) -> Any:
    """The pairs numbered `rows`; with `revise_every` n, pair numbers divisible by n get a
    revised document text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(values), pa.string()), "")

    query, cand = rows // candidates, rows % candidates
    doc_id = ids("d", rows)
    sentence = texts[1].take(pa.array((query * 7919 + cand * 104_729) % TEXTS))
    noise = ((rows * 2_654_435_761) % 1000).astype(np.float32) / 1e4
    doc = pc.binary_join_element_wise(sentence, doc_id, " ")
    if revise_every:
        revised = pa.array(rows % revise_every == 0)
        doc = pc.if_else(revised, pc.binary_join_element_wise(doc, pa.scalar("(revised)"), " "), doc)
    return pa.table({
        "query_id": ids("q", query),
        "query": texts[0].take(pa.array(query % TEXTS)),
        "doc_id": doc_id,
        "doc": doc,
        "bm25_score": pa.array(np.float32(30) - cand.astype(np.float32) * np.float32(0.2) + noise),
        "bm25_rank": pa.array((cand + 1).astype(np.int32)),
    })


def input_dir(work: Path, pairs: int, files: int, candidates: int, spread: bool, revise_every: int = 0) -> Path:
    """The input files of one size and layout, generated once (a `.json` beside the directory
    marks it complete)."""
    import pyarrow.parquet as pq

    layout = "spread" if spread else "by-file"
    revised = f"-revised-every-{revise_every}" if revise_every else ""
    dest = work / "data" / f"v{DATA_VERSION}-{layout}-{pairs}-pairs-{candidates}-per-query-{files}-files{revised}"
    done = dest.with_suffix(".json")
    if done.exists():
        return dest
    if pairs % candidates or pairs // candidates < files:
        raise SystemExit(f"{pairs:,} pairs: need a multiple of --candidates ({candidates}) "
                         f"and at least one query per file ({files} files)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    start, texts = time.perf_counter(), _texts()
    for index in range(files):
        table = pairs_table(file_rows(index, files, pairs, candidates, spread), candidates, texts, revise_every)
        pq.write_table(table, dest / f"part-{index:05d}.parquet.tmp")
        (dest / f"part-{index:05d}.parquet.tmp").rename(dest / f"part-{index:05d}.parquet")
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in dest.iterdir())
    done.write_text(json.dumps({"pairs": pairs, "files": files, "candidates": candidates, "layout": layout,
                                "seconds": round(seconds, 1), "bytes": size}))
    print(f"generated {pairs:,} pairs ({layout}) in {seconds:.1f} s: {size / 2**20:,.0f} MiB in {files} files",
          file=sys.stderr)
    return dest


# --- one run, in its own process ------------------------------------------------------------------

def rss_now() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StoreSampler(threading.Thread):
    """Every `interval` seconds: object-store bytes used (all nodes, from the raylet) and the
    driver's RSS, with the seconds since `t0`; and the peaks."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        import ray
        from ray._private.internal_api import get_state_from_address

        self.state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self.interval, self.halt, self.t0 = interval, threading.Event(), time.perf_counter()
        self.peak = self.peak_objects = self.worker_peak = 0
        self.series: list[tuple[float, int, int]] = []  # (seconds since t0, store bytes, driver RSS)
        self.last: Any = None

    def sample(self) -> None:
        from ray._private.internal_api import get_memory_info_reply

        stats = get_memory_info_reply(self.state, timeout_seconds=10).store_stats
        self.peak = max(self.peak, stats.object_store_bytes_used)
        self.peak_objects = max(self.peak_objects, stats.num_local_objects)
        self.series.append((round(time.perf_counter() - self.t0, 2), stats.object_store_bytes_used, rss_now()))
        self.last = stats
        self.worker_peak = max(self.worker_peak, largest_child_rss())

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a missed sample only lowers the resolution
                pass

    def stop(self) -> dict[str, int]:
        self.halt.set()
        self.join()
        self.sample()
        return {"store_peak": self.peak, "store_peak_objects": self.peak_objects, "series": self.series,
                "worker_peak_rss": self.worker_peak,
                "spilled": self.last.spilled_bytes_total, "store_created": self.last.cumulative_created_bytes}


def largest_child_rss() -> int:
    """The largest resident set among this process's descendants (the local Ray: its GCS,
    raylet and workers), in bytes."""
    import psutil

    peak = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
    return peak


def verify(inputs: Path, output: Path) -> int:
    """Check the output scores of the first VERIFY_ROWS rows of the first input file against
    zero_cost_scores of their texts; return how many were checked."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    source = pq.read_table(sorted(inputs.glob("*.parquet"))[0], columns=["doc_id", "query", "doc"])
    source = source.slice(0, VERIFY_ROWS)
    out = pads.dataset(str(output), format="parquet").to_table(
        columns=["doc_id", "score"], filter=pc.field("doc_id").isin(source["doc_id"]))
    joined = source.join(out, "doc_id")
    expected = zero_cost_scores(joined["query"].to_pylist(), joined["doc"].to_pylist())
    if len(joined) != len(source) or not np.array_equal(expected, joined["score"].to_numpy()):
        raise RuntimeError(f"output scores are not ZeroCostScorer's: {len(joined)} of {len(source)} rows found, "
                           f"{int((expected != joined['score'].to_numpy()).sum())} differ")
    return len(joined)


def child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(RAY_ENV)
    os.environ[HOOK_DIR_ENV] = spec["hooks"]
    import importlib

    import ray

    from jobs import stages
    from jobs.config import load_config
    from jobs.rerank import run

    began = time.perf_counter()
    hook = spec.get("hook", HOOK)  # (another benchmark's scorer: benchmarks/run_layout.py)
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={
        "worker_process_setup_hook": hook,
        "env_vars": {"PYTHONPATH": str(ROOT), HOOK_DIR_ENV: spec["hooks"],
                     "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": RAY_ENV["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"]},
    })
    ray_init_s = time.perf_counter() - began
    module, _, function = hook.rpartition(".")
    getattr(importlib.import_module(module), function)()  # (the setup hook runs in workers only)
    if spec["partition_rows"]:  # (--rank-partition-rows: the shuffle's threshold, for small trials)
        stages.ROWS_PER_RANK_PARTITION = spec["partition_rows"]
    sampler = StoreSampler()
    start = sampler.t0 = time.perf_counter()
    sampler.start()
    summary = run(load_config(spec["config"]))
    wall = time.perf_counter() - start
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (KiB on Linux)
    store = sampler.stop()
    ray.shutdown()
    hooked = len(os.listdir(spec["hooks"])) - 1  # (the driver's own file)
    parts = stages.rank_partitions(summary.scored)
    path = "file by file" if summary.by_file else "one task" if parts == 1 else f"shuffle, {parts} partitions"
    result = {"wall": wall, "ray_init": ray_init_s, "rank_path": path, "driver_rss": driver_rss, **store,
              "hooked_workers": hooked,
              "verified": verify(Path(spec["input"]), Path(spec["output"])) if spec.get("verify", True) else 0,
              **summary.to_dict()}
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    print(summary.render())


def run_size(work: Path, inputs: Path, pairs: int, spread: bool, args: argparse.Namespace,
             night: int = 0) -> dict:
    """One run; `night` 1 or 2: with the score cache under `work` (night 1 writes it)."""
    import yaml

    from benchmarks.throughput import run_measured

    run_dir = work / "runs" / f"{'spread' if spread else 'by-file'}-{pairs}{f'-night{night}' if night else ''}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "hooks").mkdir(parents=True)
    cfg = {"input": {"path": str(inputs), "columns": {"score": "bm25_score", "rank": "bm25_rank"}},
           "reranker": {"backend": "cross_encoder", "model": MODEL, "dtype": "float32"},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": 1, "batch_size": args.batch_size},
           "output": {"path": str(run_dir / "out")}, "ray": {"num_cpus": 2}}
    baseline = work / "runs" / f"by-file-{pairs}" / "out"
    if spread and (baseline / "_SUCCESS").exists():  # (the same scores: every gate passes, drift included)
        cfg["gates"] = {"baseline": str(baseline), "min_topk_overlap": 0.99, "max_top1_changed_share": 0.0,
                        "max_score_shift": 0.01, "min_score_spread": 0.1, "max_tied_share": 0.01}
    if night:
        cache = work / "runs" / f"cache-{pairs}"
        if night == 1:
            shutil.rmtree(cache, ignore_errors=True)
        cfg["cache"] = {"path": str(cache), "shard_pairs": args.shard_pairs}
    (run_dir / "job.yaml").write_text(yaml.safe_dump(cfg))
    spec = {"config": str(run_dir / "job.yaml"), "input": str(inputs), "output": str(run_dir / "out"),
            "hooks": str(run_dir / "hooks"), "result": str(run_dir / "result.json"),
            "partition_rows": args.rank_partition_rows}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    code, out, tree_peak = run_measured([sys.executable, str(Path(__file__).resolve()), "--child",
                                         str(run_dir / "spec.json")], stderr=subprocess.STDOUT, cwd=ROOT)
    (run_dir / "log.txt").write_text(out)
    if code != 0:
        raise SystemExit(f"the run at {pairs:,} pairs failed (exit {code}); log {run_dir / 'log.txt'}:\n{out[-4000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    shutil.rmtree(run_dir / "out")  # (10^7 pairs of output; the result and log stay)
    return {**result, "tree_rss": tree_peak, "spread": spread, "night": night, "shard_pairs": args.shard_pairs}


# --- the tables -------------------------------------------------------------------------------------

def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of seconds = a * sizes^b, least squares on log-log."""
    b, log_a = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def layout(r: dict) -> str:
    name = "spread" if r["spread"] else "by file"
    return f"{name}, cache night {r['night']}" if r["night"] else name


def print_tables(results: list[dict], args: argparse.Namespace) -> None:
    print(f"{args.candidates} candidates per query over {args.files} Parquet files; ZeroCostScorer (CRC-32 of the "
          f"texts), 1 actor x 1 CPU, batch_size {args.batch_size}; local Ray with 2 CPUs on {cpu()}; "
          f"ray {results[0]['versions']['ray']}, pyarrow {results[0]['versions']['pyarrow']}\n")
    stages = list(dict.fromkeys(s for r in results for s in r["seconds"]))
    print("| layout | pairs | Ray start s | wall s | pairs/s | " + " | ".join(
        f"{s} s (start-up)" if s == "score" else f"{s} s" for s in stages)
        + " | other s | rank path | driver peak RSS | tree peak RSS | object store peak | spilled |")
    print("|---|---|---|---|---|" + "---|" * len(stages) + "---|---|---|---|---|---|")
    for r in results:
        cells = [f"{r['seconds'][s]:.1f} ({r['score_startup_s']:.1f})" if s == "score"
                 else f"{r['seconds'][s]:.1f}" if s in r["seconds"] else "-" for s in stages]
        other = r["wall"] - sum(r["seconds"].values())
        print(f"| {layout(r)} | {r['pairs']:,} | {r['ray_init']:.1f} | {r['wall']:.1f} | "
              f"{r['pairs'] / r['wall']:,.0f} | " + " | ".join(cells) + f" | {other:.1f} | {r['rank_path']} | "
              f"{mib(r['driver_rss'])} | {mib(r['tree_rss'])} | {mib(r['store_peak'])} | {mib(r['spilled'])} |")
    checks = [f"{r['verified']:,} scores at {r['pairs']:,} ({layout(r)}) "
              f"with the hook in {r['hooked_workers']} worker processes" for r in results]
    print("\nZeroCostScorer's scores checked against the input texts: " + "; ".join(checks) + ".")

    print_over_time(results)
    by_file = sorted((r for r in results if not r["spread"] and not r["night"]), key=lambda r: r["pairs"])
    if len(by_file) >= 2:
        sizes = [r["pairs"] for r in by_file]
        parts = []
        for name, get in (("wall", lambda r: r["wall"]), ("wall - score start-up",
                                                          lambda r: r["wall"] - r["score_startup_s"]),
                          ("score", lambda r: r["seconds"]["score"]), ("rank", lambda r: r["seconds"]["rank"])):
            a, b = fit(sizes, [get(r) for r in by_file])
            parts.append(f"{name} {a:.3g} * pairs^{b:.3f}")
        print(f"\nFit over the by-file runs ({', '.join(f'{n:,}' for n in sizes)} pairs): " + "; ".join(parts))
    print_targets(by_file)
    print_gate_cost(results)
    print_cache_nights(results, by_file)
    pairs_both = sorted({r["pairs"] for r in results if r["spread"]} & {r["pairs"] for r in by_file})
    if pairs_both:
        print("\n| pairs | rank s, by file | rank s, spread | spread / by file | spread's rank path |")
        print("|---|---|---|---|---|")
        for n in pairs_both:
            one = next(r for r in by_file if r["pairs"] == n)
            two = next(r for r in results if r["spread"] and r["pairs"] == n)
            rank_one, rank_two = one["seconds"]["rank"], two["seconds"]["rank"]
            print(f"| {n:,} | {rank_one:.1f} | {rank_two:.1f} | {rank_two / rank_one:.2f}x | {two['rank_path']} |")


def at(series: list[list[float]], t: float) -> list[float]:
    """The last sample taken by `t` seconds into the run (else the first)."""
    return next((row for row in reversed(series) if row[0] <= t), series[0])


def print_over_time(results: list[dict]) -> None:
    """Where the memory peaks fall: the score stage's start-up, its steady state, or the rank stage."""
    print("\n| layout | pairs | score stage: start-up ends, ends (s into the run) | object store peak at (s) | "
          "object store when the first batch began | driver RSS: first batch, end of score, peak | "
          "driver RSS growth while scoring, per 10^6 pairs |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        series = r["series"]
        if not series:
            continue
        up = r["seconds"]["validate"] + r["score_startup_s"]
        end = r["seconds"]["validate"] + r["seconds"]["score"]
        peak = max(series, key=lambda row: row[1])
        first, last = at(series, up), at(series, end)
        growth = (last[2] - first[2]) / max(r["scored_now"], 1) * 1e6
        print(f"| {layout(r)} | {r['pairs']:,} | {up:.1f}, {end:.1f} | {peak[0]:.1f} | "
              f"{mib(first[1])} | {mib(first[2])}, {mib(last[2])}, {mib(max(row[2] for row in series))} | "
              f"{growth / 2**20:+,.1f} MiB |")


def print_cache_nights(results: list[dict], by_file: list[dict]) -> None:
    """Per size with cache nights: what each night took from the cache, and the driver's
    peak RSS against the run without a cache."""
    nights = [r for r in results if r["night"]]
    if not nights:
        return
    plain = {r["pairs"]: r for r in by_file}
    print("\n| pairs | night | cache entries | from the cache | scored | shard actors | wall s | score s | "
          "cache write s | driver peak RSS | vs no cache | |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in nights:
        base = plain.get(r["pairs"])
        ratio = r["driver_rss"] / base["driver_rss"] if base else float("nan")
        verdict = "" if not base else "met" if ratio <= TARGET_CACHE_RSS_RATIO else "MISSED"
        shards = math.ceil(r["cache_entries"] / r["shard_pairs"])
        print(f"| {r['pairs']:,} | {r['night']} | {r['cache_entries']:,} | {r['cached']:,} | {r['scored_now']:,} | "
              f"{shards} | {r['wall']:.1f} | {r['seconds']['score']:.1f} | {r['seconds'].get('cache', 0):.1f} | "
              f"{mib(r['driver_rss'])} | {ratio:.2f}x | {verdict} |")
    print(f"(target: driver peak RSS with the cache within {TARGET_CACHE_RSS_RATIO}x of the run without one)")


def print_targets(by_file: list[dict]) -> None:
    by_size = {r["pairs"]: r for r in by_file}
    big, small = by_size.get(10**7), by_size.get(10**6)
    label = "10^6 -> 10^7"
    if not (big and small) and len(by_file) >= 2:  # (a smaller pair of sizes, shown as such)
        small, big = by_file[-2], by_file[-1]
        label = f"{small['pairs']:,} -> {big['pairs']:,}, NOT the target's sizes"
    print()
    if big is None or small is None:
        print("Targets: not measured (need two by-file sizes, 10^6 and 10^7 for the targets themselves)")
        return
    rate = big["pairs"] / big["wall"]
    rss, wall = big["driver_rss"] / small["driver_rss"], big["wall"] / small["wall"]
    rows = [
        (f"end to end at {big['pairs']:,} pairs{'' if big['pairs'] == 10**7 else ' (NOT 10^7)'} >= "
         f"{TARGET_PAIRS_PER_S:,} pairs/s", f"{rate:,.0f} pairs/s",
         rate >= TARGET_PAIRS_PER_S),
        (f"driver peak RSS ratio ({label}) <= {TARGET_RSS_RATIO}x", f"{rss:.2f}x", rss <= TARGET_RSS_RATIO),
        (f"wall time ratio ({label}) <= {TARGET_TIME_RATIO:g}x", f"{wall:.2f}x", wall <= TARGET_TIME_RATIO),
    ]
    print("| target | measured | |")
    print("|---|---|---|")
    for target, measured, ok in rows:
        print(f"| {target} | {measured} | {'met' if ok else 'MISSED'} |")


def print_gate_cost(results: list[dict]) -> None:
    """The gates stage against the rank stage: score health on every run; with --spread, also
    drift against the by-file run of the same size (its baseline: a second output read)."""
    rows = [r for r in results if not r["night"] and "gates" in r["seconds"]]
    if not rows:
        return
    print(f"\n| pairs | layout | gates read | gates s | rank s | gates / rank | target at 10^6 <= "
          f"{TARGET_GATES_SHARE:.0%} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = r["seconds"]["gates"] / r["seconds"]["rank"]
        verdict = ("met" if share <= TARGET_GATES_SHARE else "MISSED") if r["pairs"] == 10**6 else ""
        read = "output + baseline (drift)" if r["spread"] else "output (health)"
        print(f"| {r['pairs']:,} | {layout(r)} | {read} | {r['seconds']['gates']:.2f} | {r['seconds']['rank']:.2f} | "
              f"{share:.1%} | {verdict} |")


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name} ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="pairs per run, comma-separated (1e5 = 100,000)")
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=100, help="candidates per query")
    parser.add_argument("--spread", action="store_true",
                        help="also run every size with each query's candidates spread over all the files")
    parser.add_argument("--batch-size", type=int, default=4096, help="actor.batch_size")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "batch-rerank-pipeline-scale"),
                        help="keeps the generated input between runs")
    parser.add_argument("--rank-partition-rows", type=int, default=None,
                        help="pairs per partition of the rank stage's shuffle instead of the job's 1,000,000 "
                             "(jobs.stages.ROWS_PER_RANK_PARTITION), to try the shuffle at small sizes")
    parser.add_argument("--cache-nights", action="store_true",
                        help="per size, also two nights with the score cache (the second with --changed revised)")
    parser.add_argument("--changed", type=float, default=0.1, help="share of pairs night 2 revises")
    parser.add_argument("--shard-pairs", type=lambda s: int(float(s)), default=4_000_000,
                        help="cache.shard_pairs of the cache nights")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    work = Path(args.work).resolve()
    results = []
    for spread in (False, True) if args.spread else (False,):
        for pairs in sizes:
            inputs = input_dir(work, pairs, args.files, args.candidates, spread)
            results.append(run_size(work, inputs, pairs, spread, args))
            print(f"ran {pairs:,} pairs ({layout(results[-1])}): {results[-1]['wall']:.1f} s", file=sys.stderr)
            if args.cache_nights and not spread:
                every = round(1 / args.changed)
                revised = input_dir(work, pairs, args.files, args.candidates, False, every)
                for night, data in ((1, inputs), (2, revised)):
                    results.append(run_size(work, data, pairs, False, args, night))
                    print(f"ran {pairs:,} pairs ({layout(results[-1])}): {results[-1]['wall']:.1f} s", file=sys.stderr)
    print_tables(results, args)


if __name__ == "__main__":
    main()
