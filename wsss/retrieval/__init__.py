"""Image search on the classifier's own features: global descriptors (descriptors.py: SBA and the
SPoC / MAC / R-MAC baselines), the packed descriptor index of a dataset (index.py), nearest
neighbours and near-duplicate pairs (neighbours.py), and their contact sheets (sheets.py)."""
