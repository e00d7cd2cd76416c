"""Bad input through the whole job on a local Ray: each class gets a clear error or a
quarantine row with its reason, the run report counts it, and nothing is half-written.

(docs/operations.md, "Troubleshooting bad input", lists every class and the test that covers it.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs.config import load_config
from jobs.errors import InputError, find_user_error
from jobs.rerank import run
from tests.conftest import job_config, published, write_config

pytestmark = pytest.mark.usefixtures("ray_local")

BIG = 10_000  # candidates of one query
MEGABYTE_DOC = "turbulent boundary layer heat transfer " * 27_000


def flat(qid: str, n: int, docs: list | None = None, score: list | None = None) -> pa.Table:
    return pa.table({
        "query_id": [qid] * n, "query": [f"query {qid}"] * n, "doc_id": [f"{qid}-d{i}" for i in range(n)],
        "doc": docs or [f"document {i} about wings" for i in range(n)],
        "score": pa.array(score or [float(n - i) for i in range(n)], pa.float64()),
    })


@pytest.mark.slow
def test_bad_rows_are_quarantined_with_reasons_and_counted(tmp_path: Path, tiny_bert_dir: str) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    pq.write_table(flat("big", BIG), in_dir / "big.parquet")  # 10,000 candidates
    pq.write_table(flat("mixed", 4, docs=["fine", MEGABYTE_DOC, "  ", "also fine"],
                        score=[1.0, 2.0, 3.0, float("nan")]), in_dir / "mixed.parquet")
    binary = flat("bytes", 2).set_column(3, "doc", pa.array([b"\xff\xfe not utf-8", b"ok"], pa.binary()))
    pq.write_table(binary, in_dir / "binary.parquet")  # e.g. text stored as bytes, cast on read
    cfg = job_config(tmp_path, in_dir, tiny_bert_dir, input={"columns": {"score": "score"}},
                     actor={"batch_size": 1024})
    path = write_config(tmp_path / "job.yaml", cfg)

    with pytest.raises(Exception) as e:  # default on_invalid: error, naming every bad pair
        run(load_config(path))
    err = find_user_error(e.value)
    assert isinstance(err, InputError) and not published(tmp_path / "out")
    assert "doc is null or empty" in str(err) or "not valid UTF-8" in str(err)

    summary = run(load_config(path, ["input.on_invalid=skip"]))
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine").to_pylist()
    reasons = {q["doc_id"]: q["reason"] for q in quarantine}
    assert reasons == {"mixed-d2": "doc is null or empty", "mixed-d3": "first-stage score is NaN",
                       "bytes-d0": "doc is not valid UTF-8"}
    assert {q["input_file"].rsplit("/", 1)[-1] for q in quarantine} == {"mixed.parquet", "binary.parquet"}
    report = json.loads((tmp_path / "out" / "_run_report.json").read_text())
    assert (report["pairs"], report["skipped"], report["quarantined"]) == (BIG + 6, 3, 3)
    assert report["truncated"] >= 1 and summary.truncated == report["truncated"]  # the 1 MB document

    out = pads.dataset(str(tmp_path / "out")).to_table()
    assert out.num_rows == BIG + 3
    big = out.filter(pa.compute.equal(out["query_id"], "big"))
    assert sorted(big["rank"].to_pylist()) == list(range(1, BIG + 1))
    assert set(out["doc_id"].to_pylist()) >= {"mixed-d1", "bytes-d1"}  # the 1 MB doc is ranked


def test_a_query_without_candidates_is_quarantined_not_lost(tmp_path: Path, tiny_bert_dir: str) -> None:
    item = pa.struct({"doc_id": pa.string(), "doc": pa.string()})
    table = pa.table({
        "query_id": ["q1", "q2", "q3"], "query": ["lift", "drag", "stall"],
        "candidates": pa.array([[{"doc_id": "a", "doc": "wing lift"}, {"doc_id": "b", "doc": "flaps"}], [], None],
                               pa.list_(item)),
    })
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "nested.parquet")
    cfg = job_config(tmp_path, tmp_path / "in", tiny_bert_dir, input={"layout": "nested"})
    summary = run(load_config(write_config(tmp_path / "job.yaml", cfg)))  # default on_invalid: error
    assert (summary.pairs, summary.skipped, summary.rows_out, summary.queries) == (4, 2, 2, 1)
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine").to_pylist()
    assert sorted((q["query_id"], q["doc_id"], q["reason"]) for q in quarantine) == [
        ("q2", None, "query has no candidates"), ("q3", None, "query has no candidates")]
