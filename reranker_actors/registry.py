"""Reranker families by name. Add a family here and it is selectable as reranker.backend."""

from __future__ import annotations

from typing import Annotated, Any, Union

import torch
from pydantic import Field

from jobs.errors import ConfigError
from reranker_actors.base import Reranker, RerankerConfig
from reranker_actors.bi_encoder import BiEncoderReranker
from reranker_actors.cross_encoder import CrossEncoderReranker
from reranker_actors.llm_yes_no import LLMYesNoReranker

BACKENDS: dict[str, type[Reranker]] = {
    "cross_encoder": CrossEncoderReranker,
    "bi_encoder": BiEncoderReranker,
    "llm_yes_no": LLMYesNoReranker,
}

# The `reranker:` section of a job config: one of the families' configs, by `backend`.
AnyRerankerConfig = Annotated[
    Union[tuple(cls.config_class for cls in BACKENDS.values())],  # noqa: UP007
    Field(discriminator="backend"),
]


def unknown_backend_message(name: object) -> str:
    return f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}"


def build_reranker(config: RerankerConfig | dict[str, Any], device: torch.device) -> Reranker:
    """Instantiate the family named by config.backend (a config object or a plain dict)."""
    backend = config.backend if isinstance(config, RerankerConfig) else config.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"reranker.backend: {unknown_backend_message(backend)}")
    cls = BACKENDS[backend]
    if not isinstance(config, cls.config_class):
        config = cls.config_class.model_validate(config)
    return cls(config, device)
