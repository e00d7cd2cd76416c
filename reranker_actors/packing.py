"""Padding-free batches: a bucket's sequences packed into one token stream.

A packed batch is one row of `sum(lengths)` tokens plus cumulative sequence lengths
(`cu_seqlens`, as FlashAttention's varlen kernels take them). No token is padding, so no
FLOP is wasted and no attention mask is built. Positions restart at each sequence.

The attention runs through transformers' AttentionInterface under PACKED: every model
whose attention layers dispatch through it (BERT, XLM-R, Qwen3, Llama ...) runs packed.
Without a mask function registered for it, transformers builds no mask at all.
  - CUDA with torch.nn.attention.varlen: one FlashAttention varlen kernel per layer;
  - elsewhere (CPU, older torch): scaled_dot_product_attention sequence by sequence,
    which is exact and slow; the padded path stays the default there.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_actors.batching import to_device

if TYPE_CHECKING:
    import torch

PACKED = "batch_rerank_packed"  # the attention implementation's name in transformers
_VARLEN: Any = None  # torch's varlen kernel, once use_packed_attention found it
_VARLEN_PARAMS: frozenset[str] = frozenset()


def varlen_kernel() -> Any:
    """torch's FlashAttention varlen entry point, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def packed_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the packed path runs a real varlen kernel on `device` in `dtype` (else
    padding wins): FlashAttention needs CUDA compute capability 8+ and fp16/bf16."""
    import torch

    return (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and varlen_kernel() is not None
            and torch.cuda.get_device_capability(device)[0] >= 8)


def packed_batches(lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Index arrays, longest first, whose real tokens sum to at most max_tokens (one row
    alone may exceed it). Nothing is padded, so the budget counts real tokens."""
    order = np.argsort(-lengths, kind="stable")
    ends = np.cumsum(lengths[order])
    start = 0
    while start < len(order):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_tokens, side="right")))
        yield order[start:stop]
        start = stop


@dataclass
class Packed:
    """One packed batch on its device: ids/positions/type ids of shape (1, tokens)."""

    inputs: dict[str, Any]
    cu_seqlens: torch.Tensor  # int32 (n + 1,), on the device
    starts: torch.Tensor  # int64 (n,): where each sequence begins, on the device
    ends: torch.Tensor  # int64 (n,): one past where each sequence ends, on the device

    @property
    def last(self) -> torch.Tensor:
        return self.ends - 1


def pack(seqs: list[list[int]], device: torch.device, position_offset: int = 0,
         type_ids: list[list[int]] | None = None) -> Packed:
    """Pack sequences into one row; positions count from `position_offset` in each."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    total = int(lengths.sum())
    cu = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=total)
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths) + position_offset
    max_len = int(lengths.max())
    cu_dev = to_device(cu.astype(np.int32), device)
    inputs: dict[str, Any] = {
        "input_ids": to_device(ids[None], device), "position_ids": to_device(positions[None], device),
        # (the names transformers' FlashAttention kwargs use; they reach every attention layer)
        "cu_seq_lens_q": cu_dev, "cu_seq_lens_k": cu_dev, "max_length_q": max_len, "max_length_k": max_len,
    }
    if device.type != "cuda" or varlen_kernel() is None:
        inputs["packed_bounds"] = cu.tolist()  # (host copy, for the per-sequence fallback)
    if type_ids is not None:
        inputs["token_type_ids"] = to_device(
            np.fromiter(chain.from_iterable(type_ids), dtype=np.int64, count=total)[None], device)
    bounds = to_device(cu, device)
    return Packed(inputs, cu_dev, bounds[:-1], bounds[1:])


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
            causal: bool, scale: float | None) -> torch.Tensor:
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in _VARLEN_PARAMS:  # (torch >= 2.12 spells causal as a window)
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return _VARLEN(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **kwargs)


def _per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], causal: bool,
                  scale: float | None) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    gqa = k.shape[1] != q.shape[1]
    for start, end in pairwise(bounds):
        # (batched 4-d, as the padded path calls it: 3-d inputs take another kernel)
        q1, k1, v1 = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        part = F.scaled_dot_product_attention(q1, k1, v1, is_causal=causal, scale=scale, enable_gqa=gqa)
        out[start:end] = part[0].transpose(0, 1)
    return out


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    if "cu_seq_lens_q" not in kwargs or query.shape[0] != 1:
        raise RuntimeError(f"attention implementation {PACKED!r} needs packed inputs (see reranker_actors.packing)")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    causal = bool(getattr(module, "is_causal", False))
    if q.is_cuda and _VARLEN is not None:
        out = _varlen(q, k, v, kwargs["cu_seq_lens_q"], kwargs["max_length_q"], causal, scaling)
    else:
        out = _per_sequence(q, k, v, kwargs["packed_bounds"], causal, scaling)
    return out.unsqueeze(0), None


def use_packed_attention(model: Any) -> None:
    """Route `model`'s attention through the packed implementation."""
    from transformers import AttentionInterface

    global _VARLEN, _VARLEN_PARAMS
    _VARLEN = varlen_kernel()  # (looked up here, not inside a possibly compiled forward)
    _VARLEN_PARAMS = frozenset(inspect.signature(_VARLEN).parameters) if _VARLEN is not None else frozenset()
    AttentionInterface.register(PACKED, packed_attention)
    model.set_attn_implementation(PACKED)
