"""Loading a model is safe by default: safetensors only, no remote code.
(The safe YAML loader is tested in test_config.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from reranker_actors.errors import ModelError
from reranker_actors.registry import build_reranker

CPU = torch.device("cpu")


def cfg(model: Path | str, **extra: object) -> dict:
    return {"backend": "cross_encoder", "model": str(model), "dtype": "float32", "max_length": 64, **extra}


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path, tiny_bert_dir: str) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    with pytest.raises(ModelError, match=r"only pickle-based weights \(pytorch_model.bin\).*allow_pickle_weights"):
        build_reranker(cfg(pickled), CPU)
    allowed = build_reranker(cfg(pickled, allow_pickle_weights=True), CPU)
    reference = build_reranker(cfg(tiny_bert_dir), CPU)
    pair = (["what is lift"], ["lift is a force on a wing"])
    np.testing.assert_array_equal(allowed.score(*pair).values, reference.score(*pair).values)


def test_code_shipped_with_a_model_never_runs_unless_trusted(tmp_path: Path, tiny_bert_dir: str) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(tiny_bert_dir, evil)
    marker = tmp_path / "code-ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel",
                          "AutoConfig": "modeling_evil.EvilConfig"}
    (evil / "config.json").write_text(json.dumps(config))
    loaded = build_reranker(cfg(evil), CPU)  # the built-in BERT class; auto_map ignored
    assert type(loaded.model).__module__.startswith("transformers.models.bert") and not marker.exists()
    with pytest.raises(ModelError, match="could not load model"):  # (EvilModel does not exist)
        build_reranker(cfg(evil, trust_remote_code=True), CPU)
    assert marker.exists()  # trusted: the shipped code did run
