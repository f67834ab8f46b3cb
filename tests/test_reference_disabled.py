import json

from wsss.config.params import load
from tasks import train_reference
from tests.conftest import REPO


def test_disabled_reference_writes_every_declared_output_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = load(REPO / "params.yaml", ["reference.enabled=false"])
    assert train_reference.main(params) == {"enabled": False}
    assert json.loads((tmp_path / "metrics/reference.json").read_text()) == {"enabled": False}
    assert (tmp_path / "plots/reference_train.csv").read_text() == "epoch,loss,seconds\n"
    assert (tmp_path / "plots/reference_per_class.csv").read_text() == "class,iou\n"
    assert "nothing trained" in (tmp_path / "artifacts/reference.pt").read_text()
    assert (tmp_path / "reports/reference/README.txt").exists()
