"""Readers of the text formats (jobs.text_formats): TREC and MS MARCO runs, BEIR and TSV
corpora and queries, TREC and BEIR qrels; gzip, blank lines, blocks, errors naming file
and line. Every fixture is read twice, by the pyarrow fast path and by the line-by-line
parser that defines the format, and both must agree."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import text_formats as tf
from jobs.errors import InputError
from jobs.evaluate import load_qrels
from jobs.text_formats import read_qrels_text, read_run_text, read_texts, run_format

LOCAL = fsspec.filesystem("file")


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return str(path)


def slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the pyarrow fast paths off: every block goes through the line parser."""
    monkeypatch.setattr(tf, "_fast_delimited", lambda block, layout: None)
    monkeypatch.setattr(tf._JsonReader, "_fast", lambda self, block: None)


def both_paths(monkeypatch: pytest.MonkeyPatch, read) -> list[dict]:
    """Rows read with the fast path and with the line parser; they must be equal."""
    fast = pa.concat_tables(read()).to_pylist()
    with monkeypatch.context() as m:
        slow_path(m)
        slow = pa.concat_tables(read()).to_pylist()
    assert fast == slow
    return fast


def run_rows(monkeypatch, path: str, fmt: str) -> list[dict]:
    return both_paths(monkeypatch, lambda: read_run_text(LOCAL, path, Path(path).name, fmt))


def text_rows(monkeypatch, path: str, kind: str) -> list[dict]:
    return both_paths(monkeypatch, lambda: read_texts(LOCAL, path, Path(path).name, kind))


def run_error(path: str, fmt: str) -> str:
    with pytest.raises(InputError) as e:
        list(read_run_text(LOCAL, path, "runs/" + Path(path).name, fmt))
    return str(e.value)


# --- Runs -------------------------------------------------------------------------------------

TREC = "q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 -3e-2 bm25\n\nq2 Q0 d1 1 7 bm25\n"


@pytest.mark.parametrize("name", ["run.trec", "run.trec.gz"])
def test_a_trec_run(tmp_path, monkeypatch, name: str) -> None:
    rows = run_rows(monkeypatch, write(tmp_path, name, TREC), "trec")
    assert rows == [
        {"query_id": "q1", "doc_id": "d1", "rank": 1, "score": 12.5, "line": 1},
        {"query_id": "q1", "doc_id": "d2", "rank": 2, "score": -0.03, "line": 2},
        {"query_id": "q2", "doc_id": "d1", "rank": 1, "score": 7.0, "line": 4},
    ]
    table = next(read_run_text(LOCAL, write(tmp_path, name, TREC), name, "trec"))
    assert table.schema == tf.RUN_SCHEMA


def test_trec_fields_split_on_any_run_of_spaces_and_tabs(tmp_path, monkeypatch) -> None:
    messy = "\ufeffq1\tQ0\td1\t1\t0.5\tx\r\n  q1  Q0 \t d2 2 0.25 x   \n \t \r\n301 Q0 1234 3 1e-3 y"
    rows = run_rows(monkeypatch, write(tmp_path, "messy.run", messy), "trec")
    assert [(r["query_id"], r["doc_id"], r["rank"], r["score"], r["line"]) for r in rows] == [
        ("q1", "d1", 1, 0.5, 1), ("q1", "d2", 2, 0.25, 2), ("301", "1234", 3, 0.001, 4)]


def test_the_fast_path_reads_clean_and_crlf_blocks(tmp_path) -> None:
    for text in (TREC, TREC.replace("\n", "\r\n"), TREC.replace(" ", "\t")):
        block = next(tf._blocks(LOCAL, write(tmp_path, "r.trec", text), "r.trec"))
        assert tf._fast_delimited(block, tf.TREC_RUN) is not None, text
    block = next(tf._blocks(LOCAL, write(tmp_path, "r.tsv", "1\t2\t3\n"), "r.tsv"))
    assert tf._fast_delimited(block, tf.MSMARCO_RUN) is not None


@pytest.mark.parametrize("name", ["run.tsv", "run.tsv.gz"])
def test_an_msmarco_run(tmp_path, monkeypatch, name: str) -> None:
    text = "1048585\t7187158\t1\n\n1048585\t7187157\t2\r\n2\t3\t1"
    rows = run_rows(monkeypatch, write(tmp_path, name, text), "msmarco")
    assert rows == [
        {"query_id": "1048585", "doc_id": "7187158", "rank": 1, "score": None, "line": 1},
        {"query_id": "1048585", "doc_id": "7187157", "rank": 2, "score": None, "line": 3},
        {"query_id": "2", "doc_id": "3", "rank": 1, "score": None, "line": 4},
    ]


def test_runs_stream_in_blocks_with_true_line_numbers(tmp_path, monkeypatch) -> None:
    lines = [f"q{i // 10} Q0 d{i} {i % 10 + 1} {100 - i % 10}.5 t" for i in range(500)]
    lines[123] = ""
    lines[124] = "q12 Q0 " + "d" * 300 + " 5 95.5 t"  # longer than a block
    path = write(tmp_path, "big.trec.gz", "\n".join(lines) + "\n")
    whole = pa.concat_tables(read_run_text(LOCAL, path, "big.trec.gz", "trec"))
    monkeypatch.setattr(tf, "BLOCK_BYTES", 64)
    tables = list(read_run_text(LOCAL, path, "big.trec.gz", "trec"))
    assert len(tables) > 100 and max(t.num_rows for t in tables) <= 4
    assert pa.concat_tables(tables).equals(whole)
    assert whole.num_rows == 499 and whole["line"].to_pylist() == [*range(1, 124), *range(125, 501)]
    assert whole["doc_id"][123].as_py() == "d" * 300


@pytest.mark.parametrize(("text", "message"), [
    ("q1 Q0 d1 1 2.0 t\n" * 16 + "q1 Q0 d2 2\n",
     "runs/bm25.trec line 17: expected 6 whitespace-separated fields (qid Q0 docno rank score tag), got 4"),
    ("q1 Q0 d1 1 2.0 t\n\nq1 Q0 d2 2 2.0 t extra\n", "runs/bm25.trec line 3: expected 6 whitespace-separated"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 two 1.0 t\n", "runs/bm25.trec line 2: rank must be an integer (int32), got 'two'"),
    ("q1 Q0 d1 1.5 2.0 t\n", "runs/bm25.trec line 1: rank must be an integer (int32), got '1.5'"),
    ("q1 Q0 d1 99999999999 2.0 t\n", "line 1: rank must be an integer (int32), got '99999999999'"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 high t\n", "runs/bm25.trec line 2: score must be a number, got 'high'"),
    ("q1 Q0 d1 1 1_000 t\n", "runs/bm25.trec line 1: score must be a number, got '1_000'"),
    (b"q1 Q0 d\xff 1 2.0 t\n", "runs/bm25.trec line 1: doc_id is not valid UTF-8"),
])
def test_a_malformed_trec_line_is_named(tmp_path, monkeypatch, text: str | bytes, message: str) -> None:
    path = write(tmp_path, "bm25.trec", text)
    assert message in run_error(path, "trec")
    slow_path(monkeypatch)
    assert message in run_error(path, "trec")


def test_the_first_bad_line_is_named_in_a_later_block(tmp_path, monkeypatch) -> None:
    lines = ["q Q0 d 1 1.0 t"] * 300
    lines[250] = "q Q0 d x 1.0 t"
    lines[260] = "q Q0 d 1"
    monkeypatch.setattr(tf, "BLOCK_BYTES", 1000)
    assert "runs/r.trec line 251: rank must be an integer" in run_error(write(tmp_path, "r.trec", "\n".join(lines)),
                                                                        "trec")


@pytest.mark.parametrize(("text", "message"), [
    ("1\t2\t1\n1\t3\n", "runs/run.tsv line 2: expected 3 tab-separated fields (qid<TAB>pid<TAB>rank), got 2"),
    ("1 2 1\n", "runs/run.tsv line 1: expected 3 tab-separated fields (qid<TAB>pid<TAB>rank), got 1"),
    ("1\t2\t1\t0.5\n", "line 1: expected 3 tab-separated fields (qid<TAB>pid<TAB>rank), got 4"),
    ("1\t2\tfirst\n", "runs/run.tsv line 1: rank must be an integer (int32), got 'first'"),
    ("1\t\t1\n", "runs/run.tsv line 1: empty doc_id"),
])
def test_a_malformed_msmarco_line_is_named(tmp_path, text: str, message: str) -> None:
    assert message in run_error(write(tmp_path, "run.tsv", text), "msmarco")


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(InputError, match=r"runs/none.trec: no such file"):
        list(read_run_text(LOCAL, str(tmp_path / "none.trec"), "runs/none.trec", "trec"))
    bad = write(tmp_path, "bad.trec.gz", b"")
    Path(bad).write_bytes(b"not gzip at all")
    assert "runs/bad.trec.gz: not a valid gzip file" in run_error(bad, "trec")
    Path(bad).write_bytes(gzip.compress(TREC.encode())[:-12])  # truncated
    assert "runs/bad.trec.gz: not a valid gzip file" in run_error(bad, "trec")
    empty = list(read_run_text(LOCAL, write(tmp_path, "empty.trec", "\n\n"), "e", "trec"))
    assert [t.num_rows for t in empty] == [0]


def test_any_fsspec_filesystem(tmp_path) -> None:
    memory = fsspec.filesystem("memory")
    try:
        memory.pipe_file("/runs/r.trec.gz", gzip.compress(TREC.encode()))
        table = pa.concat_tables(read_run_text(memory, "/runs/r.trec.gz", "memory://runs/r.trec.gz", "trec"))
    finally:
        memory.rm("/", recursive=True)
    assert table.num_rows == 3


@pytest.mark.parametrize(("path", "fmt", "expected"), [
    ("runs/a.parquet", None, "parquet"), ("a.trec", None, "trec"), ("a.run", None, "trec"),
    ("s3://b/a.txt", None, "trec"), ("a.TREC.gz", None, "trec"), ("a.tsv", None, "msmarco"),
    ("a.tsv.gz", None, "msmarco"), ("a.run", "msmarco", "msmarco"), ("a.tsv", "trec", "trec"),
    ("a.whatever", "parquet", "parquet"),
])
def test_run_format(path: str, fmt: str | None, expected: str) -> None:
    assert run_format(path, fmt) == expected


def test_run_format_errors() -> None:
    with pytest.raises(InputError, match=r"runs/a\.csv: cannot tell the run's format.*\.parquet, \.trec, \.run, "
                                         r"\.txt.*\.tsv.*input\.format"):
        run_format("runs/a.csv", None)
    with pytest.raises(InputError, match=r"input.format 'csv': accepted values are parquet, trec, msmarco"):
        run_format("runs/a.trec", "csv")
    with pytest.raises(InputError, match=r"gzip-compressed Parquet"):
        run_format("a.parquet.gz", None)


# --- Corpus and queries --------------------------------------------------------------------


def jsonl(*records: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_a_beir_corpus(tmp_path, monkeypatch, name: str) -> None:
    text = jsonl({"_id": "d1", "title": "Title", "text": "Body text.", "metadata": {"url": "u", "n": [1]}},
                 {"_id": "d2", "text": "  no title  "},
                 "",
                 {"_id": "d3", "title": None, "text": "null title"},
                 {"_id": "d4", "title": "\u3000Only a title\x1c", "text": ""},
                 "   ",
                 {"_id": "d5", "title": "", "text": "say \"hi\"\tthere"})
    rows = text_rows(monkeypatch, write(tmp_path, name, text), "corpus")
    assert rows == [
        {"id": "d1", "text": "Title Body text.", "line": 1},
        {"id": "d2", "text": "no title", "line": 2},
        {"id": "d3", "text": "null title", "line": 4},
        {"id": "d4", "text": "Only a title", "line": 5},
        {"id": "d5", "text": 'say "hi"\tthere', "line": 7},
    ]


def test_the_document_text_is_what_beir_builds(tmp_path, monkeypatch) -> None:
    """(title + " " + text).strip(), Python's strip: every character str.isspace() knows."""
    spaces = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    assert tf.PY_WHITESPACE == spaces
    records = [{"_id": f"d{i}", "title": f"{s}t{i}{s}", "text": f"{s}x{s}"} for i, s in enumerate(spaces + "\u200b")]
    rows = text_rows(monkeypatch, write(tmp_path, "c.jsonl", jsonl(*records)), "corpus")
    assert [r["text"] for r in rows] == [(r["title"] + " " + r["text"]).strip() for r in records]


def test_numeric_ids_become_strings(tmp_path, monkeypatch) -> None:
    all_numeric = jsonl({"_id": 10, "text": "a"}, {"_id": 2, "text": "b"})
    mixed = jsonl({"_id": 10, "text": "a"}, {"_id": "x", "text": "b"}, {"_id": 12345678901234567890123, "text": "c"})
    for name, text in (("n.jsonl", all_numeric), ("m.jsonl", mixed)):
        rows = text_rows(monkeypatch, write(tmp_path, name, text), "queries")
        assert [r["id"] for r in rows] == [str(json.loads(line)["_id"]) for line in text.splitlines()]


def test_beir_queries(tmp_path, monkeypatch) -> None:
    text = jsonl({"_id": "q1", "text": " What is it? ", "metadata": {}}, {"_id": "q2", "text": ""})
    rows = text_rows(monkeypatch, write(tmp_path, "queries.jsonl.gz", text), "queries")
    assert rows == [{"id": "q1", "text": " What is it? ", "line": 1}, {"id": "q2", "text": "", "line": 2}]


@pytest.mark.parametrize("name", ["collection.tsv", "queries.tsv.gz"])
def test_tsv_texts(tmp_path, monkeypatch, name: str) -> None:
    text = '0\tThe "presence" of communication\n1\t\n\n2\ttab\tinside \r\n3\t  spaced'
    rows = text_rows(monkeypatch, write(tmp_path, name, text), "corpus")
    assert rows == [
        {"id": "0", "text": 'The "presence" of communication', "line": 1},
        {"id": "1", "text": "", "line": 2},
        {"id": "2", "text": "tab\tinside ", "line": 4},
        {"id": "3", "text": "  spaced", "line": 5},
    ]


def test_texts_stream_in_blocks(tmp_path, monkeypatch) -> None:
    records = [{"_id": f"d{i}", "title": f"T{i}", "text": "word " * (i % 7)} for i in range(300)]
    path = write(tmp_path, "c.jsonl", jsonl(*records))
    whole = pa.concat_tables(read_texts(LOCAL, path, "c.jsonl", "corpus"))
    monkeypatch.setattr(tf, "BLOCK_BYTES", 256)
    tables = list(read_texts(LOCAL, path, "c.jsonl", "corpus"))
    assert len(tables) > 20 and pa.concat_tables(tables).equals(whole)
    assert whole["line"].to_pylist() == list(range(1, 301)) and whole.schema == tf.TEXT_SCHEMA


@pytest.mark.parametrize(("name", "kind", "text", "message"), [
    ("c.jsonl", "corpus", jsonl({"_id": "a", "text": "x"}, '{"_id": "b", "text": "y"'),
     "data/c.jsonl line 2: invalid JSON"),
    ("c.jsonl", "corpus", jsonl({"_id": "a"}, {"text": "no id"}), 'data/c.jsonl line 2: expected an "_id" field'),
    ("c.jsonl", "corpus", jsonl({"_id": None, "text": "x"}), 'data/c.jsonl line 1: expected an "_id" field'),
    ("c.jsonl", "corpus", jsonl({"_id": ""}), 'data/c.jsonl line 1: empty "_id"'),
    ("c.jsonl", "corpus", jsonl({"_id": 1.5}), 'data/c.jsonl line 1: "_id" must be a string or an integer, got 1.5'),
    ("c.jsonl", "corpus", jsonl({"_id": "a", "text": 3}), 'data/c.jsonl line 1: "text" must be a string, got 3'),
    ("c.jsonl", "corpus", jsonl({"_id": "a", "title": ["x"]}), 'line 1: "title" must be a string'),
    ("c.jsonl", "corpus", jsonl({"_id": "a"}, "[1, 2]"), "data/c.jsonl line 2: expected a JSON object"),
    ("c.jsonl", "corpus", jsonl({"_id": "a"}, '{"_id": "b"} {"_id": "c"}'), "data/c.jsonl line 2: invalid JSON"),
    ("q.jsonl", "queries", jsonl({"_id": "q1", "text": "x"}, {"_id": "q2"}),
     'data/q.jsonl line 2: expected a "text" field'),
    ("c.tsv", "corpus", "1\tone\n\n2 two\n", "data/c.tsv line 3: expected 2 tab-separated fields (id<TAB>text), got 1"),
    ("q.tsv", "queries", "\tno id\n", "data/q.tsv line 1: empty id"),
])
def test_a_malformed_text_line_is_named(tmp_path, monkeypatch, name: str, kind: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    for m in (monkeypatch, None):
        with pytest.raises(InputError) as e:
            list(read_texts(LOCAL, path, f"data/{name}", kind))
        assert message in str(e.value)
        if m:
            slow_path(m)


def test_text_extensions(tmp_path) -> None:
    for name in ("corpus.parquet", "corpus.json", "corpus.csv.gz"):
        with pytest.raises(InputError, match=r"cannot tell the corpus file's format.*\.jsonl.*\.tsv.*\.gz"):
            list(read_texts(LOCAL, str(tmp_path / name), name, "corpus"))


# --- Qrels ------------------------------------------------------------------------------------

QRELS_ROWS = [{"query_id": "1", "doc_id": "184", "relevance": 2}, {"query_id": "1", "doc_id": "29", "relevance": 0},
              {"query_id": "q2", "doc_id": "d9", "relevance": -1}]


@pytest.mark.parametrize(("name", "text"), [
    ("qrels.txt", "1 0 184 2\n1 0 29 0\n\nq2 0 d9 -1\n"),
    ("qrels.dev.tsv", "1\t0\t184\t2\n1\t0\t29\t0\nq2\t0\td9\t-1\n"),  # MS MARCO
    ("test.tsv", "query-id\tcorpus-id\tscore\r\n1\t184\t2\r\n1\t29\t0\r\nq2\td9\t-1\r\n"),  # BEIR
    ("test.tsv.gz", "\nquery-id\tcorpus-id\tscore\n1\t184\t2\n1\t29\t0\n\nq2\td9\t-1"),
])
def test_text_qrels_by_content(tmp_path, monkeypatch, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    assert read_qrels_text(LOCAL, path, name).to_pylist() == QRELS_ROWS
    assert load_qrels(path) == {"1": {"184": 2, "29": 0}, "q2": {"d9": -1}}
    slow_path(monkeypatch)
    assert read_qrels_text(LOCAL, path, name).to_pylist() == QRELS_ROWS


@pytest.mark.parametrize(("text", "message"), [
    ("1\t184\t2\n", "line 1: expected TREC qrels (4 whitespace-separated fields (qid iter docno rel)) or BEIR qrels "
                    "(a header query-id<TAB>corpus-id<TAB>score, then 3 tab-separated fields"),
    ("1 0 184 2\n1 0 29\n", "line 2: expected 4 whitespace-separated fields (qid iter docno rel), got 3"),
    ("1 0 184 high\n", "line 1: relevance must be an integer (int64), got 'high'"),
    ("query-id\tcorpus-id\tscore\n1\t184\t2\t0\n", "line 2: expected 3 tab-separated fields "
                                                    "(query-id<TAB>corpus-id<TAB>score), got 4"),
])
def test_malformed_qrels_are_named(tmp_path, text: str, message: str) -> None:
    path = write(tmp_path, "qrels.txt", text)
    with pytest.raises(InputError) as e:
        read_qrels_text(LOCAL, path, "qrels.txt")
    assert f"qrels.txt {message}" in str(e.value)
    with pytest.raises(InputError) as e:
        load_qrels(path)
    assert str(e.value).startswith(f"eval.qrels {path} {message}")


def test_parquet_qrels_still_load_by_extension_or_content(tmp_path) -> None:
    table = pa.Table.from_pylist(QRELS_ROWS)
    pq.write_table(table, tmp_path / "qrels.parquet")
    pq.write_table(table, tmp_path / "qrels.bin")  # no extension: told by the magic bytes
    expected = {"1": {"184": 2, "29": 0}, "q2": {"d9": -1}}
    assert load_qrels(str(tmp_path / "qrels.parquet")) == load_qrels(str(tmp_path / "qrels.bin")) == expected
    with pytest.raises(InputError, match=r"eval.qrels '.*nothing.tsv': no such file"):
        load_qrels(str(tmp_path / "nothing.tsv"))
