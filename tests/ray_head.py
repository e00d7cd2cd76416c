"""A real Ray head for tests: `ray start --head --block` on loopback, stopped by its PID.

Never `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RayHead:
    dashboard: str  # http://127.0.0.1:port, for `ray job submit --address`
    gcs: str  # 127.0.0.1:port, for a driver's RAY_ADDRESS
    env: dict[str, str]  # environment for subprocesses that talk to this head


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class HeadProcess:
    """`ray start --head --block` started in the background; `ready()` waits for its
    dashboard (about 7 s on 2 cores), `stop()` stops it (the test session starts it while
    collecting, see tests/conftest.py)."""

    def __init__(self, num_cpus: int = 2, resources: dict[str, float] | None = None) -> None:
        gcs, dashboard, client, agent, metrics = free_ports(5)
        self.temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's unix socket paths are limited
        env = os.environ | {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `python` in the job = this venv's
            # Every read_parquet lists its files through a pool of footer-reading actors, 32 by
            # default: each one a new worker process, which on 2 cores costs seconds per read. One
            # reads the few local footers of a test as well (the workers inherit this from the head).
            "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
        }
        env.pop("RAY_ADDRESS", None)
        self.head = RayHead(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env)
        self.log = open(Path(self.temp) / "head.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", f"--port={gcs}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--metrics-export-port={metrics}", f"--temp-dir={self.temp}", "--disable-usage-stats",
             *([f"--resources={json.dumps(resources)}"] if resources else [])],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def ready(self, timeout: float = 90) -> RayHead:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.head.dashboard}/api/version", timeout=2)
                return self.head
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not start; see {self.temp}/head.log") from None
                time.sleep(0.2)

    def stop(self) -> None:
        # A throwaway cluster: no graceful stop (`ray start --block` takes over 5 s to stop on
        # SIGTERM). Its processes share its process group (start_new_session), so a SIGKILL to
        # that group reaches only them; workers in sessions of their own exit with their raylet.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


@contextmanager
def ray_head(num_cpus: int = 2, resources: dict[str, float] | None = None) -> Iterator[RayHead]:
    head = HeadProcess(num_cpus, resources)
    try:
        yield head.ready()
    finally:
        head.stop()


def driver(head: RayHead, config: Path, faults: dict | None = None, *overrides: str) -> subprocess.Popen:
    """`python -m jobs.rerank` as a driver of `head`'s cluster, with test faults injected."""
    from reranker_actors.faults import ENV as FAULTS_ENV
    from tests.conftest import REPO

    # One read task per small file (Ray Data packs Parquet files up to 128 MiB into one
    # read by default), so shards complete, and are checkpointed, one by one.
    env = head.env | {"RAY_ADDRESS": head.gcs, "RAY_DATA_PARQUET_BIN_PACKING_BYTES": "1"}
    env.pop(FAULTS_ENV, None)
    if faults:
        env[FAULTS_ENV] = json.dumps(faults)
    return subprocess.Popen([sys.executable, "-m", "jobs.rerank", "--config", str(config), *overrides],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out
