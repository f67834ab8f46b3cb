"""The README is a landing page whose commands run as written: at most 250 lines; every `wsss`
line parses against the real command line (no unknown command, option or missing argument); every
`make` target exists; the own-data recipe (a folder of images + tags.csv in the README's format,
`wsss data init`, `wsss config show`) runs."""
import re
import shlex

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import REPO
from wsss import cli

README = (REPO / "README.md").read_text()


def bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_readme_is_a_landing_page():
    assert len(README.splitlines()) <= 250
    assert len([line for line in bash_lines() if line.startswith("wsss ")]) >= 10


def test_every_wsss_command_in_the_readme_parses():
    top = typer.main.get_command(cli.app)
    for line in [line for line in bash_lines() if line.startswith("wsss ")]:
        args = shlex.split(line)[1:]
        command, path = top, ["wsss"]
        while args and args[0] in getattr(command, "commands", {}):   # down to the subcommand
            path.append(args[0])
            command = command.commands[args.pop(0)]
        try:
            command.make_context(" ".join(path), list(args))   # parses options and arguments only
        except Exception as exc:   # click's UsageError, or the Exit of --version / --help
            if type(exc).__name__ != "Exit" or getattr(exc, "exit_code", 0) != 0:
                raise AssertionError(f"README command does not parse: {line}: {exc}") from None


def test_every_make_target_in_the_readme_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    for line in [line for line in bash_lines() if line.startswith("make ")]:
        assert shlex.split(line)[1] in targets, line


def test_the_own_data_recipe_runs_as_written(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    fmt = re.search(r"`(\w+),(\w+ \w+)`: an id, a comma, its classes", README)
    assert fmt, "the README's tags.csv example moved: update this test"
    rng = np.random.default_rng(0)
    rows = {fmt.group(1): fmt.group(2), "cat_002": "cat", "street_17": "person car", "dog_3": "dog"}
    for image_id in rows:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / f"{image_id}.jpg")
    (photos / "tags.csv").write_text("".join(f"{k},{v}\n" for k, v in rows.items()))
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    (tmp_path / "profiles").mkdir()
    for profile in (REPO / "profiles").iterdir():
        (tmp_path / "profiles" / profile.name).write_text(profile.read_text())
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(cli.app, ["data", "init", "photos"], prog_name="wsss")
    assert done.exit_code == 0, done.output
    root = re.search(r"`data\.root: ([\w/]+)`", README).group(1)   # where the README says it lands
    assert (tmp_path / root / "classes.txt").is_file(), f"data init did not write {root}"
    shown = runner.invoke(cli.app, ["config", "show", "--set", f"data.root={root}"], prog_name="wsss")
    assert shown.exit_code == 0 and f"root: {root}" in shown.output, shown.output
