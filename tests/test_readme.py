"""The README, docs/ and CI must not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobs.config import JobConfig, PoolSize
from reranker_actors.registry import BACKENDS
from tests.conftest import REPO

pytestmark = pytest.mark.unit

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()
MAX_README_LINES = 260

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not PoolSize:
            out += keys(ann, f"{prefix}{name}.")
        elif name != "backend" or prefix != "reranker.":
            out.append(prefix + name)
    return out


def without_code(markdown: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower-case, punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_slug_follows_githubs_rules() -> None:
    assert slug("Publishing, reruns and resume") == "publishing-reruns-and-resume"
    assert slug("dtype `auto` (CPU/GPU)") == "dtype-auto-cpugpu"
    assert slug("snake_case and-dash") == "snake_case-and-dash"


def test_the_readme_is_a_front_door() -> None:
    lines = README.count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"
    assert "make test-unit" in README


def test_every_config_key_is_in_the_configuration_reference() -> None:
    all_keys = [k for k in keys(JobConfig) if not k.startswith("reranker")]
    for family in BACKENDS.values():
        all_keys += keys(family.config_class, "reranker.")
    all_keys.append("reranker.backend")
    reference = CONFIGURATION.split("## Reference", 1)[1].split("\n## ", 1)[0]
    missing = sorted({k for k in all_keys if f"`{k}`" not in reference})
    assert not missing, f"docs/configuration.md reference lacks: {missing}"


def commands(text: str) -> list[str]:
    """The lines of a script or a code block as commands: stripped, comments cut off."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines()]


def test_the_readme_commands_are_the_makefile_targets_and_ci_runs_the_test_one() -> None:
    assert {"make demo", "make test"} <= set(commands(README)), "the README's two commands, each on its own line"
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "configs/demo.yaml" in makefile
    assert re.search(r"^test-unit\b.*:", makefile, re.M), "the Makefile has no test-unit target"
    ci = commands((REPO / ".ci" / "run").read_text())
    assert "make test" in ci, ".ci/run must run the README's `make test` (make test-slow is another command)"
    assert "make test-slow" in ci


def test_every_test_the_troubleshooting_table_names_exists() -> None:
    table = OPERATIONS.split("## Troubleshooting bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) >= 15
    for row in rows:
        path, name = re.search(r"`(tests/\w+\.py)::(\w+)`", row).groups()
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{path}::{name} is missing"


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(source: Path) -> None:
    broken = []
    for target in LINK.findall(without_code(source.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(f"{target} (no file {path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{source.relative_to(REPO)}: broken links: {broken}"
