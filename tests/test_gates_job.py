"""The quality gates on a real local Ray: a refused night publishes nothing and keeps its
staging for the operator; canaries stop a changed model before its first batch; drift
against the last published run; NaN scores; `gates.mode: warn` publishes what was refused."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import torch

from jobs.rerank import main
from tests.conftest import REPO, SAMPLE, job_config, published, write_config
from tests.ray_head import driver, finish

DEMO = REPO / "configs" / "demo.yaml"


def snapshot(out: Path) -> dict[str, str]:
    """What readers of `out` see (every file but the hidden staging and checkpoints), by hash."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in ("_staging", "_checkpoints")}


def refused_staging(out: Path) -> Path:
    (marker,) = out.glob("_staging/*/_REFUSED")
    return marker.parent


def tiny_config(tmp_path: Path, name: str, model: str, **sections: dict) -> Path:
    """The tiny model on the bundled sample (600 pairs), with qrels and the first stage's columns."""
    data = job_config(tmp_path, SAMPLE / "candidates", model, output={"path": str(tmp_path / name)},
                      eval={"qrels": str(SAMPLE / "qrels.parquet")})
    data["input"]["columns"] = {"score": "bm25_score", "rank": "bm25_rank"}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return write_config(tmp_path / f"{name}.yaml", data)


def shifted_model(src: str, dest: Path, shift: float) -> str:
    """A copy of a cross-encoder whose every score moved by `shift` (its head's bias): the
    kind of change a new revision of the same model name brings."""
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(src, dest)
    model = AutoModelForSequenceClassification.from_pretrained(dest)
    with torch.no_grad():
        model.classifier.bias += shift
    model.save_pretrained(dest)
    return str(dest)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_drift_fails_below_the_overlap_and_passes_an_identical_rerun(tmp_path: Path, tiny_bert_dir: str) -> None:
    night1 = tiny_config(tmp_path, "night1", tiny_bert_dir)
    assert main(["--config", str(night1)]) == 0
    gates = {"baseline": str(tmp_path / "night1"), "min_topk_overlap": 0.9, "max_top1_changed_share": 0.0,
             "max_score_shift": 0.01}
    same = tiny_config(tmp_path, "night2", tiny_bert_dir, gates=gates)
    assert main(["--config", str(same)]) == 0
    report = json.loads((tmp_path / "night2" / "_run_report.json").read_text())
    by_figure = {g["figure"]: g for g in report["gates"]["gates"]}
    assert by_figure["topk_overlap"]["value"] == pytest.approx(1.0) and by_figure["top1_changed_share"]["value"] == 0
    assert by_figure["score_shift (PSI)"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert by_figure["queries shared with the baseline"]["value"] == 20
    assert all(g["verdict"] in ("passed", "reported") for g in by_figure.values())
    assert sum(report["gates"]["topk_overlap_histogram"]) == 20  # (what the HTML report plots)
    assert 'data-verdict="passed"' in (tmp_path / "night2" / "_report.html").read_text()

    # Another model (the bi-encoder reading of the same weights) ranks differently: refused.
    other = tiny_config(tmp_path, "night3", tiny_bert_dir, gates=gates, reranker={"backend": "bi_encoder"})
    assert main(["--config", str(other)]) == 3
    assert not published(tmp_path / "night3")
    marker = json.loads((refused_staging(tmp_path / "night3") / "_REFUSED").read_text())
    failed = {g["figure"]: g for g in marker["gates"] if g["verdict"] == "FAILED"}
    assert failed["topk_overlap"]["value"] < 0.9 and failed["topk_overlap"]["threshold"] == 0.9


@pytest.mark.slow
def test_canaries_of_a_good_run_stop_a_changed_model_before_any_pair_is_scored(
        tmp_path: Path, tiny_bert_dir: str, ray_head: object) -> None:
    night1 = tiny_config(tmp_path, "night1", tiny_bert_dir)
    assert finish(driver(ray_head, night1))[0] == 0
    canary_file = tmp_path / "canaries.parquet"
    code, log = finish(canary_driver(ray_head, night1, canary_file))
    assert code == 0, log
    gates = {"canaries": str(canary_file)}

    count = tmp_path / "count"  # (every batch appends the pairs it scored)
    code, log = finish(driver(ray_head, tiny_config(tmp_path, "same", tiny_bert_dir, gates=gates),
                              {"count_file": str(count)}))
    assert code == 0, log
    assert sum(map(int, count.read_text().split())) == 600

    changed = shifted_model(tiny_bert_dir, tmp_path / "new-revision", 0.01)
    count.unlink()
    code, log = finish(driver(ray_head, tiny_config(tmp_path, "night2", changed, gates=gates),
                              {"count_file": str(count)}))
    assert code == 3, log
    assert "canary pair(s)" in log and "gates.canary_tolerance (0.001)" in log and str(canary_file) in log

    assert not count.exists() or count.read_text().split() == []  # (not one input pair scored)
    assert not published(tmp_path / "night2")


def canary_driver(head: object, config: Path, dest: Path) -> object:
    import subprocess
    import sys

    env = head.env | {"RAY_ADDRESS": head.gcs}  # type: ignore[attr-defined]
    return subprocess.Popen([sys.executable, "-m", "jobs.canaries", "--config", str(config), "--out", str(dest),
                             "--pairs", "8"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_nan_scores_are_refused_or_quarantined_within_the_allowed_share(tmp_path: Path, tiny_bert_dir: str,
                                                                        ray_head: object) -> None:
    faults = {"nan_on_doc_ids": ["1", "486"]}
    code, log = finish(driver(ray_head, tiny_config(tmp_path, "strict", tiny_bert_dir), faults))
    assert code == 3, log
    assert "gates.max_nan_share" in log and "NaN or infinite scores" in log
    assert not published(tmp_path / "strict")

    allowed = tiny_config(tmp_path, "allowed", tiny_bert_dir, gates={"max_nan_share": 0.05},
                          input={"on_invalid": "skip"})
    code, log = finish(driver(ray_head, allowed, faults))
    assert code == 0, log
    quarantined = pads.dataset(str(tmp_path / "allowed" / "_quarantine")).to_table()
    assert set(quarantined["doc_id"].to_pylist()) <= {"1", "486"} and quarantined.num_rows > 0
    assert all(r.startswith("score is not finite") for r in quarantined["reason"].to_pylist())
    report = json.loads((tmp_path / "allowed" / "_run_report.json").read_text())
    nan = next(g for g in report["gates"]["gates"] if g["figure"] == "nan_share")
    assert nan["verdict"] == "passed" and nan["value"] == pytest.approx(quarantined.num_rows / 600)


def broken_head(minilm: str, dest: Path) -> str:
    """all-MiniLM-L6-v2 under a sequence-classification head that was never trained (seeded):
    what a botched cross-encoder export loads as."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1).save_pretrained(dest)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(dest)
    return str(dest)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_broken_model_night_is_refused_and_warn_publishes_it_without_rescoring(
        tmp_path: Path, minilm_dir: str) -> None:
    out = tmp_path / "index"
    assert main(["--config", str(DEMO), f"output.path={out}"]) == 0
    before, night1_id = snapshot(out), json.loads((out / "_run_report.json").read_text())["run_id"]
    assert "_SUCCESS" in before and any(name.startswith("part-") for name in before)

    broken = broken_head(minilm_dir, tmp_path / "botched-export")
    night2 = [f"output.path={out}", "reranker.backend=cross_encoder", f"reranker.model={broken}",
              "gates.min_ratio_to_first_stage=0.9"]
    assert main(["--config", str(DEMO), *night2]) == 3
    assert snapshot(out) == before  # (byte for byte: no _SUCCESS, part file or report of night 2)
    staging = refused_staging(out)
    report = json.loads((staging / "_run_report.json").read_text())
    ratio = next(g for g in report["gates"]["gates"] if g["figure"] == "ndcg@10 / first stage")
    assert ratio["verdict"] == "FAILED" and ratio["value"] < 0.9 and ratio["threshold"] == 0.9
    assert report["metrics"]["reranked"]["ndcg@10"] < report["metrics"]["first stage"]["ndcg@10"]
    assert list(staging.glob("**/*.parquet")), "the refused ranking stays for the operator"

    assert main(["--config", str(DEMO), *night2, "gates.mode=warn"]) == 0
    published_report = json.loads((out / "_run_report.json").read_text())
    assert published_report["scored_now"] == 0 and published_report["resumed_pairs"] == 600
    assert published_report["gates"]["mode"] == "warn" and published_report["run_id"] != night1_id
    assert snapshot(out) != before and not list(out.glob("_staging/*/_REFUSED"))
    assert re.search(r"FAILED +ndcg@10 / first stage 0\.\d+ \(gates.min_ratio_to_first_stage >= 0.9\)",
                     (out / "_run_report.txt").read_text())


@pytest.mark.usefixtures("ray_local")
def test_distillation_gates_each_teacher_and_their_agreement(tmp_path: Path, tiny_bert_dir: str) -> None:
    from jobs.distill_labels import main as distill

    def teacher(name: str, backend: str) -> dict:
        return {"name": name, "reranker": {"backend": backend, "model": tiny_bert_dir, "dtype": "float32",
                                           "max_length": 128},
                "actor": {"pool_size": 1, "num_cpus": 0.25, "batch_size": 128}}

    data = {"input": {"path": str(SAMPLE / "candidates"), "columns": {"rank": "bm25_rank"}},
            "output": {"path": str(tmp_path / "labels")},
            "teachers": [teacher("a", "cross_encoder"), teacher("a_again", "cross_encoder"),
                         teacher("b", "bi_encoder")],
            "gates": {"min_teacher_agreement": 0.9, "min_score_spread": 1e-6}}
    assert distill(["--config", str(write_config(tmp_path / "d.yaml", data))]) == 3
    assert not published(tmp_path / "labels")
    report = json.loads((refused_staging(tmp_path / "labels") / "_run_report.json").read_text())
    by_figure = {g["figure"]: g for g in report["gates"]["gates"]}
    assert by_figure["teacher_agreement (a, a_again)"]["value"] == pytest.approx(1.0)
    assert by_figure["teacher_agreement (a, b)"]["verdict"] == "FAILED"
    assert by_figure["teacher_agreement (a, b)"]["value"] < 0.9
    assert {f"score_spread (teacher {t})" for t in ("a", "a_again", "b")} <= by_figure.keys()
    assert all(by_figure[f"score_spread (teacher {t})"]["verdict"] == "passed" for t in ("a", "a_again", "b"))
