"""Where each stage reads and writes, relative to the repository root (dvc.yaml mirrors these)."""
from pathlib import Path

DEMO_ROOT = Path("data/demo")
MANIFEST = Path("artifacts/manifest.parquet")
CLASSIFIER = Path("artifacts/classifier.pt")
MAPS = Path("artifacts/maps")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
