"""The gates without Ray: config checks, verdicts, the canary file, and the actor's own gates
(NaN scores, canaries checked before the first batch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.canaries import choose, load_canaries
from jobs.cli import run_cli
from jobs.config import load_config
from jobs.errors import ConfigError, GateFailure
from jobs.gates import GateResults, baseline_files, eval_gates, nan_and_truncation
from reranker_actors.actor import NON_FINITE, ScoreActor
from reranker_actors.base import Scores
from tests.conftest import write_config


def base(**gates: object) -> dict:
    return {"input": {"path": "in"}, "reranker": {"backend": "cross_encoder", "model": "m"},
            "output": {"path": "out"}, "gates": gates}


def test_eval_and_drift_gates_need_what_they_compare_with(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path / "c.yaml", base(min_ratio_to_first_stage=0.9, min_ndcg=0.3,
                                                           min_topk_overlap=0.5, max_score_shift=0.2)))
    msg = str(e.value)
    assert "gates.min_ratio_to_first_stage: needs eval.qrels" in msg and "gates.min_ndcg: needs eval.qrels" in msg
    assert "gates.min_ratio_to_first_stage: needs the first stage's ranking" in msg
    assert "gates.min_topk_overlap: needs gates.baseline" in msg
    assert "gates.max_score_shift: needs gates.baseline" in msg
    data = base(min_ratio_to_first_stage=0.9, min_topk_overlap=0.5, baseline="s3://b/ranked/")
    data["eval"] = {"qrels": "q.parquet"}
    data["input"]["columns"] = {"rank": "bm25_rank"}
    cfg = load_config(write_config(tmp_path / "c.yaml", data))
    assert (cfg.gates.mode, cfg.gates.max_nan_share, cfg.gates.canary_tolerance) == ("enforce", 0, 1e-3)
    with pytest.raises(ConfigError, match=r"gates.mode: .*'enforce' or 'warn'"):
        load_config(write_config(tmp_path / "c.yaml", base(mode="strict")))
    with pytest.raises(ConfigError, match=r"gates.max_tied_share: .*less than or equal to 1"):
        load_config(write_config(tmp_path / "c.yaml", base(max_tied_share=2)))


def test_teacher_agreement_needs_two_teachers(tmp_path: Path) -> None:
    from jobs.distill_config import load_config as load_distill

    data = {"input": {"path": "in"}, "output": {"path": "out"}, "gates": {"min_teacher_agreement": 0.3},
            "teachers": [{"name": "a", "reranker": {"backend": "bi_encoder", "model": "m"}}]}
    with pytest.raises(ConfigError, match=r"gates.min_teacher_agreement: needs at least two teachers"):
        load_distill(write_config(tmp_path / "d.yaml", data))
    with pytest.raises(ConfigError, match=r"gates.baseline: unknown key"):
        load_distill(write_config(tmp_path / "d.yaml", {**data, "gates": {"baseline": "x"}}))


def test_verdicts_enforce_refuses_warn_publishes() -> None:
    cfg = load_config.__globals__["GatesConfig"](min_ratio_to_first_stage=0.9, max_truncated_share=0.5)
    for mode, refused in (("enforce", True), ("warn", False)):
        results = GateResults(mode)
        nan_and_truncation(results, cfg, non_finite=0, scored=600, truncated=209)
        eval_gates(results, cfg, {"first stage": {"ndcg@10": 0.4087}, "reranked": {"ndcg@10": 0.1217}}, 10)
        by_figure = {g.figure: g for g in results.gates}
        assert by_figure["ndcg@10 / first stage"].value == pytest.approx(0.1217 / 0.4087)
        assert [g.figure for g in results.failed] == ["ndcg@10 / first stage"]
        assert by_figure["truncated_share"].verdict() == "passed"
        assert by_figure["ndcg@10"].verdict() == "reported"  # (no min_ndcg)
        assert by_figure["nan_share"].verdict() == "passed"  # (max_nan_share is always on)
        assert results.refused is refused
        head = results.lines()[0]
        assert ("nothing published" in head) is refused and ("published anyway" in head) is not refused


def test_a_baseline_must_be_a_published_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gates.baseline .*no _SUCCESS"):
        baseline_files(str(tmp_path))
    (tmp_path / "_SUCCESS").write_text("{}")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-00000.parquet")
    assert baseline_files(str(tmp_path))[1] == [str(tmp_path / "part-00000.parquet")]


def canary_file(path: Path, **columns: object) -> str:
    pq.write_table(pa.table({"query": ["q1", "q2"], "doc": ["d1", "d2"], **columns}), path)
    return str(path)


def test_a_canary_file_is_checked_before_any_work(tmp_path: Path) -> None:
    good = load_canaries(canary_file(tmp_path / "c.parquet", score=[0.5, -1.0]), ["score"], 1e-3)
    assert good.for_column("score")["scores"] == [0.5, -1.0] and good.for_column("stage2_score") is None
    with pytest.raises(ConfigError, match=r"no score column of this job: .*named stage1_score, stage2_score"):
        load_canaries(canary_file(tmp_path / "c.parquet", score=[0.5, 1.0]), ["stage1_score", "stage2_score"], 1e-3)
    with pytest.raises(ConfigError, match=r"column 'score' row 1: the recorded score is null, NaN or infinite"):
        load_canaries(canary_file(tmp_path / "c.parquet", score=[0.5, float("nan")]), ["score"], 1e-3)
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        load_canaries(str(tmp_path / "missing.parquet"), ["score"], 1e-3)


def test_canaries_are_chosen_over_the_whole_score_range() -> None:
    table = pa.table({"query_id": ["q"] * 101, "doc_id": [f"d{i}" for i in range(101)],
                      "score": pa.array(np.random.default_rng(0).permutation(101), pa.float32())})
    assert choose(table, "score", 5)["score"].to_pylist() == [0, 25, 50, 75, 100]


def test_an_actor_whose_canaries_moved_fails_before_its_first_batch(tiny_bert_dir: str) -> None:
    cfg = {"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 64}
    ok = ScoreActor(cfg, expect_gpu=False, threads=1, on_invalid="error")
    truth = ok.reranker.score(["what is lift", "drag"], ["wing text", "boundary layer"]).values.tolist()
    canaries = {"source": "c.parquet", "queries": ["what is lift", "drag"], "docs": ["wing text", "boundary layer"],
                "instructions": None, "scores": truth, "tolerance": 1e-5}
    rows = pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"], "doc": ["b"],
                     "_skip_reason": pa.nulls(1, pa.string())})
    assert ScoreActor(cfg, expect_gpu=False, threads=1, on_invalid="error", canaries=canaries)(rows).num_rows == 1
    moved = canaries | {"scores": [truth[0], truth[1] + 0.01]}
    actor = ScoreActor(cfg, expect_gpu=False, threads=1, on_invalid="error", canaries=moved)
    with pytest.raises(GateFailure, match=r"(?s)1 of 2 canary pair\(s\) in c.parquet .*canary row 1: recorded"):
        actor(rows)
    warned = ScoreActor(cfg, expect_gpu=False, threads=1, on_invalid="error", canaries=moved, gates_warn=True)
    assert warned(rows).num_rows == 1  # (gates.mode warn: logged, and the run goes on)


def nan_actor(tiny_bert_dir: str, max_nan_share: float, bad: int, warn: bool = False) -> ScoreActor:
    a = ScoreActor({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32", "max_length": 64},
                   expect_gpu=False, threads=1, on_invalid="error", max_nan_share=max_nan_share, gates_warn=warn)
    score = a.reranker.score

    def some_nan(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> Scores:
        out = score(queries, docs)
        values = out.values.copy()
        values[:bad] = [np.nan, np.inf][:bad] if bad <= 2 else np.nan
        return Scores(values, out.truncated)

    a.reranker.score = some_nan  # type: ignore[method-assign]
    return a


def test_nan_scores_stop_the_run_unless_a_share_is_allowed(tiny_bert_dir: str) -> None:
    rows = pa.table({"query_id": ["q"] * 6, "query": ["what is lift"] * 6, "doc_id": [f"d{i}" for i in range(6)],
                     "doc": [f"wing {i}" for i in range(6)], "_skip_reason": pa.nulls(6, pa.string())})
    with pytest.raises(GateFailure, match=r"gates.max_nan_share: .*NaN or infinite scores for 2 of 6 pair\(s\)"):
        nan_actor(tiny_bert_dir, 0.0, 2)(rows)
    out = nan_actor(tiny_bert_dir, 0.5, 2)(rows)
    reasons = out["_skip_reason"].to_pylist()
    assert reasons[0] == f"{NON_FINITE} (nan)" and reasons[1] == f"{NON_FINITE} (inf)" and reasons[2:] == [None] * 4
    assert out["score"].null_count == 2
    with pytest.raises(GateFailure, match="more than half of a batch"):
        nan_actor(tiny_bert_dir, 0.5, 4)(rows)
    warned = nan_actor(tiny_bert_dir, 0.0, 4, warn=True)(rows)  # (mode warn: quarantined; the job's gate reports)
    assert warned["score"].null_count == 4 and warned["_skip_reason"].to_pylist()[4:] == [None] * 2


def test_a_gate_failure_exits_3_after_the_summary(capsys: pytest.CaptureFixture) -> None:
    from jobs.lifecycle import Refused

    def refuse(_: object) -> object:
        raise Refused("quality gates refused the run: ...", "batch-rerank finished ...\n  gates     1 of 1 failed")

    assert run_cli("prog", "d", "x.yaml", lambda *_: None, refuse, ["--config", "x.yaml"]) == 3
    out, err = capsys.readouterr()
    assert "gates     1 of 1 failed" in out and err.startswith("batch-rerank: error: quality gates refused")
