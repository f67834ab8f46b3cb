"""Honest deps: every project file a stage imports is covered by that stage's dvc.yaml deps, so
editing it makes `dvc repro` re-run the stage instead of calling stale outputs up to date."""
import copy

import pytest
import yaml

from wsss.config.params import load
from wsss.tracking import lineage
from tests.conftest import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = load(REPO / "params.yaml")
STAGES = lineage.stage_names(DVC_YAML)


@pytest.mark.parametrize("stage", STAGES)
def test_every_imported_project_file_is_a_dep(stage):
    missing = lineage.uncovered_imports(lineage.stage_spec(DVC_YAML, stage), stage, PARAMS, REPO)
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them (or a folder above) in deps"


def test_no_stage_imports_another_stage():
    for stage in STAGES:
        closure = lineage.import_closure(lineage.stage_entry(stage), REPO)
        others = sorted(f for f in closure if f.startswith("tasks/") and f not in lineage.stage_entry(stage))
        assert not others, f"stage {stage} imports other stage modules {others}: move what they share into a library package"


def test_the_check_fails_when_a_dep_is_removed():
    spec = copy.deepcopy(lineage.stage_spec(DVC_YAML, "pseudo_labels"))
    spec["deps"] = [d for d in spec["deps"] if d != "wsss/labelling"]
    assert "wsss/labelling/crf.py" in lineage.uncovered_imports(spec, "pseudo_labels", PARAMS, REPO)


def test_closure_follows_function_level_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/late.py").write_text("X = 1\n")
    (tmp_path / "pkg/early.py").write_text("import json\n\ndef f():\n    from pkg import late\n    return late.X\n")
    (tmp_path / "main.py").write_text("from pkg.early import f\n")
    assert lineage.import_closure(["main.py"], tmp_path) == {"main.py", "pkg/__init__.py", "pkg/early.py", "pkg/late.py"}
