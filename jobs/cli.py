"""The command line both jobs share: `--config <yaml> [key.sub=value ...]`, a summary on
success, `batch-rerank: error: ...` and exit status 2 for anything the user can fix, 3 for a
run the quality gates refused (after its summary)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.console import known_lines_dropped
from jobs.errors import find_user_error


def run_cli(prog: str, description: str, example: str, load_config: Callable[[str | Path, list[str]], Any],
            run: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=f"job YAML, e.g. {example}")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config keys, e.g. output.path=/tmp/out reranker.dtype=float32")
    args = parser.parse_args(argv)
    try:
        with known_lines_dropped():
            summary = run(load_config(args.config, args.overrides))
    except Exception as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        if summary_text := getattr(user_error, "summary", None):
            print(summary_text)  # (a run the quality gates refused: what they measured)
        print(f"batch-rerank: error: {user_error}", file=sys.stderr)
        return user_error.exit_status
    print(summary.render())
    return 0
