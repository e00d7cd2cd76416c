"""A real multi-node Ray on loopback for tests: a head and worker nodes, each its own
`ray start --block` (its own raylet, object store and agents) in its own process group, so
that one node can be killed alone, as a lost machine would be.

Why the worker nodes' `ray start` takes a hook: on one machine the cluster must stay on
127.0.0.1 (see RAY_NOTES.md), and `ray start --address=...` refuses that in both settings
of the variable that keeps Ray on loopback (ray 2.60, ray/scripts/scripts.py `start`):
- with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (how the head is kept on loopback) it aborts,
  "Multi-node Ray clusters are not supported on Windows and OSX";
- without it, it rewrites both `--node-ip-address=127.0.0.1` and the head's address
  `127.0.0.1:port` to the machine's outward address (`services.resolve_ip_for_localhost`),
  where the head does not listen, so the node never joins.
So the worker nodes run `ray start` without that variable and with RAY_START_HOOK naming
`loopback_node` below. The CLI calls it with the node's parameters after the rewrite of the
node's IP and before it resolves the head's address or starts any process: it puts the node
back on 127.0.0.1, stops the CLI from rewriting the head's address, and sets the variable
again for the node's own processes (raylet, agents, workers). The rest is the real CLI and
the real `--block` node (which kills its node's processes when its raylet dies), each node in
a process group of its own. (`ray.cluster_utils.Cluster` would also work, bypassing the CLI,
but its nodes are all children of the test process.)

The head sets the GCS health checks tighter than Ray's defaults (about 15 s to declare a
SIGKILLed node dead; here 2 to 4 s). Only the head takes a system config; the other nodes
read it from the GCS. Nodes are stopped by SIGKILL to their process group (never `ray stop`,
which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.ray_head import BIN, RayHead, free_ports

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Node death noticed in about failure_threshold x period after a SIGKILL; not tighter, or a
# busy 2-core machine gets nodes declared dead while they start (ray-project/ray PR #57951).
HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 1000, "health_check_failure_threshold": 4}
OBJECT_STORE = 200 * 1024 * 1024  # per node (else each asks for 30% of the machine's memory)


def loopback_node(ray_params: Any, head: bool) -> None:
    """RAY_START_HOOK of the worker nodes' `ray start` (see the module docstring)."""
    from ray._private import services

    ray_params.node_ip_address = "127.0.0.1"
    services.resolve_ip_for_localhost = lambda host: host  # (the head's address, resolved next)
    os.environ[LOOPBACK_ENV] = "0"  # for the node's processes (the CLI read it at import)


class NodeProcess:
    """One `ray start --block` in a process group of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], temp: Path) -> None:
        self.name, self.temp, self.killed = name, temp, False
        self.log_path = temp / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", f"--temp-dir={temp}",
                                      "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE}", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def ready(self, timeout: float = 90) -> None:
        """Wait until `ray start` says the node runs (for a worker: its raylet is registered
        with the GCS, which `ray start` waits for)."""
        deadline = time.time() + timeout
        while "Ray runtime started" not in self.log():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray node {self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raylet_pid(self) -> int:
        import psutil

        raylets = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True) if p.name() == "raylet"]
        assert len(raylets) == 1, f"node {self.name}: raylets {raylets}"
        return raylets[0]

    def processes(self, marker: str) -> dict[int, str]:
        """This node's worker processes whose title holds `marker` (e.g. an actor's class),
        by PID: their titles, as Ray sets them (`ray::<actor>.<method>` while it runs one)."""
        import psutil

        found = {}
        for p in psutil.Process(self.raylet_pid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = " ".join(p.cmdline()).strip()
                if marker in title:
                    found[p.pid] = title
        return found

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole node, as a lost machine: its process group (`ray start`, its raylet
        and object store, agents, workers), then any process of the node outside that group,
        by PID; returns once they are all gone."""
        import psutil

        if self.killed:  # (never signal a process group id that may have been reused)
            return
        self.killed = True
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            procs = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        deadline = time.time() + 15
        while any(_running(p) for p in procs) and time.time() < deadline:
            time.sleep(0.1)
        self._log.close()


def _running(proc: Any) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # (a zombie waits for its reaper, not for us)
    except psutil.Error:
        return False


class MultiNodeCluster:
    """A head with no CPUs (nothing of a job but its driver runs there) and worker nodes
    added with `add_workers`. `head` is what tests/ray_head.py's `driver()` takes."""

    def __init__(self, head_cpus: float = 0) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))  # short: unix socket paths <= 107 chars
        gcs, client, agent, metrics = free_ports(4)
        env = os.environ | {
            LOOPBACK_ENV: "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",  # (see tests/ray_head.py)
        }
        env.pop("RAY_ADDRESS", None)
        self.env = env
        self.workers: list[NodeProcess] = []
        self.head = RayHead("", f"127.0.0.1:{gcs}", env)
        (self.temp / "head").mkdir()
        self.head_node = NodeProcess(
            "head", ["--head", f"--port={gcs}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
                     f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                     f"--metrics-export-port={metrics}", f"--system-config={json.dumps(HEALTH_CHECKS)}"],
            env, self.temp / "head")

    def ready(self) -> MultiNodeCluster:
        self.head_node.ready()
        return self

    def add_workers(self, count: int, num_cpus: float, resources: dict[str, float]) -> list[NodeProcess]:
        """Start `count` worker nodes (side by side: each has a temp dir of its own) and wait
        until they have joined. A node's TMPDIR is its temp dir, so what a job keeps in files
        "on this node" (e.g. reranker_actors.restarts) is per node, as on separate machines."""
        nodes = []
        for _ in range(count):
            name = f"worker{len(self.workers) + 1}"
            temp = self.temp / name
            temp.mkdir()
            agent, metrics = free_ports(2)
            env = {k: v for k, v in self.env.items() if k != LOOPBACK_ENV} | {
                "RAY_START_HOOK": f"{__name__}.loopback_node", "TMPDIR": str(temp),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                            self.env.get("PYTHONPATH")])),
            }
            node = NodeProcess(name, [f"--address={self.head.gcs}", "--node-ip-address=127.0.0.1",
                                      f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
                                      "--min-worker-port=0", "--max-worker-port=0",
                                      f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}"],
                               env, temp)
            self.workers.append(node)
            nodes.append(node)
        for node in nodes:
            node.ready()
        return nodes

    def live_workers(self) -> list[NodeProcess]:
        return [w for w in self.workers if w.alive()]

    def stop(self) -> None:
        for node in [*self.workers, self.head_node]:
            node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def multinode_cluster(workers: int, num_cpus: float, resources: dict[str, float]) -> Iterator[MultiNodeCluster]:
    """A head and `workers` identical worker nodes, stopped (by process group) on exit."""
    cluster = MultiNodeCluster()
    try:
        cluster.ready()
        cluster.add_workers(workers, num_cpus, resources)
        yield cluster
    finally:
        cluster.stop()
