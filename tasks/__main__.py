"""Command line: `python -m tasks STAGE [--params params.yaml] [--set key=value ...]`.

The same `main(params)` functions run here, under `dvc repro` (which calls this) and in Prefect.
The stages are dvc.yaml's, in its order; stage NAME is the module tasks/NAME.py. A dvc.yaml
`foreach` stage runs one item at a time, named as DVC names it: `python -m tasks label_round@r1`
calls tasks/label_round.py's `main(params, "r1")`.

Training stages (main decorated with wsss.training.distributed.stage) also run under torchrun, one
process per GPU: `torchrun --nproc_per_node N -m tasks STAGE`, or `distributed.nproc_per_node: N`
in params.yaml, which makes this command re-launch itself that way (so DVC and Prefect need no
change). Rank 0 alone tracks the run and writes the outputs.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys

from wsss.config import project
from wsss.config.errors import StageError
from wsss.config.params import ParamsError, load
from wsss.tracking import lineage
from wsss.tracking import runs as tracking

DVC_YAML = project.root() / "dvc.yaml"


@functools.cache
def _pipeline() -> dict:
    """dvc.yaml, read once per process (the stage list, and the outputs missing_input names)."""
    return lineage.read_yaml(DVC_YAML)


def stages() -> list[str]:
    """The pipeline's stages, upstream first: the one list the CLI, flows, benchmarks and tests use."""
    return lineage.stage_names(_pipeline())


def expanded(params: dict) -> list[str]:
    """Every stage a full run executes, in order: foreach stages as `name@key` for their items."""
    return lineage.expand_names(_pipeline(), params)


class UnknownStage(KeyError):
    pass


def resolve(name: str, params: dict) -> tuple[str, str]:
    """(stage, foreach key or "") for `name` or `name@key`; UnknownStage says what exists."""
    group, _, key = name.partition("@")
    if group not in stages():
        raise UnknownStage(f"unknown stage {name!r}; stages: {', '.join(stages())}")
    items = lineage.foreach_items(_pipeline()["stages"][group] or {}, params)
    if items is None and key:
        raise UnknownStage(f"stage {group!r} runs once: call it {group!r}, not {name!r}")
    if items is not None and key not in items:
        raise UnknownStage(f"stage {group!r} runs once per item: one of "
                           f"{', '.join(f'{group}@{k}' for k in items) or '(none: params.yaml lists no items)'}")
    return group, key


def run_stage(name: str, params: dict) -> dict:
    group, key = resolve(name, params)
    with tracking.stage_run(name, params):
        module = importlib.import_module(f"tasks.{group}")
        return module.main(params, key) if key else module.main(params)


def missing_input(exc: FileNotFoundError, stage: str) -> str:
    """The error, plus which upstream stage makes the missing file (dvc.yaml's outs) when one does."""
    text = str(exc)
    if " " not in text:  # pyarrow says only the path
        text += " not found"
    for name in stages():
        if name != stage and any(out in text for out in lineage.stage_outputs(lineage.stage_spec(_pipeline(), name))):
            return f"{text} (stage {name} makes it: python -m tasks {name}, or dvc repro {stage})"
    return f"{text} (if an upstream stage makes it: dvc repro {stage})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
    parser.add_argument("stage", help=f"one of {', '.join(stages())} (a foreach stage as NAME@KEY)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for this run only (dvc exp run -S records overrides)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        params = load(args.params, args.set)
    except ParamsError as exc:
        print(f"params error: {exc}", file=sys.stderr)
        return 2
    try:
        resolve(args.stage, params)
    except UnknownStage as exc:
        print(f"stage error: {exc.args[0]}", file=sys.stderr)
        return 2
    relaunch = getattr(importlib.import_module(f"tasks.{resolve(args.stage, params)[0]}").main, "relaunch", None)
    if relaunch and (code := relaunch(params, argv)) is not None:   # under torchrun (distributed.nproc_per_node)
        return code
    try:
        result = run_stage(args.stage, params)
    except FileNotFoundError as exc:
        print(f"missing input: {missing_input(exc, args.stage)}", file=sys.stderr)
        return 2
    except StageError as exc:  # bad data, a diverged run: the user's to fix, said on one line
        print(f"{exc.kind}: {exc}", file=sys.stderr)
        return 2
    if result:   # a torchrun rank > 0 has none
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
