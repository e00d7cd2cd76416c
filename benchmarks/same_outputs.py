"""Run the bundled-sample jobs a refactor must not change, or compare two such runs bit for bit.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/same_outputs.py run /tmp/before --repo /tmp/old
    .venv/bin/python benchmarks/same_outputs.py run /tmp/after
    .venv/bin/python benchmarks/same_outputs.py compare /tmp/before /tmp/after

Five jobs on samples/cranfield (600 pairs): the demo (all-MiniLM-L6-v2 bi-encoder, dtype
auto) and the same in float32, the cascade and the distillation configs with tiny BERT,
XLM-R and Qwen3 models, and the Qwen3 custom-instruction config. Each actor gets all 600
pairs in one call (actor.batch_size above that): with smaller calls, which pairs share a
forward pass depends on when Ray Data's blocks arrive, and bf16/fp32 sums then differ in the
last bits from run to run. `compare` prints, per output table, its rows, whether every
column is identical, and the largest score difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parents[1]
ONE_CALL = "batch_size=100000"
SAMPLE = ["input.path=samples/cranfield/candidates", "input.columns.score=bm25_score",
          "input.columns.rank=bm25_rank"]
CPU = ["actor.num_gpus=0", "actor.num_cpus=0.5", "actor.pool_size=1", f"actor.{ONE_CALL}"]


def jobs(models: Path) -> dict[str, list[str]]:
    """Name -> the job's command line after `python -m`."""
    cascade_cpu = [c.replace("actor.", "cascade.0.actor.") for c in CPU]
    teachers = [c.replace("actor.", f"teachers.{i}.actor.") for i in (0, 1) for c in CPU]
    return {
        "demo": ["jobs.rerank", "--config", "configs/demo.yaml", f"actor.{ONE_CALL}"],
        "demo-fp32": ["jobs.rerank", "--config", "configs/demo.yaml", f"actor.{ONE_CALL}", "reranker.dtype=float32"],
        "cascade": ["jobs.rerank", "--config", "configs/cascade_minilm_bge_m3.yaml", *SAMPLE, *CPU, *cascade_cpu,
                    f"reranker.model={models / 'bert'}", f"cascade.0.reranker.model={models / 'xlmr'}",
                    "reranker.dtype=float32", "cascade.0.reranker.dtype=float32",
                    "eval.qrels=samples/cranfield/qrels.parquet"],
        "qwen3": ["jobs.rerank", "--config", "configs/qwen3_custom_instruction.yaml", f"actor.{ONE_CALL}",
                  f"reranker.model={models / 'qwen3'}", "reranker.dtype=float32"],
        "distill": ["jobs.distill_labels", "--config", "configs/distill_qwen3_8b_bge_m3.yaml", *SAMPLE, *teachers,
                    "qrels=samples/cranfield/qrels.parquet", f"teachers.0.reranker.model={models / 'qwen3'}",
                    f"teachers.1.reranker.model={models / 'xlmr'}", "teachers.0.reranker.dtype=float32",
                    "teachers.1.reranker.dtype=float32"],
    }


def run(out: Path, repo: Path) -> None:
    """The jobs of the checkout `repo` (its code first on the path), outputs under `out`."""
    models = out / "models"
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(repo)}
    for kind in ("bert", "xlmr", "qwen3"):
        if not (models / kind).is_dir():
            subprocess.run([sys.executable, "-m", "tests.tiny_models", kind, str(models / kind)], cwd=repo, env=env,
                           check=True)
    for name, command in jobs(models).items():
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.run([sys.executable, "-m", *command, f"output.path={out / name}"], cwd=repo,
                                  env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{name}: exit {code}, log {out / name}.log", flush=True)


def _table(path: Path) -> pa.Table:
    table = pads.dataset(str(path), format="parquet").to_table()
    keys = [(c, "ascending") for c in ("query_id", "doc_id", "query", "doc") if c in table.column_names]
    return table.take(pc.sort_indices(table, keys))


def _max_diff(a: pa.Table, b: pa.Table) -> str:
    if "score" not in a.column_names:
        return "-"
    x, y = (np.asarray(t["score"].to_pylist(), dtype=np.float64) for t in (a, b))
    return f"{np.nanmax(np.abs(x - y)):.2e}" if len(x) == len(y) else "-"


def compare(a: Path, b: Path) -> None:
    print("| output | rows A | rows B | every column identical | max abs score diff |")
    print("|---|---|---|---|---|")
    for name in jobs(Path()):
        for sub in ("", "_cross_encoder", "_quarantine"):
            if not (a / name / sub).is_dir() and not (sub == "" and (a / name).is_dir()):
                continue
            ta, tb = _table(a / name / sub), _table(b / name / sub)
            print(f"| {name}/{sub or 'part-*'} | {len(ta)} | {len(tb)} | {ta.equals(tb)} | {_max_diff(ta, tb)} |")
        lines = [sorted(line for f in sorted((d / name / "_flag_embedding").glob("*.json"))
                        for line in f.read_text().splitlines()) for d in (a, b)]
        if lines[0]:
            print(f"| {name}/_flag_embedding | {len(lines[0])} | {len(lines[1])} | {lines[0] == lines[1]} | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    runs = sub.add_parser("run")
    runs.add_argument("out", type=Path)
    runs.add_argument("--repo", type=Path, default=REPO, help="the checkout whose jobs run (default: this one)")
    both = sub.add_parser("compare")
    both.add_argument("a", type=Path)
    both.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.what == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.out, args.repo)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
