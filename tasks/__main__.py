"""Command line: `python -m tasks STAGE [--params params.yaml] [--set key=value ...]`.

The same `main(params)` functions run here, under `dvc repro` (which calls this) and in Prefect.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from tasks import tracking
from tasks.params import ParamsError, load

STAGES = {
    "demo": "tasks.demo",
    "manifest": "tasks.manifest",
    "train_classifier": "tasks.train_classifier",
    "export_maps": "tasks.export_maps",
    "train_refiner": "tasks.train_refiner",
    "export_refined": "tasks.export_refined",
    "pseudo_labels": "tasks.pseudo_labels",
    "train_segmenter": "tasks.train_segmenter",
    "train_reference": "tasks.train_reference",
    "summarize": "tasks.summarize",
}


def run_stage(name: str, params: dict) -> dict:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    with tracking.stage_run(name, params):
        return importlib.import_module(STAGES[name]).main(params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for this run only (dvc exp run -S records overrides)")
    args = parser.parse_args(argv)
    try:
        params = load(args.params, args.set)
    except ParamsError as exc:
        print(f"params error: {exc}", file=sys.stderr)
        return 2
    result = run_stage(args.stage, params)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
