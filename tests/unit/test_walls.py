"""The walls of the house, read from the source (AST), every import counted — at module level or inside a function:

- only the composition root (engine/app) and actors/ touch Ray or the actors;
- the embedding room runs on a GPU box with torch and transformers alone, the embedded endpoint never imports the
  pipeline;
- rooms import only rooms below them, and no modules of engine/ form an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lower rooms first: a module may import its own room and the rooms of lower rank.
RANK = {"errors": 0, "tunables": 0, "config": 1, "qdrant": 2, "embed": 2, "embedded": 3, "flow": 3, "migration": 4,
        "verify": 5, "app": 6, "__main__": 7, "__init__": 0, "configs": 0}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth of the code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            # `from engine.flow import lane` imports the module engine.flow.lane
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def _sources(folder: str) -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}


ENGINE = _sources("engine")
ACTORS = _sources("actors")


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_only_the_composition_root_imports_ray_or_actors():
    offenders = []
    for name, path in ENGINE.items():
        if _room(name) == "app":
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top in ("ray", "actors"):
                offenders.append(f"{name} imports {imported}")
    assert offenders == [], offenders


def test_actors_never_import_the_composition_root():
    offenders = [f"{name} imports {imp}" for name, path in ACTORS.items() for imp in _imports(path)
                 if imp.startswith("engine.app")]
    assert offenders == [], offenders


def test_rooms_import_only_rooms_below_them():
    offenders = []
    for name, path in ENGINE.items():
        here = _room(name)
        for imported in _imports(path):
            if not imported.startswith("engine.") or imported == "engine":
                continue
            there = _room(imported)
            if there != here and RANK.get(there, 99) >= RANK.get(here, 99):
                offenders.append(f"{name} ({here}) imports {imported} ({there})")
    assert offenders == [], offenders


def test_the_embedded_endpoint_and_the_embed_room_stay_apart_from_the_pipeline():
    allowed = {"embedded": ("engine.embedded", "engine.errors", "engine.qdrant.values"),
               "embed": ("engine.embed", "engine.errors", "engine.tunables")}
    offenders = []
    for name, path in ENGINE.items():
        room = _room(name)
        if room not in allowed:
            continue
        for imported in _imports(path):
            if imported.startswith("engine.") and not imported.startswith(allowed[room]):
                offenders.append(f"{name} imports {imported}")
    assert offenders == [], offenders


def test_no_import_cycles_among_engine_modules():
    graph: dict[str, set[str]] = {}
    for name, path in ENGINE.items():
        targets = set()
        for imported in _imports(path):
            # The deepest engine module the import names (a package's __init__ otherwise).
            while imported and imported not in ENGINE:
                imported = imported.rsplit(".", 1)[0] if "." in imported else ""
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_walls_test_sees_a_planted_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    import ray\n    from actors.pool import RayLanePool\n")
    assert {"ray", "actors.pool", "actors.pool.RayLanePool"} <= _imports(bad)
