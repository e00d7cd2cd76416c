"""A bound on how often a scoring actor is restarted after dying.

Ray Data restarts an actor that died (out-of-memory kill, lost node) and retries its
batch, without limit. An actor that dies on the same input every time would then loop
forever, so each restart is counted in a file on the actor's node, and past the limit
the actor refuses to work: the job stops with a message that says why.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from reranker_actors.errors import ModelError

COUNTS_DIR = "batch-rerank-restarts"


def starts_on_this_node() -> int:
    """How many times the current actor has started on this node, this start included
    (1 outside Ray). Ray keeps an actor's id across its restarts."""
    import ray

    actor = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    if actor is None:
        return 1
    directory = Path(tempfile.gettempdir()) / COUNTS_DIR
    directory.mkdir(exist_ok=True)
    with open(directory / actor, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = int(f.read().strip() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(count))
        f.flush()
        os.fsync(f.fileno())
    return count


def check_restarts(model: str, limit: int) -> None:
    """Raise once the current actor has been restarted more than `limit` times."""
    restarts = starts_on_this_node() - 1
    if restarts > limit:
        raise ModelError(
            f"an actor scoring with model {model!r} died and was restarted {restarts} times, more than "
            f"actor.max_restarts ({limit}): something kills it every time, e.g. the out-of-memory killer "
            "on batches too large for the node; lower actor.batch_size or reranker.max_tokens_per_batch, "
            "give the actor more memory, or raise actor.max_restarts"
        )
