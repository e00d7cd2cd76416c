"""The run layout's inputs end to end, on the shared Ray cluster: invalid pairs named by
file, row and ids (at most 10 listed); bad corpus and run files; the Parquet corpus's title,
the queries' instructions and a run's extra columns; the score cache and the checkpoints
keyed by the resolved texts; a rerun replacing `_run.trec`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import load_config
from jobs.errors import InputError, find_user_error
from jobs.rerank import main, run
from tests.conftest import published, sample_pairs
from tests.run_layout import RUN_SAMPLE, assert_same_output, by_pair, flat_input, report, run_input
from tests.test_run_layout import family_config

pytestmark = pytest.mark.usefixtures("ray_local")

LISTING = re.compile(r"^  - (\S+) row (\d+): \(query_id='([^']*)', doc_id='([^']*)'\): (.*)$")


def _user_error(config: Path, *overrides: str) -> str:
    with pytest.raises(Exception) as e:
        run(load_config(config, list(overrides)))
    error = find_user_error(e.value)
    assert isinstance(error, InputError), repr(e.value)
    return str(error)


@pytest.mark.slow  # (the fast tier's budget: make test within 12 minutes)
def test_pairs_missing_from_the_corpus_or_queries_are_listed_by_parquet_row_up_to_ten_or_quarantined(
        tmp_path: Path, tiny_bert_dir: str, capsys: pytest.CaptureFixture) -> None:
    section = run_input(tmp_path, "parquet")
    part = Path(section["path"]) / "part-1.parquet"
    table = pq.read_table(part)
    queries, docs = table["query_id"].to_pylist(), table["doc_id"].to_pylist()
    for row in (3, 40, 41, 90, 200, 250, 280):
        docs[row] = f"gone-doc-{row}"
    for row in (5, 60, 120, 121, 230):
        queries[row] = f"gone-query-{row}"
    table = table.set_column(0, "query_id", pa.array(queries)).set_column(1, "doc_id", pa.array(docs))
    pq.write_table(table, part)
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section)

    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "12 invalid pair(s)" in err and "showing up to 10" in err
    listed = [m.groups() for m in map(LISTING.match, err.splitlines()) if m]
    assert len(listed) == 10
    for file, row, query_id, doc_id, reason in listed:
        assert file.endswith("part-1.parquet")
        assert (queries[int(row)], docs[int(row)]) == (query_id, doc_id)  # (the row numbers are the file's)
        assert reason == ("query_id not in input.queries" if query_id.startswith("gone-")
                          else "doc_id not in input.corpus")
        assert query_id.startswith("gone-") or doc_id.startswith("gone-")
    assert not published(tmp_path / "out")

    summary = run(load_config(config, ["input.on_invalid=skip"]))
    assert (summary.pairs, summary.skipped, summary.rows_out) == (600, 12, 588)
    reasons = [r["reason"] for r in pq.read_table(tmp_path / "out" / "_quarantine").to_pylist()]
    assert sorted(reasons) == ["doc_id not in input.corpus"] * 7 + ["query_id not in input.queries"] * 5


def test_a_document_twice_with_other_texts_or_a_malformed_line_fails_naming_its_file_and_line(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    section = run_input(tmp_path, "trec")
    corpus = (RUN_SAMPLE / "corpus.jsonl").read_text().splitlines()
    record = json.loads(corpus[6])
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join([*corpus, json.dumps({**record, "text": record["text"] + " (revised)"})]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section | {"corpus": str(twice)})
    assert re.search(rf"input.corpus: doc_id '{record['_id']}' appears twice with different texts, at "
                     rf".*twice.jsonl line 7 and at .*twice.jsonl line {len(corpus) + 1}; keep one",
                     _user_error(config))

    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*corpus[:11], '{"_id": "x", "text": ', *corpus[11:]]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section | {"corpus": str(broken)})
    assert re.search(r"broken.jsonl line 12: ", _user_error(config))

    msmarco = run_input(tmp_path, "msmarco")
    lines = Path(msmarco["path"]).read_text().splitlines()
    bad_run = tmp_path / "bad.tsv"
    bad_run.write_text("\n".join([*lines[:99], "7\t51", *lines[99:]]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, msmarco | {"path": str(bad_run)})
    assert re.search(r"bad.tsv line 100: ", _user_error(config))
    assert not published(tmp_path / "out")


def _split_title(table: pa.Table) -> pa.Table:
    """The corpus with each text's first word as its title: (title + " " + doc).strip() is the text."""
    heads = [d.split(" ", 1) for d in table["doc"].to_pylist()]
    return pa.table({"doc_id": table["doc_id"], "headline": [h[0] for h in heads],
                     "body": [h[1] if len(h) > 1 else "" for h in heads]})


@pytest.mark.slow  # (over 25 s)
def test_a_parquet_corpus_title_query_instructions_and_extra_columns_reach_the_scorer_and_output(
        tmp_path: Path, tiny_qwen3_dir: str) -> None:
    pairs = sample_pairs()
    instructions = {q: f"Judge passage {i % 3} for aerodynamics" for i, q in enumerate(dict.fromkeys(
        pairs["query_id"].to_pylist()))}
    flat_dir = tmp_path / "flat-in"
    flat_dir.mkdir()
    pq.write_table(pairs.append_column("task", pa.array([instructions[q] for q in pairs["query_id"].to_pylist()]))
                   .append_column("retriever", pa.array([f"bm25-{i % 4}" for i in range(len(pairs))])),
                   flat_dir / "pairs.parquet")
    flat = flat_input() | {"path": str(flat_dir), "extra_columns": ["retriever"]}
    flat["columns"] = flat["columns"] | {"instruction": "task"}
    run(load_config(family_config(tmp_path, "flat", tiny_qwen3_dir, "llm_yes_no", 512, flat)))

    section = run_input(tmp_path, "parquet")
    root = Path(section["corpus"]).parent
    pq.write_table(_split_title(pq.read_table(section["corpus"])), root / "titled.parquet")
    q = pq.read_table(section["queries"])
    pq.write_table(q.append_column("task", pa.array([instructions[i] for i in q["query_id"].to_pylist()])),
                   root / "instructed.parquet")
    retriever = pq.read_table(flat_dir / "pairs.parquet").select(["query_id", "doc_id", "retriever"])
    by_ids = {(r["query_id"], r["doc_id"]): r["retriever"] for r in retriever.to_pylist()}
    for part in Path(section["path"]).glob("*.parquet"):
        t = pq.read_table(part)
        keys = zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist(), strict=True)
        pq.write_table(t.append_column("retriever", pa.array([by_ids[k] for k in keys])), part)
    section |= {"corpus": str(root / "titled.parquet"), "queries": str(root / "instructed.parquet"),
                "extra_columns": ["retriever"]}
    section["columns"] = section["columns"] | {"doc": "body", "title": "headline", "instruction": "task"}
    run(load_config(family_config(tmp_path, "run", tiny_qwen3_dir, "llm_yes_no", 512, section)))

    assert_same_output(tmp_path / "run", tmp_path / "flat")
    out = by_pair(tmp_path / "run")
    assert all(row["retriever"] == by_ids[key] for key, row in out.items())
    # (and the instructions matter: without them the scores move)
    plain = section | {"queries": section["queries"].replace("instructed", "queries")}
    plain["columns"] = {k: v for k, v in section["columns"].items() if k != "instruction"}
    run(load_config(family_config(tmp_path, "plain", tiny_qwen3_dir, "llm_yes_no", 512, plain)))
    with pytest.raises(AssertionError, match=r"max \|score difference\|"):
        assert_same_output(tmp_path / "plain", tmp_path / "flat")


def _edited_corpus(path: Path, every: int) -> tuple[Path, set[str]]:
    """The BEIR corpus with every `every`-th document's text revised: (file, revised ids)."""
    records = [json.loads(line) for line in (RUN_SAMPLE / "corpus.jsonl").read_text().splitlines()]
    revised = set()
    for i, r in enumerate(records):
        if i % every == 0:
            r["text"] += " (revised)"
            revised.add(r["_id"])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, revised


@pytest.mark.slow  # (over 25 s)
def test_the_score_cache_keys_resolved_texts_so_an_edited_corpus_rescored_only_its_edits(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    section = run_input(tmp_path, "trec")
    cache = [f"cache.path={tmp_path / 'cache'}"]
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section)
    assert run(load_config(config, cache)).scored_now == 600
    # Night 2: the same texts under a reordered, shorter run: everything from the cache.
    lines = (RUN_SAMPLE / "run.trec").read_text().splitlines()
    (tmp_path / "reordered.trec").write_text("\n".join(reversed(lines[30:])) + "\n")
    night2 = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128,
                           section | {"path": str(tmp_path / "reordered.trec")})
    summary = run(load_config(night2, cache))
    assert (summary.pairs, summary.cached, summary.scored_now) == (570, 570, 0)
    # Night 3: the whole run again, a tenth of the documents revised: their pairs are scored.
    corpus, revised = _edited_corpus(tmp_path / "corpus.jsonl", 10)
    edited = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section | {"corpus": str(corpus)})
    # (The cache holds the last night's pairs: night 2 left out the first 30 lines.)
    to_score = sum(i < 30 or line.split()[2] in revised for i, line in enumerate(lines))
    assert 30 < to_score < 600
    summary = run(load_config(edited, cache))
    assert (summary.cached, summary.scored_now) == (600 - to_score, to_score)
    run(load_config(family_config(tmp_path, "fresh", tiny_bert_dir, "cross_encoder", 128,
                                  section | {"corpus": str(corpus)})))
    assert_same_output(tmp_path / "out", tmp_path / "fresh", tolerance=1e-5)  # (other batch compositions)


@pytest.mark.slow  # (over 25 s)
def test_checkpoints_of_a_refused_run_serve_the_same_corpus_and_an_edited_one_is_scored_afresh(
        tmp_path: Path, tiny_bert_dir: str) -> None:
    section = run_input(tmp_path, "trec")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section)
    refuse: list[Any] = ["gates.min_score_spread=1000"]  # (refused: the checkpoints stay)
    assert main(["--config", str(config), *refuse]) == 3
    corpus, _ = _edited_corpus(tmp_path / "corpus.jsonl", 10)
    edited = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section | {"corpus": str(corpus)})
    summary = run(load_config(edited, ["gates.mode=warn", *refuse]))
    assert (summary.resumed_pairs, summary.scored_now) == (0, 600)
    assert main(["--config", str(config), *refuse]) == 3  # (the original corpus again: checkpoints anew)
    summary = run(load_config(config, ["gates.mode=warn", *refuse]))
    assert (summary.resumed_pairs, summary.scored_now) == (600, 0)


@pytest.mark.slow  # (over 25 s)
def test_a_rerun_replaces_the_trec_file_or_removes_it(tmp_path: Path, tiny_bert_dir: str) -> None:
    section = run_input(tmp_path, "trec")
    lines = (RUN_SAMPLE / "run.trec").read_text().splitlines()
    (tmp_path / "half.trec").write_text("\n".join(lines[:300]) + "\n")
    config = family_config(tmp_path, "out", tiny_bert_dir, "cross_encoder", 128, section)
    trec = tmp_path / "out" / "_run.trec"
    run(load_config(config, ["output.trec=true"]))
    assert len(trec.read_text().splitlines()) == 600
    run(load_config(config, ["output.trec=true", f"input.path={tmp_path / 'half.trec'}", "output.trec_tag=night2"]))
    written = trec.read_text().splitlines()
    assert len(written) == 300 and all(line.endswith(" night2") for line in written)
    assert {(w.split()[0], w.split()[2]) for w in written} == set(by_pair(tmp_path / "out"))
    run(load_config(config))
    assert not trec.exists() and report(tmp_path / "out")["pairs"] == 600
