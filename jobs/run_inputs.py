"""The run layout's inputs (input.layout: run): a run of ids, and the corpus and queries
that hold their texts, each once.

    run      input.path: Parquet (query_id, doc_id, optional first-stage score and rank, extra
             columns), TREC run files (`qid Q0 docno rank score tag`) or MS MARCO runs
             (`qid<TAB>pid<TAB>rank`), by input.format or the extension.
    corpus   input.corpus: doc_id -> text: Parquet, BEIR corpus.jsonl, TSV id<TAB>text (.gz too)
    queries  input.queries: query_id -> text: Parquet, BEIR queries.jsonl, TSV id<TAB>text

Only names, sizes and footers are read here, before any work starts; the texts are joined
to the pairs on the cluster (jobs.text_join).

A text run is converted to Parquet once (`convert_runs`, one Ray task per file, streaming)
under the run's checkpoints, keyed by the text file's version: the score stage then reads
row ranges of it as of any Parquet input, and a rerun after a crash finds the same rows
under the same row numbers. Its rank (and TREC's score) pass through as the first stage's;
its rows keep their line numbers, which errors name.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, replace

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from jobs.config import InputColumns, InputConfig
from jobs.errors import InputError
from jobs.inputs import InputFile, Inputs, Listed, list_files, parquet_inputs, raise_all, read_footer, try_footer
from jobs.schema import LINE
from jobs.text_formats import has_content, read_run_text, run_format

TEXT_FORMATS = (".jsonl", ".tsv")
GZ = tuple(f"{s}.gz" for s in TEXT_FORMATS)
RUN_SUFFIXES = (".parquet", ".trec", ".run", ".txt", ".tsv", ".trec.gz", ".run.gz", ".txt.gz", ".tsv.gz")
TEXT_SUFFIXES = (".parquet", *TEXT_FORMATS, *GZ)
ROW_GROUP = 100_000  # rows per row group of a converted run (units read row ranges of it)


@dataclass(frozen=True)
class TextSource:
    """input.corpus or input.queries: files of id -> text."""

    key: str  # the config key, for messages
    fs: fsspec.AbstractFileSystem
    files: list[tuple[str, str]]  # (url, path)
    versions: list[str]  # fsspec ukey per file
    id_column: str  # Parquet files: the id, text, title and instruction columns (None: absent)
    text_column: str
    title_column: str | None = None
    instruction_column: str | None = None
    title_apart: str | None = None  # passages.title: the corpus's title, kept apart under this name

    def parquet_columns(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.id_column, self.text_column, self.title_column,
                                              self.instruction_column, self.title_apart) if c))


@dataclass(frozen=True)
class Texts:
    corpus: TextSource
    queries: TextSource

    @property
    def paths(self) -> list[str]:
        return [p for source in (self.corpus, self.queries) for _, p in source.files]

    @property
    def version(self) -> str:
        """Changes when any corpus or queries file does (checkpoints depend on it)."""
        parts = [(s.key, url, v) for s in (self.corpus, self.queries) for (url, _), v in zip(s.files, s.versions,
                                                                                               strict=True)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def discover_run(cfg: InputConfig, title_apart: str | None = None) -> Inputs:
    """The run files (footers read, or text files listed) and the corpus and queries."""
    listed = list_files(cfg.path, "input.path", RUN_SUFFIXES)
    formats = {p: run_format(listed.url(p), cfg.format) for p in listed.paths}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        examples = "; ".join(f"{k}: {next(listed.url(p) for p, f in formats.items() if f == k)}" for k in kinds)
        raise InputError(f"input.path: the run files are in {len(kinds)} formats ({examples}); give one format "
                         "per job, or set input.format")
    texts = discover_texts(cfg, title_apart)
    if kinds == ["parquet"]:
        inputs = parquet_inputs(cfg, listed)
        return replace(inputs, texts=texts, cfg=cfg)
    return _text_runs(cfg, listed, kinds[0], texts)


def _text_runs(cfg: InputConfig, listed: Listed, fmt: str, texts: Texts) -> Inputs:
    if cfg.extra_columns:
        raise InputError(f"input.extra_columns: {fmt} run files have no extra columns; "
                         "use a Parquet run to pass columns through")
    files = []
    for path in listed.paths:
        size = listed.fs.size(path)
        if not size:
            raise InputError(f"input.path {listed.url(path)!r}: the file is empty")
        files.append(InputFile(listed.url(path), path, size, 0, version=str(listed.fs.ukey(path)), format=fmt))
    columns = InputColumns(score="score" if fmt == "trec" else None, rank="rank")
    effective = cfg.model_copy(update={"columns": cfg.columns.model_copy(
        update=columns.model_dump(include={"query_id", "doc_id", "score", "rank"}))})
    return Inputs(listed.fs, files, ["query_id", "doc_id", *(["score"] if fmt == "trec" else []), "rank", LINE],
                  listed.dirs, texts, effective)


def discover_texts(cfg: InputConfig, title_apart: str | None = None) -> Texts:
    """The corpus and queries; `title_apart` (passages.title): the corpus's title column (or
    BEIR's "title" field), kept apart from the document's text."""
    c = cfg.columns
    assert cfg.corpus is not None and cfg.queries is not None  # (config validation)
    corpus = _source("input.corpus", cfg.corpus, c.doc_id, c.doc, c.title, None, "documents", title_apart)
    queries = _source("input.queries", cfg.queries, c.query_id, c.query, None, c.instruction, "queries")
    return Texts(corpus, queries)


def _source(key: str, spec: str | list[str], id_column: str, text_column: str, title: str | None,
            instruction: str | None, what: str, title_apart: str | None = None) -> TextSource:
    """A corpus or queries: every file listed, Parquet footers checked, none empty."""
    listed = list_files(spec, key, TEXT_SUFFIXES)
    source = TextSource(key, listed.fs, [(listed.url(p), p) for p in listed.paths],
                        [str(listed.fs.ukey(p)) for p in listed.paths], id_column, text_column, title, instruction,
                        title_apart)
    errors, rows = [], 0
    for url, path in source.files:
        if path.endswith(".parquet"):
            footer = try_footer(listed.fs, path)
            if isinstance(footer, str):
                errors.append(f"{key} {url!r}: not a readable Parquet file ({footer})")
                continue
            names = footer.schema.names
            id_key, text_key = ("doc_id", "doc") if what == "documents" else ("query_id", "query")
            errors += [f"{key} {url!r}: missing column {col!r}; present: {', '.join(names)} (set input.columns."
                       f"{field} to the {what}' {role} column)"
                       for field, role, col in ((id_key, "id", id_column), (text_key, "text", text_column),
                                                ("title", "title", title), ("instruction", "instruction", instruction))
                       if col and col not in names]
            if title_apart and title_apart not in names:
                errors.append(f"{key} {url!r}: missing column {title_apart!r} (passages.title); present: "
                              f"{', '.join(names)}")
            rows += footer.num_rows
        elif not path.endswith(TEXT_FORMATS + GZ):
            errors.append(f"{key} {url!r}: unknown format; accepted: .parquet, .jsonl (BEIR), .tsv (id<TAB>text), "
                          "each optionally .gz")
        elif title_apart and not path.endswith((".jsonl", ".jsonl.gz")):
            errors.append(f"{key} {url!r}: a TSV corpus has no titles for passages.title; use a BEIR corpus.jsonl "
                          "or a Parquet corpus with a title column")
        elif title_apart and title_apart != "title":
            errors.append(f"{key} {url!r}: a BEIR corpus's title is its \"title\" field; set passages.title: title")
        elif not rows:  # (one text file with a line is enough: the rest are read by the job)
            rows += bool(listed.fs.size(path)) and has_content(listed.fs, path, url)
    raise_all(errors)
    if not rows:
        raise InputError(f"{key} {spec!r}: holds no {what} (the files are empty or hold only blank lines)")
    return source


def converted_dir(checkpoints_root: str) -> str:
    return posixpath.join(checkpoints_root, "converted")


def convert_runs(inputs: Inputs, fs: fsspec.AbstractFileSystem, dest_dir: str) -> Inputs:
    """Text run files -> Parquet under `dest_dir` (on `fs`), each once: a file converted by an
    earlier attempt of this run (same text file version) is used as it is."""
    if all(f.format == "parquet" for f in inputs.files):
        return inputs
    fs.makedirs(dest_dir, exist_ok=True)
    dests = [posixpath.join(dest_dir, hashlib.sha256(f"{f.url}\0{f.version}".encode()).hexdigest()[:24] + ".parquet")
             for f in inputs.files]
    todo = [(f, d) for f, d in zip(inputs.files, dests, strict=True) if not fs.exists(d)]
    ray.get([_convert.remote(inputs.fs, f.path, f.url, f.format, fs, d) for f, d in todo])
    files = []
    for file, dest in zip(inputs.files, dests, strict=True):
        footer = read_footer(fs, dest)
        files.append(replace(file, path=dest, num_rows=footer.num_rows, row_groups=footer.row_groups,
                             pairs=footer.num_rows, format="parquet"))
    return replace(inputs, fs=fs, files=files)


@ray.remote
def _convert(src_fs: fsspec.AbstractFileSystem, path: str, url: str, fmt: str, fs: fsspec.AbstractFileSystem,
             dest: str) -> int:
    """One text run file -> one Parquet file, written whole (a temp name, then a rename)."""
    rows = 0
    score = [("score", pa.float64())] if fmt == "trec" else []
    schema = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), *score, ("rank", pa.int32()),
                        (LINE, pa.int64())])
    with fs.open(f"{dest}.tmp", "wb") as out, pq.ParquetWriter(out, schema) as writer:
        for table in read_run_text(src_fs, path, url, fmt):
            table = table.rename_columns([LINE if n == "line" else n for n in table.column_names])
            writer.write_table(table.select(schema.names).cast(schema), row_group_size=ROW_GROUP)
            rows += len(table)
    if not rows:
        raise InputError(f"input.path {url!r}: no run lines in the file")
    fs.mv(f"{dest}.tmp", dest)
    return rows
