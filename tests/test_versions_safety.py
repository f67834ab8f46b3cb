"""Rollback is all-or-nothing and repeatable; recording never duplicates a version; the list stays readable."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from wsss.commands import gitdvc
from wsss.commands import versions
from tests.test_versions import label_repo, rounds_repo  # noqa: F401  (fixtures)
from tests.test_versions import FINAL, R1, digests, set_params, set_seed, snapshot


def cli(repo, *args):
    return subprocess.run([sys.executable, "-m", "wsss.commands", "versions", "--repo", str(repo), *args],
                          capture_output=True, text=True)


def workspace(repo):
    """Everything a rollback may touch: the versioned files, metrics and the label outputs."""
    found = {name: (repo / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    for folder in ("metrics", "artifacts"):
        found.update({f"{folder}/{k}": v for k, v in snapshot(repo / folder).items()})
    return found


def make_versions(repo, seeds, push=True):
    """One recorded version of the final labels (and round r1) per seed; returns their label digests."""
    made = []
    for seed in seeds:
        set_params(repo, seed, seed)
        gitdvc.dvc(repo, "repro")
        versions.record(repo, push=push, log=lambda _: None)
        made.append(digests(repo / FINAL))
    return made


def test_rollback_refuses_labels_in_neither_cache_nor_remote_and_changes_nothing(rounds_repo):
    repo = rounds_repo
    make_versions(repo, [1, 2], push=False)   # the remote never got them
    shutil.rmtree(repo / ".dvc/cache")
    before = workspace(repo)
    result = cli(repo, "rollback", "v1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert R1 in result.stderr and "remote" in result.stderr
    assert workspace(repo) == before


def test_a_rollback_that_fails_midway_puts_the_workspace_back(rounds_repo, monkeypatch):
    repo = rounds_repo
    make_versions(repo, [1, 2])
    before = workspace(repo)
    real = gitdvc.dvc

    def failing_checkout(repo_, *args, **kw):
        if args[:1] == ("checkout",):
            (repo / FINAL).mkdir(parents=True, exist_ok=True)   # as a checkout killed halfway leaves it
            (repo / FINAL / "half.bin").write_bytes(b"partial")
            raise gitdvc.CommandError("dvc checkout failed (1): disk full")
        return real(repo_, *args, **kw)

    monkeypatch.setattr(gitdvc, "dvc", failing_checkout)
    with pytest.raises(gitdvc.CommandError, match="disk full"):
        versions.rollback(repo, versions.resolve(repo, "v1", versions.versions(repo)), log=lambda _: None)
    assert workspace(repo) == before


def three_versions(repo):
    made = []
    for seed in (1, 2, 3):
        set_seed(repo, seed)
        gitdvc.dvc(repo, "repro")
        versions.record(repo, log=lambda _: None)
        made.append(snapshot(repo / "artifacts/pseudo_labels"))
    return made


def test_rollback_twice_in_a_row(label_repo):
    repo = label_repo
    made = three_versions(repo)
    assert cli(repo, "rollback", "v1").returncode == 0
    second = cli(repo, "rollback", "v2")
    assert second.returncode == 0, second.stderr
    assert snapshot(repo / "artifacts/pseudo_labels") == made[1]
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"labels": {"seed": 2}}


def test_record_after_a_rollback_adds_no_duplicate_version(label_repo):
    repo = label_repo
    three_versions(repo)
    assert cli(repo, "rollback", "v1").returncode == 0
    head = gitdvc.git(repo, "rev-parse", "HEAD")
    recorded = cli(repo, "record", "--no-push")
    assert recorded.returncode == 0 and "already recorded as v1" in recorded.stdout, recorded.stdout
    assert gitdvc.git(repo, "rev-parse", "HEAD") == head   # no commit, no tag
    assert [v.name for v in versions.versions(repo)] == ["v1", "v2", "v3"]


def test_list_is_a_narrow_table_with_details_on_request(label_repo):
    repo = label_repo
    for seed in (1, 2):
        # many long params that differ between versions: the old list put them all on one line
        params = {"labels": {"seed": seed, **{f"key_{i:03d}": f"value-{seed}-{'x' * 30}" for i in range(80)}}}
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        gitdvc.dvc(repo, "repro")
        versions.record(repo, log=lambda _: None)
    gitdvc.git(repo, "tag", "a-rather-long-tag-name-that-still-fits")
    short = cli(repo, "list")
    assert short.returncode == 0
    lines = short.stdout.splitlines()
    assert max(map(len, lines)) <= 100, max(map(len, lines))
    assert lines[0].split() == ["version", "round", "mIoU", "date", "commit", "tags"]
    assert lines[1].split()[0] == "v1" and "41.00" in lines[1] and "42.00" in lines[2]
    long = cli(repo, "list", "--long")
    assert long.returncode == 0 and "labels.seed: 1" in long.stdout and "labels.key_079" in long.stdout
    assert max(map(len, long.stdout.splitlines())) <= 100
    assert [v["number"] for v in json.loads(cli(repo, "list", "--json").stdout)] == [1, 2]
