"""The house rules, checked on the source: no import loops, imports point one way through the layers, no file over
400 lines, every third-party package imported is declared. Imports inside functions count as much as top ones."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medkeras"
# data -> models -> evaluation -> train -> export: a module imports only from its own layer and those to its left.
# (Training validates every epoch and ends a run by evaluating it, so evaluation sits below training.)
LAYERS = ("data", "models", "evaluation", "train", "export")
# import name -> distribution, where they differ; extras are optional features (tracking, ONNX)
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "absl": "absl-py",
                 "tensorflow_datasets": "tensorflow-datasets", "cv2": "opencv-python-headless"}
EXTRAS = {"mlflow", "tf2onnx", "onnx", "onnxruntime"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _lazy(module: str, modules: dict) -> dict:
    """{name: module} of a package's lazily loaded names (its `_LAZY = {...}` mapping for `lazy_getattr`)."""
    path = modules.get(module)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _imports(path: Path, modules: dict) -> set:
    """medkeras modules `path` imports anywhere in it (a `from pkg import name` of a submodule counts as it, and of a
    lazily loaded name as the module that name loads from)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medkeras")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medkeras"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            lazy = _lazy(node.module, modules)
            subs |= {lazy[a.name] for a in node.names if a.name in lazy}
            found |= subs or {node.module}
    return {m for m in found if m in modules}


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    assert "medkeras.data.readers" in graph and graph["medkeras.data.sources"]  # the walk sees the package
    assert _cycles(graph) == []


def test_imports_point_one_way_through_the_layers():
    backwards = []
    for module, imported in _graph().items():
        for other in imported:
            if _layer(module) is not None and _layer(other) is not None and _layer(other) > _layer(module):
                backwards.append(f"{module} -> {other}")
    assert backwards == []


def test_no_layer_reaches_a_later_one_through_the_modules_beside_them():
    """Through modules outside the layers (config, errors, utils, the package), a layer still reaches only itself and
    those to its left: the models layer reading a saved config must not pull in evaluation's or training's checks
    (the config's schema and values are its bottom; `validate`, which runs every layer's checks, is its top)."""
    graph = _graph()
    reached = []
    for module in graph:
        if _layer(module) is None:
            continue
        seen, stack = set(), [(m, m) for m in graph[module] if _layer(m) is None]
        while stack:
            via, current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            for other in graph.get(current, ()):
                if _layer(other) is None:
                    stack.append((via, other))
                elif _layer(other) > _layer(module):
                    reached.append(f"{module} -> {via} ... -> {other}")
    assert reached == []


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_every_imported_package_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    declared = {re.split(r"[<>=\[; ]", line.strip().strip('",'))[0].lower() for line in block.splitlines() if '"' in line}
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"medkeras", "__future__"} - EXTRAS
    undeclared = {m for m in third_party if DISTRIBUTIONS.get(m, m).lower().replace("_", "-") not in declared}
    assert undeclared == set()
