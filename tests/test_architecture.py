"""The package's shape: imports run one way along the data flow, no import cycle, small modules and classes.

The stages, in the order imports may run (a module imports from its own stage or an earlier one, never a later):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# (module name or package prefix, stage). The most specific entry names a module's stage.
STAGES = [
    # the base: no lorabudget imports but each other
    ("lorabudget.version", 0), ("lorabudget.errors", 0), ("lorabudget.runlock", 0), ("lorabudget.rundir", 0),
    ("lorabudget.hub", 0),
    ("lorabudget.metrics", 0),
    ("lorabudget.plots", 0),
    # the extension tables: the vocabulary the config is written in (head types, adapter methods, roles)
    ("lorabudget.model.heads", 1), ("lorabudget.model.head_modules", 1), ("lorabudget.model.methods", 1),
    ("lorabudget.model.adalora", 1),
    ("lorabudget.model.families", 1),
    ("lorabudget.config", 2),
    ("lorabudget.data", 3),
    ("lorabudget.model", 4),
    ("lorabudget.runtime", 5),
    ("lorabudget.train", 6),
    ("lorabudget.serve", 7),
    ("lorabudget.tools", 8),
    ("lorabudget.cli", 9), ("lorabudget", 9),  # the package itself: `lorabudget.load` reaches into serve
]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 150


def stage(module: str) -> int:
    matches = [(len(name), rank) for name, rank in STAGES if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no stage: add it to STAGES")
    return max(matches)[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The lorabudget modules `path` imports, at module level or inside functions (a function-level import is
    still a dependency), but not under `if TYPE_CHECKING:` (annotations only, never run)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "lorabudget")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                if target.split(".")[0] != "lorabudget":
                    continue
                found.add(target)
                found.update(f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in modules)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / "lorabudget").rglob("*.py")}
    return {name: imports_of(path, root, set(files)) for name, path in files.items()}


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (stage {stage(a)}) imports {b} (stage {stage(b)})"
                  for a, targets in graph.items() for b in targets if stage(b) > stage(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_imports_run_one_way_along_the_stages():
    assert wrong_way(import_graph(SRC)) == []


def test_no_import_cycle():
    assert cycles(import_graph(SRC)) == []


def test_the_checks_catch_a_cycle_and_a_wrong_way_import(tmp_path):
    """The two tests above could fail: a package with a function-level import closing a cycle, and a data
    module importing from training, is caught by both."""
    pkg = tmp_path / "lorabudget"
    (pkg / "data").mkdir(parents=True)
    (pkg / "train").mkdir()
    for init in (pkg, pkg / "data", pkg / "train"):
        (init / "__init__.py").write_text("")
    (pkg / "data" / "split.py").write_text("def f():\n    from ..train.recipe import train\n")
    (pkg / "train" / "recipe.py").write_text("from ..data.split import f\n")
    graph = import_graph(tmp_path)
    assert wrong_way(graph) == ["lorabudget.data.split (stage 3) imports lorabudget.train.recipe (stage 6)"]
    assert cycles(graph) == [["lorabudget.data.split", "lorabudget.train.recipe"]]


@pytest.mark.parametrize("path", sorted((SRC / "lorabudget").rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_classes_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, f"class {node.name}"


def test_loading_a_run_for_inference_does_not_pull_in_training():
    """`lorabudget.load` (serve.api) reaches the model and runtime stages, never the training recipe."""
    graph = import_graph(SRC)
    seen, todo = set(), ["lorabudget.serve.api"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    assert sorted(m for m in seen if m.startswith(("lorabudget.train", "lorabudget.tools"))) == []
