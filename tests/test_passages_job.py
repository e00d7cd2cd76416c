"""`passages:` in the jobs: validation, the ranked output's passage columns on a real local
Ray, distillation teachers, and a driver killed mid-run (slow tier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from jobs import distill_labels
from jobs.config import load_config
from jobs.errors import ConfigError
from jobs.rerank import run
from reranker_actors.registry import build_reranker
from tests.conftest import SAMPLE, job_config, published, sample_pairs, write_config
from tests.durability import kill_after_batches
from tests.ray_head import RayHead, driver, finish
from tests.run_layout import by_pair, report

PASSAGES = {"length": 24, "stride": 12, "max_per_doc": 6}


def config(tmp_path: Path, model: str, name: str = "out", **sections: dict) -> Path:
    cfg = job_config(tmp_path, SAMPLE / "candidates", model, output={"path": str(tmp_path / name)},
                     reranker={"max_length": 64}, input={"columns": {"score": "bm25_score", "rank": "bm25_rank"}})
    cfg["passages"] = PASSAGES
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return write_config(tmp_path / f"{name}.yaml", cfg)


def test_passages_reach_every_model_and_what_does_not_fit_is_refused(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, "m"))
    assert cfg.reranker.passages is not None and cfg.reranker.passages.step == 12
    with pytest.raises(ConfigError, match=r"reranker.passages: set `passages:` at the top level"):
        load_config(config(tmp_path, "m", reranker={"passages": {"length": 8}}))
    with pytest.raises(ConfigError, match=r"(?s)passages.length \(64\) must be below reranker.max_length \(64\).*"
                                         r"input.extra_columns: 'best_passage' collides with a passage column"):
        load_config(config(tmp_path, "m", passages={"length": 64}, input={"extra_columns": ["best_passage"]}))
    stage = {"top_n": 5, "reranker": {"backend": "cross_encoder", "model": "m", "max_length": 128}}
    cascade = load_config(config(tmp_path, "m"), [f"cascade=[{stage}]"])
    assert cascade.cascade[0].reranker.passages == cascade.passages
    with pytest.raises(ConfigError, match=r"passages.stride"):
        load_config(config(tmp_path, "m", passages={"stride": 0}))


def expected(model: str, pairs: list[dict]) -> object:
    """The engine's passage scores of `pairs`, in this process (the reference tests check it)."""
    reranker = build_reranker({"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 64,
                               "passages": PASSAGES}, torch.device("cpu"))
    return reranker.score([p["query"] for p in pairs], [p["doc"] for p in pairs])


@pytest.mark.usefixtures("ray_local")
def test_the_ranked_output_has_the_aggregate_and_names_the_best_passage(tmp_path: Path, tiny_bert_dir: str) -> None:
    summary = run(load_config(config(tmp_path, tiny_bert_dir)))
    pairs = sample_pairs().to_pylist()
    want = expected(tiny_bert_dir, pairs)
    out = by_pair(tmp_path / "out")
    got = [out[(p["query_id"], p["doc_id"])] for p in pairs]
    # (measured: up to 2.8e-5 apart: other batch compositions and the actor's one thread)
    np.testing.assert_allclose([g["score"] for g in got], want.values, atol=5e-5)
    assert [g["passages"] for g in got] == want.passages.tolist()
    assert [g["best_passage"] for g in got] == want.best.tolist()
    assert [(g["best_passage_chars"]["start"], g["best_passage_chars"]["end"]) for g in got] == [
        tuple(c) for c in want.chars.tolist()]
    assert summary.truncated == int(want.truncated.sum()) > 0  # (documents past max_per_doc)
    assert (summary.passages, summary.passages_capped) == (int(want.passages.sum()), int(want.capped.sum()))
    assert "document(s) past passages.max_per_doc" in summary.render()
    assert 1 < np.mean(want.passages) < PASSAGES["max_per_doc"]
    schema = pq.read_schema(next((tmp_path / "out").glob("part-*.parquet")))
    assert str(schema.field("best_passage_chars").type) == "struct<start: int32, end: int32>"


@pytest.mark.slow  # (the fast tier's budget: make test within 12 minutes)
@pytest.mark.usefixtures("ray_local")
def test_distillation_teachers_aggregate_passages(tmp_path: Path, tiny_bert_dir: str) -> None:
    cfg = {"input": {"path": str(SAMPLE / "candidates")}, "output": {"path": str(tmp_path / "labels")},
           "passages": PASSAGES,
           "teachers": [{"name": "bert", "reranker": {"backend": "cross_encoder", "model": tiny_bert_dir,
                                                      "dtype": "float32", "max_length": 64}}]}
    assert distill_labels.main(["--config", str(write_config(tmp_path / "labels.yaml", cfg))]) == 0
    pairs = sample_pairs().to_pylist()
    want = dict(zip(((p["query_id"], p["doc_id"]) for p in pairs), expected(tiny_bert_dir, pairs).values, strict=True))
    rows = pq.read_table(tmp_path / "labels").to_pylist()
    got = {(r["query_id"], c["doc_id"]): c["bert"] for r in rows for c in r["candidates"]}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) < 5e-5


@pytest.mark.slow
def test_a_driver_killed_mid_run_resumes_to_the_uninterrupted_output(ray_head: RayHead, tmp_path: Path,
                                                                     tiny_bert_dir: str) -> None:
    whole = config(tmp_path, tiny_bert_dir, "whole")
    code, out = finish(driver(ray_head, whole))
    assert code == 0, out[-4000:]
    killed = config(tmp_path, tiny_bert_dir, "killed")
    killed = write_config(killed, {**yaml.safe_load(killed.read_text()), "actor": {"batch_size": 50}})
    log = tmp_path / "batches"
    kill_after_batches(driver(ray_head, killed, {"sleep_per_batch": 0.5, "batch_log": str(log)}), log, 5)  # (of 12)
    assert not published(tmp_path / "killed")
    code, out = finish(driver(ray_head, killed))
    assert code == 0, out[-4000:]
    assert report(tmp_path / "killed")["resumed_pairs"] >= 250
    a, b = by_pair(tmp_path / "killed"), by_pair(tmp_path / "whole")
    assert a.keys() == b.keys()
    for key, row in a.items():  # (other batch compositions: scores within fp32 noise)
        assert row["score"] == pytest.approx(b[key]["score"], abs=5e-5)
        assert (row["rank"], row["passages"], row["best_passage"], row["best_passage_chars"]) == (
            b[key]["rank"], b[key]["passages"], b[key]["best_passage"], b[key]["best_passage_chars"])


PASSAGE_FIELDS = ("score", "passages", "best_passage", "best_passage_chars")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_score_cache_keeps_the_passage_columns(tmp_path: Path, tiny_bert_dir: str) -> None:
    cache = [f"cache.path={tmp_path / 'cache'}"]
    first = run(load_config(config(tmp_path, tiny_bert_dir, "night1"), cache))
    assert first.scored_now == 600
    second = run(load_config(config(tmp_path, tiny_bert_dir, "night2"), cache))
    assert (second.cached, second.scored_now) == (600, 0)
    a, b = by_pair(tmp_path / "night1"), by_pair(tmp_path / "night2")
    assert a.keys() == b.keys() and all(
        [a[k][f] for f in PASSAGE_FIELDS] == [b[k][f] for f in PASSAGE_FIELDS] for k in a)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_cascade_scores_passages_in_every_stage_and_keeps_the_final_stages(tmp_path: Path, tiny_bert_dir: str,
                                                                              tiny_xlmr_dir: str) -> None:
    stage = {"top_n": 5, "reranker": {"backend": "cross_encoder", "model": tiny_xlmr_dir, "dtype": "float32",
                                      "max_length": 64}, "actor": {"num_cpus": 0.5}}
    run(load_config(config(tmp_path, tiny_bert_dir), [f"cascade=[{stage}]", "actor.num_cpus=0.5"]))
    out = by_pair(tmp_path / "out")
    pairs = sample_pairs().to_pylist()
    first, second = expected(tiny_bert_dir, pairs), expected(tiny_xlmr_dir, pairs)
    deep = 0
    for i, p in enumerate(pairs):
        row = out[(p["query_id"], p["doc_id"])]
        want = second if row["stage2_score"] is not None else first
        deep += row["stage2_score"] is not None
        assert row["score"] == pytest.approx(float(want.values[i]), abs=5e-5)
        assert (row["passages"], row["best_passage"]) == (want.passages[i], want.best[i])
    assert deep == 100  # (20 queries x top 5)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_passages_title_is_read_from_the_input_and_prepended_but_not_output(tmp_path: Path, tiny_bert_dir: str) -> None:
    import pyarrow as pa

    pairs = sample_pairs()
    headlines = [f"Cranfield {d}" for d in pairs["doc_id"].to_pylist()]
    (tmp_path / "in").mkdir()
    pq.write_table(pairs.append_column("headline", pa.array(headlines)), tmp_path / "in" / "pairs.parquet")
    path = config(tmp_path, tiny_bert_dir, passages={"title": "headline"})
    cfg = yaml.safe_load(path.read_text())
    cfg["input"]["path"] = str(tmp_path / "in")
    run(load_config(write_config(path, cfg)))
    reranker = build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32",
                               "max_length": 64, "passages": PASSAGES | {"title": "headline"}}, torch.device("cpu"))
    rows = pairs.to_pylist()
    want = reranker.score([p["query"] for p in rows], [p["doc"] for p in rows], None, headlines)
    plain = expected(tiny_bert_dir, rows)
    out = by_pair(tmp_path / "out")
    got = np.array([out[(p["query_id"], p["doc_id"])]["score"] for p in rows])
    np.testing.assert_allclose(got, want.values, atol=5e-5)
    assert np.abs(got - plain.values).max() > 1e-3  # (the title changed the scores)
    assert "headline" not in pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).names
    with pytest.raises(ConfigError, match=r"passages.title: the run layout takes the corpus's title either"):
        load_config(path, ["input.layout=run", "input.corpus=c.jsonl", "input.queries=q.jsonl",
                           "input.columns.title=headline"])
    # Canaries recorded from this output carry the titles, and a rerun with them passes its gate.
    from jobs import canaries

    recorded = tmp_path / "canaries.parquet"
    assert canaries.main(["--config", str(path), "--out", str(recorded), "--pairs", "8"]) == 0
    assert pq.read_table(recorded)["title"].to_pylist()[0].startswith("Cranfield ")
    summary = run(load_config(path, [f"gates.canaries={recorded}", "gates.canary_tolerance=1e-4"]))
    assert summary.gates["refused"] is False


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_run_layout_takes_passages_title_from_a_beir_corpus_as_the_flat_layout_from_a_column(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    import json

    import pyarrow as pa

    from tests.run_layout import RUN_SAMPLE, run_input

    corpus = {r["_id"]: r for r in map(json.loads, (RUN_SAMPLE / "corpus.jsonl").read_text().splitlines())}
    queries = {r["_id"]: r["text"] for r in map(json.loads, (RUN_SAMPLE / "queries.jsonl").read_text().splitlines())}
    run_lines = [line.split() for line in (RUN_SAMPLE / "run.trec").read_text().splitlines()]
    qids, dids = [line[0] for line in run_lines], [line[2] for line in run_lines]
    flat = pa.table({"query_id": qids, "query": [queries[q] for q in qids], "doc_id": dids,
                     "doc": [corpus[d]["text"] for d in dids], "headline": [corpus[d]["title"] for d in dids]})
    (tmp_path / "flat-in").mkdir()
    pq.write_table(flat, tmp_path / "flat-in" / "pairs.parquet")
    for name, section, title in (("flat", {"path": str(tmp_path / "flat-in")}, "headline"),
                                 ("run", run_input(tmp_path, "trec"), "title")):
        cfg = yaml.safe_load(config(tmp_path, tiny_bert_dir, name, passages={"title": title}).read_text())
        cfg["input"] = section | {"on_invalid": "skip"}  # (a few Cranfield titles fill a 24-token window)
        skipped = run(load_config(write_config(tmp_path / f"{name}.yaml", cfg))).skipped
    a, b = by_pair(tmp_path / "run"), by_pair(tmp_path / "flat")
    assert a.keys() == b.keys() and len(a) == 600 - skipped and skipped > 0
    assert max(abs(a[k]["score"] - b[k]["score"]) for k in a) < 5e-5
    assert all((a[k]["passages"], a[k]["best_passage"]) == (b[k]["passages"], b[k]["best_passage"]) for k in a)
