"""Full PASCAL VOC 2012 + SBD as users have it: VOCdevkit/VOC2012 with SegmentationClassAug (SBD's
augmented masks as PNG) and ImageSets/Segmentation/train_aug.txt, fabricated here in a few images."""
import numpy as np
import pytest
from PIL import Image

from wsss.config.params import load
from wsss.dataset import voc
from wsss.dataset.images import palette_png
from tasks import manifest
from tests.conftest import REPO

# class indices of VOC_CLASSES: 8 cat, 12 dog, 15 person
VOC_ONLY = {"2007_000032": 8}                 # in VOC's train: mask in SegmentationClass (palette)
BOTH = {"2007_000039": 12}                    # in both folders: VOC's own mask must win
AUG_ONLY = {"2008_000002": 15, "2011_003276": 12}   # SBD only: mask in SegmentationClassAug (grey)
VAL = {"2007_000033": 8}


def _mask(cls: int, h: int = 30, w: int = 40) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 8:30] = cls
    return mask


@pytest.fixture
def vocdevkit(tmp_path):
    """VOCdevkit/VOC2012 with the folder names of the official tar plus SegmentationClassAug."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation", "Annotations"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in {**VOC_ONLY, **BOTH, **AUG_ONLY, **VAL}:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    for image_id, cls in {**VOC_ONLY, **BOTH, **VAL}.items():   # VOC's: palette PNGs with a void border
        mask = _mask(cls)
        mask[4, 8:30] = 255
        palette_png(mask).save(root / "SegmentationClass" / f"{image_id}.png")
    for image_id, cls in {**BOTH, **AUG_ONLY}.items():          # SBD converted: grey PNGs
        Image.fromarray(_mask(15 if image_id in BOTH else cls), mode="L").save(
            root / "SegmentationClassAug" / f"{image_id}.png")
    sets = root / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join([*VOC_ONLY, *BOTH]) + "\n")
    (sets / "val.txt").write_text("\n".join(VAL) + "\n")
    (sets / "train_aug.txt").write_text("\n".join([*VOC_ONLY, *BOTH, *AUG_ONLY]) + "\n")
    return root


def test_train_aug_reads_masks_from_both_folders(vocdevkit):
    rows = {r["id"]: r for r in voc.scan(vocdevkit, ["train_aug", "val"])[0].to_pylist()}
    assert len(rows) == 5 and all(r["has_mask"] for r in rows.values())
    assert rows["2008_000002"]["tags"] == [15] and rows["2011_003276"]["tags"] == [12]   # from SegmentationClassAug
    assert rows["2007_000032"]["tags"] == [8]
    assert rows["2007_000039"]["tags"] == [12]   # SegmentationClass wins over the Aug mask (which says 15)
    assert voc.mask_path(vocdevkit, "2011_003276").parent.name == "SegmentationClassAug"
    assert voc.mask_path(vocdevkit, "2007_000039").parent.name == "SegmentationClass"
    assert voc.load_mask(vocdevkit, "2011_003276", 21).max() == 12


def test_manifest_stage_with_train_aug_param(vocdevkit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load(REPO / "params.yaml", [f"data.root={vocdevkit}", "data.train_split=train_aug"])
    stats = manifest.main(params)
    assert stats["images"] == {"train_aug": 4, "val": 1} and stats["with_mask"] == 5 and stats["n_classes"] == 21


def test_deeplab_style_list_lines(vocdevkit):
    sets = vocdevkit / "ImageSets" / "Segmentation"
    (sets / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n"
                                                for i in [*VOC_ONLY, *AUG_ONLY]))
    assert voc.read_split(vocdevkit, "train_aug") == [*VOC_ONLY, *AUG_ONLY]


def test_missing_train_aug_list_is_named(vocdevkit):
    (vocdevkit / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(voc.DataError, match=r"train_aug.txt: split file not found; .* has train, val .*SBD"):
        voc.scan(vocdevkit, ["train_aug"])


def test_missing_aug_folder_is_named(vocdevkit):
    for path in (vocdevkit / "SegmentationClassAug").iterdir():
        path.unlink()
    (vocdevkit / "SegmentationClassAug").rmdir()
    with pytest.raises(voc.DataError, match=r"image '2008_000002': no mask in SegmentationClass/ or "
                                            r"SegmentationClassAug/.*split train_aug; .*SegmentationClassAug does not exist"):
        voc.scan(vocdevkit, ["train_aug"])
    assert len(voc.scan(vocdevkit, ["train"])[0]) == 2   # VOC's own train split still reads


def test_missing_aug_mask_names_the_image(vocdevkit):
    (vocdevkit / "SegmentationClassAug" / "2011_003276.png").unlink()
    with pytest.raises(voc.DataError, match=r"image '2011_003276': no mask.*\(split train_aug\)"):
        voc.scan(vocdevkit, ["train_aug"])


def test_missing_images_folder_is_named(vocdevkit, tmp_path):
    with pytest.raises(voc.DataError, match=r"VOCdevkit/JPEGImages: folder not found"):
        voc.scan(vocdevkit.parent, ["train"])   # data.root one level too high


def test_aug_mask_of_another_size_is_named(vocdevkit):
    Image.fromarray(_mask(15, 31, 40), mode="L").save(vocdevkit / "SegmentationClassAug" / "2008_000002.png")
    with pytest.raises(voc.DataError, match=r"mask '2008_000002': size \(40, 31\) differs"):
        voc.scan(vocdevkit, ["train_aug"])


def test_val_image_in_the_training_list_is_named(vocdevkit):
    sets = vocdevkit / "ImageSets" / "Segmentation"
    (sets / "train_aug.txt").write_text("\n".join([*VOC_ONLY, *AUG_ONLY, *VAL]) + "\n")   # val leaked into train
    with pytest.raises(voc.DataError, match=r"image '2007_000033' is listed in both train_aug and val"):
        voc.scan(vocdevkit, ["train_aug", "val"])
    (sets / "train_aug.txt").write_text("\n".join([*VOC_ONLY, *AUG_ONLY, *VOC_ONLY]) + "\n")
    with pytest.raises(voc.DataError, match=r"image '2007_000032' is listed twice in train_aug"):
        voc.scan(vocdevkit, ["train_aug"])


def _annotation(path, names):
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objects}</annotation>")


def test_tags_from_annotations_when_there_is_no_mask(vocdevkit):
    (vocdevkit / "SegmentationClassAug" / "2011_003276.png").unlink()
    _annotation(vocdevkit / "Annotations" / "2011_003276.xml", ["dog", "person", "dog"])
    _annotation(vocdevkit / "Annotations" / "2008_000002.xml", ["cat"])   # has a mask (person): the mask wins
    rows = {r["id"]: r for r in voc.scan(vocdevkit, ["train_aug"])[0].to_pylist()}
    assert rows["2011_003276"]["tags"] == [12, 15] and rows["2011_003276"]["has_mask"] is False
    assert rows["2008_000002"]["tags"] == [15] and rows["2008_000002"]["has_mask"] is True


def test_bad_annotation_is_named(vocdevkit):
    (vocdevkit / "SegmentationClassAug" / "2011_003276.png").unlink()
    xml = vocdevkit / "Annotations" / "2011_003276.xml"
    _annotation(xml, ["dog", "unicorn"])
    with pytest.raises(voc.DataError, match=r"2011_003276.xml: unknown class 'unicorn'"):
        voc.scan(vocdevkit, ["train_aug"])
    xml.write_text("<annotation><object>")
    with pytest.raises(voc.DataError, match=r"2011_003276.xml: not a readable annotation"):
        voc.scan(vocdevkit, ["train_aug"])
    _annotation(xml, [])
    with pytest.raises(voc.DataError, match=r"image '2011_003276' \(split train_aug\): no object class .*names no object"):
        voc.scan(vocdevkit, ["train_aug"])
