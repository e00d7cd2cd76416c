"""The quarantine: every pair the job did not score, with its reason and input file.

Written per checkpoint part (rows of one input file) from the checkpoints, staged, and published with the ranked
rows as `_quarantine/part-NNNNN.parquet` (see jobs.output).
"""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.checkpoints import Checkpoints
from jobs.schema import DOC, DOC_ID, QUERY, QUERY_ID, SCORE, SKIP_REASON
from jobs.stages import Scored
from reranker_actors.actor import NON_FINITE

REASON = "reason"
INPUT_FILE = "input_file"


def write_quarantine(fs: fsspec.AbstractFileSystem, checkpoints: Checkpoints, scored: Scored,
                     dest: str) -> tuple[int, int]:
    """Write the skipped pairs of every input file under `dest`; return how many, and how many
    of them were skipped for a NaN or infinite score (gates.max_nan_share)."""
    total = non_finite = 0
    for i, entry in enumerate(scored.entries):
        if not entry.skipped:
            continue
        with fs.open(checkpoints.part_file(entry), "rb") as f:
            table = pq.read_table(f)
        table = table.filter(pc.is_valid(table[SKIP_REASON]))
        non_finite += pc.sum(pc.starts_with(table[SKIP_REASON], NON_FINITE)).as_py() or 0
        # first-stage and extra columns; never texts, scores or the job's own columns
        rest = [c for c in table.column_names if c not in (QUERY_ID, DOC_ID, QUERY, DOC, SCORE)
                and not c.startswith(("_", "score_"))]
        table = pa.table({
            QUERY_ID: table[QUERY_ID], DOC_ID: table[DOC_ID], REASON: table[SKIP_REASON],
            INPUT_FILE: pa.array([entry.input] * len(table), pa.string()),
            **{c: table[c] for c in rest},
        })
        fs.makedirs(dest, exist_ok=True)
        with fs.open(posixpath.join(dest, f"part-{i:05d}.parquet"), "wb") as f:
            pq.write_table(table, f)
        total += len(table)
    return total, non_finite
