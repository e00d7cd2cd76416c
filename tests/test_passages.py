"""Long documents as passages, against an independent reference for each family shape.

The reference builds each passage's ids by hand from the transformers tokenizer's own
encoding of the document: windows at tokens 0, stride, 2*stride, ... until one reaches the
end (at most max_per_doc), `[CLS] q [SEP] window [SEP]` through the tokenizer's
`build_inputs_with_special_tokens` (BERT; XLM-R's `<s> q </s></s> window </s>`), or the
Qwen3-Reranker prompt with the window in the document's place; it runs the transformers
model on each passage alone and aggregates with numpy. fp32, within 1e-5.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from reranker_actors.errors import ModelError
from reranker_actors.llm_yes_no import QWEN3_BODY, QWEN3_INSTRUCTION, QWEN3_PREFIX, QWEN3_SUFFIX
from reranker_actors.passage_config import window_starts
from reranker_actors.registry import build_reranker

CPU = torch.device("cpu")
MAX = 64
LENGTH, STRIDE, CAP = 20, 8, 5
AGGREGATES = ("max", "first", "mean", "kmaxavg")


def starts(n: int, length: int, stride: int, cap: int) -> list[int]:
    """The windows as the issue states them, written out as a loop."""
    out, s = [], 0
    while len(out) < cap:
        out.append(s)
        if s + length >= n:
            break
        s += stride
    return out


def aggregate(scores: list[float], how: str, k: int = 3) -> float:
    x = np.array(scores, dtype=np.float64)
    return {"max": x.max(), "first": x[0], "mean": x.mean(), "kmaxavg": np.sort(x)[::-1][:k].mean()}[how]


def exactly(tok, n: int, word: str = "the") -> str:
    """A document of exactly n tokens for `tok`."""
    doc = " ".join([word] * n)
    assert len(tok(doc, add_special_tokens=False)["input_ids"]) == n
    return doc


def documents(tok) -> list[str]:
    """Shorter than a passage, exactly one passage, a few passages, and past max_per_doc."""
    long = " ".join(f"turbulent boundary layer {i} separates near the trailing edge" for i in range(30))
    return ["heat transfer in a slab", exactly(tok, LENGTH),
            "the wing in a propeller slipstream at several angles of attack and velocity ratios, " * 3,
            long, "湍流边界层 的传热实验 in a wind tunnel " * 6]


QUERIES = ["what is boundary layer separation?", "heat transfer", "wing slipstream lift", "boundary layer",
           "传热 实验"]


@cache
def loaded(model_dir: str, auto_class: type) -> tuple:
    return AutoTokenizer.from_pretrained(model_dir), auto_class.from_pretrained(model_dir, dtype=torch.float32).eval()


def cross_reference(model_dir: str, query: str, doc: str, how: str) -> tuple[float, int, int, bool]:
    """(aggregate, passages, best, whether max_per_doc left some out) for one pair, as the
    issue specifies."""
    tok, model = loaded(model_dir, AutoModelForSequenceClassification)
    q = tok(query, add_special_tokens=False)["input_ids"][: MAX * 3 // 4]
    d = tok(doc, add_special_tokens=False)["input_ids"]
    length = min(LENGTH, MAX - tok.num_special_tokens_to_add(pair=True) - len(q))
    scores = []
    for s in starts(len(d), length, min(STRIDE, length), CAP):
        w = d[s:s + length]
        inputs = by_hand(tok, q, w)
        with torch.no_grad():
            scores.append(float(model(**inputs).logits[0, 0]))
    capped = len(starts(len(d), length, min(STRIDE, length), 10**6)) > CAP
    return aggregate(scores, how), len(scores), int(np.argmax(scores)), capped


def by_hand(tok, q: list[int], w: list[int]) -> dict[str, torch.Tensor]:
    """BERT: [CLS] q [SEP] w [SEP], types 0 then 1; XLM-R: <s> q </s></s> w </s>."""
    cls, sep = tok.cls_token_id, tok.sep_token_id
    if "token_type_ids" in tok.model_input_names:
        return {"input_ids": torch.tensor([[cls, *q, sep, *w, sep]]),
                "token_type_ids": torch.tensor([[0] * (len(q) + 2) + [1] * (len(w) + 1)])}
    return {"input_ids": torch.tensor([[cls, *q, sep, sep, *w, sep]])}


# (XLM-R's 250k-token vocabulary makes each model load seconds: its other aggregations run in the slow tier)
@pytest.mark.parametrize("fixture, how", [("tiny_bert_dir", how) for how in AGGREGATES] + [
    ("tiny_xlmr_dir", "max"), *(pytest.param("tiny_xlmr_dir", how, marks=pytest.mark.slow) for how in AGGREGATES[1:])])
def test_cross_encoder_passages_equal_the_reference(request: pytest.FixtureRequest, fixture: str, how: str) -> None:
    model_dir = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = documents(tok)
    reranker = build_reranker({"backend": "cross_encoder", "model": model_dir, "dtype": "float32", "max_length": MAX,
                               "passages": {"length": LENGTH, "stride": STRIDE, "max_per_doc": CAP,
                                            "aggregate": how}}, CPU)
    out = reranker.score(QUERIES, docs)
    for i, (query, doc) in enumerate(zip(QUERIES, docs, strict=True)):
        want, count, best, capped = cross_reference(model_dir, query, doc, how)
        assert out.values[i] == pytest.approx(want, abs=1e-5), (i, how)
        assert (out.passages[i], out.best[i], out.truncated[i]) == (count, best, capped)
    assert list(out.passages[:2]) == [1, 1] and out.passages[3] == CAP  # (short, exactly one, past the cap)
    assert out.truncated[3] and not out.truncated[:2].any()
    start, end = out.chars[3]
    assert doc_slice_tokens(tok, docs[3], start, end, out.best[3])


def doc_slice_tokens(tok, doc: str, start: int, end: int, best: int) -> bool:
    """The best passage's characters hold its window's tokens."""
    enc = tok(doc, add_special_tokens=False, return_offsets_mapping=True)
    s = best * STRIDE
    offsets = enc["offset_mapping"][s:s + LENGTH]
    return (start, end) == (offsets[0][0], offsets[-1][1])


def test_sigmoid_applies_after_the_aggregate(tiny_bert_dir: str) -> None:
    common = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": MAX}
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    docs = documents(tok)
    mean = {"length": LENGTH, "stride": STRIDE, "aggregate": "mean"}
    raw = build_reranker(common | {"passages": mean}, CPU).score(QUERIES, docs)
    prob = build_reranker(common | {"passages": mean, "activation": "sigmoid"}, CPU).score(QUERIES, docs)
    np.testing.assert_allclose(prob.values, 1 / (1 + np.exp(-raw.values.astype(np.float64))), atol=1e-6)


def test_a_short_document_scores_as_without_passages_in_every_family(tiny_bert_dir: str, minilm_dir: str,
                                                                     tiny_qwen3_dir: str) -> None:
    queries, docs = ["heat transfer", "wing lift"], ["heat transfer in a slab", "lift of a wing"]
    for backend, model, max_length in (("cross_encoder", tiny_bert_dir, MAX), ("bi_encoder", minilm_dir, MAX),
                                       ("llm_yes_no", tiny_qwen3_dir, 256)):
        common = {"backend": backend, "model": model, "dtype": "float32", "max_length": max_length}
        plain = build_reranker(common, CPU).score(queries, docs)
        split = build_reranker(common | {"passages": {"length": 16}}, CPU).score(queries, docs)
        np.testing.assert_allclose(split.values, plain.values, atol=1e-5)
        assert list(split.passages) == [1, 1]


@pytest.mark.parametrize("how", AGGREGATES)
def test_bi_encoder_passages_equal_the_reference(minilm_dir: str, how: str) -> None:
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    docs = documents(tok)
    reranker = build_reranker({"backend": "bi_encoder", "model": minilm_dir, "dtype": "float32", "max_length": MAX,
                               "passages": {"length": LENGTH, "stride": STRIDE, "max_per_doc": CAP,
                                            "aggregate": how}}, CPU)
    out = reranker.score(QUERIES, docs)

    def embed(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=-1)

    for i, (query, doc) in enumerate(zip(QUERIES, docs, strict=True)):
        q = embed(tok(query, truncation=True, max_length=MAX * 3 // 4 + 2)["input_ids"])
        d = tok(doc, add_special_tokens=False)["input_ids"]
        scores = [float(q @ embed([tok.cls_token_id, *d[s:s + LENGTH], tok.sep_token_id]))
                  for s in starts(len(d), LENGTH, STRIDE, CAP)]
        assert out.values[i] == pytest.approx(aggregate(scores, how), abs=1e-5)


def qwen3_reference(model_dir: str, query: str, doc: str, how: str, max_length: int) -> tuple[float, int, int]:
    """The card's prompt with each window in the document's place: the body tokenized as one
    text, split where the document's tokens begin and end."""
    tok, model = loaded(model_dir, AutoModelForCausalLM)
    prefix = tok(QWEN3_PREFIX, add_special_tokens=False)["input_ids"]
    suffix = tok(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"]
    head_text = QWEN3_BODY.split("{doc}")[0].format(instruction=QWEN3_INSTRUCTION, query=query)
    enc = tok(head_text + doc, add_special_tokens=False, return_offsets_mapping=True)
    inside = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if b > len(head_text)]
    head, d = enc["input_ids"][:inside[0]], enc["input_ids"][inside[0]:]
    length = min(LENGTH, max_length - len(prefix) - len(suffix) - len(head))
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    scores = []
    for s in starts(len(d), length, min(STRIDE, length), CAP):
        ids = prefix + head + d[s:s + length] + suffix
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        scores.append(float(logits[yes] - logits[no]))
    return aggregate(scores, how), len(scores), len(d)


@pytest.mark.parametrize("how", AGGREGATES)
def test_llm_yes_no_passages_equal_the_reference(tiny_qwen3_dir: str, how: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    docs = documents(tok)
    docs[1] = " ".join(["the"] * LENGTH)  # (in the prompt, after "<Document>: ": LENGTH tokens, checked below)
    max_length = 200
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32",
                               "max_length": max_length, "activation": "raw",
                               "passages": {"length": LENGTH, "stride": STRIDE, "max_per_doc": CAP,
                                            "aggregate": how}}, CPU)
    out = reranker.score(QUERIES, docs)
    for i, (query, doc) in enumerate(zip(QUERIES, docs, strict=True)):
        want, count, tokens = qwen3_reference(tiny_qwen3_dir, query, doc, how, max_length)
        assert out.values[i] == pytest.approx(want, abs=1e-5), (i, how)
        assert out.passages[i] == count and (i != 1 or tokens == LENGTH)
    assert list(out.passages[:2]) == [1, 1] and out.passages[3] == CAP


def test_a_prompt_without_room_is_an_invalid_pair_and_misfits_fail_at_start(tiny_qwen3_dir: str,
                                                                            tiny_bert_dir: str) -> None:
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32",
                               "max_length": 120, "passages": {"length": 8}}, CPU)
    out = reranker.score(["short", "a very long query " * 40], ["heat transfer", "heat transfer"])
    assert out.invalid == [None, "the prompt leaves no room for the document (passages): the query and "
                                 "instruction fill max_length"]
    assert np.isfinite(out.values[0]) and np.isnan(out.values[1]) and out.passages[1] == 0
    with pytest.raises(ModelError, match=r"passages.length 63 does not fit: reranker.max_length 64 leaves 61 tokens "
                                         r"beside the model's 3 special tokens; set passages.length to at most 61"):
        build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "max_length": 64,
                        "passages": {"length": 63}}, CPU)
    with pytest.raises(ModelError, match=r"passages: the query cap \(61 tokens\) leaves no room"):
        build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "max_length": 64, "query_max_length": 61,
                        "passages": {"length": 8}}, CPU)
    with pytest.raises(ModelError, match=r"passages.length 200 does not fit: max_length leaves \d+ tokens beside"):
        build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "max_length": 120,
                        "passages": {"length": 200}}, CPU)


def test_window_starts() -> None:
    for n in range(0, 60):
        for length, stride, cap in ((10, 5, 64), (10, 10, 64), (10, 3, 4), (7, 7, 2)):
            got, capped = window_starts(n, length, stride, cap)
            assert list(got) == starts(n, length, stride, cap)
            assert capped == (len(starts(n, length, stride, 10**6)) > cap)


def test_the_actor_lists_pairs_without_room_or_quarantines_them_and_isolates_failures(tiny_qwen3_dir: str) -> None:
    import pyarrow as pa

    from reranker_actors.actor import ScoreActor
    from reranker_actors.errors import InputError

    queries = ["short", "a very long query " * 40, "short", "short"]
    table = pa.table({"query_id": ["q1", "q2", "q1", "q1"], "query": queries, "doc_id": ["a", "b", "c", "d"],
                      "doc": ["heat transfer " * 30, "heat transfer", "wing", "boom"],
                      "_skip_reason": pa.nulls(4, pa.string())})
    config = {"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32", "max_length": 120,
              "passages": {"length": 8}}
    strict = ScoreActor(config, expect_gpu=False, threads=1, on_invalid="error", passage_columns=True)
    with pytest.raises(InputError, match=r"(?s)1 invalid pair\(s\).*\(query_id='q2', doc_id='b'\): the prompt "
                                         r"leaves no room"):
        strict(table)
    lenient = ScoreActor(config, expect_gpu=False, threads=1, on_invalid="skip", passage_columns=True)
    score = lenient.reranker.score

    def failing(q, d, i=None):  # (a row that makes the model raise: isolated by bisection, passages kept)
        if "boom" in d:
            raise ValueError("kernel exploded")
        return score(q, d, i)

    lenient.reranker.score = failing  # type: ignore[method-assign]
    out = lenient(table).to_pylist()
    assert [r["_skip_reason"] is None for r in out] == [True, False, True, False]
    assert out[1]["_skip_reason"].startswith("the prompt leaves no room") and out[1]["passages"] is None
    assert out[3]["_skip_reason"].startswith("scoring failed: ValueError: kernel exploded")
    assert out[0]["passages"] > 1 and out[2]["passages"] == 1 and out[2]["best_passage_chars"] == {"start": 0,
                                                                                                     "end": 4}
    alone = score(queries[:1], ["heat transfer " * 30]).values[0]
    assert out[0]["score"] == pytest.approx(alone, abs=1e-6)


@pytest.mark.parametrize("backend, fixture, max_length", [("cross_encoder", "tiny_bert_dir", MAX),
                                                          ("llm_yes_no", "tiny_qwen3_dir", 200)])
def test_passages_packed_without_padding_equal_the_padded_ones(request: pytest.FixtureRequest, backend: str,
                                                               fixture: str, max_length: int) -> None:
    # (on CUDA passages pack like pairs; here the packing runs with per-sequence attention)
    model = request.getfixturevalue(fixture)
    config = {"backend": backend, "model": model, "dtype": "float32", "max_length": max_length,
              "passages": {"length": LENGTH, "stride": STRIDE, "max_per_doc": CAP, "aggregate": "mean"}}
    padded, packed = build_reranker(config, CPU), build_reranker(config, CPU)
    packed.use_packing()
    docs = documents(AutoTokenizer.from_pretrained(model))
    a, b = padded.score(QUERIES, docs), packed.score(QUERIES, docs)
    assert packed.attention == "packed" and np.abs(a.values - b.values).max() < 1e-5
    assert (a.passages == b.passages).all() and (a.best == b.best).all()


TITLES = ["Boundary layers", "", "Wings in a slipstream", "turbulent separation near the trailing edge of wings",
          "传热"]


def test_a_title_before_every_window_shrinks_it_and_equals_the_reference(tiny_bert_dir: str,
                                                                         tiny_qwen3_dir: str) -> None:
    tok, model = loaded(tiny_bert_dir, AutoModelForSequenceClassification)
    docs = documents(tok)
    cfg = {"length": LENGTH, "stride": STRIDE, "max_per_doc": CAP, "title": "headline"}
    out = build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": MAX,
                          "passages": cfg}, CPU).score(QUERIES, docs, None, TITLES)
    for i, (query, doc, title) in enumerate(zip(QUERIES, docs, TITLES, strict=True)):
        q = tok(query, add_special_tokens=False)["input_ids"][: MAX * 3 // 4]
        t = tok(title, add_special_tokens=False)["input_ids"]
        d = tok(doc, add_special_tokens=False)["input_ids"]
        length = min(LENGTH, MAX - 3 - len(q)) - len(t)  # (the window makes room for the title)
        scores = []
        for s in starts(len(d), length, min(STRIDE, length), CAP):
            with torch.no_grad():
                scores.append(float(model(**by_hand(tok, q, t + d[s:s + length])).logits[0, 0]))
        assert out.values[i] == pytest.approx(max(scores), abs=1e-5) and out.passages[i] == len(scores)

    tok, model = loaded(tiny_qwen3_dir, AutoModelForCausalLM)
    long_title = "a title of many words " * 10
    out = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32", "max_length": 200,
                          "activation": "raw", "passages": cfg}, CPU).score(
        QUERIES[:3], documents(tok)[:3], None, ["Boundary layers", None, long_title])
    assert out.invalid[2] == "passages.title: the title fills the passage and leaves no room for the document"
    prefix = tok(QWEN3_PREFIX, add_special_tokens=False)["input_ids"]
    suffix = tok(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    for i, title in enumerate(["Boundary layers", ""]):
        doc = documents(tok)[i]
        head_text = QWEN3_BODY.split("{doc}")[0].format(instruction=QWEN3_INSTRUCTION, query=QUERIES[i])
        enc = tok(head_text + doc, add_special_tokens=False, return_offsets_mapping=True)
        first = next(k for k, (_, b) in enumerate(enc["offset_mapping"]) if b > len(head_text))
        head, d = enc["input_ids"][:first], enc["input_ids"][first:]
        t = tok(title, add_special_tokens=False)["input_ids"]
        length = min(LENGTH, 200 - len(prefix) - len(suffix) - len(head)) - len(t)
        scores = []
        for s in starts(len(d), length, min(STRIDE, length), CAP):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prefix + head + t + d[s:s + length] + suffix])).logits[0, -1]
            scores.append(float(logits[yes] - logits[no]))
        assert out.values[i] == pytest.approx(max(scores), abs=1e-5)
