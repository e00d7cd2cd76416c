"""What the operator reads on the driver's console: an error the user caused is its one line
(no Ray stack trace before it), and Ray's ray#53727 warning about our actors is not printed."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import SAMPLE, job_config, write_config
from tests.ray_head import driver, finish


def two_label_head(src: str, dest: Path) -> str:
    """A classifier with two output labels (e.g. an NLI model), not a reranker's one logit."""
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(src, dest)
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, ignore_mismatched_sizes=True
                                                       ).save_pretrained(dest)
    return str(dest)


def test_a_user_error_in_an_actor_prints_its_one_line_and_exit_status_2(tmp_path: Path, tiny_bert_dir: str,
                                                                        ray_head: object) -> None:
    model = two_label_head(tiny_bert_dir, tmp_path / "nli")
    config = write_config(tmp_path / "c.yaml", job_config(tmp_path, SAMPLE / "candidates", model))
    code, log = finish(driver(ray_head, config))
    assert code == 2, log
    error = [line for line in log.splitlines() if "output labels" in line]
    assert error == [f"batch-rerank: error: model {model!r} has 2 output labels; backend cross_encoder needs "
                     "a single-logit reranker head (num_labels=1)"], log
    assert "Traceback" not in log and "Full stack trace" not in log, log
    assert "issues/53727" not in log and "constructor arguments in the object store" not in log, log
    assert not (tmp_path / "out" / "_SUCCESS").exists()
