"""The `wsss` command line: the pipeline, its stages, the user commands, orchestration and data.

The user commands (predict, label-pngs, instance-pngs, search, near-duplicates, versions) are
wsss/commands/cli.py's, mounted here with an example each. Commands that run the pipeline (run,
stage, serve, flow run) work in the pipeline folder: the current folder or the nearest one above
it with a dvc.yaml (wsss/config/project.py).

Exit codes: 0 done; 2 bad input (the command line, params, data, a missing file, a refused
output), said on one `error: ...` line; 1 anything else: a failed stage or tool (its output says
why) or a bug (a traceback).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from wsss.commands import cli as commands_cli
from wsss.commands.cli import fail, user_errors
from wsss.config import project

EXIT_CODES = "Exit codes: 0 done, 2 bad input, 1 a failure or a bug."


def example(*lines: str) -> str:
    return "Example:\n\n" + "\n\n".join(f"    {line}" for line in lines) + f"\n\n{EXIT_CODES}"


app = typer.Typer(
    name="wsss",
    help="Weakly-supervised semantic segmentation from image-level tags: the DVC pipeline, its "
         "stages, the user commands on its outputs, the Prefect flows and the dataset layout.",
    epilog=example("wsss data init photos/ && wsss run --set data.root=data/photos",
                   "wsss COMMAND --help"),
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})

# The mounted user commands' examples; their options are commands/cli.py's.
EXAMPLES = {
    "predict": "wsss predict new_images/ out/ --crf",
    "label-pngs": "wsss label-pngs out/labels",
    "instance-pngs": "wsss instance-pngs out/instances",
    "search": "wsss search photo.jpg --k 8",
    "near-duplicates": "wsss near-duplicates --threshold 0.8 --within",
    "list": "wsss versions list --json",
    "diff": "wsss versions diff v1 v3",
    "rollback": "wsss versions rollback v1",
    "record": "wsss versions record -m 'labels after the CRF change'",
    "setup-remote": "wsss versions setup-remote",
}


def _with_example(info):
    info = copy.copy(info)
    name = info.name or info.callback.__name__.replace("_", "-")
    info.epilog = example(EXAMPLES[name])
    return info


for _info in commands_cli.app.registered_commands:
    app.registered_commands.append(_with_example(_info))

versions_app = typer.Typer(help=commands_cli.versions_app.info.help, no_args_is_help=True,
                           pretty_exceptions_enable=False, rich_markup_mode=None,
                           epilog=example("wsss versions list", "wsss versions --repo ../other diff 2 3"))
versions_app.registered_callback = commands_cli.versions_app.registered_callback
versions_app.registered_commands = [_with_example(i) for i in commands_cli.versions_app.registered_commands]
app.add_typer(versions_app, name="versions")

flow_app = typer.Typer(help="Prefect flows without a server.", no_args_is_help=True,
                       rich_markup_mode=None, epilog=example("wsss flow run"))
app.add_typer(flow_app, name="flow")
config_app = typer.Typer(help="The effective parameters.", no_args_is_help=True, rich_markup_mode=None,
                         epilog=example("wsss config show --set classifier.epochs=2"))
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Datasets in the layout the pipeline reads.", no_args_is_help=True,
                       rich_markup_mode=None, epilog=example("wsss data init photos/"))
app.add_typer(data_app, name="data")

Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="override a params.yaml key (repeatable), e.g. classifier.epochs=2")]
Params = Annotated[Optional[Path], typer.Option(help="params file (default: the pipeline folder's params.yaml)")]


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("wsss-drs")
    except metadata.PackageNotFoundError:   # run from a checkout that is not installed
        import tomllib

        return tomllib.loads((project.SOURCE / "pyproject.toml").read_text())["project"]["version"]


def _version(value: bool):
    if value:
        typer.echo(f"wsss {version()}")
        raise typer.Exit()


@app.callback()
def main_options(show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False):
    pass


def pipeline_folder() -> Path:
    """The pipeline folder, made the current one (said on stderr when it is not where we were)."""
    root = project.find() or (project.SOURCE if (project.SOURCE / "dvc.yaml").is_file() else None)
    if root is None:
        fail(f"no dvc.yaml in {Path.cwd()} or above: run in the pipeline's folder (a clone of the repository)")
    if root != Path.cwd().resolve():
        typer.echo(f"pipeline folder: {root}", err=True)
        os.chdir(root)
    return root


def _params_file(params: Optional[Path]) -> Path:
    """An explicit --params file, absolute (before pipeline_folder changes folder)."""
    return params.resolve() if params is not None else Path("params.yaml")


def load_params(params: Path, sets: list[str]) -> dict:
    from wsss.config.params import ParamsError, load

    with user_errors(ParamsError, FileNotFoundError):
        return load(params, sets)


def _dvc(*args: str) -> int:
    from wsss.commands.gitdvc import tool_env

    return subprocess.run([sys.executable, "-m", "dvc", *args], env=tool_env()).returncode


@app.command(epilog=example("wsss run", "wsss run --set reference.enabled=false --no-push"))
def run(sets: Sets = None,
        record: Annotated[bool, typer.Option(help="record a pseudo-label version when the labels changed")] = True,
        push: Annotated[bool, typer.Option(help="dvc push the recorded version")] = True):
    """The whole pipeline: `dvc repro` (`dvc exp run -S KEY=VALUE` with --set), then a version of the
    pseudo labels when they changed (git commit + tag, dvc push), as `make run` does."""
    pipeline_folder()
    sets = sets or []
    load_params(Path("params.yaml"), sets)   # a bad key fails here, before DVC starts
    args = ["exp", "run", *[a for s in sets for a in ("-S", s)]] if sets else ["repro"]
    if _dvc(*args) != 0:
        typer.echo(f"error: dvc {' '.join(args)} failed (its output above says which stage and why)", err=True)
        raise typer.Exit(1)
    if record:
        raise typer.Exit(commands_cli.main(["versions", "record", *([] if push else ["--no-push"])]))


@app.command(epilog=example("wsss stage manifest", "wsss stage train_classifier --set classifier.epochs=1",
                            "wsss stage label_round@r1"))
def stage(name: Annotated[str, typer.Argument(help="a dvc.yaml stage; a foreach stage as NAME@KEY")],
          sets: Sets = None, params: Params = None):
    """One stage, as dvc.yaml runs it (`python -m tasks NAME` is the same command). It does not
    check that its inputs are up to date: `dvc repro NAME` does."""
    params = _params_file(params)
    pipeline_folder()
    from tasks.__main__ import main as stage_main

    code = stage_main([name, "--params", str(params), *[a for s in sets or [] for a in ("--set", s)]])
    raise typer.Exit(code)


@app.command(epilog=example("wsss serve", "PREFECT_API_URL=http://127.0.0.1:4200/api wsss serve --gpu-slots 2"))
def serve(gpu_slots: Annotated[int, typer.Option(min=1, help="GPU tasks that may run at once")] = 1):
    """Serve the pipeline flow and one flow per stage to a Prefect server (start one first:
    `prefect server start --host 127.0.0.1`; `wsss ui` says more)."""
    pipeline_folder()
    from flows.serve import main as serve_main

    raise typer.Exit(serve_main(["--gpu-slots", str(gpu_slots)]))


@flow_app.command("run", epilog=example("wsss flow run", "wsss flow run manifest train_classifier"))
def flow_run(stages: Annotated[Optional[list[str]], typer.Argument(help="stages to run (default: all)")] = None):
    """The pipeline flow in this process, on a temporary Prefect API (no server needed): each
    stage through DVC, tracked in MLflow, a version recorded when the labels changed."""
    import json

    pipeline_folder()
    from flows.dvc_commands import pipeline_stages, select_stages

    with user_errors(ValueError):
        select_stages(stages, pipeline_stages())
    from flows.pipeline import pipeline

    typer.echo(json.dumps(pipeline(stages=stages or None), indent=2, default=str))


def _prefect_port(root: Path) -> int:
    import tomllib

    path = root / "prefect.toml"
    try:
        return int(tomllib.loads(path.read_text())["server"]["api"]["port"])
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError):
        return 4200


@app.command(epilog=example("wsss ui"))
def ui():
    """How to open the Prefect and MLflow UIs (on 127.0.0.1) for this pipeline folder."""
    from wsss.tracking.runs import tracking_uri

    root = project.root()
    os.chdir(root)   # the MLflow store is the pipeline folder's
    port = _prefect_port(root)
    typer.echo(f"""Pipeline folder: {root}

Prefect (flow runs, deployments):
    prefect server start --host 127.0.0.1
    open http://127.0.0.1:{port}
    wsss serve            (another terminal, in the pipeline folder: the deployments to run from the UI)

MLflow (stage runs, metrics, charts; experiment {os.environ.get('MLFLOW_EXPERIMENT_NAME') or 'wsss-drs'}):
    mlflow ui --backend-store-uri {tracking_uri()} --host 127.0.0.1 --port 5000 --workers 1
    open http://127.0.0.1:5000

`make server` and `make mlflow-ui` run the same two servers.""")


@config_app.command("show", epilog=example("wsss config show", "wsss config show --set profile=paper"))
def config_show(sets: Sets = None, params: Params = None):
    """The effective parameters as YAML: params.yaml, its profile (profiles/NAME.yaml) and the
    --set overrides, in the order the stages apply them."""
    import yaml

    path = _params_file(params) if params is not None else project.root() / "params.yaml"
    if not path.is_file():
        fail(f"no {path.name} in {path.parent}: run in the pipeline's folder, or pass --params FILE")
    typer.echo(yaml.safe_dump(load_params(path, sets or []), sort_keys=False).rstrip())


@data_app.command("init", epilog=example("wsss data init photos/", "wsss data init photos/ --out data/photos --val-share 0.1",
                                         "tags.csv:  photo1.jpg,cat dog   or   photo2,person;bicycle"))
def data_init(
    folder: Annotated[Path, typer.Argument(help="images (.jpg, .jpeg, .png) and tags.csv")],
    out: Annotated[Optional[Path], typer.Option(help="the dataset folder (default data/FOLDER's name)")] = None,
    val_share: Annotated[float, typer.Option(help="share of the images in the val split")] = 0.2,
    seed: Annotated[int, typer.Option(help="seeds the train/val split")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
):
    """Turn a folder of images plus a tags.csv into the dataset layout the pipeline reads.

    tags.csv: one row per image, `IMAGE,TAGS`: IMAGE a file name of the folder (photo1.jpg) or its id
    (photo1); TAGS the image's classes, separated by spaces or semicolons (cat dog, cat;dog). A
    header row (image,tags) and `#` rows are skipped. Every image needs a tag; images the file does
    not list are left out (and named).

    Writes JPEGImages/ID.jpg (PNGs converted), ImageSets/Segmentation/train.txt and val.txt (a
    seeded split), tags.csv and classes.txt (background, then the tags sorted). Then point
    data.root at it: `wsss run --set data.root=OUT`, or edit params.yaml.
    """
    from wsss.data_init import InitError, init

    target = out or Path("data") / folder.resolve().name
    with user_errors(InitError):
        done = init(folder, target, val_share, seed, overwrite)
    if done["unlisted"]:
        typer.echo(f"warning: not in tags.csv, left out: {', '.join(done['unlisted'])}", err=True)
    typer.echo(f"{done['images']} images (train {done['train']}, val {done['val']}; {done['converted']} "
               f"converted from PNG), classes: {' '.join(done['classes'])} -> {target}")
    typer.echo(f"next: wsss run --set data.root={target}")


def main(argv: list[str] | None = None) -> int:
    """Run the app on `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        app(args=argv, prog_name="wsss")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def entry() -> None:
    """The console script."""
    sys.exit(main())
