"""The `wsss` command line (wsss/cli.py): its help screens, exit codes, `config show`, `data init`
(read back by the manifest's reader), `stage` and `ui`; the pipeline folder it works in."""
import tomllib

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from wsss import cli, data_init
from wsss.config import project
from wsss.config.params import load
from wsss.dataset import voc

from tests.conftest import REPO

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, list(args), prog_name="wsss")


def all_commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from all_commands(sub, (*path, name))


def test_every_help_screen_has_an_example_and_the_exit_codes():
    top = typer.main.get_command(cli.app)
    paths = [p for p, _ in all_commands(top)]
    for want in [("run",), ("stage",), ("predict",), ("label-pngs",), ("instance-pngs",), ("search",),
                 ("near-duplicates",), ("versions", "list"), ("versions", "diff"), ("versions", "rollback"),
                 ("versions", "record"), ("versions", "setup-remote"), ("serve",), ("flow", "run"), ("ui",),
                 ("config", "show"), ("data", "init")]:
        assert want in paths
    for path in paths:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        assert "Example:" in result.output and "wsss " in result.output.split("Example:")[1], path
        assert "Exit codes: 0 done, 2 bad input, 1 a failure or a bug." in result.output, path


def test_version_and_bad_command_lines():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert invoke("--version").output.strip() == f"wsss {version}"
    assert invoke("no-such-command").exit_code == 2
    assert invoke("search").exit_code == 2                       # a missing argument
    assert invoke("data", "init", "x", "--val-share", "a").exit_code == 2


def test_config_show_is_the_effective_params(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # no pipeline here: the checkout's params.yaml is read
    result = invoke("config", "show", "--set", "classifier.epochs=2", "--set", "profile=paper")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown == load(REPO / "params.yaml", ["classifier.epochs=2", "profile=paper"])
    assert shown["classifier"]["epochs"] == 2 and shown["profile"] == "paper"
    bad = invoke("config", "show", "--set", "classifier.epochs=x")
    assert bad.exit_code == 2 and "error: classifier.epochs" in bad.output


def test_stage_refuses_an_unknown_stage_with_exit_2(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = invoke("stage", "no_such_stage")
    assert result.exit_code == 2
    assert "unknown stage 'no_such_stage'" in result.output and "manifest" in result.output


def test_ui_says_the_commands_and_urls(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = invoke("ui").output
    assert "prefect server start --host 127.0.0.1" in out and "http://127.0.0.1:4200" in out
    assert f"--backend-store-uri sqlite:///{REPO / 'mlflow.db'}" in out and "http://127.0.0.1:5000" in out


def test_the_pipeline_folder_is_the_nearest_with_a_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert project.find(tmp_path / "a" / "b") == tmp_path
    assert project.root(tmp_path / "a" / "b") == tmp_path
    (tmp_path / "dvc.yaml").unlink()
    assert project.find(tmp_path / "a") != tmp_path
    assert project.root(tmp_path / "a") == REPO   # the checkout this package runs from


def photos(folder, tags_csv: str, images=("cat1.jpg", "dog1.png", "both.jpeg", "extra.jpg")):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in images:
        pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        if name.endswith(".png"):
            img.convert("RGBA").save(folder / name)
        else:
            img.save(folder / name, "JPEG")
    (folder / "tags.csv").write_text(tags_csv)
    return folder


def test_data_init_writes_the_layout_the_manifest_reads(tmp_path, monkeypatch):
    src = photos(tmp_path / "photos", "image,tags\ncat1.jpg,cat\n# a comment\ndog1,dog;person\nboth.jpeg,cat dog\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("data", "init", "photos", "--val-share", "0.34")
    assert result.exit_code == 0, result.output
    assert "extra.jpg" in result.output   # not in tags.csv: left out, and said
    out = tmp_path / "data" / "photos"
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["both.jpg", "cat1.jpg", "dog1.jpg"]
    assert (out / "JPEGImages" / "cat1.jpg").read_bytes() == (src / "cat1.jpg").read_bytes()
    with Image.open(out / "JPEGImages" / "dog1.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 24)
    assert (out / "classes.txt").read_text().split() == ["background", "cat", "dog", "person"]
    train = voc.read_split(out, "train")
    val = voc.read_split(out, "val")
    assert len(val) == 1 and sorted(train + val) == ["both", "cat1", "dog1"]
    table, classes = voc.scan(out, ["train", "val"], allow_no_objects=["val"], workers=0)
    tags = {r["id"]: sorted(classes[t] for t in r["tags"]) for r in table.to_pylist()}
    assert tags == {"cat1": ["cat"], "dog1": ["dog", "person"], "both": ["cat", "dog"]}
    assert not any(table.column("has_mask").to_pylist())
    # the same split again; a second run refuses to replace OUT unless told
    again = invoke("data", "init", "photos", "--val-share", "0.34")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert invoke("data", "init", "photos", "--val-share", "0.34", "--overwrite").exit_code == 0
    assert voc.read_split(out, "val") == val


@pytest.mark.parametrize("tags_csv, message", [
    ("cat1.jpg,cat\nnope.jpg,dog\n", "nope.jpg"),
    ("cat1.jpg,cat\ncat1,dog\n", "listed again (first at line 1)"),
    ("cat1.jpg,\n", "has no tags"),
    ("cat1.jpg,background cat\n", "'background' is not a tag"),
])
def test_data_init_refuses_bad_tags_with_exit_2(tmp_path, monkeypatch, tags_csv, message):
    photos(tmp_path / "photos", tags_csv)
    monkeypatch.chdir(tmp_path)
    result = invoke("data", "init", "photos")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "data" / "photos").exists()


def test_data_init_needs_a_tags_file_and_a_folder_apart(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(data_init.InitError, match="needs a tags.csv"):
        data_init.init(folder, tmp_path / "out")
    with pytest.raises(data_init.InitError, match="is the input folder"):
        data_init.init(folder, folder)


def test_the_split_is_seeded_and_keeps_a_training_image():
    ids = [f"im{i}" for i in range(10)]
    assert data_init.split(ids, 0.2, 0) == data_init.split(list(reversed(ids)), 0.2, 0)
    assert data_init.split(ids, 0.2, 0) != data_init.split(ids, 0.2, 1)
    assert [len(part) for part in data_init.split(ids, 0.2, 0)] == [8, 2]
    assert [len(part) for part in data_init.split(["a", "b"], 0.9, 0)] == [1, 1]
    assert data_init.split(["a"], 0.2, 0) == (["a"], [])
