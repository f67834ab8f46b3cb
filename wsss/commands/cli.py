"""The user commands beside the stages, one command line: `python -m wsss.commands --help`.

    python -m wsss.commands predict IN_DIR OUT_DIR [--checkpoint P] [--crf] [--params F] [--overwrite]
    python -m wsss.commands label-pngs OUT_DIR [--labels DIR] [--overwrite]
    python -m wsss.commands instance-pngs OUT_DIR [--instances FILE] [--overwrite]
    python -m wsss.commands versions [--repo R] [--output PATH ...] list [--long] [--json]
    python -m wsss.commands versions diff A B [--json]
    python -m wsss.commands versions rollback V [--force]
    python -m wsss.commands versions record [-m MESSAGE] [--no-push]
    python -m wsss.commands versions setup-remote
    python -m wsss.commands search QUERY [--k 8] [--split train] [--out PNG] [--rebuild]
    python -m wsss.commands near-duplicates [--threshold T] [--within] [--out-dir DIR] [--rebuild]

Only the glue lives here: parsing, messages and exit codes. The work is done by
wsss.commands.predict.predict_folder, wsss.commands.label_pngs.export, wsss.commands.instance_pngs.export,
wsss.commands.versions, wsss.commands.outputs and wsss.commands.search. Exit codes: 0 done; 2 a user error (missing input, a
refused output folder, a bad version ref, a bad command line), printed as one `error: ...` line
on stderr (a rollback refusal adds the files it would lose); 1 a git or dvc command failed.
Heavy modules (torch) are imported by the commands that need them, so `--help` is quick.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from wsss.config import paths

PROG = "python -m wsss.commands"

app = typer.Typer(help="User commands beside the pipeline stages: segment new images, export the pseudo "
                       "labels or the PRM instances as PNGs, pseudo-label versions, image search and "
                       "the train/val near-duplicate report.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
versions_app = typer.Typer(help="Pseudo-label versions: list, diff, rollback, record (docs/orchestration.md).",
                           no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(versions_app, name="versions")


def fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], code: int = 2):
    """Turn the listed exceptions into `error: message` and exit `code`; anything else is a bug."""
    try:
        yield
    except kinds as exc:
        fail(str(exc).strip() or type(exc).__name__, code)


@app.command()
def predict(
    in_dir: Annotated[Path, typer.Argument(help="folder of images (jpg, jpeg, png, bmp, webp)")],
    out_dir: Annotated[Path, typer.Argument(help="output folder: labels/, overlays/, classes.txt")],
    checkpoint: Annotated[Path, typer.Option(help="the trained segmenter")] = paths.SEGMENTER,
    crf: Annotated[bool, typer.Option("--crf", help="dense-CRF post-processing (segmenter.crf params)")] = False,
    params: Annotated[Path, typer.Option(help="params.yaml: segmenter.device, .precision, .crf")] = Path("params.yaml"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT_DIR even if it holds files "
                                                                "this command did not write")] = False,
):
    """Segment a folder of new images with the trained segmenter: palette PNGs and overlays."""
    from wsss.commands.outputs import OutputError
    from wsss.commands.predict import ImageError, input_images, predict_folder
    from wsss.config.params import ParamsError, load
    from wsss.scaleout.engine import EngineError
    from wsss.stores.names import UnsafeIdError
    from wsss.training.checkpoints import CheckpointError

    with user_errors(FileNotFoundError, NotADirectoryError, OutputError, ImageError, ParamsError, EngineError,
                     CheckpointError, UnsafeIdError):
        input_images(in_dir)  # a missing input fails before params and the model load
        loaded = load(params)
        seg = loaded["segmenter"]
        n = predict_folder(in_dir, out_dir, checkpoint, seg["device"], crf, seg["crf"], seg["precision"],
                           overwrite=overwrite, scaleout=loaded["scaleout"])
    typer.echo(f"{n} images -> {out_dir}/labels (palette PNGs) and {out_dir}/overlays")


@app.command("label-pngs")
def label_pngs(
    out_dir: Annotated[Path, typer.Argument(help="output folder: one palette PNG per image")],
    labels: Annotated[Path, typer.Option(help="the packed pseudo labels")] = paths.PSEUDO_LABELS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT_DIR even if it holds files "
                                                                "this command did not write")] = False,
):
    """Write the packed pseudo labels as VOC palette PNGs (255 = uncertain shows white)."""
    from wsss.commands.label_pngs import export
    from wsss.commands.outputs import OutputError
    from wsss.stores.names import UnsafeIdError
    from wsss.stores.shards import ShardError

    with user_errors(FileNotFoundError, NotADirectoryError, OutputError, UnsafeIdError, ShardError):
        n = export(labels, out_dir, overwrite=overwrite)
    typer.echo(f"{n} label PNGs -> {out_dir}")


@app.command("instance-pngs")
def instance_pngs(
    out_dir: Annotated[Path, typer.Argument(help="output folder: an instance id PNG and a JSON per image")],
    instances: Annotated[Path, typer.Option(help="the packed PRM instances (export_maps with maps.method: prm)")]
        = paths.MAPS / "instances.parquet",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT_DIR even if it holds files "
                                                                "this command did not write")] = False,
):
    """Write the PRM instances as per-image id PNGs (0 = none, k = k-th best) and JSON (class, score)."""
    from wsss.commands.instance_pngs import export
    from wsss.commands.outputs import OutputError
    from wsss.stores.names import UnsafeIdError

    with user_errors(FileNotFoundError, NotADirectoryError, OutputError, UnsafeIdError):
        n = export(instances, out_dir, overwrite=overwrite)
    typer.echo(f"{n} images with instances -> {out_dir} (id PNGs and JSON)")


# Options the two search commands share (wsss/commands/search.py opens the same descriptor index for both).
SearchParams = Annotated[Path, typer.Option(help="params.yaml: the search section")]
SearchNetwork = Annotated[Path, typer.Option(help="the classifier whose features describe images")]
SearchIndex = Annotated[Optional[Path], typer.Option(help="the descriptor index (default search.index)")]
SearchRebuild = Annotated[bool, typer.Option("--rebuild", help="describe every image again")]


def _search_context(params: Path, manifest: Path, checkpoint: Path, index: Optional[Path], rebuild: bool):
    from wsss.commands.search import open_index

    return open_index(params, manifest, checkpoint, index, rebuild, log=lambda m: typer.echo(m, err=True))


def _search_errors():
    from wsss.commands.search import QueryError
    from wsss.config.params import ParamsError
    from wsss.dataset.voc import DataError
    from wsss.retrieval.descriptors import ImageError
    from wsss.retrieval.index import IndexFileError

    return user_errors(FileNotFoundError, QueryError, ImageError, IndexFileError, ParamsError, DataError)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="an image file, or an image id of the manifest")],
    k: Annotated[int, typer.Option("--k", min=1, help="how many results")] = 8,
    split: Annotated[str, typer.Option(help="search this split's images (data.train_split by default); "
                                            "'all': every split")] = "",
    out: Annotated[Optional[Path], typer.Option(help="the contact sheet PNG (default reports/search/<query>.png)")] = None,
    params: SearchParams = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="the images searched")] = paths.MANIFEST,
    checkpoint: SearchNetwork = paths.CLASSIFIER,
    index: SearchIndex = None,
    rebuild: SearchRebuild = False,
):
    """The k training images most similar to QUERY (cosine of SBA descriptors), printed and on a contact sheet."""
    from wsss.commands.search import check_query, format_results, search as run_search

    with _search_errors():
        check_query(query)   # a mistyped path fails before the index is built
        ctx = _search_context(params, manifest, checkpoint, index, rebuild)
        where = None if split == "all" else (split or ctx.train_split)
        found = run_search(query, k, where, out, ctx)
    typer.echo(format_results(found))


@app.command("near-duplicates")
def near_duplicates(
    threshold: Annotated[Optional[float], typer.Option(
        min=-1.0, max=1.0, help="report pairs at or above this cosine (default search.threshold)")] = None,
    within: Annotated[bool, typer.Option("--within", help="also pairs inside train and inside val")] = False,
    out_dir: Annotated[Path, typer.Option(help="pairs.csv, pairs.json, top_pairs.png")] = Path("reports/near_duplicates"),
    top: Annotated[int, typer.Option(min=1, help="pairs on the contact sheet")] = 12,
    params: SearchParams = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="the images compared")] = paths.MANIFEST,
    checkpoint: SearchNetwork = paths.CLASSIFIER,
    index: SearchIndex = None,
    rebuild: SearchRebuild = False,
):
    """Leak check: train/val image pairs whose descriptors' cosine reaches the threshold (CSV, JSON, contact sheet)."""
    from wsss.commands.search import format_duplicates, near_duplicates as run_report
    from wsss.config.params import load

    with _search_errors():
        ctx = _search_context(params, manifest, checkpoint, index, rebuild)
        t = threshold if threshold is not None else load(params)["search"]["threshold"]
        report = run_report(t, within, out_dir, top, ctx)
    typer.echo(format_duplicates(report))


@contextlib.contextmanager
def _versions_errors():
    from wsss.commands import gitdvc, versions
    from wsss.tracking import lineage

    with user_errors(gitdvc.CommandError, code=1), user_errors(versions.VersionError, lineage.LineageError):
        yield


@versions_app.callback()
def versions_options(
    ctx: typer.Context,
    repo: Annotated[Path, typer.Option(help="the repository")] = Path("."),
    output: Annotated[Optional[list[str]], typer.Option(
        help="the versioned DVC output (repeatable; default: the pseudo-label stage's)")] = None,
):
    """Pseudo-label versions: list, diff, rollback, record."""
    ctx.obj = {"repo": repo, "output": output or None}


@versions_app.command("list")
def versions_list(ctx: typer.Context,
                  as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
                  long: Annotated[bool, typer.Option("--long", help="also each version's subject and the "
                                                                    "params that differ")] = False):
    """A table of the versions: round, labels mIoU, date, commit, tags (--long: params too)."""
    from dataclasses import asdict

    from wsss.commands import versions

    with _versions_errors():
        found = versions.versions(ctx.obj["repo"], ctx.obj["output"])
    typer.echo(json.dumps([asdict(v) for v in found], indent=2) if as_json else versions.format_list(found, long))


@versions_app.command("diff")
def versions_diff(ctx: typer.Context,
                  a: Annotated[str, typer.Argument(help="version number (3 or v3), tag, commit, REF@ROUND (labels-v2@r1) or a round (r1, final)")],
                  b: Annotated[str, typer.Argument(help="version number (3 or v3), tag, commit, REF@ROUND (labels-v2@r1) or a round (r1, final)")],
                  as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False):
    """Params, mIoU, ignored fraction, per-class IoU and hashes of two versions (two rounds too)."""
    from wsss.commands import versions

    repo = ctx.obj["repo"]
    with _versions_errors():
        found = versions.versions(repo, ctx.obj["output"])
        d = versions.diff(repo, versions.resolve(repo, a, found), versions.resolve(repo, b, found))
    typer.echo(json.dumps(d, indent=2) if as_json else versions.format_diff(d))


@versions_app.command("rollback")
def versions_rollback(ctx: typer.Context,
                      version: Annotated[str, typer.Argument(help="version number (3 or v3), tag, commit, REF@ROUND (labels-v2@r1) or a round (r1, final)")],
                      force: Annotated[bool, typer.Option(
                          "--force", help="discard uncommitted dvc.lock/params.yaml and unrecorded labels")] = False):
    """Restore a version's labels (bit-identical), params and metrics; then `dvc repro`."""
    from wsss.commands import versions

    repo = ctx.obj["repo"]
    with _versions_errors():
        found = versions.versions(repo, ctx.obj["output"])
        versions.rollback(repo, versions.resolve(repo, version, found), force=force, found=found)


@versions_app.command("record")
def versions_record(ctx: typer.Context,
                    message: Annotated[Optional[str], typer.Option("-m", "--message", help="commit message")] = None,
                    no_push: Annotated[bool, typer.Option("--no-push", help="do not dvc push")] = False):
    """Commit + tag the current labels if they changed since HEAD; dvc push."""
    from wsss.commands import versions

    with _versions_errors():
        versions.record(ctx.obj["repo"], message, ctx.obj["output"], push=not no_push)


@versions_app.command("setup-remote")
def versions_setup_remote(ctx: typer.Context):
    """A local default DVC remote in .dvc-remote (configured in .dvc/config.local)."""
    from wsss.commands import gitdvc

    with _versions_errors():
        typer.echo(f"default DVC remote: {gitdvc.ensure_local_remote(ctx.obj['repo'])}")


def main(argv: list[str] | None = None) -> int:
    """Run the app on `argv` (default: sys.argv[1:]); returns the exit code instead of exiting."""
    try:
        app(args=argv, prog_name=PROG)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
