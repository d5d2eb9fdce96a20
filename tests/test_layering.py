"""The package's import structure: no import circles, and no module importing from a layer
above its own. The layers follow the pipeline (data < train < export < engine < eval, docs <
serve < cli); a module of ``src/cuvee`` that is in no layer fails the test, so a new one is
placed on purpose. Read from the source with ``ast``: every import counts, those inside
functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import cuvee

ROOT = Path(cuvee.__file__).parent

# Each top-level module or package of cuvee, by layer: a module may import its own layer and
# those below. Same-layer siblings may import each other, but not in a circle.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "ui"),  # ui: the web UI's static files, no code
    ("config", "progress", "jsonl", "licences", "tokenizer", "chat_template", "embeddings"),
    ("quickstart",),  # what the quickstart works on: constants and the sample documents
    ("store", "catalog", "native", "ifeval_checkers"),
    ("data",),
    ("model_import", "model_loading", "safetensors_cast"),
    ("train",),
    ("export",),
    ("engine",),
    ("resolve",),
    ("eval", "docs"),
    ("serve", "doctor"),
    ("cli", "__main__"),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The cuvee modules ``name`` imports (``from x import y`` counts x.y when y is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_module_is_in_a_layer() -> None:
    units = {_unit(m) for m in _modules()} - {"__init__"}
    assert sorted(units - set(RANK)) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _unit(module) in RANK
        and _unit(target) in RANK
        and RANK[_unit(target)] > RANK[_unit(module)]
    ]
    assert upward == []


def test_the_engine_registry_does_not_import_its_implementations() -> None:
    """Engines are named by module path and imported when opened: importing ``cuvee.engine``
    (for ``--help``, for the registry) loads neither llama.cpp's engine nor transformers'."""
    assert _graph()["cuvee.engine"] & {"cuvee.engine.llamacpp", "cuvee.engine.hf"} == set()


# Past this many lines a module says in its docstring why it is one module ("Size: ...").
MAX_LINES = 600


def test_long_modules_say_why() -> None:
    unexplained = []
    for name, path in sorted(_modules().items()):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "Size:" not in docstring:
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == []
