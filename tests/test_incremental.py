"""Incremental nightly runs with the score cache, on a real cluster (`ray start --head`):
the second night scores only new or changed pairs, and its output equals a full rescoring.
The cache is served by 3 shard actors (cache.shard_pairs 200 for 600 pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from jobs.cache_shards import range_count
from tests.conftest import job_config, sample_pairs, write_config, write_shards
from tests.ray_head import RayHead, driver, finish


def counted(path: Path) -> int:
    return sum(int(n) for n in path.read_text().split()) if path.exists() else 0


def night_two(table: pa.Table) -> tuple[pa.Table, int]:
    """10% of the documents edited, 30 pairs gone, 20 new ones: (table, pairs to score).
    (The cache is keyed by texts, not ids: a new pair with a known text would be a hit.)"""
    docs = table["doc"].to_pylist()
    for i in range(0, len(docs), 10):
        docs[i] = docs[i] + " (revised)"
    table = table.set_column(table.column_names.index("doc"), "doc", pa.array(docs)).slice(30)
    new = table.slice(0, 20)
    new = new.set_column(new.column_names.index("doc_id"), "doc_id",
                         pa.array([f"{d}-new" for d in new["doc_id"].to_pylist()], new["doc_id"].type))
    new = new.set_column(new.column_names.index("doc"), "doc",
                         pa.array([f"{d} (new)" for d in new["doc"].to_pylist()], new["doc"].type))
    changed = sum(1 for i in range(30, len(docs), 10))
    return pa.concat_tables([table, new]), changed + len(new)


def scores(out: Path) -> dict[tuple[str, str], float]:
    t = pads.dataset(str(out)).to_table()
    keys = zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist(), strict=True)
    return dict(zip(keys, t["score"].to_pylist(), strict=True))


@pytest.mark.slow
def test_the_second_night_scores_only_what_changed(ray_head: RayHead, tmp_path: Path, tiny_bert_dir: str) -> None:
    cache = tmp_path / "cache"
    first = sample_pairs()
    second, to_score = night_two(first)

    def night(name: str, table: pa.Table, *overrides: str) -> tuple[dict, Path]:
        in_dir = write_shards(tmp_path / name / "in", [table.slice(0, 300), table.slice(300)])
        cfg = job_config(tmp_path / name, in_dir, tiny_bert_dir, cache={"path": str(cache), "shard_pairs": 200})
        count = tmp_path / name / "count"
        code, log = finish(driver(ray_head, write_config(tmp_path / name / "job.yaml", cfg),
                                  {"count_file": str(count)}, *overrides))
        assert code == 0, log[-4000:]
        report = json.loads((tmp_path / name / "out" / "_run_report.json").read_text())
        assert counted(count) == report["scored_now"]  # what the model really saw
        return report, tmp_path / name / "out"

    report, out1 = night("night1", first)
    assert (report["cached"], report["scored_now"], report["cache_entries"]) == (0, 600, 0)
    report, out2 = night("night2", second)
    assert report["scored_now"] == to_score and report["cached"] == len(second) - to_score
    assert report["cache_entries"] == 600

    full = tmp_path / "full"
    cfg = job_config(full, write_shards(full / "in", [second]), tiny_bert_dir)
    code, log = finish(driver(ray_head, write_config(full / "job.yaml", cfg)))
    assert code == 0, log[-4000:]
    incremental, rescored, before = scores(out2), scores(full / "out"), scores(out1)
    assert set(incremental) == set(rescored) and len(incremental) == len(second)
    diff = np.array([incremental[k] - rescored[k] for k in rescored])
    assert np.abs(diff).max() < 1e-5  # (fp32; batch shapes differ)
    texts = {(r["query_id"], r["doc_id"]): r["doc"] for r in first.to_pylist()}
    unchanged = [k for k, d in zip(zip(second["query_id"].to_pylist(), second["doc_id"].to_pylist(), strict=True),
                                   second["doc"].to_pylist(), strict=True) if texts.get(k) == d]
    assert len(unchanged) == len(second) - to_score
    assert all(incremental[k] == before[k] for k in unchanged)  # last night's scores, bit for bit
    cache_files = list(cache.glob("*/part-*.parquet"))
    assert pads.dataset([str(p) for p in cache_files]).count_rows() == len(second)  # this night's pairs only
    assert len(cache_files) == range_count(len(second), 200)  # (one file per key range)

    # Another max_length (or model, dtype, template) is another namespace: nothing is reused.
    report, _ = night("night3", second, "reranker.max_length=96")
    assert (report["cached"], report["scored_now"]) == (0, len(second))
