"""Errors a user can cause, and how to find them inside Ray's exception wrappers."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's config or data. The job prints the message and exits 2.

    The message alone must say what is wrong (file, column, row or key) and what would be
    accepted; no traceback is shown for these.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property  # type: ignore[override]
    def args(self) -> tuple[str]:
        return (self.message,)

    @args.setter
    def args(self, value: tuple) -> None:
        """Ignored: Ray Data appends generic retry advice to a UDF error's args, which would
        bury the one message the user needs under text about transient failures."""

    def __str__(self) -> str:
        return self.message


class ConfigError(UserError):
    """The YAML config or a command-line override is invalid."""


class InputError(UserError):
    """The input data is unusable: missing files, wrong schema, bad rows."""


class ModelError(UserError):
    """A model could not be loaded or cannot run on the requested device/dtype."""


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
