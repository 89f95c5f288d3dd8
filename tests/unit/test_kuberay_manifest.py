"""deploy/kuberay/rayjob.yaml checked offline: the RayJob against the CRD schema of a KubeRay release (vendored), the
job config in its ConfigMap through the project's own loader, the API key from a Secret, GPUs on the workers."""

from __future__ import annotations

import copy
import json
import re
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.config import config_from_dict
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
SCHEMA = ROOT / "deploy" / "kuberay" / "schema" / "rayjob-v1.7.0.json"
CLUSTER = ROOT / "ray-cluster.yaml"
ENTRYPOINT = "python -m engine run --config /config/job.yaml"
GPU = "nvidia.com/gpu"


def _docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected, found {kinds}"
    return {d["kind"]: d for d in docs}


def _rayjob() -> dict:
    return _docs()["RayJob"]


def _strict(schema: dict) -> dict:
    """The API server drops fields a structural schema does not name (kubectl --validate=strict refuses them):
    a misspelt field would be lost without a word. Closing every object that names its properties turns that
    into a validation error here."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # openAPIV3Schema is OpenAPI 3.0's dialect, whose keywords follow JSON Schema draft 4.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(_strict(schema))


def _errors(validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]


def _head(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]


def _workers(job: dict) -> list[dict]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay runs Ray in the first container


def _quantity(value) -> int:
    return int(str(value))


def test_vendored_schema_is_the_rayjob_v1_schema():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert "v1.7.0" in schema["$comment"] and "ray.io_rayjobs.yaml" in schema["$comment"]
    spec = schema["properties"]["spec"]["properties"]
    for field in ("entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"):
        assert field in spec


def test_rayjob_matches_the_crd_schema():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    errors = _errors(_validator(), job)
    assert not errors, "RayJob does not match the CRD schema:\n" + "\n".join(errors)


def test_schema_check_catches_a_misspelt_field():
    job = _rayjob()
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    _container(_workers(job)[0])["resource"] = _container(_workers(job)[0]).pop("resources")
    errors = _errors(_validator(), job)
    assert any("shutdownAfterJobFinish" in e for e in errors), errors
    assert any("'resource'" in e for e in errors), errors


def test_rayjob_passes_the_operators_own_checks():
    """What KubeRay's webhook and controller refuse beyond the schema (ray-operator/controllers/ray/utils/
    validation.go at v1.7.0), for the fields this manifest sets."""
    job = _rayjob()
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47, f"bad RayJob name {name!r}"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True, "the GPU cluster would outlive the job"
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert spec.get("backoffLimit", 0) >= 0
    autoscaling = spec["rayClusterSpec"].get("enableInTreeAutoscaling", False)
    for group in _workers(job):
        if not autoscaling:
            assert "minReplicas" in group and "maxReplicas" in group, group["groupName"]
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])


def test_entrypoint_reads_the_config_from_the_configmap():
    docs = _docs()
    job, configmap = docs["RayJob"], docs["ConfigMap"]
    assert job["spec"]["entrypoint"] == ENTRYPOINT
    config_path = ENTRYPOINT.split("--config ", 1)[1]
    mount_dir, file_name = config_path.rsplit("/", 1)

    # The entrypoint runs on the head (Ray's job supervisor lives there).
    head = _head(job)["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container(_head(job)).get("volumeMounts", [])}
    volumes = [
        v for v in head.get("volumes", []) if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    ]
    assert volumes, "the head mounts no volume from the ConfigMap"
    volume = volumes[0]
    assert mounts.get(volume["name"]) == mount_dir, f"the ConfigMap is not mounted at {mount_dir}"
    items = volume["configMap"].get("items")
    key = next(i["key"] for i in items if i["path"] == file_name) if items else file_name
    assert key in configmap["data"], f"{config_path} would not exist: the ConfigMap has no key {key!r}"


def test_job_config_loads_with_the_projects_loader():
    configmap = _docs()["ConfigMap"]
    data = yaml.safe_load(configmap["data"]["job.yaml"])
    # env={}: the developer's own QDRANT_URL / QDRANT_API_KEY must not mask a problem in the file.
    cfg = config_from_dict(data, env={})
    assert cfg.qdrant.api_key is None, "the API key belongs in the Secret, not in the ConfigMap"
    assert cfg.model.device == "cuda"
    with pytest.raises(ConfigError):  # the loader refuses unknown keys, which is what makes the check above bite
        config_from_dict({**data, "pipline": {"shards": 4}}, env={})


def test_dead_letters_land_on_the_claim():
    docs = _docs()
    job, claim = docs["RayJob"], docs["PersistentVolumeClaim"]
    cfg = config_from_dict(yaml.safe_load(docs["ConfigMap"]["data"]["job.yaml"]), env={})
    head = _head(job)["template"]["spec"]
    volume = next(
        v["name"]
        for v in head["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    )
    mount = next(m["mountPath"] for m in _container(_head(job))["volumeMounts"] if m["name"] == volume)
    assert Path(cfg.dead_letter.dir).is_relative_to(mount), (
        f"dead_letter.dir {cfg.dead_letter.dir} is not on the claim mounted at {mount}: it would die with the head"
    )
    # The lanes write dead letters on the workers: every worker group mounts the same claim at the same path, and
    # the claim can be mounted by many pods at once.
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        names = [v["name"] for v in spec.get("volumes", [])
                 if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] in names]
        assert mount in mounts, f"worker group {group['groupName']} does not mount the run directory at {mount}"


def test_api_key_comes_from_a_secret():
    docs = _docs()
    assert "Secret" not in docs, "the manifest ships a Secret; create it out of band so the key is never committed"
    env = {e["name"]: e for e in _container(_head(_rayjob())).get("env", [])}
    assert "QDRANT_API_KEY" in env, "the driver gets no QDRANT_API_KEY"
    entry = env["QDRANT_API_KEY"]
    assert "value" not in entry, "QDRANT_API_KEY is written into the manifest"
    ref = entry.get("valueFrom", {}).get("secretKeyRef", {})
    assert ref.get("name") and ref.get("key"), f"QDRANT_API_KEY does not come from a Secret: {entry}"
    assert not ref.get("optional", False), "a missing Secret would start the job without a key"


def test_gpu_workers_and_a_gpu_free_head():
    job = _rayjob()
    cfg = config_from_dict(yaml.safe_load(_docs()["ConfigMap"]["data"]["job.yaml"]), env={})
    head = _container(_head(job))["resources"]
    assert GPU not in head.get("limits", {}) and GPU not in head.get("requests", {}), "the head asks for a GPU"
    assert _workers(job), "no worker group"
    for group in _workers(job):
        resources = _container(group)["resources"]
        # Kubernetes schedules extended resources by their limit; a request, if given, must equal it.
        gpus = _quantity(resources.get("limits", {}).get(GPU, 0))
        assert gpus >= 1, f"worker group {group['groupName']} has no {GPU} limit"
        if GPU in resources.get("requests", {}):
            assert _quantity(resources["requests"][GPU]) == gpus
        assert cfg.pipeline.embed_gpus_per_actor <= gpus, "an embedding actor needs more GPUs than a pod has"


def test_image_matches_the_cluster_launcher_and_the_installed_ray():
    job = _rayjob()
    images = {c["image"] for g in [_head(job), *_workers(job)] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers run different images: {sorted(images)}"
    image = images.pop()
    cluster = yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))
    base = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-gpu", cluster["docker"]["image"])
    assert base, f"ray-cluster.yaml's image {cluster['docker']['image']!r} is not Ray's GPU image"
    ray_version, python = base.groups()
    # A regex, not tomllib: the project still supports Python 3.10.
    project = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)[1]
    # deploy/docker/Dockerfile builds FROM the cluster's image; its tag names the wheel and the stack inside.
    assert image.endswith(f":{project}-ray{ray_version}-{python}-gpu"), (
        f"{image} is not the image deploy/docker/Dockerfile builds for reembed {project} on Ray {ray_version}"
    )
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    try:
        installed = metadata.version("ray")
    except metadata.PackageNotFoundError:
        return
    assert ray_version == installed, f"the manifest runs Ray {ray_version}, this checkout installs Ray {installed}"
