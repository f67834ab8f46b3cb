"""Weakly-supervised semantic segmentation from image-level tags: the library packages."""
