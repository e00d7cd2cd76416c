"""The one interface every reranker family implements, and the options they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Default token budgets per forward pass. CPU: MiniLM-L6 bf16 on 2 cores, 500 SciFact
# pairs: 4096 tokens ran 1.3-1.45x faster than 16384 (benchmarks/throughput.py --max-tokens).
CPU_TOKEN_BUDGET = 4096
CUDA_TOKEN_BUDGET = 65536


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
        "4096 on CPU (fastest measured: the working set stays in cache), 65536 on CUDA, at least max_length."
    )
    compile: bool = Field(
        False, description="torch.compile the model (dynamic shapes): faster steady state, a slower "
        "start (about 30 s per actor on 2 CPU cores); needs a C++ compiler on CPU, Triton on CUDA."
    )

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


class Reranker(ABC):
    """Scores (query, doc) pairs. Loaded once per actor; called once per batch."""

    config_class: ClassVar[type[RerankerConfig]]
    config: RerankerConfig
    dtype: Any  # the resolved torch.dtype

    @abstractmethod
    def score(self, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """Return float32 scores, one per pair, in input order.

        `instructions` (per pair, None/empty = the configured default) is used by the
        families that take a task instruction (llm_yes_no); the others ignore it.
        """

    @property
    def truncated(self) -> int:
        """Pairs truncated so far (query or doc cut to fit max_length)."""
        return 0


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply the configured score activation to raw float32 scores."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return logits.astype(np.float32, copy=False)
