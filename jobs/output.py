"""The output directory: staging under `_staging/`, then commit, then the `_SUCCESS` marker.

Layout of output.path after a successful run:
    part-00000.parquet ...   the ranked rows (what pyarrow.dataset / Spark read)
    _quarantine/*.parquet    skipped pairs: ids, reason, input file (when there are any)
    _run_report.json/.txt    counts, stage times, model, inputs, versions
    _report.html             the same, with figures, readable offline
    _run.trec                the ranking as a TREC run file (output.trec)
    _SUCCESS                 JSON: run id, row count, files; written last
    _staging/<run id>/       a run in progress, or one the quality gates refused (with _REFUSED):
                             its ranked output and reports, until a later run publishes
    _checkpoints/            per-input-file scores of an unfinished run (jobs.checkpoints)
Everything the job writes besides the ranked rows starts with `_`, so readers that
follow the Spark/pyarrow convention see exactly the ranked rows. A rerun replaces the
previous run's part files (never appends), and a failed run leaves them as they were.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

import fsspec

from jobs.errors import UserError

PART_FILE = re.compile(r"^part-\d{5,}\.parquet$")
SUCCESS = "_SUCCESS"
STAGING = "_staging"
QUARANTINE = "_quarantine"
REPORT_JSON = "_run_report.json"
REPORT_TEXT = "_run_report.txt"
REPORT_HTML = "_report.html"
FLAG_EMBEDDING = "_flag_embedding"  # distillation: FlagEmbedding reranker JSONL
CROSS_ENCODER = "_cross_encoder"  # distillation: (query, doc, label) Parquet
TREC_RUN = "_run.trec"  # output.trec: the ranking as a TREC run file
REFUSED = "_REFUSED"  # in _staging/<run id>/ of a run the quality gates refused (jobs.gates)
# Replaced together with the part files:
SIDE_OUTPUTS = (QUARANTINE, REPORT_JSON, REPORT_TEXT, REPORT_HTML, FLAG_EMBEDDING, CROSS_ENCODER, TREC_RUN)


class OutputError(UserError):
    """output.path is unusable: unwritable, overlapping the input, or holding foreign files."""


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))


class OutputDir:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self._created_root = False

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def staging(self, name: str) -> str:
        """A directory for this run's intermediate data, e.g. staging("scored")."""
        return self.path(STAGING, self.run_id, name)

    def _names(self) -> list[str]:
        if not self.fs.isdir(self.root):
            return []
        return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]

    def data_files(self) -> list[str]:
        return sorted(self.path(n) for n in self._names() if PART_FILE.match(n))

    def prepare(self, input_files: Sequence[str], input_dirs: Sequence[str] = ()) -> None:
        """Refuse an output that overlaps the input or holds foreign files; prove it is writable."""
        root = self.root.rstrip("/")
        inside = [p for p in input_files if p == root or p.startswith(root + "/")]
        if inside:
            raise OutputError(
                f"output.path {self.url!r} contains input file {inside[0]!r}; writing there would "
                "mix outputs with inputs. Choose a directory outside the input."
            )
        around = [d for d in input_dirs if root == d.rstrip("/") or root.startswith(d.rstrip("/") + "/")]
        if around:
            raise OutputError(
                f"output.path {self.url!r} is inside input directory {around[0]!r}; the next run "
                "would read this output as input. Choose a directory outside the input."
            )
        if self.fs.isfile(self.root):
            raise OutputError(f"output.path {self.url!r} is a file; it must be a directory")
        foreign = [n for n in self._names() if _visible(n) and not PART_FILE.match(n)]
        if foreign:
            raise OutputError(
                f"output.path {self.url!r} holds files this job did not write (e.g. {foreign[0]!r}); "
                "the job replaces the directory's part-*.parquet files on every run, so give it "
                "an empty directory or one it wrote before."
            )
        self._created_root = not self.fs.exists(self.root)
        probe = self.path(STAGING, self.run_id, "_probe")
        try:
            self.fs.makedirs(posixpath.dirname(probe), exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except OSError as e:
            self.abort()
            raise OutputError(f"output.path {self.url!r} is not writable: {e}") from e

    def commit(self, staged_dir: str, marker: dict[str, Any], side: dict[str, str] | None = None) -> list[str]:
        """Swap the staged part files and side outputs in for the previous run's, then
        write _SUCCESS last.

        `side` maps names in SIDE_OUTPUTS to a staged file or directory. The previous
        run's part files and side outputs are first moved aside into this run's staging;
        if anything fails before _SUCCESS is written, they are moved back, so the last
        good output survives a failed commit. Readers that wait for _SUCCESS never see a mix.
        """
        staged = sorted(p for p in self.fs.find(staged_dir) if p.endswith(".parquet"))
        success = self.path(SUCCESS)
        old_marker = self.fs.cat_file(success) if self.fs.exists(success) else None
        aside_dir = self.staging("previous")
        moved_aside: list[tuple[str, str]] = []
        placed: list[str] = []
        try:
            if old_marker is not None:
                self.fs.rm(success)
            self.fs.makedirs(aside_dir, exist_ok=True)
            old = self.data_files() + [self.path(n) for n in SIDE_OUTPUTS if self.fs.exists(self.path(n))]
            for path in old:
                aside = posixpath.join(aside_dir, posixpath.basename(path))
                self.fs.mv(path, aside, recursive=True)
                moved_aside.append((path, aside))
            moves = [(src, self.path(f"part-{i:05d}.parquet")) for i, src in enumerate(staged)]
            moves += [(src, self.path(name)) for name, src in (side or {}).items()]
            for src, dst in moves:
                self.fs.mv(src, dst, recursive=True)
                placed.append(dst)
            names = [posixpath.basename(p) for p in placed if PART_FILE.match(posixpath.basename(p))]
            with self.fs.open(success, "w") as f:
                json.dump({**marker, "run_id": self.run_id, "files": names}, f, indent=2)
        except BaseException:
            self._restore(placed, moved_aside, old_marker)
            raise
        self._remove_refused()
        self._remove_staging()
        return placed

    def _remove_refused(self) -> None:
        """Refused runs' staging (kept for the operator) is superseded once a run publishes."""
        parent = self.path(STAGING)
        for run_dir in self.fs.ls(parent, detail=False) if self.fs.isdir(parent) else []:
            if self.fs.exists(posixpath.join(run_dir, REFUSED)):
                self.fs.rm(run_dir, recursive=True)

    def _restore(self, placed: list[str], moved_aside: list[tuple[str, str]], old_marker: bytes | None) -> None:
        for path in placed:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        for original, aside in moved_aside:
            self.fs.mv(aside, original, recursive=True)
        if old_marker is not None:
            self.fs.pipe_file(self.path(SUCCESS), old_marker)

    def _remove_staging(self) -> None:
        run_dir = self.path(STAGING, self.run_id)
        if self.fs.exists(run_dir):
            self.fs.rm(run_dir, recursive=True)
        parent = self.path(STAGING)
        if self.fs.isdir(parent) and not self.fs.ls(parent):
            self.fs.rm(parent, recursive=True)

    def abort(self) -> None:
        """Remove this run's staging; remove output.path too if this run created it."""
        self._remove_staging()
        if self._created_root and self.fs.isdir(self.root) and not self.fs.ls(self.root):
            self.fs.rm(self.root, recursive=True)


def stage_reports(out: OutputDir, report: dict[str, Any], text: str, html: str) -> dict[str, str]:
    """Write the run reports into this run's staging; their staged paths by name."""
    reports = {REPORT_JSON: json.dumps(report, indent=2), REPORT_TEXT: text + "\n", REPORT_HTML: html}
    for name, content in reports.items():
        out.fs.pipe_file(out.staging(name), content.encode())
    return {name: out.staging(name) for name in reports}


def commit_run(out: OutputDir, staged: str, report: dict[str, Any], text: str, html: str,
               side: dict[str, str]) -> None:
    """Stage the run reports next to `side`, then commit them with the part files in `staged`."""
    out.commit(staged, report, side | stage_reports(out, report, text, html))
