"""Padding-free (packed) batches give the padded path's scores, for BERT, XLM-R and Qwen3.

On CUDA the packed path runs FlashAttention's varlen kernel; here on the CPU the same
packing, positions, head and last-token pick run with per-sequence attention, so what is
compared is everything but the kernel (fp32, within 1e-5).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import reranker_actors.llm_yes_no as llm_yes_no
from reranker_actors.batching import ahead, host_slices
from reranker_actors.packing import pack, packed_attention, packed_available, packed_batches
from reranker_actors.registry import build_reranker
from tests.test_llm_yes_no import CardReference, cases
from tests.test_parity import pairs  # noqa: F401 - a fixture

CPU = torch.device("cpu")


def both(config: dict) -> tuple:
    padded, packed = build_reranker(config, CPU), build_reranker(config, CPU)
    assert padded.attention == "padded"  # (the CPU default: no varlen kernel here)
    packed.use_packing()
    assert packed.attention == "packed"
    return padded, packed


@pytest.mark.parametrize("model", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_packed_cross_encoder_equals_padded(request: pytest.FixtureRequest, pairs, model: str) -> None:  # noqa: F811
    queries, docs = pairs
    padded, packed = both({"backend": "cross_encoder", "model": request.getfixturevalue(model),
                           "dtype": "float32", "max_length": 128, "max_tokens_per_batch": 700})
    a, b = padded.score(queries, docs), packed.score(queries, docs)
    assert np.abs(a.values - b.values).max() < 1e-5 and np.std(a.values) > 1e-3
    assert (a.truncated == b.truncated).all() and a.truncated.any()


def test_packed_qwen3_equals_padded_and_the_card(tiny_qwen3_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The yes/no pick at each prompt's last token, across several queries per batch and
    several slices per call (forced as on CUDA), instructions and truncated bodies included."""
    queries, docs, instructions = cases()
    config = {"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32", "max_length": 160,
              "max_tokens_per_batch": 900}
    padded, packed = both(config)
    plain, cut = padded.logits(queries, docs, instructions, share_prefix=False)
    monkeypatch.setattr(llm_yes_no, "host_slices", lambda n, _: host_slices(n, torch.device("cuda"), 3, 4))
    ours, packed_cut = packed.logits(queries, docs, instructions)
    assert np.abs(plain - ours).max() < 1e-5 and cut.tolist() == packed_cut.tolist() and cut.any()
    ref = CardReference(tiny_qwen3_dir, 160).scores(queries, docs, instructions)
    assert np.abs(packed.score(queries, docs, instructions).values - ref).max() < 1e-5 and np.std(ref) > 1e-3


def test_a_pack_restarts_positions_and_bounds_each_sequence() -> None:
    packed = pack([[5, 6, 7], [8], [9, 10]], CPU, position_offset=2, type_ids=[[0, 0, 1], [0], [1, 1]])
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed.inputs["position_ids"].tolist() == [[2, 3, 4, 2, 2, 3]]
    assert packed.inputs["token_type_ids"].tolist() == [[0, 0, 1, 0, 1, 1]]
    assert packed.cu_seqlens.tolist() == [0, 3, 4, 6] and packed.cu_seqlens.dtype == torch.int32
    assert packed.starts.tolist() == [0, 3, 4] and packed.last.tolist() == [2, 3, 5]
    assert packed.inputs["max_length_q"] == 3


@pytest.mark.parametrize("causal", [False, True])
def test_packed_attention_keeps_sequences_apart(causal: bool) -> None:
    """Each sequence attends only to itself (and, causal, to its past): equal to attention
    run on each sequence alone, with grouped KV heads."""
    torch.manual_seed(0)
    lengths = [5, 1, 7]
    q, k, v = torch.randn(1, 4, 13, 8), torch.randn(1, 2, 13, 8), torch.randn(1, 2, 13, 8)
    module = type("Attention", (), {"is_causal": causal})()
    packed = pack([[0] * n for n in lengths], CPU)
    out, _ = packed_attention(module, q, k, v, None, scaling=0.3, **packed.inputs)
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s], k[:, :, s].repeat_interleave(2, 1), v[:, :, s].repeat_interleave(2, 1),
            is_causal=causal, scale=0.3)
        assert torch.allclose(out[0, s], alone[0].transpose(0, 1), atol=1e-6)
        start += n


def test_packed_attention_refuses_padded_inputs() -> None:
    x = torch.zeros(2, 1, 3, 4)
    with pytest.raises(RuntimeError, match="needs packed inputs"):
        packed_attention(object(), x, x, x, None)


def test_packed_batches_cover_every_row_once_within_the_budget() -> None:
    lengths = np.array([30, 500, 7, 120, 120, 64, 900, 3])
    batches = list(packed_batches(lengths, 600))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(lengths[b].sum() <= 600 or len(b) == 1 for b in batches)  # (a row over the budget goes alone)
    assert [int(lengths[b[0]]) for b in batches] == sorted((int(lengths[b[0]]) for b in batches), reverse=True)
    assert len(batches) == 3  # 900 | 500 + 64 + 30 | 120 + 120 + 7 + 3


def test_the_cpu_runs_padded() -> None:
    assert not packed_available(CPU, torch.float32) and not packed_available(CPU, torch.bfloat16)


def test_ahead_keeps_order_and_works_one_item_ahead() -> None:
    """While the caller holds item i, item i + 1 is computed on another thread."""
    started: list[int] = []

    def work(i: int) -> tuple[int, str]:
        started.append(i)
        time.sleep(0.05)
        return i, threading.current_thread().name

    results = []
    for i, (value, thread) in enumerate(ahead(work, [0, 1, 2, 3])):
        time.sleep(0.1)  # (the caller's GPU launches)
        results.append(value)
        assert thread.startswith("tokenize") and (i + 1 >= 4 or i + 1 in started)
    assert results == [0, 1, 2, 3]
    assert list(ahead(lambda i: i * 2, [5])) == [10]
