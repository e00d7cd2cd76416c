"""Model weights on object storage (s3://...): downloaded once per node into a local cache.

Every actor on a node calls `local_copy`; the first takes an exclusive file lock and
downloads into a temporary directory, then renames it into place; the others wait on
the lock and find it there. The cache key covers the URL and each file's name, size
and ETag, so new weights at the same URL are downloaded again.

Cache directory: $BATCH_RERANK_CACHE, else ~/.cache/batch-rerank. Credentials come from
the environment (AWS_* variables, e.g. through the Ray runtime_env), never the config.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import fsspec

from reranker_actors.errors import ModelError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://")
CACHE_ENV = "BATCH_RERANK_CACHE"


def is_remote(model: str) -> bool:
    return model.startswith(REMOTE_SCHEMES)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "batch-rerank") / "models"


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    found = fs.find(root, detail=True)
    return {posixpath.relpath(p, root): info for p, info in found.items() if info.get("type") != "directory"}


def local_copy(url: str) -> str:
    """A local directory holding the files under `url`, downloaded at most once per node."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
        files = _listing(fs, root.rstrip("/"))
    except Exception as e:
        raise ModelError(f"model {url!r}: cannot list it: {type(e).__name__}: {e}") from e
    if "config.json" not in files:
        shown = ", ".join(sorted(files)[:5]) or "nothing"
        raise ModelError(f"model {url!r}: no config.json there (found {shown}); give the directory "
                         "that save_pretrained wrote")
    stamp = sorted((name, info.get("size"), str(info.get("ETag") or info.get("mtime"))) for name, info in files.items())
    key = hashlib.sha256(repr((url, stamp)).encode()).hexdigest()[:24]
    root_dir = cache_root()
    root_dir.mkdir(parents=True, exist_ok=True)
    final = root_dir / key
    with open(root_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=root_dir, prefix=f".{key}-"))
            try:
                for name in files:
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(posixpath.join(root.rstrip("/"), name), str(tmp / name))
                tmp.rename(final)
            except Exception as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelError(f"model {url!r}: download failed: {type(e).__name__}: {e}") from e
    return str(final)
