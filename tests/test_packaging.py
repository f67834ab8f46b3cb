"""pyproject.toml against the code: the package list, the console script, the declared
dependencies (every third-party import) and the locks that pin them."""
import ast
import importlib
import re
import sys
import tomllib
from importlib import metadata

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OWN = {"wsss", "models", "tasks", "flows", "tests", "benchmarks"}


def lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req, _, version = line.partition("==")
            pins[canonical(req)] = version.strip()
    return pins


def pins(requirements: list[str]) -> dict[str, str]:
    """{name: version} of `name==version` requirements (each one must be pinned so)."""
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", req.strip())
        assert m, f"{req!r} is not pinned as name==version"
        out[canonical(m.group(1))] = m.group(2)
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(*folders: str) -> set[str]:
    out = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                out.update(n.split(".")[0] for n in names)
    own_scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")}   # tests import benchmarks' modules
    return {n for n in out if n not in sys.stdlib_module_names and n not in OWN | own_scripts}


def undeclared(imports: set[str], declared) -> set[str]:
    """The imports no declared distribution provides (mlflow: any of mlflow, mlflow-skinny, ...)."""
    where = metadata.packages_distributions()
    return {name for name in imports if not {canonical(d) for d in where[name]} & set(declared)}


def test_the_package_list_is_every_package_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("wsss", "flows", "tasks", "models")
             for p in (REPO / top).rglob("__init__.py")}
    assert listed == found
    assert {"config", "dataset", "commands", "labelling"}.isdisjoint(listed)   # no generic top-level name


def test_the_console_script_is_the_cli():
    module, _, func = PYPROJECT["project"]["scripts"]["wsss"].partition(":")
    assert getattr(importlib.import_module(module), func).__module__ == "wsss.cli"


def test_every_import_is_declared_and_pinned_alike_in_the_locks():
    declared = pins(PYPROJECT["project"]["dependencies"])
    test = pins(PYPROJECT["project"]["optional-dependencies"]["test"])
    runtime = third_party_imports("wsss", "models", "tasks", "flows")
    assert {"torch", "pydantic", "dask", "distributed", "matplotlib", "psutil"} <= runtime
    assert undeclared(runtime, declared) == set()
    assert undeclared(third_party_imports("tests"), declared.keys() | test.keys()) == set()
    runtime_lock, test_lock = lock("requirements.lock"), lock("requirements-test.lock")
    assert runtime_lock.keys().isdisjoint(test_lock)
    for name, spec in declared.items():
        assert spec == runtime_lock[name], name
    for name, spec in test.items():
        assert spec == test_lock[name], name
