"""The README and CI must not drift from the code."""

from __future__ import annotations

import re

from pydantic import BaseModel

from jobs.config import JobConfig, PoolSize
from reranker_actors.registry import BACKENDS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not PoolSize:
            out += keys(ann, f"{prefix}{name}.")
        elif name != "backend" or prefix != "reranker.":
            out.append(prefix + name)
    return out


def test_every_config_key_is_in_the_readme_reference() -> None:
    all_keys = [k for k in keys(JobConfig) if not k.startswith("reranker")]
    for family in BACKENDS.values():
        all_keys += keys(family.config_class, "reranker.")
    all_keys.append("reranker.backend")
    missing = sorted({k for k in all_keys if f"`{k}`" not in README})
    assert not missing, f"README config reference lacks: {missing}"


def test_the_readme_commands_are_the_makefile_targets_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "configs/demo.yaml" in makefile
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci.split("\n", 2)[-1]


def test_every_test_the_troubleshooting_table_names_exists() -> None:
    table = README.split("## Troubleshooting bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) >= 15
    for row in rows:
        path, name = re.search(r"`(tests/\w+\.py)::(\w+)`", row).groups()
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{path}::{name} is missing"
