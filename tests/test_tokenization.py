"""The truncation policy, with the real MiniLM (BERT WordPiece) tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from reranker_actors.tokenization import TextEncoder

MAX = 64


@pytest.fixture(scope="module")
def hf(minilm_dir: str):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def enc(hf) -> TextEncoder:
    return TextEncoder(hf, max_length=MAX, query_cap=MAX * 3 // 4)


def words(n: int, word: str = "turbulence") -> str:
    return " ".join(f"{word}{i % 7}" for i in range(n))


def test_short_pairs_equal_the_tokenizer_pair_encoding(hf, enc: TextEncoder) -> None:
    queries = ["what is boundary layer flow?", "heat transfer"]
    docs = ["The boundary layer is thin.", "Experiments on heat transfer in hypersonic flow."]
    out = enc.encode_pairs(queries, docs)
    ref = hf(queries, docs)
    assert out.ids == ref["input_ids"]
    assert out.type_ids == ref["token_type_ids"]
    assert out.cut == [False, False]


def test_long_doc_is_cut_to_fill_max_length_and_the_query_kept(hf, enc: TextEncoder) -> None:
    query, doc = "what is the drag of a sphere?", words(200)
    out = enc.encode_pairs([query], [doc])
    ref = hf(query, doc, truncation="only_second", max_length=MAX)
    assert out.ids[0] == ref["input_ids"] and len(out.ids[0]) == MAX
    assert out.type_ids[0] == ref["token_type_ids"]
    assert out.cut == [True]


def test_long_query_is_capped_at_three_quarters_and_the_doc_gets_the_rest(hf, enc: TextEncoder) -> None:
    query, doc = words(200, "mach"), words(200, "flow")
    out = enc.encode_pairs([query], [doc])
    ids, types = out.ids[0], out.type_ids[0]
    q_cap = MAX * 3 // 4
    q_ids = hf(query, add_special_tokens=False)["input_ids"][:q_cap]
    d_ids = hf(doc, add_special_tokens=False)["input_ids"][: MAX - 3 - q_cap]
    assert ids == [hf.cls_token_id, *q_ids, hf.sep_token_id, *d_ids, hf.sep_token_id]
    assert len(ids) == MAX and types.count(0) == q_cap + 2
    assert out.cut == [True]


def test_a_megabyte_document_is_truncated_exactly_not_an_error(hf, enc: TextEncoder) -> None:
    doc = words(110_000)  # about 1.3 MB
    assert len(doc) > 1_000_000
    out = enc.encode_pairs(["speed of sound"], [doc])
    ref = hf("speed of sound", doc[:5000], truncation="only_second", max_length=MAX)
    assert out.ids[0] == ref["input_ids"]


def test_long_text_without_spaces_falls_back_to_full_tokenization(hf, enc: TextEncoder) -> None:
    doc = "湍流边界层的传热实验研究" * 400  # no spaces: the prefix cut cannot be verified
    out = enc.encode_pairs(["传热"], [doc])
    ref = hf("传热", doc, truncation="only_second", max_length=MAX)
    assert out.ids[0] == ref["input_ids"]


def test_single_texts_and_queries(hf, enc: TextEncoder) -> None:
    texts = ["a short one", words(100)]
    out = enc.encode_texts(texts, MAX)
    ref = hf(texts, truncation=True, max_length=MAX)
    assert out.ids == ref["input_ids"] and out.cut == [False, True]
    q = enc.encode_queries([words(100)])
    assert len(q.ids[0]) == MAX * 3 // 4 + 2


def test_the_tokenizer_json_truncation_settings_are_ignored(hf, minilm_dir: str) -> None:
    # all-MiniLM's tokenizer.json carries truncation at 128 tokens and padding; the
    # encoder must follow max_length instead.
    enc = TextEncoder(hf, max_length=256, query_cap=192)
    out = enc.encode_pairs(["q"], [words(400)])
    assert len(out.ids[0]) == 256
