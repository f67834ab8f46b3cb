"""The project's MLflow experiment carries mlflow.experimentKind: custom_model_development, so
MLflow 3's UI opens it on its runs; one made before the tag gets it when tracking opens it."""
from wsss.tracking import runs

KIND = "mlflow.experimentKind"


def test_the_experiment_is_tagged_when_created_and_when_opened(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    client = runs.client()
    new = runs.experiment_id(client)
    assert client.get_experiment(new).name == runs.EXPERIMENT
    assert client.get_experiment(new).tags[KIND] == "custom_model_development"
    assert runs.experiment_id(client) == new

    old = client.create_experiment("older")
    assert KIND not in client.get_experiment(old).tags
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "older")
    assert runs.experiment_id(client) == old
    assert client.get_experiment(old).tags[KIND] == "custom_model_development"
