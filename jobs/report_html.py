"""A self-contained HTML run report: counts, score histograms, rank shifts and per-query nDCG.

One file, readable offline: inline CSS and hand-written inline SVG (no JavaScript, no fonts,
images or links to fetch). It shows ids, scores, ranks and counts, never query or doc texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BINS = 30
MAX_POINTS = 5000
TIE = 1e-9
PAD_L, PAD_R, PAD_T, PAD_B = 58, 18, 14, 46
UP, DOWN, SAME = "#0f766e", "#c2410c", "#9ca3af"

CSS = """
body{margin:0;background:#f6f6f4;color:#1f2937;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:15px;margin:0 0 10px;font-weight:600}
.sub{color:#6b7280;margin:0 0 20px}
figure{background:#fff;border:1px solid #e4e4e0;border-radius:8px;margin:0 0 18px;padding:16px 18px}
figcaption{color:#4b5563;font-size:13px;margin-top:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:0 18px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.row svg{flex:1 1 420px;max-width:460px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 12px 3px 0;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr+tr{border-top:1px solid #f0f0ec}th{font-weight:500}
#counts table{min-width:320px}.note,.empty{color:#6b7280;font-style:italic;margin:0 0 18px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
svg{width:100%;height:auto;display:block}svg text{font:11px system-ui,sans-serif;fill:#4b5563}
svg .lbl{font-size:12px;fill:#1f2937}svg .grid line{stroke:#ececea}svg .axis{stroke:#9ca3af}
svg .bar{fill:#5b7a9d}svg .bar:hover{fill:#2f4f73}svg .diag{stroke:#6b7280;stroke-dasharray:4 3}
svg .zone{font-size:12px;fill:#9ca3af;paint-order:stroke;stroke:#fff;stroke-width:3px}
"""


@dataclass(frozen=True)
class ScoreSeries:
    """One reranking stage or one teacher: its score column and, if any, its rank column."""

    label: str
    score_column: str
    rank_column: str | None


def num(v: object, digits: int = 4) -> str:
    """Numbers with thousands separators; floats to `digits` significant digits."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        if isinstance(v, dict):
            return ", ".join(f"{k} {num(x)}" for k, x in v.items())
        return str(v)
    f = float(v)
    if isinstance(v, (int, np.integer)) or (f.is_integer() and abs(f) >= 1000):
        return f"{int(v):,}"
    if not math.isfinite(f):
        return str(f)
    return f"{f:,.0f}" if abs(f) >= 10 ** digits else f"{f:.{digits}g}"


def floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64, nulls (and NaN) as NaN."""
    return pc.cast(table.column(name), pa.float64()).fill_null(math.nan).to_numpy()


def scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (np.asarray(v, dtype=float) - lo) / span * (b - a)


def svg(title: str, w: int, h: int, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {w} {h}" role="img"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def frame(w: int, h: int, xr: tuple[float, float], yr: tuple[float, float], xticks, yticks,
          xlabel: str, ylabel: str, *, flip_y: bool = False):
    """Grid, ticks and axis labels of a plot; returns (svg parts, x scale, y scale)."""
    x0, x1, yb, yt = PAD_L, w - PAD_R, h - PAD_B, PAD_T
    sx, sy = scale(*xr, x0, x1), scale(*yr, yt, yb) if flip_y else scale(*yr, yb, yt)
    out = ['<g class="grid">']
    for t in yticks:
        y = float(sy(t))
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
    out.append("</g>")
    out += [f'<text x="{x0 - 6}" y="{float(sy(t)) + 4:.1f}" text-anchor="end">{escape(num(t, 3))}</text>'
            for t in yticks]
    out += [f'<text x="{float(sx(t)):.1f}" y="{yb + 16}" text-anchor="middle">{escape(num(t, 3))}</text>'
            for t in xticks]
    out.append(f'<path class="axis" d="M{x0},{yt}V{yb}H{x1}" fill="none"/>')
    out.append(f'<text class="lbl" x="{(x0 + x1) / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text class="lbl" transform="translate(14,{(yt + yb) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    return out, sx, sy


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """min and max, with round (1-2-5) steps between them not too close to either end."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    inner = np.arange(math.ceil(lo / step), math.floor(hi / step) + 1) * step
    return [lo, *(float(t) for t in inner if lo + 0.5 * step < t < hi - 0.5 * step), hi]


def counts_figure(counts: dict[str, object], table: pa.Table) -> str:
    rows = "".join(f'<tr><th>{escape(str(k))}</th><td class="n">{escape(num(v))}</td></tr>'
                   for k, v in counts.items())
    queries = len(pc.unique(table.column("query_id"))) if "query_id" in table.column_names else 0
    noun = "query" if queries == 1 else "queries"
    return (f'<figure id="counts"><h2>Run</h2><table>{rows}</table>'
            f"<figcaption>{table.num_rows:,} ranked rows over {queries:,} {noun} in this report.</figcaption>"
            "</figure>")


def histogram_figure(table: pa.Table, s: ScoreSeries) -> str:
    values = floats(table, s.score_column)
    mask = np.isfinite(values)
    v, label = values[mask], escape(s.label)
    head = f'<figure class="histogram" data-series="{label}" data-count="{v.size}"><h2>{label}</h2>'
    if v.size == 0:
        return head + '<p class="empty">no scores</p></figure>'
    lo, hi = float(v.min()), float(v.max())
    xr = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
    counts, edges = np.histogram(v, bins=BINS, range=xr)
    w, h = 500, 240
    parts, sx, sy = frame(w, h, xr, (0, int(counts.max())), ticks(lo, hi), ticks(0, int(counts.max())),
                          f"score ({s.score_column})", "pairs")
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        x, x2, y = float(sx(a)), float(sx(b)), float(sy(c))
        parts.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(x2 - x - 1, 0.5):.1f}" '
                     f'height="{h - PAD_B - y:.1f}"><title>{num(a, 3)} to {num(b, 3)}: {c:,}</title></rect>')
    ids = table.column("query_id").filter(pa.array(mask)) if "query_id" in table.column_names else pa.array([])
    unscored = table.num_rows - v.size
    caption = (f'<span class="count">{v.size:,}</span> scores over {len(pc.unique(ids)):,} queries; '
               f"min {num(lo)}, median {num(float(np.median(v)))}, max {num(hi)}"
               + (f"; {unscored:,} pairs not scored by it" if unscored else "")
               + (f"; ranks in <code>{escape(s.rank_column)}</code>" if s.rank_column else ""))
    return head + svg(f"Histogram of {s.label} scores", w, h, parts) + f"<figcaption>{caption}.</figcaption></figure>"


def share_table(rows: list[tuple[str, str, str, int]], total: int) -> str:
    """rows: (data-kind, name, colour, count)."""
    body = "".join(f'<tr data-kind="{k}"><th><span class="sw" style="background:{c}"></span>{n}</th>'
                   f'<td class="n">{x:,}</td><td class="n pct">{100 * x / max(total, 1):.1f}%</td></tr>'
                   for k, n, c, x in rows)
    return f'<table class="share">{body}</table>'


def dots(xs: np.ndarray, ys: np.ndarray, colours: np.ndarray, titles: list[str] | None = None) -> list[str]:
    out = []
    for i, (x, y, c) in enumerate(zip(xs, ys, colours, strict=True)):
        tip = f"<title>{escape(titles[i])}</title>" if titles else ""
        out.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{c}" fill-opacity=".5">{tip}</circle>')
    return out


def rank_shift_figure(table: pa.Table, first: str, final: str) -> str:
    a, b = floats(table, first), floats(table, final)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = a.size
    up, down = int((b < a).sum()), int((b > a).sum())
    same = n - up - down
    attrs = f'data-total="{n}" data-up="{up}" data-down="{down}" data-same="{same}"'
    head = f'<figure id="rank-shift" {attrs}><h2>Rank shift: {escape(first)} → {escape(final)}</h2>'
    if n == 0:
        return head + '<p class="empty">no pair has both ranks</p></figure>'
    idx = np.arange(n)
    if n > MAX_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
    jitter = np.random.default_rng(1).uniform(-0.25, 0.25, (2, idx.size))
    top = max(float(a.max()), float(b.max()), 2.0)
    w = h = 440
    rt = ticks(1, int(top))
    parts, sx, sy = frame(w, h, (0.5, top + 0.5), (0.5, top + 0.5), rt, rt,
                          f"first-stage rank ({first})", f"final rank ({final})", flip_y=True)
    parts.append(f'<line class="diag" x1="{float(sx(0.5)):.1f}" y1="{float(sy(0.5)):.1f}" '
                 f'x2="{float(sx(top + 0.5)):.1f}" y2="{float(sy(top + 0.5)):.1f}"/>')
    parts.append(f'<text class="zone" x="{w - PAD_R - 8}" y="{PAD_T + 16}" text-anchor="end">moved up ↑</text>')
    parts.append(f'<text class="zone" x="{PAD_L + 8}" y="{h - PAD_B - 10}">moved down ↓</text>')
    sa, sb = a[idx], b[idx]
    colours = np.where(sb < sa, UP, np.where(sb > sa, DOWN, SAME))
    parts += dots(sx(sa + jitter[0]), sy(sb + jitter[1]), colours)
    sampled = f" Showing a fixed random sample of {idx.size:,} of {n:,} pairs." if idx.size < n else ""
    shares = share_table([("up", "moved up", UP, up), ("down", "moved down", DOWN, down),
                          ("same", "stayed", SAME, same)], n)
    return (head + f'<div class="row">{svg("First-stage rank vs final rank", w, h, parts)}{shares}</div>'
            f'<figcaption class="sampled">{n:,} pairs with both ranks; 1 = best, points jittered by '
            f"±0.25 rank; the dashed line is “unchanged”.{sampled}</figcaption></figure>")


def ndcg_figure(ndcg: dict[str, dict[str, float]], k: int) -> str:
    labels = list(ndcg)
    means = "".join(f'<tr><th>{escape(s)}</th><td class="n">{len(v):,} queries</td>'
                    f'<td class="n mean">{num(float(np.mean(list(v.values()))) if v else None)}</td></tr>'
                    for s, v in ndcg.items())
    means = f'<table class="means"><tr><th>stage</th><th></th><th>mean nDCG@{k}</th></tr>{means}</table>'
    if len(labels) < 2:
        return f'<figure id="ndcg"><h2>nDCG@{k}</h2>{means}<p class="note">Only one stage: no comparison.</p></figure>'
    first, last = ndcg[labels[0]], ndcg[labels[-1]]
    qids = sorted(set(first) & set(last))
    x, y = np.array([first[q] for q in qids], float), np.array([last[q] for q in qids], float)
    better, worse = int((y - x > TIE).sum()), int((x - y > TIE).sum())
    tied = len(qids) - better - worse
    w = h = 440
    nt = [0, 0.25, 0.5, 0.75, 1]
    parts, sx, sy = frame(w, h, (0, 1), (0, 1), nt, nt, f"{labels[0]} nDCG@{k}", f"{labels[-1]} nDCG@{k}")
    parts.append(f'<line class="diag" x1="{float(sx(0)):.1f}" y1="{float(sy(0)):.1f}" '
                 f'x2="{float(sx(1)):.1f}" y2="{float(sy(1)):.1f}"/>')
    parts.append(f'<text class="zone" x="{PAD_L + 8}" y="{PAD_T + 16}">improved ↑</text>')
    parts.append(f'<text class="zone" x="{w - PAD_R - 8}" y="{h - PAD_B - 10}" text-anchor="end">worse ↓</text>')
    colours = np.where(y - x > TIE, UP, np.where(x - y > TIE, DOWN, SAME))
    parts += dots(sx(x), sy(y), colours, [f"query {q}: {first[q]:.3f} → {last[q]:.3f}" for q in qids])
    shares = share_table([("improved", "improved", UP, better), ("worsened", "worsened", DOWN, worse),
                          ("tied", "tied", SAME, tied)], len(qids))
    attrs = f'data-queries="{len(qids)}" data-improved="{better}" data-worsened="{worse}" data-tied="{tied}"'
    title = f"Per-query nDCG@{k}: {labels[0]} vs {labels[-1]}"
    return (f'<figure id="ndcg" {attrs}><h2>{escape(title)}</h2><div class="row">{svg(title, w, h, parts)}'
            f"<div>{means}<br>{shares}</div></div><figcaption>One point per query judged in both stages "
            f"({len(qids):,}); above the dashed line = better after reranking.</figcaption></figure>")


def render_report(table: pa.Table, series: list[ScoreSeries], *, title: str,
                  counts: dict[str, object], first_stage_rank: str | None = None,
                  final_rank: str | None = "rank",
                  ndcg: dict[str, dict[str, float]] | None = None, k: int = 10, extra: list[str] | None = None) -> str:
    """Return one HTML document. `table` has one row per (query_id, doc_id) pair with the named columns.
    `ndcg` maps a stage label (e.g. "first stage", "stage 1", "reranked") to {query_id: nDCG@k}.
    `extra`: figures shown after the counts (the quality gates)."""
    body = [counts_figure(counts, table), *(extra or []), '<div class="grid">']
    body += [histogram_figure(table, s) for s in series] + ["</div>"]
    have = set(table.column_names)
    if first_stage_rank in have and final_rank in have:
        body.append(rank_shift_figure(table, first_stage_rank, final_rank))
    else:
        body.append('<p class="note">Rank shift not shown: the table has no first-stage rank.</p>'
                    if first_stage_rank not in have else '<p class="note">Rank shift not shown: no final rank.</p>')
    if ndcg:
        body.append(ndcg_figure(ndcg, k))
    else:
        body.append('<p class="note">nDCG not shown: no relevance judgments for this run.</p>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
            f'<h1>{escape(title)}</h1><p class="sub">batch-rerank run report</p>'
            + "\n".join(body) + "</main></body></html>\n")


def sample_rows(fs: fsspec.AbstractFileSystem, files: list[str], columns: list[str],
                limit: int = 200_000) -> pa.Table:
    """The first `limit` rows of Parquet `files` (the columns a report draws): a report of a
    billion-pair run reads a bounded sample, and says how many rows it drew on. Read file
    by file, batch by batch, so the driver holds the sample and one batch, whatever the
    size of the files."""
    import pyarrow.parquet as pq

    batches: list[pa.RecordBatch] = []
    rows = 0
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            wanted = [c for c in dict.fromkeys(columns) if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=65_536, columns=wanted):
                batches.append(batch.slice(0, limit - rows))
                rows += len(batches[-1])
                if rows >= limit:
                    return pa.Table.from_batches(batches)
    return pa.Table.from_batches(batches) if batches else pa.table({})


def write_report(fs: fsspec.AbstractFileSystem, path: str, html: str) -> None:
    fs.pipe_file(path, html.encode("utf-8"))


def _demo_table(queries: int = 50, docs: int = 20, seed: int = 0) -> pa.Table:
    """Synthetic first stage + two rerank stages (stage 2 scores only each query's top 5)."""
    rng = np.random.default_rng(seed)
    qid = np.repeat([f"q{i:03d}" for i in range(queries)], docs)
    first = np.tile(np.arange(1, docs + 1), queries)
    s1 = -0.15 * first + rng.normal(0, 1.0, first.size)
    r1 = np.concatenate([(-s1[i:i + docs]).argsort().argsort() + 1 for i in range(0, s1.size, docs)])
    s2 = np.where(r1 <= 5, 0.6 * s1 + rng.normal(0, 0.8, s1.size), np.nan)
    return pa.table({"query_id": qid, "doc_id": [f"d{i}" for i in range(first.size)],
                     "first_stage_rank": pa.array(first, pa.int32()), "score_1": s1.astype(np.float32),
                     "rank_1": pa.array(r1, pa.int32()), "score_2": pa.array(s2, from_pandas=True),
                     "rank": pa.array(r1, pa.int32())})


if __name__ == "__main__":
    demo = _demo_table()
    rng = np.random.default_rng(2)
    before = {f"q{i:03d}": float(rng.beta(2, 3)) for i in range(50)}
    after = {q: float(np.clip(v + rng.normal(0.05, 0.12), 0, 1)) for q, v in before.items()}
    page = render_report(
        demo, [ScoreSeries("stage 1: cross-encoder/ms-marco-MiniLM-L-6-v2", "score_1", "rank_1"),
               ScoreSeries("stage 2: Qwen/Qwen3-Reranker-8B (top 5)", "score_2", None)],
        title="batch-rerank · demo run", first_stage_rank="first_stage_rank",
        counts={"queries": 50, "pairs read": 1000, "pairs scored": 1000, "skipped": 0, "truncated": 209,
                "score stage s": 16.6, "pairs/s": 36.04, "model": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
        ndcg={"first stage": before, "reranked": after})
    write_report(fsspec.filesystem("file"), "/tmp/report_example.html", page)
    print("wrote /tmp/report_example.html")
