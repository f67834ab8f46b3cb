"""What a stage was run from: its dvc.yaml entry, the DVC hashes of its deps, the git commit.

Pure functions over files (no DVC import: `import dvc` costs seconds in every stage process).
The hashes match what DVC writes into dvc.lock: the md5 of a file's bytes, and for a directory
the md5 of DVC's JSON listing of its files plus ".dir".
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from wsss.config import yamlfile
from wsss.stores import atomic

_INTERP = re.compile(r"\$\{\s*([\w.]+)\s*\}")


class LineageError(ValueError):
    """dvc.yaml / dvc.lock problems; the message names the file and key."""


def read_yaml(path: str | Path) -> dict:
    return yamlfile.read_yaml(path, LineageError) or {}


def stage_names(dvc_yaml: dict) -> list[str]:
    """Stages in file order (dvc.yaml lists them upstream first in this project)."""
    stages = dvc_yaml.get("stages")
    if not isinstance(stages, dict):
        raise LineageError("dvc.yaml: no `stages` mapping")
    return list(stages)


def stage_spec(dvc_yaml: dict, stage: str, params: dict | None = None) -> dict:
    """A stage's dvc.yaml entry. A foreach stage's is its `do` template; `name@key` with params
    gives that item's entry with `${key}` and `${item...}` filled in, as DVC expands it."""
    stages = dvc_yaml.get("stages") or {}
    group, _, key = stage.partition("@")
    if group not in stages:
        raise LineageError(f"dvc.yaml: no stage {group!r} (stages: {', '.join(stages)})")
    spec = stages[group] or {}
    if "foreach" not in spec:
        return spec
    template = spec.get("do") or {}
    items = foreach_items(spec, _scope(dvc_yaml, params)) if key and params is not None else None
    if items is None:
        return template
    if key not in items:
        raise LineageError(f"dvc.yaml: stage {group!r} has no item {key!r} (items: {', '.join(map(str, items))})")
    return _fill(template, {"key": key, "item": items[key]})


def foreach_items(spec: dict, params: dict) -> dict | None:
    """{key: item} a foreach stage iterates (a list's keys are its values, as DVC names them),
    or None for a plain stage."""
    if "foreach" not in spec:
        return None
    source = spec["foreach"]
    if isinstance(source, str):
        match = _INTERP.fullmatch(source.strip())
        if not match:
            raise LineageError(f"dvc.yaml: foreach {source!r} is not one ${{...}} reference")
        source = _lookup(params or {}, match.group(1))
    if isinstance(source, dict):
        return dict(source)
    if isinstance(source, list):   # DVC names a list's items by value, or by index when they are collections
        nested = any(isinstance(v, (dict, list)) for v in source)
        return {str(i if nested else v): v for i, v in enumerate(source)}
    raise LineageError(f"dvc.yaml: foreach {spec['foreach']!r} is neither a list nor a mapping")


def _scope(dvc_yaml: dict, params: dict) -> dict:
    """What `${...}` in dvc.yaml reads: its inline `vars` mappings, then params.yaml."""
    scope = {k: v for entry in dvc_yaml.get("vars") or [] if isinstance(entry, dict) for k, v in entry.items()}
    return {**scope, **(params or {})}


def expand_names(dvc_yaml: dict, params: dict) -> list[str]:
    """Every stage a full run executes, upstream first: a foreach stage as `name@key` per item."""
    out = []
    for name in stage_names(dvc_yaml):
        items = foreach_items(dvc_yaml["stages"][name] or {}, _scope(dvc_yaml, params))
        out.extend([name] if items is None else [f"{name}@{k}" for k in items])
    return out


def _fill(node: Any, scope: dict) -> Any:
    """`${key}`, `${item}`, `${item.x}` filled in from scope everywhere in a template (keys too)."""
    if isinstance(node, dict):
        return {_fill(k, scope): _fill(v, scope) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, scope) for v in node]
    if isinstance(node, str):
        def sub(match: re.Match) -> str:
            name = match.group(1)
            return str(_lookup(scope, name)) if name.split(".")[0] in scope else match.group(0)
        return _INTERP.sub(sub, node)
    return node


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise LineageError(f"dvc.yaml: ${{{dotted}}} is not in params.yaml")
        node = node[part]
    return node


def interpolate(text: str, params: dict) -> str:
    """Resolve `${a.b}` the way dvc.yaml does, from the params dict."""
    return _INTERP.sub(lambda match: str(_lookup(params, match.group(1))), text)


def _paths(entries: list | None) -> list[str]:
    """dvc.yaml outs/metrics/plots entries are strings or one-key mappings {path: options}."""
    out = []
    for entry in entries or []:
        out.extend([entry] if isinstance(entry, str) else list(entry))
    return out


def stage_outputs(spec: dict, kind: str = "outs") -> list[str]:
    return _paths(spec.get(kind))


def uncached_outputs(spec: dict) -> list[str]:
    """Outputs with `cache: false` (git keeps them: metrics, plots)."""
    out = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind) or []:
            if isinstance(entry, dict):
                out.extend(p for p, opts in entry.items() if isinstance(opts, dict) and opts.get("cache") is False)
    return out


def stage_param_keys(spec: dict) -> list[str]:
    """Dotted params.yaml keys a stage declares (dvc.yaml `params`, default file only)."""
    keys = []
    for entry in spec.get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            for file, names in entry.items():
                if file == "params.yaml":
                    keys.extend(names or [])
    return keys


def select(params: dict, keys: list[str]) -> dict:
    """The flattened `{dotted: value}` of the given sections/leaves of params."""
    out: dict = {}
    for key in keys:
        node: Any = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            out.update(flatten(node, key))
        elif node is not None:
            out[key] = node
    return out


def flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def file_md5(path: Path) -> str:
    return atomic.file_digest(path, "md5")


def dvc_md5(path: str | Path) -> str:
    """DVC's md5 for a file or directory (as in dvc.lock); of .dvcignore's rules only the Python caches."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise LineageError(f"{path}: no such file or directory")
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")  # .dvcignore leaves caches out
        for name in files:
            if name.endswith(".pyc"):
                continue
            full = Path(root) / name
            entries.append({"md5": file_md5(full), "relpath": full.relative_to(path).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def locked_out_hashes(lock: dict) -> dict[str, str]:
    """`{path: md5}` of every stage output recorded in dvc.lock."""
    out = {}
    for entry in (lock.get("stages") or {}).values():
        for item in (entry or {}).get("outs") or []:
            if "md5" in item:
                out[item["path"]] = item["md5"]
    return out


def dep_hashes(spec: dict, params: dict, lock: dict | None = None) -> dict[str, str]:
    """`{dep path: md5}` for a stage about to run.

    Upstream outputs take their hash from dvc.lock (DVC wrote it when that stage finished, and
    hashing large outputs twice is wasted time); other deps are hashed here, as DVC does.
    """
    known = locked_out_hashes(lock or {})
    out = {}
    for raw in _paths(spec.get("deps")):
        try:
            dep = interpolate(raw, params)
        except LineageError:  # a dvc.yaml `vars` entry, not a param: record it unresolved
            out[raw] = "unresolved"
            continue
        try:
            out[dep] = known.get(dep) or dvc_md5(dep)
        except (OSError, LineageError):
            out[dep] = "missing"
    return out


def git_commit(cwd: str | Path = ".") -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked files differ from it), or None outside a git repository."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def _module_file(repo: Path, module: str) -> Path | None:
    base = repo.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every module a file names in an import statement, at any depth (function-level imports
    included: they run too), with `from P import m` read as both P and P.m."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def import_closure(entry: list[str | Path], repo: str | Path = ".") -> set[str]:
    """The repository's Python files that `entry` files import, directly or not (paths relative to
    repo, entry files included). What a stage's dvc.yaml deps must cover."""
    repo = Path(repo).resolve()
    todo = [(repo / e).resolve() for e in entry]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs before its modules
                found = _module_file(repo, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return {p.relative_to(repo).as_posix() for p in seen}


def stage_entry(stage: str) -> list[str]:
    """The files `python -m tasks STAGE` starts from (tasks/__main__.py imports tasks/STAGE.py)."""
    return ["tasks/__init__.py", "tasks/__main__.py", f"tasks/{stage}.py"]


def uncovered_imports(spec: dict, stage: str, params: dict, repo: str | Path = ".") -> list[str]:
    """The stage's imported project files that none of its dvc.yaml deps (a file, or a folder above
    it) covers: editing one of them would leave the stage's outputs stale under `dvc repro`."""
    deps = []
    spec = spec.get("do") or {} if "foreach" in spec else spec   # a foreach stage: its template
    for raw in _paths(spec.get("deps")):
        try:
            deps.append(interpolate(raw, params).rstrip("/"))
        except LineageError:
            continue
    return sorted(f for f in import_closure(stage_entry(stage), repo)
                  if not any(f == d or f.startswith(d + "/") for d in deps))


def expanded_stages(dvc_yaml: dict, params: dict) -> dict[str, dict]:
    """`{stage: spec}` upstream first, each foreach stage expanded into the stages DVC runs and
    names in dvc.lock (`name@key`), its `${key}` / `${item...}` filled in."""
    return {name: stage_spec(dvc_yaml, name, params) for name in expand_names(dvc_yaml, params)}
