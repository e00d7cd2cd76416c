"""The one interface every reranker family implements, and the options they share."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reranker_actors.passage_config import PassageConfig

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Default token budgets per forward pass: on a CPU a small budget keeps the working set in
# cache; a GPU needs large batches to fill its SMs (docs/performance.md has the measurements).
CPU_TOKEN_BUDGET = 4096
CUDA_TOKEN_BUDGET = 65536
# Config fields that change how fast a score is computed, never its value.
SPEED_ONLY = frozenset({"max_tokens_per_batch", "compile"})

ScoreKind = Literal["logit", "cosine", "probability"]

if TYPE_CHECKING:  # (torch loads where a model runs, not where a config is read)
    import torch

F = TypeVar("F", bound=Callable[..., Any])


def inference_mode(fn: F) -> F:
    """torch.inference_mode() around a method, importing torch only when it runs."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


class RerankerConfig(BaseModel):
    """Options common to all families. Each family subclasses this with its `backend` tag."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    model: str = Field(description="Hub id, local directory, or python-package:<module>.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model (auto_map). Only for models you trust."
    )
    allow_pickle_weights: bool = Field(
        False, description="Also load pickle-based .bin/.pt weights; by default only safetensors load."
    )
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (fp32/bf16/fp16).")
    max_length: int = Field(512, ge=8, description="Tokens per pair, special tokens included.")
    query_max_length: int | None = Field(
        None, ge=1, description="Cap on query tokens; default 3/4 of max_length (as FlagReranker)."
    )
    activation: Literal["raw", "sigmoid"] = "raw"
    max_tokens_per_batch: int | None = Field(
        None, ge=64, description="Token budget of one forward pass (rows x padded length); default "
        "4096 on CPU (the working set stays in cache), 65536 on CUDA, at least max_length."
    )
    compile: bool = Field(
        False, description="torch.compile the model (dynamic shapes): faster steady state, a slower "
        "start per actor; needs a C++ compiler on CPU, Triton on CUDA."
    )
    passages: PassageConfig | None = Field(
        None, description="Set from the job's top-level `passages:` (every stage and teacher alike).")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, v: object) -> object:
        if isinstance(v, str):
            v = DTYPE_ALIASES.get(v.lower(), v.lower())
            if v not in DTYPES:
                accepted = ", ".join(DTYPES) + " (aliases: " + ", ".join(DTYPE_ALIASES) + ")"
                raise ValueError(f"unknown dtype {v!r}; accepted: {accepted}")
        return v

    @model_validator(mode="after")
    def _query_cap_fits(self) -> RerankerConfig:
        if self.query_max_length is not None and self.query_max_length >= self.max_length:
            raise ValueError(
                f"query_max_length ({self.query_max_length}) must be below max_length "
                f"({self.max_length}) so the document keeps some tokens"
            )
        return self

    @property
    def query_cap(self) -> int:
        return self.query_max_length or self.max_length * 3 // 4

    def token_budget(self, device: torch.device) -> int:
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        return max(self.max_length, CUDA_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET)


class Scores(NamedTuple):
    """What a reranker returns for a list of pairs, in input order."""

    values: np.ndarray  # float32 scores
    truncated: np.ndarray  # bool: the pair's query or doc was cut to fit max_length


class PassageScores(NamedTuple):
    """Scores with passages (reranker_actors.passages): Scores' fields, and per pair more."""

    values: np.ndarray  # float32: the aggregate, activated
    truncated: np.ndarray  # bool: the query was cut, or max_per_doc left passages out
    passages: np.ndarray  # int32: passages scored
    best: np.ndarray  # int32: the best passage's index
    chars: np.ndarray  # int32 (n, 2): its [start, end) characters in the document
    invalid: list[str | None]  # why a pair could not be scored (its score is NaN), else None
    capped: np.ndarray  # bool: max_per_doc left some of the document's passages out


def concat_scores(parts: Sequence[Scores | PassageScores]) -> Scores | PassageScores:
    """The scores of consecutive row ranges, as one."""
    kind = type(parts[0])
    return kind(*([x for p in parts for x in getattr(p, name)] if name == "invalid"
                  else np.concatenate([getattr(p, name) for p in parts]) for name in kind._fields))


class Reranker(ABC):
    """Scores (query, doc) pairs. Loaded once per actor; called once per batch.

    A family declares what it can do as class attributes, which the job reads (config
    checks, distillation, the score cache, checkpoints, the planner) instead of testing
    backend names.
    """

    config_class: ClassVar[type[RerankerConfig]]
    raw_score: ClassVar[ScoreKind]  # what a score is with activation raw
    takes_instruction: ClassVar[bool] = False  # per-pair task instructions change its scores
    supports_compile: ClassVar[bool] = True  # reranker.compile applies
    speed_only: ClassVar[frozenset[str]] = SPEED_ONLY  # config fields that never change a score
    # Hub ids this family is the documented backend for, with their architecture shape
    # (layers, hidden, intermediate, heads; kv_heads, head_dim and gated where they differ;
    # params), for the capacity planner.
    known_models: ClassVar[dict[str, dict[str, Any]]] = {}

    config: RerankerConfig
    dtype: Any  # the resolved torch.dtype
    attention: str = "padded"  # packed: padding-free batches (reranker_actors.packing)

    @classmethod
    def score_kind(cls, activation: str) -> ScoreKind:
        return "probability" if activation == "sigmoid" else cls.raw_score

    @classmethod
    def score_settings(cls, config: RerankerConfig) -> dict[str, Any]:
        """Every config value a score depends on (what checkpoints and caches are keyed by)."""
        return config.model_dump(exclude=set(cls.speed_only))

    def warm_up(self) -> None:
        """Pay one-off costs (compiling) now, at load, so that no batch waits for them."""
        return None

    @abstractmethod
    def score(self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None,
              titles: Sequence[str | None] | None = None) -> Scores | PassageScores:
        """Scores of the pairs, in input order, and which pairs were truncated (with
        config.passages: PassageScores; `titles`: passages.title's text per pair).

        `instructions` (per pair, None/empty = the configured default) is used by the
        families that take a task instruction; the others ignore it.
        """


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply the configured score activation to raw float32 scores."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return logits.astype(np.float32, copy=False)
