"""The import graph of vlfm, read from the source (every import statement, function-level ones included):
no import cycle between vlfm's packages or between its modules, and the layers hold: ``vlfm.core`` imports
nothing of vlfm, and no library package below the trainer imports ``vlfm.train``.

``__main__`` modules are entry points (command-line programs that nothing imports): they sit above every
package, so they are left out of the package graph.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlfm"
BELOW_TRAIN = ("models", "losses", "data", "convert", "optim", "evaluators", "core", "registry")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_edges(modules: dict[str, pathlib.Path]) -> dict[str, dict[str, int]]:
    """Module -> {imported vlfm module: line of the first such import}, for every import statement."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        out = edges.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from vlfm.x import y`` imports the submodule vlfm.x.y when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # ``import vlfm.x.y.z`` -> the deepest module
                    target = target.rpartition(".")[0]
                if target.startswith("vlfm") and target != name:
                    out.setdefault(target, node.lineno)
    return edges


def package_of(module: str) -> str | None:
    """``vlfm.data.pipeline`` -> ``data``; ``vlfm.registry`` -> ``registry``; entry points -> None."""
    parts = module.split(".")
    if parts[-1] == "__main__" or len(parts) < 2:
        return None
    return parts[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _describe(cycle: list[str], where: dict[tuple[str, str], str]) -> str:
    steps = "\n  ".join(f"{a} -> {b}: {where[(a, b)]}" for a, b in zip(cycle, cycle[1:]))
    return f"import cycle {' -> '.join(cycle)}\n  {steps}"


def _package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for src, targets in import_edges(modules).items():
        a = package_of(src)
        for dst, line in targets.items():
            b = package_of(dst)
            if a is None or b is None or a == b:
                continue
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), f"{modules[src].relative_to(ROOT)}:{line} imports {dst}")
    return graph, where


def test_no_package_cycle():
    graph, where = _package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, where)


def test_no_module_cycle():
    modules = _modules()
    edges = import_edges(modules)
    graph = {m: set(t) for m, t in edges.items() if not m.endswith("__main__")}
    where = {(m, t): f"{modules[m].relative_to(ROOT)}:{line}" for m, ts in edges.items() for t, line in ts.items()}
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, where)


def test_core_imports_nothing_of_vlfm_above_it():
    graph, where = _package_graph()
    above = sorted(graph.get("core", set()))
    assert not above, "vlfm.core must not import other vlfm packages:\n  " + "\n  ".join(
        where[("core", b)] for b in above)


@pytest.mark.parametrize("package", BELOW_TRAIN)
def test_library_packages_do_not_import_train(package):
    graph, where = _package_graph()
    assert "train" not in graph.get(package, set()), where.get((package, "train"))


def test_cycle_finder_names_the_cycle():
    """The failure message of the tests above names every package (or module) of the cycle in order."""
    graph = {"models": {"core", "train"}, "train": {"models", "core"}, "core": set()}
    cycle = find_cycle(graph)
    assert cycle == ["models", "train", "models"]
    message = _describe(cycle, {("models", "train"): "vlfm/models/x.py:3", ("train", "models"): "vlfm/train/y.py:9"})
    assert "import cycle models -> train -> models" in message and "vlfm/models/x.py:3" in message
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_count(tmp_path):
    """An import inside a function is an edge too (that is how cycles used to be hidden)."""
    (tmp_path / "a.py").write_text("def f():\n    from vlfm.b import g\n    return g\n")
    (tmp_path / "b.py").write_text("import vlfm.a\n")
    edges = import_edges({"vlfm.a": tmp_path / "a.py", "vlfm.b": tmp_path / "b.py"})
    assert edges == {"vlfm.a": {"vlfm.b": 2}, "vlfm.b": {"vlfm.a": 1}}
    assert find_cycle({m: set(t) for m, t in edges.items()}) == ["vlfm.a", "vlfm.b", "vlfm.a"]
