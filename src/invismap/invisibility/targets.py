"""The predictor's training targets, label-free: the pair score, and where the color detector fails.

``kind: pair`` is the paper's target: the pair score F (:mod:`invismap.invisibility.score`). F is high
wherever thermal sees something the color features do not match, so a predictor that imitates it learns
to light up *objects*, detected or not.

``kind: pair+detectors`` adds what the two detectors the pipeline already has say, still without labels:
the thermal detector (student + teacher heads) finds the objects, the color teacher says which of them it
finds too. Per pair, with ``B_miss`` the confident thermal boxes no color box matches (IoU >= 0.5, same
class after folding, :func:`~invismap.invisibility.evaluate.detected_mask`) and ``B_seen`` the others:

    V = F outside the boxes,  0 inside B_seen,  1 inside B_miss          (B_miss wins where boxes overlap)
    T = l + (1 - l) V,        l = light * (m + k r) / (n + k)

``l`` is the frame's *base rate*: the share of its ``n`` thermal objects the color detector missed (``m``),
shrunk towards the training mean ``r`` with ``k`` pseudo-objects so that a frame with one object does not
say 0 or 1. It teaches the map light: at night the color detector misses most objects, so the whole frame
is less trustworthy, which F (near 0 on empty road by day and by night) never says. ``light = 0`` gives
``T = V``.

Targets are written as a target cache (``NAME.npy`` per pair, see :mod:`invismap.invisibility.predictor`),
with ``evidence.json`` (the thermal boxes and which ones the color detector missed, in image pixels),
``targets.json`` (settings, base rates) and ``prior.npy`` (the mean target, the fixed-prior reference map).

Example:
    >>> F = np.zeros((4, 6), np.float32)
    >>> detector_target(F, np.array([[0, 0, 2, 2], [3, 0, 6, 4]]), np.array([True, False]), 0.2)[:, [0, 4]]
    array([[1. , 0.2],
           [1. , 0.2],
           [0.2, 0.2],
           [0.2, 0.2]], dtype=float32)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from tqdm import tqdm

from invismap.data.dataset import PairDataset, load_pair
from invismap.data.letterbox import Letterbox, apply_letterbox, letterbox_params, map_to_original
from invismap.data.manifest import CLASS_FOLD, ROAD_CLASSES, Manifest, load_manifest, refuse_test_pairs
from invismap.detector.base import Detections
from invismap.errors import InvismapError, file_error
from invismap.invisibility.evaluate import detected_mask
from invismap.io import atomic_write, write_json

KINDS = ("pair", "pair+detectors")
TARGETS_META = "targets.json"
# person, bicycle, car, and motorcycle, bus, truck folded onto them
OBJECT_CLASSES = (*ROAD_CLASSES, *CLASS_FOLD)
EVIDENCE_FILE = "evidence.json"


@dataclass
class TargetConfig:
    """What the predictor learns (the ``target`` section of the predictor config)."""

    kind: Literal["pair", "pair+detectors"] = "pair"
    thermal_conf: float = 0.3  # thermal-detector boxes at or above this score are objects thermal sees
    color_conf: float = 0.25  # color boxes at or above this score are what the color detector shows
    light: float = 0.0  # weight of the frame's base rate of missed objects (0 = none)
    shrinkage: float = 2.0  # k: pseudo-objects pulling each frame's base rate towards the training mean
    # the thermal detector also runs at these sizes when finding the objects (multi-scale, merged before NMS);
    # the color detector runs at one size, as it is deployed, so "missed" means missed by that detector
    thermal_tta_sizes: list[int] = field(default_factory=list)


def check_target_config(cfg: TargetConfig, key: str = "target") -> None:
    """Refuse values no run can use, naming the config key."""
    if cfg.kind not in KINDS:
        raise InvismapError(f"config key '{key}.kind': {cfg.kind!r} is not allowed "
                            f"(one of {', '.join(KINDS)})")
    for name in ("thermal_conf", "color_conf", "light"):
        v = getattr(cfg, name)
        if not 0 <= v <= 1:
            raise InvismapError(f"config key '{key}.{name}': {v!r} is not allowed (a number in [0, 1])")
    if not cfg.shrinkage >= 0:
        raise InvismapError(f"config key '{key}.shrinkage': {cfg.shrinkage!r} is not allowed (a number >= 0)")
    bad = [v for v in cfg.thermal_tta_sizes if isinstance(v, bool) or not (isinstance(v, int) and v >= 32
                                                                             and v % 32 == 0)]
    if bad:
        raise InvismapError(f"config key '{key}.thermal_tta_sizes': {bad[0]!r} is not allowed (multiples of "
                            "32, e.g. [416, 512, 800, 960])")


def check_target_cache(target_dir: str | Path, cfg: TargetConfig) -> None:
    """Refuse a target cache made with other ``target`` settings than the predictor config states: it trains
    on the cache as it is, and records those settings as what it learnt (``kind: pair`` targets use no
    setting but the kind). The canvas is checked pair by pair as the maps are read (:func:`load_target`). A
    cache without ``targets.json`` is not checked."""
    path = Path(target_dir) / TARGETS_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (ValueError, UnicodeDecodeError):
        raise file_error(path, "not readable JSON", "recompute the targets with score-pairs") from None
    made = meta.get("target") if isinstance(meta, dict) else None
    if not isinstance(made, dict):
        return  # written by cache_targets alone: no target settings recorded
    asked = json.loads(json.dumps(asdict(cfg)))
    used = set(asked) if made.get("kind") == "pair+detectors" else {"kind"}
    for key, value in made.items():
        if key in used and key in asked and asked[key] != value:
            raise file_error(path, f"targets were made with target.{key} = {value!r}, the config says "
                                   f"{asked[key]!r}", f"set target.{key}: {value!r}, or recompute them "
                                   "(score-pairs) with the config's target settings")


# ------------------------------------------------------------------------------------------- pure math

def road_boxes(dets: Detections, conf: float) -> np.ndarray:
    """``(N, 5)`` ``[cls, x1, y1, x2, y2]`` of the road objects scored >= ``conf``, classes folded
    onto 0..2."""
    keep = (np.asarray(dets.scores) >= conf) & np.isin(dets.classes, OBJECT_CLASSES)
    cls = np.array([CLASS_FOLD.get(int(c), int(c)) for c in np.asarray(dets.classes)[keep]], np.float32)
    return np.concatenate([cls[:, None], np.asarray(dets.boxes, np.float32).reshape(-1, 4)[keep]], 1)


def missed_by_color(thermal: Detections, color: Detections,
                    cfg: TargetConfig) -> tuple[np.ndarray, np.ndarray]:
    """The confident thermal objects of one pair and which of them the color detector misses.

    Returns:
        ``boxes (N, 4)`` xyxy in the detections' pixels and ``missed (N,)`` bool.
    """
    boxes = road_boxes(thermal, cfg.thermal_conf)
    seen = detected_mask(boxes, color, 0.5, "same_class", CLASS_FOLD, cfg.color_conf)
    return boxes[:, 1:], ~seen


def base_rates(missed: list[np.ndarray], cfg: TargetConfig) -> tuple[list[float], float]:
    """Each frame's shrunk share of missed objects ``(m + k r) / (n + k)``, and the pooled mean ``r``."""
    m = np.array([x.sum() for x in missed], np.float64)
    n = np.array([len(x) for x in missed], np.float64)
    mean = float(m.sum() / n.sum()) if n.sum() else 0.0
    k = cfg.shrinkage
    rates = np.where(n + k > 0, (m + k * mean) / np.maximum(n + k, 1e-12), mean)
    return rates.tolist(), mean


def detector_target(pair_score: np.ndarray, boxes: np.ndarray, missed: np.ndarray,
                    level: float) -> np.ndarray:
    """``T = l + (1 - l) V``; V is F with the thermal objects set to 0 (seen in color) or 1 (missed).

    Args:
        pair_score: ``(H, W)`` F in [0, 1].
        boxes: ``(N, 4)`` xyxy in the same pixels (a box covers the pixels whose centers it holds).
        missed: ``(N,)`` bool, True where the color detector misses the object.
        level: ``l`` in [0, 1], the frame's base level (``light`` x its base rate).

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    from invismap.invisibility.metrics import object_pixel_mask

    v = np.asarray(pair_score, np.float32).copy()
    h, w = v.shape
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    missed = np.asarray(missed, bool).reshape(-1)
    v[object_pixel_mask(boxes[~missed], h, w)] = 0.0
    v[object_pixel_mask(boxes[missed], h, w)] = 1.0
    return np.clip(level + (1.0 - level) * v, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ the target cache

def target_path(target_dir: str | Path, name: str) -> Path:
    """Where the cached target of sample ``name`` lives (path separators in names become ``__``)."""
    return Path(target_dir) / (name.replace("/", "__").replace("\\", "__") + ".npy")


def save_target(target_dir: str | Path, name: str, target: np.ndarray | torch.Tensor) -> Path:
    """Write one ``(H, W)`` (or ``(1, H, W)``) map in [0, 1] as float16 ``NAME.npy``, atomically."""
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    target = np.asarray(target, np.float32).squeeze()
    if target.ndim != 2:
        raise ValueError(f"a target map must be (H, W) or (1, H, W), got {target.shape}")
    path = target_path(target_dir, name)
    with atomic_write(path, "wb") as f:
        np.save(f, np.clip(target, 0, 1).astype(np.float16))
    return path


def load_target(path: Path, lb: Letterbox) -> np.ndarray:
    """A cached map as a float32 ``(H, W)`` canvas of ``lb`` (canvas-sized or original-sized file)."""
    try:
        target = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "no cached target for this pair",
                         "compute the targets for every pair of the manifest first") from None
    except (ValueError, OSError, EOFError) as e:
        raise file_error(path, f"not a readable .npy target ({str(e)[:120]})", "recompute it") from None
    if not isinstance(target, np.ndarray) or not (np.issubdtype(target.dtype, np.floating)
                                                  or np.issubdtype(target.dtype, np.integer)):
        raise file_error(path, f"target holds {getattr(target, 'dtype', type(target).__name__)} values, "
                         "expected numbers in [0, 1]", "recompute it")
    target = np.asarray(target, np.float32).squeeze()
    if target.shape == (lb.height, lb.width):
        pass
    elif target.shape == (lb.orig_h, lb.orig_w):
        target = apply_letterbox(target, lb, pad_value=0)
    else:
        raise file_error(path, f"target is {target.shape[-1]}x{target.shape[0]}, expected the canvas "
                         f"{lb.width}x{lb.height} or the image {lb.orig_w}x{lb.orig_h}",
                         "recompute the targets with the same size/square settings")
    if not np.isfinite(target).all():
        raise file_error(path, "target holds NaN or inf", "recompute it")
    return np.clip(target, 0, 1)


@torch.no_grad()
def cache_targets(base: PairDataset, target_fn: Callable[[dict], torch.Tensor], target_dir: str | Path,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Compute ``target_fn(item)`` for every pair of ``base`` once and store it under ``target_dir``.

    Writes ``NAME.npy`` (float16 canvas) per pair and ``targets.json`` (size, square, count).
    """
    target_dir = Path(target_dir)
    for i in tqdm(range(len(base)), desc="targets", unit="pair", disable=not progress):
        name = base.manifest[i].name
        if not overwrite and target_path(target_dir, name).is_file():
            continue
        save_target(target_dir, name, target_fn(base[i]))
    write_json(target_dir / TARGETS_META, {"size": base.size, "square": base.square, "count": len(base)})
    return target_dir


# ------------------------------------------------------------------------------------------ computing

def pair_target_fn(scorer) -> Callable[[dict], torch.Tensor]:
    """``PairDataset`` item -> ``(1, H, W)`` pair score on the canvas."""
    device = next(scorer.teacher.parameters()).device

    def target(item: dict) -> torch.Tensor:
        return scorer.score_canvas(item["rgb"][None].to(device), item["thermal"][None].to(device)).cpu()

    return target


@torch.no_grad()
def pair_evidence(manifest: Manifest, teacher, thermal_detector, cfg: TargetConfig, size: int,
                  progress: bool = True) -> dict[str, dict]:
    """Per pair: the confident thermal boxes (image pixels) and which ones the color detector misses."""
    from invismap.detector.postprocess import detect

    low = min(cfg.thermal_conf, cfg.color_conf)
    out = {}
    for s in tqdm(manifest, desc="detector evidence", unit="pair", disable=not progress):
        rgb, thermal = load_pair(s)
        color = detect(teacher, [rgb], size=size, conf=low)[0]
        hot = detect(thermal_detector, [thermal], size=size, conf=low, tta_sizes=cfg.thermal_tta_sizes)[0]
        boxes, missed = missed_by_color(hot, color, cfg)
        out[s.name] = {"boxes": np.round(boxes, 2).tolist(), "missed": missed.tolist()}
    return out


def compute_targets(manifest: Manifest, student: str | Path, out: str | Path, size: int,
                    cfg: TargetConfig | None = None, square: bool = False, progress: bool = True) -> Path:
    """Write the target cache of every pair of ``manifest`` (training pairs only) under ``out``.

    Args:
        manifest: the pairs to make targets for; the caller selects the training split.
        student: ``RUN/student.pt`` of a distillation run; its ``thermal_detector.pt`` beside it is the
            thermal detector of ``kind: pair+detectors``.
        out: the target folder (``NAME.npy``, ``targets.json``, ``prior.npy``, ``evidence.json``).
        size, square: the letterbox of the predictor (targets are stored on its canvas).
        cfg: the target kind and its settings.
    """
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.pair import PairScorer

    cfg = cfg or TargetConfig()
    check_target_config(cfg)
    if len(manifest) == 0:
        raise InvismapError(f"{out}: no pairs to compute targets for")
    out = Path(out)
    meta: dict = {"size": size, "square": square, "count": len(manifest), "target": asdict(cfg)}
    try:  # a finished cache of other settings: its maps would be kept as if they were these
        made = json.loads((out / TARGETS_META).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        made = None
    new = json.loads(json.dumps(meta))
    if isinstance(made, dict) and any(k in made and made[k] != new[k] for k in ("size", "square", "target")):
        raise file_error(out, f"holds targets made with other settings (size {made.get('size')}, "
                              f"{(made.get('target') or {}).get('kind', 'pair')} targets)",
                         "choose a new --out, or delete it to recompute")
    scorer = PairScorer.from_checkpoint(student)
    evidence, levels = None, {}
    if cfg.kind == "pair+detectors":
        thermal_detector = load_detector(str(Path(student).parent / "thermal_detector.pt"))
        evidence = pair_evidence(manifest, scorer.teacher, thermal_detector, cfg, scorer.size, progress)
        rates, mean = base_rates([np.array(e["missed"], bool) for e in evidence.values()], cfg)
        levels = {name: cfg.light * r for name, r in zip(evidence, rates)}
        write_json(out / EVIDENCE_FILE, evidence)
        meta.update(mean_miss_rate=mean, objects=sum(len(e["missed"]) for e in evidence.values()),
                    missed=sum(sum(e["missed"]) for e in evidence.values()))
    score = pair_target_fn(scorer)

    def target(item: dict) -> np.ndarray:
        f = score(item)[0].numpy()
        if evidence is None:
            return f
        e = evidence[item["name"]]
        boxes = item["letterbox"].boxes_to_canvas(np.array(e["boxes"], np.float32).reshape(-1, 4))
        return detector_target(f, boxes, np.array(e["missed"], bool), levels[item["name"]])

    cache_targets(PairDataset(manifest, size, square=square), target, out, progress=progress)
    write_json(out / TARGETS_META, meta)
    save_prior(out / PRIOR_FILE, mean_target(manifest, out, size, square, progress=progress))
    return out


PRIOR_FILE = "prior.npy"  # the mean training target, written beside the target cache


def mean_target(manifest: Manifest, target_dir: str | Path, size: int, square: bool = False,
                progress: bool = True) -> np.ndarray:
    """The fixed prior: the mean of the cached targets of ``manifest``'s pairs over the image area.

    Each target (a letterboxed canvas, see :mod:`invismap.invisibility.predictor`) is mapped back to its
    image and resized to the first image's size before averaging, so images of several sizes can be mixed.

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    from invismap.io import read_color

    if len(manifest) == 0:
        raise InvismapError(f"{target_dir}: no pairs to average the training targets over")
    total, shape = None, None
    for s in tqdm(manifest, desc="fixed prior", unit="pair", disable=not progress):
        h, w = read_color(s.color).shape[:2]
        lb = letterbox_params(w, h, size, 32, auto=not square)
        target = map_to_original(load_target(target_path(target_dir, s.name), lb), lb)
        if shape is None:
            shape, total = target.shape, np.zeros(target.shape, np.float64)
        total += (cv2.resize(target, shape[::-1], interpolation=cv2.INTER_AREA) if target.shape != shape
                  else target)
    return (total / len(manifest)).astype(np.float32)


def save_prior(path: str | Path, prior: np.ndarray) -> Path:
    """Write the prior as a float32 ``.npy`` (atomically)."""
    with atomic_write(Path(path), "wb") as f:
        np.save(f, np.asarray(prior, np.float32))
    return Path(path)


def load_prior(path: str | Path) -> np.ndarray:
    """A prior map from ``prior.npy`` or from the target folder holding it: ``(H, W)`` float32 in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        path = path / PRIOR_FILE
    if not path.is_file():
        raise file_error(path, "no fixed prior here",
                         "run score-pairs (it writes prior.npy beside the targets)")
    try:
        prior = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise file_error(path, f"not a readable .npy map ({str(e)[:120]})", "recompute it") from None
    if prior.ndim != 2 or not np.issubdtype(prior.dtype, np.floating) or not np.isfinite(prior).all() \
            or prior.min() < 0 or prior.max() > 1:
        raise file_error(path, f"expected one (H, W) map of values in [0, 1], got {prior.dtype} "
                         f"{prior.shape}", "recompute it with score-pairs")
    return prior.astype(np.float32)


def score_pairs(student: str | Path, data: str | Path, out: str | Path, split: str = "train", size: int = 640,
                cfg: TargetConfig | None = None, progress: bool = True) -> Path:
    """The target cache of every pair of ``split`` (``invismap score-pairs``); never the test split."""
    if split == "test":
        raise InvismapError("targets are training data: score the train split (--split train), "
                            "never the test split that the maps are evaluated on")
    manifest = load_manifest(data).select(split=split)
    if len(manifest) == 0:
        raise InvismapError(f"{data}: no pairs in split '{split}'")
    refuse_test_pairs(manifest, split, data)  # split 'all' of a dataset that has a test split
    return compute_targets(manifest, student, out, size, cfg, progress=progress)


def load_evidence(target_dir: str | Path) -> dict[str, dict] | None:
    """``evidence.json`` of a target folder, or None when its targets did not use the detectors."""
    path = Path(target_dir) / EVIDENCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvismapError(f"{path}: not readable JSON ({str(e)[:120]}); recompute the targets") from None


__all__ = ["EVIDENCE_FILE", "KINDS", "OBJECT_CLASSES", "PRIOR_FILE", "TARGETS_META", "TargetConfig",
           "base_rates", "cache_targets", "check_target_config", "compute_targets", "detector_target",
           "load_evidence", "load_prior", "load_target", "mean_target", "missed_by_color", "pair_evidence",
           "pair_target_fn", "road_boxes", "save_prior", "save_target", "score_pairs", "target_path"]
