"""fsspec filesystems (local paths and s3:// alike) as pyarrow's dataset API takes them."""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow.fs as pafs


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def hidden(rel_path: str) -> bool:
    """Spark/pyarrow convention: names starting with _ or . are not data."""
    return any(part.startswith(("_", ".")) for part in rel_path.split("/"))


def visible_parquet(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """*.parquet files under `directory`, recursively, skipping hidden names."""
    return visible_files(fs, directory, (".parquet",))


def visible_files(fs: fsspec.AbstractFileSystem, directory: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under `directory` whose names end with one of `suffixes`, recursively,
    skipping hidden names."""
    return sorted(f for f in fs.find(directory)
                  if f.endswith(suffixes) and not hidden(posixpath.relpath(f, directory)))
