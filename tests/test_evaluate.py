"""Metrics must equal pytrec_eval (trec_eval) on the bundled Cranfield sample's BM25 run."""

from __future__ import annotations

import fsspec
import pytest
import pytrec_eval

from jobs.errors import InputError
from jobs.evaluate import evaluate, load_qrels, mean, ranked, read_run
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def qrels():
    return load_qrels(str(SAMPLE / "qrels.parquet"))


@pytest.fixture(scope="module")
def bm25_run(qrels):
    fs, _ = fsspec.core.url_to_fs(str(SAMPLE))
    return read_run(fs, sorted(str(p) for p in (SAMPLE / "candidates").glob("*.parquet")), set(qrels), "bm25_score")


def pytrec_reference(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
                     k: int) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query metrics under our names. MRR@k is trec_eval's recip_rank
    on the run cut to its top k (trec_eval has no recip_rank cutoff)."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}", f"recall.{k}", "map"}).evaluate(run)
    top_k = {q: {d: docs[d] for d in ranked(docs)[:k]} for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k)
    return {q: {f"ndcg@{k}": m[f"ndcg_cut_{k}"], f"mrr@{k}": rr[q]["recip_rank"],
                f"recall@{k}": m[f"recall_{k}"], "map": m["map"]} for q, m in full.items()}


@pytest.mark.parametrize("k", [5, 10])
def test_metrics_match_pytrec_eval_per_query(qrels, bm25_run, k: int) -> None:
    ours, ref = evaluate(bm25_run, qrels, k), pytrec_reference(bm25_run, qrels, k)
    assert set(ours) == set(ref) and len(ours) == 20
    for q in ref:
        for metric in (f"ndcg@{k}", f"mrr@{k}", f"recall@{k}", "map"):
            assert ours[q][metric] == pytest.approx(ref[q][metric], abs=1e-6), (q, metric)


def test_graded_relevance_counts_and_ties_follow_trec_eval(qrels) -> None:
    q = next(iter(qrels))
    docs = list(qrels[q])
    run = {q: {d: 1.0 for d in docs}}  # all tied: trec_eval orders by doc id, descending
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    assert evaluate(run, qrels)[q]["ndcg@10"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-9)
    assert max(qrels[q].values()) > 1  # the sample really has graded judgments


def test_mean_and_unjudged_queries(qrels, bm25_run) -> None:
    run = dict(bm25_run) | {"no-such-query": {"d": 1.0}}
    per_query = evaluate(run, qrels)
    assert "no-such-query" not in per_query
    assert mean(per_query)["ndcg@10"] == pytest.approx(sum(v["ndcg@10"] for v in per_query.values()) / 20)


def test_qrels_with_a_missing_column_are_named(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"]}), tmp_path / "q.parquet")
    with pytest.raises(InputError, match=r"missing column\(s\) \['relevance'\]"):
        load_qrels(str(tmp_path / "q.parquet"))


def test_negative_grades_count_as_zero_as_in_trec_eval() -> None:
    qrels = {"q": {"a": -1, "b": 2, "c": 1, "d": -2}}
    run = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map", "recall.10"}).evaluate(run)["q"]
    ours = evaluate(run, qrels)["q"]
    assert ours["ndcg@10"] == pytest.approx(ref["ndcg_cut_10"], abs=1e-9)
    assert ours["map"] == pytest.approx(ref["map"], abs=1e-9)
    assert ours["recall@10"] == pytest.approx(ref["recall_10"], abs=1e-9)


def test_the_cli_evaluates_an_output_directory(tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.evaluate import main

    out = tmp_path / "out"
    out.mkdir()
    rows = sample_rows()
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), out / f"part-{i:05d}.parquet")
    (out / "_SUCCESS").write_text("{}")
    assert main(["--run", str(out), "--qrels", str(SAMPLE / "qrels.parquet")]) == 0
    table = capsys.readouterr().out
    assert "| reranked | 20 |" in table and "| first stage | 20 |" in table
    # Here the "reranked" order is BM25's own, so both rows must show the same numbers.
    reranked, first = (line.split("|")[3:] for line in table.splitlines() if "| 20 |" in line)
    assert reranked == first


def sample_rows() -> list[dict]:
    from tests.conftest import sample_pairs

    return [{"query_id": r["query_id"], "doc_id": r["doc_id"], "rank": r["bm25_rank"],
             "first_stage_rank": r["bm25_rank"]} for r in sample_pairs().to_pylist()]
