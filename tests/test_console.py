"""What the operator reads on the driver's console: an error the user caused is its one line
(no Ray stack trace before it), and Ray's ray#53727 warning about our actors is not printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from jobs.console import FLUSH_S, known_lines_dropped
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


def test_the_stderr_filter_drops_only_the_known_line_and_outlives_its_block(capfd: pytest.CaptureFixture) -> None:
    with known_lines_dropped():
        os.write(2, b"kept 1\n[2026-12-04 E 1 1] core_worker.cc:2465: Actor ... See "
                    b"https://github.com/ray-project/ray/issues/53727 for more details.\nkept 2\n")
        os.write(2, b"a progress bar\r")
        time.sleep(3 * FLUSH_S)  # (a partial line is passed on once nothing more comes)
        assert capfd.readouterr().err == "kept 1\nkept 2\na progress bar\r"
        child = subprocess.Popen(["sh", "-c", "sleep 0.5; echo from a child >&2"])  # (inherits the pipe)
    started = time.monotonic()
    child.wait()
    time.sleep(3 * FLUSH_S)
    assert capfd.readouterr().err == "from a child\n" and time.monotonic() - started < 5
    os.write(2, b"after\n")  # (fd 2 is the original again)
    assert capfd.readouterr().err == "after\n"
