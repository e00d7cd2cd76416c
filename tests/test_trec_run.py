"""The TREC run file written from ranked output (jobs.trec_run): pytrec_eval and ir_measures
read it and give exactly the metrics jobs.evaluate computes from the ranked Parquet, with
tied scores and with a cascade's non-monotone score column too."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path

import fsspec
import ir_measures
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval
from ir_measures import AP, RR, R, nDCG

from jobs import trec_run
from jobs.errors import ConfigError, InputError
from jobs.evaluate import evaluate, load_qrels, read_run
from jobs.text_formats import read_run_text
from jobs.trec_run import write_trec
from tests.conftest import SAMPLE, sample_pairs

LOCAL = fsspec.filesystem("file")
METRICS = ("ndcg@10", "mrr@10", "recall@10", "map")


def ranked_table(rows: list[tuple[str, str, float, float]]) -> pa.Table:
    """Ranked output from (query_id, doc_id, order key, score) rows, as the job writes it:
    grouped by query, ranks by the order key descending, ties by doc_id ascending."""
    by_query: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for q, d, key, score in rows:
        by_query[q].append((d, key, score))
    out: dict[str, list] = {"query_id": [], "doc_id": [], "score": [], "rank": []}
    for q, docs in by_query.items():
        for rank, (d, _, score) in enumerate(sorted(docs, key=lambda x: (-x[1], x[0])), 1):
            out["query_id"].append(q)
            out["doc_id"].append(d)
            out["score"].append(score)
            out["rank"].append(rank)
    return pa.table({"query_id": pa.array(out["query_id"], pa.string()), "doc_id": pa.array(out["doc_id"], pa.string()),
                     "score": pa.array(out["score"], pa.float32()), "rank": pa.array(out["rank"], pa.int32())})


def sample_ranking(kind: str) -> pa.Table:
    """The Cranfield sample's BM25 candidates, ranked three ways:
    model    by the float32 BM25 score, which is the score column;
    tied     by a coarse score with many ties (broken by doc_id ascending);
    cascade  the top 10 by BM25 re-ordered by a second stage whose scores (0.1 to 1.0)
             are below BM25's (over 2), which scores the rest: not monotone in rank."""
    pairs = sample_pairs()
    q, d = pairs["query_id"].to_pylist(), pairs["doc_id"].to_pylist()
    bm25 = [float(np.float32(s)) for s in pairs["bm25_score"].to_pylist()]
    if kind == "model":
        return ranked_table(list(zip(q, d, bm25, bm25, strict=True)))
    if kind == "tied":
        coarse = [float(round(s / 4)) for s in bm25]
        return ranked_table(list(zip(q, d, coarse, coarse, strict=True)))
    first = sample_ranking("model").to_pylist()
    rows = []
    for r in first:
        if r["rank"] <= 10:  # stage 2: a different order, in its own scale
            stage2 = float(np.float32((int(r["doc_id"]) * 7919 % 10 + 1) / 10))
            rows.append((r["query_id"], r["doc_id"], 100.0 + stage2, stage2))
        else:
            rows.append((r["query_id"], r["doc_id"], r["score"], r["score"]))
    return ranked_table(rows)


def write_parts(table: pa.Table, directory: Path, cuts: list[int]) -> list[str]:
    """`table` over several part files, cut at the given rows (queries may straddle files)."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, table.num_rows]
    paths = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(table.slice(a, b - a), path, row_group_size=50)
        paths.append(str(path))
    return paths


def job_metrics(parts: list[str], qrels: dict) -> dict[str, dict[str, float]]:
    """What jobs.evaluate reports for the ranked Parquet: the order of the rank column."""
    return evaluate(read_run(LOCAL, parts, set(qrels), "rank"), qrels, 10)


def pytrec_metrics(run_file: Path, qrels: dict) -> dict[str, dict[str, float]]:
    with open(run_file) as f:
        run = pytrec_eval.parse_run(f)
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "map"}).evaluate(run)
    # MRR@10: trec_eval's recip_rank over each query's 10 best by score (scores are distinct).
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {q: {"ndcg@10": m["ndcg_cut_10"], "mrr@10": rr[q]["recip_rank"], "recall@10": m["recall_10"],
                "map": m["map"]} for q, m in full.items()}


def ir_measures_metrics(run_file: Path, qrels: dict) -> dict[str, dict[str, float]]:
    names = {nDCG @ 10: "ndcg@10", RR @ 10: "mrr@10", R @ 10: "recall@10", AP: "map"}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for m in ir_measures.iter_calc(list(names), qrels, ir_measures.read_trec_run(str(run_file))):
        out[m.query_id][names[m.measure]] = m.value
    return dict(out)


def assert_same_metrics(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs) and len(ours) == 20
    for q in ours:
        for metric in METRICS:
            assert theirs[q][metric] == pytest.approx(ours[q][metric], abs=1e-9), (q, metric)


@pytest.fixture(scope="module")
def qrels() -> dict:
    return load_qrels(str(SAMPLE / "qrels.parquet"))


@pytest.mark.parametrize("kind", ["model", "tied", "cascade"])
def test_pytrec_eval_and_ir_measures_read_the_outputs_metrics(tmp_path, monkeypatch, qrels, kind: str) -> None:
    monkeypatch.setattr(trec_run, "BATCH_ROWS", 37)  # queries run on across batches and files
    table = sample_ranking(kind)
    parts = write_parts(table, tmp_path / "out", [250, 401])
    dest = tmp_path / "out" / "_run.trec"
    assert write_trec(LOCAL, parts, str(dest), "batch-rerank") == table.num_rows == 600
    ours = job_metrics(parts, qrels)
    assert_same_metrics(ours, pytrec_metrics(dest, qrels))
    assert_same_metrics(ours, ir_measures_metrics(dest, qrels))


@pytest.mark.parametrize("kind", ["tied", "cascade"])
def test_the_raw_scores_would_give_other_metrics(tmp_path, qrels, kind: str) -> None:
    """The fixtures above matter: written as they are, these scores make trec_eval read
    another order than the output's."""
    table = sample_ranking(kind)
    parts = write_parts(table, tmp_path, [])
    naive = tmp_path / "naive.trec"
    naive.write_text("".join(f"{r['query_id']} Q0 {r['doc_id']} {r['rank']} {float(r['score'])!r} x\n"
                             for r in table.to_pylist()))
    ours, theirs = job_metrics(parts, qrels), pytrec_metrics(naive, qrels)
    assert any(not math.isclose(ours[q][m], theirs[q][m], abs_tol=1e-9) for q in ours for m in METRICS)


def written(tmp_path: Path, table: pa.Table, tag: str = "run") -> list[list[str]]:
    parts = write_parts(table, tmp_path / "parts", [])
    dest = tmp_path / "run.trec"
    n = write_trec(LOCAL, parts, str(dest), tag)
    lines = [line.split(" ") for line in dest.read_text().splitlines()]
    assert n == len(lines) == table.num_rows
    return lines


def test_model_scores_at_full_precision_where_they_fall_else_minus_rank(tmp_path) -> None:
    third = float(np.float32(1 / 3))
    table = ranked_table([
        ("falls", "a", 3, third), ("falls", "b", 2, 0.1), ("falls", "c", 1, -7.25),
        ("tie", "a", 2, 0.5), ("tie", "b", 1, 0.5), ("tie", "c", 0, 0.25),
        ("rises", "a", 2, 0.1), ("rises", "b", 1, 0.9),
        ("single", "z", 1, 1e-30),
    ])
    lines = written(tmp_path, table)
    assert all(len(f) == 6 and f[1] == "Q0" and f[5] == "run" for f in lines)
    by_query = defaultdict(list)
    for q, _, d, rank, score, _ in lines:
        by_query[q].append((d, int(rank), score))
    # Full precision: the float32 value exactly, as Python's repr of the float.
    assert by_query["falls"] == [("a", 1, repr(third)), ("b", 2, repr(float(np.float32(0.1)))), ("c", 3, "-7.25")]
    assert float(by_query["falls"][0][2]) == float(np.float32(1 / 3))
    assert by_query["tie"] == [("a", 1, "-1"), ("b", 2, "-2"), ("c", 3, "-3")]
    assert by_query["rises"] == [("a", 1, "-1"), ("b", 2, "-2")]
    assert by_query["single"] == [("z", 1, repr(float(np.float32(1e-30))))]


def test_null_and_nan_scores_get_rank_derived_scores(tmp_path) -> None:
    table = pa.table({"query_id": ["q", "q", "n", "n"], "doc_id": ["a", "b", "a", "b"],
                      "score": pa.array([None, 0.5, 2.0, float("nan")], pa.float32()),
                      "rank": pa.array([1, 2, 1, 2], pa.int32())})
    assert [f[4] for f in written(tmp_path, table)] == ["-1", "-2", "-1", "-2"]


def test_the_file_reads_back_with_the_outputs_ranks(tmp_path) -> None:
    table = sample_ranking("cascade")
    written(tmp_path, table)
    back = pa.concat_tables(read_run_text(LOCAL, str(tmp_path / "run.trec"), "run.trec", "trec"))
    assert back.select(["query_id", "doc_id", "rank"]).equals(table.select(["query_id", "doc_id", "rank"]))
    for q in set(table["query_id"].to_pylist()):  # scores strictly fall with rank, query by query
        scores = [r["score"] for r in back.to_pylist() if r["query_id"] == q]
        assert all(a > b for a, b in itertools.pairwise(scores))


def test_batches_and_files_do_not_change_the_file(tmp_path, monkeypatch) -> None:
    table = sample_ranking("tied")
    whole = write_parts(table, tmp_path / "one", [])
    write_trec(LOCAL, whole, str(tmp_path / "one.trec"), "t")
    monkeypatch.setattr(trec_run, "BATCH_ROWS", 3)
    split = write_parts(table, tmp_path / "many", [1, 2, 17, 300, 599])
    assert write_trec(LOCAL, split, str(tmp_path / "many.trec"), "t") == 600
    assert (tmp_path / "one.trec").read_bytes() == (tmp_path / "many.trec").read_bytes()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path) -> None:
    parts = write_parts(sample_ranking("model"), tmp_path / "parts", [300])
    dest = tmp_path / "out" / "_run.trec"
    dest.parent.mkdir()
    dest.write_text("previous\n")
    Path(parts[1]).write_bytes(b"not parquet")
    with pytest.raises(pa.ArrowInvalid):
        write_trec(LOCAL, parts, str(dest), "t")
    assert dest.read_text() == "previous\n"
    assert [p.name for p in dest.parent.iterdir()] == ["_run.trec"]
    assert write_trec(LOCAL, parts[:1], str(dest), "t") == 300  # and a good write replaces it
    assert len(dest.read_text().splitlines()) == 300


def test_writes_through_any_fsspec_filesystem(tmp_path) -> None:
    table = sample_ranking("model")
    parts = write_parts(table, tmp_path, [])
    write_trec(LOCAL, parts, str(tmp_path / "local.trec"), "t")
    memory = fsspec.filesystem("memory")
    for p in parts:
        memory.pipe_file(f"/parts/{Path(p).name}", Path(p).read_bytes())
    try:
        assert write_trec(memory, memory.find("/parts"), "/out/_run.trec", "t") == 600
        assert memory.cat_file("/out/_run.trec") == (tmp_path / "local.trec").read_bytes()
    finally:
        memory.rm("/", recursive=True)


def test_ids_and_tags_a_trec_run_cannot_hold(tmp_path) -> None:
    table = ranked_table([("q 1", "a", 1, 1.0)])
    with pytest.raises(InputError, match=r"query_id 'q 1' cannot be written to a TREC run"):
        written(tmp_path, table)
    with pytest.raises(InputError, match=r"doc_id '' cannot be written"):
        written(tmp_path, ranked_table([("q", "", 1, 1.0)]))
    with pytest.raises(ConfigError, match=r"output.trec_tag 'my run'"):
        written(tmp_path, ranked_table([("q", "a", 1, 1.0)]), tag="my run")
    assert not (tmp_path / "run.trec").exists()


def test_rows_out_of_rank_order_are_refused(tmp_path) -> None:
    table = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": pa.array([1.0, 2.0], pa.float32()),
                      "rank": pa.array([2, 1], pa.int32())})
    with pytest.raises(ValueError, match=r"not in rank order: query 'q', rank 1 after rank 2"):
        written(tmp_path, table)
