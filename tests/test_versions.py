"""Pseudo-label versions in a small DVC repo of the test's own making: record two versions, list
and diff them, roll back to the first from the remote alone, bytes identical; `dvc repro` then
retrains only the downstream stage."""
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from wsss.commands import gitdvc
from wsss.commands import versions
from tests.servers import git_env

# Three shards of bytes drawn from params.yaml's labels.seed (what every fake label stage writes).
WRITE_SHARDS = textwrap.dedent('''\
    import json, os, random, yaml
    params = yaml.safe_load(open("params.yaml"))
    seed = params["labels"]["seed"]
    rng = random.Random(seed)
    os.makedirs("artifacts/pseudo_labels", exist_ok=True)
    for i in range(3):
        with open(f"artifacts/pseudo_labels/shard{i}.bin", "wb") as fh:
            fh.write(bytes(rng.randrange(256) for _ in range(4096)))
    os.makedirs("metrics", exist_ok=True)
''')
MAKE_LABELS = WRITE_SHARDS + textwrap.dedent('''\
    json.dump({"miou": 40.0 + seed, "per_class_iou": {"background": 80.0, "cat": seed * 1.0}},
              open("metrics/pseudo_labels.json", "w"))
''')
TRAIN = textwrap.dedent('''\
    import hashlib, os
    h = hashlib.md5()
    for name in sorted(os.listdir("artifacts/pseudo_labels")):
        h.update(open(os.path.join("artifacts/pseudo_labels", name), "rb").read())
    open("artifacts/segmenter.bin", "w").write(h.hexdigest())
''')
DVC_YAML = {"stages": {
    "pseudo_labels": {"cmd": "python make_labels.py", "deps": ["make_labels.py"], "params": ["labels"],
                      "outs": ["artifacts/pseudo_labels"],
                      "metrics": [{"metrics/pseudo_labels.json": {"cache": False}}]},
    "train_segmenter": {"cmd": "python train.py", "deps": ["train.py", "artifacts/pseudo_labels"],
                        "outs": ["artifacts/segmenter.bin"]},
}}


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def set_seed(repo, seed):
    (repo / "params.yaml").write_text(yaml.safe_dump({"labels": {"seed": seed}}))


@pytest.fixture
def label_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    for k, v in git_env().items():
        if k.startswith("GIT_"):
            monkeypatch.setenv(k, v)
    (repo / "make_labels.py").write_text(MAKE_LABELS)
    (repo / "train.py").write_text(TRAIN)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / ".gitignore").write_text("/artifacts/\n")
    set_seed(repo, 1)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    gitdvc.dvc(repo, "init", "-q")
    gitdvc.dvc(repo, "config", "core.analytics", "false")
    gitdvc.dvc(repo, "config", "core.site_cache_dir", ".dvc/site-cache")
    gitdvc.ensure_local_remote(repo)
    gitdvc.git(repo, "add", "-A")
    gitdvc.git(repo, "commit", "-qm", "toy pipeline")
    return repo


def test_record_list_diff_rollback(label_repo):
    repo = label_repo
    assert versions.label_outputs(repo) == ["artifacts/pseudo_labels"]
    logs = []
    gitdvc.dvc(repo, "repro")
    v1 = versions.record(repo, log=logs.append)
    first = snapshot(repo / "artifacts/pseudo_labels")
    assert v1 is not None and v1.name == "v1" and v1.tags == ["labels-v1"] and v1.miou == 41.0
    assert versions.record(repo, log=logs.append) is None  # nothing changed: no second version

    set_seed(repo, 2)
    gitdvc.dvc(repo, "repro")
    v2 = versions.record(repo, log=logs.append)
    assert v2 is not None and v2.tags == ["labels-v2"] and v2.miou == 42.0
    assert snapshot(repo / "artifacts/pseudo_labels") != first

    found = versions.versions(repo)
    assert [v.name for v in found] == ["v1", "v2"]
    listing = versions.format_list(found, long=True)
    assert "labels.seed: 1" in listing and "labels.seed: 2" in listing and "41.00" in listing
    d = versions.diff(repo, found[0], found[1])
    assert d["params"] == {"labels.seed": [1, 2]} and d["miou"] == [41.0, 42.0]
    assert d["per_class_iou"] == {"cat": [1.0, 2.0]}

    # Roll back from the remote alone: the local cache is gone.
    shutil.rmtree(repo / ".dvc/cache")
    versions.rollback(repo, versions.resolve(repo, "labels-v1", found), log=logs.append)
    assert snapshot(repo / "artifacts/pseudo_labels") == first
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"labels": {"seed": 1}}
    assert json.loads((repo / "metrics/pseudo_labels.json").read_text())["miou"] == 41.0
    assert any("pulling" in line for line in logs)

    # dvc repro then retrains downstream from the restored labels, and leaves them alone.
    again = gitdvc.dvc(repo, "repro")
    assert "Running stage 'train_segmenter'" in again.stdout
    assert "Running stage 'pseudo_labels'" not in again.stdout
    assert snapshot(repo / "artifacts/pseudo_labels") == first
    status = gitdvc.dvc(repo, "status")
    assert "up to date" in status.stdout, status.stdout


def test_cli_lists_and_refuses_unknown_or_unsafe_rollback(label_repo):
    repo = label_repo
    gitdvc.dvc(repo, "repro")
    versions.record(repo, log=lambda _: None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "wsss.commands", "versions", "--repo", str(repo), *args],
                              capture_output=True, text=True)

    listed = cli("list")
    assert listed.returncode == 0 and "v1" in listed.stdout and "labels-v1" in listed.stdout
    assert json.loads(cli("list", "--json").stdout)[0]["tags"] == ["labels-v1"]
    unknown = cli("rollback", "v7")
    assert unknown.returncode == 2  # a user error: one line, no traceback
    assert unknown.stderr == "error: 'v7' is not a pseudo-label version (versions: v1)\n"
    set_seed(repo, 5)  # an uncommitted params change would be lost
    unsafe = cli("rollback", "v1")
    assert unsafe.returncode == 2 and unsafe.stderr.startswith("error: rolling back would lose work")
    assert "params.yaml" in unsafe.stderr and "--force" in unsafe.stderr and "Traceback" not in unsafe.stderr
    assert cli("rollback", "v1", "--force").returncode == 0
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"labels": {"seed": 1}}


# Iterative label rounds: a foreach stage over params.yaml `rounds` makes each round's
# labels (artifacts/rounds/<round>/pseudo_labels); the canonical pseudo_labels stage is the last round.
MAKE_ROUND = textwrap.dedent('''\
    import json, os, random, sys, yaml
    key = sys.argv[1]
    rounds = yaml.safe_load(open("params.yaml"))["rounds"]
    seed = rounds[key]["seed"]
    rng = random.Random(f"{key}-{seed}")
    os.makedirs(f"artifacts/rounds/{key}/pseudo_labels", exist_ok=True)
    for i in range(2):
        with open(f"artifacts/rounds/{key}/pseudo_labels/shard{i}.bin", "wb") as fh:
            fh.write(bytes(rng.randrange(256) for _ in range(4096)))
    os.makedirs(f"metrics/rounds/{key}", exist_ok=True)
    json.dump({"miou": 30.0 + seed, "ignored_fraction": 0.25, "round": list(rounds).index(key) + 1},
              open(f"metrics/rounds/{key}/pseudo_labels.json", "w"))
''')
# The final labels depend on round r1 but (unlike a real pipeline) only their seed sets the bytes:
# a change to r1 alone then leaves them identical, so only the round makes a new version.
MAKE_FINAL = WRITE_SHARDS + textwrap.dedent('''\
    json.dump({"miou": 40.0 + seed, "ignored_fraction": 0.125, "round": len(params["rounds"]) + 1},
              open("metrics/pseudo_labels.json", "w"))
''')
ROUNDS_DVC_YAML = {"stages": {
    "round_labels": {"foreach": "${rounds}", "do": {
        "cmd": "python make_round.py ${key}", "deps": ["make_round.py"], "params": ["rounds"],
        "outs": ["artifacts/rounds/${key}/pseudo_labels"],
        "metrics": [{"metrics/rounds/${key}/pseudo_labels.json": {"cache": False}}]}},
    "pseudo_labels": {"cmd": "python make_final.py",
                      "deps": ["make_final.py", "artifacts/rounds/r1/pseudo_labels"], "params": ["labels", "rounds"],
                      "outs": ["artifacts/pseudo_labels"],
                      "metrics": [{"metrics/pseudo_labels.json": {"cache": False}}]},
    "train_segmenter": DVC_YAML["stages"]["train_segmenter"],
}}
R1 = "artifacts/rounds/r1/pseudo_labels"
FINAL = "artifacts/pseudo_labels"


def digests(directory):
    return {name: hashlib.sha256(data).hexdigest() for name, data in snapshot(directory).items()}


def set_params(repo, seed, r1_seed):
    (repo / "params.yaml").write_text(yaml.safe_dump({"labels": {"seed": seed}, "rounds": {"r1": {"seed": r1_seed}}}))


@pytest.fixture
def rounds_repo(label_repo):
    repo = label_repo
    (repo / "make_round.py").write_text(MAKE_ROUND)
    (repo / "make_final.py").write_text(MAKE_FINAL)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(ROUNDS_DVC_YAML, sort_keys=False))
    set_params(repo, 1, 1)
    gitdvc.git(repo, "add", "-A")
    gitdvc.git(repo, "commit", "-qm", "toy pipeline with one label round")
    return repo


def test_rounds_are_versions(rounds_repo):
    repo = rounds_repo
    assert versions.label_outputs(repo) == [FINAL, R1]
    logs = []
    gitdvc.dvc(repo, "repro")
    first = versions.record(repo, log=logs.append)
    r1_first, final_first = digests(repo / R1), digests(repo / FINAL)
    # One commit, two versions: round r1, then the final labels (the tag names the commit's last).
    assert first is not None and first.name == "v2" and first.round == "final" and first.tags == ["labels-v2"]

    set_params(repo, 1, 2)  # only round r1 changes; the final labels come out identical
    gitdvc.dvc(repo, "repro")
    second = versions.record(repo, log=logs.append)
    assert digests(repo / R1) != r1_first and digests(repo / FINAL) == final_first
    assert second is not None and second.name == "v3" and second.round == "r1" and second.tags == ["labels-v3"]
    assert second.subject == "pseudo labels labels-v3 (round r1, mIoU 32.0)"

    found = versions.versions(repo)
    assert [(v.name, v.round, v.round_number, v.output, v.miou) for v in found] == [
        ("v1", "r1", 1, R1, 31.0), ("v2", "final", 2, FINAL, 41.0), ("v3", "r1", 1, R1, 32.0)]
    assert found[0].commit == found[1].commit != found[2].commit
    assert found[0].metrics_file == "metrics/rounds/r1/pseudo_labels.json"
    listing = versions.format_list(found).splitlines()[1:]
    assert "r1 (1)" in listing[0] and "final (2)" in listing[1] and "r1 (1)" in listing[2]
    assert "31.00" in listing[0] and "41.00" in listing[1]
    assert "rounds.r1.seed: 2" in versions.format_list(found, long=True).splitlines()[-1]
    # A version by REF@ROUND, by round (its latest), by tag (the commit's last version).
    assert versions.resolve(repo, "labels-v2@r1", found) is found[0]
    assert versions.resolve(repo, "r1", found) is found[2]
    assert versions.resolve(repo, "final", found) is found[1]
    assert versions.resolve(repo, "labels-v3", found) is found[2]

    # Between two rounds of one commit: mIoU, ignored fraction and each one's labels; same params.
    d = versions.diff(repo, found[0], found[1])
    assert d["rounds"] == ["r1", "final"] and d["miou"] == [31.0, 41.0] and d["miou_change"] == 10.0
    assert d["ignored_fraction"] == [0.25, 0.125] and d["params"] == {}
    assert d["hashes"] == {FINAL: [None, found[1].hashes[FINAL]], R1: [found[0].hashes[R1], None]}
    text = versions.format_diff(d)
    assert "v1 round r1 (1)" in text and "v2 round final (2)" in text and "(+10.00)" in text
    # Between commits, round r1 against itself.
    d = versions.diff(repo, found[0], found[2])
    assert d["params"] == {"rounds.r1.seed": [1, 2]} and d["miou_change"] == 1.0
    assert d["hashes"] == {R1: [found[0].hashes[R1], found[2].hashes[R1]]}

    # Roll back to round 1's first version from the remote alone: that round's labels bit-identical.
    shutil.rmtree(repo / ".dvc/cache")
    restored = versions.rollback(repo, versions.resolve(repo, "v1", found), log=logs.append)
    assert digests(repo / R1) == r1_first and digests(repo / FINAL) == final_first
    assert restored == {R1: found[0].hashes[R1], FINAL: found[1].hashes[FINAL]}
    assert yaml.safe_load((repo / "params.yaml").read_text())["rounds"] == {"r1": {"seed": 1}}
    assert json.loads((repo / "metrics/rounds/r1/pseudo_labels.json").read_text())["miou"] == 31.0
    assert any("bit-identical to v1 (round r1 (1))" in line for line in logs)
    again = gitdvc.dvc(repo, "repro")
    assert "Running stage 'round_labels@r1'" not in again.stdout and digests(repo / R1) == r1_first


def test_cli_lists_diffs_and_rolls_back_rounds(rounds_repo):
    repo = rounds_repo
    gitdvc.dvc(repo, "repro")
    versions.record(repo, log=lambda _: None)
    r1_first = digests(repo / R1)
    set_params(repo, 1, 3)
    gitdvc.dvc(repo, "repro")
    versions.record(repo, log=lambda _: None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "wsss.commands", "versions", "--repo", str(repo), *args],
                              capture_output=True, text=True)

    listed = cli("list", "--json")
    assert [(v["number"], v["round"], v["output"]) for v in json.loads(listed.stdout)] == [
        (1, "r1", R1), (2, "final", FINAL), (3, "r1", R1)]
    diffed = cli("diff", "labels-v2@r1", "labels-v2")
    assert diffed.returncode == 0 and "mIoU: 31.0 -> 41.0 (+10.00)" in diffed.stdout
    back = cli("rollback", "v1")
    assert back.returncode == 0 and "round r1 (1)" in back.stdout, back.stderr
    assert digests(repo / R1) == r1_first


def test_foreach_stages_expand_as_dvc_names_them():
    from wsss.tracking import lineage
    dvc_yaml = {"vars": [{"seeds": [3, 4]}], "stages": {
        "plain": {"cmd": "true", "outs": ["a"]},
        "round_labels": {"foreach": "${rounds}", "do": {
            "cmd": "make ${key} from ${item.maps}", "outs": ["artifacts/rounds/${key}/pseudo_labels"],
            "metrics": [{"metrics/rounds/${ key }/pseudo_labels.json": {"cache": False}}]}},
        "by_seed": {"foreach": "${seeds}", "do": {"cmd": "run ${item} ${other}"}},
        "by_dict": {"foreach": [{"x": 1}, {"x": 2}], "do": {"cmd": "run ${item.x}"}}}}
    stages = lineage.expanded_stages(dvc_yaml, {"rounds": {"r1": {"maps": "m1"}, "r2": {"maps": "m2"}}})
    assert list(stages) == ["plain", "round_labels@r1", "round_labels@r2", "by_seed@3", "by_seed@4",
                            "by_dict@0", "by_dict@1"]
    assert stages["round_labels@r2"]["cmd"] == "make r2 from m2"
    assert lineage.stage_outputs(stages["round_labels@r1"]) == ["artifacts/rounds/r1/pseudo_labels"]
    assert lineage.uncached_outputs(stages["round_labels@r2"]) == ["metrics/rounds/r2/pseudo_labels.json"]
    assert stages["by_seed@4"]["cmd"] == "run 4 ${other}" and stages["by_dict@1"]["cmd"] == "run 2"
    assert list(lineage.expanded_stages(dvc_yaml, {"rounds": {}})) == [
        "plain", "by_seed@3", "by_seed@4", "by_dict@0", "by_dict@1"]
    with pytest.raises(lineage.LineageError, match="rounds"):
        lineage.expanded_stages(dvc_yaml, {})
