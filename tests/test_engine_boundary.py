"""The engine (reranker_actors) stands alone, the job reads what a family can do from the
family, never from its backend name, and only the scoring actors load torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from reranker_actors.registry import BACKENDS
from tests.conftest import REPO


def test_the_engine_imports_nothing_from_the_job() -> None:
    imports = re.compile(r"^\s*(from|import) jobs\b", re.MULTILINE)
    offenders = [p.name for p in (REPO / "reranker_actors").glob("*.py") if imports.search(p.read_text())]
    assert offenders == []


def test_importing_the_engine_loads_no_job_module() -> None:
    code = ("import sys, reranker_actors.registry, reranker_actors.actor; "
            "print(sorted(m for m in sys.modules if m == 'jobs' or m.startswith('jobs.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_backend_name_appears_in_the_job() -> None:
    """Capabilities come from reranker_actors.registry.family(backend), never from a name test."""
    found = []
    for path in (REPO / "jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in BACKENDS:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert found == []


def test_the_job_and_the_configs_load_without_torch() -> None:
    """torch and transformers load only where a model runs (the scoring actors): the driver
    and the read, normalize, rank and label tasks, which unpickle the job's functions and
    configs in fresh worker processes, do not pay for importing them."""
    code = ("import sys, jobs.rerank, jobs.distill_labels, jobs.normalize, jobs.cascade, jobs.plan, "
            "reranker_actors.registry; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
