"""The truncation policy and the exact composition of pairs from texts tokenized alone, with
the real MiniLM (BERT WordPiece) and XLM-R (bge-reranker-v2-m3's SentencePiece) tokenizers:
each text is tokenized once, and its pairs are composed from its ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from reranker_actors.tokenization import TextEncoder

MAX = 64


@pytest.fixture(scope="module", params=["minilm_dir", "tiny_xlmr_dir"])
def hf(request: pytest.FixtureRequest):
    return AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def enc(hf) -> TextEncoder:
    return TextEncoder(hf, max_length=MAX, query_cap=MAX * 3 // 4)


def words(n: int, word: str = "turbulence") -> str:
    return " ".join(f"{word}{i % 7}" for i in range(n))


def pair_ids(hf, query: str, doc: str, q_len: int, d_len: int) -> list[int]:
    """The tokenizer's own post-processor joining the first q_len and d_len tokens of each."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.no_truncation()  # (tokenizer.json may carry its own: the encoder ignores it)
    tok.no_padding()
    q, d = tok.encode(query, add_special_tokens=False), tok.encode(doc, add_special_tokens=False)
    q.truncate(q_len)
    d.truncate(d_len)
    return tok.post_process(q, d).ids


def test_short_pairs_equal_the_tokenizer_pair_encoding(hf, enc: TextEncoder) -> None:
    queries = ["what is boundary layer flow?", "heat transfer", "heat transfer", "边界层 传热"]
    docs = ["The boundary layer is thin.", "Experiments on heat transfer in hypersonic flow.",
            "The boundary layer is thin.", "湍流边界层的传热实验 in a wind tunnel"]
    out = enc.encode_pairs(queries, docs)  # (a repeated query and document: tokenized once each)
    ref = hf(queries, docs)
    assert out.ids == ref["input_ids"]
    if "token_type_ids" in ref:
        assert out.type_ids == ref["token_type_ids"]
    assert out.cut == [False] * 4


def test_long_doc_is_cut_to_fill_max_length_and_the_query_kept(hf, enc: TextEncoder) -> None:
    query, doc = "what is the drag of a sphere?", words(200)
    out = enc.encode_pairs([query], [doc])
    ref = hf(query, doc, truncation="only_second", max_length=MAX)
    assert out.ids[0] == ref["input_ids"] and len(out.ids[0]) == MAX
    if "token_type_ids" in ref:
        assert out.type_ids[0] == ref["token_type_ids"]
    assert out.cut == [True]


def test_long_query_is_capped_at_three_quarters_and_the_doc_gets_the_rest(hf, enc: TextEncoder) -> None:
    query, doc = words(200, "mach"), words(200, "flow")
    out = enc.encode_pairs([query], [doc])
    ids, types = out.ids[0], out.type_ids[0]
    q_cap = MAX * 3 // 4
    assert ids == pair_ids(hf, query, doc, q_cap, MAX - enc.pair.num_special - q_cap)
    assert len(ids) == MAX and (types.count(0) == q_cap + 2 or "token_type_ids" not in hf.model_input_names)
    assert out.cut == [True]


def test_a_query_that_fills_the_budget_leaves_the_document_one_token(hf) -> None:
    specials = TextEncoder(hf, max_length=MAX, query_cap=1).pair.num_special
    enc = TextEncoder(hf, max_length=MAX, query_cap=MAX - specials - 1)
    query, doc = words(200, "mach"), "surface heat transfer"
    out = enc.encode_pairs([query], [doc])
    assert out.ids[0] == pair_ids(hf, query, doc, MAX - specials - 1, 1) and len(out.ids[0]) == MAX
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


def test_pairs_equal_longest_first_truncation_wherever_the_two_policies_agree(hf) -> None:
    # The tokenizer's longest_first (sentence-transformers' `truncation=True`) trims the longer
    # text a token at a time. With the query under its cap it trims only the document, as the
    # encoder does; with both texts long it leaves each half the room, as a query cap of half
    # the room does. CJK and mixed scripts included.
    specials = TextEncoder(hf, max_length=MAX, query_cap=1).pair.num_special
    room = MAX - specials
    cases = [(TextEncoder(hf, max_length=MAX, query_cap=MAX * 3 // 4), "边界层 drag of a sphere", words(300)),
             (TextEncoder(hf, max_length=MAX, query_cap=room // 2), words(300, "mach"), words(300, "flow")),
             (TextEncoder(hf, max_length=MAX, query_cap=room // 2), "湍流 " * 200, "边界层的 传热 " * 200)]
    for enc, query, doc in cases:
        out = enc.encode_pairs([query], [doc])
        ref = hf(query, doc, truncation="longest_first", max_length=MAX)
        assert out.ids[0] == ref["input_ids"] and len(out.ids[0]) == MAX
        if "token_type_ids" in ref:
            assert out.type_ids[0] == ref["token_type_ids"]
        assert out.cut == [True]
