import copy
import json

import pytest
import yaml

import wsss.config.params as config_params
from wsss.config.params import DEFAULTS, PROFILES_DIR, ParamsError, load, validate
from models.registry import BACKBONES, HEADS, LOCALIZERS, LOSSES
from tests.conftest import REPO
from wsss.tracking import lineage


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
    (lambda p: p["segmenter"].update(precision="fp8"), "segmenter.precision: 'fp8' is not one of"),
    (lambda p: p["distributed"].update(nproc_per_node=0), "distributed.nproc_per_node: 0 is below the minimum 1"),
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


def error(raw, *overrides) -> str:
    with pytest.raises(ParamsError) as err:
        validate(raw, overrides)
    return str(err.value)


def known(section: dict) -> str:
    return ", ".join(sorted(section))


@pytest.mark.parametrize("override, message", [
    ("classifier.drs.mode=x", "classifier.drs.mode: 'x' is not one of ['none', 'fixed', 'learnable']"),
    ("classifier.output_stride=12", "classifier.output_stride: 12 is not one of [8, 16, 32]"),
    ("classifier.device=gpu", "classifier.device: 'gpu' does not match ^(auto|cpu|cuda(:[0-9]+)?)$"),
    ("classifier.drs=3", "classifier.drs: expected a mapping, got int (3)"),
    ("maps.scales=[1.0, -1.0]", "maps.scales[1]: -1.0 is below the minimum 0.1"),
])
def test_messages_keep_the_dotted_key_style(raw, override, message):
    assert error(raw, override) == message


def test_unknown_keys_are_rejected_in_every_section(raw):
    assert error(raw, "segmenter.nope=1") == f"segmenter.nope: unknown key (known here: {known(raw['segmenter'])})"
    assert error(raw, "nope=1") == f"nope: unknown key (known here: {known(raw)})"
    # min_prob belongs to the segmenter's CRF only
    assert error(raw, "pseudo_labels.crf.min_prob=0.1") == (
        f"pseudo_labels.crf.min_prob: unknown key (known here: {known(raw['pseudo_labels']['crf'])})")
    del raw["maps"]["scales"]
    assert error(raw) == "maps.scales: missing"


@pytest.mark.parametrize("override, message", [
    ("classifier.lr=.nan", "classifier.lr: must be a finite number"),
    ("segmenter.crf.min_prob=.inf", "segmenter.crf.min_prob: must be a finite number"),
    ("maps.scales=[-.inf]", "maps.scales[0]: must be a finite number"),
])
def test_nan_and_inf_are_rejected(raw, override, message):
    assert error(raw, override) == message


def test_nan_is_rejected_from_python_and_from_yaml(raw, tmp_path):
    raw["pseudo_labels"]["bg_threshold"] = float("nan")
    assert error(raw) == "pseudo_labels.bg_threshold: must be a finite number"
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 0.0001                     # backbone", "lr: .nan                       # backbone", 1))
    with pytest.raises(ParamsError) as err:
        load(path)
    assert str(err.value) == "classifier.lr: must be a finite number"


@pytest.mark.parametrize("override, message", [
    ("classifier.backbone=resnet18", f"classifier.backbone: 'resnet18' is not one of {BACKBONES.names()}"),
    ("refiner.backbone=x", f"refiner.backbone: 'x' is not one of {BACKBONES.names()}"),
    ("segmenter.backbone=x", f"segmenter.backbone: 'x' is not one of {BACKBONES.names()}"),
    ("refiner.head=aspp_plus", f"refiner.head: 'aspp_plus' is not one of {LOCALIZERS.names()}"),
    ("segmenter.head=cam", f"segmenter.head: 'cam' is not one of {HEADS.names()}"),
    ("segmenter.loss=multilabel_soft_margin",
     f"segmenter.loss: 'multilabel_soft_margin' is not one of {[n for n in LOSSES.names() if n != 'multilabel_soft_margin']}"),
])
def test_names_are_checked_against_the_registries_at_load(raw, override, message):
    assert error(raw, override) == message


def test_a_newly_registered_name_is_accepted(raw, monkeypatch):
    monkeypatch.setitem(BACKBONES._items, "tiny_net", object)
    assert validate(raw, ["classifier.backbone=tiny_net"])["classifier"]["backbone"] == "tiny_net"
    assert set(LOSSES.names()) - {"multilabel_soft_margin"} >= {"cross_entropy", "small_loss_ce", "locally_adaptive"}


@pytest.mark.parametrize("override, message", [
    ("classifier.resize_long=[400, 300]", "classifier.resize_long: the first value must not exceed the second"),
    ("refiner.resize_long=[400, 300]", "refiner.resize_long: the first value must not exceed the second"),
    ("segmenter.resize_long=[600, 500]", "segmenter.resize_long: the first value must not exceed the second"),
    ("segmenter.resize_long=[500]", "segmenter.resize_long: expected 2 items, got 1"),
    ("maps.scales=[]", "maps.scales: must not be empty"),
    ("segmenter.val_scales=[]", "segmenter.val_scales: must not be empty"),
    ("segmenter.aspp_rates=[]", "segmenter.aspp_rates: must not be empty"),
    ("refiner.aspp_rates=[]", "refiner.aspp_rates: must not be empty"),
    ("maps.threshold_start=0.95", "maps.threshold_start: must be below maps.threshold_stop"),
    ("distributed.nproc_per_node=3", "classifier.batch_size: 8 does not split evenly over the 3 processes of "
                                     "distributed.nproc_per_node (batch_size is the global batch: use a multiple of 3)"),
])
def test_cross_field_checks_in_every_section(raw, override, message):
    assert error(raw, override) == message


def drift(shipped, defaults, key: str = "") -> list[str]:
    """How params.yaml (shipped) and the schema's defaults differ, one line per dotted key: keys
    only in one of them, another type (an int standing for a float excepted), another value."""
    if isinstance(shipped, dict) and isinstance(defaults, dict):
        out = []
        for k in [*defaults, *(k for k in shipped if k not in defaults)]:
            name = f"{key}.{k}" if key else str(k)
            if k not in shipped:
                out.append(f"{name}: missing from params.yaml (schema default {defaults[k]!r})")
            elif k not in defaults:
                out.append(f"{name}: in params.yaml ({shipped[k]!r}) but not in wsss/config/params.py")
            else:
                out += drift(shipped[k], defaults[k], name)
        return out
    if isinstance(shipped, list) and isinstance(defaults, list) and len(shipped) == len(defaults):
        return [line for i, (a, b) in enumerate(zip(shipped, defaults)) for line in drift(a, b, f"{key}[{i}]")]
    kinds = type(shipped), type(defaults)
    if kinds != (int, float) and kinds[0] is not kinds[1]:
        return [f"{key}: params.yaml has {kinds[0].__name__} {shipped!r}, the schema's default is "
                f"{kinds[1].__name__} {defaults!r}"]
    return [] if shipped == defaults else [f"{key}: params.yaml has {shipped!r}, the schema's default is {defaults!r}"]


def test_shipped_params_yaml_equals_the_built_in_defaults(raw):
    # The user's explicit values are the leaves that differ from these, so they must match the file.
    problems = drift(raw, DEFAULTS)
    assert not problems, "params.yaml and the defaults in wsss/config/params.py differ:\n" + "\n".join(problems)
    assert validate(raw) == DEFAULTS


def test_drift_names_each_key_that_differs(raw):
    raw["classifier"].pop("epochs")
    raw["maps"]["prm"]["extra"] = 1
    raw["segmenter"]["val_flip"] = 1              # equal to True in Python, but not a bool
    raw["classifier"]["lr"] = 1                   # an int may stand for a float: only the value differs
    raw["classifier"]["resize_long"] = [192, 385]
    raw["rounds"]["r2"] = raw["rounds"]["r1"]
    assert drift(raw, DEFAULTS) == [
        "classifier.epochs: missing from params.yaml (schema default 15)",
        "classifier.resize_long[1]: params.yaml has 385, the schema's default is 384",
        "classifier.lr: params.yaml has 1, the schema's default is 0.0001",
        "maps.prm.extra: in params.yaml (1) but not in wsss/config/params.py",
        f"rounds.r2: in params.yaml ({raw['rounds']['r1']!r}) but not in wsss/config/params.py",
        "segmenter.val_flip: params.yaml has int 1, the schema's default is bool True",
    ]


def write(tmp_path, raw) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_set_override_wins_over_the_profile(tmp_path, raw):
    raw["profile"] = "paper"
    params = load(write(tmp_path, raw), ["classifier.pretrained=false"])
    assert params["classifier"]["pretrained"] is False
    assert params["classifier"]["backbone"] == "vgg16"


def test_set_override_equal_to_the_default_still_wins(tmp_path, raw):
    raw["profile"] = "paper"
    params = load(write(tmp_path, raw), ["classifier.backbone=efficientnet_lite0"])
    assert params["classifier"]["backbone"] == "efficientnet_lite0"


def test_an_edited_params_yaml_value_wins_over_the_profile(tmp_path, raw):
    raw["profile"] = "paper"
    raw["classifier"]["epochs"] = 4
    params = load(write(tmp_path, raw))
    assert params["classifier"]["epochs"] == 4
    assert validate(raw)["classifier"]["epochs"] == 4   # the dict form (dvc_commands.check_overrides)


def test_the_profile_changes_keys_left_at_their_defaults(raw):
    raw["profile"] = "paper"
    params = validate(raw)
    assert params["classifier"]["backbone"] == "vgg16"
    assert params["classifier"]["drs"] == {"mode": "learnable", "delta": 0.55, "placement": ["all"]}
    assert params["maps"]["scales"] == [0.5, 1.0, 1.5, 2.0]
    assert params["segmenter"] == DEFAULTS["segmenter"]   # paper.yaml leaves it alone


def test_profile_errors_name_the_profile(raw, tmp_path, monkeypatch):
    assert error(raw, "profile=x") == f"profile: no profile 'x' (looked for {PROFILES_DIR / 'x.yaml'})"
    assert error(raw, "profile=../x") == "profile: '../x' does not match ^[a-z0-9_]+$"
    monkeypatch.setattr(config_params, "PROFILES_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text("classifier:\n  epocs: 3\n")
    assert error(raw, "profile=bad") == (
        f"{tmp_path / 'bad.yaml'}: classifier.epocs: unknown key (known here: {known(raw['classifier'])})")


def test_values_are_plain_builtins(raw):
    raw["classifier"]["lr"] = 1
    params = validate(raw)
    assert type(params["classifier"]["lr"]) is float
    assert type(params["pseudo_labels"]["crf"]["gaussian_sxy"]) is float   # written as 3 in params.yaml
    assert type(params["classifier"]["resize_long"]) is list

    def kinds(node):
        if isinstance(node, dict):
            return {type(node)}.union(*(kinds(v) for v in node.values()))
        if isinstance(node, list):
            return {type(node)}.union(*(kinds(v) for v in node))
        return {type(node)}
    assert kinds(params) <= {dict, list, str, int, float, bool}
    assert json.loads(json.dumps(params)) == params


def test_every_stage_depends_on_the_files_it_imports():
    # config imports models (the registries), so every stage's deps must cover models too.
    spec = lineage.read_yaml(REPO / "dvc.yaml")["stages"]
    params = load(REPO / "params.yaml")
    assert "models/registry.py" in lineage.import_closure(lineage.stage_entry("demo"), REPO)
    assert {s: lineage.uncovered_imports(spec[s], s, params, REPO) for s in spec} == {s: [] for s in spec}


def test_exponent_floats_that_yaml_reads_as_text_are_accepted(tmp_path, raw):
    # YAML 1.1 reads `1e-4` (no dot, no exponent sign needed in YAML 1.2) as a string
    text = (REPO / "params.yaml").read_text().replace("  lr: 0.0001", "  lr: 1e-4")
    assert "lr: 1e-4" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load(path, ["segmenter.weight_decay=5e-4", "maps.scales=[5e-1, 1.0]"])
    assert params["classifier"]["lr"] == 1e-4 and isinstance(params["classifier"]["lr"], float)
    assert params["segmenter"]["weight_decay"] == 5e-4 and params["maps"]["scales"] == [0.5, 1.0]
    # only where a float is expected: text stays text elsewhere, and words are still refused
    assert load(path, ["data.root=1e5"])["data"]["root"] == "1e5"
    assert error(raw, "segmenter.lr=fast") == "segmenter.lr: expected float, got str ('fast')"


@pytest.mark.parametrize("how", ["set", "file"])
def test_editing_a_round_under_a_profile_without_rounds_keeps_the_users_chain(tmp_path, raw, how):
    raw["profile"] = "paper"   # paper.yaml: no rounds, labels from the refined maps
    if how == "file":
        raw["rounds"]["r1"]["epochs"] = 2
    params = load(write(tmp_path, raw), ["rounds.r1.epochs=2"] if how == "set" else [])
    assert params["rounds"]["r1"]["epochs"] == 2
    assert params["pseudo_labels"]["maps"] == "artifacts/rounds/r1/maps"
    assert params["classifier"]["backbone"] == "vgg16"   # the rest of the profile still applies
