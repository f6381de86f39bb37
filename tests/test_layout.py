"""The package's shape: stages import downwards only, with no module-level import cycles.

The stages and their order are those of ``docs/architecture.md``. A lower stage that needs an
upper one is a design error (it drags Dask into ``import taskflow``, or makes the order in which
modules load matter); the few upward imports that are deliberate are listed in ``UPWARD``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"taskflow": ROOT / "taskflow", "taskflow.ops": ROOT / "ops",
           "taskflow.schedulers": ROOT / "schedulers"}
#: Lowest first. A module may import its own stage and the stages before it.
STAGES = [
    ("taskflow.errors", "taskflow._version"),
    ("taskflow.ops",),
    ("taskflow.ir",),
    ("taskflow.frontend",),
    ("taskflow.executor",),
    ("taskflow.model", "taskflow.precision"),
    ("taskflow.pipeline",),
    ("taskflow.dashboard",),
    ("taskflow.schedulers",),
    ("taskflow.dask",),
    ("taskflow.stream",),
    ("taskflow.bench", "taskflow.demo", "taskflow.backend", "taskflow.cli", "taskflow.data",
     "taskflow"),
]
#: Deliberate upward imports, each inside a function: (importer, imported) -> why.
UPWARD = {
    ("taskflow.model", "taskflow.dask.lower"):
        "Model.predict/to_cluster lower to Dask on first use, so `import taskflow` stays light",
    ("taskflow.pipeline.core", "taskflow.dask.pipeline"):
        "Pipeline.predict lowers to Dask on first use, as Model.predict does",
    ("taskflow.frontend.nn", "taskflow.model"):
        "Sequential.to_model() wraps the graph it builds in a Model, a convenience",
    ("taskflow.precision.calibration", "taskflow.dask.calibrate"):
        "Model.quantize on a Dask array or Zarr store calibrates on a cluster, on first use",
    ("taskflow.dask.calibrate", "taskflow.stream.sources"):
        "a Zarr calibration source is resolved exactly as taskflow run resolves --input",
}
MAX_TOP_MODULES = 12


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if package == "taskflow" and parts and parts[0] in ("ops", "schedulers"):
                continue
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _stage(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(STAGES):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no stage of STAGES"
    return rank


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported taskflow module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def target(base: str, name: str | None) -> str | None:
        if name and f"{base}.{name}" in MODULES:
            return f"{base}.{name}"
        return base if base in MODULES else None

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never imported at run time
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                out.extend((m, top) for a in child.names if (m := target(a.name, None)))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                if base.split(".")[0] != "taskflow":
                    continue
                out.extend((m, top) for a in child.names if (m := target(base, a.name)))
            visit(child, top)

    visit(tree, True)
    return out


EDGES = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_import_goes_down_the_stages():
    wrong = []
    for module, imports in EDGES.items():
        for imported, _ in imports:
            if _stage(imported) > _stage(module) and (module, imported) not in UPWARD:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "upward imports (see STAGES):\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("pair", sorted(UPWARD))
def test_allowed_upward_imports_are_function_level(pair):
    module, imported = pair
    levels = [top for m, top in EDGES[module] if m == imported]
    assert levels and not any(levels), f"{module} must import {imported} inside a function"


def test_no_module_level_import_cycles():
    graph = {m: {i for i, top in imports if top and i != m} for m, imports in EDGES.items()}
    # a package's own submodules importing the package (for a re-export) is not a cycle of
    # modules; an __init__ that imports its submodules is the normal direction
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for nxt in sorted(graph.get(m, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := walk(m)):
            pytest.fail("module-level import cycle: " + " -> ".join(cycle))


def test_top_level_is_only_the_face():
    top = [p.stem for p in (ROOT / "taskflow").glob("*.py")]
    assert len(top) <= MAX_TOP_MODULES, f"taskflow/ has {len(top)} modules at its top: {top}"
    for package in ("frontend", "ir", "dask", "stream", "dashboard", "bench"):
        assert (ROOT / "taskflow" / package / "__init__.py").is_file()
