"""The package's shape: no import cycles, imports go down the layers, functions stay readable.

Read from the source with ``ast`` (nothing is imported), counting every import: at module level,
inside functions and under ``TYPE_CHECKING`` alike, since each is a dependency a reader has to
follow. ``from .x import y`` runs ``x``'s package ``__init__`` first, so it also depends on every
package on the way (but its own).

Each check is one test per module, so a failure names the module and what it imports. Modules
whose offence is known and left for later are marked ``xfail`` by name in ``PENDING_*`` below,
each with why (``strict=False``: the mark is removed when the work lands, not by XPASS).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "aesampler"


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The project modules one import statement names (``from . import x``: submodule x)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]).strip(".")
    else:
        base = node.module or ""
    if base.split(".")[0] != PACKAGE:
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}


def _with_packages(module: str, target: str) -> set[str]:
    """``target`` and the packages importing it runs first (not the root, not ``module``'s)."""
    parts = target.split(".")
    found = {target}
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        if not (module == package or module.startswith(package + ".")):
            found.add(package)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, path, node):
                    targets |= _with_packages(module, target)
        graph[module] = {t for t in targets if t != module and t in MODULES}
    return graph


GRAPH = _graph()


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_through(graph: dict[str, set[str]], component: list[str], start: str) -> list[str]:
    """One shortest import path start -> ... -> start inside ``component`` (breadth first)."""
    inside = set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [start]


CYCLES = strongly_connected(GRAPH)


def _short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".") if name != PACKAGE else PACKAGE


# Modules whose offence is known and left for later, each with why (none for cycles and layers).
PENDING_CYCLES: dict[str, str] = {}  # none: every cycle is gone


def _marked(names: list[str], pending: dict[str, str]) -> list:
    params = []
    for name in names:
        reason = pending.get(_short(name))
        marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
        params.append(pytest.param(name, id=_short(name), marks=marks))
    return params


def test_the_graph_sees_function_level_and_relative_imports():
    assert "aesampler.rundir" in GRAPH["aesampler.report"]  # module level, relative
    assert "aesampler.evaluation" in GRAPH[PACKAGE]  # inside __getattr__
    assert "aesampler.recipe" in GRAPH["aesampler.checkpoint"]  # the package of recipe.build
    assert "aesampler.samplers.base" in GRAPH["aesampler.samplers.gmm"]
    assert "aesampler.samplers" not in GRAPH["aesampler.samplers.gmm"]  # its own package


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _cycle_through(graph, ["a", "b", "c"], "b") == ["b", "c", "a", "b"]


@pytest.mark.parametrize("module", _marked(sorted(MODULES), PENDING_CYCLES))
def test_module_is_in_no_import_cycle(module):
    for component in CYCLES:
        if module in component:
            cycle = " -> ".join(map(_short, _cycle_through(GRAPH, component, module)))
            others = ", ".join(_short(m) for m in component if m != module)
            pytest.fail(f"{_short(module)} is in an import cycle: {cycle} (with {others})")


# ---------------------------------------------------------------------------------------------
# Layers, lowest first: a module imports only from its own layer and the layers below. Patterns
# are module names without the package prefix (fnmatch); a module's layer is its first match.

LAYERS: list[tuple[str, list[str]]] = [
    # Leaves: no other part of aesampler, or only each other.
    (
        "leaves",
        [
            "errors",
            "kinds",
            "version",
            "checks",
            "modes",
            "seeding",
            "precision",
            "launch",
            "resources",
            "nn",
            "nn.*",
            "evaluation.stats",
            "evaluation.best",
        ],
    ),
    # Contracts and plain infrastructure: the interfaces, the registry and the plugin loading,
    # processes, the run directory's files, the data.
    (
        "contracts",
        [
            "interfaces",
            "registry",
            "hookspecs",
            "plugins",
            "distributed",
            "rundir",
            "documents",
            "figures",
            "interpolate",
            "corruptions",
            "data",
            "data.*",
        ],
    ),
    # Sampling and measuring: what the paper is about, each usable from Python on its own.
    (
        "sampling",
        ["transitions", "chain", "models", "formats", "samplers", "samplers.*", "evaluation*"],
    ),
    # Recipes turn configuration into those components; checkpoints are built from recipes.
    ("recipes", ["recipe", "recipe.*", "checkpoint"]),
    # The public API's facade (it re-exports the layers below).
    ("api", [PACKAGE]),
    # The components of a run, its training and its report.
    ("components", ["components", "components.*", "training", "report"]),
    # What a command runs.
    ("stages", ["stages", "stages.*", "workflow", "comparison", "tuning", "inpaint", "bench"]),
    ("cli", ["cli", "__main__"]),
    # The built-in plugins import the package's public API, as a third party's would.
    ("plugins", ["builtin", "builtin.*"]),
]


def layer_of(module: str) -> int:
    name = _short(module)
    for number, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return number
    raise LookupError(f"{module} is in no layer: add it to LAYERS in tests/test_structure.py")


PENDING_LAYERS: dict[str, str] = {}  # none: every import goes down


@pytest.mark.parametrize("module", _marked(sorted(MODULES), PENDING_LAYERS))
def test_module_imports_only_from_its_layer_and_below(module):
    own = layer_of(module)
    upward = sorted(
        f"{_short(t)} ({LAYERS[layer_of(t)][0]})" for t in GRAPH[module] if layer_of(t) > own
    )
    assert not upward, (
        f"{_short(module)} (layer {LAYERS[own][0]}) imports from higher layers: "
        + ", ".join(upward)
    )


# ---------------------------------------------------------------------------------------------
# Function length: a function is read whole, so it has to fit on a screen. The count is the def's
# lines, docstring included. Runners of a command (the workflow, its components and stages, the
# trainer) hold the most branching, so they get less.

MAX_LINES = 80
MAX_LINES_IN_RUNNERS = 60
RUNNERS = ["workflow", "components", "components.*", "stages", "stages.*", "training"]

#: Functions allowed to be longer, each with why: declarative tables, read line by line.
LONG_ALLOWED: dict[str, str] = {
    "cli.build_parser": "declarative: the argparse table of every subcommand and its options",
}

PENDING_LENGTHS: dict[str, str] = {}  # none: every function is within its limit


def long_functions(module: str) -> list[str]:
    """``name (lines)`` of each function of ``module`` over its limit and not allowed."""
    short = _short(module)
    limit = MAX_LINES
    if any(fnmatch.fnmatchcase(short, pattern) for pattern in RUNNERS):
        limit = MAX_LINES_IN_RUNNERS
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit and f"{short}.{node.name}" not in LONG_ALLOWED:
                found.append(f"{node.name} ({lines} lines, line {node.lineno})")
    return found


@pytest.mark.parametrize("module", _marked(sorted(MODULES), PENDING_LENGTHS))
def test_functions_are_short(module):
    found = long_functions(module)
    assert not found, f"{_short(module)}: functions over their limit: {', '.join(found)}"


def test_long_allowed_names_real_functions():
    for name in LONG_ALLOWED:
        module, function = name.rsplit(".", 1)
        tree = ast.parse(MODULES[f"{PACKAGE}.{module}"].read_text(encoding="utf-8"))
        assert any(getattr(n, "name", None) == function for n in ast.walk(tree)), name
