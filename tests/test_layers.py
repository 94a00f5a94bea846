"""The library's layers: imports only go down, and no two parts import each other.

Face (cli) -> orchestration (pipeline, report) -> stages -> data. Imports inside functions
count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lib" / "frameatlas"

LAYERS = {
    "face": {"cli", "scaffold", "serve"},
    "orchestration": {"pipeline", "report", "share"},
    "stages": {"frames", "caption", "ocr", "speech", "embed", "evaluation", "cluster", "project", "visualize", "search", "render", "investigator", "classify", "objects"},
    "data": {"__init__", "config", "files", "lock", "store", "corpus", "index", "plots", "progress", "summary", "models", "signature", "executor"},
}
ORDER = ["data", "stages", "orchestration", "face"]
# The package's __init__ sits in the data layer (everyone reads __version__) and re-exports one entry
# point for notebooks, `frameatlas.investigate`, imported inside the function on first use.
REEXPORTS = {("__init__", "investigator")}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The part of the library a module belongs to: `frameatlas.render.ffmpeg` -> `render`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> set[str]:
    """Every frameatlas module `path` imports, at module level or inside functions."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("frameatlas"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("frameatlas"):
                found.add(target)
                # `from . import x` / `from .pkg import mod`: x may be a module of its own
                found.update(f"{target}.{alias.name}" for alias in node.names if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists() or (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).is_dir())
    return found


def unit_graph() -> dict[str, set[tuple[str, str]]]:
    """unit -> {(imported unit, importing file)} across the package."""
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        source_unit = unit_of(module_name(path))
        for target in imported_modules(path):
            target_unit = unit_of(target)
            if target_unit != source_unit:
                graph[source_unit].add((target_unit, str(path.relative_to(REPO))))
    return graph


def test_every_part_of_the_library_has_a_layer():
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert units - set(LAYER_OF) == set(), "give new modules a layer in tests/test_layers.py"


def test_imports_only_go_down():
    upward = []
    for source, targets in unit_graph().items():
        for target, where in targets:
            if (source, target) in REEXPORTS:
                continue
            if ORDER.index(LAYER_OF[target]) > ORDER.index(LAYER_OF[source]):
                upward.append(f"{where}: {source} ({LAYER_OF[source]}) imports {target} ({LAYER_OF[target]})")
    assert upward == []


def test_no_two_parts_import_each_other():
    graph = {unit: {target for target, _ in targets} for unit, targets in unit_graph().items()}
    cycles = []

    def visit(unit: str, trail: list[str]) -> None:
        for target in sorted(graph.get(unit, ())):
            if target in trail:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif len(trail) < 12:
                visit(target, trail + [target])

    for unit in sorted(graph):
        visit(unit, [unit])
    assert cycles == []


def test_models_know_nothing_of_runs():
    """Encoders load and run models; corpus, run folders and indexes are the callers' business."""
    imports = {target for target, _ in unit_graph().get("models", set())}
    assert imports & {"corpus", "store", "index", "summary", "lock"} == set()
