"""The package's floors (CONTRIBUTING.md, *Architecture*): a module imports only from its own
floor or below, and no imports go round in a circle. Read from the source with `ast`, every
import counted, those inside functions too (a lazy import is for an optional heavy
dependency, never to dodge a cycle)."""

import ast
import fnmatch
import pathlib

import pytest

from conftest import ROOT

PACKAGE = ROOT / "keras_resnet"

# Bottom to top; a module not listed fails the test until it is given a floor.
FLOORS = [
    ("errors and files", ["errors", "files", "mapping"]),
    ("the model core", ["specs", "layers", "builder", "features", "registry", "weights", "converters", "architecture",
                        "summary", "saving", "models"]),
    ("platform", ["backends", "cluster", "distribute", "schedules"]),
    ("data", ["data", "pydata", "augment", "report"]),
    ("configuration", ["config", "flags", "recipes", "plan"]),
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


MAX_LINES, MAX_PARAMS = 60, 8


def allowed_exceptions() -> list[str]:
    """The functions CONTRIBUTING.md's *Functions* table lets run longer or take more."""
    text = (ROOT / "CONTRIBUTING.md").read_text().split("### Functions", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return [name.strip(" `") for row in rows for name in row.split(",")]


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The lines of a function after its signature and docstring."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
    return node.end_lineno - (body[1] if has_doc else body[0]).lineno + 1


def oversized() -> list[tuple[str, int, int]]:
    """(module.function, lines, parameters) of each function past either limit."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for parent in ast.walk(tree):
            for node in ast.iter_child_nodes(parent):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                args = node.args
                params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
                lines = body_lines(node)
                if lines > MAX_LINES or len(params) > MAX_PARAMS:
                    owner = f"{parent.name}." if isinstance(parent, ast.ClassDef) else ""
                    found.append((f"{module_name(path)}.{owner}{node.name}", lines, len(params)))
    return found


def test_functions_fit_on_a_screen_and_take_few_parameters_but_the_listed_exceptions():
    """At most 60 lines below the docstring, always; more than 8 parameters only where
    CONTRIBUTING.md says why."""
    allowed = allowed_exceptions()
    assert "builder.build" in allowed  # the table was read
    long = [f"{name}: {lines} lines" for name, lines, _ in oversized() if lines > MAX_LINES]
    many = [f"{name}: {count} parameters" for name, _, count in oversized()
            if count > MAX_PARAMS and not any(fnmatch.fnmatch(name, pattern) for pattern in allowed)]
    assert not long + many, "split these, or list them with a reason in CONTRIBUTING.md:\n" + "\n".join(long + many)
