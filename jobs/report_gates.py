"""The quality gates in the HTML run report: every figure with its threshold and verdict, and,
against a baseline, a histogram of the per-query top-k overlap."""

from __future__ import annotations

from html import escape
from typing import Any

from jobs.report_html import PAD_B, frame, num, svg, ticks

FAILED, PASSED = "#c2410c", "#0f766e"


def gates_figure(gates: dict[str, Any], k: int) -> str:
    """`gates`: jobs.gates.GateResults.as_dict()."""
    rows = []
    for g in gates.get("gates", []):
        rule = (f"{'≥' if g['at_least'] else '≤'} {num(g['threshold'])} (gates.{g['key']})"
                if g["threshold"] is not None else "–")
        colour = FAILED if g["verdict"] == "FAILED" else PASSED if g["verdict"] == "passed" else "inherit"
        rows.append(f'<tr data-gate="{escape(g["figure"])}" data-verdict="{g["verdict"]}"><th>{escape(g["figure"])}'
                    f'</th><td class="n">{num(g["value"])}</td><td>{escape(rule)}</td>'
                    f'<td style="color:{colour}">{g["verdict"]}</td></tr>')
    failed = sum(g["verdict"] == "FAILED" for g in gates.get("gates", []))
    head = ("refused: nothing was published" if gates.get("refused") else
            f"{failed} failed, published anyway (mode warn)" if failed else "every gate passed")
    table = (f'<table><tr><th>figure</th><th>value</th><th>gate</th><th>verdict</th></tr>{"".join(rows)}</table>'
             if rows else '<p class="empty">no figures</p>')
    overlap = overlap_figure(gates.get("topk_overlap_histogram") or [], k)
    return (f'<figure id="gates" data-refused="{str(bool(gates.get("refused"))).lower()}"><h2>Quality gates: '
            f'{escape(head)}</h2><div class="row"><div>{table}</div>{overlap}</div>'
            "<figcaption>Score health of every run; the ranking against qrels and drift from a baseline when "
            "configured. A figure with a gate is checked; the others are reported.</figcaption></figure>")


def overlap_figure(histogram: list[int], k: int) -> str:
    """Queries per top-k overlap with the baseline, in bins of 1/(len - 1)."""
    if not histogram or not sum(histogram):
        return ""
    bins = len(histogram) - 1
    w, h, top = 440, 240, max(histogram)
    parts, sx, sy = frame(w, h, (-0.5 / bins, 1 + 0.5 / bins), (0, top), [0, 0.25, 0.5, 0.75, 1], ticks(0, top),
                          f"top-{k} overlap with the baseline", "queries")
    for i, c in enumerate(histogram):
        x0, x1, y = float(sx((i - 0.45) / bins)), float(sx((i + 0.45) / bins)), float(sy(c))
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{h - PAD_B - y:.1f}">'
                     f"<title>overlap {i / bins:.2f}: {c:,} queries</title></rect>")
    return svg(f"Per-query top-{k} overlap with the baseline", w, h, parts)
