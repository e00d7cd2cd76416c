"""Everything that touches Ray's API surface, so its churn stays in one file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import ray
import ray.data
import ray.exceptions
from fsspec.implementations.local import LocalFileSystem
from ray.util.placement_group import placement_group, remove_placement_group

from jobs.config import ActorConfig, RayConfig
from jobs.console import quiet_ray_data_console
from jobs.errors import ConfigError
from reranker_actors.faults import ENV as FAULTS_ENV

# A Ray the job starts for itself stays on loopback with auth off (see RAY_NOTES.md). On one
# machine, one actor reads the Parquet footers of a read_parquet: Ray Data's default is a pool of
# 32 (for many files spread over a cluster's nodes), each a new worker process, which costs a
# small machine seconds of CPU per read. (Setting any of these beforehand overrides it.)
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[str]:
    """Join the configured cluster (ray.address or RAY_ADDRESS, as set by `ray job submit`),
    else start a local Ray. A Ray the caller already initialised is used as is."""
    configure_data_context()
    if ray.is_initialized():
        yield "existing Ray session"
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # Tests inject faults into workers through this variable; it travels with the job. (The
        # workers of a local Ray inherit it from this process: a runtime_env there would keep
        # the workers Ray starts ahead from being used, and slow every start down.)
        runtime_env = {"env_vars": {FAULTS_ENV: os.environ[FAULTS_ENV]}} if FAULTS_ENV in os.environ else None
        ray.init(address=address, runtime_env=runtime_env)
        where = f"Ray cluster at {address}"
    else:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False)
        where = "local Ray (started by this job)"
    try:
        yield where
    finally:
        ray.shutdown()


def configure_data_context() -> None:
    """Ray Data settings the job relies on (called before building any dataset)."""
    ctx = ray.data.DataContext.get_current()
    # Re-raise a UDF's own exception (e.g. InputError naming the bad rows), not a
    # generic UserCodeException around it.
    ctx.raise_original_map_exception = True
    quiet_ray_data_console()  # (so an error the user caused is its one line on the console)


READ_TASK_CPUS = 1  # what Ray Data's read tasks ask for


def check_pool_fits(actors: list[ActorConfig]) -> None:
    """Refuse CPU actor pools that run together and leave less than one CPU, what a read
    task asks for, to the read tasks: Ray Data then waits forever."""
    cpu_pools = [a for a in actors if not (a.num_gpus > 0 or a.resources)]
    if not cpu_pools:
        return
    total = ray.cluster_resources().get("CPU", 0)
    need = sum(a.pool_size.min * a.num_cpus for a in cpu_pools)
    if 0 < total < need + READ_TASK_CPUS:  # (0 CPUs: an autoscaling cluster that has not added workers yet)
        shown = " + ".join(f"{a.pool_size.min} x {a.num_cpus}" for a in cpu_pools)
        raise ConfigError(
            f"actor.pool_size.min x actor.num_cpus of the pools that run together: {shown} = {need:g} CPUs, "
            f"which leaves {max(total - need, 0):g} of the cluster's {total:g} to the read tasks, each of which "
            f"needs {READ_TASK_CPUS}: the read stage then never starts and the job hangs. Lower the pool size or "
            "num_cpus (fractions are allowed, e.g. num_cpus: 0.5)."
        )


@contextmanager
def actor_pool_deadline(actors: list[ActorConfig]) -> Iterator[None]:
    """Fail, instead of waiting forever, when the first actors of the pools that run together
    cannot be placed within actor.start_timeout_s (e.g. num_gpus on a cluster without GPUs).

    The check places a placement group that holds what those actors ask for (no process
    starts for it), then removes it. The pools then start without Ray Data waiting for their
    actors, so the models load while the input is listed, read and normalized, not before."""
    timeout = max(a.start_timeout_s for a in actors)
    wanted = [a for a in actors for _ in range(a.pool_size.min)]
    selectors = [dict(a.label_selector) for a in wanted]
    pg = placement_group([_bundle(a) for a in wanted], strategy="PACK",
                         bundle_label_selector=selectors if any(selectors) else None)
    try:
        ray.get(pg.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError as e:
        wants = "; ".join(f"num_cpus={a.num_cpus}, num_gpus={a.num_gpus}, resources={dict(a.resources)}"
                          for a in actors)
        raise ConfigError(
            f"an actor pool did not start within actor.start_timeout_s ({timeout:g} s): no node offers "
            f"what one actor asks for ({wants}); cluster has {ray.cluster_resources()}"
        ) from e
    finally:
        remove_placement_group(pg)
    ray.data.DataContext.get_current().wait_for_min_actors_s = -1  # (start the pools, don't wait for them)
    yield


def _bundle(actor: ActorConfig) -> dict[str, float]:
    """The resources one actor of `actor`'s pool asks Ray for."""
    return {"CPU": actor.num_cpus, **({"GPU": actor.num_gpus} if actor.num_gpus else {}), **actor.resources}


def actor_pool_args(actor: ActorConfig, constructor_kwargs: dict[str, Any]) -> dict[str, Any]:
    """map_batches(...) keyword arguments for an actor-pool stage.

    Ray Data restarts an actor that died and retries its batch; the actor itself bounds
    how often (actor.max_restarts, reranker_actors.restarts).
    """
    size = actor.pool_size
    # A GPU actor runs two calls at once: one prepares its batch (Arrow to text, tokens)
    # while the other's forward passes keep the GPU busy, so the GPU never waits between calls.
    overlap = dict(max_concurrent_calls_per_actor=2, enable_true_multi_threading=True) if actor.num_gpus else {}
    compute = (ray.data.ActorPoolStrategy(size=size.min, **overlap) if size.min == size.max
               else ray.data.ActorPoolStrategy(min_size=size.min, max_size=size.max, **overlap))
    return dict(compute=compute, batch_size=actor.batch_size, num_cpus=actor.num_cpus,
                num_gpus=actor.num_gpus or None, resources=dict(actor.resources) or None,
                # Passed even when empty: Ray Data then never fuses the read and normalize
                # tasks into the actors' operator, so they run beside the scorers, not on them.
                label_selector=dict(actor.label_selector),
                fn_constructor_kwargs=constructor_kwargs)


def ray_filesystem(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem | None:
    """What to pass as `filesystem=` to Ray Data: None for local paths, else the fsspec fs."""
    return None if isinstance(fs, LocalFileSystem) else fs
