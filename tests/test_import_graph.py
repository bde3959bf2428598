"""The import graph of facekd/ has no cycles (except the known ones being removed), and no
module imports one of a higher layer (:data:`LAYERS`).

Every ``import`` / ``from ... import`` in a module counts, at module level and inside
functions (a function-level import still closes a circle at run time); imports under
``if TYPE_CHECKING:`` do not (they never run).  ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``.  Implicit parent-package imports are
not edges.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "facekd"

#: edges that still close a circle, each removed by the engineer who owns the importing file
#: (teacher_cache -> trainer and export metadata <-> runtime are gone: they may not come back)
KNOWN_EDGES: set = set()


def module_name(path: Path) -> str:
    """``facekd/training/trainer.py`` -> ``facekd.training.trainer`` (packages: their ``__init__``)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def imported_modules(path: Path, modules: Set[str]) -> Set[str]:
    """The facekd modules ``path`` imports anywhere (outside ``if TYPE_CHECKING:``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        visit(node)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {m for m in found if m in modules and m != name}


def import_graph() -> Dict[str, Set[str]]:
    """module -> the facekd modules it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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

    for vertex in sorted(graph):
        if vertex not in index:
            connect(vertex)
    return sorted(found)


def test_cycle_finder_on_a_small_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_parser_sees_function_level_imports_and_skips_type_checking():
    graph = import_graph()
    # the trainer imports the P x K sampler (facekd.data) inside _build_sampler only
    assert "facekd.data" in graph["facekd.training.trainer"]
    assert "facekd.training.hooks" in graph["facekd.training.trainer"]
    # run_training imports the task registry inside the function
    assert "facekd.training.tasks" in graph["facekd.training.launch"]
    # hooks.py imports the Trainer only for annotations
    assert "facekd.training.trainer" not in graph["facekd.training.hooks"]


def test_no_new_import_cycles():
    graph = {name: {m for m in imports if (name, m) not in KNOWN_EDGES} for name, imports in import_graph().items()}
    assert cycles(graph) == []


def test_precision_and_hooks_are_leaves():
    graph = import_graph()
    assert graph["facekd.precision"] <= {"facekd.errors"}
    assert graph["facekd.training.hooks"] == set()
    assert "facekd.training.trainer" not in graph["facekd.evaluation.embed"]
    from facekd import precision
    from facekd.evaluation import embed

    assert embed.AMP_DTYPES is precision.AMP_DTYPES


#: layers of facekd.training, lowest first: a module may import its own layer and those below,
#: never one above (the trainer runs any Task; the concrete tasks build on the trainer's contract)
LAYERS = [
    ("facekd.training.hooks",),
    ("facekd.training.task",),
    ("facekd.training.trainer",),
    ("facekd.training.tasks", "facekd.training.teaching", "facekd.training.student_init"),
    ("facekd.training.launch",),
]


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: Set[str] = set()
    todo = [start]
    while todo:
        for imported in graph.get(todo.pop(), ()):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    assert "facekd.training.tasks" not in graph["facekd.training.trainer"]     # the edge that pointed up
    for level, modules in enumerate(LAYERS):
        higher = {m for layer in LAYERS[level + 1:] for m in layer}
        for module in modules:
            assert module in graph, module
            assert not reachable(graph, module) & higher, (module, sorted(reachable(graph, module) & higher))
