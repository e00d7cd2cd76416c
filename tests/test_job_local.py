"""The whole job on a local Ray: real Ray Data pipeline, tiny random BERT, real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
import torch

from jobs.config import load_config
from jobs.errors import ConfigError, InputError
from jobs.rerank import main, run
from reranker_actors.registry import build_reranker
from tests.conftest import TinyModelBuilds, job_config, published, sample_pairs, write_config, write_shards

pytestmark = pytest.mark.usefixtures("ray_local")


def spread_input(tmp_path: Path) -> tuple[Path, pa.Table]:
    """The sample, reshaped so query '5' is spread over three files and many row groups,
    plus two queries of hand-made rows: Chinese text and exact score ties."""
    table = sample_pairs().rename_columns(["qid", "query", "doc_id", "doc", "bm25_score", "bm25_rank"])
    table = table.append_column("lang", pa.array(["en"] * len(table)))
    extra = pa.table({
        "qid": ["zh"] * 3 + ["tie"] * 3, "query": ["湍流 边界层"] * 3 + ["same"] * 3,
        "doc_id": ["z1", "z2", "z3", "t-b", "t-c", "t-a"],
        "doc": ["边界层的传热实验", "Boundary layer 传热 mixed text", "超音速流动", *["identical"] * 3],
        "bm25_score": [3.0, 2.0, 1.0, 1.0, 1.0, 1.0], "bm25_rank": [1, 2, 3, 1, 2, 3], "lang": ["zh"] * 3 + ["en"] * 3,
    }).cast(table.schema)
    table = pa.concat_tables([extra, table])  # (the ties lead the first file: scored in one batch)
    q5 = pc.equal(table["qid"], "5")
    rest = table.filter(pc.invert(q5))
    five = table.filter(q5)
    third = len(five) // 3
    shards = [
        pa.concat_tables([rest.slice(0, 200), five.slice(0, third)]),
        pa.concat_tables([five.slice(third, third), rest.slice(200, 200)]),
        pa.concat_tables([rest.slice(400), five.slice(2 * third)]),
    ]
    return write_shards(tmp_path / "in", shards, row_group_size=50), table


def reference_scores(model: str, table: pa.Table) -> dict[tuple[str, str], float]:
    reranker = build_reranker({"backend": "cross_encoder", "model": model, "dtype": "float32",
                               "max_length": 128}, torch.device("cpu"))
    scores = reranker.score(table["query"].to_pylist(), table["doc"].to_pylist()).values
    keys = zip(table["qid"].to_pylist(), table["doc_id"].to_pylist(), strict=True)
    return dict(zip(keys, scores.tolist(), strict=True))


def read_output(path: Path) -> pa.Table:
    return pads.dataset(str(path)).to_table()


def check_ranks(out: pa.Table) -> None:
    """Ranks are 1..n per query, in score order, ties by doc_id ascending."""
    by_query: dict[str, list[dict]] = {}
    for row in out.to_pylist():
        by_query.setdefault(row["query_id"], []).append(row)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        keys = [(-r["score"], r["doc_id"]) for r in rows]
        assert keys == sorted(keys)


def test_every_pair_scored_once_ranked_and_passed_through(tmp_path: Path, tiny_bert_dir: str,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the path of a large night: a query spread over three files, and 606 pairs in
    7 rank partitions of 100, gathered by Ray Data's groupby(query_id) shuffle."""
    import jobs.stages

    monkeypatch.setattr(jobs.stages, "ROWS_PER_RANK_PARTITION", 100)
    in_dir, table = spread_input(tmp_path)
    cfg = job_config(tmp_path, in_dir, tiny_bert_dir,
                     input={"columns": {"query_id": "qid", "score": "bm25_score", "rank": "bm25_rank"},
                            "extra_columns": ["lang"]},
                     actor={"batch_size": 40})
    assert main(["--config", str(write_config(tmp_path / "job.yaml", cfg))]) == 0
    summary = capsys.readouterr().out
    assert "queries   22" in summary and "606 read, 606 scored (606 in this run), 0 skipped" in summary

    out = read_output(tmp_path / "out")
    assert out.column_names == ["query_id", "doc_id", "score", "rank", "first_stage_score",
                                "first_stage_rank", "model", "lang"]
    assert out.num_rows == len(table) == 606
    pairs = list(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    expected = reference_scores(tiny_bert_dir, table)
    assert set(pairs) == set(expected)
    got = np.array(out["score"].to_pylist())
    assert np.abs(got - np.array([expected[p] for p in pairs])).max() < 1e-5
    check_ranks(out)
    inputs = {(r["qid"], r["doc_id"]): r for r in table.to_pylist()}
    for row in out.to_pylist():
        src = inputs[(row["query_id"], row["doc_id"])]
        assert (row["first_stage_score"], row["first_stage_rank"], row["lang"]) == (
            src["bm25_score"], src["bm25_rank"], src["lang"])
        assert row["model"] == tiny_bert_dir
    ties = out.filter(pc.equal(out["query_id"], "tie")).sort_by("rank")
    assert ties["doc_id"].to_pylist() == ["t-a", "t-b", "t-c"]
    assert len(set(ties["score"].to_pylist())) == 1
    hidden = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("_"))
    assert hidden == ["_SUCCESS", "_report.html", "_run_report.json", "_run_report.txt"]  # checkpoints removed
    html = (tmp_path / "out" / "_report.html").read_text()
    assert html.count('<figure class="histogram"') == 1 and 'data-total="606"' in html  # rank shift: every pair
    assert "湍流" not in html and "identical" not in html  # ids and numbers, never texts
    report = json.loads((tmp_path / "out" / "_run_report.json").read_text())
    assert (report["pairs"], report["scored_now"], report["rows_out"], report["queries"]) == (606, 606, 606, 22)
    assert report["by_file"] is False  # query 5 spans three files: ranked after a shuffle
    assert [f["rows"] for f in report["input_files"]] == [pq.ParquetFile(f).metadata.num_rows
                                                          for f in sorted(in_dir.glob("*.parquet"))]
    assert report["versions"]["ray"] == ray.__version__ and report["dtype"] == "float32"
    assert report["truncated"] > 0  # max_length 128: many Cranfield abstracts are longer
    assert 0 < report["score_startup_s"] < report["seconds"]["score"]  # actor start, model load
    # pairs / (last batch end - first batch start): above the stage's overall rate, which counts start-up
    assert report["score_steady_pairs_per_s"] > report["pairs_per_s"]["score"] > 0
    text = (tmp_path / "out" / "_run_report.txt").read_text()
    same = [line for line in summary.splitlines() if line.startswith(("  queries", "  pairs", "  output"))]
    assert len(same) == 3 and all(line in text for line in same)  # (times differ: commit ran after)


def test_rerun_into_the_same_output_never_duplicates(tmp_path: Path, tiny_bert_dir: str) -> None:
    in_dir, _ = spread_input(tmp_path)
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir,
                                                          input={"columns": {"query_id": "qid"}}))
    run(load_config(path))
    run(load_config(path, ["rank.top_k=3"]))
    out = read_output(tmp_path / "out")
    assert out.num_rows == 22 * 3
    assert sorted(set(out["rank"].to_pylist())) == [1, 2, 3]
    check_ranks(out)


def test_nested_layout_gives_the_same_scores_as_flat(tmp_path: Path, tiny_bert_dir: str) -> None:
    flat = sample_pairs()
    rows = {}
    for r in flat.to_pylist():
        q = rows.setdefault(r["query_id"], {"query_id": r["query_id"], "query": r["query"], "candidates": []})
        q["candidates"].append({"doc_id": r["doc_id"], "doc": r["doc"], "bm25": r["bm25_score"]})
    nested = pa.Table.from_pylist(list(rows.values()))
    in_dir = write_shards(tmp_path / "in", [nested.slice(0, 7), nested.slice(7)])
    cfg = job_config(tmp_path, in_dir, tiny_bert_dir, input={"layout": "nested", "columns": {"score": "bm25"}})
    summary = run(load_config(write_config(tmp_path / "job.yaml", cfg)))
    assert (summary.pairs, summary.queries, summary.rows_out) == (600, 20, 600)
    assert summary.by_file  # a nested row holds a whole query: ranked file by file, no shuffle
    out = read_output(tmp_path / "out")
    expected = reference_scores(tiny_bert_dir, flat.rename_columns(["qid", *flat.column_names[1:]]))
    got = {(q, d): s for q, d, s in zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(),
                                         out["score"].to_pylist(), strict=True)}
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
    check_ranks(out)


def bad_rows_input(tmp_path: Path) -> Path:
    table = sample_pairs().slice(0, 60)
    docs = table["doc"].to_pylist()
    docs[3], docs[40] = None, "   "
    table = table.set_column(table.column_names.index("doc"), "doc", pa.array(docs))
    return write_shards(tmp_path / "in", [table.slice(0, 30), table.slice(30)])


def test_null_or_empty_text_fails_naming_pairs_and_writes_nothing(tmp_path: Path, tiny_bert_dir: str) -> None:
    in_dir = bad_rows_input(tmp_path)
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir))
    with pytest.raises(Exception) as e:
        run(load_config(path))
    from jobs.errors import find_user_error

    err = find_user_error(e.value)
    assert isinstance(err, InputError)
    assert "doc is null or empty" in str(err) and "shard-" in str(err) and "doc_id=" in str(err)
    assert not published(tmp_path / "out")


def test_skip_drops_and_counts_invalid_pairs(tmp_path: Path, tiny_bert_dir: str) -> None:
    in_dir = bad_rows_input(tmp_path)
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir))
    summary = run(load_config(path, ["input.on_invalid=skip"]))
    assert (summary.pairs, summary.skipped, summary.rows_out) == (60, 2, 58)
    assert read_output(tmp_path / "out").num_rows == 58


def test_duplicates_fail_by_default_and_dedupe_on_request(tmp_path: Path, tiny_bert_dir: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    table = sample_pairs().slice(0, 30)
    in_dir = write_shards(tmp_path / "in", [table, table.slice(0, 2)])
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "batch-rerank: error: found 2 extra cop" in err and "on_duplicate: dedupe" in err
    assert not published(tmp_path / "out")
    summary = run(load_config(path, ["input.on_duplicate=dedupe"]))
    assert summary.rows_out == 30
    out = read_output(tmp_path / "out")
    assert len(set(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True))) == 30


def test_a_pool_that_would_deadlock_two_cpus_is_refused(tmp_path: Path, tiny_bert_dir: str) -> None:
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, tmp_path, tiny_bert_dir))
    write_shards(tmp_path / "in", [sample_pairs().slice(0, 5)])
    with pytest.raises(ConfigError, match=r"pools that run together: 2 x 1.0 = 2 CPUs, which leaves 0 of the "
                                          r"cluster's 2 to the read tasks, each of which needs 1"):
        run(load_config(path, [f"input.path={tmp_path / 'in'}", "actor.pool_size=2"]))
    # (1.5 of 2 CPUs leaves half a CPU: a read task, which asks for one, would wait forever too)
    with pytest.raises(ConfigError, match=r"3 x 0.5 = 1.5 CPUs, which leaves 0.5 of the cluster's 2"):
        run(load_config(path, [f"input.path={tmp_path / 'in'}", "actor.pool_size=3", "actor.num_cpus=0.5"]))
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_load_fails_fast_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    in_dir = write_shards(tmp_path / "in", [sample_pairs().slice(0, 10)])
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, str(tmp_path / "no-model")))
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "config.json").write_text("{}")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"batch-rerank: error: could not load model '{tmp_path / 'no-model'}'" in err
    assert "Traceback" not in err.split("batch-rerank: error:")[-1]
    assert not (tmp_path / "out").exists()


def test_a_gpu_pool_on_a_cluster_without_gpus_times_out_clearly(tmp_path: Path, tiny_bert_dir: str) -> None:
    in_dir = write_shards(tmp_path / "in", [sample_pairs().slice(0, 10)])
    path = write_config(tmp_path / "job.yaml", job_config(tmp_path, in_dir, tiny_bert_dir))
    with pytest.raises(ConfigError, match=r"did not start within actor.start_timeout_s \(5 s\).*num_gpus=1"):
        run(load_config(path, ["actor.num_gpus=1", "actor.start_timeout_s=5"]))
    assert not (tmp_path / "out").exists()


def test_qwen3_config_runs_with_the_documented_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         tiny_models_built: TinyModelBuilds) -> None:
    """configs/qwen3_custom_instruction.yaml on the bundled sample, with the model its header
    says to build (`python -m tests.tiny_models qwen3 <dir>`, run by tiny_models_built)."""
    from tests.conftest import REPO

    model = tiny_models_built.place("qwen3", tmp_path / "tiny-qwen3")
    code = main(["--config", str(REPO / "configs" / "qwen3_custom_instruction.yaml"), f"reranker.model={model}",
                 f"input.path={REPO / 'samples/cranfield/candidates'}", f"output.path={tmp_path / 'out'}",
                 f"eval.qrels={REPO / 'samples/cranfield/qrels.parquet'}", "reranker.dtype=float32"])
    assert code == 0
    summary = capsys.readouterr().out
    assert "600 read, 600 scored" in summary and "(llm_yes_no, dtype float32, padded attention)" in summary
    out = read_output(tmp_path / "out")
    assert out.num_rows == 600 and len(set(out["query_id"].to_pylist())) == 20
    scores = np.array(out["score"].to_pylist())
    assert ((scores > 0) & (scores < 1)).all()
    check_ranks(out)


def test_per_row_instructions_reach_the_llm(tmp_path: Path, tiny_qwen3_dir: str) -> None:
    table = sample_pairs().filter(pc.is_in(sample_pairs()["query_id"], pa.array(["1", "2"])))
    table = table.slice(0, 12)
    task = [None, "", "Rank by relevance to wind tunnels", "判断文档是否相关"] * 3
    table = table.append_column("task", pa.array(task, pa.string()))
    in_dir = write_shards(tmp_path / "in", [table])
    cfg = job_config(tmp_path, in_dir, tiny_qwen3_dir, input={"columns": {"instruction": "task"}})
    cfg["reranker"] = {"backend": "llm_yes_no", "model": tiny_qwen3_dir, "dtype": "float32", "max_length": 512}
    run(load_config(write_config(tmp_path / "job.yaml", cfg)))
    out = read_output(tmp_path / "out")
    got = dict(zip(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True), out["score"].to_pylist(),
                   strict=True))
    reranker = build_reranker(cfg["reranker"], torch.device("cpu"))
    expected = reranker.score(table["query"].to_pylist(), table["doc"].to_pylist(), task).values
    keys = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    assert np.abs(np.array([got[k] for k in keys]) - expected).max() < 1e-5
    default = reranker.score(table["query"].to_pylist(), table["doc"].to_pylist()).values
    assert np.abs(np.array([got[k] for k in keys]) - default)[2::4].min() > 1e-6  # custom ones differ
