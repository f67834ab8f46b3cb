from tasks.summarize import markdown, summarize


def test_summary_table_ratio_and_total():
    metrics = {
        "classifier": {"val_map": 80.0, "train_seconds": 100.0},
        "maps": {"miou": 40.0, "seconds": 10.0},
        "segmentation": {"val_miou": 45.0, "val_miou_crf": 47.0, "train_seconds": 200.0, "eval_seconds": 20.0},
        "reference": {"val_miou": 50.0, "train_seconds": 200.0, "eval_seconds": 20.0},
    }
    s = summarize(metrics)
    assert s["weak_to_full_ratio"] == 0.9
    assert s["total_seconds"] == 550.0
    rows = {r["stage"]: r for r in s["table"]}
    assert rows["localization maps (train)"]["miou"] == 40.0
    assert rows["refined maps (train)"]["miou"] is None
    params = {"data": {"root": "x"}, "classifier": {"backbone": "b", "drs": {"mode": "fixed", "delta": 0.5,
                                                                               "placement": ["extra"]}}}
    text = markdown(s, params)
    assert "| CRF pseudo labels (train) | - |" in text and "Weak-to-full ratio: 0.9" in text


def test_no_reference_no_ratio():
    assert summarize({"segmentation": {"val_miou": 45.0}})["weak_to_full_ratio"] is None


def test_label_rounds_are_rows_and_count_in_the_total():
    metrics = {"pseudo_labels": {"miou": 47.4, "seconds": 5.0},
               "rounds/r1/pseudo_labels": {"miou": 44.1, "seconds": 2.0},
               "rounds/r1/segmentation": {"val_miou": 38.8, "train_seconds": 100.0, "eval_seconds": 10.0},
               "rounds/r1/maps": {"mined_miou": 45.8, "seconds": 20.0}}
    s = summarize(metrics, ["r1"])
    stages = [r["stage"] for r in s["table"]]
    assert stages.index("round r1 labels (train)") < stages.index("CRF pseudo labels (train)")
    assert [r["miou"] for r in s["table"] if r["stage"].startswith("round r1")] == [44.1, 38.8, 45.8]
    assert s["total_seconds"] == 137.0 and summarize(metrics)["total_seconds"] == 5.0
