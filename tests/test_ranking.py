from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.errors import InputError
from jobs.ranking import Ranker


def scored(rows: list[tuple[str, str, float]], **extra: list) -> pa.Table:
    q, d, s = zip(*rows, strict=True)
    return pa.table({"query_id": list(q), "doc_id": list(d), "score": pa.array(s, pa.float32()), **extra})


def ranks(table: pa.Table) -> list[tuple[str, str, int]]:
    return list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), table["rank"].to_pylist(), strict=True))


def test_rank_one_is_the_highest_score() -> None:
    out = Ranker(model="m")(scored([("q", "a", 0.1), ("q", "b", 2.0), ("q", "c", -1.0)]))
    assert ranks(out) == [("q", "b", 1), ("q", "a", 2), ("q", "c", 3)]


def test_ties_are_broken_by_doc_id_ascending_whatever_the_input_order() -> None:
    rows = [("q", "d3", 1.0), ("q", "d1", 1.0), ("q", "d2", 1.0), ("q", "d0", 0.5)]
    for perm in (rows, rows[::-1], rows[1:] + rows[:1]):
        assert ranks(Ranker(model="m")(scored(perm))) == [
            ("q", "d1", 1), ("q", "d2", 2), ("q", "d3", 3), ("q", "d0", 4)
        ]


def test_several_queries_in_one_table_are_ranked_independently() -> None:
    out = Ranker(model="m")(scored([("q2", "x", 1.0), ("q1", "y", 3.0), ("q2", "z", 5.0), ("q1", "w", 4.0)]))
    assert ranks(out) == [("q1", "w", 1), ("q1", "y", 2), ("q2", "z", 1), ("q2", "x", 2)]


def test_top_k_keeps_the_best_k_per_query() -> None:
    rows = [(q, f"d{i}", float(i)) for q in ("a", "b") for i in range(5)]
    out = Ranker(model="m", top_k=2)(scored(rows))
    assert ranks(out) == [("a", "d4", 1), ("a", "d3", 2), ("b", "d4", 1), ("b", "d3", 2)]


def test_output_columns_and_types() -> None:
    table = scored([("q", "a", 1.0)], first_stage_score=[9.5], first_stage_rank=pa.array([3], pa.int32()),
                   lang=["en"])
    out = Ranker(model="org/model", extra_columns=("lang",))(table)
    assert out.column_names == ["query_id", "doc_id", "score", "rank", "first_stage_score",
                                "first_stage_rank", "model", "lang"]
    assert out.schema.field("rank").type == pa.int32() and out.schema.field("score").type == pa.float32()
    assert out.to_pylist()[0] == {"query_id": "q", "doc_id": "a", "score": 1.0, "rank": 1,
                                  "first_stage_score": 9.5, "first_stage_rank": 3, "model": "org/model",
                                  "lang": "en"}


def test_duplicates_are_an_error_naming_them() -> None:
    table = scored([("q", "a", 1.0), ("q", "a", 2.0), ("q", "b", 0.0), ("r", "a", 1.0)])
    with pytest.raises(InputError, match=r"1 extra cop.*\('q', 'a'\).*on_duplicate: dedupe"):
        Ranker(model="m")(table)


def test_dedupe_keeps_the_best_scored_copy() -> None:
    table = scored([("q", "a", 1.0), ("q", "a", 2.0), ("q", "b", 1.5)])
    out = Ranker(model="m", on_duplicate="dedupe")(table)
    assert ranks(out) == [("q", "a", 1), ("q", "b", 2)]
    assert out["score"].to_pylist() == [2.0, 1.5]


def test_stage_ranker_ranks_one_stage_and_keeps_texts_only_for_the_next_stage() -> None:
    from jobs.ranking import StageRanker

    table = pa.table({"query_id": ["q", "q", "q", "p"], "doc_id": ["a", "b", "c", "x"],
                      "query": ["Q"] * 4, "doc": ["A", "B", "C", "X"],
                      "stage1_score": pa.array([0.1, 0.9, 0.5, 0.0], pa.float32())})
    out = StageRanker(stage=1, top_n=2)(table)
    rows = {(r["query_id"], r["doc_id"]): r for r in out.to_pylist()}
    assert {k: r["stage1_rank"] for k, r in rows.items()} == {("q", "b"): 1, ("q", "c"): 2, ("q", "a"): 3,
                                                               ("p", "x"): 1}
    assert {k: r["doc"] for k, r in rows.items()} == {("q", "b"): "B", ("q", "c"): "C", ("q", "a"): None,
                                                      ("p", "x"): "X"}
    with pytest.raises(InputError, match=r"extra cop\(ies\)"):
        StageRanker(stage=1, top_n=2)(pa.concat_tables([table, table.slice(0, 1)]))


def test_cascade_ranker_puts_the_last_stage_first_then_each_earlier_stage() -> None:
    from jobs.ranking import CascadeRanker

    # q: stage 1 scored 5 docs, stage 2 its top 3 (c, d, e), stage 3 the top 2 of those (d, e)
    s1 = [0.1, 0.2, 0.3, 0.4, 0.5]
    s2 = [None, None, 9.0, 7.0, 8.0]
    s3 = [None, None, None, -1.0, -2.0]
    table = pa.table({"query_id": ["q"] * 5, "doc_id": list("abcde"),
                      "stage1_score": pa.array(s1, pa.float32()), "stage1_rank": pa.array([5, 4, 3, 2, 1], pa.int32()),
                      "stage2_score": pa.array(s2, pa.float32()),
                      "stage2_rank": pa.array([None, None, 1, 3, 2], pa.int32()),
                      "stage3_score": pa.array(s3, pa.float32())})
    out = CascadeRanker(models=("m1", "m2", "m3"))(table)
    got = [(r["doc_id"], r["rank"], r["model"], r["score"]) for r in out.to_pylist()]
    assert got == [("d", 1, "m3", -1.0), ("e", 2, "m3", -2.0), ("c", 3, "m2", 9.0),
                   ("b", 4, "m1", pytest.approx(0.2)), ("a", 5, "m1", pytest.approx(0.1))]
    assert out["stage3_rank"].to_pylist() == [1, 2, None, None, None]
    assert out.column_names == ["query_id", "doc_id", "score", "rank", "model", "stage1_score", "stage1_rank",
                                "stage2_score", "stage2_rank", "stage3_score", "stage3_rank"]
    top = CascadeRanker(models=("m1", "m2", "m3"), top_k=2)(table)
    assert top["doc_id"].to_pylist() == ["d", "e"]
