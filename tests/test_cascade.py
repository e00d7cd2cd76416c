"""The shipped two-stage cascade (configs/cascade_minilm_bge_m3.yaml), run as its header
documents on the bundled sample with tiny random-weight BERT and XLM-R models, on a real
cluster (`ray start --head`) whose custom resource `fake_gpu` stands in for GPUs: stage 1
ranks every pair on CPU actors, stage 2 rescores each query's top 20 on actors that each
asked for a `fake_gpu`."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import torch

from reranker_actors.registry import build_reranker
from tests.conftest import FAKE_GPU, REPO, TinyModelBuilds, header_command, sample_pairs
from tests.ray_head import RayHead, driver, finish

CONFIG = REPO / "configs" / "cascade_minilm_bge_m3.yaml"
TOP_N = 20


def counted(path: Path) -> int:
    return sum(int(n) for n in path.read_text().split()) if path.exists() else 0


def scores(model: str, rows: list[dict]) -> dict[tuple[str, str], float]:
    reranker = build_reranker({"backend": "cross_encoder", "model": model, "dtype": "float32",
                               "max_length": 512}, torch.device("cpu"))
    out = reranker.score([r["query"] for r in rows], [r["doc"] for r in rows]).values
    return {(r["query_id"], r["doc_id"]): s for r, s in zip(rows, out.tolist(), strict=True)}


@pytest.mark.slow
def test_stage_two_rescores_only_the_top_n_on_its_own_resources(ray_head: RayHead, tmp_path: Path,
                                                                 tiny_models_built: TinyModelBuilds) -> None:
    tiny_bert_dir, tiny_xlmr_dir = str(tmp_path / "tiny-bert"), str(tmp_path / "tiny-xlmr")
    for kind in ("bert", "xlmr"):  # (built by the header's `python -m tests.tiny_models <kind> <dir>`)
        tiny_models_built.place(kind, tmp_path / f"tiny-{kind}")
    overrides = header_command(CONFIG, "jobs.rerank", tmp_path)
    assert f"cascade.0.reranker.model={tiny_xlmr_dir}" in overrides
    given = tmp_path / "resources.jsonl"
    overrides += [f"cascade.0.actor.resources={{{FAKE_GPU}: 1}}", f"cache.path={tmp_path / 'cache'}"]
    code, log = finish(driver(ray_head, CONFIG, {"resources_file": str(given)}, *overrides))
    assert code == 0, log[-4000:]
    table = sample_pairs()

    actors = [json.loads(line) for line in given.read_text().splitlines()]
    by_model = {a["model"]: a["resources"] for a in actors}
    assert by_model[tiny_xlmr_dir].get(FAKE_GPU) == 1 and by_model[tiny_xlmr_dir]["CPU"] == 0.5
    assert FAKE_GPU not in by_model[tiny_bert_dir]

    out = pads.dataset(str(tmp_path / "out" / "cascade")).to_table()
    assert out.num_rows == len(table) == 600  # every pair once, ranked over all its candidates
    rows = {(r["query_id"], r["doc_id"]): r for r in out.to_pylist()}
    assert set(rows) == set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    source = table.to_pylist()
    first, second = scores(tiny_bert_dir, source), scores(tiny_xlmr_dir, source)
    assert max(abs(rows[k]["stage1_score"] - v) for k, v in first.items()) < 1e-5
    stage2 = [abs(r["stage2_score"] - second[k]) for k, r in rows.items() if r["stage2_score"] is not None]
    # (other batch shapes, other fp32 sum orders: measured 8.0e-6 at |score| <= 4.72, 1.7e-6 of the largest)
    bound = 1e-5 * max(abs(v) for v in second.values())
    assert len(stage2) == 20 * TOP_N and max(stage2) <= bound, max(stage2)
    for qid in {k[0] for k in rows}:
        ranked = sorted((r for k, r in rows.items() if k[0] == qid), key=lambda r: r["rank"])
        assert [r["rank"] for r in ranked] == list(range(1, 31))
        by_stage1 = sorted(ranked, key=lambda r: (-r["stage1_score"], r["doc_id"]))
        assert [r["stage1_rank"] for r in by_stage1] == list(range(1, 31))
        top = {r["doc_id"] for r in by_stage1[:TOP_N]}
        # stage 2 scored exactly stage 1's top N, with its own model's scores ...
        assert {r["doc_id"] for r in ranked if r["stage2_score"] is not None} == top
        # ... and they lead the final ranking in stage-2 order, the rest follow in stage-1 order.
        assert [r["doc_id"] for r in ranked[:TOP_N]] == [
            r["doc_id"] for r in sorted(ranked[:TOP_N], key=lambda r: (-r["stage2_score"], r["doc_id"]))]
        assert [r["doc_id"] for r in ranked[TOP_N:]] == [r["doc_id"] for r in by_stage1[TOP_N:]]
        assert {r["model"] for r in ranked[:TOP_N]} == {tiny_xlmr_dir}
        assert {r["model"] for r in ranked[TOP_N:]} == {tiny_bert_dir}
        assert all(r["score"] == r["stage2_score"] for r in ranked[:TOP_N])
    report = json.loads((tmp_path / "out" / "cascade" / "_run_report.json").read_text())
    assert [(s["stage"], s["pairs"], s["cached"]) for s in report["stages"]] == [(1, 600, 0), (2, 20 * TOP_N, 0)]
    assert list(report["metrics"]) == ["first stage", "stage 1", "reranked"]
    assert "stage 2   " in log and "eval      stage 1:" in log
    figures = {g["figure"]: g for g in report["gates"]["gates"]}  # (each stage's health reported)
    assert {"score_spread", "tied_share", "score_spread (stage 1)", "score_spread (stage 2)",
            "tied_share (stage 2)"} <= figures.keys()
    assert figures["score_spread (stage 2)"]["verdict"] == "reported" and figures["score_spread"]["value"] > 0

    # The next night, same pairs: each stage takes every score from its own model's cache.
    code, log = finish(driver(ray_head, CONFIG, None, *overrides, f"output.path={tmp_path / 'night2'}",
                              "gates.min_score_spread=1e-6", "gates.max_tied_share=0.5"))
    assert code == 0, log[-4000:]
    report = json.loads((tmp_path / "night2" / "_run_report.json").read_text())
    gated = {g["figure"]: g["verdict"] for g in report["gates"]["gates"] if g["key"]}  # (the final ranking's)
    assert gated == {"nan_share": "passed", "score_spread": "passed", "tied_share": "passed"}
    assert [(s["stage"], s["cached"]) for s in report["stages"]] == [(1, 600), (2, 20 * TOP_N)]
    assert report["scored_now"] == 0 and len(list((tmp_path / "cache").iterdir())) == 2  # (one per model)
    again = {(r["query_id"], r["doc_id"]): r for r in pads.dataset(str(tmp_path / "night2")).to_table().to_pylist()}
    assert {k: (r["rank"], r["stage1_score"], r["stage2_score"]) for k, r in again.items()} == {
        k: (r["rank"], r["stage1_score"], r["stage2_score"]) for k, r in rows.items()}


@pytest.mark.slow
def test_a_driver_killed_in_stage_two_reruns_only_what_stage_two_had_not_made_durable(
        ray_head: RayHead, tmp_path: Path, tiny_models_built: TinyModelBuilds) -> None:
    tiny_xlmr_dir = str(tmp_path / "tiny-xlmr")
    for kind in ("bert", "xlmr"):
        tiny_models_built.place(kind, tmp_path / f"tiny-{kind}")
    overrides = [*header_command(CONFIG, "jobs.rerank", tmp_path), f"cascade.0.actor.resources={{{FAKE_GPU}: 1}}",
                 "cascade.0.actor.batch_size=20", "cascade.0.actor.pool_size=1"]
    first_count, second_count = tmp_path / "scored-1", tmp_path / "scored-2"
    stage_one, stage_two = 600, 20 * TOP_N
    # (stage 2 slowed down so the kill lands in it: 20 batches x 0.5 s)
    proc = driver(ray_head, CONFIG, {"sleep_per_batch": 0.5, "count_file": str(first_count)}, *overrides)
    deadline = time.time() + 300
    while counted(first_count) < stage_one + stage_two // 2:
        assert proc.poll() is None, f"driver ended before the kill: {finish(proc)[1][-3000:]}"
        assert time.time() < deadline, "half of stage 2 was not scored within 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = tmp_path / "out" / "cascade"
    assert not (out / "_SUCCESS").exists()

    code, log = finish(driver(ray_head, CONFIG, {"count_file": str(second_count)}, *overrides))
    assert code == 0, log[-4000:]
    report = json.loads((out / "_run_report.json").read_text())
    (one, two) = report["stages"]
    assert one["resumed"] == stage_one and report["scored_now"] == 0
    # Stage 2's pairs became durable as its pool returned them: the rerun's model saw only the rest.
    assert 0 < two["resumed"] < stage_two and two["cached"] == 0
    assert counted(second_count) == stage_two - two["resumed"]
    rows = {(r["query_id"], r["doc_id"]): r for r in pads.dataset(str(out)).to_table().to_pylist()}
    source = sample_pairs().to_pylist()
    assert len(rows) == len(source) == 600
    second = scores(tiny_xlmr_dir, source)
    stage2 = [abs(r["stage2_score"] - second[k]) for k, r in rows.items() if r["stage2_score"] is not None]
    bound = 1e-5 * max(abs(v) for v in second.values())  # (as in the test above)
    assert len(stage2) == stage_two and max(stage2) <= bound  # every stage-2 pair once, its model's score
    assert not (tmp_path / "out" / "cascade" / "_checkpoints").exists()  # removed after the commit
