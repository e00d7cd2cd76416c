"""The distillation job end to end on a local Ray: the shipped two-teacher config on the
bundled sample with tiny random-weight Qwen3 (LLM yes/no) and XLM-R (cross-encoder)
teachers, as its header documents; every format read back by its consumer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch

from jobs.distill_labels import main
from jobs.labels import LabelsConfig, Teacher, label_queries
from reranker_actors.registry import build_reranker
from tests.conftest import REPO, TinyModelBuilds, header_command, sample_pairs

pytestmark = pytest.mark.usefixtures("ray_local")
CONFIG = REPO / "configs" / "distill_qwen3_8b_bge_m3.yaml"


@pytest.mark.slow
def test_two_teachers_label_the_sample_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       tiny_models_built: TinyModelBuilds) -> None:
    import jobs.stages

    monkeypatch.setattr(jobs.stages, "ROWS_PER_RANK_PARTITION", 200)  # (3 partitions: a shuffle, as for a large night)
    for kind in ("qwen3", "xlmr"):  # (built by the header's `python -m tests.tiny_models <kind> <dir>`)
        tiny_models_built.place(kind, tmp_path / f"tiny-{kind}")
    overrides = header_command(CONFIG, "jobs.distill_labels", tmp_path)
    assert f"input.path={REPO}/samples/cranfield/candidates" in overrides
    assert f"teachers.1.reranker.model={tmp_path}/tiny-xlmr" in overrides
    assert main(["--config", str(CONFIG), *overrides]) == 0
    log = capsys.readouterr().out
    assert "600 read, 600 scored" in log and "eval      teachers combined:" in log

    out = tmp_path / "out" / "distill"
    records = pads.dataset(str(out)).to_table()
    assert records.num_rows == 20 and set(records["num_candidates"].to_pylist()) == {30}
    # Each teacher's raw scores are its backend's, and the labels are label_queries' on them.
    pairs = sample_pairs()
    teachers = [("qwen3_8b", tmp_path / "tiny-qwen3", "llm_yes_no"),
                ("bge_m3", tmp_path / "tiny-xlmr", "cross_encoder")]
    flat = pa.table({"query_id": pairs["query_id"], "query": pairs["query"], "doc_id": pairs["doc_id"],
                     "doc": pairs["doc"], "first_stage_rank": pairs["bm25_rank"]})
    for name, model, backend in teachers:
        reranker = build_reranker({"backend": backend, "model": str(model), "dtype": "float32",
                                   "max_length": 8192 if backend == "llm_yes_no" else 512, "activation": "raw"},
                                  torch.device("cpu"))
        flat = flat.append_column(f"score_{name}", pa.array(reranker.score(
            pairs["query"].to_pylist(), pairs["doc"].to_pylist()).values, pa.float32()))
    labels = LabelsConfig(negatives_rank_window=(10, 60), negatives_margin=0.5)
    from jobs.evaluate import load_qrels

    expected = label_queries(flat, [Teacher(n, f"score_{n}") for n, _, _ in teachers], labels,
                             load_qrels(str(REPO / "samples/cranfield/qrels.parquet")))
    got = {r["query_id"]: r for r in records.to_pylist()}
    for want in expected.to_pylist():
        have = got[want["query_id"]]
        assert have["positives"] == want["positives"] and have["hard_negatives"] == want["hard_negatives"]
        for a, b in zip(have["candidates"], want["candidates"], strict=True):
            # (measured: 0.0 for all three on 600 pairs, fp32; the margins allow another CPU's rounding)
            assert a["doc_id"] == b["doc_id"] and abs(a["combined"] - b["combined"]) < 1e-5
            assert abs(a["qwen3_8b"] - b["qwen3_8b"]) < 1e-6 and abs(a["bge_m3"] - b["bge_m3"]) < 1e-6

    # FlagEmbedding's own reranker dataset reads the JSON lines the job wrote.
    from FlagEmbedding.abc.finetune.reranker import AbsRerankerDataArguments
    from FlagEmbedding.abc.finetune.reranker.AbsDataset import AbsRerankerTrainDataset
    from transformers import AutoTokenizer

    jsonl = sorted((out / "_flag_embedding").glob("*.json"))
    lines = [json.loads(line) for f in jsonl for line in f.read_text(encoding="utf-8").splitlines()]
    with_both = [r for r in got.values() if r["positives"] and r["hard_negatives"]]
    assert len(lines) == len(with_both) > 0
    assert set(lines[0]) == {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"}
    args = AbsRerankerDataArguments(train_data=[str(f) for f in jsonl], knowledge_distillation=True,
                                    train_group_size=4, query_max_len=32, passage_max_len=64,
                                    cache_path=str(tmp_path / "hf-cache"))
    random.seed(0)
    dataset = AbsRerankerTrainDataset(args, AutoTokenizer.from_pretrained(str(tmp_path / "tiny-xlmr")))
    assert len(dataset) == len(lines) and len(dataset[0][0]) == len(dataset[0][1]) == 4

    import datasets

    table = datasets.Dataset.from_parquet([str(f) for f in (out / "_cross_encoder").glob("*.parquet")],
                                          cache_dir=str(tmp_path / "hf-cache"))
    assert table.column_names == ["query", "doc", "label"]
    assert len(table) == sum(len(r["positives"]) + len(r["hard_negatives"]) for r in got.values())
    assert set(np.unique(table["label"])) == {0.0, 1.0}

    report = json.loads((out / "_run_report.json").read_text())
    assert list(report["metrics"]) == ["first stage", "teacher qwen3_8b", "teacher bge_m3", "teachers combined"]
    html = (out / "_report.html").read_text()
    assert html.count('<figure class="histogram"') == 2 and 'id="rank-shift"' in html and 'id="ndcg"' in html
    assert (out / "_SUCCESS").exists() and not (out / "_checkpoints").exists()
