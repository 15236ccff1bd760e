"""The package's floors (CONTRIBUTING.md, *Architecture*): a module imports only from its own
floor or below, and no imports go round in a circle. Read from the source with `ast`, every
import counted, those inside functions too (a lazy import is for an optional heavy
dependency, never to dodge a cycle)."""

import ast
import pathlib

import pytest

from conftest import ROOT

PACKAGE = ROOT / "keras_resnet"

# Bottom to top; a module not listed fails the test until it is given a floor.
FLOORS = [
    ("errors and files", ["errors", "files", "mapping"]),
    ("the model core", ["specs", "layers", "builder", "features", "registry", "weights", "converters",
                        "summary", "saving", "models"]),
    ("platform", ["backends", "distribute", "schedules"]),
    ("data", ["data", "pydata", "augment", "report"]),
    ("configuration", ["config", "recipes", "plan"]),
    ("the run folder", ["runfolder", "runs"]),
    ("training", ["finetune", "training", "training.inputs", "training.modelling", "training.loop",
                  "training.finish"]),
    ("evaluation and export", ["evaluation", "exporter", "parity"]),
    ("CLI and benchmarking", ["cli", "benchmarking"]),
    ("the public API", [""]),  # keras_resnet/__init__.py: imported by no module of the package
]
FLOOR = {module: level for level, (_, modules) in enumerate(FLOORS) for module in modules}


def module_name(path: pathlib.Path) -> str:
    """keras_resnet/training/loop.py -> "training.loop"; keras_resnet/__init__.py -> ""."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules that module `here` (of text `source`) imports ("" for the package)."""
    package = here if is_package else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "keras_resnet" or alias.name.startswith("keras_resnet."):
                    found.add(alias.name.removeprefix("keras_resnet").lstrip("."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module sits in
                base = ".".join(([package] if package else []) + ([node.module] if node.module else []))
                if node.level > 1:
                    base = ".".join(base.split(".")[: -(node.level - 1)])
            elif node.module == "keras_resnet" or (node.module or "").startswith("keras_resnet."):
                base = node.module.removeprefix("keras_resnet").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from keras_resnet import data` names a module
                child = f"{base}.{alias.name}".lstrip(".")
                found.add(child if child in known else base)
    found.discard(here)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported(p.read_text(), module_name(p), p.name == "__init__.py", known)
            for p in paths}


def test_every_module_has_a_floor():
    unplaced = sorted(set(graph()) - set(FLOOR))
    assert not unplaced, f"give these modules a floor here and in CONTRIBUTING.md: {unplaced}"


def test_no_module_imports_from_a_higher_floor():
    upward = [f"{m or '__init__'} (floor {FLOOR[m]}) imports {t or 'keras_resnet/__init__'} (floor {FLOOR[t]})"
              for m, targets in graph().items() for t in sorted(targets)
              if m in FLOOR and t in FLOOR and FLOOR[t] > FLOOR[m]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from keras_resnet import data, recipes\n", {"data", "recipes"}),
    ("import keras_resnet\n", {""}),
    ("from keras_resnet import build\n", {""}),
    ("def f():\n    from keras_resnet.runs import RunError\n", {"runs"}),
    ("from .training import loop\n", {"training.loop"}),
])
def test_the_reader_sees_every_kind_of_import(source, expected):
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert imported(source, "evaluation", False, known) == expected
