"""ray-cluster.yaml (and the image KubeRay runs, deploy/docker/Dockerfile) checked offline: Ray's own cluster-config
validator, GPU node types on the GPU image, one Ray and Python version everywhere, the same pins on every node."""

from __future__ import annotations

import copy
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "ray-cluster.yaml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

# Ray's images: rayproject/ray:<ray>-py<XY>[-gpu|-cuNNN|-cpu]; "-gpu" aliases one CUDA build, "-cuNNN" names it.
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-(?P<py>py3\d+)(?P<platform>-gpu|-cu\d+|-cpu)?$")
# EC2 families with NVIDIA GPUs (g: graphics/inference, gr: ARM + GPU, p: training).
GPU_INSTANCE = re.compile(r"^(g\d+[a-z]*|gr\d+|p\d+[a-z]*)\.")


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed")


def _base_version(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu -> 2.13.0: the local tag names the build, not the release


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))


def _node_image(cfg: dict, name: str) -> str:
    """The image Ray's launcher runs on that node type, with its precedence (node type, then head/worker, then
    the shared image)."""
    docker = cfg.get("docker") or {}
    if name == cfg["head_node_type"]:
        return docker.get("head_image") or docker["image"]
    node_docker = cfg["available_node_types"][name].get("docker") or {}
    return node_docker.get("worker_image") or docker.get("worker_image") or docker["image"]


def _declares_gpus(node: dict) -> bool:
    return (node.get("resources") or {}).get("GPU", 0) > 0 or bool(
        GPU_INSTANCE.match(node["node_config"].get("InstanceType", ""))
    )


def _images(cfg: dict) -> dict[str, re.Match]:
    out = {}
    for name in cfg["available_node_types"]:
        image = _node_image(cfg, name)
        match = RAY_IMAGE.match(image)
        assert match, f"node type {name}: image {image!r} is not one of Ray's images (rayproject/ray:<ray>-pyXY...)"
        out[name] = match
    return out


def _pins(text: str) -> dict[str, str]:
    return {
        m["name"]: m["version"] for m in re.finditer(r"\b(?P<name>ray|torch)(?:\[[\w,]+\])?==(?P<version>[\w.]+)", text)
    }


def test_ray_cluster_config_passes_rays_validator():
    pytest.importorskip("ray")
    # The launcher's own path (`ray up`): fill in the provider's defaults, then validate against ray-schema.json.
    # Neither step starts Ray or calls AWS.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_cluster())))


def test_every_gpu_node_type_runs_the_gpu_image():
    cfg = _cluster()
    images = _images(cfg)
    gpu_types = [name for name, node in cfg["available_node_types"].items() if _declares_gpus(node)]
    assert gpu_types, "no node type declares GPUs"
    for name in gpu_types:
        node = cfg["available_node_types"][name]
        platform = images[name]["platform"] or "-cpu"
        assert platform == "-gpu" or platform.startswith("-cu"), (
            f"node type {name} has GPUs but runs {_node_image(cfg, name)!r}, an image without CUDA"
        )
        kind = node["node_config"].get("InstanceType", "")
        assert GPU_INSTANCE.match(kind), f"node type {name} declares GPUs on {kind}, which has none"
        assert (node.get("resources") or {}).get("GPU", 0) >= 1, (
            f"node type {name} ({kind}) has GPUs but declares none in resources: the autoscaler would never pick it "
            "for the embedding actors"
        )
        assert node["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot", (
            f"GPU node type {name} is not spot"
        )


def test_head_is_for_the_driver_only():
    cfg = _cluster()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert not _declares_gpus(head), "the head declares GPUs; the driver needs none"
    assert head.get("resources", {}).get("CPU") == 0, "the head offers CPUs to tasks; the lanes belong on GPU nodes"
    assert head.get("max_workers", 0) == 0
    assert isinstance(cfg.get("max_workers"), int) and cfg["max_workers"] >= 1
    assert cfg.get("idle_timeout_minutes", 0) > 0


def test_ray_and_python_versions_match_everywhere_and_the_installed_ray():
    cfg = _cluster()
    images = _images(cfg)
    rays = {m["ray"] for m in images.values()}
    pythons = {m["py"] for m in images.values()}
    assert len(rays) == 1, f"head and workers run different Ray versions: {sorted(rays)}"
    assert len(pythons) == 1, f"head and workers run different Pythons: {sorted(pythons)}"
    ray_version = _installed("ray")
    assert rays == {ray_version}, f"ray-cluster.yaml runs Ray {rays.pop()}, this checkout installs Ray {ray_version}"


def test_every_node_installs_the_same_wheel_with_cuda_torch():
    cfg = _cluster()
    setup = "\n".join(cfg.get("setup_commands") or [])
    # Node-type setup lists replace the shared ones, so a node type with its own would skip the install.
    for name, node in cfg["available_node_types"].items():
        assert "worker_setup_commands" not in node, f"node type {name} overrides the shared setup commands"
    assert not cfg.get("head_setup_commands"), "the head installs differently from the workers"

    mounts = cfg.get("file_mounts") or {}
    wheel_dirs = [remote for remote, local in mounts.items() if local.rstrip("/") == "dist"]
    assert wheel_dirs, "the wheel directory dist/ is not shipped with file_mounts"
    assert re.search(rf"{re.escape(wheel_dirs[0])}/reembed-\*\.whl\)\[[\w,]*\]", setup), (
        "setup_commands do not install the shipped reembed wheel"
    )
    assert "-e " not in setup and "--editable" not in setup, "an editable install ties the node to a source tree"

    pins = _pins(setup)
    assert pins.get("ray") == _installed("ray"), f"setup_commands pin ray {pins.get('ray')}"
    assert pins.get("torch") == _base_version(_installed("torch")), f"setup_commands pin torch {pins.get('torch')}"
    assert "+cpu" not in setup and "/whl/cpu" not in setup, "setup_commands install a CPU build of torch"
    assert "torch.version.cuda" in setup, "nothing stops a node whose torch is a CPU build"
    assert "device='cuda'" in "\n".join(cfg.get("worker_setup_commands") or []), (
        "GPU workers do not check that torch reaches the GPU"
    )


def test_kuberay_image_is_built_from_the_cluster_image_with_the_same_pins():
    cfg = _cluster()
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    gpu_images = {_node_image(cfg, n) for n, node in cfg["available_node_types"].items() if _declares_gpus(node)}
    assert bases == sorted(gpu_images), f"Dockerfile starts FROM {bases}, the GPU workers run {sorted(gpu_images)}"
    assert _pins(text) == _pins("\n".join(cfg.get("setup_commands") or [])), (
        "the Dockerfile and ray-cluster.yaml install different ray/torch versions"
    )
    assert "torch.version.cuda" in text
