"""Errors a stage stops on that are the user's to fix (bad data, a missing input, a diverged run):
the CLI prints them on one line and exits 2 instead of showing a traceback."""


class StageError(Exception):
    """Base of the one-line stage errors; `kind` starts the printed line."""

    kind = "error"
