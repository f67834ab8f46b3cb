import copy

import pytest
import yaml

from config.params import ParamsError, load, validate
from tests.conftest import REPO


@pytest.fixture
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_params_are_valid(raw):
    params = validate(raw)
    assert params["profile"] == "cpu"
    assert params["classifier"]["drs"]["mode"] in ("none", "fixed", "learnable")


@pytest.mark.parametrize("mutate, key", [
    (lambda p: p["classifier"].update(epocs=3), "classifier.epocs: unknown key"),
    (lambda p: p["classifier"].update(epochs="ten"), "classifier.epochs: expected int"),
    (lambda p: p["classifier"].update(epochs=True), "classifier.epochs: expected int, got a boolean"),
    (lambda p: p["classifier"]["drs"].update(delta=1.5), "classifier.drs.delta: 1.5 is above the maximum"),
    (lambda p: p["classifier"]["drs"].update(mode="strong"), "classifier.drs.mode: 'strong' is not one of"),
    (lambda p: p["classifier"]["drs"].update(placement=["blocks:x"]), "classifier.drs.placement[0]"),
    (lambda p: p["maps"].update(scales=[1.0, -1.0]), "maps.scales[1]: -1.0 is below the minimum"),
    (lambda p: p["maps"].update(threshold_start=0.99), "maps.threshold_start: must be below"),
    (lambda p: p["data"].pop("root"), "data.root: missing"),
    (lambda p: p["segmenter"].update(precision="fp16"), "segmenter.precision: 'fp16' is not one of"),
    (lambda p: p["segmenter"].update(loss_stride=3), "segmenter.loss_stride: 3 is not one of"),
    (lambda p: p.update(profile="nope"), "profile: no profile 'nope'"),
])
def test_bad_values_name_the_key(raw, mutate, key):
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert key in str(err.value)


def test_int_accepted_where_float_expected(raw):
    raw["classifier"]["lr"] = 1
    assert validate(raw)["classifier"]["lr"] == 1.0


def test_overrides_and_profile_overlay(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = load(path, ["classifier.drs.delta=0.3", "profile=paper"])
    assert params["classifier"]["backbone"] == "vgg16"      # from profiles/paper.yaml
    assert params["classifier"]["lr_schedule"] == "step"
    assert params["classifier"]["drs"]["placement"] == ["all"]
    with pytest.raises(ParamsError, match="classifier.nope"):
        load(path, ["classifier.nope=1"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "absent.yaml")
