"""The output directory: staging under `_staging/`, then commit, then the `_SUCCESS` marker.

Layout of output.path after a successful run:
    part-00000.parquet ...   the ranked rows (what pyarrow.dataset / Spark read)
    _SUCCESS                 JSON: run id, row count, files; written last
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
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from jobs.errors import UserError

PART_FILE = re.compile(r"^part-\d{5,}\.parquet$")
SUCCESS = "_SUCCESS"
STAGING = "_staging"


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

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

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

    def prepare(self, input_paths: list[str]) -> None:
        """Refuse an output that overlaps the input or holds foreign files; prove it is writable."""
        root = self.root.rstrip("/")
        inside = [p for p in input_paths if p == root or p.startswith(root + "/")]
        if inside:
            raise OutputError(
                f"output.path {self.url!r} contains input file {inside[0]!r}; writing there would "
                "mix outputs with inputs. Choose a directory outside the input."
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

    def commit(self, staged_dir: str, marker: dict[str, Any]) -> list[str]:
        """Move the staged part files into place, drop the old ones, write _SUCCESS last."""
        staged = sorted(p for p in self.fs.find(staged_dir) if p.endswith(".parquet"))
        success = self.path(SUCCESS)
        if self.fs.exists(success):
            self.fs.rm(success)
        old = set(self.data_files())
        new = []
        for i, src in enumerate(staged):
            dst = self.path(f"part-{i:05d}.parquet")
            self.fs.mv(src, dst)
            new.append(dst)
        for stale in sorted(old - set(new)):
            self.fs.rm(stale)
        names = [posixpath.basename(p) for p in new]
        with self.fs.open(success, "w") as f:
            json.dump({**marker, "run_id": self.run_id, "files": names}, f, indent=2)
        self._remove_staging()
        return new

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
