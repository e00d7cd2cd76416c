"""Length-bucketed batches under a token budget, padded only to the longest in each bucket."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


def token_budget_batches(lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Yield index arrays, longest inputs first, so rows x padded length <= max_tokens.

    Sorting by length means each bucket pads to its first (longest) member, so padding
    is small; longest-first surfaces an out-of-memory at the start, not the end.
    """
    order = np.argsort(-lengths, kind="stable")
    i, n = 0, len(order)
    while i < n:
        rows = max(1, max_tokens // int(lengths[order[i]]))
        yield order[i : i + rows]
        i += rows


def host_slices(n: int, device: torch.device, parts: int = 8, min_rows: int = 256) -> list[slice]:
    """Split a call's n rows so the host can prepare one part while the device runs another.

    On CUDA the rows go in up to `parts` slices of at least `min_rows` (each slice is
    bucketed on its own), tokenized one slice ahead on a thread (see `ahead`). On the CPU
    there is nothing to overlap, and one slice buckets best.
    """
    count = min(parts, n // min_rows) if device.type == "cuda" else 1
    if count <= 1:
        return [slice(0, n)]
    step = -(-n // count)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def ahead(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """fn(item) for each item in order, the next one computed on a thread meanwhile.

    The thread tokenizes while the caller launches GPU work: the fast tokenizer releases
    the GIL, and a full CUDA launch queue blocks the caller until the GPU has nearly
    caught up, so tokenizing on the caller's thread would leave the GPU idle.
    """
    if len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        pending = pool.submit(fn, items[0])
        for item in items[1:]:
            done, pending = pending, pool.submit(fn, item)
            yield done.result()
        yield pending.result()


def pad(seqs: list[list[int]], pad_value: int) -> np.ndarray:
    """Right-pad a list of int sequences into an (n, longest) int64 array."""
    out = np.full((len(seqs), max(map(len, seqs))), pad_value, dtype=np.int64)
    for row, seq in zip(out, seqs, strict=True):
        row[: len(seq)] = seq
    return out


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def model_inputs(ids: list[list[int]], type_ids: list[list[int]] | None, idx: np.ndarray,
                 pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Padded input_ids / attention_mask (/ token_type_ids) tensors for rows `idx`."""
    rows = [ids[i] for i in idx]
    input_ids = pad(rows, pad_id)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    mask = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    inputs = {"input_ids": to_device(input_ids, device), "attention_mask": to_device(mask, device)}
    if type_ids is not None:
        inputs["token_type_ids"] = to_device(pad([type_ids[i] for i in idx], 0), device)
    return inputs
