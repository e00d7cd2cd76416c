from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobs.config import load_config
from jobs.errors import ConfigError
from reranker_actors.registry import BACKENDS, build_reranker
from tests.conftest import REPO, sample_pairs, write_config

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
CONTRACT_KEYS = {
    "input.path": "/data/in", "output.path": "s3://bucket/out", "reranker.backend": "bi_encoder",
    "reranker.model": "org/model", "reranker.dtype": "bf16", "reranker.max_length": "256",
}


def base(**extra: object) -> dict:
    data = {"input": {"path": "in"}, "reranker": {"backend": "cross_encoder", "model": "m"},
            "output": {"path": "out"}}
    data.update(extra)
    return data


def test_configs_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert {"demo.yaml", "bge_m3_index_refresh_gpu.yaml", "msmarco_minilm_cpu.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_shows_its_submit_command(path: Path) -> None:
    """Each config loads with the job its header's command runs."""
    from jobs import distill_config

    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    job = re.search(r"python -m (jobs\.\w+) --config configs/" + re.escape(path.name), header)
    assert "ray job submit" in header and job, header
    if job.group(1) == "jobs.distill_labels":
        cfg = distill_config.load_config(path)
        assert all(t.reranker.model for t in cfg.teachers) and cfg.output.path
    else:
        assert job.group(1) == "jobs.rerank"
        cfg = load_config(path)
        assert cfg.reranker.model and cfg.output.path


def test_contract_keys_override_from_the_command_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    cfg = load_config(path, [f"{k}={v}" for k, v in CONTRACT_KEYS.items()])
    assert cfg.input.path == "/data/in" and cfg.output.path == "s3://bucket/out"
    assert cfg.reranker.backend == "bi_encoder" and cfg.reranker.model == "org/model"
    assert cfg.reranker.dtype == "bfloat16" and cfg.reranker.max_length == 256


def test_override_values_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    cfg = load_config(path, ["rank.top_k=5", "input.path=[a.parquet, b.parquet]",
                             "actor.pool_size={min: 1, max: 3}", "reranker.revision=null"])
    assert cfg.rank.top_k == 5
    assert cfg.input.path == ["a.parquet", "b.parquet"]
    assert (cfg.actor.pool_size.min, cfg.actor.pool_size.max) == (1, 3)
    assert cfg.reranker.revision is None


def test_all_errors_are_reported_at_once_with_keys_named(tmp_path: Path) -> None:
    data = base(actor={"batch_size": 0, "gpus": 1})
    data["reranker"]["dtyp"] = "fp16"
    data["input"]["colums"] = {}
    path = write_config(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_config(path, ["rank.topk=3"])
    msg = str(e.value)
    assert "5 error(s)" in msg
    for key in ("reranker.dtyp", "input.colums", "actor.gpus", "actor.batch_size", "rank.topk"):
        assert key in msg
    assert "accepted here: " in msg and "dtype" in msg  # says what is accepted


def test_unknown_backend_lists_the_available_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match="unknown backend 'qwen'; available: bi_encoder, cross_encoder"):
        load_config(path, ["reranker.backend=qwen"])


@pytest.mark.parametrize(("given", "expected"), [
    ("fp32", "float32"), ("bf16", "bfloat16"), ("FP16", "float16"), ("float32", "float32"), ("auto", "auto"),
])
def test_dtype_accepts_torch_names_and_aliases(tmp_path: Path, given: str, expected: str) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    cfg = load_config(path, [f"reranker.dtype={given}", "actor.num_gpus=1"])
    assert cfg.reranker.dtype == expected


def test_unknown_dtype_lists_accepted_names(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match=r"reranker.dtype: unknown dtype 'int8'; accepted: auto, float32"):
        load_config(path, ["reranker.dtype=int8"])


def test_fp16_without_a_gpu_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match=r"float16 runs on CUDA only, but actor.num_gpus is 0"):
        load_config(path, ["reranker.dtype=fp16"])


def test_pool_size_fixed_or_min_max(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    fixed = load_config(path, ["actor.pool_size=3", "actor.num_gpus=0.25"])
    assert (fixed.actor.pool_size.min, fixed.actor.pool_size.max) == (3, 3)
    assert fixed.actor.num_gpus == 0.25
    with pytest.raises(ConfigError, match=r"actor.pool_size: min 4 > max 2"):
        load_config(path, ["actor.pool_size={min: 4, max: 2}"])


def test_family_options_belong_to_their_family(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    assert load_config(path, ["reranker.backend=bi_encoder", "reranker.pooling=cls"]).reranker.pooling == "cls"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["reranker.pooling=cls"])
    assert str(e.value) == (f"config {path}: reranker.pooling: unknown key for backend cross_encoder (only "
                            "bi_encoder take it); drop it from the config when switching backends")
    assert load_config(path, ["reranker.backend=llm_yes_no", "reranker.compile=true"]).reranker.compile


def test_compile_is_refused_for_a_family_that_runs_uncompiled(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from reranker_actors.llm_yes_no import LLMYesNoReranker

    monkeypatch.setattr(LLMYesNoReranker, "supports_compile", False)
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match=r"reranker.compile: backend llm_yes_no runs uncompiled; drop the key"):
        load_config(path, ["reranker.backend=llm_yes_no", "reranker.compile=true"])


def test_query_cap_defaults_to_three_quarters(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    assert load_config(path, ["reranker.max_length=512"]).reranker.query_cap == 384
    with pytest.raises(ConfigError, match=r"query_max_length .* must be below max_length"):
        load_config(path, ["reranker.max_length=64", "reranker.query_max_length=64"])


@pytest.mark.parametrize("name", ["rank", "doc", "query", "_skip_reason", "path"])
def test_extra_columns_may_not_shadow_columns_the_job_uses(tmp_path: Path, name: str) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match=f"'{name}' collides with a column the job uses"):
        load_config(path, [f"input.extra_columns=[{name}]"])


def test_instruction_column_needs_an_llm_backend(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base())
    with pytest.raises(ConfigError, match=r"only backend\(s\) llm_yes_no take a task instruction"):
        load_config(path, ["input.columns.instruction=task"])


def test_bad_yaml_and_bad_override_syntax(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"expected key.sub=value"):
        load_config(write_config(tmp_path / "c.yaml", base()), ["reranker.dtype"])


def test_yaml_is_read_with_a_safe_loader(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_cascade_stages_are_checked_and_overridden_by_index(tmp_path: Path) -> None:
    stage = {"top_n": 20, "reranker": {"backend": "cross_encoder", "model": "big"}}
    path = write_config(tmp_path / "c.yaml", base(cascade=[stage, dict(stage, top_n=5)]))
    cfg = load_config(path, ["cascade.0.top_n=30", "cascade.1.reranker.max_length=256"])
    assert [s.top_n for s in cfg.cascade] == [30, 5] and cfg.cascade[1].reranker.max_length == 256
    assert [key for key, _ in cfg.stages()] == ["", "cascade.0.", "cascade.1."]
    with pytest.raises(ConfigError) as e:
        load_config(path, ["cascade.0.bogus=1", "cascade.1.reranker.pooling=cls", "cascade.2.top_n=1",
                           "cascade.1.top_n=40", "cascade.0.actor.num_gpus=0", "cascade.0.reranker.dtype=fp16"])
    msg = str(e.value)
    assert "cascade.0.bogus: unknown key; accepted here: top_n, reranker, actor" in msg
    assert "cascade.1.reranker.pooling: unknown key for backend cross_encoder (only bi_encoder take it)" in msg
    assert "'cascade.2.top_n=1': cascade is a list of 2 item(s); '2' is not one of its indices" in msg


def test_a_later_stage_cannot_see_more_than_the_one_before(tmp_path: Path) -> None:
    stage = {"top_n": 20, "reranker": {"backend": "cross_encoder", "model": "big"},
             "actor": {"num_gpus": 0}}
    path = write_config(tmp_path / "c.yaml", base(cascade=[stage, dict(stage, top_n=40)]))
    with pytest.raises(ConfigError, match=r"cascade.1.top_n \(40\) must not exceed cascade.0.top_n \(20\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"cascade.0.reranker.dtype: float16 runs on CUDA only, but "
                                          r"cascade.0.actor.num_gpus is 0"):
        load_config(path, ["cascade.1.top_n=10", "cascade.0.reranker.dtype=fp16"])


def test_distillation_teachers_record_raw_scores_under_unique_names(tmp_path: Path) -> None:
    from jobs.distill_config import load_config as load_distill

    teacher = {"name": "big", "reranker": {"backend": "llm_yes_no", "model": "q"}}
    data = {"input": {"path": "in"}, "output": {"path": "out"},
            "teachers": [teacher, {"name": "small", "reranker": {"backend": "bi_encoder", "model": "m"}}]}
    cfg = load_distill(write_config(tmp_path / "d.yaml", data))
    assert [t.reranker.activation for t in cfg.teachers] == ["raw", "raw"]  # (llm_yes_no's default is sigmoid)
    assert [(t.column, t.kind) for t in cfg.teacher_specs()] == [("score_big", "logit"), ("score_small", "cosine")]
    with pytest.raises(ConfigError) as e:
        load_distill(write_config(tmp_path / "d.yaml", data), [
            "teachers.0.reranker.activation=sigmoid", "teachers.1.name=big", "labels.negatives_rank_window=[5,2]",
            "teachers.1.weight=-1", "formats.cross_encoder=maybe"])
    msg = str(e.value)
    assert "teacher 'big': reranker.activation must be raw" in msg
    assert "labels.negatives_rank_window" in msg and "teachers.1.weight" in msg and "formats.cross_encoder" in msg
    with pytest.raises(ConfigError, match="must be unique"):
        load_distill(write_config(tmp_path / "d.yaml", data), ["teachers.1.name=big"])


RERANK_CONFIGS = [p for p in SHIPPED if "python -m jobs.rerank" in p.read_text()]
# The shipped settings another backend cannot take (the rest of the 21 combinations run).
DROPS = {("qwen3_custom_instruction.yaml", "cross_encoder"): "reranker.instruction",
         ("qwen3_custom_instruction.yaml", "bi_encoder"): "reranker.instruction"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("path", RERANK_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_accepts_the_contract_overrides(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, path: Path, backend: str
) -> None:
    """`reranker.backend=<any> reranker.model=<dir>` on a shipped config either gives a
    config that scores pairs, or fails with one line that names the key to drop."""
    import numpy as np
    import torch

    model = request.getfixturevalue({"cross_encoder": "tiny_bert_dir", "bi_encoder": "minilm_dir",
                                     "llm_yes_no": "tiny_qwen3_dir"}[backend])
    drop = DROPS.get((path.name, backend))
    if drop:
        with pytest.raises(ConfigError) as e:
            load_config(path, [f"reranker.backend={backend}", f"reranker.model={model}"])
        assert "\n" not in str(e.value) and re.search(rf"{drop}: .*drop", str(e.value)), str(e.value)
        return
    cfg = load_config(path, [f"reranker.backend={backend}", f"reranker.model={model}"])
    compiled: list[object] = []
    monkeypatch.setattr(torch, "compile", lambda m, **_: compiled.append(m) or m)  # (compiling is tested apart)
    reranker = build_reranker(cfg.reranker, torch.device("cpu"))
    assert bool(compiled) == cfg.reranker.compile
    pairs = sample_pairs().slice(0, 3)
    scores = reranker.score(pairs["query"].to_pylist(), pairs["doc"].to_pylist()).values
    assert scores.shape == (3,) and np.isfinite(scores).all()


def _keys_at_default(raw: dict, model: BaseModel, prefix: str = "") -> list[str]:
    """Keys of a YAML section whose value is what the config would have without them."""
    found = []
    for key, value in raw.items():
        current = getattr(model, key)
        if isinstance(current, BaseModel) and isinstance(value, dict):
            found += _keys_at_default(value, current, f"{prefix}{key}.")
        elif isinstance(current, list) and isinstance(value, list):
            found += [k for i, (v, c) in enumerate(zip(value, current, strict=True)) if isinstance(c, BaseModel)
                      for k in _keys_at_default(v, c, f"{prefix}{key}.{i}.")]
        elif key != "backend" and current == type(model).model_fields[key].get_default(call_default_factory=True):
            found.append(prefix + key)
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_no_shipped_config_sets_a_key_to_its_default(path: Path) -> None:
    import yaml

    from jobs import distill_config

    loader = distill_config.load_config if "jobs.distill_labels" in path.read_text() else load_config
    assert _keys_at_default(yaml.safe_load(path.read_text()), loader(path)) == []
