"""The run layout (ids + corpus + queries, joined on the cluster) against the flat layout
(texts inlined in every pair), when scoring costs nothing but the tokenizer.

    .venv/bin/python benchmarks/run_layout.py [--sizes 1e5,1e6] [--big 1e7] [--scifact ../shared/data/scifact]
        [--work DIR]

Synthetic data, per size: `pairs` pairs, 100 candidates per query, every document retrieved
by 10 queries (pair i is document (i * 7919) mod (pairs / 10): each document 10 times,
never twice in a query), documents of about 1 KB (eight sentences of made-up words, then
the id), queries of 3-10 words; first-stage score and rank. Written once under `--work` in
16 files: the flat layout (every pair with both texts), and the run layout (run Parquet
of ids, corpus Parquet, queries Parquet). `--big` runs the run layout alone (the flat copy
would take about 10 GB here).

Scorer: `TokenizingScorer`, defined here and not shipped: the cross_encoder family's config,
which loads only the tokenizer of `reranker.model` (the real XLM-R tokenizer of
bge-reranker-v2-m3, built offline by tests/offline_tokenizers.py) and encodes every batch
with the engine's own `TextEncoder.encode_pairs`, as an actor does before its forward pass,
then scores by CRC-32 like benchmarks/pipeline_scale.py's ZeroCostScorer. Each actor
process records the seconds it spent encoding. Every run is its own process, as in
pipeline_scale.py (local Ray, 2 CPUs, 1 actor x 1 CPU, batch_size 4096).

Columns: wall (validation to _SUCCESS) and pairs/s end to end; the stages; input bytes
(the files the run reads); tokenizer seconds and microseconds per pair; the driver's peak
RSS, the largest other process's (a Ray worker, raylet or GCS), and the object store's peak,
bytes created (what passed through it: blocks, shuffle partitions) and spilled.

`--scifact`: SciFact's BM25 top-100 (../shared/data), its texts as the flat layout inlines
them, both layouts, tokenizer time per pair with the XLM-R tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_scale import HOOK_DIR_ENV, ROOT, ZeroCostScorer, cpu, mib, zero_cost_scores
from reranker_actors.base import Scores

HOOK = "benchmarks.run_layout.register_scorer"
FILES = 16
CANDIDATES = 100
PAIRS_PER_DOC = 10
DATA_VERSION = 1


class TokenizingScorer(ZeroCostScorer):
    """ZeroCostScorer that encodes every batch as the engine does first (and times it)."""

    def __init__(self, config: Any, device: Any) -> None:  # (no model to load: the tokenizer alone)
        import os

        from transformers import AutoTokenizer

        super().__init__(config, device)
        self.encoder = self.make_encoder(AutoTokenizer.from_pretrained(config.model))
        self.log = Path(os.environ[HOOK_DIR_ENV], f"tokenizer-{os.getpid()}")

    def score(self, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> Scores:
        began = time.perf_counter()
        encoded = self.encoder.encode_pairs(queries, docs)
        with self.log.open("a") as f:
            f.write(f"{len(queries)} {time.perf_counter() - began}\n")
        return Scores(zero_cost_scores(queries, docs), np.array(encoded.cut))


def register_scorer() -> None:
    """Ray's worker_process_setup_hook: `cross_encoder` is TokenizingScorer in this process."""
    import os

    from reranker_actors import registry

    registry.BACKENDS["cross_encoder"] = TokenizingScorer
    if os.environ.get(HOOK_DIR_ENV):
        Path(os.environ[HOOK_DIR_ENV], str(os.getpid())).touch()


# --- synthetic input -----------------------------------------------------------------------------------------------

def _words(rng: np.random.Generator, count: int, low: int, high: int) -> Any:
    import pyarrow as pa

    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = ["".join(rng.choice(letters, n)) for n in rng.integers(2, 10, 4000)]
    return pa.array([" ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), n))
                     for n in rng.integers(low, high + 1, count)])


def make_data(work: Path, pairs: int, flat: bool = True) -> Path:
    """The run layout of `pairs` pairs under work/data, and the flat layout unless not `flat`
    (made once; `.json` marks it complete)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    dest = work / "data" / f"v{DATA_VERSION}-{pairs}{'' if flat else '-run-only'}"
    if dest.with_suffix(".json").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("flat", "run", "corpus", "queries"):
        (dest / sub).mkdir(parents=True)
    rng = np.random.default_rng(24)
    sentences, query_texts = _words(rng, 1024, 18, 22), _words(rng, 1024, 3, 10)
    docs, queries = pairs // PAIRS_PER_DOC, pairs // CANDIDATES

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(values), pa.string()), "")

    def doc_texts(numbers: np.ndarray) -> pa.Array:
        parts = [sentences.take(pa.array((numbers * (2 * k + 1) * 2_654_435_761 + k) % 1024)) for k in range(8)]
        return pc.binary_join_element_wise(*parts, ids("d", numbers), " ")

    for f in range(FILES):
        rows = np.arange(f * pairs // FILES, (f + 1) * pairs // FILES, dtype=np.int64)
        query, doc = rows // CANDIDATES, (rows * 7919) % docs
        run = pa.table({"query_id": ids("q", query), "doc_id": ids("d", doc),
                        "bm25_score": pa.array(30.0 - (rows % CANDIDATES) * 0.2),
                        "bm25_rank": pa.array((rows % CANDIDATES + 1).astype(np.int32))})
        pq.write_table(run, dest / "run" / f"part-{f:05d}.parquet")
        if flat:
            inlined = run.append_column("query", query_texts.take(pa.array(query % 1024))).append_column(
                "doc", doc_texts(doc))
            pq.write_table(inlined, dest / "flat" / f"part-{f:05d}.parquet")
        numbers = np.arange(f * docs // FILES, (f + 1) * docs // FILES, dtype=np.int64)
        pq.write_table(pa.table({"doc_id": ids("d", numbers), "doc": doc_texts(numbers)}),
                       dest / "corpus" / f"part-{f:05d}.parquet")
    numbers = np.arange(queries, dtype=np.int64)
    pq.write_table(pa.table({"query_id": ids("q", numbers), "query": query_texts.take(pa.array(numbers % 1024))}),
                   dest / "queries" / "queries.parquet")
    dest.with_suffix(".json").write_text(json.dumps({"pairs": pairs}))
    return dest


def scifact_data(work: Path, scifact: Path) -> Path:
    """SciFact's BM25 top-100: flat as the candidates file holds it, and as a run + corpus + queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = work / "data" / "scifact"
    if dest.with_suffix(".json").exists():
        return dest
    table = pq.read_table(scifact / "candidates.parquet")
    for sub in ("flat", "run", "corpus", "queries"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest / "flat" / "part-0.parquet")
    pq.write_table(table.select(["query_id", "doc_id", "bm25_score", "bm25_rank"]), dest / "run" / "part-0.parquet")
    docs = dict(zip(table["doc_id"].to_pylist(), table["doc"].to_pylist(), strict=True))
    queries = dict(zip(table["query_id"].to_pylist(), table["query"].to_pylist(), strict=True))
    pq.write_table(pa.table({"doc_id": list(docs), "doc": list(docs.values())}), dest / "corpus" / "part-0.parquet")
    pq.write_table(pa.table({"query_id": list(queries), "query": list(queries.values())}),
                   dest / "queries" / "queries.parquet")
    dest.with_suffix(".json").write_text(json.dumps({"pairs": len(table)}))
    return dest


# --- one run, in its own process ---------------------------------------------------------------------------------

def run_once(work: Path, data: Path, layout: str, name: str, tokenizer: str) -> dict:
    import yaml

    from benchmarks.throughput import run_measured

    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "hooks").mkdir(parents=True)
    inputs = {"path": str(data / "flat"), "columns": {"score": "bm25_score", "rank": "bm25_rank"}}
    if layout == "run":
        inputs |= {"layout": "run", "path": str(data / "run"), "corpus": str(data / "corpus"),
                   "queries": str(data / "queries")}
    cfg = {"input": inputs, "reranker": {"backend": "cross_encoder", "model": tokenizer, "dtype": "float32"},
           "actor": {"pool_size": 1, "num_cpus": 1, "threads": 1, "batch_size": 4096},
           "output": {"path": str(run_dir / "out")}, "ray": {"num_cpus": 2}}
    (run_dir / "job.yaml").write_text(yaml.safe_dump(cfg))
    spec = {"config": str(run_dir / "job.yaml"), "input": str(data / "flat"), "output": str(run_dir / "out"),
            "hooks": str(run_dir / "hooks"), "result": str(run_dir / "result.json"), "partition_rows": None,
            "hook": HOOK, "verify": False}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    code, out, tree_peak = run_measured([sys.executable, str(ROOT / "benchmarks" / "pipeline_scale.py"), "--child",
                                         str(run_dir / "spec.json")], stderr=subprocess.STDOUT, cwd=ROOT)
    (run_dir / "log.txt").write_text(out)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); log {run_dir / 'log.txt'}:\n{out[-4000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    lines = [line.split() for log in (run_dir / "hooks").glob("tokenizer-*") for line in log.read_text().splitlines()]
    result["tokenized_pairs"] = sum(int(n) for n, _ in lines)
    result["tokenizer_s"] = sum(float(s) for _, s in lines)
    result["input_bytes"] = sum(p.stat().st_size for sub in (("run", "corpus", "queries") if layout == "run"
                                                             else ("flat",)) for p in (data / sub).rglob("*.parquet"))
    result["tree_rss"], result["layout"] = tree_peak, layout
    shutil.rmtree(run_dir / "out")
    return result


def print_table(results: list[dict]) -> None:
    stages = list(dict.fromkeys(s for r in results for s in r["seconds"]))
    print("| layout | pairs | wall s | pairs/s | " + " | ".join(f"{s} s" for s in stages)
          + " | input | tokenizer s | tokenizer µs/pair | driver peak RSS | largest worker RSS | "
            "object store peak | through the object store | spilled |")
    print("|---|---|---|---|" + "---|" * len(stages) + "---|---|---|---|---|---|---|---|")
    for r in results:
        cells = " | ".join(f"{r['seconds'][s]:.1f}" if s in r["seconds"] else "-" for s in stages)
        per_pair = r["tokenizer_s"] / max(r["tokenized_pairs"], 1) * 1e6
        print(f"| {r['label']} | {r['pairs']:,} | {r['wall']:.1f} | {r['pairs'] / r['wall']:,.0f} | {cells} | "
              f"{mib(r['input_bytes'])} | {r['tokenizer_s']:.1f} | {per_pair:.1f} | {mib(r['driver_rss'])} | "
              f"{mib(r['worker_peak_rss'])} | {mib(r['store_peak'])} | {mib(r['store_created'])} | "
              f"{mib(r['spilled'])} |")


def print_ratios(results: list[dict]) -> None:
    by = {(r["label"], r["pairs"]): r for r in results}
    rows = []
    for (label, pairs), run in by.items():
        if not label.startswith("run") or ("flat" + label[3:], pairs) not in by:
            continue
        flat = by[("flat" + label[3:], pairs)]
        speed = (run["pairs"] / run["wall"]) / (flat["pairs"] / flat["wall"])
        tok = (flat["tokenizer_s"] / flat["tokenized_pairs"]) / (run["tokenizer_s"] / run["tokenized_pairs"])
        rss = run["driver_rss"] / flat["driver_rss"]
        rows.append(f"| {label[4:] or 'synthetic'} | {pairs:,} | {speed:.2f}x | {tok:.2f}x | {rss:.2f}x |")
    if rows:
        print("\n| data | pairs | run / flat pairs/s | flat / run tokenizer time per pair | "
              "run / flat driver peak RSS |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6", help="pairs, both layouts (comma-separated)")
    parser.add_argument("--big", default="", help="pairs, the run layout alone (e.g. 1e7)")
    parser.add_argument("--scifact", default="", help="SciFact's directory: tokenizer time per pair on real data")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "batch-rerank-run-layout"))
    args = parser.parse_args()
    work = Path(args.work).resolve()
    tokenizer = work / "xlmr-tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        from tests.offline_tokenizers import build_xlmr_tokenizer

        build_xlmr_tokenizer(tokenizer)
    plan = [(int(float(n)), layout, True) for n in args.sizes.split(",") if n for layout in ("flat", "run")]
    plan += [(int(float(n)), "run", False) for n in args.big.split(",") if n]
    results = []
    if args.scifact:
        data = scifact_data(work, Path(args.scifact))
        for layout in ("flat", "run"):
            r = run_once(work, data, layout, f"scifact-{layout}", str(tokenizer))
            results.append(r | {"label": f"{layout} scifact"})
            print(f"ran scifact ({layout}): {r['wall']:.1f} s", file=sys.stderr)
    for pairs, layout, both in plan:
        r = run_once(work, make_data(work, pairs, both), layout, f"{layout}-{pairs}", str(tokenizer))
        results.append(r | {"label": layout})
        print(f"ran {pairs:,} pairs ({layout}): {r['wall']:.1f} s", file=sys.stderr)
    print(f"TokenizingScorer (XLM-R tokenizer, max_length 512), 1 actor x 1 CPU, batch_size 4096; local Ray with "
          f"2 CPUs on {cpu()}\n")
    print_table(results)
    print_ratios(results)


if __name__ == "__main__":
    main()
