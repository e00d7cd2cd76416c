"""k8s/rayjob.yaml against the KubeRay ray.io/v1 fields it uses.

The field names are facts from KubeRay's API reference (docs/reference/api.md of
ray-project/kuberay, v1.3 era: RayJobSpec, RayClusterSpec, HeadGroupSpec,
WorkerGroupSpec, AutoscalerOptions). Pod templates are Kubernetes' own type and are
checked only where the job depends on them (image, GPU requests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.config import load_config

REPO = Path(__file__).resolve().parents[1]
POD = None  # a Kubernetes PodTemplateSpec: not checked field by field
STRINGS = None  # map[string]string
AUTOSCALER = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
              "upscalingMode", "env", "envFrom", "volumeMounts"}
HEAD = {"template": POD, "headService": None, "enableIngress": None, "rayStartParams": STRINGS, "serviceType": None}
WORKER = {"suspend": None, "groupName": None, "replicas": None, "minReplicas": None, "maxReplicas": None,
          "idleTimeoutSeconds": None, "rayStartParams": STRINGS, "template": POD, "scaleStrategy": None,
          "numOfHosts": None}
CLUSTER = {"suspend": None, "managedBy": None, "autoscalerOptions": dict.fromkeys(AUTOSCALER),
           "headServiceAnnotations": STRINGS, "enableInTreeAutoscaling": None, "gcsFaultToleranceOptions": None,
           "headGroupSpec": HEAD, "rayVersion": None, "workerGroupSpecs": [WORKER]}
RAYJOB = {"activeDeadlineSeconds": None, "backoffLimit": None, "rayClusterSpec": CLUSTER,
          "submitterPodTemplate": POD, "metadata": STRINGS, "clusterSelector": STRINGS, "submitterConfig": None,
          "managedBy": None, "deletionPolicy": None, "entrypoint": None, "runtimeEnvYAML": None, "jobId": None,
          "submissionMode": None, "entrypointResources": None, "entrypointNumCpus": None,
          "entrypointNumGpus": None, "ttlSecondsAfterFinished": None, "shutdownAfterJobFinishes": None,
          "suspend": None}


def unknown_fields(value: object, spec: object, where: str) -> list[str]:
    """Paths of keys in `value` that `spec` (nested dicts; [x] for lists) does not allow."""
    if isinstance(spec, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(item, spec[0], f"{where}[{i}]")]
    if not isinstance(spec, dict):
        return []
    found = []
    for key, sub in value.items():
        if key not in spec:
            found.append(f"{where}.{key}")
        else:
            found += unknown_fields(sub, spec[key], f"{where}.{key}")
    return found


@pytest.fixture()
def manifest() -> dict:
    return yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())


def test_rayjob_uses_only_kuberay_v1_fields(manifest: dict) -> None:
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert unknown_fields(manifest["spec"], RAYJOB, "spec") == []
    assert manifest["spec"]["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode")
    assert manifest["spec"]["rayClusterSpec"]["autoscalerOptions"]["upscalingMode"] in (
        "Default", "Aggressive", "Conservative")


def test_the_field_check_catches_a_misspelled_field(manifest: dict) -> None:
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["maxReplica"] = 3
    manifest["spec"]["shutdownAfterJobFinish"] = True
    assert unknown_fields(manifest["spec"], RAYJOB, "spec") == [
        "spec.rayClusterSpec.workerGroupSpecs[1].maxReplica", "spec.shutdownAfterJobFinish"]


def test_cluster_shape_and_versions(manifest: dict) -> None:
    cluster = manifest["spec"]["rayClusterSpec"]
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert cluster["rayVersion"] == pins["ray"]
    assert f"rayproject/ray:{pins['ray']}-" in (REPO / "k8s" / "Dockerfile").read_text()
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-1x")
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_entrypoint_runs_a_shipped_config(manifest: dict) -> None:
    words = manifest["spec"]["entrypoint"].split()
    assert words[:3] == ["python", "-m", "jobs.rerank"]
    config = words[words.index("--config") + 1].replace("/home/ray/batch-rerank", str(REPO))
    cfg = load_config(Path(config), words[words.index("--config") + 2:])
    assert cfg.output.path.startswith("s3://") and cfg.reranker.backend == "cross_encoder"
