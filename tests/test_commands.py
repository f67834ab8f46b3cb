"""`python -m wsss.commands`: one typer app; output folders are never replaced over files the command did
not write (wsss/commands/outputs.py), and user errors exit 2 with one `error: ...` line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from wsss.commands import outputs
from wsss.commands.cli import app
from wsss.commands.label_pngs import export
from wsss.commands.predict import ImageError, predict_folder
from models.networks import to_config
from models.segmenter import build_segmenter
from wsss.stores import labelstore
from wsss.training import checkpoints

from tests.conftest import REPO
from tests.test_segmentation import CFG



def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent):
    """Temporary siblings atomic_path would leave if a write were half done."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny segmenter: predict only needs weights that load."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "seg.pt"
    classes = ["background", "cat", "dog"]
    checkpoints.save(path, build_segmenter(CFG, len(classes)).eval(), to_config("segmenter", CFG, classes))
    return path


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    """The repository's params with the segmenter on the CPU in fp32 (bf16 kernels warm up slowly)."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["segmenter"].update(device="cpu", precision="fp32")
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def images_dir(voc_fixture, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.open(voc_fixture / "JPEGImages" / "tr0.jpg").save(inp / "a.jpg")
    return inp


@pytest.fixture
def labels_dir(tmp_path):
    rng = np.random.default_rng(0)
    records = [(f"im{i}", rng.integers(0, 3, (6, 8)).astype(np.uint8)) for i in range(3)]
    labelstore.write(iter(records), tmp_path / "pseudo_labels", shard_size=2)
    return tmp_path / "pseudo_labels"


@pytest.fixture
def predict(checkpoint, params):
    def predict(inp, out, checkpoint, *extra):
        return run("predict", inp, out, "--checkpoint", checkpoint, "--params", params, *extra)
    return predict


def test_help_lists_every_command():
    top = subprocess.run([sys.executable, "-m", "wsss.commands", "--help"], capture_output=True, text=True, cwd=REPO)
    assert top.returncode == 0, top.stderr
    for name in ("predict", "label-pngs", "versions"):
        assert name in top.stdout
    sub = run("versions", "--help")
    assert sub.exit_code == 0
    for name in ("list", "diff", "rollback", "record", "setup-remote"):
        assert name in sub.output
    assert "--overwrite" in run("predict", "--help").output and "--crf" in run("predict", "--help").output
    assert "--overwrite" in run("label-pngs", "--help").output


def test_predict_writes_a_manifest_and_reruns_into_its_own_output(images_dir, checkpoint, tmp_path, predict):
    out = tmp_path / "out"
    (images_dir / "b.png").write_bytes((images_dir / "a.jpg").read_bytes())  # any suffix, by content
    first = predict(images_dir, out, checkpoint)
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / outputs.MANIFEST).read_text())
    assert manifest["command"] == "predict"
    assert sorted(manifest["files"]) == ["classes.txt", "labels/a.png", "labels/b.png",
                                         "overlays/a.png", "overlays/b.png"]
    (images_dir / "b.png").unlink()  # the second run writes less: OUT holds exactly what it wrote
    again = predict(images_dir, out, checkpoint)
    assert again.exit_code == 0, again.output
    assert sorted(snapshot(out)) == [outputs.MANIFEST, "classes.txt", "labels/a.png", "overlays/a.png"]
    assert leftovers(tmp_path) == []


def test_predict_refuses_output_inside_the_input_and_deletes_nothing(images_dir, checkpoint, predict):
    before = snapshot(images_dir)
    for out in (images_dir, images_dir / "predictions"):
        result = predict(images_dir, out, checkpoint)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: OUT_DIR {out} is inside the input folder {images_dir}")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert snapshot(images_dir) == before and not (images_dir / "predictions").exists()
        assert leftovers(images_dir.parent) == [] and leftovers(images_dir) == []
    # --overwrite does not lift it
    assert predict(images_dir, images_dir, checkpoint, "--overwrite").exit_code == 2
    assert snapshot(images_dir) == before
    with pytest.raises(outputs.OutputError, match="is inside the input folder"):
        predict_folder(images_dir, images_dir, checkpoint, "cpu")


def test_predict_refuses_an_input_inside_the_output(images_dir, checkpoint, tmp_path, predict):
    before = snapshot(tmp_path)
    result = predict(images_dir, tmp_path, checkpoint, "--overwrite")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: the input folder {images_dir} is inside OUT_DIR {tmp_path}")
    assert snapshot(tmp_path) == before


def test_predict_refuses_a_folder_with_foreign_files_unless_overwrite(images_dir, checkpoint, tmp_path, predict):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = predict(images_dir, out, checkpoint)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: OUT_DIR {out} holds files that `predict` did not write (notes.txt)")
    assert "--overwrite" in result.stderr
    assert snapshot(out) == {"notes.txt": b"mine"} and leftovers(tmp_path) == []

    # A file added to an earlier run's output, or one of its files edited, is foreign too.
    (out / "notes.txt").unlink()
    assert predict(images_dir, out, checkpoint).exit_code == 0
    written = snapshot(out)
    (out / "labels" / "mine.png").write_bytes(b"x")
    added = predict(images_dir, out, checkpoint)
    assert added.exit_code == 2 and "(labels/mine.png)" in added.stderr
    assert snapshot(out) == {**written, "labels/mine.png": b"x"}
    (out / "labels" / "mine.png").unlink()
    (out / "overlays" / "a.png").write_bytes(b"edited")
    edited = predict(images_dir, out, checkpoint)
    assert edited.exit_code == 2 and "(overlays/a.png)" in edited.stderr
    assert (out / "overlays" / "a.png").read_bytes() == b"edited"

    forced = predict(images_dir, out, checkpoint, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert (out / "overlays" / "a.png").read_bytes() != b"edited"
    assert sorted(snapshot(out)) == sorted(written)


def test_a_failed_predict_leaves_the_old_output_whole(images_dir, checkpoint, tmp_path, predict):
    out = tmp_path / "out"
    assert predict(images_dir, out, checkpoint).exit_code == 0
    before = snapshot(out)
    (images_dir / "c.png").write_bytes(b"nope")  # fails after a.jpg's outputs were written
    result = predict(images_dir, out, checkpoint)
    last = result.stderr.splitlines()[-1]  # after the progress bar
    assert result.exit_code == 2 and last.startswith("error: ") and "c.png: not a readable image" in last
    assert snapshot(out) == before and leftovers(tmp_path) == []
    with pytest.raises(ImageError):
        predict_folder(images_dir, out, checkpoint, "cpu", precision="fp32")
    assert snapshot(out) == before


def test_predict_names_a_missing_input_or_checkpoint(tmp_path, images_dir, checkpoint, predict):
    missing = predict(tmp_path / "nowhere", tmp_path / "out", checkpoint)
    assert missing.exit_code == 2 and missing.stderr == f"error: input folder {tmp_path / 'nowhere'} not found\n"
    no_ckpt = predict(images_dir, tmp_path / "out", tmp_path / "none.pt")
    assert no_ckpt.exit_code == 2 and no_ckpt.stderr.startswith(f"error: checkpoint {tmp_path / 'none.pt'} not found")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_label_pngs_refusals_rerun_and_overwrite(labels_dir, tmp_path):
    out = tmp_path / "pngs"
    first = run("label-pngs", out, "--labels", labels_dir)
    assert first.exit_code == 0 and "3 label PNGs" in first.stdout
    assert sorted(snapshot(out)) == [outputs.MANIFEST, "im0.png", "im1.png", "im2.png"]
    assert np.array(Image.open(out / "im1.png")).shape == (6, 8)
    assert run("label-pngs", out, "--labels", labels_dir).exit_code == 0  # its own earlier output

    shards = snapshot(labels_dir)
    inside = run("label-pngs", labels_dir, "--labels", labels_dir, "--overwrite")
    assert inside.exit_code == 2 and inside.stderr.startswith(f"error: OUT_DIR {labels_dir} is inside the input folder")
    holding = run("label-pngs", tmp_path, "--labels", labels_dir, "--overwrite")
    assert holding.exit_code == 2 and "is inside OUT_DIR" in holding.stderr
    assert snapshot(labels_dir) == shards

    (out / "keep.txt").write_text("mine")
    before = snapshot(out)
    refused = run("label-pngs", out, "--labels", labels_dir)
    assert refused.exit_code == 2
    assert refused.stderr.startswith(f"error: OUT_DIR {out} holds files that `label-pngs` did not write (keep.txt)")
    assert snapshot(out) == before
    assert run("label-pngs", out, "--labels", labels_dir, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "im0.png").exists()
    assert leftovers(tmp_path) == []


def test_one_command_does_not_replace_another_commands_output(labels_dir, images_dir, checkpoint, tmp_path, predict):
    out = tmp_path / "out"
    assert predict(images_dir, out, checkpoint).exit_code == 0
    before = snapshot(out)
    with pytest.raises(outputs.OutputError, match="`label-pngs` did not write"):
        export(labels_dir, out)
    assert snapshot(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(labels_dir, empty) == 3  # an empty folder holds nothing to lose


def test_bad_version_ref_exits_2_with_one_line(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text("stages:\n  pseudo_labels:\n    cmd: 'true'\n    outs: [artifacts/pseudo_labels]\n")
    for args in (("rollback", "v7"), ("diff", "v1", "labels-v2")):
        result = run("versions", "--repo", repo, *args)
        assert result.exit_code == 2
        assert result.stderr == f"error: {args[1]!r} is not a pseudo-label version (versions: none)\n"
    listed = run("versions", "--repo", repo, "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
