"""`python -m commands --help`: predict, label-pngs, versions (commands/cli.py)."""
import sys

from commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
