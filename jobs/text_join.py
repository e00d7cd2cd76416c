"""The run layout's texts, joined to its pairs on the cluster: no process holds the corpus,
the queries or the run, and each text is read once.

    pairs (ids) ─┐
    queries ─────┴─ hash partitions by query_id ─► join ─┐
    corpus ──────────────────────────────────────────────┴─ hash partitions by doc_id ─► join ─► pairs with texts

Each join is a union of the pairs and the texts, hash-partitioned on the key with Ray
Data's shuffle (`repartition(keys=..., sort=True)`: every row of a key lands in one block,
sorted by key; the contract `groupby().map_groups()` rests on), then one vectorised call per
partition. So a document's text travels once, to the one partition its pairs are in, and
leaves it with its pairs side by side: the scorers see a document's pairs together and
tokenize its text once per batch, not once per query that retrieved it.

Bytes moved per pair, for T-byte documents retrieved by R queries each, Q-byte queries and
I bytes of ids and first-stage columns: the pairs' ids twice (2I), the corpus once (T/R),
the queries once (Q/C, C candidates a query), and the joined texts to the scorers (T + Q),
as the flat layout moves them. Serving the corpus from shard actors instead (as the score
cache is served) would move T + Q per pair too, but tokenizes a document once per pair.

A pair whose id is not in the corpus or the queries is invalid (input.on_invalid); a
query id twice, or a document id twice with different texts, is an error naming both places.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from jobs.errors import InputError
from jobs.run_inputs import Texts, TextSource
from jobs.schema import DOC, DOC_ID, INSTRUCTION, QUERY, QUERY_ID, SKIP_REASON
from jobs.text_formats import read_texts

SIDE = "_side"  # 0: a pair, 1: a text
SOURCE = "_text_source"  # a text's file and line (row, for Parquet), for duplicate errors
PAIRS_PER_PARTITION = 1_000_000
TEXT_BYTES_PER_PARTITION = 256 << 20


class TextDatasource(Datasource):
    """The texts of a corpus or queries: one read task per file, rows (id, text[, instruction],
    source: the file and line, or row for Parquet, 0-based)."""

    def __init__(self, source: TextSource, kind: str, key: str, text: str) -> None:
        super().__init__()
        self.source, self.kind, self.key, self.text = source, kind, key, text

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object = None) -> list[ReadTask]:
        return [ReadTask(lambda url=url, path=path: self._read(url, path),
                         BlockMetadata(num_rows=None, size_bytes=None, input_files=[url], exec_stats=None))
                for url, path in self.source.files]

    def _read(self, url: str, path: str) -> Iterator[pa.Table]:
        if path.endswith(".parquet"):
            tables, unit = self._parquet(path), " row "
        else:
            tables, unit = read_texts(self.source.fs, path, url, self.kind, bool(self.source.title_apart)), " line "
        for table in tables:
            where = pc.binary_join_element_wise(pa.scalar(url), pc.cast(table["line"], pa.string()), unit)
            yield table.drop_columns(["line"]).append_column("source", where)

    def _parquet(self, path: str) -> Iterator[pa.Table]:
        s = self.source
        with s.fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            start = 0
            for group in range(parquet.num_row_groups):
                raw = parquet.read_row_group(group, columns=s.parquet_columns())
                text = raw[s.text_column].cast(pa.string())
                if s.title_column:  # (as BEIR builds a document: title, a space, text; stripped)
                    title = pc.fill_null(raw[s.title_column].cast(pa.string()), "")
                    text = pc.utf8_trim_whitespace(pc.binary_join_element_wise(title, pc.fill_null(text, ""), " "))
                cols = {"id": raw[s.id_column].cast(pa.string()), "text": text,
                        "line": pa.array(np.arange(start, start + len(raw)))}
                if s.instruction_column:
                    cols[INSTRUCTION] = raw[s.instruction_column].cast(pa.string())
                if s.title_apart:
                    cols["title"] = pc.fill_null(raw[s.title_apart].cast(pa.string()), "")
                start += len(raw)
                yield pa.table(cols)


def _texts(source: TextSource, kind: str, key: str, text: str, schema: pa.Schema) -> ray.data.Dataset:
    """A corpus or queries as rows of the join, in its union `schema`."""
    datasource = TextDatasource(source, kind, key, text)
    ds = ray.data.read_datasource(datasource, override_num_blocks=len(source.files))
    return ds.map_batches(_tag_texts, batch_format="pyarrow", batch_size=None,
                          fn_kwargs={"key": key, "text": text, "schema": schema, "title": source.title_apart})


def _tag_texts(table: pa.Table, key: str, text: str, schema: pa.Schema, title: str | None) -> pa.Table:
    cols = {key: table["id"], text: table["text"], SIDE: pa.array(np.ones(len(table), np.int8)),
            SOURCE: table["source"]}
    if INSTRUCTION in table.column_names and INSTRUCTION in schema.names:
        cols[INSTRUCTION] = table[INSTRUCTION]
    if title:  # (passages.title: the corpus's title under its name)
        cols[title] = table["title"]
    return conform(pa.table(cols), schema)


def _tag_pairs(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return conform(table.append_column(SIDE, pa.array(np.zeros(len(table), np.int8))), schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with every column of `schema`, in its order and types (nulls where it has none):
    the two sides of a join share one schema, as Ray Data's shuffle concatenates them."""
    return pa.table([table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                     for f in schema], schema=schema)


def partitions(pairs: int, source: TextSource) -> int:
    """Partitions of one join: about a million pairs and 256 MiB of texts each, at least one."""
    text_bytes = sum(source.fs.size(p) for _, p in source.files)
    return max(1, math.ceil(pairs / PAIRS_PER_PARTITION), math.ceil(text_bytes / TEXT_BYTES_PER_PARTITION))


def join_texts(pairs: ray.data.Dataset, texts: Texts, num_pairs: int, schema: pa.Schema) -> ray.data.Dataset:
    """The pairs (normalized ids, of `schema`) with their query and document texts, grouped by
    document."""
    joins = ((texts.queries, "queries", QUERY_ID, QUERY), (texts.corpus, "corpus", DOC_ID, DOC))
    for source, kind, key, text in joins:
        extra = ([pa.field(INSTRUCTION, pa.string())] if text == QUERY and source.instruction_column else
                 [pa.field(source.title_apart, pa.string())] if source.title_apart else [])
        joined = pa.schema([*schema, pa.field(text, pa.string()), *extra])
        union = pa.schema([*joined, pa.field(SOURCE, pa.string()), pa.field(SIDE, pa.int8())])
        tagged = pairs.map_batches(_tag_pairs, batch_format="pyarrow", batch_size=None, fn_kwargs={"schema": union})
        pairs = tagged.union(_texts(source, kind, key, text, union)).repartition(
            partitions(num_pairs, source), keys=[key], sort=True,
        ).map_batches(join_partition, batch_format="pyarrow", batch_size=None,
                      fn_kwargs={"key": key, "text": text, "source_key": source.key, "extra": [f.name for f in extra]})
        schema = joined
    return pairs


def join_partition(block: pa.Table, key: str, text: str, source_key: str, extra: list[str] | None = None) -> pa.Table:
    """One hash partition (every row of its keys, sorted by key): its pairs, each with the
    text of its key and the `extra` columns that come with it (a query's instruction, a
    document's passages.title), null with a skip reason where the texts lack the key."""
    is_text = pc.equal(block[SIDE], 1)
    extra = extra or []
    texts = _distinct(block.filter(is_text).select([key, text, *extra, SOURCE]), key, source_key,
                      same_text_ok=text == DOC)
    pairs = block.filter(pc.invert(is_text)).drop_columns([text, *extra, SOURCE, SIDE])
    at = pc.index_in(pairs[key], value_set=texts[key])
    for column in (text, *extra):
        pairs = pairs.append_column(column, texts[column].take(at))
    missing = pc.and_(pc.is_null(at), pc.is_null(pairs[SKIP_REASON]))
    reasons = pc.if_else(missing, pa.scalar(f"{key} not in {source_key}"), pairs[SKIP_REASON])
    return pairs.set_column(pairs.column_names.index(SKIP_REASON), SKIP_REASON, reasons)


def _distinct(texts: pa.Table, key: str, source_key: str, same_text_ok: bool) -> pa.Table:
    """One row per key. A key twice is an error naming both places: always for queries, and
    in a corpus when the texts differ (corpora often repeat a document word for word)."""
    if len(pc.unique(texts[key])) == len(texts):
        return texts
    ids = texts[key].to_pylist()
    values = texts.select([c for c in texts.column_names if c not in (key, SOURCE)]).to_pylist()
    where = texts[SOURCE].to_pylist()
    first: dict[Any, int] = {}
    keep = []
    for i, id_ in enumerate(ids):
        if id_ not in first:
            first[id_] = i
            keep.append(i)
        elif not same_text_ok or values[i] != values[first[id_]]:
            differ = " with different texts" if values[i] != values[first[id_]] else ""
            raise InputError(f"{source_key}: {key} {id_!r} appears twice{differ}, at {where[first[id_]]} and at "
                             f"{where[i]}; keep one")
    return texts.take(pa.array(keep))
