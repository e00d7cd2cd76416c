"""The distillation job's config: the input, the teachers (each a model and its own actor
pool), how labels are made, and which training formats to write."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from jobs.config import (
    ActorConfig,
    CacheConfig,
    HealthGates,
    InputConfig,
    OutputConfig,
    RayConfig,
    Section,
    instruction_checks,
    layout_checks,
    load_yaml,
    passage_checks,
    stage_checks,
    with_passages,
)
from jobs.errors import ConfigError
from jobs.labels import LabelsConfig, Teacher, check_teachers
from reranker_actors.passage_config import PassageConfig
from reranker_actors.registry import AnyRerankerConfig, family


class TeacherConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Names the teacher's score field.")
    weight: float = Field(1.0, ge=0, description="Its weight in the combined score.")
    reranker: AnyRerankerConfig
    actor: ActorConfig = ActorConfig()

    @model_validator(mode="after")
    def _raw_scores(self) -> TeacherConfig:
        """Teachers record raw scores (logits, log-odds, cosines); the labels are made from them."""
        if "activation" in self.reranker.model_fields_set and self.reranker.activation != "raw":
            raise ValueError(f"teacher {self.name!r}: reranker.activation must be raw (labels combine raw scores)")
        self.reranker = self.reranker.model_copy(update={"activation": "raw"})
        return self

    @property
    def column(self) -> str:
        return f"score_{self.name}"


class FormatsConfig(Section):
    flag_embedding: bool = Field(True, description="Write FlagEmbedding reranker JSONL (_flag_embedding/).")
    cross_encoder: Literal["hard", "soft", "none"] = Field(
        "hard", description="The (query, doc, label) table (_cross_encoder/): positives 1 and hard negatives 0, "
        "soft labels for every candidate, or none.")


class DistillGates(HealthGates):
    """jobs.distill_labels' gates: each teacher's score health, canaries, and how well teachers agree."""

    min_teacher_agreement: float | None = Field(None, ge=-1, le=1, description=(
        "Least mean over queries of Spearman's rho between two teachers' scores, for every pair of teachers."))


class DistillConfig(Section):
    input: InputConfig
    teachers: list[TeacherConfig] = Field(min_length=1, description="Each its own model and actor pool.")
    labels: LabelsConfig = LabelsConfig()
    qrels: str | None = Field(None, description="Parquet query_id, doc_id, relevance, or TREC/BEIR qrels: "
                              "positives come from it.")
    formats: FormatsConfig = FormatsConfig()
    output: OutputConfig
    passages: PassageConfig | None = Field(None, description="Score long documents as passages and aggregate "
                                           "(every teacher alike); unset: each document is cut to max_length.")
    cache: CacheConfig = CacheConfig()
    gates: DistillGates = DistillGates()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _passages_everywhere(self) -> DistillConfig:
        for i, t in enumerate(self.teachers):
            t.reranker = with_passages(t.reranker, self.passages, f"teachers.{i}.reranker")
        return self

    def teacher_specs(self) -> list[Teacher]:
        return [Teacher(t.name, t.column, t.weight, family(t.reranker.backend).score_kind(t.reranker.activation))
                for t in self.teachers]


def _cross_checks(cfg: DistillConfig) -> list[str]:
    errors = [e for i, t in enumerate(cfg.teachers) for e in stage_checks(f"teachers.{i}.", t.reranker, t.actor)]
    try:
        check_teachers(cfg.teacher_specs())
    except ConfigError as e:
        errors.append(str(e))
    if cfg.gates.min_teacher_agreement is not None and len(cfg.teachers) < 2:
        errors.append("gates.min_teacher_agreement: needs at least two teachers")
    errors += passage_checks(cfg.passages, [(f"teachers.{i}.", t.reranker) for i, t in enumerate(cfg.teachers)],
                             cfg.input)
    return errors + instruction_checks(cfg.input, [t.reranker for t in cfg.teachers]) + layout_checks(cfg.input)


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read a distillation YAML config (see jobs.config.load_yaml)."""
    return load_yaml(path, overrides, DistillConfig, _cross_checks)
