"""Flow parameters -> DVC command lines, stage lists from dvc.yaml, GPU tagging, retry policy."""
import pytest
from prefect.states import Failed

from flows import dvc_commands as dc
from flows.pipeline import StageFailed, TransientStageFailure, _retry_transient
from wsss.tracking import lineage
from wsss.config.params import ParamsError, load
from tests.conftest import REPO


def test_stage_lists_come_from_dvc_yaml():
    stages = dc.pipeline_stages(REPO)
    assert stages == list(lineage.read_yaml(REPO / "dvc.yaml")["stages"])
    assert dc.select_stages(None, stages) == stages
    assert dc.select_stages([stages[-1], stages[0]], stages) == [stages[0], stages[-1]]  # pipeline order
    with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
        dc.select_stages(["nope"], stages)


def test_gpu_tag_goes_to_stages_with_a_device_setting():
    gpu = dc.gpu_stages(lineage.read_yaml(REPO / "dvc.yaml"), load(REPO / "params.yaml"))
    assert {"train_classifier", "export_maps"} <= gpu and not {"demo", "manifest"} & gpu


def test_overrides_become_dvc_exp_run_set_params():
    over = dc.collect_overrides({"epochs": 3, "drs_delta": None, "data_root": "/data/VOC 2012"},
                                {"maps.flip": False, "maps.scales": [0.5, 1.0]})
    assert over == {"classifier.epochs": 3, "data.root": "/data/VOC 2012", "maps.flip": False,
                    "maps.scales": [0.5, 1.0]}
    assert dc.stage_command("export_maps", over) == [
        "exp", "run", "-S", "classifier.epochs=3", "-S", "data.root='/data/VOC 2012'",
        "-S", "maps.flip=false", "-S", "maps.scales=[0.5,1.0]", "export_maps"]
    assert dc.stage_command("export_maps", {}) == ["repro", "export_maps"]
    assert dc.hydra_value("it's") == "'it\\'s'"


def test_bad_overrides_fail_before_dvc_runs_naming_the_key():
    with pytest.raises(ParamsError, match="classifier.drs.delta: 1.5 is above the maximum"):
        dc.check_overrides(REPO / "params.yaml", {"classifier.drs.delta": 1.5})
    with pytest.raises(ParamsError, match="classifier.nope: unknown key"):
        dc.check_overrides(REPO / "params.yaml", {"classifier.nope": 1})
    with pytest.raises(ParamsError, match="is not a dotted params.yaml key"):
        dc.collect_overrides({}, {"a b": 1})
    assert dc.check_overrides(REPO / "params.yaml", {"classifier.epochs": 2})["classifier"]["epochs"] == 2


def test_only_transient_failures_are_retried():
    assert dc.is_transient("ERROR: Unable to acquire lock. Most likely another DVC process is running")
    assert not dc.is_transient("RuntimeError: shapes do not match")
    assert _retry_transient(None, None, Failed(data=TransientStageFailure("lock")))
    assert not _retry_transient(None, None, Failed(data=StageFailed("bug")))
