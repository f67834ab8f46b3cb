"""Networks and their name-to-class registries (backbone, localizer, head, loss)."""
from models import backbones, classifier, losses, segmenter  # noqa: F401  (fill the registries)
from models import ocr  # noqa: F401  (heads ocr, ocr_plus)
from models.registry import BACKBONES, HEADS, LOCALIZERS, LOSSES  # noqa: F401
