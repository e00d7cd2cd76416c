"""How the benchmarks here measure, the same way for every contender.

- Each contender runs in its own fresh process, started by the benchmark; the baselines run
  before any Ray head.
- Every contender gets the same warm-up (`warm_up_pairs`) before its timed pass.
- A timed pass (`timed`) reads perf_counter, with a device sync on both sides on CUDA.
- Every row carries its setup (`setup_note`): library versions, the model's dtype, its
  attention implementation and the tokenizer thread settings.
- A row whose useful-FLOP share of the peak exceeds its busy share (SM % on a GPU, the
  process's CPU time over its threads on a CPU) is impossible, so it is flagged (`validity`).
- Two settings of our own are compared in alternating rounds after a warm-up
  (`alternating`), and reported as median and range (`spread`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

T = TypeVar("T")
LIBRARIES = ("torch", "transformers", "sentence-transformers", "tokenizers")
TOKENIZER_THREADS = ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")


@dataclass
class Timed:
    """One timed pass: its seconds (perf_counter), its wall-clock window (for samples taken
    by other processes, e.g. nvidia-smi) and the share of `threads` the process kept busy."""

    seconds: float
    window: tuple[float, float]
    busy_pct: float


def sync(device: str) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: str, threads: int) -> tuple[T, Timed]:
    """Run `fn` once, timed from a synced device to a synced device."""
    sync(device)
    wall, cpu, start = time.time(), time.process_time(), time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    busy = 100 * (time.process_time() - cpu) / (seconds * max(threads, 1))
    return result, Timed(seconds, (wall, time.time()), busy)


def warm_up_pairs(n: int, warmup: int) -> int:
    """Pairs every contender runs untimed before its timed pass: all (`warmup` 0: a full
    pass) or the first `warmup`."""
    return n if warmup <= 0 else min(warmup, n)


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def setup_of(model: Any = None, attention: str | None = None) -> dict[str, Any]:
    """What a row ran with: versions, the model's parameter dtype and attention
    implementation (transformers' name, or ours: packed/padded), tokenizer threads."""
    import torch

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else "-"
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) if model is not None else None
    return {"versions": versions(), "dtype": dtype,
            "attention": " / ".join(a for a in (attention, impl) if a) or "-",
            "tokenizer": {k: os.environ.get(k, "unset") for k in TOKENIZER_THREADS},
            "torch_threads": torch.get_num_threads()}


def setup_note(setup: dict[str, Any] | None) -> str:
    """The setup of a row, short enough for a table cell."""
    if not setup:
        return "-"
    libs = ", ".join(f"{k} {v}" for k, v in setup["versions"].items())
    tok = ", ".join(f"{k}={v}" for k, v in setup["tokenizer"].items())
    return f"{setup['dtype']}; {setup['attention']}; {setup['torch_threads']} threads; {tok}; {libs}"


def validity(useful_pct: float | None, busy_pct: float | None) -> str:
    """'' for a plausible row; a reason for one that did more useful work than it was busy."""
    if useful_pct is None or busy_pct is None or useful_pct <= busy_pct:
        return ""
    return f"INVALID: useful FLOPs {useful_pct:.1f}% of peak > busy {busy_pct:.0f}%"


def alternating(settings: Sequence[str], rounds: int) -> list[str]:
    """The order in which to run `settings` for `rounds` rounds: forward, then backward
    (A B, B A, A B, ...), so each setting runs first as often as last and a drift in the
    machine's speed does not favour one."""
    order: list[str] = []
    for r in range(rounds):
        order += list(settings) if r % 2 == 0 else list(reversed(settings))
    return order


@dataclass
class Spread:
    median: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.median:,.2f} ({self.low:,.2f}-{self.high:,.2f})"

    def ratio(self) -> str:
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f}x)"


def spread(values: Sequence[float]) -> Spread:
    return Spread(statistics.median(values), min(values), max(values), len(values))

