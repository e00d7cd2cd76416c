"""jobs.report_html: the self-contained HTML report (no Ray, no models)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.report_html import BINS, MAX_POINTS, ScoreSeries, render_report, sample_rows, write_report

DOC_TEXT = "the secret body of a document"
QUERY_TEXT = "what the user typed in private"
SERIES = [ScoreSeries("stage 1: cross-encoder/ms-marco-MiniLM-L-6-v2", "score_1", "rank_1"),
          ScoreSeries("stage 2: teacher qwen3-8b", "score_2", "rank_2")]


def ranks_within(qids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1 = best per query; NaN scores get no rank (0 here, turned into null by the caller)."""
    out = np.zeros(scores.size, dtype=np.int64)
    for q in np.unique(qids):
        idx = np.flatnonzero((qids == q) & ~np.isnan(scores))
        out[idx[np.argsort(-scores[idx], kind="stable")]] = np.arange(1, idx.size + 1)
    return out


def synthetic(queries: int = 50, docs: int = 20, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    qids = np.repeat([f"q{i}" for i in range(queries)], docs)
    first = np.tile(np.arange(1, docs + 1), queries)
    s1 = -0.2 * first + rng.normal(0, 1, first.size)
    r1 = ranks_within(qids, s1)
    s2 = np.where(r1 <= 5, s1 + rng.normal(0, 0.5, s1.size), np.nan)
    r2 = ranks_within(qids, s2)
    return pa.table({
        "query_id": qids, "doc_id": [f"d{i}" for i in range(first.size)],
        "query": [QUERY_TEXT] * first.size, "doc": [DOC_TEXT] * first.size,
        "first_stage_rank": pa.array(first, pa.int32()),
        "score_1": pa.array(s1, pa.float32()), "rank_1": pa.array(r1, pa.int32()),
        "score_2": pa.array(s2, pa.float32(), from_pandas=True),
        "rank_2": pa.array(np.where(r2 > 0, r2, 0), pa.int32(), mask=r2 == 0),
        "rank": pa.array(r1, pa.int32()),
    })


def per_query_ndcg(queries: int = 50, seed: int = 3) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    before = {f"q{i}": float(rng.uniform()) for i in range(queries)}
    after = {q: float(np.clip(v + rng.normal(0.05, 0.1), 0, 1)) for q, v in before.items()}
    after["q0"] = before["q0"]  # one tie at least
    return {"first stage": before, "stage 1": {q: 0.5 for q in before}, "reranked": after}


class Figures(HTMLParser):
    """Per figure (by id, or data-series for histograms): its attributes, tag/class counts and text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.figures: dict[str, dict] = {}
        self.unbalanced = 0
        self.svgs: list[dict] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            key = a.get("id") or a.get("data-series") or f"anon{len(self.figures)}"
            self.figures[key] = {"attrs": a, "tags": {}, "text": ""}
            self.open.append(key)
        elif tag in ("td", "th"):
            for key in self.open:
                self.figures[key]["text"] += "\t"
        elif tag == "svg":
            self.svgs.append({"title": "", "labels": 0})
        if tag == "title" and self.svgs and not self.svgs[-1]["title"]:
            self.in_title = True
        if tag == "text" and "lbl" in (a.get("class") or "") and self.svgs:
            self.svgs[-1]["labels"] += 1
        for key in self.open:
            tags = self.figures[key]["tags"]
            name = f"{tag}.{a['class']}" if a.get("class") else tag
            tags[name] = tags.get(name, 0) + 1
            if tag == "tr" and a.get("data-kind"):
                tags.setdefault("rows", []).append(a["data-kind"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            if not self.open:
                self.unbalanced += 1
            else:
                self.open.pop()
        if tag == "title":
            self.in_title = False

    def handle_data(self, data: str) -> None:
        if self.in_title and self.svgs:
            self.svgs[-1]["title"] += data
        for key in self.open:
            self.figures[key]["text"] += data


def parse(doc: str) -> Figures:
    p = Figures()
    p.feed(doc)
    p.close()
    assert p.unbalanced == 0 and p.open == [], "figure tags are not balanced"
    assert all(s["title"].strip() for s in p.svgs), "every SVG needs a <title>"
    assert all(s["labels"] == 2 for s in p.svgs), "every SVG needs an x and a y axis label"
    return p


def render(table: pa.Table, series: list[ScoreSeries] = SERIES, **kw) -> str:
    kw.setdefault("first_stage_rank", "first_stage_rank")
    kw.setdefault("ndcg", per_query_ndcg())
    return render_report(table, series, title="run 42", counts={"pairs read": 1_234_567, "queries": 50}, **kw)


def share_rows(fig: dict) -> dict[str, tuple[int, str]]:
    """data-kind -> (count, percent text) from the figure's share table."""
    rows = re.findall(r"(moved up|moved down|stayed|improved|worsened|tied)\t([\d,]+)\t([\d.]+%)", fig["text"])
    names = {"moved up": "up", "moved down": "down", "stayed": "same"}
    return {names.get(n, n): (int(c.replace(",", "")), p) for n, c, p in rows}


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic()


@pytest.fixture(scope="module")
def report(table: pa.Table) -> tuple[str, Figures]:
    doc = render(table)
    return doc, parse(doc)


def test_all_figures_present(report: tuple[str, Figures]) -> None:
    doc, p = report
    assert doc.startswith("<!DOCTYPE html>")
    assert {"counts", "rank-shift", "ndcg", *(s.label for s in SERIES)} <= set(p.figures)
    assert len(p.svgs) == len(SERIES) + 2


def test_counts_table_formats_thousands(report: tuple[str, Figures]) -> None:
    assert "1,234,567" in report[1].figures["counts"]["text"]


@pytest.mark.parametrize("i", range(len(SERIES)))
def test_histogram_bars_and_stated_count(report: tuple[str, Figures], table: pa.Table, i: int) -> None:
    s = SERIES[i]
    fig = report[1].figures[s.label]
    scored = table.num_rows - table.column(s.score_column).null_count
    assert fig["attrs"]["class"] == "histogram"
    assert fig["tags"]["rect.bar"] == BINS
    assert int(fig["attrs"]["data-count"]) == scored
    assert f"{scored:,} scores" in fig["text"]
    assert scored == (1000 if i == 0 else 250)


def test_rank_shift_points_and_shares(report: tuple[str, Figures], table: pa.Table) -> None:
    fig = report[1].figures["rank-shift"]
    first = table.column("first_stage_rank").to_numpy()
    final = table.column("rank").to_numpy()
    assert fig["tags"]["circle.pt"] == min(table.num_rows, MAX_POINTS) == 1000
    n = first.size
    expected = {"up": int((final < first).sum()), "down": int((final > first).sum()),
                "same": int((final == first).sum())}
    assert all(expected.values())
    got = share_rows(fig)
    assert {k: c for k, (c, _) in got.items()} == expected
    assert {k: p for k, (_, p) in got.items()} == {k: f"{100 * c / n:.1f}%" for k, c in expected.items()}
    assert "sample" not in fig["text"]


def test_rank_shift_samples_over_5000_rows_deterministically() -> None:
    big = synthetic(queries=300, docs=20)
    doc = render(big, ndcg=None)
    fig = parse(doc).figures["rank-shift"]
    assert fig["tags"]["circle.pt"] == MAX_POINTS
    assert "sample of 5,000 of 6,000 pairs" in fig["text"]
    assert int(fig["attrs"]["data-total"]) == 6000
    assert render(big, ndcg=None) == doc


def test_ndcg_scatter_and_counts(report: tuple[str, Figures]) -> None:
    fig = report[1].figures["ndcg"]
    ndcg = per_query_ndcg()
    before, after = ndcg["first stage"], ndcg["reranked"]
    assert fig["tags"]["circle.pt"] == len(before) == 50
    up = sum(after[q] > before[q] for q in before)
    down = sum(after[q] < before[q] for q in before)
    got = share_rows(fig)
    assert {k: c for k, (c, _) in got.items()} == {"improved": up, "worsened": down, "tied": 50 - up - down}
    assert 50 - up - down >= 1
    for label, per_query in ndcg.items():
        assert f"{label}\t50 queries\t{np.mean(list(per_query.values())):.4g}" in fig["text"]


def test_text_is_escaped_and_document_self_contained(table: pa.Table) -> None:
    evil = "<script>alert('x')</script> & co"
    t = table.set_column(0, "query_id", pa.array([f"<b>{q}" for q in table.column("query_id").to_pylist()]))
    ndcg = {k: {f"<b>{q}": v for q, v in d.items()} for k, d in per_query_ndcg().items()}
    doc = render_report(t, [ScoreSeries(evil, "score_1", None)], title=evil, counts={evil: evil},
                        first_stage_rank="first_stage_rank", ndcg=ndcg)
    parse(doc)
    assert "<script" not in doc.lower()
    assert "&lt;script&gt;" in doc and "&lt;b&gt;q1" in doc and "<b>" not in doc
    for forbidden in ("http://", "https://", "src=", "@import", "url(", QUERY_TEXT, DOC_TEXT):
        assert forbidden not in doc


def test_edge_cases_render() -> None:
    one = synthetic(queries=1, docs=20)
    empty = one.set_column(one.schema.get_field_index("score_2"), "score_2", pa.nulls(one.num_rows, pa.float32()))
    flat = empty.set_column(empty.schema.get_field_index("score_1"), "score_1", pa.array([0.25] * 20, pa.float32()))
    series = [*SERIES, ScoreSeries("missing rank", "score_1", None)]
    doc = render(flat, series, ndcg={}, first_stage_rank=None)
    p = parse(doc)
    assert "no scores" in p.figures[SERIES[1].label]["text"]
    assert p.figures[SERIES[1].label]["attrs"]["data-count"] == "0"
    assert p.figures[SERIES[0].label]["tags"]["rect.bar"] == BINS
    assert "20 scores" in p.figures[SERIES[0].label]["text"]
    assert "rank-shift" not in p.figures and "Rank shift not shown" in doc
    assert "ndcg" not in p.figures and "nDCG not shown" in doc

    single = render(one, ndcg={"first stage": {"q0": 0.3}, "reranked": {"q0": 0.3}})
    fig = parse(single).figures["ndcg"]
    assert fig["tags"]["circle.pt"] == 1 and fig["attrs"]["data-tied"] == "1"
    only = parse(render(one, ndcg={"reranked": {"q0": 0.3}})).figures["ndcg"]
    assert "circle.pt" not in only["tags"] and "no comparison" in only["text"]
    missing_col = render(one.drop_columns(["first_stage_rank"]))
    assert "rank-shift" not in parse(missing_col).figures


def test_write_report_through_fsspec(report: tuple[str, Figures]) -> None:
    fs = fsspec.filesystem("memory")
    write_report(fs, "/out/_run_report.html", report[0])
    assert fs.cat_file("/out/_run_report.html").decode() == report[0]


def test_the_report_samples_the_first_rows_of_the_files_it_is_given(tmp_path: Path) -> None:
    for i in range(3):
        pq.write_table(pa.table({"query_id": [f"q{i}"] * 100, "rank": list(range(1, 101)), "doc": ["x"] * 100}),
                       tmp_path / f"part-{i}.parquet", row_group_size=30)
    files = [str(tmp_path / f"part-{i}.parquet") for i in range(3)]
    table = sample_rows(fsspec.filesystem("file"), files, ["query_id", "rank", "missing"], limit=150)
    assert table.column_names == ["query_id", "rank"] and len(table) == 150
    assert table["query_id"].to_pylist() == ["q0"] * 100 + ["q1"] * 50
    assert len(sample_rows(fsspec.filesystem("file"), [], ["rank"])) == 0
