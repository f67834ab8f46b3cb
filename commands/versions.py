"""Pseudo-label versions: list, diff, roll back, record.

A version is a git commit whose dvc.lock gives the pseudo-label output a new hash; the bytes live
in the DVC cache and the default remote. Rolling back restores dvc.lock, params.yaml and the
uncached metrics/plots of that commit and runs `dvc checkout`, so the labels are bit-identical
and carry the params that made them; `dvc repro` then retrains whatever is downstream.

    python -m commands versions list [--json]
    python -m commands versions diff A B [--json]  # A, B: version number (3 or v3), tag or commit
    python -m commands versions rollback V [--force]
    python -m commands versions record [-m MESSAGE] [--no-push]
    python -m commands versions setup-remote

(the command line is commands/cli.py; this module holds the functions it calls.)

The tracked output is the first of LABEL_OUTPUTS that a dvc.yaml stage declares (the pseudo-label
stage's output once it exists; the CAM maps until then); `versions --output PATH` or WSSS_LABEL_OUTPUTS
(os.pathsep-separated) choose another.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from commands import gitdvc
from tracking import lineage

LABEL_OUTPUTS = ("artifacts/pseudo_labels", "artifacts/maps")
# Where each revision's label quality is read, first found wins.
LABEL_METRICS = ("metrics/pseudo_labels.json", "metrics/maps.json")
TAG_PREFIX = "labels-v"
VERSIONED_FILES = ("dvc.lock", "params.yaml")


class VersionError(RuntimeError):
    pass


@dataclass
class Version:
    number: int
    commit: str
    date: str
    subject: str
    tags: list[str]
    hashes: dict[str, str]
    miou: float | None
    metrics_file: str | None
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"v{self.number}"


def label_outputs(repo: str | Path, explicit: list[str] | None = None) -> list[str]:
    if explicit:
        return list(explicit)
    env = os.environ.get("WSSS_LABEL_OUTPUTS")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    dvc_yaml = lineage.read_yaml(Path(repo) / "dvc.yaml")
    declared = {out for name in lineage.stage_names(dvc_yaml)
                for out in lineage.stage_outputs(lineage.stage_spec(dvc_yaml, name))}
    for candidate in LABEL_OUTPUTS:
        if candidate in declared:
            return [candidate]
    raise VersionError(f"dvc.yaml declares none of {list(LABEL_OUTPUTS)}; pass --output PATH")


def output_hashes(lock: dict, outputs: list[str]) -> dict[str, str]:
    known = lineage.locked_out_hashes(lock)
    return {o: known[o] for o in outputs if o in known}


def locked_params(lock: dict) -> dict:
    """Every params.yaml value dvc.lock recorded, flattened (what the outputs were made with)."""
    out: dict = {}
    for entry in (lock.get("stages") or {}).values():
        for key, value in ((entry or {}).get("params") or {}).get("params.yaml", {}).items():
            out.update(lineage.flatten(value, key) if isinstance(value, dict) else {key: value})
    return out


def _lock_at(repo, rev) -> dict:
    text = gitdvc.show(repo, rev, "dvc.lock")
    return (yaml.safe_load(text) or {}) if text else {}


def _metrics_at(repo, rev) -> tuple[dict | None, str | None]:
    for path in LABEL_METRICS:
        text = gitdvc.show(repo, rev, path)
        if text:
            try:
                return json.loads(text), path
            except ValueError:
                continue
    return None, None


def _tags_by_commit(repo) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in gitdvc.git(repo, "show-ref", "--tags", "-d", check=False).splitlines():
        sha, ref = line.split(" ", 1)
        name = ref.removeprefix("refs/tags/").removesuffix("^{}")
        if ref.endswith("^{}") or name not in out.get(sha, []):
            out.setdefault(sha, []).append(name)
    return {sha: sorted(set(names)) for sha, names in out.items()}


def versions(repo: str | Path = ".", outputs: list[str] | None = None) -> list[Version]:
    """Oldest first: each commit on HEAD's history where the label output's hash changed."""
    outputs = label_outputs(repo, outputs)
    log = gitdvc.git(repo, "log", "--reverse", "--format=%H%x1f%cI%x1f%s", "--", "dvc.lock", check=False)
    tags = _tags_by_commit(repo)
    found: list[Version] = []
    previous: dict | None = None
    for line in log.splitlines():
        commit, date, subject = line.split("\x1f", 2)
        lock = _lock_at(repo, commit)
        hashes = output_hashes(lock, outputs)
        if not hashes or hashes == previous:
            continue
        previous = hashes
        metrics, metrics_file = _metrics_at(repo, commit)
        miou = metrics.get("miou") if isinstance(metrics, dict) else None
        found.append(Version(len(found) + 1, commit, date, subject, tags.get(commit, []), hashes,
                             miou, metrics_file, locked_params(lock)))
    return found


def resolve(repo, ref: str, found: list[Version]) -> Version:
    """A version by number (3, v3), tag or (abbreviated) commit."""
    number = ref[1:] if ref[:1] in "vV" and ref[1:].isdigit() else ref
    if number.isdigit() and 1 <= int(number) <= len(found):
        return found[int(number) - 1]
    sha = gitdvc.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
    for v in found:
        if sha and v.commit == sha:
            return v
    names = ", ".join(v.name for v in found) or "none"
    raise VersionError(f"{ref!r} is not a pseudo-label version (versions: {names})")


def varying_params(found: list[Version]) -> list[str]:
    keys = sorted({k for v in found for k in v.params})
    return [k for k in keys if len({json.dumps(v.params.get(k)) for v in found}) > 1]


def format_list(found: list[Version]) -> str:
    if not found:
        return "no pseudo-label versions yet (run the pipeline, then commit dvc.lock or use the flow)"
    keys = varying_params(found)
    lines = []
    for v in found:
        miou = f"{v.miou:6.2f}" if isinstance(v.miou, (int, float)) else "     -"
        params = " ".join(f"{k}={json.dumps(v.params.get(k))}" for k in keys)
        tag = ",".join(v.tags) or "-"
        lines.append(f"{v.name:>4}  {v.commit[:10]}  {v.date[:19]}  mIoU {miou}  {tag:<14} {params}".rstrip())
    return "\n".join(lines)


def diff(repo, a: Version, b: Version) -> dict:
    keys = sorted(set(a.params) | set(b.params))
    changed = {k: [a.params.get(k), b.params.get(k)] for k in keys if a.params.get(k) != b.params.get(k)}
    ma, _ = _metrics_at(repo, a.commit)
    mb, _ = _metrics_at(repo, b.commit)
    per_class = {}
    pa, pb = (ma or {}).get("per_class_iou") or {}, (mb or {}).get("per_class_iou") or {}
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name) != pb.get(name):
            per_class[name] = [pa.get(name), pb.get(name)]
    return {"from": a.name, "to": b.name, "commits": [a.commit, b.commit], "dates": [a.date, b.date],
            "miou": [a.miou, b.miou], "hashes": {o: [a.hashes.get(o), b.hashes.get(o)]
                                               for o in sorted(set(a.hashes) | set(b.hashes))},
            "params": changed, "per_class_iou": per_class}


def format_diff(d: dict) -> str:
    lines = [f"{d['from']} ({d['commits'][0][:10]}, {d['dates'][0][:19]}) -> {d['to']} ({d['commits'][1][:10]}, {d['dates'][1][:19]})",
             f"  mIoU: {d['miou'][0]} -> {d['miou'][1]}"]
    for out, (x, y) in d["hashes"].items():
        lines.append(f"  {out}: {x} -> {y}" if x != y else f"  {out}: unchanged ({x})")
    lines.append("  params:" if d["params"] else "  params: identical")
    lines += [f"    {k}: {json.dumps(x)} -> {json.dumps(y)}" for k, (x, y) in d["params"].items()]
    if d["per_class_iou"]:
        lines.append("  per-class IoU:")
        lines += [f"    {k}: {x} -> {y}" for k, (x, y) in d["per_class_iou"].items()]
    return "\n".join(lines)


def _uncached_at(repo, commit: str) -> list[str]:
    text = gitdvc.show(repo, commit, "dvc.yaml")
    dvc_yaml = yaml.safe_load(text) if text else {}
    paths = [p for name in (dvc_yaml.get("stages") or {})
             for p in lineage.uncached_outputs(lineage.stage_spec(dvc_yaml, name))]
    return [p for p in paths if gitdvc.show(repo, commit, p) is not None]


def rollback(repo, v: Version, force: bool = False, log=print, found: list[Version] | None = None) -> dict[str, str]:
    """Restore version `v` in the workspace; returns the verified `{output: md5}`.

    Refuses (unless force) when that would lose work: uncommitted dvc.lock/params.yaml, or label
    files in the workspace that are not a recorded version (recorded ones are in the remote).
    """
    repo = Path(repo)
    found = found if found is not None else versions(repo, list(v.hashes))
    problems = []
    dirty = gitdvc.git(repo, "status", "--porcelain", "--", *VERSIONED_FILES).strip()
    if dirty:
        problems.append(f"uncommitted changes in {', '.join(VERSIONED_FILES)}:\n{dirty}")
    recorded = {h for x in found for h in x.hashes.values()}
    for out in v.hashes:
        if (repo / out).exists() and (current := lineage.dvc_md5(repo / out)) not in recorded:
            problems.append(f"{out} in the workspace ({current}) is not a recorded version")
    if problems and not force:
        raise VersionError("rolling back would lose work: " + "; ".join(problems) +
                           "\nrecord it first (python -m commands versions record) or pass --force")
    files = [*VERSIONED_FILES, *_uncached_at(repo, v.commit)]
    gitdvc.git(repo, "checkout", v.commit, "--", *files)
    log(f"restored {', '.join(files)} from {v.name} ({v.commit[:10]})")
    outputs = list(v.hashes)
    # --force: the workspace labels were checked above (recorded, so recoverable, or forced).
    got = gitdvc.dvc(repo, "checkout", "--force", *outputs, check=False)
    if got.returncode != 0:  # not in the local cache (gc'd, fresh clone): fetch from the remote
        log("not all in the local DVC cache; pulling from the default remote")
        gitdvc.dvc(repo, "pull", "--force", *outputs)
    restored = {o: lineage.dvc_md5(repo / o) for o in outputs}
    wrong = {o: h for o, h in restored.items() if h != v.hashes[o]}
    if wrong:
        raise VersionError(f"after checkout {wrong} differ from {v.name}'s {v.hashes}")
    log(f"{', '.join(outputs)} bit-identical to {v.name}; run `dvc repro` to retrain downstream stages")
    return restored


def record(repo=".", message: str | None = None, outputs: list[str] | None = None, push: bool = True,
           log=print) -> Version | None:
    """Commit (and tag) the workspace's dvc.lock if the labels differ from HEAD's; push to the remote."""
    repo = Path(repo)
    outputs = label_outputs(repo, outputs)
    lock_path = repo / "dvc.lock"
    if not lock_path.is_file():
        log("no dvc.lock: nothing to record")
        return None
    current = output_hashes(lineage.read_yaml(lock_path), outputs)
    if not current:
        log(f"dvc.lock has no {outputs}: nothing to record")
        return None
    if output_hashes(_lock_at(repo, "HEAD"), outputs) == current:
        log("pseudo labels unchanged since HEAD: no new version")
        return None
    number = len(versions(repo, outputs)) + 1
    tag = f"{TAG_PREFIX}{number}"
    while gitdvc.git(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False).strip():
        tag += "+"
    metrics, _ = _metrics_at_workspace(repo)
    miou = (metrics or {}).get("miou")
    files = [*VERSIONED_FILES]
    dvc_yaml = lineage.read_yaml(repo / "dvc.yaml")
    files += [p for name in lineage.stage_names(dvc_yaml)
              for p in lineage.uncached_outputs(lineage.stage_spec(dvc_yaml, name)) if (repo / p).is_file()]
    gitdvc.git(repo, "add", "--", *files)
    subject = message or f"pseudo labels {tag}" + (f" (mIoU {miou})" if miou is not None else "")
    gitdvc.git(repo, "commit", "-m", subject, "--", *files)
    gitdvc.git(repo, "tag", tag)
    log(f"recorded {tag}: {subject}")
    if push:
        if gitdvc.default_remote(repo):
            gitdvc.dvc(repo, "push", *outputs)
            log(f"pushed {', '.join(outputs)} to the default DVC remote")
        else:
            log("warning: no default DVC remote (make setup creates one): labels only in the local cache")
    return resolve(repo, tag, versions(repo, outputs))


def _metrics_at_workspace(repo: Path) -> tuple[dict | None, str | None]:
    for path in LABEL_METRICS:
        if (repo / path).is_file():
            try:
                return json.loads((repo / path).read_text()), path
            except ValueError:
                continue
    return None, None
