"""From flow parameters to DVC command lines: pure functions, no Prefect, no subprocesses.

Every stage run goes through DVC (`dvc repro STAGE`, or `dvc exp run -S key=value ... STAGE` when
the run overrides parameters) so dvc.lock records it and unchanged stages are skipped; nothing
here re-implements a stage.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from wsss.tracking import lineage
from wsss.config.params import ParamsError, set_dotted, validate

# Named flow parameters (the UI form) and the params.yaml key each one sets.
NAMED_PARAMS = {
    "data_root": "data.root",
    "drs_mode": "classifier.drs.mode",
    "drs_delta": "classifier.drs.delta",
    "epochs": "classifier.epochs",
}

# Failures worth retrying: another DVC process holds the repo lock, SQLite is busy, a network
# hiccup. Anything else (a bug, bad data) fails the same way again, so it is not retried.
TRANSIENT_PATTERNS = (
    "Unable to acquire lock",
    "database is locked",
    "Connection reset",
    "Connection refused",
    "Temporary failure in name resolution",
)


def pipeline_stages(repo: str | Path = ".") -> list[str]:
    """Stage names in dvc.yaml order (upstream first): the single list every flow uses."""
    return lineage.stage_names(lineage.read_yaml(Path(repo) / "dvc.yaml"))


def select_stages(requested: list[str] | None, available: list[str]) -> list[str]:
    """The requested stages in pipeline order; None or [] means all of them."""
    if not requested:
        return list(available)
    unknown = [s for s in requested if s not in available]
    if unknown:
        raise ValueError(f"stages: unknown {unknown}; dvc.yaml has {available}")
    return [s for s in available if s in requested]


def dask_overrides(address: str) -> dict[str, str]:
    """The form field `dask_address`: per-image stages on that Dask scheduler (tcp://host:8786), or
    on a LocalCluster of the machine the flow runs on (`local`). DVC tracks neither key (the outputs
    are the same on every engine), so this re-runs nothing by itself."""
    return {"scaleout.engine": "dask", "scaleout.address": "" if address == "local" else address}


def collect_overrides(named: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """`{dotted key: value}` from the named form fields (None = not set) and the free dict."""
    named = dict(named)
    address = named.pop("dask_address", None)
    out = {NAMED_PARAMS[k]: v for k, v in named.items() if v is not None}
    if address:
        out.update(dask_overrides(address))
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ParamsError(f"overrides: {key!r} is not a dotted params.yaml key")
        out[key] = value
    return out


def check_overrides(params_file: str | Path, overrides: dict[str, Any]) -> dict:
    """Validate params.yaml with the overrides applied; raises ParamsError naming the key."""
    raw = yaml.safe_load(Path(params_file).read_text())
    for key, value in overrides.items():
        raw = set_dotted(raw, f"{key}={json.dumps(value)}")
    return validate(raw)


def hydra_value(value: Any) -> str:
    """A value in the override grammar `dvc exp run -S` parses (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Quoted, so a path or a word like `none` stays a string.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise ParamsError(f"override value {value!r}: only numbers, booleans, strings and lists")


def stage_command(stage: str, overrides: dict[str, Any]) -> list[str]:
    """DVC arguments (after `dvc`) that bring STAGE and its stale upstream up to date."""
    if not overrides:
        return ["repro", stage]
    sets = [arg for key in sorted(overrides) for arg in ("-S", f"{key}={hydra_value(overrides[key])}")]
    return ["exp", "run", *sets, stage]


def gpu_stages(dvc_yaml: dict, params: dict) -> set[str]:
    """Stages that may use the GPU: those whose declared params include a `device` setting."""
    out = set()
    for name in lineage.stage_names(dvc_yaml):
        keys = lineage.stage_param_keys(lineage.stage_spec(dvc_yaml, name))
        if any(k.split(".")[-1] == "device" for k in lineage.select(params, keys)):
            out.add(name)
    return out


def is_transient(output: str) -> bool:
    return any(p in output for p in TRANSIENT_PATTERNS)
