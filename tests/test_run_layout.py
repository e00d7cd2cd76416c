"""The run layout: runs of ids (Parquet, TREC, MS MARCO) joined on the cluster with a corpus
and queries (Parquet, BEIR JSONL, TSV), giving the flat layout's output; its bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.config import load_config
from jobs.errors import ConfigError, InputError, find_user_error
from jobs.evaluate import evaluate, load_qrels, mean
from jobs.inputs import discover
from jobs.normalize import TextCheck
from jobs.rerank import main, run
from jobs.text_join import SIDE, SOURCE, join_partition
from tests.conftest import KEY_ID, REPO, SECRET, job_config, published, s3, write_config
from tests.durability import kill_after_batches
from tests.ray_head import BIN, RayHead, driver, finish
from tests.run_layout import RUN_SAMPLE, assert_same_output, by_pair, flat_input, report, run_input

FAMILIES = {"cross_encoder": ("tiny_bert_dir", 128), "bi_encoder": ("minilm_dir", 128),
            "llm_yes_no": ("tiny_qwen3_dir", 512)}


def family_config(tmp_path: Path, name: str, model: str, backend: str, max_length: int,
                  input_section: dict[str, Any]) -> Path:
    cfg = job_config(tmp_path, "x", model, output={"path": str(tmp_path / name)})
    cfg["input"] = input_section
    cfg["reranker"] = {"backend": backend, "model": model, "dtype": "float32", "max_length": max_length}
    return write_config(tmp_path / f"{name}.yaml", cfg)


# --- unit: joins, checks and discovery ---------------------------------------------------------------------------

def block(pairs: list[tuple[str, str]], texts: list[tuple[str, str, str]], key: str, text: str) -> pa.Table:
    """One hash partition of a join: pairs (query_id, doc_id), texts (id, text, where)."""
    ids = pa.table({"query_id": [q for q, _ in pairs], "doc_id": [d for _, d in pairs],
                    "_skip_reason": pa.nulls(len(pairs), pa.string()), SIDE: pa.array([0] * len(pairs), pa.int8())})
    rows = pa.table({key: [i for i, _, _ in texts], text: [t for _, t, _ in texts], SOURCE: [w for _, _, w in texts],
                     SIDE: pa.array([1] * len(texts), pa.int8())})
    return pa.concat_tables([ids, rows], promote_options="default")


def test_a_partition_joins_each_pair_to_its_text_and_marks_the_missing() -> None:
    part = block([("q1", "d1"), ("q2", "d1"), ("q1", "d9")], [("d1", "one", "c.jsonl line 1")], "doc_id", "doc")
    out = join_partition(part, "doc_id", "doc", "input.corpus")
    assert out.select(["query_id", "doc_id", "doc", "_skip_reason"]).to_pylist() == [
        {"query_id": "q1", "doc_id": "d1", "doc": "one", "_skip_reason": None},
        {"query_id": "q2", "doc_id": "d1", "doc": "one", "_skip_reason": None},
        {"query_id": "q1", "doc_id": "d9", "doc": None, "_skip_reason": "doc_id not in input.corpus"}]
    assert SIDE not in out.column_names and SOURCE not in out.column_names


def test_an_id_twice_with_different_texts_names_both_places_and_a_word_for_word_copy_is_one() -> None:
    texts = [("d1", "one", "a.jsonl line 3"), ("d1", "one", "b.jsonl line 9")]
    out = join_partition(block([("q", "d1")], texts, "doc_id", "doc"), "doc_id", "doc", "input.corpus")
    assert out["doc"].to_pylist() == ["one"]
    texts.append(("d1", "uno", "b.jsonl line 12"))
    with pytest.raises(InputError, match=r"input.corpus: doc_id 'd1' appears twice with different texts, "
                                         r"at a.jsonl line 3 and at b.jsonl line 12"):
        join_partition(block([("q", "d1")], texts, "doc_id", "doc"), "doc_id", "doc", "input.corpus")
    queries = [("q", "what", "q.tsv line 1"), ("q", "what", "q.tsv line 2")]
    with pytest.raises(InputError, match=r"input.queries: query_id 'q' appears twice, at q.tsv line 1 and at q.tsv"):
        join_partition(block([("q", "d1")], queries, "query_id", "query"), "query_id", "query", "input.queries")


def test_invalid_pairs_are_listed_with_their_file_line_and_ids() -> None:
    table = pa.table({"query_id": ["q1", "q2"], "doc_id": ["d1", "d7"], "query": ["a", "b"], "doc": ["x", None],
                      "_skip_reason": [None, "doc_id not in input.corpus"], "path": ["runs/r.trec"] * 2,
                      "_line": pa.array([4, 5], pa.int64())})
    with pytest.raises(InputError, match=r"runs/r.trec line 5: \(query_id='q2', doc_id='d7'\): doc_id not in "
                                         r"input.corpus"):
        TextCheck("error")(table)
    kept = TextCheck("skip")(table)
    assert kept["_skip_reason"].to_pylist() == [None, "doc_id not in input.corpus"]
    assert "path" not in kept.column_names and "_line" not in kept.column_names


def test_the_run_layout_needs_a_corpus_and_queries_and_the_others_take_neither(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, "run.trec", "m", input={"layout": "run"})
    with pytest.raises(ConfigError, match=r"(?s)input.corpus: the run layout needs it.*input.queries: the run layout"):
        load_config(write_config(tmp_path / "a.yaml", cfg))
    cfg = job_config(tmp_path, "in", "m", input={"corpus": "c.jsonl", "columns": {"title": "t"}})
    with pytest.raises(ConfigError, match=r"(?s)input.corpus: only the run layout takes it.*input.columns.title"):
        load_config(write_config(tmp_path / "b.yaml", cfg))


def test_a_missing_or_empty_corpus_or_queries_is_an_error_before_any_work(tmp_path: Path) -> None:
    section = run_input(tmp_path, "trec")
    cfg = load_config(write_config(tmp_path / "a.yaml", job_config(tmp_path, "x", "m", input=section)))
    assert discover(cfg.input).texts is not None
    gone = cfg.input.model_copy(update={"corpus": str(tmp_path / "nope.jsonl")})
    with pytest.raises(InputError, match=r"input.corpus '.*nope.jsonl': no such file"):
        discover(gone)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match=r"input.corpus .*empty.jsonl.*holds no documents"):
        discover(cfg.input.model_copy(update={"corpus": str(tmp_path / "empty.jsonl")}))
    import gzip

    (tmp_path / "blank.tsv").write_text("\n  \n\t\n")
    with gzip.open(tmp_path / "empty.tsv.gz", "wb"):
        pass
    for name in ("blank.tsv", "empty.tsv.gz"):
        with pytest.raises(InputError, match=rf"input.corpus .*{name}.*holds no documents \(the files are empty or "
                                             r"hold only blank lines\)"):
            discover(cfg.input.model_copy(update={"corpus": str(tmp_path / name)}))
    pq.write_table(pa.table({"query_id": pa.array([], pa.string()), "query": pa.array([], pa.string())}),
                   tmp_path / "q.parquet")
    with pytest.raises(InputError, match=r"input.queries .*q.parquet.*holds no queries"):
        discover(cfg.input.model_copy(update={"queries": str(tmp_path / "q.parquet")}))
    pq.write_table(pa.table({"qid": ["1"], "text": ["x"]}), tmp_path / "q2.parquet")
    with pytest.raises(InputError, match=r"q2.parquet': missing column 'query_id'; present: qid, text "
                       r"\(set input.columns.query_id to the queries' id column\)"):
        discover(cfg.input.model_copy(update={"queries": str(tmp_path / "q2.parquet")}))


def test_run_files_in_two_formats_or_an_unknown_extension_are_refused(tmp_path: Path) -> None:
    section = run_input(tmp_path, "trec")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.trec").write_text((RUN_SAMPLE / "run.trec").read_text())
    (tmp_path / "runs" / "b.tsv").write_text("1\t51\t1\n")
    cfg = load_config(write_config(tmp_path / "a.yaml", job_config(tmp_path, "x", "m", input=section)))
    with pytest.raises(InputError, match=r"the run files are in 2 formats \(msmarco: .*b.tsv; trec: .*a.trec\)"):
        discover(cfg.input.model_copy(update={"path": str(tmp_path / "runs")}))
    inputs = discover(cfg.input.model_copy(update={"path": str(tmp_path / "runs" / "b.tsv"), "format": "trec"}))
    assert [f.format for f in inputs.files] == ["trec"]


def test_text_qrels_give_the_parquet_qrels() -> None:
    assert load_qrels(str(RUN_SAMPLE / "qrels" / "test.tsv")) == load_qrels(
        str(RUN_SAMPLE.parent / "cranfield" / "qrels.parquet"))


# --- integration: the whole job on the shared Ray cluster ---------------------------------------------------------

@pytest.mark.usefixtures("ray_local")
def test_a_trec_run_with_a_beir_corpus_gives_the_flat_layouts_output_and_a_trec_file(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    import pytrec_eval

    flat = run(load_config(family_config(tmp_path, "flat", tiny_bert_dir, "cross_encoder", 128, flat_input())))
    section = run_input(tmp_path, "trec")
    config = family_config(tmp_path, "run", tiny_bert_dir, "cross_encoder", 128, section)
    summary = run(load_config(config, ["output.trec=true", f"eval.qrels={RUN_SAMPLE / 'qrels' / 'test.tsv'}"]))
    assert_same_output(tmp_path / "run", tmp_path / "flat")
    assert (summary.pairs, summary.rows_out, summary.queries) == (flat.pairs, flat.rows_out, flat.queries) == (
        600, 600, 20)
    qrels = load_qrels(str(RUN_SAMPLE / "qrels" / "test.tsv"))
    assert summary.metrics["first stage"] == pytest.approx(mean(evaluate(_first_stage(), qrels, 10)))  # (TREC ranks)
    # The TREC file: what trec_eval's own reimplementation reads, with the job's metrics.
    lines = (tmp_path / "run" / "_run.trec").read_text().splitlines()
    assert len(lines) == 600 and all(line.endswith(" batch-rerank") for line in lines)
    trec: dict[str, dict[str, float]] = {}
    for line in lines:
        qid, _, docno, _, score, _ = line.split()
        trec.setdefault(qid, {})[docno] = float(score)
    measured = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map"}).evaluate(trec)
    averaged = {m: sum(v[m] for v in measured.values()) / len(measured) for m in ("ndcg_cut_10", "map")}
    assert averaged["ndcg_cut_10"] == pytest.approx(summary.metrics["reranked"]["ndcg@10"], abs=1e-4)
    assert averaged["map"] == pytest.approx(summary.metrics["reranked"]["map"], abs=1e-4)


def _first_stage() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in (RUN_SAMPLE / "run.trec").read_text().splitlines():
        qid, _, docno, rank, _, _ = line.split()
        out.setdefault(qid, {})[docno] = -float(rank)
    return out


@pytest.mark.usefixtures("ray_local")
def test_a_doc_missing_from_the_corpus_fails_naming_it_or_is_quarantined(
        tmp_path: Path, tiny_bert_dir: str, capsys: pytest.CaptureFixture) -> None:
    section = run_input(tmp_path, "trec")
    lines = (RUN_SAMPLE / "run.trec").read_text().splitlines()
    lines[41] = lines[41].replace(" Q0 ", " Q0 no-such-doc-", 1)  # (line 42 of the file)
    (tmp_path / "run.trec").write_text("\n".join(lines) + "\n")
    section["path"] = str(tmp_path / "run.trec")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section)
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "run.trec line 42: (query_id='2', doc_id='no-such-doc-" in err and "not in input.corpus" in err
    assert not published(tmp_path / "out")
    summary = run(load_config(config, ["input.on_invalid=skip"]))
    assert (summary.pairs, summary.skipped, summary.rows_out) == (600, 1, 599)
    quarantine = pq.read_table(tmp_path / "out" / "_quarantine").to_pylist()
    assert [q["reason"] for q in quarantine] == ["doc_id not in input.corpus"]
    assert quarantine[0]["doc_id"].startswith("no-such-doc-")


@pytest.mark.usefixtures("ray_local")
def test_a_malformed_run_line_or_a_duplicated_query_fails_naming_file_and_line(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    section = run_input(tmp_path, "trec")
    lines = (RUN_SAMPLE / "run.trec").read_text().splitlines()
    (tmp_path / "bad.trec").write_text("\n".join([*lines[:9], "7 Q0 51", *lines[9:]]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128,
                           section | {"path": str(tmp_path / "bad.trec")})
    with pytest.raises(Exception) as e:
        run(load_config(config))
    assert isinstance(find_user_error(e.value), InputError)
    assert "bad.trec line 10" in str(find_user_error(e.value))
    queries = (RUN_SAMPLE / "queries.jsonl").read_text().splitlines()
    (tmp_path / "q.jsonl").write_text("\n".join([*queries, queries[3]]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128,
                           section | {"queries": str(tmp_path / "q.jsonl")})
    with pytest.raises(Exception) as e:
        run(load_config(config))
    assert re.search(r"input.queries: query_id '\d+' appears twice, at .*q.jsonl line 4 and at .*q.jsonl line 21",
                     str(find_user_error(e.value)))
    assert not published(tmp_path / "out")


# --- slow: every family in every format --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("backend", sorted(FAMILIES))
def test_every_family_gives_the_flat_output_from_every_run_format(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    fixture, max_length = FAMILIES[backend]
    model = request.getfixturevalue(fixture)
    run(load_config(family_config(tmp_path, "flat", model, backend, max_length, flat_input())))
    for fmt in ("parquet", "trec", "msmarco"):
        run(load_config(family_config(tmp_path, fmt, model, backend, max_length, run_input(tmp_path, fmt))))
        assert_same_output(tmp_path / fmt, tmp_path / "flat")
        assert report(tmp_path / fmt)["pairs"] == 600



@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_cascade_and_distillation_labels_on_the_run_layout_give_the_flat_layouts(
        tmp_path: Path, tiny_bert_dir: str, tiny_xlmr_dir: str) -> None:
    from jobs import distill_labels

    stage = {"top_n": 10, "reranker": {"backend": "cross_encoder", "model": tiny_xlmr_dir, "dtype": "float32",
                                       "max_length": 128}, "actor": {"num_cpus": 0.5}}
    for name, section in (("flat", flat_input()), ("run", run_input(tmp_path, "trec"))):
        config = family_config(tmp_path, f"cascade-{name}", tiny_bert_dir, "cross_encoder", 128, section)
        run(load_config(config, [f"cascade=[{stage}]", "actor.num_cpus=0.5"]))
    assert_same_output(tmp_path / "cascade-run", tmp_path / "cascade-flat")
    a, b = by_pair(tmp_path / "cascade-run"), by_pair(tmp_path / "cascade-flat")
    assert sum(r["stage2_score"] is not None for r in a.values()) == 200
    assert all(a[k]["stage2_score"] == pytest.approx(b[k]["stage2_score"], abs=1e-6) for k in a
               if b[k]["stage2_score"] is not None)

    records = {}
    for name, section in (("flat", flat_input()), ("run", run_input(tmp_path, "trec"))):
        cfg = {"input": section, "output": {"path": str(tmp_path / f"labels-{name}")},
               "teachers": [{"name": "bert", "reranker": {"backend": "cross_encoder", "model": tiny_bert_dir,
                                                          "dtype": "float32", "max_length": 128}}],
               "qrels": str(RUN_SAMPLE / "qrels" / "test.tsv")}
        assert distill_labels.main(["--config", str(write_config(tmp_path / f"labels-{name}.yaml", cfg))]) == 0
        table = pads.dataset(str(tmp_path / f"labels-{name}")).to_table()
        records[name] = {r["query_id"]: r for r in table.to_pylist()}
    assert records["run"].keys() == records["flat"].keys() and len(records["run"]) == 20
    for qid, want in records["flat"].items():
        have = records["run"][qid]
        assert (have["positives"], have["hard_negatives"]) == (want["positives"], want["hard_negatives"])
        for x, y in zip(have["candidates"], want["candidates"], strict=True):
            # (measured: raw scores up to 5.0e-6 apart, combined up to 3.9e-6: the padded lengths of
            # other batch compositions)
            assert x["doc_id"] == y["doc_id"] and x["bert"] == pytest.approx(y["bert"], abs=1e-5)
            assert x["combined"] == pytest.approx(y["combined"], abs=1e-5)


@pytest.mark.slow
def test_a_driver_killed_mid_run_on_a_trec_run_resumes_from_its_converted_copy_exactly_once(
        ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str) -> None:
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, run_input(tmp_path, "trec"))
    config = write_config(config, {**yaml.safe_load(config.read_text()), "actor": {"batch_size": 50}})
    log1, count = tmp_path / "batches-1", tmp_path / "scored-2"
    kill_after_batches(driver(ray_head, config, {"sleep_per_batch": 0.5, "batch_log": str(log1)}), log1, 5)  # (of 12)
    assert not published(tmp_path / "out")
    assert list((tmp_path / "out").glob("_checkpoints/*/converted/*.parquet"))  # (the text run's Parquet copy)
    durable = sum(json.loads(p.read_text())["rows"] for p in (tmp_path / "out").glob("_checkpoints/*/manifest/*"))
    assert durable >= 250

    code, out = finish(driver(ray_head, config, {"count_file": str(count)}))
    assert code == 0, out[-4000:]
    summary = report(tmp_path / "out")
    assert summary["resumed_pairs"] == durable
    assert sum(int(n) for n in count.read_text().split()) == summary["scored_now"] == 600 - durable
    flat = family_config(tmp_path, "flat", tiny_bert_dir, "cross_encoder", 128, flat_input())
    code, out = finish(driver(ray_head, flat))
    assert code == 0, out[-4000:]
    assert_same_output(tmp_path / "out", tmp_path / "flat", tolerance=1e-5)


@pytest.mark.slow
def test_run_corpus_queries_and_output_on_s3_through_ray_job_submit(ray_head: RayHead, moto: str, tmp_path: Path,
                                                                     tiny_bert_dir: str) -> None:
    fs = s3(moto, "runs")
    for name in ("run.trec", "corpus.jsonl", "queries.jsonl"):
        fs.put(str(RUN_SAMPLE / name), f"runs/in/{name}")
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": KEY_ID,
                                "AWS_SECRET_ACCESS_KEY": SECRET, "HF_HUB_OFFLINE": "1"}}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "jobs.rerank", "--config", "configs/run_layout_demo.yaml",
         "input.path=s3://runs/in/run.trec", "input.corpus=s3://runs/in/corpus.jsonl",
         "input.queries=s3://runs/in/queries.jsonl", "output.path=s3://runs/out",
         "reranker.backend=cross_encoder", f"reranker.model={tiny_bert_dir}", "reranker.max_length=128",
         "reranker.dtype=float32", "actor.num_cpus=1", "actor.threads=1", "actor.batch_size=64"],
        cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=600,
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert fs.exists("runs/out/_SUCCESS") and not fs.exists("runs/out/_checkpoints")
    assert len(fs.cat_file("runs/out/_run.trec").decode().splitlines()) == 600
    local = family_config(tmp_path, "flat", tiny_bert_dir, "cross_encoder", 128, flat_input())
    code, out = finish(driver(ray_head, local))
    assert code == 0, out[-4000:]
    fs.get("runs/out", str(tmp_path / "from-s3"), recursive=True)
    assert_same_output(tmp_path / "from-s3", tmp_path / "flat", tolerance=1e-5)  # (another threads setting)
    assert SECRET not in logs
