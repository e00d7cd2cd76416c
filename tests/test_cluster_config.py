"""cluster.yaml (Ray cluster launcher, AWS) checked by Ray's own validation: the
autoscaler's JSON schema shipped inside the ray package, after the launcher fills in
the provider's defaults exactly as `ray up` does."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation(cluster: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_rays_validation_rejects_a_mistyped_key(cluster: dict) -> None:
    """The check above can fail: the schema forbids unknown keys in a node type."""
    cluster["available_node_types"]["gpu_1x_l4"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(cluster))


def test_node_types_match_what_the_docs_promise(cluster: dict) -> None:
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no tasks
    gpus = {t["node_config"]["InstanceType"]: t["resources"].get("GPU", 0) for t in types.values()}
    assert gpus["g6.xlarge"] == 1 and gpus["p5.48xlarge"] == 8
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert all(t["min_workers"] == 0 < t["max_workers"] for t in workers)  # autoscales to zero
    assert sum(t["max_workers"] for t in workers) == cluster["max_workers"]


def test_nodes_run_the_pinned_ray_and_install_the_project(cluster: dict) -> None:
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{pins['ray']}-")
    mount = next(dest for dest, src in cluster["file_mounts"].items() if src == ".")
    assert any(f"pip install -q -e {mount}" in c for c in cluster["setup_commands"])
