"""The one writer of a stage's results: metrics/<name>.json, its plot tables, and the same figures
(and report folders) in the stage's MLflow run. Every stage ends here, so the files DVC tracks and
what the tracking server shows never drift apart."""
from __future__ import annotations

from wsss.config import paths
from wsss.stores.atomic import write_json, write_text
from wsss.tracking import runs


def write_stage_outputs(name: str, metrics: dict, plots: dict[str, str] | None = None,
                        reports: dict[str, str] | None = None) -> dict:
    """metrics -> metrics/<name>.json; plots: {file name under plots/: csv text};
    reports: {folder under reports/: MLflow artifact name} (already written by the stage)."""
    for file_name, text in (plots or {}).items():
        write_text(text, paths.PLOTS / file_name)
    write_json(metrics, paths.METRICS / f"{name}.json")
    runs.log_metrics(metrics)   # it keeps the scalar figures (what MLflow can plot)
    for folder, artifact in (reports or {}).items():
        runs.log_artifact(paths.REPORTS / folder, artifact)
    return metrics
