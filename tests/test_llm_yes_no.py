"""llm_yes_no equals the Qwen3-Reranker model card's transformers reference, in fp32.

The reference below is written from the card's description (format_instruction,
process_inputs, compute_logits), independently of the backend: the body is tokenized
as one text and truncated to max_length - len(prefix) - len(suffix), prefix and suffix
are added, the batch is LEFT padded, the full causal LM runs, and the score is
softmax([logit(no), logit(yes)])[yes] at the last position.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reranker_actors.errors import ModelError
from reranker_actors.llm_yes_no import LLMYesNoConfig
from reranker_actors.registry import build_reranker
from tests.conftest import sample_pairs

CPU = torch.device("cpu")
CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
               "the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
               "<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class CardReference:
    def __init__(self, model_dir: str, max_length: int) -> None:
        self.tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_length = max_length
        self.prefix_tokens = self.tok.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tok.encode(CARD_SUFFIX, add_special_tokens=False)
        self.yes = self.tok.convert_tokens_to_ids("yes")
        self.no = self.tok.convert_tokens_to_ids("no")

    @staticmethod
    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = CARD_INSTRUCTION
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def last_logits(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tok(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                          max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens))
        inputs["input_ids"] = [self.prefix_tokens + ids + self.suffix_tokens for ids in inputs["input_ids"]]
        padded = self.tok.pad(inputs, padding=True, return_tensors="pt").to(self.model.device)
        with torch.no_grad():  # (logits_to_keep=1: the card's logits[:, -1, :] without the other positions')
            return self.model(**padded, logits_to_keep=1).logits[:, -1, :]

    def scores(self, queries: list[str], docs: list[str], instructions: list[str | None]) -> np.ndarray:
        texts = [self.format_instruction(i, q, d) for i, q, d in zip(instructions, queries, docs, strict=True)]
        logits = self.last_logits(texts)
        pair = torch.nn.functional.log_softmax(torch.stack([logits[:, self.no], logits[:, self.yes]], 1), dim=1)
        return pair[:, 1].exp().float().cpu().numpy()


def cases() -> tuple[list[str], list[str], list[str | None]]:
    """Sample queries with several candidates each (the shared-prefix path), long documents,
    Chinese and mixed text, and per-row instructions next to the default."""
    rows = [r for r in sample_pairs().to_pylist() if r["query_id"] in ("1", "2") and r["bm25_rank"] <= 5]
    queries = [r["query"] for r in rows]
    docs = [r["doc"] for r in rows]
    instructions: list[str | None] = [None] * len(rows)
    queries += ["湍流边界层是什么?", "湍流边界层是什么?", "protein folding 蛋白质折叠", "what is heat transfer?"]
    docs += ["湍流边界层是靠近壁面的流动区域，其中速度脉动很强。" * 20,
             "The turbulent boundary layer 湍流边界层 near a flat plate.", "蛋白质折叠 is the process of folding.",
             "Heat transfer " * 300]
    instructions += [None, "判断文档是否回答了问题", "Rank by biology relevance", None]
    return queries, docs, instructions


@pytest.mark.parametrize("max_length", [8192, 96])
def test_scores_equal_the_model_card_reference(tiny_qwen3_dir: str, max_length: int) -> None:
    queries, docs, instructions = cases()
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32",
                               "max_length": max_length}, CPU)
    ours, truncated = reranker.score(queries, docs, instructions)
    ref = CardReference(tiny_qwen3_dir, max_length).scores(queries, docs, instructions)
    assert ours.dtype == np.float32 and ((ours > 0) & (ours < 1)).all()
    assert np.abs(ours - ref).max() < 1e-6  # (measured: 1.9e-7 at 8192, 5.2e-8 at 96)
    assert np.std(ref) > 1e-3  # random weights that still tell pairs apart
    prompts = reranker.encoder.encode(queries, docs, instructions)
    assert truncated.tolist() == prompts.cut and truncated.any() == (max_length == 96)


def test_shared_prefix_and_plain_paths_agree(tiny_qwen3_dir: str) -> None:
    queries, docs, instructions = cases()
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32",
                               "max_length": 256, "max_tokens_per_batch": 1024}, CPU)
    batch = reranker.encoder.encode(queries, docs, instructions)
    assert max(g.shared for g in batch.groups) > len(reranker.encoder.prefix)  # the query is in the shared part
    shared, _ = reranker.logits(queries, docs, instructions, share_prefix=True)
    plain, _ = reranker.logits(queries, docs, instructions, share_prefix=False)
    assert np.abs(shared - plain).max() < 5e-6  # (logits; measured: 7.2e-7)


def test_empty_instruction_means_the_default(tiny_qwen3_dir: str) -> None:
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32"}, CPU)
    q, d = ["what is lift?"] * 4, ["Lift is the force on a wing."] * 4
    scores = reranker.score(q, d, [None, "", "  ", CARD_INSTRUCTION]).values
    assert np.abs(scores - scores[3]).max() < 1e-6  # equal up to BLAS rounding across rows
    custom = reranker.score(q[:1], d[:1], ["Judge by legal compliance"]).values[0]
    assert abs(custom - scores[0]) > 1e-4


def test_only_the_yes_and_no_rows_of_the_lm_head_are_used(tiny_qwen3_dir: str) -> None:
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32"}, CPU)
    calls = []
    reranker.model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    queries, docs, instructions = cases()
    reranker.score(queries, docs, instructions)
    assert calls == []  # the 151k-vocabulary projection never ran
    assert reranker.head.shape == (reranker.model.config.hidden_size, 2)


def test_qwen3_tokens_and_yes_logit_mode(tiny_qwen3_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    assert (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")) == (9693, 2152)
    queries, docs, instructions = cases()
    reranker = build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32",
                               "negative_token": None, "activation": "raw"}, CPU)
    ref = CardReference(tiny_qwen3_dir, 8192)
    texts = [ref.format_instruction(i, q, d) for i, q, d in zip(instructions, queries, docs, strict=True)]
    expected = ref.last_logits(texts)[:, 9693].numpy()
    assert np.abs(reranker.score(queries, docs, instructions).values - expected).max() < 1e-5  # (measured: 1.1e-6)


def test_template_and_token_errors(tiny_qwen3_dir: str) -> None:
    with pytest.raises(ValueError, match=r"must contain \{query\} and \{doc\}"):
        LLMYesNoConfig(model="m", body="<Query>: {query}")
    with pytest.raises(ValueError, match="query_max_length does not apply"):
        LLMYesNoConfig(model="m", query_max_length=10)
    with pytest.raises(ModelError, match="positive_token 'definitely' is not a token"):
        build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "positive_token": "definitely"}, CPU)
    with pytest.raises(ModelError, match="leaves no room for the prompt body"):
        build_reranker({"backend": "llm_yes_no", "model": tiny_qwen3_dir, "max_length": 40}, CPU)
