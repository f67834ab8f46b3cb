"""Write the packed pseudo labels as VOC palette PNGs (255 = uncertain shows white).

    python -m commands.label_pngs OUT_DIR [--labels artifacts/pseudo_labels]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stores import labelstore
from config import paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m commands.label_pngs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--labels", type=Path, default=paths.PSEUDO_LABELS)
    args = ap.parse_args(argv)
    n = labelstore.export_pngs(args.labels, args.out_dir)
    print(f"{n} label PNGs -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
