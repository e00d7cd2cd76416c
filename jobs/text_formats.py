"""Readers of the text formats retrievers and IR data sets ship, as pyarrow Tables.

    runs      TREC (`qid Q0 docno rank score tag`, whitespace-separated) and
              MS MARCO (`qid<TAB>pid<TAB>rank`)
    texts     BEIR JSONL (corpus `{"_id", "title", "text"}`, queries `{"_id", "text"}`)
              and TSV (`id<TAB>text`: MS MARCO collection and queries)
    qrels     TREC (`qid iter docno rel`, whitespace-separated; MS MARCO's qrels.*.tsv)
              and BEIR (`query-id<TAB>corpus-id<TAB>score` header, then tab-separated rows)

Files are opened with fsspec (local paths, s3:// URLs); a `.gz` suffix is read through
gzip. The runs and texts stream: the file is read in blocks of whole lines of about
BLOCK_BYTES, each parsed into one table, so no file is ever whole in memory. Every table
carries `line`, the 1-based line number in the (uncompressed) file. Blank lines (only
spaces, tabs, CR) are skipped; line numbers stay true. Ids are strings.

Each block is parsed by pyarrow (its CSV reader with the format's delimiter and quoting
off, or its JSON reader). Only when that fails, or when the block holds something the
fast reader does not model (a blank line made of spaces, an id written as a JSON number
next to string ids, text with tabs, CR inside a line), the block is parsed again line by
line in Python. That parser is the definition of the format: it either names the first
bad line (`<url> line <n>: expected ..., got ...`, as jobs.errors.InputError) or returns
the table.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, NamedTuple

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from jobs.errors import InputError

BLOCK_BYTES = 16 << 20  # about 370k TREC lines, 15k documents of 1 KB

RUN_FORMATS = ("parquet", "trec", "msmarco")
RUN_EXTENSIONS = {".parquet": "parquet", ".trec": "trec", ".run": "trec", ".txt": "trec", ".tsv": "msmarco"}
TEXT_EXTENSIONS = (".jsonl", ".tsv")
BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")

# What Python's str.strip() removes (str.isspace()); tests check it against Python.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_ASCII_SPACE = b" \t\n\r\x0b\x0c"  # bytes.split() and bytes.strip() separate on these
_NOT_SPACE = np.array([i not in _ASCII_SPACE for i in range(256)], np.uint8)
_SPACES_TO_BLANK = bytes.maketrans(b"\t\r\x0b\x0c", b"    ")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_ARROW_TYPES = {"id": pa.string(), "text": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
                "float64": pa.float64()}
_INT_RANGE = {"int32": 2**31, "int64": 2**63}


@dataclass(frozen=True)
class _Layout:
    """A delimited line format: `count` fields, tab-separated or separated by any run of
    spaces and tabs; `columns` are (output column, field index, kind), where kind is
    id (a non-empty string), text (any string: the last field, holding the rest of the
    line, tabs included), int32, int64 or float64."""

    expected: str
    count: int
    tab: bool
    columns: tuple[tuple[str, int, str], ...]

    @property
    def rest(self) -> bool:
        return self.columns[-1][2] == "text"


TREC_RUN = _Layout("6 whitespace-separated fields (qid Q0 docno rank score tag)", 6, False,
                   (("query_id", 0, "id"), ("doc_id", 2, "id"), ("rank", 3, "int32"), ("score", 4, "float64")))
MSMARCO_RUN = _Layout("3 tab-separated fields (qid<TAB>pid<TAB>rank)", 3, True,
                      (("query_id", 0, "id"), ("doc_id", 1, "id"), ("rank", 2, "int32")))
TSV_TEXTS = _Layout("2 tab-separated fields (id<TAB>text)", 2, True, (("id", 0, "id"), ("text", 1, "text")))
TREC_QRELS = _Layout("4 whitespace-separated fields (qid iter docno rel)", 4, False,
                     (("query_id", 0, "id"), ("doc_id", 2, "id"), ("relevance", 3, "int64")))
BEIR_QRELS = _Layout("3 tab-separated fields (query-id<TAB>corpus-id<TAB>score)", 3, True,
                     (("query_id", 0, "id"), ("doc_id", 1, "id"), ("relevance", 2, "int64")))

RUN_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int32()),
                        ("score", pa.float64()), ("line", pa.int64())])
TEXT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("line", pa.int64())])
QRELS_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("relevance", pa.int64())])


def _error(url: str, line: int, message: str) -> InputError:
    return InputError(f"{url} line {line}: {message}")


def _shown(value: str | bytes, limit: int = 40) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _suffix(path: str) -> str:
    """The extension that names the format, lower case, ignoring a trailing .gz."""
    name = posixpath.basename(path).lower().removesuffix(".gz")
    return posixpath.splitext(name)[1]


# --- Reading blocks of whole lines ------------------------------------------------


class _Block(NamedTuple):
    """Whole lines of a file (the last one may lack its newline at the end of the file)."""

    data: bytes
    first_line: int  # the number of its first line in the file, from 1
    lines: int

    def numbers(self) -> np.ndarray:
        return np.arange(self.first_line, self.first_line + self.lines, dtype=np.int64)

    def split(self) -> Iterator[tuple[int, bytes]]:
        """(line number, line without its newline), for every line."""
        lines = self.data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return enumerate(lines, self.first_line)


def _blocks(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Iterator[_Block]:
    """The file in blocks of about BLOCK_BYTES; a .gz file through gzip. A UTF-8 byte
    order mark at the start is dropped."""
    try:
        with fs.open(path, "rb") as raw:
            if path.lower().endswith(".gz"):
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    yield from _split_blocks(f, url)
            else:
                yield from _split_blocks(raw, url)
    except FileNotFoundError as e:
        raise InputError(f"{url}: no such file") from e


def has_content(fs: fsspec.AbstractFileSystem, path: str, url: str) -> bool:
    """Whether the file holds anything but whitespace (a .gz file decompressed), reading no
    further than its first non-blank block."""
    return any(block.data.strip() for block in _blocks(fs, path, url))


def _split_blocks(f: BinaryIO, url: str) -> Iterator[_Block]:
    line = 1
    while True:
        try:
            data = f.read(BLOCK_BYTES)
            if data and not data.endswith(b"\n"):
                data += f.readline()  # complete the last line
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise InputError(f"{url}: not a valid gzip file ({e})") from e
        if line == 1:
            data = data.removeprefix(b"\xef\xbb\xbf")
        if not data:
            return
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        yield _Block(data, line, lines)
        line += lines


def _kept_lines(block: _Block, data: bytes, rows: int, spaces_blank: bool) -> np.ndarray | None:
    """Line numbers of the `rows` rows a reader that skips blank lines made of `data` (the
    block's data, or a copy with the same lines): blank lines are empty ones, or with
    `spaces_blank` also those of only spaces, tabs and CRs. None when the count differs."""
    numbers = block.numbers()
    if rows == block.lines:
        return numbers
    buf = np.frombuffer(data, np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(buf == 10)[: block.lines - 1] + 1))
    if spaces_blank:  # every line holds at least one byte: its newline, or text at the end
        kept = np.maximum.reduceat(_NOT_SPACE[buf], starts).astype(bool)
    else:
        kept = buf[starts] != 10
    numbers = numbers[kept]
    return numbers if len(numbers) == rows else None


# --- Delimited formats ------------------------------------------------------------------


def _fast_delimited(block: _Block, layout: _Layout) -> pa.Table | None:
    """The block read by pyarrow's CSV reader, or None where it cannot say."""
    data = block.data
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if layout.tab and b"\r" in data:  # a lone CR would end a CSV row
            return None
    if not layout.tab and any(c in data for c in (b"\t", b"\r", b"\x0b", b"\x0c")):
        data = data.translate(_SPACES_TO_BLANK)  # all separate fields; runs of them fail below
    names = [f"f{i}" for i in range(layout.count)]
    types = {names[i]: _ARROW_TYPES[kind] for _, i, kind in layout.columns}
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=names, block_size=4 << 20),
            parse_options=pcsv.ParseOptions(delimiter="\t" if layout.tab else " ", quote_char=False,
                                            double_quote=False, escape_char=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=list(types), null_values=[],
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None
    numbers = _kept_lines(block, data, table.num_rows, spaces_blank=False)
    if numbers is None:
        return None
    columns = {}
    for name, i, kind in layout.columns:
        column = table[names[i]]
        if kind == "id" and table.num_rows and pc.min(pc.binary_length(column)).as_py() == 0:
            return None  # an empty id, or a line of tabs: let the line parser say which
        columns[name] = column
    return pa.table({**columns, "line": pa.array(numbers)})


def _field(raw: bytes, name: str, kind: str, url: str, line: int) -> str | int | float:
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise _error(url, line, f"{name} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if kind == "text":
        return text
    if kind == "id":
        if not text:
            raise _error(url, line, f"empty {name}")
        return text
    value = text.strip()
    if kind == "float64":
        try:
            if value.isascii() and "_" not in value:
                return float(value)
        except ValueError:
            pass
        raise _error(url, line, f"{name} must be a number, got {_shown(text)}")
    bound = _INT_RANGE[kind]
    if not _INTEGER.fullmatch(value) or not -bound <= int(value) < bound:
        raise _error(url, line, f"{name} must be an integer ({kind}), got {_shown(text)}")
    return int(value)


def _python_delimited(block: _Block, layout: _Layout, url: str) -> pa.Table:
    """The format's definition, line by line: the block's table, or an error naming its first bad line."""
    values: list[list[str | int | float]] = [[] for _ in layout.columns]
    numbers: list[int] = []
    for line, raw in block.split():
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        if layout.tab:
            fields = raw.split(b"\t", layout.count - 1 if layout.rest else -1)
        else:
            fields = raw.split()
        if len(fields) != layout.count:
            raise _error(url, line, f"expected {layout.expected}, got {len(fields)}")
        for column, (name, i, kind) in zip(values, layout.columns, strict=True):
            column.append(_field(fields[i], name, kind, url, line))
        numbers.append(line)
    columns = {name: pa.array(column, _ARROW_TYPES[kind])
               for column, (name, _, kind) in zip(values, layout.columns, strict=True)}
    return pa.table({**columns, "line": pa.array(numbers, pa.int64())})


def _delimited(block: _Block, layout: _Layout, url: str) -> pa.Table:
    table = _fast_delimited(block, layout)
    return table if table is not None else _python_delimited(block, layout, url)


def _read_delimited(fs: fsspec.AbstractFileSystem, path: str, url: str, layout: _Layout) -> Iterator[pa.Table]:
    for block in _blocks(fs, path, url):
        yield _delimited(block, layout, url)


# --- Runs ------------------------------------------------------------------------------


def run_format(path: str, fmt: str | None) -> Literal["parquet", "trec", "msmarco"]:
    """The run format: `fmt` (input.format) when given, else from the extension, ignoring a
    trailing .gz: .parquet; .trec, .run, .txt (TREC); .tsv (MS MARCO)."""
    if fmt is not None:
        if fmt not in RUN_FORMATS:
            raise InputError(f"input.format {fmt!r}: accepted values are {', '.join(RUN_FORMATS)}")
        return fmt  # type: ignore[return-value]
    suffix = _suffix(path)
    if suffix == ".parquet" and path.lower().endswith(".gz"):
        raise InputError(f"{path}: a gzip-compressed Parquet file cannot be read; Parquet compresses its own "
                         "pages, so give the .parquet file as it is")
    if suffix not in RUN_EXTENSIONS:
        raise InputError(f"{path}: cannot tell the run's format from its name; accepted extensions: .parquet, "
                         ".trec, .run, .txt (TREC run), .tsv (MS MARCO run), the text ones optionally "
                         "gzip-compressed (.gz); or set input.format to one of parquet, trec, msmarco")
    return RUN_EXTENSIONS[suffix]  # type: ignore[return-value]


def read_run_text(fs: fsspec.AbstractFileSystem, path: str, url: str,
                  fmt: Literal["trec", "msmarco"]) -> Iterator[pa.Table]:
    """A TREC or MS MARCO run, as tables of query_id, doc_id, rank (int32), score (float64,
    null for MS MARCO runs) and line, in file order, one per block of about BLOCK_BYTES."""
    if fmt not in ("trec", "msmarco"):
        raise ValueError(f"read_run_text reads trec or msmarco runs, not {fmt!r}")
    layout = TREC_RUN if fmt == "trec" else MSMARCO_RUN
    for table in _read_delimited(fs, path, url, layout):
        if fmt == "msmarco":
            table = table.add_column(3, "score", pa.nulls(table.num_rows, pa.float64()))
        yield table.select(RUN_SCHEMA.names)


# --- Corpus and queries --------------------------------------------------------------------


def _json_schema(kind: str, id_type: pa.DataType) -> pa.Schema:
    fields = [("_id", id_type), ("text", pa.string())]
    return pa.schema([*fields, ("title", pa.string())] if kind == "corpus" else fields)


def _document(title: pa.ChunkedArray, text: pa.ChunkedArray) -> pa.ChunkedArray:
    """(title + " " + text).strip(), as BEIR's reranker builds it; a null title or text is ""."""
    joined = pc.binary_join_element_wise(pc.fill_null(title, ""), pc.fill_null(text, ""), " ")
    return pc.utf8_trim(joined, characters=PY_WHITESPACE)


class _JsonReader:
    """BEIR JSONL blocks. The id type that parsed the last block (string, or int64 for
    numeric ids) is tried first on the next. `title_apart`: a corpus's title is its own
    column ("" where missing), the text the "text" field alone."""

    def __init__(self, kind: str, url: str, title_apart: bool = False) -> None:
        self.kind, self.url, self.title_apart = kind, url, title_apart
        self.id_types = [pa.string(), pa.int64()]

    def __call__(self, block: _Block) -> pa.Table:
        table = self._fast(block)
        return table if table is not None else self._python(block)

    def _fast(self, block: _Block) -> pa.Table | None:
        for id_type in list(self.id_types):
            try:
                table = pjson.read_json(
                    pa.py_buffer(block.data), read_options=pjson.ReadOptions(block_size=4 << 20),
                    parse_options=pjson.ParseOptions(explicit_schema=_json_schema(self.kind, id_type),
                                                     unexpected_field_behavior="ignore"))
            except pa.ArrowInvalid:
                continue
            self.id_types.sort(key=lambda t: t != id_type)
            numbers = _kept_lines(block, block.data, table.num_rows, spaces_blank=True)
            ids = table["_id"].cast(pa.string())
            if numbers is None or ids.null_count or (len(ids) and pc.min(pc.binary_length(ids)).as_py() == 0):
                return None
            apart = {}
            if self.kind == "corpus" and self.title_apart:
                text = pc.fill_null(table["text"], "")
                apart = {"title": pc.fill_null(table["title"], "")}
            elif self.kind == "corpus":
                text = _document(table["title"], table["text"])
            elif table["text"].null_count:
                return None
            else:
                text = table["text"]
            return pa.table({"id": ids, "text": text, **apart, "line": pa.array(numbers)})
        return None

    def _python(self, block: _Block) -> pa.Table:
        ids: list[str] = []
        texts: list[str] = []
        titles: list[str] = []
        numbers: list[int] = []
        for line, raw in block.split():
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode())
            except UnicodeDecodeError as e:
                raise _error(self.url, line, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise _error(self.url, line, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise _error(self.url, line, f"expected a JSON object, got {_shown(raw)}")
            ids.append(self._id(record, line))
            texts.append(self._text(record, line))
            titles.append(record.get("title") or "")
            numbers.append(line)
        apart = {"title": pa.array(titles, pa.string())} if self.title_apart and self.kind == "corpus" else {}
        return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()), **apart,
                         "line": pa.array(numbers, pa.int64())})

    def _id(self, record: dict, line: int) -> str:
        if record.get("_id") is None:
            raise _error(self.url, line, 'expected an "_id" field')
        value = record["_id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _error(self.url, line, f'"_id" must be a string or an integer, got {json.dumps(value)[:40]}')
        if value == "":
            raise _error(self.url, line, 'empty "_id"')
        return str(value)

    def _text(self, record: dict, line: int) -> str:
        names = ("title", "text") if self.kind == "corpus" else ("text",)
        for name in names:
            if record.get(name) is not None and not isinstance(record[name], str):
                raise _error(self.url, line, f'"{name}" must be a string, got {json.dumps(record[name])[:40]}')
        if self.kind == "queries":
            if record.get("text") is None:
                raise _error(self.url, line, 'expected a "text" field')
            return record["text"]
        if self.title_apart:
            return record.get("text") or ""
        return ((record.get("title") or "") + " " + (record.get("text") or "")).strip()


def read_texts(fs: fsspec.AbstractFileSystem, path: str, url: str,
               kind: Literal["corpus", "queries"], title_apart: bool = False) -> Iterator[pa.Table]:
    """A corpus or queries file, as tables of id, text and line, one per block.

    .jsonl (BEIR): corpus lines `{"_id", "title", "text", ...}` give the text
    `(title + " " + text).strip()` (a missing or null title or text counts as ""), queries
    lines `{"_id", "text", ...}` their text as it is; a numeric `_id` becomes str(int).
    .tsv: `id<TAB>text` (the text is the rest of the line, and may be empty). Either may be
    gzip-compressed (.gz). `title_apart` (a BEIR corpus): the title in its own column, the
    text the "text" field alone.
    """
    if kind not in ("corpus", "queries"):
        raise ValueError(f"read_texts reads a corpus or queries, not {kind!r}")
    suffix = _suffix(path)
    if suffix not in TEXT_EXTENSIONS:
        raise InputError(f"{url}: cannot tell the {kind} file's format from its name; accepted extensions: "
                         ".jsonl (BEIR), .tsv (id<TAB>text), either optionally gzip-compressed (.jsonl.gz, .tsv.gz)")
    if suffix == ".tsv":
        yield from _read_delimited(fs, path, url, TSV_TEXTS)
        return
    reader = _JsonReader(kind, url, title_apart)
    for block in _blocks(fs, path, url):
        yield reader(block)


# --- Qrels ------------------------------------------------------------------------------------


def read_qrels_text(fs: fsspec.AbstractFileSystem, path: str, url: str) -> pa.Table:
    """Text qrels, told apart by their first line: under a `query-id<TAB>corpus-id<TAB>score`
    header, BEIR's (3 tab-separated fields); else TREC's (`qid iter docno rel`, 4 fields
    separated by spaces or tabs, which includes MS MARCO's qrels.*.tsv)."""
    layout: _Layout | None = None
    tables = []
    for block in _blocks(fs, path, url):
        if layout is None:
            layout, block = _qrels_layout(block, url)
        if layout is not None:
            tables.append(_delimited(block, layout, url).select(QRELS_SCHEMA.names))
    return pa.concat_tables(tables).combine_chunks() if tables else QRELS_SCHEMA.empty_table()


def _qrels_layout(block: _Block, url: str) -> tuple[_Layout | None, _Block]:
    """The qrels' layout, from the first non-blank line (None while there is none), and the
    block without BEIR's header."""
    start = 0
    for line, raw in block.split():
        start += len(raw) + 1
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        if raw.split(b"\t") == [h.encode() for h in BEIR_QRELS_HEADER]:
            skipped = line - block.first_line + 1
            return BEIR_QRELS, _Block(block.data[start:], line + 1, block.lines - skipped)
        if len(raw.split()) != TREC_QRELS.count:
            raise _error(url, line, f"expected TREC qrels ({TREC_QRELS.expected}) or BEIR qrels (a header "
                                    f"query-id<TAB>corpus-id<TAB>score, then {BEIR_QRELS.expected}), "
                                    f"got {len(raw.split())} whitespace-separated fields")
        return TREC_QRELS, block
    return None, block
