"""benchmarks/few_masks.py: which rows count as the same run, now that semi.init and
semi.pseudo_weight changed their defaults (rows without settings.init ran as_segmenter)."""
import argparse
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import few_masks  # noqa: E402


def row(method="masks+pseudo", overrides=(), **settings):
    return {"masks": 33, "method": method, "seed": 0, "overrides": list(overrides),
            "settings": {"pseudo_weight": 1.0, **settings}}


def test_an_old_default_row_is_not_the_new_default_run():
    args = argparse.Namespace(set=[], epochs=0, limit=0, source_id=None)
    new = few_masks.probe(args, 33, "masks+pseudo", 0)
    assert few_masks.key(row()) != few_masks.key(new)              # as_segmenter, 1.0 vs the new defaults
    explicit = row(overrides=["semi.init=weak_segmenter", "semi.pseudo_weight=0.1"], pseudo_weight=0.1)
    assert few_masks.key(explicit) == few_masks.key(new)           # the same run, said explicitly
    assert few_masks.workdir("/s", explicit) == few_masks.workdir("/s", new)
    assert few_masks.workdir("/s", row()) != few_masks.workdir("/s", new)


def test_scoring_only_overrides_and_an_unread_weight_do_not_make_a_new_variant():
    assert few_masks.key(row(overrides=["semi.crf=true"])) == few_masks.key(row())
    assert few_masks.key(row("masks_only", pseudo_weight=0.1)) == few_masks.key(row("masks_only"))
    assert few_masks.key(row(overrides=["semi.mask_share=0.75"])) != few_masks.key(row())


def test_a_cutmix_row_says_its_consistency_weight_whether_or_not_it_was_set():
    first = row("cutmix", init="weak_segmenter", pseudo_weight=0.1)     # before settings.cutmix: weight 1.0
    said = row("cutmix", ["semi.cutmix.consistency_weight=1.0"], init="weak_segmenter", pseudo_weight=0.1,
               cutmix={"consistency_weight": 1.0})
    assert few_masks.key(first) == few_masks.key(said)
    light = {"init": "weak_segmenter", "pseudo_weight": 0.1, "cutmix": {"consistency_weight": 0.1}}
    set_light = row("cutmix", ["semi.cutmix.consistency_weight=0.1"], **light)
    assert few_masks.key(set_light) == few_masks.key(row("cutmix", **light))   # 0.1 as a default or --set
    assert few_masks.key(set_light) != few_masks.key(first)
    args = argparse.Namespace(set=["semi.cutmix.consistency_weight=0.1"], epochs=0, limit=0, source_id=None)
    assert few_masks.key(few_masks.probe(args, 33, "cutmix", 0)) == few_masks.key(set_light)
    assert few_masks.workdir("/s", few_masks.probe(args, 33, "cutmix", 0)) == few_masks.workdir("/s", set_light)


def test_rows_from_another_source_build_are_another_variant(tmp_path):
    def source(weights: bytes, labels: bytes):
        root = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        (root / "artifacts/pseudo_labels").mkdir(parents=True)
        (root / "artifacts/segmenter.pt").write_bytes(weights)
        (root / "artifacts/pseudo_labels/shard-0.parquet").write_bytes(labels)
        return few_masks.source_id(root)
    first = source(b"w", b"l")
    assert first == source(b"w", b"l") and len(first) == 8          # the content, not the path
    assert len({first, source(b"w2", b"l"), source(b"w", b"l2")}) == 3
    args = argparse.Namespace(set=[], epochs=0, limit=0, source_id=first)
    planned = few_masks.probe(args, 33, "masks+pseudo", 0)
    assert few_masks.key(planned) != few_masks.key({**planned, "source_id": source(b"w2", b"l")})
    assert few_masks.key(planned) != few_masks.key({**planned, "source_id": None})   # an unfingerprinted row
    assert few_masks.workdir("/s", planned) != few_masks.workdir("/s", {**planned, "source_id": None})


def test_a_rounds_row_scores_its_earlier_round_and_the_labels_it_wrote(tmp_path, voc_fixture, monkeypatch):
    from tests.test_semi import TINY, workspace

    monkeypatch.setenv("WSSS_TRACKING", "off")
    source = tmp_path / "source"
    source.mkdir()
    workspace(source, voc_fixture, monkeypatch)   # the source run: manifest and pseudo labels
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(source=str(source), scratch=str(tmp_path / "scratch"), limit=0, epochs=0,
                              no_train_score=False, set=[*TINY, "semi.rounds=2"])
    args.source_id = few_masks.source_id(source)
    row = few_masks.run_row(args, few_masks.probe(args, 2, "masks+pseudo", 0))

    assert row["settings"]["rounds"] == 2 and len(row["settings"]["round_final_losses"]) == 2
    (first,) = row["earlier_rounds"]
    assert first["round"] == 1
    for name in ("val_miou", "train_miou", "labels_miou", "pseudo_labels_miou"):
        assert 0.0 <= first[name] <= 100.0, name
    assert 0.0 <= row["train_miou"] <= 100.0 and row["wall_s"] > 0
    assert row["source_id"] == args.source_id and row["settings"]["choice"] == "random"
