"""A real causal LM through the whole job: SmolLM2-135M-Instruct (Llama architecture),
with a ChatML template and its own yes/no tokens. Its answers don't discriminate (it is
not a reranker) but every number it produces is a real model's, so nothing in the path
can depend on random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs.config import load_config
from jobs.rerank import run
from tests.conftest import job_config, sample_pairs, write_config, write_shards

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
          "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def reranker_section(model: str) -> dict:
    return {"backend": "llm_yes_no", "model": model, "dtype": "float32", "max_length": 384,
            "prefix": PREFIX, "suffix": SUFFIX, "positive_token": "yes", "negative_token": "no"}


def full_forward_scores(model_dir: str, texts: list[str]) -> np.ndarray:
    """P(yes) from the plain causal LM, one prompt at a time (no padding, full logits)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert (yes, no) == (10407, 4607)
    budget = 384 - len(tok.encode(PREFIX, add_special_tokens=False)) - len(tok.encode(SUFFIX, add_special_tokens=False))
    out = []
    with torch.no_grad():
        for text in texts:
            ids = (tok.encode(PREFIX, add_special_tokens=False) + tok.encode(text)[:budget]
                   + tok.encode(SUFFIX, add_special_tokens=False))
            logits = model(torch.tensor([ids])).logits[0, -1]
            out.append(torch.softmax(torch.stack([logits[no], logits[yes]]), 0)[1].item())
    return np.array(out)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_smollm2_scores_every_pair_the_same_way_twice(tmp_path: Path, smollm2_dir: str) -> None:
    table = sample_pairs()
    table = table.filter(pc.is_in(table["query_id"], pc.cast(["1", "2", "3"], "string")))
    table = table.filter(pc.less_equal(table["bm25_rank"], 6))
    in_dir = write_shards(tmp_path / "in", [table.slice(0, 10), table.slice(10)])
    outputs = []
    for name in ("a", "b"):
        cfg = job_config(tmp_path, in_dir, smollm2_dir, output={"path": str(tmp_path / name)},
                         actor={"threads": 2})  # (the machine's 2 cores for the one actor)
        cfg["reranker"] = reranker_section(smollm2_dir)
        summary = run(load_config(write_config(tmp_path / f"{name}.yaml", cfg)))
        assert (summary.pairs, summary.rows_out) == (18, 18)
        outputs.append(pads.dataset(str(tmp_path / name)).to_table().sort_by([("query_id", "ascending"),
                                                                             ("rank", "ascending")]))
    first, second = outputs
    assert first.equals(second)  # identical, bit for bit
    scores = np.array(first["score"].to_pylist())
    assert ((scores > 0) & (scores < 1)).all()

    texts = [f"<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
             f"<Query>: {q}\n<Document>: {d}"
             for q, d in zip(table["query"].to_pylist(), table["doc"].to_pylist(), strict=True)]
    expected = dict(zip(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True),
                        full_forward_scores(smollm2_dir, texts), strict=True))
    got = dict(zip(zip(first["query_id"].to_pylist(), first["doc_id"].to_pylist(), strict=True), scores, strict=True))
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-5  # (measured: 2.9e-6)
