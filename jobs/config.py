"""The job config: typed sections, YAML loading, `key.sub=value` overrides, all errors at once."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import ConfigError
from jobs.schema import OUTPUT_COLUMNS
from reranker_actors.columns import PASSAGE_COLUMNS
from reranker_actors.passage_config import PassageConfig
from reranker_actors.registry import BACKENDS, AnyRerankerConfig, backends_that, unknown_backend_message, unsupported

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputColumns(Section):
    """Input column names, mapped onto the job's canonical names."""

    query_id: str = "query_id"
    query: str = "query"
    doc_id: str = "doc_id"
    doc: str = "doc"
    score: str | None = Field(None, description="First-stage score column, passed through.")
    rank: str | None = Field(None, description="First-stage rank column, passed through.")
    candidates: str = Field("candidates", description="Nested layout: list<struct> column.")
    instruction: str | None = Field(
        None, description="Per-row task instruction (LLM rerankers); empty values use the default."
    )
    title: str | None = Field(
        None, description="Run layout, Parquet corpus: a title column; the text is (title + ' ' + doc).strip()."
    )


Paths = str | list[str]


class InputConfig(Section):
    path: Paths = Field(description="Parquet file, directory, glob, s3:// URL, or a list; "
                                    "the run layout also reads TREC and MS MARCO runs.")
    layout: Literal["flat", "nested", "run"] = "flat"
    format: Literal["parquet", "trec", "msmarco"] | None = Field(
        None, description="Run layout: the run files' format; default: from the extension.")
    corpus: Paths | None = Field(
        None, description="Run layout: doc_id -> text (Parquet, BEIR corpus.jsonl, or TSV id<TAB>text; .gz too).")
    queries: Paths | None = Field(
        None, description="Run layout: query_id -> text (Parquet, BEIR queries.jsonl, or TSV id<TAB>text).")
    columns: InputColumns = InputColumns()
    extra_columns: list[str] = Field(default_factory=list, description="Passed through to the output.")
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="Null/empty id or text: fail listing them, or skip and count them."
    )
    on_duplicate: Literal["error", "dedupe"] = Field(
        "error", description="Repeated (query_id, doc_id): fail, or keep the best-scored copy."
    )


class PoolSize(Section):
    min: int = Field(ge=1)
    max: int = Field(ge=1)


class ActorConfig(Section):
    """The scoring actor pool: each actor holds one loaded model."""

    pool_size: PoolSize = Field(PoolSize(min=1, max=1), description="N, or {min: a, max: b}.")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor; fractions pack actors on a GPU.")
    num_cpus: float = Field(1, gt=0)
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources.")
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels an actor's node must have, e.g. "
        "{ray.io/accelerator-type: H100}; empty: any node.")
    batch_size: int = Field(512, ge=1, description="Pairs per call of an actor.")
    threads: int | None = Field(None, ge=1, description="torch threads; default round(num_cpus).")
    max_restarts: int = Field(
        3, ge=0, description="Restarts of an actor that died (OOM kill, lost node), per node; its batch is retried.")
    start_timeout_s: float = Field(
        900, gt=0, description="Fail if the pool's first actors cannot be placed within this time."
    )

    @field_validator("pool_size", mode="before")
    @classmethod
    def _fixed_size(cls, v: object) -> object:
        return {"min": v, "max": v} if isinstance(v, int) and not isinstance(v, bool) else v


class RankConfig(Section):
    top_k: int | None = Field(None, ge=1, description="Keep the best k per query.")


class OutputConfig(Section):
    path: str = Field(description="Output directory (local or s3://).")
    trec: bool = Field(False, description="Also write _run.trec: the ranking as a TREC run file.")
    trec_tag: str = Field("batch-rerank", pattern=r"^\S+$", description="The run tag (last field) of _run.trec.")


class EvalConfig(Section):
    qrels: str | None = Field(None, description="Parquet with query_id, doc_id, relevance, or TREC/BEIR qrels.")
    k: int = Field(10, ge=1)


class RayConfig(Section):
    address: str | None = Field(None, description="Cluster to join; default: RAY_ADDRESS, else a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray the job starts.")


class StageConfig(Section):
    """A later stage of a cascade: its own model and actor pool, over the previous stage's top N."""

    top_n: int = Field(ge=1, description="Score only the previous stage's best N candidates per query.")
    reranker: AnyRerankerConfig
    actor: ActorConfig = ActorConfig()


class CacheConfig(Section):
    path: str | None = Field(
        None, description="Score cache directory (local or s3://), kept between runs; unset: no cache."
    )
    shard_pairs: int = Field(
        25_000_000, gt=0, description="Pairs each cache shard actor serves (20 bytes a pair, about 4x that "
        "while it loads): a cache of N pairs runs ceil(N / shard_pairs) shard actors, none in the driver."
    )


class HealthGates(Section):
    """Gates every entrypoint has: score health and canaries (jobs.gates)."""

    mode: Literal["enforce", "warn"] = Field(
        "enforce", description="enforce: a failed gate refuses the run (exit 3, nothing published); "
        "warn: report it and publish anyway.")
    max_nan_share: float = Field(0, ge=0, le=1, description="Share of NaN or infinite scores allowed "
                                 "(quarantined); 0: the first one stops the run.")
    min_score_spread: float | None = Field(None, ge=0, description="Least standard deviation of the scores.")
    max_tied_share: float | None = Field(None, ge=0, le=1, description=(
        "Most pairs whose score equals another candidate's of the same query."))
    max_truncated_share: float | None = Field(None, ge=0, le=1,
                                              description="Most pairs the model saw cut to max_length.")
    canaries: str | None = Field(None, description="Parquet of query, doc, score (and instruction) pairs, "
                                 "scored by every actor before its first batch (python -m jobs.canaries).")
    canary_tolerance: float = Field(1e-3, gt=0, description="Largest |score - recorded score| of a canary.")


class GatesConfig(HealthGates):
    """jobs.rerank's gates: health, canaries, the ranking against qrels, drift from a baseline."""

    min_ratio_to_first_stage: float | None = Field(None, gt=0, description=(
        "Least reranked nDCG@eval.k over the first stage's (needs eval.qrels and a first-stage column)."))
    min_ndcg: float | None = Field(None, ge=0, le=1, description="Least reranked nDCG@eval.k.")
    baseline: str | None = Field(None, description="A published output directory (local or s3://) to "
                                 "compare with, over the queries both have; drift is reported when set.")
    min_topk_overlap: float | None = Field(None, ge=0, le=1, description=(
        "Least mean over queries of |top-k ∩ baseline top-k| / min(k, list lengths), k = eval.k."))
    max_top1_changed_share: float | None = Field(None, ge=0, le=1,
                                                 description="Most queries whose rank-1 document changed.")
    max_score_shift: float | None = Field(None, ge=0, description=(
        "Largest population stability index of the scores against the baseline's (over its deciles)."))


DRIFT_GATES = ("min_topk_overlap", "max_top1_changed_share", "max_score_shift")


class JobConfig(Section):
    input: InputConfig
    reranker: AnyRerankerConfig
    passages: PassageConfig | None = Field(None, description="Score long documents as passages and aggregate "
                                           "(every stage alike); unset: each document is cut to max_length.")
    actor: ActorConfig = ActorConfig()
    cascade: list[StageConfig] = Field(default_factory=list, description="Stages 2, 3, ... after `reranker`.")
    rank: RankConfig = RankConfig()
    output: OutputConfig
    eval: EvalConfig = EvalConfig()
    cache: CacheConfig = CacheConfig()
    gates: GatesConfig = GatesConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _passages_everywhere(self) -> JobConfig:
        self.reranker = with_passages(self.reranker, self.passages, "reranker")
        for i, stage in enumerate(self.cascade):
            stage.reranker = with_passages(stage.reranker, self.passages, f"cascade.{i}.reranker")
        return self

    def stages(self) -> list[tuple[str, StageConfig]]:
        """Every scoring stage with the config key it comes from; stage 1 has top_n 0 (all)."""
        first = StageConfig.model_construct(top_n=0, reranker=self.reranker, actor=self.actor)
        return [("", first)] + [(f"cascade.{i}.", s) for i, s in enumerate(self.cascade)]


def with_passages(reranker: Any, passages: PassageConfig | None, key: str) -> Any:
    """The reranker config with the job's top-level passages (which apply to every model)."""
    if reranker.passages is not None and reranker.passages != passages:  # (equal: validated before)
        raise ValueError(f"{key}.passages: set `passages:` at the top level of the config; it applies to every "
                         "model of the job")
    return reranker.model_copy(update={"passages": passages}) if passages is not None else reranker


def reading_input(input_cfg: InputConfig, passages: PassageConfig | None) -> InputConfig:
    """The input as the job reads it: passages.title's column carried along with the pairs (the
    run layout reads it from the corpus instead: title_apart)."""
    title = passages.title if passages else None
    if not title or title in input_cfg.extra_columns or input_cfg.layout == "run":
        return input_cfg
    return input_cfg.model_copy(update={"extra_columns": [*input_cfg.extra_columns, title]})


def title_apart(input_cfg: InputConfig, passages: PassageConfig | None) -> str | None:
    """The run layout's passages.title: the corpus's title column (BEIR: "title"), kept apart."""
    return passages.title if passages and input_cfg.layout == "run" else None


def passage_checks(passages: PassageConfig | None, rerankers: list[tuple[str, Any]],
                   input_cfg: InputConfig) -> list[str]:
    """What passages need of the models and the input (the tokenizer's own checks run when an
    actor starts)."""
    if passages is None:
        return []
    errors = [f"passages.length ({passages.length}) must be below {key}reranker.max_length "
              f"({reranker.max_length}), which also holds the query and special tokens"
              for key, reranker in rerankers if passages.length >= reranker.max_length]
    errors += [f"input.extra_columns: {name!r} collides with a passage column ({', '.join(PASSAGE_COLUMNS)}); "
               "rename it in the input" for name in input_cfg.extra_columns if name in PASSAGE_COLUMNS]
    if passages.title and input_cfg.layout == "run" and input_cfg.columns.title:
        errors.append("passages.title: the run layout takes the corpus's title either joined to each document's "
                      "text (input.columns.title) or before every passage (passages.title), not both")
    return errors


def stage_checks(key: str, reranker: Any, actor: ActorConfig) -> list[str]:
    """Checks of one model and its actor pool; `key` prefixes their config keys."""
    errors = [f"{key}reranker.{problem}" for problem in unsupported(reranker)]
    if reranker.dtype == "float16" and actor.num_gpus == 0:
        errors.append(
            f"{key}reranker.dtype: float16 runs on CUDA only, but {key}actor.num_gpus is 0 (CPU). fp16 "
            "matmul on CPU is about 100x slower; use auto, bfloat16 or float32, or give the actor a GPU"
        )
    if actor.pool_size.min > actor.pool_size.max:
        errors.append(f"{key}actor.pool_size: min {actor.pool_size.min} > max {actor.pool_size.max}")
    budget = reranker.max_tokens_per_batch
    if budget is not None and budget < reranker.max_length:
        errors.append(
            f"{key}reranker.max_tokens_per_batch ({budget}) must be at least {key}reranker.max_length "
            f"({reranker.max_length}) so one full pair fits in a forward pass"
        )
    return errors


def _cross_checks(cfg: JobConfig) -> list[str]:
    """Rules that span sections; pydantic has checked each field by now."""
    errors = [e for key, stage in cfg.stages() for e in stage_checks(key, stage.reranker, stage.actor)]
    for i, stage in enumerate(cfg.cascade):
        before = cfg.cascade[i - 1].top_n if i else None
        if before is not None and stage.top_n > before:
            errors.append(f"cascade.{i}.top_n ({stage.top_n}) must not exceed cascade.{i - 1}.top_n ({before}): "
                          "a stage only sees what the previous stage passed on")
    errors += instruction_checks(cfg.input, [stage.reranker for _, stage in cfg.stages()])
    errors += layout_checks(cfg.input) + gate_checks(cfg)
    errors += passage_checks(cfg.passages, [(k, s.reranker) for k, s in cfg.stages()], cfg.input)
    for name in cfg.input.extra_columns:
        if name in OUTPUT_COLUMNS or name in ("query", "doc", "path") or name.startswith(("_", "stage")):
            errors.append(
                f"input.extra_columns: {name!r} collides with a column the job uses "
                f"({', '.join(OUTPUT_COLUMNS)}, query, doc, path, stage<N>_*, or a name starting with _); "
                "rename it in the input"
            )
    return errors


def gate_checks(cfg: JobConfig) -> list[str]:
    """The eval gates need qrels (the ratio also a first-stage column); drift gates a baseline."""
    g, errors = cfg.gates, []
    for key in ("min_ratio_to_first_stage", "min_ndcg"):
        if getattr(g, key) is not None and not cfg.eval.qrels:
            errors.append(f"gates.{key}: needs eval.qrels (relevance judgments to compute nDCG@{cfg.eval.k})")
    has_first = cfg.input.columns.score or cfg.input.columns.rank or cfg.input.layout == "run"
    if g.min_ratio_to_first_stage is not None and not has_first:
        errors.append("gates.min_ratio_to_first_stage: needs the first stage's ranking: set input.columns.score "
                      "or input.columns.rank")
    errors += [f"gates.{key}: needs gates.baseline (a published output directory to compare with)"
               for key in DRIFT_GATES if getattr(g, key) is not None and not g.baseline]
    return errors


def layout_checks(input_cfg: InputConfig) -> list[str]:
    """The run layout needs a corpus and queries; the other layouts take neither."""
    if input_cfg.layout == "run":
        return [f"input.{key}: the run layout needs it ({what})" for key, what in (
            ("corpus", "doc_id -> text: Parquet, BEIR corpus.jsonl or TSV id<TAB>text"),
            ("queries", "query_id -> text: Parquet, BEIR queries.jsonl or TSV id<TAB>text"))
            if not getattr(input_cfg, key)]
    return [f"input.{key}: only the run layout takes it (input.layout is {input_cfg.layout}); "
            "flat and nested inputs carry their texts" for key in ("corpus", "queries", "format")
            if getattr(input_cfg, key)] + (
        [f"input.columns.title: only the run layout takes it (input.layout is {input_cfg.layout})"]
        if input_cfg.columns.title else [])


def instruction_checks(input_cfg: InputConfig, rerankers: list[Any]) -> list[str]:
    """A per-row instruction column needs a model whose family takes instructions."""
    backends = {r.backend for r in rerankers}
    if not input_cfg.columns.instruction or set(backends_that("takes_instruction")) & backends:
        return []
    return [f"input.columns.instruction: only backend(s) {', '.join(backends_that('takes_instruction'))} take a "
            f"task instruction; {', '.join(sorted(backends))} would ignore it"]


def _model_at(model: Any, loc: tuple[Any, ...]) -> Any:
    """The pydantic model class that owns the field at `loc`, or None. List indices are
    stepped over; a discriminated union's backend tag after `reranker` picks its family."""
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        if part == "reranker" and parts and parts[0] in BACKENDS:
            model = BACKENDS[parts.pop(0)].config_class
            continue
        options = [a for a in _flat_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = options[0] if options else field.annotation
    return model


def _flat_args(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [x for a in args for x in ([a] if isinstance(a, type) else _flat_args(a))] if args else [annotation]


def _located(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[Any, str]:
    """(model class owning the field at loc, dotted key as the user wrote it)."""
    # A discriminated union puts the backend tag into loc: ('reranker', 'bi_encoder', 'x').
    shown = [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "reranker" and p in BACKENDS)]
    return _model_at(root, loc[:-1]), ".".join(str(p) for p in shown) or "(top level)"


def _other_family_key(loc: tuple[Any, ...]) -> str | None:
    """For a key under `reranker` that the chosen backend lacks: the backends that have it."""
    if len(loc) < 3 or loc[-3] != "reranker" or loc[-2] not in BACKENDS:
        return None
    owners = sorted(b for b, cls in BACKENDS.items() if loc[-1] in cls.config_class.model_fields)
    return ", ".join(owners) or None


def format_error(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as `key: what is wrong (what is accepted)`."""
    loc = tuple(err["loc"])
    owner, key = _located(loc, root)
    kind = err["type"]
    if kind == "extra_forbidden" and (owners := _other_family_key(loc)):
        return (f"{key}: unknown key for backend {loc[-2]} (only {owners} take it); drop it from the "
                "config when switching backends")
    if kind == "extra_forbidden":
        accepted = ", ".join(owner.model_fields) if owner else "?"
        return f"{key}: unknown key; accepted here: {accepted}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{key}.backend: {unknown_backend_message(err.get('ctx', {}).get('tag'))}"
    if kind == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg} (got {err['input']!r})"


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in nested dicts (`cascade.0.top_n=20` indexes a list); the value is
    parsed as YAML (numbers, lists, null)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key.sub=value, e.g. reranker.dtype=float32")
    parts = key.split(".")
    value = yaml.safe_load(raw) if raw else ""
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:i])} is a list of {len(node)} "
                                  f"item(s); {part!r} is not one of its indices")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def load_yaml(path: str | Path, overrides: list[str] | None, model: type[M],
              cross_checks: Callable[[M], list[str]] = lambda _: []) -> M:
    """Read a YAML config, apply `key.sub=value` overrides, validate as `model`, then run
    `cross_checks`; raise ConfigError listing every problem at once."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read ({e.strerror})") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    errors = []
    for override in overrides or []:
        try:
            apply_override(data, override)
        except ConfigError as e:
            errors.append(str(e))
    cfg = None
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        errors += [format_error(err, model) for err in e.errors(include_url=False)]
    if cfg is not None:
        errors += cross_checks(cfg)
    if len(errors) == 1:
        raise ConfigError(f"config {path}: {errors[0]}")
    if errors:
        listing = "\n  - ".join(errors)
        raise ConfigError(f"config {path}: {len(errors)} error(s):\n  - {listing}")
    assert cfg is not None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a rerank job's YAML config (see load_yaml)."""
    return load_yaml(path, overrides, JobConfig, _cross_checks)
