"""S3 end to end: input, output and model weights all on s3:// (a real S3 protocol server,
moto_server on loopback), the job submitted with `ray job submit`, credentials only in the
Ray runtime_env, and never in logs or reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from jobs.fs import arrow_filesystem
from reranker_actors.registry import build_reranker
from tests.conftest import KEY_ID, REPO, SECRET, s3, sample_pairs
from tests.ray_head import BIN, RayHead


@pytest.mark.slow
def test_input_output_and_model_on_s3_through_ray_job_submit(ray_head: RayHead, moto: str, tmp_path: Path,
                                                             tiny_bert_dir: str) -> None:
    fs = s3(moto, "data", "models")
    table = sample_pairs()
    for i in range(3):
        with fs.open(f"data/in/shard-{i}.parquet", "wb") as f:
            pq.write_table(table.slice(i * 200, 200), f)
    fs.put(tiny_bert_dir, "models/tiny-bert", recursive=True)
    cache = tmp_path / "cache"
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": KEY_ID,
                                "AWS_SECRET_ACCESS_KEY": SECRET, "HF_HUB_OFFLINE": "1",
                                "BATCH_RERANK_CACHE": str(cache)}}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "jobs.rerank", "--config", "configs/msmarco_minilm_cpu.yaml",
         "input.path=s3://data/in/", "output.path=s3://data/out", "rank.top_k=null",
         "reranker.model=s3://models/tiny-bert", "reranker.max_length=128", "reranker.dtype=float32",
         "reranker.compile=false",  # (the config compiles; fused kernels reorder fp32 sums)
         "actor.pool_size=1", "actor.num_cpus=1"],
        cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=600,
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]

    assert fs.exists("data/out/_SUCCESS")
    out = pads.dataset("data/out", filesystem=arrow_filesystem(fs), format="parquet").to_table()
    pairs = list(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) == 600
    reference = build_reranker({"backend": "cross_encoder", "model": tiny_bert_dir, "dtype": "float32",
                                "max_length": 128}, torch.device("cpu"))
    expected = dict(zip(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True),
                        reference.score(table["query"].to_pylist(), table["doc"].to_pylist()).values.tolist(),
                        strict=True))
    assert np.abs(np.array(out["score"].to_pylist()) - np.array([expected[p] for p in pairs])).max() < 1e-5
    # Weights were downloaded once into the node's cache, whatever the number of actors.
    copies = [p for p in (cache / "models").iterdir() if p.is_dir()]
    assert len(copies) == 1 and (copies[0] / "config.json").exists()

    report = fs.cat_file("data/out/_run_report.json").decode()
    assert json.loads(report)["input_files"][0]["url"] == "s3://data/in/shard-0.parquet"
    assert not fs.exists("data/out/_checkpoints") and not fs.exists("data/out/_staging")
    published = report + fs.cat_file("data/out/_SUCCESS").decode() + fs.cat_file("data/out/_run_report.txt").decode()
    job_logs = logs.replace(json.dumps(runtime_env), "")  # (the submit command echoes what it was given)
    for text in (published, job_logs):
        assert SECRET not in text and KEY_ID not in text


def test_a_missing_model_on_s3_fails_fast_naming_it(moto: str, tmp_path: Path) -> None:
    s3(moto, "models")
    env = os.environ | {"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    code = ("from reranker_actors.model_cache import local_copy\n"
            "local_copy('s3://models/does-not-exist')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "model 's3://models/does-not-exist': no config.json there (found nothing)" in result.stderr
