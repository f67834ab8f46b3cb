"""The project's own modules import one way: the graph of their imports (function-level ones
included, they run too) has no cycle."""
import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("wsss", "models", "tasks", "flows")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """{module: the project modules it imports}, from each file's import statements."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:   # relative: from the importing module's package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_project_import_graph_has_no_cycle():
    graph = import_graph(REPO)
    assert {"wsss.config.params", "models.classifier", "models.group", "tasks.manifest"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "models.group" in graph["models.classifier"] and "models.cam" in graph["models.group"]


def test_a_cycle_is_found_even_through_a_function_level_import(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "a.py").write_text("from models.b import thing\n")
    (tmp_path / "models" / "b.py").write_text("def thing():\n    from models import c\n")
    (tmp_path / "models" / "c.py").write_text("import models.a\n")
    graph = import_graph(tmp_path, ("models",))
    assert graph["models.a"] == {"models.b"} and graph["models.b"] == {"models.c"}
    assert find_cycle(graph) == ["models.a", "models.b", "models.c", "models.a"]
    (tmp_path / "models" / "c.py").write_text("import torch\n")
    assert find_cycle(import_graph(tmp_path, ("models",))) is None
