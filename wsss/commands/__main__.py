"""`python -m wsss.commands --help`: predict, label-pngs, instance-pngs, versions, search, near-duplicates (wsss/commands/cli.py)."""
import sys

from wsss.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
