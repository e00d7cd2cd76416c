"""Acceptance check on input no test uses: SciFact (another collection) with its own column
names, one query spread over three files, and hand-written Chinese / mixed queries.

    .venv/bin/python benchmarks/check_handmade_input.py [--data ../shared/data/scifact]

Runs `python -m jobs.rerank` on the demo config (real all-MiniLM-L6-v2 bi-encoder) the
way a user would, then checks the output row by row and prints a table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

CHINESE = [
    ("zh-1", "什么是湍流边界层?", [
        ("zh-d1", "湍流边界层是靠近壁面的流动区域，其中速度脉动很强。"),
        ("zh-d2", "The turbulent boundary layer 湍流边界层 near a flat plate was measured."),
        ("zh-d3", "熊猫是一种生活在中国的熊。"),
        ("zh-d4", "超音速流动中的激波与边界层相互作用。"),
    ]),
    ("zh-2", "protein folding 蛋白质折叠", [
        ("zh-d5", "蛋白质折叠是多肽链形成三维结构的过程。"),
        ("zh-d6", "Protein folding kinetics 蛋白质 were studied by NMR."),
        ("zh-d7", "今天天气很好。"),
    ]),
]


def build_input(data: Path, dest: Path, queries: int, per_query: int) -> pa.Table:
    cands = pq.read_table(data / "candidates.parquet")
    qids = sorted(set(cands["query_id"].to_pylist()), key=lambda q: int(q) if q.isdigit() else q)[:queries]
    cands = cands.filter(pc.and_(pc.is_in(cands["query_id"], pa.array(qids)),
                                 pc.less_equal(cands["bm25_rank"], per_query)))
    rows = [{"qid": r["query_id"], "question": r["query"], "pid": r["doc_id"], "passage": r["doc"],
             "bm25": r["bm25_score"], "pos": r["bm25_rank"]} for r in cands.to_pylist()]
    for qid, query, docs in CHINESE:
        rows += [{"qid": qid, "question": query, "pid": d, "passage": text, "bm25": 1.0 / (i + 1), "pos": i + 1}
                 for i, (d, text) in enumerate(docs)]
    table = pa.Table.from_pylist(rows)
    spread = qids[0]  # this query's candidates go to all three files
    mine = table.filter(pc.equal(table["qid"], spread))
    rest = table.filter(pc.not_equal(table["qid"], spread))
    third, cut = len(mine) // 3, len(rest) // 3
    dest.mkdir(parents=True)
    parts = [
        pa.concat_tables([mine.slice(0, third), rest.slice(0, cut)]),
        pa.concat_tables([rest.slice(cut, cut), mine.slice(third, third)]),
        pa.concat_tables([mine.slice(2 * third), rest.slice(2 * cut)]),
    ]
    for i, part in enumerate(parts):
        pq.write_table(part, dest / f"part-{i}.parquet", row_group_size=17)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact", type=Path)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--per-query", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="handmade-"))
    table = build_input(args.data, work / "in", args.queries, args.per_query)
    out = work / "out"
    cmd = [sys.executable, "-m", "jobs.rerank", "--config", "configs/demo.yaml",
           f"input.path={work / 'in'}", f"output.path={out}", "eval.qrels=null",
           "input.columns={query_id: qid, query: question, doc_id: pid, doc: passage, score: bm25, rank: pos}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    result = pads.dataset(str(out)).to_table()
    expected = set(zip(table["qid"].to_pylist(), table["pid"].to_pylist(), strict=True))
    got = list(zip(result["query_id"].to_pylist(), result["doc_id"].to_pylist(), strict=True))
    bad_order = 0
    by_query: dict[str, list[dict]] = {}
    for row in result.to_pylist():
        by_query.setdefault(row["query_id"], []).append(row)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        ok_ranks = [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        keys = [(-r["score"], r["doc_id"]) for r in rows]
        ok_order = keys == sorted(keys)
        bad_order += not (ok_ranks and ok_order)
    print("| check | value |\n|---|---|")
    print(f"| input files | 3 (query {table['qid'][0]} in all three) |")
    print(f"| input pairs | {len(expected)} |")
    print(f"| output rows | {len(got)} |")
    print(f"| duplicated output pairs | {len(got) - len(set(got))} |")
    print(f"| missing pairs | {len(expected - set(got))} |")
    print(f"| unexpected pairs | {len(set(got) - expected)} |")
    print(f"| queries | {len(by_query)} |")
    print(f"| queries whose ranks are not 1..n in score order | {bad_order} |")
    zh = result.filter(pc.equal(result["query_id"], "zh-1")).sort_by("rank")
    print(f"| zh-1 ranking | {' > '.join(zh['doc_id'].to_pylist())} |")
    ok = len(got) == len(set(got)) == len(expected) and set(got) == expected and bad_order == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
