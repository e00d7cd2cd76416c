"""Find the input Parquet files and check every file's schema before any work starts.

Only footers are read here (cheap, even on S3); row-level checks happen in the
normalize stage. Every problem found is reported at once, each naming its file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from jobs.config import InputConfig
from jobs.errors import InputError
from jobs.fs import hidden, visible_files

PATH_COLUMN = "path"  # read_parquet(include_paths=True) adds it: the row's source file

MAX_LISTED = 10
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    url: str  # as the user would write it (with s3:// where it applies)
    path: str  # as the filesystem takes it
    size: int
    num_rows: int
    row_groups: tuple[int, ...] = ()  # rows per row group (jobs.units reads row ranges)
    pairs: int = 0  # about how many pairs its rows hold (nested: candidates; 0: as many as rows)
    version: str = ""  # a run file converted to Parquet: the text file's fsspec ukey (else: path's)
    format: str = "parquet"  # run layout: trec or msmarco until converted (jobs.run_inputs)


@dataclass(frozen=True)
class Inputs:
    fs: fsspec.AbstractFileSystem
    files: list[InputFile]
    columns: list[str]  # what to read from every file
    dirs: list[str]  # directories input.path names (or globs search): outputs must stay out
    texts: Any = None  # run layout: the corpus and queries (jobs.run_inputs.Texts)
    cfg: InputConfig | None = None  # the input config as the files are read (a text run's columns)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files] + (self.texts.paths if self.texts else [])

    @property
    def version(self) -> str:
        """What else the scores depend on besides the input files: the run layout's texts."""
        return self.texts.version if self.texts else ""


def expand(fs: fsspec.AbstractFileSystem, url: str, path: str, key: str = "input.path",
           suffixes: tuple[str, ...] = (".parquet",)) -> list[str]:
    """Files named by one entry of `key`: a file, a directory (recursive, names ending with
    `suffixes`) or a glob."""
    if any(c in path for c in GLOB_CHARS):
        matches = [m for m in sorted(fs.glob(path)) if not hidden(posixpath.basename(m))]
        dirs = [m for m in matches if fs.isdir(m)]
        files = [m for m in matches if m not in dirs]
        return files + [f for d in dirs for f in expand(fs, url, d, key, suffixes)]
    if fs.isdir(path):
        return visible_files(fs, path, suffixes)
    if fs.isfile(path):
        return [path]
    raise InputError(f"{key} {url!r}: no such file or directory")


@dataclass(frozen=True)
class Footer:
    schema: pa.Schema
    num_rows: int
    size: int
    row_groups: tuple[int, ...]
    leaf_values: dict[str, int]  # per column path ("candidates.list.element.doc_id"): values stored


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> Footer:
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        leaves: dict[str, int] = {}
        for group in groups:
            for j in range(group.num_columns):
                column = group.column(j)
                leaves[column.path_in_schema] = leaves.get(column.path_in_schema, 0) + column.num_values
        return Footer(meta.schema.to_arrow_schema(), meta.num_rows, f.size,
                      tuple(g.num_rows for g in groups), leaves)


def _pairs(cfg: InputConfig, footer: Footer) -> int:
    """Pairs the file holds: one per row (flat), or about one per candidate (nested)."""
    if cfg.layout == "flat":
        return footer.num_rows
    prefix = f"{cfg.columns.candidates}."
    return max((n for p, n in footer.leaf_values.items() if p.startswith(prefix)), default=footer.num_rows)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_text(t: pa.DataType) -> bool:
    """Strings, or binary holding UTF-8 (values that do not decode are reported per row)."""
    return _is_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_string(t) or pa.types.is_integer(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


ID_TYPES = "string, or an integer type (ids are read as strings)"
TEXT_TYPES = "string, large_string, or binary holding UTF-8"
def _or_null(check: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    """An all-null column passes the type check; its rows then fail the row checks."""
    return lambda t: pa.types.is_null(t) or check(t)


RULES = {  # canonical name -> (type check, accepted types in words)
    "query_id": (_or_null(_is_id), ID_TYPES), "doc_id": (_or_null(_is_id), ID_TYPES),
    "query": (_or_null(_is_text), TEXT_TYPES), "doc": (_or_null(_is_text), TEXT_TYPES),
    "score": (_or_null(_is_number), "a float or integer type"),
    "rank": (_or_null(pa.types.is_integer), "an integer type"),
    "instruction": (_or_null(_is_text), TEXT_TYPES),
}


def _check_fields(where: str, fields: dict[str, pa.DataType], wanted: dict[str, str]) -> list[str]:
    """Check `wanted` (canonical -> input name) against the available `fields`."""
    errors = []
    for canonical, name in wanted.items():
        if name not in fields:
            errors.append(f"{where}: missing column {name!r} ({canonical}); "
                          f"present: {', '.join(fields) or 'none'}")
            continue
        check, accepted = RULES[canonical]
        if not check(fields[name]):
            errors.append(f"{where}: column {name!r} ({canonical}) has type {fields[name]}; "
                          f"accepted: {accepted}")
    return errors


def _schema_errors(cfg: InputConfig, url: str, schema: pa.Schema) -> list[str]:
    cols = cfg.columns
    top = {f.name: f.type for f in schema}
    texts = cfg.layout != "run"  # (the run layout's texts are in the corpus and queries)
    pair_level = {"doc_id": cols.doc_id} | ({"doc": cols.doc} if texts else {})
    pair_level |= {k: v for k, v in (("score", cols.score), ("rank", cols.rank)) if v}
    query_level = {"query_id": cols.query_id} | ({"query": cols.query} if texts else {})
    if cols.instruction and texts:
        query_level["instruction"] = cols.instruction
    if cfg.layout != "nested":
        errors = _check_fields(url, top, query_level | pair_level)
        known = top
    else:
        errors = _check_fields(url, top, query_level)
        ctype = top.get(cols.candidates)
        if ctype is None or not (pa.types.is_list(ctype) or pa.types.is_large_list(ctype)) \
                or not pa.types.is_struct(ctype.value_type):
            found = f"type {ctype}" if ctype is not None else "no such column"
            return [*errors, f"{url}: nested layout needs column {cols.candidates!r} of type "
                             f"list<struct<{cols.doc_id}, {cols.doc}, ...>>; found {found}"]
        inner = {f.name: f.type for f in ctype.value_type}
        errors += _check_fields(f"{url} ({cols.candidates} items)", inner, pair_level)
        known = top | inner
    for name in cfg.extra_columns:
        if name not in known:
            errors.append(f"{url}: missing column {name!r} (input.extra_columns or passages.title); "
                          f"present: {', '.join(known)}")
    return errors


def _read_columns(cfg: InputConfig) -> list[str]:
    cols = cfg.columns
    if cfg.layout == "run":
        names = [cols.query_id, cols.doc_id, cols.score, cols.rank]
    elif cfg.layout == "flat":
        names = [cols.query_id, cols.query, cols.doc_id, cols.doc, cols.score, cols.rank, cols.instruction]
    else:
        names = [cols.query_id, cols.query, cols.candidates, cols.instruction]
    return list(dict.fromkeys(n for n in names + list(cfg.extra_columns) if n))


@dataclass(frozen=True)
class Listed:
    """The files one config key names."""

    fs: fsspec.AbstractFileSystem
    paths: list[str]
    dirs: list[str]  # directories it names (or globs search)

    def url(self, path: str) -> str:
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)


def list_files(spec: str | list[str], key: str, suffixes: tuple[str, ...] = (".parquet",)) -> Listed:
    """The files `spec` (the value of config key `key`) names: files, directories (searched
    recursively for names ending with `suffixes`), globs, on one filesystem."""
    urls = [spec] if isinstance(spec, str) else list(spec)
    if not urls:
        raise InputError(f"{key}: empty list; give a file, directory, glob or s3:// URL")
    fs, _ = fsspec.core.url_to_fs(urls[0])
    paths: list[str] = []
    dirs: list[str] = []
    for url in urls:
        url_fs, path = fsspec.core.url_to_fs(url)
        if url_fs.protocol != fs.protocol:
            raise InputError(f"{key}: {url!r} is on another filesystem than {urls[0]!r}")
        if any(c in path for c in GLOB_CHARS):
            dirs.append(posixpath.dirname(path[: min(path.index(c) for c in GLOB_CHARS if c in path)]))
        elif fs.isdir(path):
            dirs.append(path)
        found = expand(fs, url, path, key, suffixes)
        if not found:
            raise InputError(f"{key} {url!r}: no files found (looked for {', '.join('*' + s for s in suffixes)}, "
                             "skipping names that start with _ or .)")
        paths += found
    return Listed(fs, list(dict.fromkeys(paths)), dirs)


def discover(cfg: InputConfig, title_apart: str | None = None) -> Inputs:
    """List the input files, read their footers, and check their schemas (the run layout:
    jobs.run_inputs, which also finds the corpus and queries; `title_apart`: passages.title,
    the corpus's title kept apart from the text).

    Raises InputError listing every unreadable file and every schema problem.
    """
    if cfg.layout == "run":
        from jobs.run_inputs import discover_run

        return discover_run(cfg, title_apart)
    return parquet_inputs(cfg, list_files(cfg.path, "input.path"))


def input_columns(cfg: InputConfig) -> list[str]:
    """What to read from every input file."""
    columns = _read_columns(cfg)
    if PATH_COLUMN in columns:
        raise InputError(f"input.columns: the job reads each row's source file into a column named "
                         f"{PATH_COLUMN!r}; rename the input column {PATH_COLUMN!r} (e.g. to doc_path)")
    return columns


def parquet_inputs(cfg: InputConfig, listed: Listed) -> Inputs:
    """Read the footers of the Parquet files `listed` and check their schemas."""
    fs, columns = listed.fs, input_columns(cfg)
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(lambda p: try_footer(fs, p), listed.paths))
    errors, files = [], []
    for path, footer in zip(listed.paths, footers, strict=True):
        url = listed.url(path)
        if isinstance(footer, str):
            errors.append(f"{url}: not a readable Parquet file ({footer})")
            continue
        errors += _schema_errors(cfg, url, footer.schema)
        files.append(InputFile(url, path, footer.size, footer.num_rows, footer.row_groups, _pairs(cfg, footer)))
    raise_all(errors)
    if sum(f.num_rows for f in files) == 0:
        raise InputError(f"input.path {cfg.path!r}: the {len(files)} Parquet file(s) hold 0 rows")
    return Inputs(fs, files, columns, listed.dirs, cfg=cfg)


def raise_all(errors: list[str]) -> None:
    """Raise an InputError listing `errors` (up to MAX_LISTED), if there are any."""
    if errors:
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise InputError(f"{len(errors)} input problem(s):\n  - " + "\n  - ".join(errors[:MAX_LISTED]) + more)


def try_footer(fs: fsspec.AbstractFileSystem, path: str) -> Footer | str:
    try:
        return read_footer(fs, path)
    except Exception as e:  # noqa: BLE001 - reported per file with its cause
        return f"{type(e).__name__}: {e}"
