import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import manifest
from wsss.dataset import voc
from wsss.config.params import load
from tests.conftest import REPO, voc_mini_root


def _params(root):
    return load(REPO / "params.yaml", [f"data.root={root}"])


def test_scan_reads_sizes_tags_and_masks(voc_fixture):
    table, classes = voc.scan(voc_fixture, ["train", "val"])
    rows = table.to_pylist()
    assert classes == ["background", "cat", "dog"]
    assert [r["id"] for r in rows] == ["tr0", "tr1", "tr2", "tr3", "va0", "va1"]
    assert rows[0] == {"id": "tr0", "split": "train", "width": 50, "height": 40, "tags": [1, 2], "has_mask": True}
    assert rows[1]["tags"] == [2]


def test_manifest_stage_writes_parquet_with_classes(voc_fixture, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stats = manifest.main(_params(voc_fixture))
    assert stats["images"] == {"train": 4, "val": 2}
    table, classes, root = voc.read_manifest("artifacts/manifest.parquet")
    assert table.num_rows == 6 and classes[1] == "cat" and root == voc_fixture
    assert json.loads((tmp_path / "metrics/manifest.json").read_text())["with_mask"] == 6


def test_tags_file_for_images_without_masks(voc_fixture):
    (voc_fixture / "SegmentationClass" / "tr1.png").unlink()
    (voc_fixture / "tags.csv").write_text("id,tags\ntr1,cat dog\n")
    rows = voc.scan(voc_fixture, ["train"])[0].to_pylist()
    assert rows[1]["tags"] == [1, 2] and rows[1]["has_mask"] is False


def test_unknown_class_in_tags_file_is_named(voc_fixture):
    (voc_fixture / "SegmentationClass" / "tr1.png").unlink()
    (voc_fixture / "tags.csv").write_text("tr1,cat horse\n")
    with pytest.raises(voc.DataError, match=r"tags.csv:1: image 'tr1' has unknown class 'horse'"):
        voc.scan(voc_fixture, ["train"])


def test_image_without_mask_or_tags_is_named(voc_fixture):
    (voc_fixture / "SegmentationClass" / "tr2.png").unlink()
    with pytest.raises(voc.DataError, match="image 'tr2': no mask"):
        voc.scan(voc_fixture, ["train"])


def test_corrupt_image_is_named_and_old_manifest_survives(voc_fixture, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest.main(_params(voc_fixture))
    before = (tmp_path / "artifacts/manifest.parquet").read_bytes()
    (voc_fixture / "JPEGImages" / "tr3.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(voc.DataError, match=r"image 'tr3': .*tr3.jpg is not a readable image"):
        manifest.main(_params(voc_fixture))
    assert (tmp_path / "artifacts/manifest.parquet").read_bytes() == before
    assert not [p for p in (tmp_path / "artifacts").iterdir() if p.name.startswith(".")]  # no temp left


def test_missing_image_and_bad_mask_label(voc_fixture):
    (voc_fixture / "JPEGImages" / "va1.jpg").unlink()
    with pytest.raises(voc.DataError, match=r"image 'va1' \(split val\).*not found"):
        voc.scan(voc_fixture, ["val"])
    mask = np.array(Image.open(voc_fixture / "SegmentationClass" / "tr0.png"))
    mask[0, 0] = 9
    Image.fromarray(mask, mode="L").save(voc_fixture / "SegmentationClass" / "tr0.png")
    with pytest.raises(voc.DataError, match=r"mask 'tr0'.*label 9 outside 0..2"):
        voc.scan(voc_fixture, ["train"])


def test_missing_split_file(voc_fixture):
    with pytest.raises(voc.DataError, match="test.txt: split file not found"):
        voc.scan(voc_fixture, ["test"])


def test_load_image_is_writable_and_contiguous(voc_fixture):
    image = voc.load_image(voc_fixture, "tr0")
    assert image.flags.writeable and image.flags.c_contiguous and image.shape == (40, 50, 3)


@pytest.mark.realdata
def test_voc_mini_manifest():
    root = voc_mini_root()
    if root is None:
        pytest.skip("WSSS_VOC_MINI is not set")
    table, classes = voc.scan(root, ["train", "val"])
    rows = table.to_pylist()
    assert sum(r["split"] == "train" for r in rows) == 330
    assert sum(r["split"] == "val" for r in rows) == 261
    assert len(classes) == 21 and all(r["has_mask"] and r["tags"] for r in rows)
    assert {t for r in rows if r["split"] == "train" for t in r["tags"]} == set(range(1, 21))


def test_truncated_jpeg_fails_the_manifest_not_training(voc_fixture):
    path = voc_fixture / "JPEGImages" / "tr2.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact: Image.verify() passes it
    with Image.open(path) as img:
        img.verify()
    with pytest.raises(voc.DataError, match=r"image 'tr2': .*tr2.jpg is not a readable image \(image file is truncated"):
        voc.scan(voc_fixture, ["train"])
    with pytest.raises(voc.DataError, match=r"image 'tr2': .*tr2.jpg is not a readable image \(image file is truncated"):
        voc.scan(voc_fixture, ["train"], workers=2)  # from a worker process, same message


def test_parallel_scan_writes_the_same_manifest_bytes(voc_fixture, tmp_path):
    (voc_fixture / "SegmentationClass" / "va1.png").unlink()  # one tag-only image among them
    (voc_fixture / "tags.csv").write_text("va1,dog\n")
    for k in range(4, 40):  # enough images for several chunks per worker
        Image.open(voc_fixture / "JPEGImages" / f"tr{k % 4}.jpg").save(voc_fixture / "JPEGImages" / f"tr{k}.jpg")
        Image.open(voc_fixture / "SegmentationClass" / f"tr{k % 4}.png").save(voc_fixture / "SegmentationClass" / f"tr{k}.png")
    ids = [f"tr{k}" for k in range(40)]
    ids[3], ids[30] = ids[30], ids[3]  # split order, not name order
    (voc_fixture / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    written = {}
    for workers in (1, 2):
        table, _ = voc.scan(voc_fixture, ["train", "val"], workers=workers)
        pq.write_table(table, tmp_path / f"m{workers}.parquet", compression="zstd")
        written[workers] = (tmp_path / f"m{workers}.parquet").read_bytes()
    assert written[1] == written[2]
    assert [r["id"] for r in table.to_pylist()] == ids + ["va0", "va1"]


def test_tags_file_listing_an_image_twice_names_both_lines(voc_fixture):
    (voc_fixture / "SegmentationClass" / "tr1.png").unlink()
    for rows in ("tr1,cat\n", "tr1,dog\n"):  # the same tags or other ones: both are errors
        (voc_fixture / "tags.csv").write_text("id,tags\ntr1,cat\n# comment\n" + rows)
        with pytest.raises(voc.DataError, match=r"tags.csv:4: image 'tr1' is listed again \(first at line 2\)$"):
            voc.scan(voc_fixture, ["train"])


def test_image_with_mask_and_tags_line_takes_the_mask(voc_fixture):
    (voc_fixture / "tags.csv").write_text("tr1,cat\n")  # tr1's mask has dog only: the mask wins
    assert voc.scan(voc_fixture, ["train"])[0].to_pylist()[1]["tags"] == [2]


def test_training_image_without_object_class_is_named(voc_fixture):
    (voc_fixture / "SegmentationClass" / "tr1.png").unlink()
    (voc_fixture / "tags.csv").write_text("id,tags\ntr0,cat\ntr1,\n")
    with pytest.raises(voc.DataError, match=r"image 'tr1' \(split train\): no object class "
                                            r"\(.*tags.csv line 3 lists none\)"):
        voc.scan(voc_fixture, ["train"])
    Image.fromarray(np.zeros((40, 50), np.uint8), mode="L").save(voc_fixture / "SegmentationClass" / "tr1.png")
    with pytest.raises(voc.DataError, match=r"image 'tr1' \(split train\): no object class "
                                            r"\(its mask .*tr1.png has only background\)"):
        voc.scan(voc_fixture, ["train"])


def test_val_image_without_object_class_is_allowed(voc_fixture, tmp_path, monkeypatch):
    background = np.zeros((40, 50), np.uint8)
    background[0, :] = 255  # background and void only
    Image.fromarray(background, mode="L").save(voc_fixture / "SegmentationClass" / "va1.png")
    monkeypatch.chdir(tmp_path)
    manifest.main(_params(voc_fixture))  # val images are only scored
    table, _, _ = voc.read_manifest("artifacts/manifest.parquet")
    assert table.to_pylist()[-1] == {"id": "va1", "split": "val", "width": 50, "height": 40, "tags": [],
                                     "has_mask": True}
    with pytest.raises(voc.DataError, match=r"image 'va1' \(split val\): no object class"):
        manifest.main(load(REPO / "params.yaml", [f"data.root={voc_fixture}", "data.train_split=val"]))


def test_cli_exits_2_with_one_line_for_a_data_error_or_a_missing_input(tmp_path, monkeypatch, capsys):
    from tasks.__main__ import main as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = ["--params", str(REPO / "params.yaml")]
    assert cli(["manifest", *params, "--set", "data.root=/nope"]) == 2
    assert capsys.readouterr().err == "data error: data.root '/nope' is not a directory\n"
    assert cli(["train_classifier", *params]) == 2
    assert capsys.readouterr().err == ("missing input: artifacts/manifest.parquet not found (stage manifest makes it: "
                                       "python -m tasks manifest, or dvc repro train_classifier)\n")
