"""Pseudo-label versions: list, diff, roll back, record.

A version is a git commit whose dvc.lock gives a pseudo-label output a new hash; the bytes live
in the DVC cache and the default remote. With iterative label rounds (params.yaml `rounds`)
every round's labels are versions of their own: `artifacts/rounds/<round>/pseudo_labels`
(round `r1`, `r2`, ...) beside the final `artifacts/pseudo_labels` (round `final`), so one commit
can hold several versions, numbered in round order with the final labels last. Rolling back
restores dvc.lock, params.yaml and the uncached metrics/plots of that commit and runs
`dvc checkout` of its label outputs, so the version's labels are bit-identical and carry the
params that made them; `dvc repro` then retrains whatever is downstream.

    python -m wsss.commands versions list [--long] [--json]
    python -m wsss.commands versions diff A B [--json]  # A, B: version number (3 or v3), tag, commit,
                                                   # REF@ROUND (labels-v2@r1) or a round (r1, final)
    python -m wsss.commands versions rollback V [--force]
    python -m wsss.commands versions record [-m MESSAGE] [--no-push]
    python -m wsss.commands versions setup-remote

(the command line is wsss/commands/cli.py; this module holds the functions it calls.)

The tracked outputs are the first of LABEL_OUTPUTS that a dvc.yaml stage declares (the pseudo-label
stage's output once it exists; the CAM maps until then) and every round's labels that dvc.yaml
(its foreach stages expanded with params.yaml) or a commit's dvc.lock holds; `versions --output
PATH` or WSSS_LABEL_OUTPUTS (os.pathsep-separated) choose others instead.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wsss.commands import gitdvc
from wsss.commands.undo import restoring
from wsss.tracking import lineage

LABEL_OUTPUTS = ("artifacts/pseudo_labels", "artifacts/maps")
# Where each revision's label quality is read, first found wins.
LABEL_METRICS = ("metrics/pseudo_labels.json", "metrics/maps.json")
# Iterative label rounds: the `label_round` foreach stage over params.yaml `rounds`.
ROUND_OUTPUT = re.compile(r"^artifacts/rounds/([^/]+)/pseudo_labels$")
ROUND_METRICS = "metrics/rounds/{}/pseudo_labels.json"
FINAL_ROUND = "final"  # the round of LABEL_OUTPUTS[0], the labels the segmenter trains on
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
    hashes: dict[str, str]  # {output: md5} of the one label output this version is
    miou: float | None
    metrics_file: str | None
    params: dict = field(default_factory=dict)
    output: str = ""
    round: str | None = None  # `r1`, ... for a round's labels, "final" for artifacts/pseudo_labels
    round_number: int | None = None  # the `round` its metrics file records

    @property
    def name(self) -> str:
        return f"v{self.number}"


def round_of(output: str) -> str | None:
    match = ROUND_OUTPUT.match(output)
    if match:
        return match.group(1)
    return FINAL_ROUND if output == LABEL_OUTPUTS[0] else None


def _metrics_files(output: str) -> tuple[str, ...]:
    match = ROUND_OUTPUT.match(output)
    return (ROUND_METRICS.format(match.group(1)),) if match else LABEL_METRICS


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _ordered(outputs: list[str], rounds: list[str] = ()) -> list[str]:
    """Round outputs in round order (params.yaml `rounds` order, else r1 < r2 < r10), then the
    others as given, the final labels last."""
    rounds = list(rounds)

    def key(item):
        index, out = item
        match = ROUND_OUTPUT.match(out)
        if match:
            name = match.group(1)
            return (0, rounds.index(name) if name in rounds else len(rounds), _natural(name))
        return (1, out == LABEL_OUTPUTS[0], index)
    return [out for _, out in sorted(enumerate(outputs), key=key)]


def _chosen(explicit: list[str] | None) -> list[str] | None:
    if explicit:
        return list(explicit)
    env = os.environ.get("WSSS_LABEL_OUTPUTS")
    return [p for p in env.split(os.pathsep) if p] if env else None


def _params_rounds(params: dict | None) -> list[str]:
    rounds = (params or {}).get("rounds")
    return [str(k) for k in rounds] if isinstance(rounds, dict) else []


def label_outputs(repo: str | Path, explicit: list[str] | None = None) -> list[str]:
    """The explicit outputs, else WSSS_LABEL_OUTPUTS, else the first of LABEL_OUTPUTS that dvc.yaml
    declares followed by each round's labels it declares (foreach stages expanded with params.yaml)."""
    chosen = _chosen(explicit)
    if chosen:
        return chosen
    repo = Path(repo)
    dvc_yaml = lineage.read_yaml(repo / "dvc.yaml")
    params = lineage.read_yaml(repo / "params.yaml") if (repo / "params.yaml").is_file() else {}
    declared = [out for spec in lineage.expanded_stages(dvc_yaml, params).values()
                for out in lineage.stage_outputs(spec)]
    for candidate in LABEL_OUTPUTS:
        if candidate in declared:
            rounds = [out for out in declared if ROUND_OUTPUT.match(out)]
            return [candidate, *_ordered(rounds, _params_rounds(params))]
    raise VersionError(f"dvc.yaml declares none of {list(LABEL_OUTPUTS)}; pass --output PATH")


def output_hashes(lock: dict, outputs: list[str]) -> dict[str, str]:
    known = lineage.locked_out_hashes(lock)
    return {o: known[o] for o in outputs if o in known}


def _tracked(lock: dict, fixed: list[str], discover: bool) -> list[str]:
    """The fixed outputs plus, unless the outputs were chosen, each round's labels this lock holds
    (a round since dropped from params.yaml is still a version)."""
    found = [o for o in lineage.locked_out_hashes(lock) if ROUND_OUTPUT.match(o) and o not in fixed]
    return [*fixed, *found] if discover else list(fixed)


def locked_params(lock: dict) -> dict:
    """Every params.yaml value dvc.lock recorded, flattened (what the outputs were made with)."""
    out: dict = {}
    for entry in (lock.get("stages") or {}).values():
        for key, value in ((entry or {}).get("params") or {}).get("params.yaml", {}).items():
            out.update(lineage.flatten(value, key) if isinstance(value, dict) else {key: value})
    return out


def _yaml_at(repo, rev, path: str) -> dict:
    text = gitdvc.show(repo, rev, path)
    return (yaml.safe_load(text) or {}) if text else {}


def _lock_at(repo, rev) -> dict:
    return _yaml_at(repo, rev, "dvc.lock")


def _metrics_at(repo, rev, paths: tuple[str, ...] = LABEL_METRICS) -> tuple[dict | None, str | None]:
    for path in paths:
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
    """Oldest first: each (commit on HEAD's history, label output) where that output's hash
    changed; within a commit in round order, the final labels last."""
    chosen = _chosen(outputs)
    fixed = chosen or label_outputs(repo)
    log = gitdvc.git(repo, "log", "--reverse", "--format=%H%x1f%cI%x1f%s", "--", "dvc.lock", check=False)
    tags = _tags_by_commit(repo)
    found: list[Version] = []
    previous: dict[str, str] = {}
    for line in log.splitlines():
        commit, date, subject = line.split("\x1f", 2)
        lock = _lock_at(repo, commit)
        hashes = output_hashes(lock, _tracked(lock, fixed, chosen is None))
        changed = [o for o, h in hashes.items() if previous.get(o) != h]
        if not changed:
            continue
        previous.update({o: hashes[o] for o in changed})
        params = locked_params(lock)
        rounds = sum(bool(ROUND_OUTPUT.match(o)) for o in changed) > 1
        order = _params_rounds(_yaml_at(repo, commit, "params.yaml")) if rounds else []
        for out in _ordered(changed, order):
            metrics, metrics_file = _metrics_at(repo, commit, _metrics_files(out))
            metrics = metrics if isinstance(metrics, dict) else {}
            number = metrics.get("round")
            found.append(Version(len(found) + 1, commit, date, subject, tags.get(commit, []), {out: hashes[out]},
                                 metrics.get("miou"), metrics_file, params, output=out, round=round_of(out),
                                 round_number=number if isinstance(number, int) else None))
    return found


def _rev(repo, ref: str) -> str:
    return gitdvc.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()


def resolve(repo, ref: str, found: list[Version]) -> Version:
    """A version by number (3, v3), tag or (abbreviated) commit (that commit's last version: its
    final labels where they changed), REF@ROUND (that round's version at REF's commit) or a round
    name alone (its latest version)."""
    def by_number(text: str) -> Version | None:
        number = text[1:] if text[:1] in "vV" and text[1:].isdigit() else text
        return found[int(number) - 1] if number.isdigit() and 1 <= int(number) <= len(found) else None

    if (hit := by_number(ref)) is not None:
        return hit
    rounds = {v.round for v in found if v.round}
    base, sep, name = ref.rpartition("@")
    if sep and base and name in rounds:
        commit = hit.commit if (hit := by_number(base)) is not None else _rev(repo, base)
        at = [v for v in found if commit and v.commit == commit and v.round == name]
    else:
        sha = _rev(repo, ref)
        at = [v for v in found if sha and v.commit == sha]
        if not at and ref in rounds:
            at = [v for v in found if v.round == ref]
    if at:
        return at[-1]
    names = ", ".join(v.name for v in found) or "none"
    raise VersionError(f"{ref!r} is not a pseudo-label version (versions: {names})")


def varying_params(found: list[Version]) -> list[str]:
    keys = sorted({k for v in found for k in v.params})
    return [k for k in keys if len({json.dumps(v.params.get(k)) for v in found}) > 1]


def _shows_rounds(rounds, numbers) -> bool:
    """Only pipelines with label rounds show them (output for the others as before rounds)."""
    return any(r not in (None, FINAL_ROUND) for r in rounds) or any(n is not None for n in numbers)


def round_label(round_name: str | None, number: int | None) -> str:
    return (round_name or "-") + (f" ({number})" if number is not None else "")


WIDTH = 100   # the longest line `versions list` prints


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_list(found: list[Version], long: bool = False) -> str:
    """A table (version, round, mIoU, date, commit, tags); `long` adds each version's subject and
    the params that differ between versions, one a line."""
    if not found:
        return "no pseudo-label versions yet (run the pipeline, then commit dvc.lock or use the flow)"
    keys = varying_params(found) if long else []
    lines = [f"{'version':<7}  {'round':<10}  {'mIoU':>6}  {'date':<19}  {'commit':<10}  tags"]
    for v in found:
        miou = f"{v.miou:6.2f}" if isinstance(v.miou, (int, float)) else "     -"
        row = (f"{v.name:<7}  {_fit(round_label(v.round, v.round_number), 10):<10}  {miou}  {v.date[:19]:<19}  "
               f"{v.commit[:10]}  ")
        lines.append(row + _fit(",".join(v.tags) or "-", WIDTH - len(row)))
        if long:
            lines.append(_fit(f"    subject: {v.subject}", WIDTH))
            lines += [_fit(f"    {k}: {json.dumps(v.params.get(k))}", WIDTH) for k in keys]
    return "\n".join(lines)


def _read_metrics(repo, v: Version) -> dict:
    if not v.metrics_file:
        return {}
    metrics, _ = _metrics_at(repo, v.commit, (v.metrics_file,))
    return metrics if isinstance(metrics, dict) else {}


def diff(repo, a: Version, b: Version) -> dict:
    keys = sorted(set(a.params) | set(b.params))
    changed = {k: [a.params.get(k), b.params.get(k)] for k in keys if a.params.get(k) != b.params.get(k)}
    ma, mb = _read_metrics(repo, a), _read_metrics(repo, b)
    per_class = {}
    pa, pb = ma.get("per_class_iou") or {}, mb.get("per_class_iou") or {}
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name) != pb.get(name):
            per_class[name] = [pa.get(name), pb.get(name)]
    numeric = all(isinstance(x, (int, float)) for x in (a.miou, b.miou))
    return {"from": a.name, "to": b.name, "rounds": [a.round, b.round],
            "round_numbers": [a.round_number, b.round_number], "outputs": [a.output, b.output],
            "commits": [a.commit, b.commit], "dates": [a.date, b.date],
            "miou": [a.miou, b.miou], "miou_change": round(b.miou - a.miou, 6) if numeric else None,
            "ignored_fraction": [ma.get("ignored_fraction"), mb.get("ignored_fraction")],
            "hashes": {o: [a.hashes.get(o), b.hashes.get(o)] for o in sorted(set(a.hashes) | set(b.hashes))},
            "params": changed, "per_class_iou": per_class}


def format_diff(d: dict) -> str:
    names = [d["from"], d["to"]]
    if _shows_rounds(d.get("rounds", []), d.get("round_numbers", [])):
        names = [f"{n} round {round_label(r, k)}" for n, r, k in zip(names, d["rounds"], d["round_numbers"])]
    change = f" ({d['miou_change']:+.2f})" if d.get("miou_change") is not None else ""
    lines = [f"{names[0]} ({d['commits'][0][:10]}, {d['dates'][0][:19]}) -> {names[1]} ({d['commits'][1][:10]}, {d['dates'][1][:19]})",
             f"  mIoU: {d['miou'][0]} -> {d['miou'][1]}{change}"]
    ignored = d.get("ignored_fraction") or [None, None]
    if any(x is not None for x in ignored):
        lines.append(f"  ignored fraction: {ignored[0]} -> {ignored[1]}")
    outputs = d.get("outputs") or []
    if len(set(outputs)) == 2:  # two rounds' labels (or two outputs): each one's hash
        lines.append(f"  labels: {outputs[0]} {d['hashes'][outputs[0]][0]} -> {outputs[1]} {d['hashes'][outputs[1]][1]}")
    else:
        for out, (x, y) in d["hashes"].items():
            lines.append(f"  {out}: {x} -> {y}" if x != y else f"  {out}: unchanged ({x})")
    lines.append("  params:" if d["params"] else "  params: identical")
    lines += [f"    {k}: {json.dumps(x)} -> {json.dumps(y)}" for k, (x, y) in d["params"].items()]
    if d["per_class_iou"]:
        lines.append("  per-class IoU:")
        lines += [f"    {k}: {x} -> {y}" for k, (x, y) in d["per_class_iou"].items()]
    return "\n".join(lines)


def _uncached(dvc_yaml: dict, params: dict) -> list[str]:
    """The `cache: false` outputs (metrics, plots) of every stage, foreach stages expanded."""
    if not dvc_yaml.get("stages"):
        return []
    return [p for spec in lineage.expanded_stages(dvc_yaml, params).values() for p in lineage.uncached_outputs(spec)]


def _uncached_at(repo, commit: str) -> list[str]:
    paths = _uncached(_yaml_at(repo, commit, "dvc.yaml"), _yaml_at(repo, commit, "params.yaml"))
    return [p for p in paths if gitdvc.show(repo, commit, p) is not None]


def rollback(repo, v: Version, force: bool = False, log=print, found: list[Version] | None = None) -> dict[str, str]:
    """Restore version `v` in the workspace; returns the verified `{output: md5}`.

    Checks out every tracked label output that v's commit locked (v's own first: with rounds, the
    other rounds' and the final labels of that commit too, so they match the restored dvc.lock).
    Refuses (unless force) when that would lose work: uncommitted dvc.lock/params.yaml that are
    not those of a version's commit (as a rollback leaves them), or label files in the workspace
    that are not a recorded version (recorded ones are in the remote). All-or-nothing: refuses
    before any change when the cache and the default remote together lack some of the labels, and
    puts every file back should a step fail.
    """
    repo = Path(repo)
    found = found if found is not None else versions(repo, None if v.round else list(v.hashes))
    locked = lineage.locked_out_hashes(_lock_at(repo, v.commit))
    others = sorted({o for x in found for o in x.hashes if o in locked and o not in v.hashes})
    if others:  # only those the restored params.yaml makes dvc.yaml declare: dvc checkout finds those
        try:
            declared = {o for spec in lineage.expanded_stages(lineage.read_yaml(repo / "dvc.yaml"),
                                                              _yaml_at(repo, v.commit, "params.yaml")).values()
                        for o in lineage.stage_outputs(spec)}
        except lineage.LineageError:
            declared = set()
        others = [o for o in others if o in declared]
    outputs = [*v.hashes, *_ordered(others)]
    problems = []
    dirty = gitdvc.git(repo, "status", "--porcelain", "--", *VERSIONED_FILES).strip()
    if dirty and not _at_a_version(repo, found):
        problems.append(f"uncommitted changes in {', '.join(VERSIONED_FILES)}:\n{dirty}")
    for out in outputs:
        recorded = {x.hashes[out] for x in found if out in x.hashes} | {locked.get(out)}
        if (repo / out).exists() and (current := lineage.dvc_md5(repo / out)) not in recorded:
            problems.append(f"{out} in the workspace ({current}) is not a recorded version")
    if problems and not force:
        raise VersionError("rolling back would lose work: " + "; ".join(problems) +
                           "\nrecord it first (python -m wsss.commands versions record) or pass --force")
    expected = {o: v.hashes.get(o) or locked.get(o) for o in outputs}
    _fetch_missing(repo, v, expected, log)
    files = [*VERSIONED_FILES, *_uncached_at(repo, v.commit)]
    with restoring(repo, [*files, *outputs], repo / ".dvc" / "tmp"):
        gitdvc.git(repo, "checkout", v.commit, "--", *files)
        # --force: the workspace labels were checked above (recorded, so recoverable, or forced).
        gitdvc.dvc(repo, "checkout", "--force", *outputs)
        restored = {o: lineage.dvc_md5(repo / o) for o in outputs}
        wrong = {o: h for o, h in restored.items() if h != expected[o]}
        if wrong:
            raise VersionError(f"after checkout {wrong} differ from {v.name}'s {expected}; workspace left as it was")
    log(f"restored {', '.join(files)} from {v.name} ({v.commit[:10]})")
    which = f" (round {round_label(v.round, v.round_number)})" if _shows_rounds([v.round], [v.round_number]) else ""
    log(f"{', '.join(v.hashes)} bit-identical to {v.name}{which}; run `dvc repro` to retrain downstream stages")
    if len(outputs) > len(v.hashes):
        log(f"also restored that commit's {', '.join(outputs[len(v.hashes):])}")
    return restored


def _at_a_version(repo, found: list[Version]) -> bool:
    """Whether the workspace's versioned files are those of a version's commit (a rollback's)."""
    commits = dict.fromkeys(v.commit for v in reversed(found))
    return any(not gitdvc.git(repo, "diff", "--name-only", c, "--", *VERSIONED_FILES).strip() for c in commits)


def _fetch_missing(repo, v: Version, expected: dict[str, str], log) -> None:
    """Get what the local cache lacks of `expected` from the default remote; VersionError if it
    stays incomplete (nothing in the workspace touched)."""
    missing = gitdvc.missing_objects(repo, expected)
    if not missing:
        return
    log("not all in the local DVC cache; pulling from the default remote")
    got = gitdvc.fetch_at(repo, v.commit, list(missing))
    missing = gitdvc.missing_objects(repo, expected)
    if missing:
        lacking = ", ".join(f"{o} ({expected[o]}, {n} object{'s' * (n > 1)})" for o, n in missing.items())
        why = (got.stderr or got.stdout).strip().splitlines()
        raise VersionError(f"cannot roll back to {v.name}: not in the local DVC cache nor in the default remote: "
                           f"{lacking}" + (f" (dvc: {why[-1]})" if why else "") + "; nothing was changed")


def record(repo=".", message: str | None = None, outputs: list[str] | None = None, push: bool = True,
           log=print) -> Version | None:
    """Commit (and tag) the workspace's dvc.lock if the labels differ from HEAD's and from every
    recorded version's; push to the remote.

    One commit can make several versions (rounds); the tag `labels-vN` names its last (the final
    labels where they changed)."""
    repo = Path(repo)
    fixed = label_outputs(repo, outputs)
    lock_path = repo / "dvc.lock"
    if not lock_path.is_file():
        log("no dvc.lock: nothing to record")
        return None
    lock = lineage.read_yaml(lock_path)
    tracked = _tracked(lock, fixed, _chosen(outputs) is None)
    current = output_hashes(lock, tracked)
    if not current:
        log(f"dvc.lock has no {fixed}: nothing to record")
        return None
    if output_hashes(_lock_at(repo, "HEAD"), tracked) == current:
        log("pseudo labels unchanged since HEAD: no new version")
        return None
    files = [*VERSIONED_FILES]
    params = lineage.read_yaml(repo / "params.yaml") if (repo / "params.yaml").is_file() else {}
    files += [p for p in _uncached(lineage.read_yaml(repo / "dvc.yaml"), params) if (repo / p).is_file()]
    found = versions(repo, outputs)
    recorded = {(o, h): x.name for x in found for o, h in x.hashes.items()}
    new = [o for o, h in current.items() if (o, h) not in recorded]
    if not new:   # e.g. right after a rollback: those labels are a version already
        names = ", ".join(dict.fromkeys(recorded[item] for item in current.items()))
        log(f"pseudo labels already recorded as {names}: no new version")
        return None
    tag = f"{TAG_PREFIX}{len(found) + len(new)}"  # this commit's last version
    last = _ordered(new, _params_rounds(params))[-1]
    metrics, _ = _metrics_at_workspace(repo, _metrics_files(last))
    miou = (metrics or {}).get("miou")
    name = round_of(last)
    about = [f"round {name}"] if name not in (None, FINAL_ROUND) else []
    about += [f"mIoU {miou}"] if miou is not None else []
    while gitdvc.git(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False).strip():
        tag += "+"
    subject = message or f"pseudo labels {tag}" + (f" ({', '.join(about)})" if about else "")
    gitdvc.git(repo, "add", "--", *files)
    gitdvc.git(repo, "commit", "-m", subject, "--", *files)
    gitdvc.git(repo, "tag", tag)
    log(f"recorded {tag}: {subject}")
    if push:
        if gitdvc.default_remote(repo):
            gitdvc.dvc(repo, "push", *current)
            log(f"pushed {', '.join(current)} to the default DVC remote")
        else:
            log("warning: no default DVC remote (make setup creates one): labels only in the local cache")
    return resolve(repo, tag, versions(repo, outputs))


def _metrics_at_workspace(repo: Path, paths: tuple[str, ...] = LABEL_METRICS) -> tuple[dict | None, str | None]:
    for path in paths:
        if (repo / path).is_file():
            try:
                return json.loads((repo / path).read_text()), path
            except ValueError:
                continue
    return None, None
