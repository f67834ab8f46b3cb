"""Bad inputs to the user commands (clashing image names, ids that are not file names, broken
checkpoints and shards): one `error: ...` line naming the file or id, exit 2, nothing written."""
import numpy as np
import pytest
import torch
from PIL import Image

from wsss.stores import instancestore, labelstore
from tests.test_commands import checkpoint, leftovers, params, predict, run  # noqa: F401


def one_line_error(result, *names):
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.output, result.output
    for name in names:
        assert str(name) in last, last
    return last


def test_predict_refuses_inputs_whose_outputs_would_share_a_name(tmp_path, checkpoint, predict):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png", "b.png"):   # two different images named a
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(inp / name)
    result = predict(inp, tmp_path / "out", checkpoint)
    one_line_error(result, "a.jpg", "a.png")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("bad_id", ["../../escaped", "..", "a/b", ""])
def test_label_pngs_refuses_an_id_that_is_not_a_file_name(tmp_path, bad_id):
    labels = tmp_path / "deep" / "er" / "labels"
    labelstore.write(iter([("ok", np.zeros((4, 5), np.uint8)), (bad_id, np.ones((4, 5), np.uint8))]), labels, 4)
    out = tmp_path / "deep" / "er" / "out"
    one_line_error(run("label-pngs", out, "--labels", labels), repr(bad_id), labels)
    assert not out.exists() and not list(tmp_path.rglob("escaped*"))


def test_instance_pngs_refuses_an_id_that_is_not_a_file_name(tmp_path):
    store = tmp_path / "maps" / "instances.parquet"
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:3] = True
    instancestore.write([("../escaped", [(1, 0.9, mask)])], store, ["background", "cat"])
    out = tmp_path / "out"
    one_line_error(run("instance-pngs", out, "--instances", store), "'../escaped'", store)
    assert not out.exists() and not list(tmp_path.rglob("escaped*"))


def broken_checkpoints(folder, good):
    data = good.read_bytes()
    made = {"random bytes": b"\x00not a checkpoint" * 10, "truncated": data[: len(data) // 2]}
    for name, content in made.items():
        (folder / f"{name.replace(' ', '_')}.pt").write_bytes(content)
    torch.save({"weights": torch.zeros(2)}, folder / "foreign.pt")   # a torch file, not ours
    return sorted(folder.glob("*.pt"))


def test_predict_names_a_broken_or_foreign_checkpoint(tmp_path, checkpoint, predict):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(inp / "a.png")
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for bad in broken_checkpoints(folder, checkpoint):
        last = one_line_error(predict(inp, tmp_path / "out", bad), bad)
        assert "segmenter checkpoint" in last, last
        assert not (tmp_path / "out").exists()


def test_label_pngs_names_a_corrupt_shard(tmp_path):
    labels = tmp_path / "labels"
    labelstore.write(iter([(f"im{i}", np.zeros((4, 5), np.uint8)) for i in range(3)]), labels, 2)
    shard = sorted(labels.glob("*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:40])
    out = tmp_path / "out"
    one_line_error(run("label-pngs", out, "--labels", labels), shard.name)
    assert not out.exists() and leftovers(tmp_path) == []
