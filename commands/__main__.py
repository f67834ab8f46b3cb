"""`python -m commands --help`: predict, label-pngs, instance-pngs, versions, search, near-duplicates (commands/cli.py)."""
import sys

from commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
