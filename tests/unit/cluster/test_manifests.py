"""Deployment configs in cluster/manifests: they parse, and they validate against schemas.

- Kubernetes core kinds (Namespace, Secret, Service, StatefulSet, Deployment, PVC, ConfigMap):
  the strict JSON schemas shipped by the `kubernetes-validate` package (unknown fields fail).
- KubeRay RayCluster / RayJob: a JSON schema written here from KubeRay's API types
  (ray-project/kuberay, ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go:
  field names, required fields, types), with every pod `template` checked against the strict
  Kubernetes PodTemplateSpec schema.
- The Ray cluster-launcher YAML: Ray's own `ray/autoscaler/ray-schema.json`.
- The sweep spec inside the RayJob's ConfigMap: `orchestrator.config.spec.parse_spec`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from orchestrator.config.spec import parse_spec

MANIFESTS = Path(__file__).resolve().parents[3] / "cluster" / "manifests"
K8S_VERSION = "1.30"


def docs(name: str) -> list[dict[str, Any]]:
    """Every YAML document of a manifest file."""
    with open(MANIFESTS / name) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for name in K8S_FILES for d in docs(name) if d["kind"] == kind]


K8S_FILES = ["raycluster.yaml", "rayjob.yaml", "mlflow.yaml"]
CORE_KINDS = {"Namespace", "Secret", "Service", "StatefulSet", "Deployment", "PersistentVolumeClaim", "ConfigMap"}


@pytest.mark.parametrize("name", K8S_FILES)
def test_every_document_has_api_version_kind_metadata(name: str) -> None:
    found = docs(name)
    assert found
    for d in found:
        assert isinstance(d.get("apiVersion"), str) and isinstance(d.get("kind"), str)
        assert d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "scalesweep"


def _k8s_validator(schema_file: str):
    kv = pytest.importorskip("kubernetes_validate.utils")
    from referencing import Registry, Resource

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= K8S_VERSION][-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv.schema_contents(f"{folder}/{schema_file}", version)
    defs = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("name", K8S_FILES)
def test_core_kinds_validate_against_kubernetes_schemas(name: str) -> None:
    core = [d for d in docs(name) if d["kind"] in CORE_KINDS]
    for d in core:
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        version = d["apiVersion"].split("/")[-1]
        fname = f"{d['kind'].lower()}-{group.split('.')[0] + '-' if group else ''}{version}.json"
        _k8s_validator(fname).validate(d)


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in by_kind("RayCluster"):
        spec = d["spec"]
        out.append(("head", spec["headGroupSpec"]["template"]))
        out += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    for d in by_kind("RayJob"):
        spec = d["spec"]["rayClusterSpec"]
        out.append(("job head", spec["headGroupSpec"]["template"]))
        out += [("job " + g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def test_pod_templates_validate_against_kubernetes_schema() -> None:
    validator = _k8s_validator("podtemplatespec-v1.json")
    templates = _pod_templates()
    assert len(templates) == 4
    for _, t in templates:
        validator.validate(t)


# From KubeRay's v1 API types: json tags give the names; fields without omitempty are required.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer", "minimum": 0}
_TEMPLATE = {"type": "object", "required": ["spec"]}  # contents: the PodTemplateSpec check above
HEAD_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["rayStartParams", "template"],
    "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                   "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
                   "rayStartParams": _STR_MAP, "template": _TEMPLATE}}
WORKER_GROUP = {
    "type": "object", "additionalProperties": False,
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "properties": {"groupName": {"type": "string", "minLength": 1}, "replicas": _INT, "minReplicas": _INT,
                   "maxReplicas": _INT, "numOfHosts": _INT, "rayStartParams": _STR_MAP, "template": _TEMPLATE,
                   "scaleStrategy": {"type": "object"}}}
RAY_CLUSTER_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {"headGroupSpec": HEAD_GROUP, "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
                   "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                   "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
                       "resources": {"type": "object"}, "image": {"type": "string"},
                       "imagePullPolicy": {"type": "string"}, "env": {"type": "array"}, "envFrom": {"type": "array"},
                       "volumeMounts": {"type": "array"}, "securityContext": {"type": "object"},
                       "idleTimeoutSeconds": _INT,
                       "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}}},
                   "headServiceAnnotations": _STR_MAP, "suspend": {"type": "boolean"}}}
RAY_JOB_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {"activeDeadlineSeconds": _INT, "backoffLimit": _INT, "rayClusterSpec": RAY_CLUSTER_SPEC,
                   "submitterPodTemplate": {"type": "object"}, "metadata": _STR_MAP, "clusterSelector": _STR_MAP,
                   "submitterConfig": {"type": "object"}, "managedBy": {"type": "string"},
                   "deletionStrategy": {"type": "object"}, "entrypoint": {"type": "string", "minLength": 1},
                   "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
                   "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                   "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
                   "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": _INT,
                   "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"},
                   "schedule": {"type": "string"}}}


def _cr_schema(spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": "ray.io/v1"}, "spec": spec}}


def test_raycluster_matches_kuberay_api() -> None:
    (rc,) = by_kind("RayCluster")
    jsonschema.validate(rc, _cr_schema(RAY_CLUSTER_SPEC))
    groups = rc["spec"]["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"] for g in groups)
    for g in groups:  # GPU workers: nvidia.com/gpu in the limits (what Ray reads to advertise GPUs)
        (c,) = g["template"]["spec"]["containers"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_rayjob_runs_the_sweep_from_the_configmap() -> None:
    (job,) = by_kind("RayJob")
    jsonschema.validate(job, _cr_schema(RAY_JOB_SPEC))
    spec = job["spec"]
    assert spec["entrypoint"] == "scalesweep run /specs/sweep.yaml"
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_ADDRESS"] == "auto"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    cm_name = volumes[mounts["/specs"]]["configMap"]["name"]
    (cm,) = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == cm_name]
    sweep = parse_spec(yaml.safe_load(cm["data"]["sweep.yaml"]), source="rayjob ConfigMap")
    assert sweep.resources.use_gpu
    assert sweep.tracking.uri == "http://mlflow.scalesweep.svc.cluster.local:5000"


def test_claims_and_services_referenced_exist() -> None:
    claims = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    for _, t in _pod_templates():
        for v in t["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    services = {d["metadata"]["name"]: d for d in by_kind("Service")}
    for workload in by_kind("Deployment") + by_kind("StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        svc = services[workload["metadata"]["name"]]
        assert svc["spec"]["selector"].items() <= labels.items()
    (sts,) = by_kind("StatefulSet")
    assert sts["spec"]["serviceName"] == "postgres" and sts["spec"]["volumeClaimTemplates"]


def test_mlflow_server_uses_postgres_and_serves_artifacts() -> None:
    (dep,) = by_kind("Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"]
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
    assert args["--backend-store-uri"].startswith("postgresql://")
    assert "postgres.scalesweep.svc.cluster.local:5432" in args["--backend-store-uri"]
    assert "--serve-artifacts" in args and args["--artifacts-destination"] == "/mlartifacts"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/mlartifacts" in mounts
    # the $(VAR) references in args resolve from the container's env
    secret_keys = set(next(d for d in by_kind("Secret"))["stringData"])
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= secret_keys
    assert c["envFrom"][0]["secretRef"]["name"] == "mlflow-postgres"


def test_cluster_launcher_validates_against_rays_schema() -> None:
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    (config,) = docs("cluster-launcher.yaml")
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any("scalesweep" in cmd for cmd in config["setup_commands"])
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != config["head_node_type"]) <= config["max_workers"]


def test_launcher_schema_rejects_a_broken_config() -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    (config,) = docs("cluster-launcher.yaml")
    broken = {k: v for k, v in config.items() if k != "provider"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "no_such_key": 1}, schema)


def test_pod_template_schema_rejects_a_typo() -> None:
    validator = _k8s_validator("podtemplatespec-v1.json")
    _, template = _pod_templates()[1]
    container = dict(template["spec"]["containers"][0])
    container["resource"] = container.pop("resources")  # misspelt field: strict schema refuses it
    broken = {**template, "spec": {**template["spec"], "containers": [container]}}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)
