"""Errors a user can cause (the engine's, reranker_actors.errors, used by the job as they
are), and how to find them inside Ray's exception wrappers."""

from __future__ import annotations

from reranker_actors.errors import ConfigError, GateFailure, InputError, ModelError, UserError

__all__ = ["ConfigError", "GateFailure", "InputError", "ModelError", "UserError", "find_user_error"]


def find_user_error(exc: BaseException) -> UserError | None:
    """Return the UserError at the root of `exc`, looking through Ray's task wrappers.

    Ray Data re-raises a UDF's exception as UserCodeException / RayTaskError, which
    keep the original in `.cause`, `__cause__` or `__context__`.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, UserError):
            # Ray's RayTaskError subclasses the cause's type; its str() adds a traceback.
            return cause if isinstance(cause, UserError) else e
        todo += [cause, e.__cause__, e.__context__]
    return None
