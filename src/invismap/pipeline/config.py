"""The config of one whole experiment (``invismap run CONFIG.yaml``): every stage's settings in one file.

Each stage section is that stage's own config (:class:`DistillConfig`, :class:`PredictorConfig`,
:class:`AlignConfig`); fields that name inputs (``data``, ``targets``) are filled in by the pipeline from
the upstream stages' outputs, so a user never writes paths between stages. An empty ``data.src`` means the
assets dataset of that name (``$INVISMAP_ASSETS/data/msrs``); ``$VAR`` in it is expanded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invismap.align.run import AlignConfig
from invismap.config import added_key, apply_overrides, from_dict, load_yaml
from invismap.detector.postprocess import NMS_IOU
from invismap.distill.run import DistillConfig
from invismap.errors import InvismapError
from invismap.invisibility.predictor import PredictorConfig


@dataclass
class MoreData:
    """One more pair dataset of an experiment (``data.more``)."""

    format: str = "roadscene"  # an importer (invismap data import FORMAT)
    src: str = ""  # its folder; empty = the assets dataset of that name
    options: dict[str, Any] | None = added_key(None)  # its importer's options (as data.options)


@dataclass
class DataSection:
    """Which pair dataset to import (``invismap data import FORMAT SRC``)."""

    format: str = "msrs"
    # the dataset's folder; empty = the assets dataset named like the format (see `invismap assets`)
    src: str = ""
    # options of the format's importer for another layout (invismap data import --option KEY=VALUE), e.g.
    # FLIR ADAS v1: {thermal_dir: train/thermal_16_bit, thermal_suffix: "", color_dir: train/RGB, ...}
    options: dict[str, Any] | None = added_key(None)
    max_pairs: int = 0  # keep at most this many pairs per (split, condition), evenly spaced; 0 = all
    # how the import checks the images (of this dataset and data.more): decode (every image in full) or header
    # (sizes from the file headers only, for large sets; pixel data is checked when training reads it)
    check: str = "decode"
    # more pair datasets (e.g. [{format: roadscene}]): imported beside this one, their training-split pairs
    # are distilled on too (distill.conditions), and the thermal detector is scored on each one's
    # evaluate.split.
    # They are not registered (registration measures this dataset's offset) and do not train the predictor.
    more: list[MoreData] = field(default_factory=list)


@dataclass
class DisplacementSection:
    """Residual color/thermal misalignment of the imported pairs (``invismap displacement``)."""

    enabled: bool = True
    split: str = "train"  # measure on training pairs only: the measured offset may be used to correct all
    max_pairs: int = 40  # evenly spaced pairs (0 = all)


@dataclass
class RegisterSection:
    """Remove the measured global color offset from every pair (``invismap register --offset-from``)."""

    enabled: bool = False
    # which measured offset of the displacement stage to remove (see registration.run.load_offset):
    # edge_ncc_per_box matches each thermal object's edges in the color image (found -3.3 px in y on MSRS)
    offset: str = "edge_ncc_per_box"


@dataclass
class AlignSection:
    """Train AlignGAN on the (registered) pairs and align every pair's color image with it."""

    enabled: bool = False
    gan: AlignConfig = field(default_factory=AlignConfig)


@dataclass
class OtherData:
    """Another camera's pairs, scored with the models trained on this experiment's data only."""

    format: str = "roadscene"  # an importer (invismap data import FORMAT)
    src: str = ""  # its folder; empty = the assets dataset of that name
    split: str = "all"  # which of its pairs to score (all: nothing was trained on them)
    options: dict[str, Any] | None = added_key(None)  # its importer's options (as data.options)


@dataclass
class EvaluateSection:
    """Evaluation of the thermal detector and of the invisibility maps."""

    split: str = "test"
    conditions: list[str] = field(default_factory=lambda: ["day", "night"])
    conf: float = 0.25  # color detector confidence that counts an object as 'detected'
    # the color detector's input size (longest side) when deciding which objects it misses; the paper's
    # YOLOv3 runs at 416 (configs/paper-yolov3.yaml)
    detector_size: int = 640
    tau: float = 0.35  # the paper's score threshold
    # map sources scored beside the predictor, pair score and fixed prior (invisibility/sources.py)
    baselines: list[str] = field(default_factory=lambda: ["darkness", "contrast", "random", "oracle"])
    references: list[str] = field(default_factory=lambda: ["prior", "darkness"])  # paired margins over these
    bootstrap: int = 1000  # resamples over images for the 95% intervals
    # other cameras to score the maps on (e.g. [{format: roadscene}]): a user's camera is never the training
    # one
    other: list[OtherData] = field(default_factory=list)
    max_pairs: int = 0  # evaluate at most this many pairs per condition (0 = all)
    layers: bool = True  # also score with each neck scale alone (the layer ablation of the pair score)
    # multi-scale test-time augmentation when detectors are scored (eval_detector, experiments, fusion): each
    # image is also run at these sizes and all candidates merged before NMS, e.g. [416, 512, 800, 960]
    tta_sizes: list[int] = field(default_factory=list)
    # detectors are scored with COCO's truck and bus counted as car and motorcycle as bicycle (the datasets'
    # label classes; data.manifest.CLASS_FOLD); false: strict COCO classes, as upstream YOLOv5 scores
    fold_classes: bool = True
    # NMS IoU threshold when detectors are scored and fused (0.45: YOLOv5's detect.py); candidates of several
    # sizes overlap more, and merge best a little lower (configs/msrs.yaml)
    nms_iou: float = NMS_IOU


@dataclass
class ExperimentsSection:
    """The paper's ablations; each variant is a full distillation run (the slow part)."""

    losses: list[str] = field(default_factory=list)  # e.g. [head, "mid+head 0.1"] (see distill.experiments)
    pairs: list[int] = field(default_factory=list)  # the number-of-pairs curve, e.g. [25, 50]
    alignment: bool = False  # distil once more on the pairs without registration/alignment (or with, if off)
    # the 'geometry' stage, 0 = off: the weak-alignment benchmark (registration.experiment) on this many
    # evaluation pairs, each color image moved by a known random field and recovered by the homography
    # (and AlignGAN if enabled)
    geometry_pairs: int = 0
    max_steps: int = 0  # steps of each variant (0 = the distill section's)
    # distillation variants, name -> overrides of the distill section (e.g. [loss=head, train.ema=0.99]), each
    # a full run scored like the main one; choose by the 'select night' column (the training split's night
    # pairs)
    detector: dict[str, list[str]] = field(default_factory=dict)
    # the main distillation again with these seeds: mean and std
    seeds: list[int] = field(default_factory=list)
    # the 'predictor_cv' stage: predictor variants, name -> overrides of the predictor section (e.g.
    # ["model=neck", "target.kind=pair+detectors"]), cross-validated on the training split (which one to ship)
    predictor: dict[str, list[str]] = field(default_factory=dict)
    folds: int = 4  # folds of that cross-validation


@dataclass
class FusionSection:
    """Color and thermal detections fused, each color box weighted by the map (``detector/fusion.py``)."""

    enabled: bool = False
    maps: list[str] = field(default_factory=lambda: ["predictor", "pair"])  # maps that weight color boxes
    method: str = "wbf"  # wbf (weighted box fusion) or nms (score-aware)
    iou: float = 0.55  # IoU at which a color and a thermal box are one object
    # weights chosen per 'condition' (the scene's day/night label is known when fusing) or once for 'all'
    # scenes (a car that is not told)
    weights_per: str = "condition"


@dataclass
class ReportSection:
    gallery: int = 3  # gallery rows per condition


@dataclass
class PipelineConfig:
    """One experiment, from pairs to report."""

    name: str = ""  # shown in the report; default: the config file's name
    out: str = ""  # output folder; default runs/<config name>
    # torch CPU threads (0 = torch's default, one per core). On a small shared machine 1 is safer: with other
    # jobs running, two-thread torch stalls (measured here: 0.7 s -> 10 s per distillation step).
    threads: int = 0
    # processes per training stage (distill, predictor): > 1 runs `torchrun --standalone --nproc_per_node N`
    # (gloo on CPU, NCCL on GPUs: at most one per GPU). train.batch_size stays the global batch, so the
    # weights match one process up to rounding; like threads, it says how to run, not what (not hashed).
    nproc: int = 1
    data: DataSection = field(default_factory=DataSection)
    displacement: DisplacementSection = field(default_factory=DisplacementSection)
    register: RegisterSection = field(default_factory=RegisterSection)
    align: AlignSection = field(default_factory=AlignSection)
    distill: DistillConfig = field(default_factory=DistillConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    experiments: ExperimentsSection = field(default_factory=ExperimentsSection)
    fusion: FusionSection = field(default_factory=FusionSection)
    report: ReportSection = field(default_factory=ReportSection)


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied; nested sections merge key by key."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config's YAML; with ``base: other.yaml`` (relative to it), that file's settings under this one's."""
    path = Path(path)
    if path.resolve() in seen:
        raise InvismapError(f"{path}: 'base' chain loops back to itself")
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise InvismapError(f"{path}: 'base' must be a file name, got {base!r}")
    return merge(read_with_base(path.parent / base, seen + (path.resolve(),)), data)


def _stage_config_hint(data: dict) -> str:
    """A hint when a single stage's config is given to ``invismap run`` (a common mix-up)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    for cls, command in ((DistillConfig, "invismap distill"), (PredictorConfig, "invismap train-predictor"),
                         (AlignConfig, "invismap align-train")):
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known and set(data) <= fields:
            return (f"; this looks like a config for '{command}', "
                    "not a pipeline config such as configs/demo.yaml")
    return ""


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """The typed config of ``path`` (+ ``key=value`` overrides), with name, out and data.src resolved.

    A config may start from another with ``base: msrs.yaml`` and change only what differs.
    """
    data = apply_overrides(read_with_base(Path(path)), overrides or [])
    try:
        cfg = from_dict(PipelineConfig, data)
    except InvismapError as e:
        raise InvismapError(f"{path}: {e}{_stage_config_hint(data)}") from None
    cfg.name = cfg.name or Path(path).stem
    cfg.out = cfg.out or str(Path("runs") / Path(path).stem)
    cfg.data.src = resolve_src(path, "data.src", cfg.data.src, cfg.data.format)
    for i, more in enumerate(cfg.data.more):
        more.src = resolve_src(path, f"data.more[{i}].src", more.src, more.format)
    for i, other in enumerate(cfg.evaluate.other):
        other.src = resolve_src(path, f"evaluate.other[{i}].src", other.src, other.format)
    return cfg


def resolve_src(path: str | Path, key: str, src: str, fmt: str) -> str:
    """A dataset folder: ``$VAR`` expanded, or the assets dataset named like the format when empty."""
    if src:
        out = os.path.expandvars(src)
        if "$" in out:
            raise InvismapError(f"{path}: {key} '{src}' names an unset environment variable")
        return out
    from invismap.assets import find_asset

    return str(find_asset(fmt))
