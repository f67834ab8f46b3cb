"""Where each stage reads and writes, relative to the repository root (dvc.yaml mirrors these)."""
from pathlib import Path

DEMO_ROOT = Path("data/demo")
MANIFEST = Path("artifacts/manifest.parquet")
PRETRAIN = Path("artifacts/pretrain")              # the pretrain stage: backbone.pt (enabled) or NOTE.txt
PRETRAIN_BACKBONE = PRETRAIN / "backbone.pt"
CLASSIFIER = Path("artifacts/classifier.pt")
MAPS = Path("artifacts/maps")
REFINER = Path("artifacts/refiner.pt")
REFINED_MAPS = Path("artifacts/refined_maps")
PSEUDO_LABELS = Path("artifacts/pseudo_labels")
SEGMENTER = Path("artifacts/segmenter.pt")
REFERENCE = Path("artifacts/reference.pt")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
SEMI = Path("artifacts/semi")   # train_semi (semi.enabled): masked_ids.txt, segmenter.pt
SEMI_MASKED_IDS = SEMI / "masked_ids.txt"
SEMI_SEGMENTER = SEMI / "segmenter.pt"
ROUNDS = Path("artifacts/rounds")   # label round <key>: ROUNDS/<key>/{pseudo_labels, segmenter.pt, maps}


def round_dir(key: str) -> Path:
    return ROUNDS / key
