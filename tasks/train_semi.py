"""Stage 5c: a SEMI-supervised segmenter from the masks of a few training images (params.yaml `semi`,
README "Few masks"). Off by default: the pipeline stays weakly supervised, and this stage then
writes a note to each output and trains nothing. On, it records the masked ids
(artifacts/semi/masked_ids.txt), reads no other training mask, trains with semi.method and scores
on val; metrics/semi.json says how many masks it used and its MLflow run is tagged supervision: semi.
"""
from __future__ import annotations

from wsss.semi import stage


def main(params: dict) -> dict:
    if not params["semi"]["enabled"]:
        return stage.disabled()
    return stage.run(params)
