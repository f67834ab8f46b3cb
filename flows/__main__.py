"""`python -m flows serve|run|versions ...`: the orchestration commands in one place.

`versions ...` forwards to `python -m wsss.commands versions ...` (wsss/commands/cli.py), the one command line
of the user commands; it stays here so old scripts keep working.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    usage = "usage: python -m flows {serve|run|versions} [args]   (run: the pipeline flow without a server)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from flows.serve import main as serve_main
        return serve_main(rest)
    if cmd == "versions":
        from wsss.commands.cli import main as commands_main
        return commands_main(["versions", *rest])
    if cmd == "run":
        import json

        from flows.pipeline import pipeline
        stages = rest or None
        print(json.dumps(pipeline(stages=stages), indent=2, default=str))
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
