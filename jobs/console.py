"""What the operator reads on the driver's console while a job runs.

Two things Ray prints there are not for them:
- Ray Data logs an exception raised in our actors at ERROR level with its whole stack trace
  ("Exception occurred in Ray Data or Ray Core internal code"), since the job asks Ray Data
  to re-raise a UDF's own exception (jobs.ray_runtime). For an error the user caused the
  job prints one line (jobs.cli); the trace stays in Ray Data's log file
  (`<session>/logs/ray-data/`).
- The driver's core worker (C++, straight to file descriptor 2) warns that every scoring
  actor "has constructor arguments in the object store and max_restarts > 0" (ray#53727).
  That argument is Ray Data's map transformer, which the driver `ray.put`s and holds for the
  whole execution: an object the driver owns is pinned on the driver's node and never
  evicted while referenced, and it is not rebuilt from lineage, which is what ray#53727
  breaks. So a restarted actor finds it as long as the driver lives, and without the
  driver the job is over anyway. The line is dropped, nothing else.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.errors import find_user_error

DROPPED_LINES = (b"ray-project/ray/issues/53727",)


class UserErrorsOffConsole(logging.Filter):
    """Keep Ray Data's records about an error the user caused off the console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]  # (logged while handling it)
        return exc is None or find_user_error(exc) is None


def quiet_ray_data_console() -> None:
    """Add the filter to Ray Data's console handlers (its file handler keeps every record)."""
    for handler in logging.getLogger("ray.data").handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if is_console and not any(isinstance(f, UserErrorsOffConsole) for f in handler.filters):
            handler.addFilter(UserErrorsOffConsole())


@contextmanager
def known_lines_dropped() -> Iterator[None]:
    """File descriptor 2 through a pipe whose lines are copied back, less DROPPED_LINES.

    The copier writes to a descriptor of its own, so it may outlive the block: processes
    started inside it (a local Ray's) inherit the pipe and keep writing to it. A partial line
    is passed on once nothing more came for FLUSH_S (a progress bar, a message before a crash)."""
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # (no stderr to filter)
        yield
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    copier = threading.Thread(target=_copy_lines, args=(read_end, os.dup(original)), daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # (the pipe's last write end here: the copier reads to its end, unless
        os.close(original)  # a child still holds one; it then goes on copying what that child writes)
        copier.join(timeout=2)


FLUSH_S = 0.2


def _copy_lines(read_end: int, dest: int) -> None:
    """Copy until the pipe's end; after a failed write keep draining it (a writer to a full
    pipe would block for ever), dropping what it reads."""
    pending, broken = b"", False
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], FLUSH_S)
            if not ready:
                pending, broken = _emit(dest, pending, broken)
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not any(d in line for d in DROPPED_LINES))
            _, broken = _emit(dest, kept, broken)
        _emit(dest, pending, broken)
    finally:
        os.close(read_end)
        os.close(dest)


def _emit(fd: int, data: bytes, broken: bool) -> tuple[bytes, bool]:
    """Write `data` (unless an earlier write failed); what is left to hold back, and whether broken."""
    if broken or not data:
        return b"", broken
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:  # (a closed terminal or pipe: nothing more can be shown)
        return b"", True
    return b"", False
