"""Score parity with sentence-transformers on the same weights and pairs, in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranker_actors.registry import build_reranker
from tests.conftest import sample_pairs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    """48 sample pairs: 3 queries x 16 docs, long documents (truncated at 128) included."""
    table = sample_pairs()
    rows = [r for r in table.to_pylist() if r["query_id"] in ("1", "2", "3") and r["bm25_rank"] <= 16]
    return [r["query"] for r in rows], [r["doc"] for r in rows]


@pytest.fixture(scope="module")
def minilm_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: str) -> str:
    """Real MiniLM-L6 weights as a 1-label cross-encoder (the ms-marco-MiniLM-L-6-v2
    architecture); only the classifier head is random (seeded)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("minilm-ce")
    AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return str(path)


def st_cross_scores(model_dir: str, queries: list[str], docs: list[str], max_length: int) -> np.ndarray:
    ce = CrossEncoder(model_dir, max_length=max_length, activation_fn=torch.nn.Identity(), device="cpu")
    return ce.predict(list(zip(queries, docs, strict=True)), batch_size=16)


@pytest.mark.parametrize("model", ["tiny_bert_dir", "minilm_cross_encoder_dir"])
def test_cross_encoder_equals_sentence_transformers(request: pytest.FixtureRequest, pairs, model: str) -> None:
    model_dir = request.getfixturevalue(model)
    queries, docs = pairs
    reranker = build_reranker({"backend": "cross_encoder", "model": model_dir, "dtype": "float32",
                               "max_length": 128, "max_tokens_per_batch": 1024}, CPU)
    ours, truncated = reranker.score(queries, docs)
    ref = st_cross_scores(model_dir, queries, docs, max_length=128)
    assert ours.dtype == np.float32 and ours.shape == (48,)
    untruncated = AutoTokenizer.from_pretrained(model_dir)(queries, docs)["input_ids"]
    assert truncated.tolist() == [len(ids) > 128 for ids in untruncated] and truncated.any()
    assert np.abs(ours - ref).max() < 1e-5
    assert np.std(ours) > 1e-3  # real, distinct scores


def test_xlm_roberta_cross_encoder_equals_sentence_transformers(tiny_xlmr_dir: str, pairs) -> None:
    """The bge-reranker-v2-m3 family: `<s> q </s></s> d </s>`, no token types, multilingual."""
    queries, docs = pairs
    queries = [*queries[:8], "湍流边界层的传热", "boundary layer 传热 experiments", "超音速"]
    docs = [*docs[:8], "边界层的传热实验研究。" * 40, "Heat transfer 传热 in a turbulent 边界层.", "超音速流动"]
    reranker = build_reranker({"backend": "cross_encoder", "model": tiny_xlmr_dir, "dtype": "float32",
                               "max_length": 128}, CPU)
    assert reranker.encoder.pair.middle == [2, 2] and not reranker.with_type_ids
    ours, truncated = reranker.score(queries, docs)
    ref = st_cross_scores(tiny_xlmr_dir, queries, docs, max_length=128)
    assert truncated[8] and not truncated[9:].any()  # (the 440-character Chinese document; short ones)
    assert np.abs(ours - ref).max() < 1e-5 and np.std(ours) > 1e-3


def test_sigmoid_activation_is_the_sigmoid_of_the_logit(tiny_bert_dir: str, pairs) -> None:
    queries, docs = pairs
    cfg = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 128}
    raw = build_reranker(cfg, CPU).score(queries, docs).values
    prob = build_reranker(cfg | {"activation": "sigmoid"}, CPU).score(queries, docs).values
    assert np.allclose(prob, 1 / (1 + np.exp(-raw.astype(np.float64))), atol=1e-7)


def test_scores_do_not_depend_on_batch_composition(tiny_bert_dir: str, pairs) -> None:
    queries, docs = pairs
    cfg = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 128}
    whole = build_reranker(cfg | {"max_tokens_per_batch": 4096}, CPU).score(queries, docs).values
    one_by_one = build_reranker(cfg | {"max_tokens_per_batch": 128}, CPU).score(queries, docs).values
    reversed_order = build_reranker(cfg, CPU).score(queries[::-1], docs[::-1]).values[::-1]
    assert np.abs(whole - one_by_one).max() < 1e-5 and np.abs(whole - reversed_order).max() < 1e-5


def test_bi_encoder_equals_sentence_transformers_cosine(minilm_dir: str, pairs) -> None:
    queries, docs = pairs
    ours = build_reranker({"backend": "bi_encoder", "model": minilm_dir, "dtype": "float32",
                           "max_length": 256}, CPU).score(queries, docs).values
    st = SentenceTransformer(minilm_dir, device="cpu")
    assert st.max_seq_length == 256
    q = st.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    d = st.encode(docs, convert_to_tensor=True, normalize_embeddings=True)
    ref = (q * d).sum(-1).numpy()
    assert np.abs(ours - ref).max() < 1e-5


def test_bi_encoder_embeds_each_distinct_query_once_per_batch(minilm_dir: str, pairs) -> None:
    queries, docs = pairs
    reranker = build_reranker({"backend": "bi_encoder", "model": minilm_dir, "dtype": "float32",
                               "max_length": 128}, CPU)
    rows_embedded = []
    reranker.model.register_forward_hook(lambda _m, args, kwargs, _out: rows_embedded.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    reranker.score(queries, docs)
    assert sum(rows_embedded) == len(set(queries)) + len(docs) == 3 + 48


def test_cls_pooling_uses_the_first_token(minilm_dir: str, pairs) -> None:
    queries, docs = pairs
    cfg = {"backend": "bi_encoder", "model": minilm_dir, "dtype": "float32", "max_length": 128}
    mean = build_reranker(cfg, CPU).score(queries[:4], docs[:4]).values
    cls_reranker = build_reranker(cfg | {"pooling": "cls"}, CPU)
    cls = cls_reranker.score(queries[:4], docs[:4]).values
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    with torch.no_grad():
        def emb(text: str, max_length: int) -> torch.Tensor:
            out = cls_reranker.model(**tok(text, truncation=True, max_length=max_length, return_tensors="pt"))
            return torch.nn.functional.normalize(out.last_hidden_state[0, 0], dim=-1)
        # Queries: capped at 3/4 of max_length (96) plus [CLS] and [SEP]; docs: max_length.
        ref = np.array([float(emb(q, 98) @ emb(d, 128)) for q, d in zip(queries[:4], docs[:4], strict=True)])
    assert np.abs(cls - ref).max() < 1e-6 and np.abs(cls - mean).max() > 1e-3  # (measured: 1.8e-7)


def test_a_missing_model_fails_naming_the_model(tmp_path: Path) -> None:
    from jobs.errors import ModelError

    with pytest.raises(ModelError, match=r"model '/nope/model': no such local directory"):
        build_reranker({"backend": "cross_encoder", "model": "/nope/model"}, CPU)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"could not load model .* for backend cross_encoder"):
        build_reranker({"backend": "cross_encoder", "model": str(tmp_path)}, CPU)


@pytest.mark.parametrize(("model", "limit"), [("tiny_bert_dir", 512), ("tiny_xlmr_dir", 512)])
def test_max_length_beyond_the_model_positions_is_refused(request: pytest.FixtureRequest, model: str,
                                                          limit: int) -> None:
    from jobs.errors import ModelError

    model_dir = request.getfixturevalue(model)
    assert build_reranker({"backend": "cross_encoder", "model": model_dir, "max_length": limit}, CPU)
    with pytest.raises(ModelError, match=f"exceeds what model .* supports \\({limit} positions\\)"):
        build_reranker({"backend": "cross_encoder", "model": model_dir, "max_length": limit + 1}, CPU)


def test_compiled_cross_encoder_equals_sentence_transformers(tiny_bert_dir: str, pairs) -> None:
    """reranker.compile: torch.compile (inductor, dynamic shapes) gives the same scores."""
    queries, docs = pairs
    reranker = build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32",
                               "max_length": 128, "max_tokens_per_batch": 1024, "compile": True}, CPU)
    assert reranker.model.base_model._compiled_call_impl is not None  # (compiled in place)
    ours = reranker.score(queries, docs).values
    ref = st_cross_scores(tiny_bert_dir, queries, docs, max_length=128)
    # Fused kernels reorder fp32 sums: measured 1.07e-5 at scores up to 4.13 in magnitude
    # (2.6e-6 of the largest; eager: 0.0), so the bound is 1e-5 of the largest score.
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max() and np.std(ours) > 1e-3


def test_scores_do_not_depend_on_host_slices(tiny_bert_dir: str, pairs, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a call is tokenized in slices (overlapping the GPU); each slice's rows must
    land in their own places. Forced here on the CPU with slices of 5 rows."""
    import reranker_actors.cross_encoder as cross_encoder
    from reranker_actors.batching import host_slices

    queries, docs = pairs
    cfg = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 128}
    whole = build_reranker(cfg, CPU).score(queries, docs)
    slices: list[list[slice]] = []

    def cuda_slices(n: int, device: torch.device) -> list[slice]:
        slices.append(host_slices(n, torch.device("cuda"), parts=10, min_rows=4))
        return slices[-1]

    monkeypatch.setattr(cross_encoder, "host_slices", cuda_slices)
    sliced = build_reranker(cfg, CPU).score(queries, docs)
    assert len(slices) == 1 and len(slices[0]) == 10  # the call really went in 10 slices
    assert np.abs(whole.values - sliced.values).max() < 1e-5
    assert (whole.truncated == sliced.truncated).all() and whole.truncated.any()


def test_host_slices_cover_every_row_once() -> None:
    from reranker_actors.batching import host_slices

    assert host_slices(5000, CPU) == [slice(0, 5000)]
    assert host_slices(300, torch.device("cuda")) == [slice(0, 300)]
    for n in (512, 1000, 4096, 10_001):
        parts = host_slices(n, torch.device("cuda"))
        rows = np.concatenate([np.arange(n)[s] for s in parts])
        assert 2 <= len(parts) <= 8 and (rows == np.arange(n)).all()


def test_no_forward_pass_exceeds_the_token_budget(tiny_bert_dir: str, pairs) -> None:
    queries, docs = pairs
    reranker = build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32",
                               "max_length": 128, "max_tokens_per_batch": 300}, CPU)
    seen: list[tuple[int, int]] = []
    reranker.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs.get("input_ids", args[0] if args else None).shape)),
        with_kwargs=True)
    reranker.score(queries, docs)
    assert sum(rows for rows, _ in seen) == len(queries)
    assert max(rows * length for rows, length in seen) <= 300


def test_default_token_budget_follows_the_device() -> None:
    from reranker_actors.cross_encoder import CrossEncoderConfig

    cfg = CrossEncoderConfig(model="m")
    assert cfg.token_budget(CPU) == 4096 and cfg.token_budget(torch.device("cuda")) == 65536
    assert CrossEncoderConfig(model="m", max_length=8192).token_budget(CPU) == 8192  # one full pair fits
    assert CrossEncoderConfig(model="m", max_tokens_per_batch=1000).token_budget(CPU) == 1000
