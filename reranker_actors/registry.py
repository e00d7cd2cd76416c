"""Reranker families by name. Add a family here and it is selectable as reranker.backend;
everything else about it (config keys, capabilities, known models) lives in its own file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from reranker_actors.base import Reranker, RerankerConfig
from reranker_actors.bi_encoder import BiEncoderReranker
from reranker_actors.cross_encoder import CrossEncoderReranker
from reranker_actors.errors import ConfigError
from reranker_actors.llm_yes_no import LLMYesNoReranker

if TYPE_CHECKING:
    import torch

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


def family(backend: str) -> type[Reranker]:
    """The family class registered as `backend`: its capabilities are class attributes."""
    if backend not in BACKENDS:
        raise ConfigError(f"reranker.backend: {unknown_backend_message(backend)}")
    return BACKENDS[backend]


def typed_config(config: RerankerConfig | dict[str, Any]) -> RerankerConfig:
    """A family's config object from itself or from a plain dict (as actors receive it)."""
    if isinstance(config, RerankerConfig):
        return config
    cls = family(config.get("backend"))  # type: ignore[arg-type]
    return cls.config_class.model_validate(config)


def score_settings(config: RerankerConfig | dict[str, Any]) -> dict[str, Any]:
    """Every value of `config` a score depends on, as its family declares."""
    config = typed_config(config)
    return family(config.backend).score_settings(config)


def unsupported(config: RerankerConfig) -> list[str]:
    """Settings of `config` its family cannot honour, each as `key: why`."""
    if config.compile and not family(config.backend).supports_compile:
        return [f"compile: backend {config.backend} runs uncompiled; drop the key"]
    return []


def backends_that(capability: str) -> list[str]:
    """The backends whose family has `capability` (a class attribute) set, e.g. takes_instruction."""
    return sorted(name for name, cls in BACKENDS.items() if getattr(cls, capability))


def build_reranker(config: RerankerConfig | dict[str, Any], device: torch.device) -> Reranker:
    """Instantiate the family named by config.backend (a config object or a plain dict), warmed up."""
    config = typed_config(config)
    if problems := unsupported(config):
        raise ConfigError("; ".join(f"reranker.{p}" for p in problems))
    reranker = family(config.backend)(config, device)
    reranker.warm_up()
    return reranker


def known_models() -> dict[str, dict[str, Any]]:
    """Hub id -> architecture shape, over every family (see Reranker.known_models)."""
    return {model: shape for cls in BACKENDS.values() for model, shape in cls.known_models.items()}
