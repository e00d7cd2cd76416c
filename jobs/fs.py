"""fsspec filesystems (local paths and s3:// alike) as pyarrow's dataset API takes them."""

from __future__ import annotations

import fsspec
import pyarrow.fs as pafs


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
