"""train_semi's body: choose and record the masked images, train with the chosen method, score on
val like the other segmenters (wsss/training/segmentation.py, train_and_score), and say plainly in the
metrics and the MLflow run that this result used masks."""
from __future__ import annotations

import functools
import time

from wsss.config import paths
from wsss.config.params import SEMI_METHODS
from wsss.dataset import voc
from models.segmenter import build_segmenter
from wsss.semi import cotraining, cutmix, cycle, dual, rounds
from wsss.semi.data import SemiCrops, SemiLabels, mixed_loader
from wsss.semi.losses import Parts, supervised_batch_loss
from wsss.semi.masks import MaskReader, choose, write_ids
from wsss.stores import labelstore
from wsss.stores.atomic import atomic_path, write_text
from wsss.tracking import runs as tracking
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import checkpoints, trainer
from wsss.training.segmentation import LabelTarget, train_and_score, warm_start

NAME = "semi"   # metrics/semi.json, plots/semi_*.csv, reports/semi/
USES_PSEUDO = tuple(m for m in SEMI_METHODS if m != "masks_only")


def start_from(model, start=None, weak=None):
    """The segmenter's first weights: every weight of the weak segmenter (`weak`), or the refiner's
    warm start (`start`, segmenter.init: refiner), or as built (ImageNet)."""
    if weak is not None:
        state, source = weak
        own = model.state_dict()
        wrong = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
        if wrong:
            raise ValueError(f"semi.init: weak_segmenter: {source} does not fit the semi segmenter (missing or "
                             f"other shape: {wrong[:3]}); both use the segmenter section, so train_segmenter's "
                             "checkpoint is from other settings: rerun it")
        model.load_state_dict({k: state[k] for k in own})
    elif start is not None:
        warm_start(model, *start)
    return model


def fit(semi: dict, masked: list[str], tags: dict[str, list[int]], cfg: dict, root, ids: list[str], labels,
        n_classes: int, device, desc: str, start=None, weak=None):
    """`fit_round` semi.rounds times, each from the same start: after a round the unmasked images
    (`tags`: their image-level tags) are labelled again by its network (wsss/semi/rounds.py) and the next
    round learns from those labels in place of the pseudo labels. The last round's network is the result."""
    began, round_losses, chosen = time.perf_counter(), [], set(masked)
    unmasked = {i: tags[i] for i in ids if i not in chosen}
    crf = cfg["crf"] if semi["relabel_crf"] else None
    later = {**semi, "pseudo_weight": semi["relabel_weight"]}   # later rounds: the new labels' own weight
    for r in range(1, semi["rounds"] + 1):
        model, history, figures = fit_round(semi if r == 1 else later, masked, cfg, root, ids, labels, n_classes,
                                            device, desc if semi["rounds"] == 1 else f"{desc} round {r}", start, weak)
        round_losses.append(round(history[-1]["loss"], 5))
        if r == 1:
            first_weight = figures["pseudo_weight"]   # as fit_round says it: 0 when no image was left unmasked
        if r < semi["rounds"]:
            labels = SemiLabels(labels.masks, rounds.relabel(model, root, unmasked, cfg, device, crf), labels.sizes)
    if semi["rounds"] > 1:
        figures.update({"rounds": semi["rounds"], "relabel_crf": semi["relabel_crf"],
                        "pseudo_weight": first_weight, "relabel_weight": semi["relabel_weight"],
                        "round_final_losses": round_losses,
                        "rounds_seconds": round(time.perf_counter() - began, 1)})
    return model, history, figures


def fit_round(semi: dict, masked: list[str], cfg: dict, root, ids: list[str], labels, n_classes: int, device,
              desc: str, start=None, weak=None):
    """training/segmentation.train's counterpart (same call and result) for the semi methods: the
    model to save and score (one segmenter, or the co-training ensemble), the history, and figures
    for the metrics (how many masks, which method, the batch, the step cost). weak: (state_dict, path)
    of the weak segmenter that every segmenter starts from (semi.init: weak_segmenter), else `start`."""
    method, chosen = semi["method"], set(masked)
    unmasked = [] if method == "masks_only" else [i for i in ids if i not in chosen]
    dataset = SemiCrops(root, masked, unmasked, LabelTarget(labels), cfg["crop_size"], cfg["resize_long"], cfg["seed"])
    epoch_images = semi["epoch_images"] or len(ids)
    loader = mixed_loader(dataset, len(unmasked), cfg, semi["mask_share"], epoch_images)
    total_steps = cfg["epochs"] * len(loader)
    parts, n_masked = Parts(), len(masked)
    figures = {"enabled": True, "supervision": "semi", "method": method, "n_masks": n_masked,
               "n_unmasked": len(unmasked), "mask_share": semi["mask_share"],
               "mask_choice": semi["choice"] if isinstance(semi["masks"], int) else "listed",
               "semi_init": "weak_segmenter" if weak is not None else cfg["init"],
               "pseudo_weight": semi["pseudo_weight"] if labels.pseudo is not None and unmasked else 0.0,
               "predicts_with": {"cotraining": "ensemble mean", "dual_branch": "the strong (masks') head",
                                 "cutmix": "the student"}.get(
                   method, "one segmenter")}
    begin = functools.partial(start_from, start=start, weak=weak)
    if method in ("masks_only", "masks+pseudo"):
        model = begin(build_segmenter(cfg, n_classes))
        batch_loss = supervised_batch_loss(cfg, n_masked, semi["pseudo_weight"] if method != "masks_only" else 0.0, parts)
    elif method == "dual_branch":
        # from the weak segmenter, the weak head starts as its head: it was trained on the pseudo labels
        model = dual.DualBranch(begin(build_segmenter(cfg, n_classes)), fresh_weak_head=weak is None,
                                branch=semi["weak_branch"])
        batch_loss = dual.batch_loss_fn(cfg, n_masked, semi["pseudo_weight"], parts)
    elif method == "cotraining":
        model = cotraining.build_members(cfg, n_classes, semi["cotraining"]["members"])
        for member in model.members:
            begin(member)
        batch_loss, subsets = cotraining.batch_loss_fn(cfg, semi, n_masked, len(dataset), total_steps, parts)
        figures["member_masks"] = [len(s) for s in subsets]
    elif method == "cyclegan":
        segmenter = begin(build_segmenter(cfg, n_classes))
        gan = semi["cyclegan"]
        model = cycle.CycleModel(segmenter, n_classes, gan["size"], gan["generator_width"], gan["discriminator_width"])
        batch_loss = cycle.batch_loss_fn(cfg, semi, n_masked, total_steps, parts)
        figures.update(model.parameter_counts())
    elif method == "cutmix":
        model = cutmix.MeanTeacher(begin(build_segmenter(cfg, n_classes)), semi["cutmix"]["teacher_decay"])
        batch_loss = cutmix.batch_loss_fn(cfg, semi, n_masked, total_steps, parts)
    else:
        raise ValueError(f"semi.method: unknown {method!r}")
    began = time.perf_counter()
    history = trainer.fit(model, loader, cfg, device, batch_loss, desc, epoch_stats=parts.epoch_stats)
    steps = max(total_steps, 1)
    figures.update({"step_seconds": round((time.perf_counter() - began) / steps, 3), "steps": total_steps,
                    "world_size": 1, "batch_per_rank": cfg["batch_size"], "global_batch": cfg["batch_size"],
                    "masked_per_batch": loader.batch_sampler.k, "epoch_images": epoch_images})
    return (model.segmenter if method in ("cyclegan", "dual_branch", "cutmix") else model), history, figures


def run(params: dict) -> dict:
    """The enabled stage: masked ids to artifacts/semi/masked_ids.txt first, then training and scoring."""
    semi = params["semi"]
    seg = params["segmenter"]
    params = {**params, "segmenter": {**seg, "epochs": semi["epochs"] or seg["epochs"]}}
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    split = params["data"]["train_split"]
    rows = voc.split_rows(manifest, split)
    masked = choose(rows, semi["masks"], semi["seed"], split, semi["choice"])
    how = (f"semi.masks={semi['masks']} seed={semi['seed']} choice={semi['choice']}" if isinstance(semi["masks"], int)
           else "semi.masks: a list of ids")
    write_ids(paths.SEMI_MASKED_IDS, masked,
              f"masked training images of train_semi ({how}, split {split!r}, {len(masked)} of {len(rows)}):\n"
              "the only training masks it may read")
    tracking.set_tags({"supervision": "semi", "semi.method": semi["method"], "semi.n_masks": len(masked),
                       "semi.init": semi["init"]})
    reader = MaskReader(root, masked, len(classes), str(paths.SEMI_MASKED_IDS))
    pseudo = None
    if semi["method"] in USES_PSEUDO and semi["pseudo_weight"] > 0 and len(masked) < len(rows):
        pseudo = labelstore.read_dict(paths.PSEUDO_LABELS)
    labels = SemiLabels(reader, pseudo, {r["id"]: (r["height"], r["width"]) for r in rows})
    # fit's figures (method, n_masks, ...: see fit) join metrics/semi.json
    weak = None
    if semi["init"] == "weak_segmenter":
        weak = (checkpoints.read(paths.SEGMENTER)["state_dict"], str(paths.SEGMENTER))
        params["segmenter"] = {**params["segmenter"], "init": "imagenet"}   # no refiner start on top of it
    tags = {r["id"]: list(r["tags"]) for r in rows}
    return train_and_score(params, labels, NAME, paths.SEMI_SEGMENTER, crf=semi["crf"],
                           fit=functools.partial(fit, semi, masked, tags, weak=weak))


def disabled() -> dict:
    """DVC expects every declared output; say plainly that nothing was trained and no mask was read."""
    note = "semi disabled (semi.enabled: false): nothing trained, no training mask read\n"
    write_text(f"# {note}", paths.SEMI_MASKED_IDS)
    write_text(note, paths.SEMI_SEGMENTER)
    with atomic_path(paths.REPORTS / NAME) as tmp:
        tmp.mkdir()
        (tmp / "README.txt").write_text(note)
    return write_stage_outputs(NAME, {"enabled": False, "supervision": "none", "n_masks": 0},
                               plots={f"{NAME}_train.csv": "epoch,loss,seconds\n", f"{NAME}_per_class.csv": "class,iou\n"})
