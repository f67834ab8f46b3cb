"""Load and validate params.yaml.

The pydantic models below, one per params.yaml section, are the only place that knows what a key
may hold and its built-in default; a bad key, type or value raises ParamsError naming the dotted
key, before any stage does work. Network and loss names are checked against the model registries.

Precedence, lowest first:
  1. the built-in defaults: the field defaults below, which are the shipped params.yaml (the CPU
     settings; tests/test_params.py keeps the two equal);
  2. the profile's overlay, profiles/<profile>.yaml (`profile: cpu` is empty);
  3. the user's values: params.yaml leaves that differ from their built-in default;
  4. `--set key=value` overrides (`load(path, overrides)`), always.
So under `profile: paper` an edited `classifier.epochs` or `--set classifier.pretrained=false`
wins, and keys left at their defaults take the profile's values. A params.yaml value equal to its
default cannot be told from an untouched one: to force it under a profile, use --set. params.yaml
must still list every key: DVC tracks the stages' params there. `rounds` and `pseudo_labels.maps`
form one chain: where the user's values set either, both are the user's (a profile cannot split them).
"""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from wsss.config import project
from wsss.config.yamlfile import read_yaml

PROFILES_DIR = project.root() / "profiles"


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key."""


def _invalid(msg: str, field: str | None = None) -> PydanticCustomError:
    """An error with its own message; `field` names the key it is about, inside the model checked."""
    return PydanticCustomError("params", "{msg}", {"msg": msg, "field": field})


def _registered(registry: str, exclude: tuple[str, ...] = ()):
    """A name that models.registry.<registry> holds, checked at load rather than when built."""
    def check(name: str) -> str:
        from models import registry as regs  # importing `models` fills the registries (torch: lazily)
        names = [n for n in getattr(regs, registry).names() if n not in exclude]
        if name not in names:
            raise _invalid(f"{name!r} is not one of {names}")
        return name
    return Annotated[str, AfterValidator(check)]


def _odd(n: int) -> int:
    if n % 2 == 0:
        raise _invalid(f"{n} is even: a peak window needs a centre pixel (1, 3, 5, ...)")
    return n


def _distinct(values: list) -> list:
    if len(set(values)) != len(values):
        raise _invalid(f"{values} repeats a value")
    return values


def _ordered(pair: list[int]) -> list[int]:
    if pair[0] > pair[1]:
        raise _invalid("the first value must not exceed the second")
    return pair


Backbone = _registered("BACKBONES")
LocalizerHead = _registered("LOCALIZERS")
SegmenterHead = _registered("HEADS")
SegmenterLoss = _registered("LOSSES", exclude=("multilabel_soft_margin",))   # that one is the classifier's
Channels = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=1, le=100_000)]
Epochs = Annotated[int, Field(ge=1, le=1000)]
PeakWindow = Annotated[int, Field(ge=1, le=15), AfterValidator(_odd)]   # local-maximum window, pixels of the map
FrozenBlocks = Annotated[int, Field(ge=0, le=1000)]   # stem + first N backbone blocks not trained
# bf16 / fp16 (CUDA only, loss-scaled): autocast; auto: bf16 where native, fp16 on other GPUs (wsss/training/runtime.py)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Rates = Annotated[list[Annotated[int, Field(ge=1, le=64)]], Field(min_length=1)]   # ASPP dilation rates
Scales = Annotated[list[Annotated[float, Field(ge=0.1, le=4.0)]], Field(min_length=1)]
Sides = Annotated[list[Annotated[int, Field(ge=16, le=4096)]], Field(min_length=2, max_length=2),
                  AfterValidator(_ordered)]   # [lo, hi]: the long side resized to a random length in it
Steps = list[Annotated[int, Field(ge=1)]]   # step schedule: lr x 0.1 at each of these epochs
Weight = Annotated[float, Field(ge=0.0, le=1000.0)]
# locally_adaptive loss: k x k cells of the loss grid (1: plain cross-entropy's term)
Windows = Annotated[list[Annotated[int, Field(ge=1, le=32)]], Field(min_length=1, max_length=8), AfterValidator(_distinct)]


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _float_text(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()) else value


def _is_float(annotation: Any) -> bool:
    return (get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation) is float


class Section(BaseModel):
    """Unknown keys rejected, no coercion (but an int may stand for a float, and a decimal number
    written as text for a float), floats finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _floats_from_text(cls, data: Any) -> Any:
        """PyYAML (YAML 1.1) reads `1e-4` as text where DVC (YAML 1.2) reads a float: take it as one
        where a float (or a list of floats) is expected; elsewhere text stays text."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if name not in out:
                continue
            if _is_float(field.annotation):
                out[name] = _float_text(out[name])
            elif get_origin(field.annotation) is list and _is_float(get_args(field.annotation)[0]) \
                    and isinstance(out[name], list):
                out[name] = [_float_text(v) for v in out[name]]
        return out


class Training(Section):
    """What every trained network's section holds: the optimisation budget and schedule. Defaults:
    the classifier's; the refiner and the segmenter override theirs."""

    freeze_bn: bool = True
    freeze_blocks: FrozenBlocks = 2
    epochs: Epochs = 15
    batch_size: int = Field(8, ge=1, le=1024)
    crop_size: int = Field(256, ge=32, le=2048)
    resize_long: Sides = [192, 384]
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr_schedule: Literal["poly", "step"] = "poly"
    lr_step_epochs: Steps = [5, 10]
    lr: float = Field(1e-4, ge=0.0, le=10.0)   # backbone; new layers get lr * new_layer_lr_mult
    new_layer_lr_mult: float = Field(10.0, ge=0.0, le=1000.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    precision: Precision = "fp32"
    num_workers: int = Field(0, ge=0, le=64)
    ema_decay: float = Field(0.0, ge=0.0, le=0.9999)   # > 0: end with the moving average of the weights


class Network(Section):
    backbone: Backbone = "efficientnet_lite0"
    pretrained: bool = True
    output_stride: Literal[8, 16, 32] = 16


class Localizer(Network):
    """A CAM-style network: backbone, output stride, the paper's extra convs."""

    extra_convs: int = Field(0, ge=0, le=8)
    extra_channels: Channels = 512
    extra_kernel: Literal[1, 3] = 3   # the paper's 3x3, or 1x1 (no new spatial mixing)


class Aspp(Section):
    aspp_channels: Channels = 128
    aspp_rates: Rates = [6, 12, 18]


class Crf(Section):
    iterations: int = Field(10, ge=1, le=100)
    gaussian_sxy: Weight = 3.0
    gaussian_compat: Weight = 3.0
    bilateral_sxy: Weight = 50.0
    bilateral_srgb: Weight = 5.0
    bilateral_compat: Weight = 10.0


class Data(Section):
    root: str = "data/demo"
    train_split: str = Field("train", pattern=r"^[\w.-]+$")
    val_split: str = Field("val", pattern=r"^[\w.-]+$")


class Demo(Section):
    seed: int = Field(0, ge=0)
    n_train: int = Field(32, ge=2, le=100_000)
    n_val: Count = 16
    image_size: int = Field(256, ge=48, le=2048)


class Drs(Section):
    mode: Literal["none", "fixed", "learnable"] = "none"
    delta: Prob = 0.55   # fixed mode: the clamp is delta * channel max
    placement: list[Annotated[str, Field(pattern=r"^(extra|head|all|blocks:[1-9][0-9]*)$")]] = ["extra"]


class ContextPaste(Section):
    """wsss/localization/context_paste.py: objects cut by the classifier's own maps pasted onto other images."""

    prob: Prob = 0.5                                   # chance an image gets an object (0: off)
    start_epoch: int = Field(3, ge=0, le=1000)         # epochs of plain training first
    mask_threshold: float = Field(0.5, ge=0.0, le=0.99)   # of the max-normalised map: the object's pixels
    max_side: float = Field(0.6, ge=0.05, le=1.0)      # pasted boxes scaled to at most this of the image side


class Group(Section):
    """Group-wise semantic mining (models/group.py, wsss/localization/group.py): batches of image groups
    sharing a tag, co-attention message passing between them, graph dropout of the most shared responses."""

    enabled: bool = False
    size: int = Field(4, ge=2, le=16)              # images per group; batch_size = groups x size
    steps: int = Field(2, ge=0, le=8)              # message-passing iterations (0: no messages)
    dropout: float = Field(0.2, ge=0.0, le=0.9)    # graph dropout: fraction of each node's positions zeroed
    channels: Channels = 256                       # the node states' channels
    single_weight: Weight = 0.5                    # + this x the loss of each image alone (a group of one)


class Classifier(Localizer, Training):
    init: Literal["imagenet", "pretrain"] = "imagenet"   # pretrain: the backbone from artifacts/pretrain/backbone.pt
    group: Group = Group()
    pooling: Literal["gap", "peaks"] = "gap"   # image score: map mean, or mean of its local peaks (PRM)
    peak_window: PeakWindow = 3   # pooling peaks, and the peaks PRM export backpropagates from
    drs: Drs = Drs()
    context_paste: ContextPaste = ContextPaste()
    limit: int = Field(0, ge=0)   # use only the first N training images (0 = all)


class Prm(Section):
    """maps.method prm: peak response maps (wsss/localization/prm.py)."""

    scales: Scales = [0.5]                            # PRM's own (each peak costs a backward pass); flip: maps.flip
    max_peaks: int = Field(5, ge=1, le=64)            # per class and scale, the strongest first
    peak_threshold: Prob = 0.5                        # peaks below this fraction of the class map's max: dropped
    backprop: Literal["gradient", "excitation"] = "excitation"   # plain input gradient | the reference's rule
    sigma: float = Field(16.0, ge=0.0, le=100.0)     # Gaussian smoothing of each peak's map, pixels (0: none)
    region_mean: bool = True                         # class maps averaged within each proposal region
    regions: Literal["felzenszwalb", "slic", "merged"] = "felzenszwalb"   # region proposals (merged: wsss/labelling/superpixels.py)
    region_scale: float = Field(200.0, ge=1.0, le=100_000.0)    # felzenszwalb scale / slic n_segments
    instance_fraction: Prob = 0.3                    # a region joins a peak's mask above this x its best region
    nms_iou: Prob = 0.5                              # same-class instances overlapping more: the weaker dropped
    n_contact: int = Field(24, ge=0, le=1000)         # images in reports/maps/instances_contact_sheet.png


class Maps(Section):
    method: Literal["cam", "prm"] = "cam"   # cam: class activation maps | prm: peak response maps + instances
    prm: Prm = Prm()
    scales: Scales = [0.5, 1.0, 1.5]
    flip: bool = False
    threshold_start: Prob = 0.05   # background-threshold sweep for the evaluation
    threshold_stop: Prob = 0.95
    threshold_step: float = Field(0.05, ge=0.001, le=0.5)
    n_overlays: int = Field(6, ge=0, le=1000)
    shard_size: Count = 256
    precision: Precision = "auto"   # of the raw and the refined map export
    group_export: Literal["single", "neighbours"] = "single"   # group classifier: each image alone or with neighbours

    @model_validator(mode="after")
    def _sweep(self) -> Maps:
        if self.threshold_start >= self.threshold_stop:
            raise _invalid("must be below maps.threshold_stop", "threshold_start")
        return self


class Affinity(Section):
    """refiner.method random_walk (wsss/localization/affinity.py): the pair labels, the network's grid and the walk."""

    fg_threshold: Prob = 0.5    # pair labels: a pixel is its best class where that map is >= this,
    bg_threshold: Prob = 0.1    # background where every map is < this, ignored between
    crf: bool = True            # the two regions snapped to image edges by pseudo_labels.crf first (IRN)
    radius: int = Field(5, ge=1, le=16)   # pairs within this many grid cells (training and walk)
    stride: Literal[4, 8] = 8   # the grid of the features, the affinities and the walk
    feature_dim: Channels = 128
    beta: float = Field(8.0, ge=0.1, le=100.0)   # transitions: affinity ** beta (sharper edges)
    steps: int = Field(256, ge=0, le=10_000)     # walk steps (x <- T x)
    bg_power: float = Field(2.0, ge=0.01, le=100.0)   # background score (1 - best map) ** bg_power


class Refiner(Localizer, Aspp, Training):
    method: Literal["regression", "random_walk"] = "regression"   # regression: a network learns the maps (DRS);
    # random_walk: a network learns pixel affinities, the maps walk over them (AffinityNet)
    affinity: Affinity = Affinity()
    head: LocalizerHead = "aspp"   # aspp: the segmenter's head; cam: 1x1 conv on the features
    extra_channels: Channels = 256
    freeze_blocks: FrozenBlocks = 5
    epochs: Epochs = 8


class Superpixels(Section):
    """wsss/labelling/superpixels.py: labels voted per region of merged superpixels."""

    enabled: bool = True
    n_segments: int = Field(400, ge=2, le=100_000)   # SLIC superpixels before merging
    compactness: float = Field(10.0, ge=0.01, le=1000.0)   # SLIC: higher = squarer, lower = hugs edges
    threshold: Prob = 0.5   # merge while the most similar adjacent pair is at least this similar
    target_regions: int = Field(1, ge=1, le=100_000)   # or stop at this many regions
    colour_floor: float = Field(5.0, ge=0.1, le=100.0)   # Lab units: the least colour spread a region has
    edge_scale: float = Field(10.0, ge=0.1, le=1000.0)   # mean Sobel magnitude (Lab) along a border: x e^-1
    size_scale: float = Field(4.0, ge=0.01, le=10_000.0)   # superpixels: content and border weigh equally
    vote_min: Prob = 0.6   # the majority's share of a region's labelled pixels needed to label it
    min_labelled: Prob = 0.2   # and the labelled share of the region
    undecided: Literal["keep", "ignore"] = "keep"   # other regions: their per-pixel labels, or 255


MAP_SOURCES = ("artifacts/refined_maps", "artifacts/maps")   # the refined maps (the paper's path) or the CAMs


def round_maps(key: str) -> str:
    """Where label round `key` leaves its segmenter's maps of the training images (wsss/config/paths.py)."""
    return f"artifacts/rounds/{key}/maps"


class PseudoLabels(Section):
    maps: str = "artifacts/rounds/r1/maps"   # the maps that become labels: MAP_SOURCES, or the last round's
    bg_threshold: Prob = 0.45
    temperature: float = Field(0.1, ge=0.001, le=10.0)   # scores -> CRF probabilities: softmax(scores / t)
    uncertain_margin: Prob = 0.05
    saliency_dir: str = ""   # under data.root; empty: use bg_threshold
    saliency_threshold: Prob = 0.5
    claim_threshold: Prob = 0.5
    crf: Crf = Crf()
    superpixels: Superpixels = Superpixels()
    workers: int = Field(0, ge=0, le=256)   # 0: all cores
    shard_size: Count = 256
    n_samples: int = Field(8, ge=0, le=1000)


class SegmenterCrf(Crf):
    # classes below min_prob everywhere are left out of the val CRF (wsss/labelling/crf.py, crf_argmax)
    min_prob: float = Field(0.05, ge=0.0, le=0.5)


class Segmenter(Network, Aspp, Training):
    head: SegmenterHead = "aspp_plus"
    low_level_stride: Literal[4, 8] = 8   # heads aspp_plus, ocr_plus: the backbone features they fuse
    val_flip: bool = True
    val_scales: Scales = [0.5, 0.75, 1.0, 1.25]   # inference scales, logits averaged
    loss: SegmenterLoss = "cross_entropy"   # models/losses.py
    loss_drop: float = Field(0.2, ge=0.0, le=0.9)   # small_loss_ce: fraction left out per class
    loss_stride: Literal[1, 2, 4, 8] = 4   # loss on every Nth label pixel (wsss/training/segmentation.py, loss_grid)
    loss_windows: Windows = [1, 2, 4]   # locally_adaptive: window sizes on the loss grid, losses averaged
    aux_weight: float = Field(0.4, ge=0.0, le=10.0)   # ocr heads: weight of the auxiliary (region) loss
    init: Literal["imagenet", "refiner", "pretrain"] = "imagenet"   # refiner: artifacts/refiner.pt; pretrain: the
                                                                     # pretrain stage's backbone
    freeze_blocks: FrozenBlocks = 3
    epochs: Epochs = 14
    resize_long: Sides = [256, 512]
    lr_step_epochs: Steps = [10, 20]
    precision: Precision = "auto"
    crf: SegmenterCrf = SegmenterCrf()   # post-processing on val


class Mining(Section):
    """Bottom-up step of a label round (wsss/labelling/mining.py): class prototypes of the segmenter's features."""
    weight: Prob = 0.5            # round maps = (1 - weight) x segmenter probabilities + weight x prototype match
    confidence: Prob = 0.8        # pixels whose tag-restricted probability exceeds this build the prototypes
    temperature: float = Field(0.1, ge=0.001, le=10.0)   # cosine similarities -> probabilities: softmax(s / t)


class Round(Section):
    """One label round before the last (Wang et al., CVPR 2018): labels from `maps`, a segmenter
    trained on them, its tag-restricted predictions on the training images expanded by mining
    (the next round's maps). Its settings live here, so editing round r2 leaves r1 as it is."""
    maps: str                     # MAP_SOURCES for the first round, else the previous round's maps
    epochs: int = Field(0, ge=0, le=1000)   # this round's segmenter; 0: segmenter.epochs
    scales: Scales = [0.75, 1.0, 1.25]      # its predictions on the training images (logits averaged)
    flip: bool = True
    mining: Mining = Mining()
    superpixels: bool = False     # this round's labels voted per region (pseudo_labels.superpixels' settings)


class Distributed(Section):
    """Data-parallel training (wsss/training/distributed.py): > 1 makes `python -m tasks` re-launch the
    training stages under torchrun with this many processes (one per GPU); batch_size stays global."""
    nproc_per_node: int = Field(1, ge=1, le=64)


class Reference(Section):
    enabled: bool = True
    crf: bool = False   # also score it with CRF post-processing


def _mask_choice(value: Any) -> Any:
    """semi.masks: a count of training images, or the ids themselves (each once)."""
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise _invalid(f"expected a count (int) or a list of image ids, got {type(value).__name__} ({value!r})")
    if isinstance(value, int):
        if value < 0:
            raise _invalid(f"{value} is below the minimum 0")
        return value
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise _invalid(f"image ids must be non-empty strings, not {bad[0]!r}")
    seen = set()
    for image_id in value:
        if image_id in seen:
            raise _invalid(f"image {image_id!r} is listed twice")
        seen.add(image_id)
    return value


class CoTraining(Section):
    """semi.method cotraining (wsss/semi/cotraining.py; Peng et al. 2020): K segmenters that agree on the
    unmasked images and resist each other's adversarial images."""

    members: int = Field(2, ge=2, le=8)                   # K segmenters (each costs a segmenter's step, x2-3)
    member_fraction: float = Field(0.7, gt=0.0, le=1.0)   # each member's seeded share of the masked images
    agreement_weight: Weight = 1.0    # Jensen-Shannon divergence between the members' predictions
    diversity_weight: Weight = 0.5    # member j on member i's adversarial image vs i's clean prediction (CE)
    adversarial_eps: float = Field(4.0, ge=0.0, le=64.0)  # FGSM step in pixel values (0..255); 0: no diversity term


class CycleGan(Section):
    """semi.method cyclegan (wsss/semi/cycle.py; Mondal et al. 2019): the segmenter S, a small generator G
    (mask -> image) and two PatchGAN discriminators, at `size` pixels."""

    size: int = Field(64, ge=16, le=512)           # side of the images and masks G and the discriminators see
    generator_width: Channels = 32
    discriminator_width: Channels = 32
    generator_weight: Weight = 1.0                 # L1 of G(mask) against its own image (the masked pairs)
    adversarial_weight: Weight = 0.1               # LSGAN: S's masks vs real masks, G's images vs real images
    cycle_image_weight: Weight = 1.0               # L1, image -> S -> G -> image
    cycle_mask_weight: Weight = 0.5                # CE, mask -> G -> S -> mask


class CutMix(Section):
    """semi.method cutmix (wsss/semi/cutmix.py; French et al. 2020): the unmasked images cut and mixed in
    pairs, learning the mixed pseudo labels and a mean teacher's mixed confident classes."""

    consistency_weight: Weight = 0.1                    # the teacher's classes on the mixed images (ramped up)
    confidence: float = Field(0.9, ge=0.0, le=1.0)      # teacher pixels below this are ignored
    teacher_decay: float = Field(0.99, ge=0.0, lt=1.0)  # the teacher's moving average of the student's weights
    box_share: float = Field(0.5, gt=0.0, lt=1.0)       # share of a mixed image its own box keeps


SEMI_METHODS = ("masks_only", "masks+pseudo", "dual_branch", "cotraining", "cyclegan", "cutmix")
SEMI_NEEDS_MASKS = ("masks_only", "cyclegan")        # learn from real masks only: 0 masks is meaningless
SEMI_PSEUDO_ONLY = ("masks+pseudo", "dual_branch")   # their only signal beyond the masks is the pseudo labels


class Semi(Section):
    """train_semi: a SEMI-supervised segmenter from the masks of a few training images (wsss/semi/)."""

    enabled: bool = False
    masks: Annotated[Any, AfterValidator(_mask_choice)] = 33   # a count (seeded choice) or a list of ids
    seed: int = Field(0, ge=0)                                 # which images a count chooses
    choice: Literal["random", "balanced"] = "random"   # a count's order: seeded, or seeded and tag-balanced
    method: Literal[SEMI_METHODS] = "cutmix"
    mask_share: float = Field(0.5, gt=0.0, le=1.0)   # share of each batch drawn from the masked images
    pseudo_weight: Weight = 0.1                      # loss weight of the unmasked images' pseudo labels (0: unread)
    epochs: int = Field(0, ge=0, le=1000)            # 0: segmenter.epochs
    epoch_images: int = Field(0, ge=0, le=10_000_000)   # crops per epoch; 0: the train split's size
    rampup: Prob = 0.2                               # share of the steps over which the unsupervised losses ramp up
    init: Literal["as_segmenter", "weak_segmenter"] = "weak_segmenter"   # artifacts/segmenter.pt
    weak_branch: Literal["head", "classifier"] = "head"   # dual_branch: the pseudo labels' own head, or classifier only
    crf: bool = False                                # also score on val with CRF post-processing
    rounds: int = Field(1, ge=1, le=5)               # > 1: self-training; each round relabels the unmasked images
    relabel_crf: bool = True                         # rounds: the new labels pass through the dense CRF
    relabel_weight: Weight = 0.1                     # rounds: loss weight of the new labels in the later rounds
    cotraining: CoTraining = CoTraining()
    cyclegan: CycleGan = CycleGan()
    cutmix: CutMix = CutMix()

    @model_validator(mode="after")
    def _method_needs(self) -> "Semi":
        n = self.masks if isinstance(self.masks, int) else len(self.masks)
        if n == 0 and self.method in SEMI_NEEDS_MASKS:
            why = "trains on the masks alone" if self.method == "masks_only" else \
                "learns its mask discriminator and mask cycle from the real masks"
            raise _invalid(f"is 0, but semi.method {self.method} {why}: give it masks", "masks")
        if self.method in SEMI_PSEUDO_ONLY and self.pseudo_weight == 0:
            raise _invalid(f"is 0, but semi.method {self.method} trains on the pseudo labels: use masks_only "
                           "(or a weight > 0)", "pseudo_weight")
        if self.rounds > 1 and (self.method == "masks_only" or self.pseudo_weight == 0):
            why = "masks_only" if self.method == "masks_only" else "semi.pseudo_weight 0"
            raise _invalid(f"is {self.rounds}, but with {why} no round reads the unmasked images' labels, "
                           "so a later round would train on what the first did: use rounds 1", "rounds")
        if self.choice != "random" and not isinstance(self.masks, int):
            raise _invalid(f"is {self.choice}, but semi.masks is a list of ids: the choice orders a count's images "
                           "(use a count, or choice random)", "choice")
        if self.rounds > 1 and self.relabel_weight == 0:
            raise _invalid(f"is 0, but semi.rounds {self.rounds} relabels the unmasked images for the later rounds "
                           "to learn from: give it a weight > 0, or use rounds 1", "relabel_weight")
        return self


class Scaleout(Section):
    """How per-image stages run (wsss/scaleout/): in this process as shipped, or as chunks on a Dask
    cluster. Outputs are identical either way, so dvc.yaml tracks none of these keys."""
    engine: Literal["local", "dask"] = "local"
    address: str = Field("", pattern=r"^((tcp|tls|ucx|inproc|ws|wss)://\S+)?$")   # empty: a LocalCluster here
    workers: int = Field(0, ge=0, le=1024)      # LocalCluster worker processes; 0: cores // worker_threads
    worker_threads: int = Field(1, ge=1, le=256)   # torch threads of each Dask worker (one chunk at a time each)
    retries: int = Field(2, ge=0, le=100)       # a chunk that failed or whose worker died runs again this often
    chunk_size: Count = 32   # images per chunk where the output is not sharded (val scoring, predict)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> "Scaleout":
        if self.address and self.engine != "dask":
            raise _invalid("is set, but scaleout.engine is 'local': set scaleout.engine=dask to use it "
                           "(or leave the address empty)", "address")
        return self


class Pretrain(Section):
    """Self-supervised backbone pretraining on the dataset's images (wsss/pretraining/simclr.py: SimCLR)."""

    enabled: bool = False
    backbone: Backbone = "efficientnet_lite0"   # must be the backbone of the network that starts from it
    output_stride: Literal[8, 16, 32] = 32      # the embedding is global: no dilation needed (vgg16: 8)
    start: Literal["imagenet", "scratch"] = "imagenet"
    epochs: Epochs = 20
    batch_size: int = Field(32, ge=2, le=4096)  # images per step (2 views each: 2 x batch_size - 2 negatives)
    image_size: int = Field(112, ge=32, le=1024)
    lr: float = Field(1e-4, ge=0.0, le=10.0)      # imagenet start: gentle; scratch: ~1e-3
    weight_decay: float = Field(1e-6, ge=0.0, le=1.0)
    temperature: float = Field(0.2, ge=0.01, le=10.0)
    projection_dim: Channels = 128
    held: int = Field(32, ge=2, le=100_000)     # images kept out of training for the collapse check
    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    precision: Precision = "fp32"
    num_workers: int = Field(0, ge=0, le=64)


class Search(Section):
    """Image search and the near-duplicate report (`python -m wsss.commands search / near-duplicates`,
    wsss/retrieval/): commands, not stages, so dvc.yaml tracks none of these keys."""
    network: Literal["classifier", "imagenet"] = "classifier"
    method: Literal["sba", "spoc", "mac", "rmac"] = "sba"
    long_side: int = Field(384, ge=32, le=4096)
    detectors: int = Field(100, ge=1, le=4096)
    selection: Literal["variance", "frequency"] = "variance"
    power: float = Field(0.5, gt=0.0, le=4.0)
    aggregate: Literal["concat", "sum"] = "sum"
    centre_prior: bool = True
    rmac_levels: int = Field(3, ge=1, le=8)
    whiten_dim: int = Field(0, ge=0, le=65536)
    duplicate_whiten_dim: int = Field(256, ge=0, le=65536)
    select_images: Count = 512
    batch_size: int = Field(8, ge=1, le=1024)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    index: str = "artifacts/search/index.npz"
    threshold: float = Field(0.75, ge=-1.0, le=1.0)


class Params(Section):
    profile: str = Field("cpu", pattern=r"^[a-z0-9_]+$")
    data: Data = Data()
    demo: Demo = Demo()
    pretrain: Pretrain = Pretrain()
    classifier: Classifier = Classifier()
    maps: Maps = Maps()
    refiner: Refiner = Refiner()
    rounds: dict[str, Round] = {"r1": Round(maps="artifacts/refined_maps")}   # rounds before the last: r1, r2, ...
    pseudo_labels: PseudoLabels = PseudoLabels()
    segmenter: Segmenter = Segmenter()
    reference: Reference = Reference()
    semi: Semi = Semi()
    distributed: Distributed = Distributed()
    scaleout: Scaleout = Scaleout()
    search: Search = Search()

    @model_validator(mode="after")
    def _batch_split(self) -> "Params":
        """Each training section's batch_size is the global batch: it must split evenly over the processes."""
        n = self.distributed.nproc_per_node
        for name in ("classifier", "refiner", "segmenter"):
            if getattr(self, name).batch_size % n:
                raise _invalid(f"{getattr(self, name).batch_size} does not split evenly over the {n} processes of "
                               f"distributed.nproc_per_node (batch_size is the global batch: use a multiple of {n})",
                               f"{name}.batch_size")
        group = self.classifier.group
        if group.enabled and self.classifier.batch_size % (group.size * n):
            raise _invalid(f"{self.classifier.batch_size} is not a whole number of groups of classifier.group.size "
                           f"{group.size}{f' per process ({n} processes)' if n > 1 else ''}: use a multiple of "
                           f"{group.size * n}", "classifier.batch_size")
        if group.enabled and self.maps.group_export == "neighbours" and self.maps.method == "prm":
            raise _invalid("neighbours works with maps.method cam only (PRM's peaks come from each image alone)",
                           "maps.group_export")
        return self

    @model_validator(mode="after")
    def _round_chain(self) -> "Params":
        """DVC cannot count, so each round names its input (dvc.yaml interpolates it): check the chain."""
        expected = list(MAP_SOURCES)
        for n, (key, spec) in enumerate(self.rounds.items(), 1):
            if key != f"r{n}":
                raise _invalid(f"round {n} must be called r{n}, not {key!r} (rounds run r1, r2, ... in order)",
                               "rounds")
            if spec.maps not in expected:
                raise _invalid(f"{spec.maps!r} must be {' or '.join(map(repr, expected))}", f"rounds.{key}.maps")
            expected = [round_maps(key)]
        if self.pseudo_labels.maps not in expected:
            last = f" (the last round, {list(self.rounds)[-1]}, leaves its maps there)" if self.rounds else ""
            raise _invalid(f"{self.pseudo_labels.maps!r} must be {' or '.join(map(repr, expected))}{last}",
                           "pseudo_labels.maps")
        return self


DEFAULTS: dict = Params().model_dump()   # the built-in defaults: the shipped params.yaml
NAMED = {"rounds"}   # mappings keyed by the user's names: taken whole, never merged key by key

# pydantic's error types, in the words of the messages the old validator gave.
_TYPES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
          "list_type": "list", "model_type": "a mapping"}
_MESSAGES = {
    "greater_than_equal": "{value!r} is below the minimum {ge}",
    "less_than_equal": "{value!r} is above the maximum {le}",
    "string_pattern_mismatch": "{value!r} does not match {pattern}",
    "too_short": "expected {min_length} items, got {actual_length}",
    "too_long": "expected at most {max_length} items, got {actual_length}",
    "finite_number": "must be a finite number",
}


def _schema_at(loc: tuple) -> Any:
    """The model or type the schema holds at loc (a list index steps into the item type)."""
    node = Params
    for part in loc:
        if get_origin(node) is dict:   # a named mapping (rounds): step into its value type
            node = get_args(node)[1]
            continue
        node = get_args(node)[0] if isinstance(part, int) else node.model_fields[part].annotation
        node = get_args(node)[0] if get_origin(node) is Annotated else node
    return node


def _message(err: dict) -> str:
    """One pydantic error as `dotted.key: what is wrong`."""
    loc, kind, value, ctx = err["loc"], err["type"], err["input"], err.get("ctx", {})
    if kind == "params" and ctx["field"]:
        loc += (ctx["field"],)
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "params"
    if kind == "extra_forbidden" and tuple(loc) == ("pseudo_labels", "source"):
        msg = "replaced by pseudo_labels.maps (refined: artifacts/refined_maps, raw: artifacts/maps)"
    elif kind == "extra_forbidden":
        msg = f"unknown key (known here: {', '.join(sorted(_schema_at(loc[:-1]).model_fields))})"
    elif kind in _TYPES:
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        msg = f"expected {_TYPES[kind]}, got {got} ({value!r})"
    elif kind == "literal_error":
        msg = f"{value!r} is not one of {list(get_args(_schema_at(loc)))}"
    elif kind == "too_short" and ctx["actual_length"] == 0:
        msg = "must not be empty"
    else:
        msg = _MESSAGES[kind].format(value=value, **ctx) if kind in _MESSAGES else err["msg"]
    return f"{key}: {msg}"


def _check(raw: Any) -> dict:
    """Validated params as a plain dict of builtins (lists stay lists, floats are floats)."""
    try:
        return Params.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise ParamsError("; ".join(_message(e) for e in exc.errors())) from None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in NAMED:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(params: dict, assignment: str) -> dict:
    """Apply `a.b.c=value` (value parsed as YAML) to a copy of params."""
    if "=" not in assignment:
        raise ParamsError(f"override {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    out = copy.deepcopy(params)
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
    return out


def _changed(params: dict, defaults: dict) -> dict:
    """The leaves of (validated) params that differ from defaults."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and key not in NAMED:
            if sub := _changed(value, defaults[key]):
                out[key] = sub
        elif value != defaults[key]:
            out[key] = value
    return out


def _require_all(raw: dict, defaults: dict, prefix: str = "") -> None:
    """Every key is in params.yaml, default or not: DVC tracks the stages' params there."""
    for key, default in defaults.items():
        if key not in raw and prefix + key != "profile":   # profile may be left out: cpu
            raise ParamsError(f"{prefix}{key}: missing")
        if isinstance(default, dict) and key not in NAMED:
            _require_all(raw[key], default, f"{prefix}{key}.")


def _overlay(profile: str) -> dict:
    """profiles/<profile>.yaml, checked on its own so that its mistakes name the file."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ParamsError(f"profile: no profile {profile!r} (looked for {path})")
    overlay = read_yaml(path, ParamsError) or {}
    try:
        _check(deep_merge(DEFAULTS, overlay) if isinstance(overlay, dict) else overlay)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return overlay


def validate(raw: dict, overrides: Iterable[str] = ()) -> dict:
    """Check params.yaml's content with `key=value` overrides, apply the profile in the order the
    module docstring gives, check the result; returns a new plain dict."""
    if not isinstance(raw, dict):
        raise ParamsError("params: expected a mapping at the top level")
    over = functools.reduce(set_dotted, overrides, {})
    merged = functools.reduce(set_dotted, overrides, raw)   # `rounds.r1.epochs=5` edits r1, keeps its other keys
    over.update({k: merged[k] for k in NAMED & set(over)})   # a named mapping an override touched: taken whole
    given = _check(merged)   # the user's own values, before the profile is read
    _require_all(merged, DEFAULTS)
    explicit = deep_merge(_changed(given, DEFAULTS), over)
    if "rounds" in explicit or "maps" in explicit.get("pseudo_labels", {}):
        # one choice, checked as a chain (_round_chain): a profile must not supply half of it
        explicit["rounds"] = given["rounds"]
        explicit.setdefault("pseudo_labels", {})["maps"] = given["pseudo_labels"]["maps"]
    return _check(deep_merge(deep_merge(DEFAULTS, _overlay(given["profile"])), explicit))


def load(path: str | Path = "params.yaml", overrides: list[str] | tuple = ()) -> dict:
    return validate(read_yaml(path, ParamsError), overrides)
