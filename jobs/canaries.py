"""Canary files: read one for a run (gates.canaries), or write one from a published output.

    python -m jobs.canaries --config <job yaml> --out canaries.parquet [--pairs 16] [key.sub=value ...]

A canary file is Parquet with `query`, `doc`, optionally `instruction`, and one score column
per model it checks, named as that model's scores are named in the output: `score` (a
one-stage rerank), `stage<i>_score` (a cascade's stage i), `score_<teacher>` (distillation).
Every scoring actor of the run scores the pairs of its own column right after its model
loads, and stops the job (exit status 3) if one moved more than gates.canary_tolerance.

Written from a published output (`output.path`, which must hold a `_SUCCESS`) and the
job's input: `--pairs` pairs spread over the range of the final scores (the lowest, the
highest and evenly between, in score order, among pairs every model scored), with their
texts read through the job's own input path, so they are exactly the texts the model saw.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import ConfigError, find_user_error
from jobs.schema import DOC, DOC_ID, INSTRUCTION, QUERY, QUERY_ID
from reranker_actors.canaries import Canaries

TEXT_COLUMNS = ("query", "doc")
INSTRUCTION_COLUMN = "instruction"
TITLE_COLUMN = "title"  # passages.title's text, where the job has one
MAX_CANARIES = 10_000
SAMPLE_ROWS = 200_000  # output rows the pairs are chosen among


@dataclass(frozen=True)
class CanaryFile:
    url: str
    table: pa.Table
    tolerance: float

    def for_column(self, column: str) -> dict[str, Any] | None:
        """What an actor scoring `column` checks (reranker_actors.canaries.Canaries' fields), or None."""
        if column not in self.table.column_names:
            return None
        instructions = (self.table[INSTRUCTION_COLUMN].to_pylist()
                        if INSTRUCTION_COLUMN in self.table.column_names else None)
        titles = self.table[TITLE_COLUMN].to_pylist() if TITLE_COLUMN in self.table.column_names else None
        return asdict(Canaries(self.url, self.table["query"].to_pylist(), self.table["doc"].to_pylist(),
                               instructions, self.table[column].to_pylist(), self.tolerance, titles))


def load_canaries(url: str, columns: list[str], tolerance: float) -> CanaryFile:
    """Read and check gates.canaries before any work: texts present, and a finite recorded
    score in at least one of the job's score `columns`."""
    where = f"gates.canaries {url!r}"
    try:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowInvalid) as e:
        raise ConfigError(f"{where}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    errors = [f"missing column {c!r}" for c in TEXT_COLUMNS if c not in table.column_names]
    mine = [c for c in columns if c in table.column_names]
    if not mine:
        errors.append(f"no score column of this job: it has {', '.join(table.column_names)}; this job's "
                      f"scores are named {', '.join(columns)}")
    if not errors:
        if not 0 < len(table) <= MAX_CANARIES:
            errors.append(f"{len(table)} rows; a canary file holds 1 to {MAX_CANARIES:,} pairs")
        for c in (*TEXT_COLUMNS, *([INSTRUCTION_COLUMN] if INSTRUCTION_COLUMN in table.column_names else [])):
            if not pa.types.is_string(table[c].type) and not pa.types.is_large_string(table[c].type):
                errors.append(f"column {c!r} must be strings, got {table[c].type}")
            elif c in TEXT_COLUMNS and table[c].null_count:
                errors.append(f"column {c!r} has {table[c].null_count} null value(s)")
        for c in mine:
            values = pc.cast(table[c], pa.float64()).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                errors.append(f"column {c!r} row {int(bad[0])}: the recorded score is null, NaN or infinite")
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(errors))
    return CanaryFile(url, table, tolerance)


def choose(table: pa.Table, final: str, pairs: int) -> pa.Table:
    """`pairs` rows spread over the range of `final`, in score order (both ends included)."""
    table = table.sort_by([(final, "ascending"), (QUERY_ID, "ascending"), (DOC_ID, "ascending")])
    picks = np.unique(np.linspace(0, len(table) - 1, min(pairs, len(table))).round().astype(np.int64))
    return table.take(pa.array(picks))


def published_scores(output: str, columns: list[str], teachers: list[Any] | None) -> pa.Table:
    """(query_id, doc_id, score columns) of up to SAMPLE_ROWS pairs of a published output,
    keeping pairs every one of `columns` scored. Distillation records are flattened."""
    from jobs.output import SUCCESS, OutputDir
    from jobs.report_html import sample_rows

    out = OutputDir(output)
    if not out.fs.exists(out.path(SUCCESS)):
        raise ConfigError(f"output.path {output!r}: no {SUCCESS}; canaries are recorded from a published run")
    files = out.data_files()
    if teachers:
        nested = sample_rows(out.fs, files, [QUERY_ID, "candidates"], SAMPLE_ROWS // 100)
        flat, parent = pc.list_flatten(nested["candidates"]), pc.list_parent_indices(nested["candidates"])
        table = pa.table({QUERY_ID: nested[QUERY_ID].take(parent), DOC_ID: pc.struct_field(flat, DOC_ID),
                          **{t.column: pc.struct_field(flat, t.name) for t in teachers}})
    else:
        table = sample_rows(out.fs, files, [QUERY_ID, DOC_ID, *columns], SAMPLE_ROWS)
    for c in columns:
        table = table.filter(pc.is_valid(table[c]))
    if not len(table):
        raise ConfigError(f"output.path {output!r}: no pair that every model scored ({', '.join(columns)})")
    return table


def texts_of(job: Any, title: str | None, chosen: pa.Table, scratch: str) -> pa.Table:
    """The chosen pairs' texts (and instructions, and passages.title's column `title`), read
    through the job's own input path."""
    import ray

    from jobs.inputs import discover
    from jobs.ray_runtime import ray_session
    from jobs.run_inputs import convert_runs
    from jobs.stages import read_pairs
    from jobs.units import plan_units

    wanted = {(q, d) for q, d in zip(chosen[QUERY_ID].to_pylist(), chosen[DOC_ID].to_pylist(), strict=True)}
    keys = pa.array([f"{q}\t{d}" for q, d in sorted(wanted)])
    inputs = discover(job.input, job.title_apart)
    fs, root = fsspec.core.url_to_fs(scratch)
    with ray_session(job.ray):
        inputs = convert_runs(inputs, fs, posixpath.join(root, "converted"))
        ds = read_pairs(inputs, inputs.cfg or job.input, plan_units(inputs.files, {}, 4096))

        def keep(batch: pa.Table) -> pa.Table:
            key = pc.binary_join_element_wise(batch[QUERY_ID], batch[DOC_ID], "\t")
            cols = [QUERY_ID, DOC_ID, QUERY, DOC, *([INSTRUCTION] if INSTRUCTION in batch.column_names else []),
                    *([title] if title else [])]
            return batch.filter(pc.is_in(key, keys)).select(cols)

        found = pa.concat_tables([ray.get(b) for b in ds.map_batches(keep, batch_format="pyarrow",
                                                                     batch_size=None).to_arrow_refs()])
    if fs.exists(root):
        fs.rm(root, recursive=True)
    keys_found = pc.binary_join_element_wise(found[QUERY_ID], found[DOC_ID], "\t").to_pylist()
    first = sorted({k: i for i, k in reversed(list(enumerate(keys_found)))}.values())  # (a pair twice: once)
    return found.take(pa.array(first, pa.int64()))


def record(cfg: Any, pairs: int) -> pa.Table:
    """The canary table of `cfg`'s published output: texts, optional instruction, score columns."""
    from jobs.distill_labels import DistillJob
    from jobs.output import STAGING
    from jobs.rerank import RerankJob

    teachers = getattr(cfg, "teachers", None)
    job = DistillJob(cfg) if teachers else RerankJob(cfg)
    columns = job.score_columns()
    final = columns[0] if teachers else columns[-1]  # (a cascade's last stage; distillation: its first teacher)
    scores = published_scores(cfg.output.path, columns, teachers)
    chosen = choose(scores, final, pairs)
    title = cfg.passages.title if cfg.passages else None
    texts = texts_of(job, title, chosen, posixpath.join(cfg.output.path, STAGING, "canaries"))
    table = chosen.join(texts, [QUERY_ID, DOC_ID], join_type="inner")
    if len(table) < len(chosen):
        raise ConfigError(f"input.path {cfg.input.path!r}: {len(chosen) - len(table)} of the chosen pairs of "
                          f"output.path {cfg.output.path!r} are not in the input; record canaries with the "
                          "config of the run that published it")
    table = table.sort_by([(final, "ascending")])
    out = {"query_id": table[QUERY_ID], "doc_id": table[DOC_ID], "query": table[QUERY], "doc": table[DOC]}
    if INSTRUCTION in table.column_names and table[INSTRUCTION].null_count < len(table):
        out[INSTRUCTION_COLUMN] = table[INSTRUCTION]
    if title:
        out[TITLE_COLUMN] = pc.fill_null(table[title].cast(pa.string()), "")
    return pa.table(out | {c: pc.cast(table[c], pa.float32()) for c in columns})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.canaries", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the job YAML of the run that published output.path")
    parser.add_argument("--out", required=True, help="the canary Parquet to write (local or s3://)")
    parser.add_argument("--pairs", type=int, default=16, help="how many canary pairs (default 16)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    try:
        text = Path(args.config).read_text() if Path(args.config).exists() else ""
        if "teachers:" in text:
            from jobs.distill_config import load_config
        else:
            from jobs.config import load_config  # type: ignore[assignment]
        cfg = load_config(args.config, args.overrides)
        table = record(cfg, args.pairs)
        fs, path = fsspec.core.url_to_fs(args.out)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
    except Exception as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        print(f"batch-rerank: error: {user_error}", file=sys.stderr)
        return user_error.exit_status
    shown = {c: [round(float(v), 4) for v in table[c].to_pylist()] for c in table.column_names if "score" in c}
    print(f"wrote {len(table)} canary pairs to {args.out}: {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
