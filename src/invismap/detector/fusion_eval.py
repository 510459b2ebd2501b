"""Does the invisibility map make a better fusion of color and thermal detectors? AP50, bootstrap intervals.

On registered pairs, per condition (day, night), four detectors are scored with AP50 (pycocotools, through
:func:`~invismap.detector.evaluate.coco_ap`) against two label sets:

- ``color``: the color detector on the color image;
- ``thermal``: the label-free thermal detector on the thermal image;
- ``constant``: :mod:`invismap.detector.fusion` with one weight ``c`` for every color box;
- ``map:NAME:VARIANT``: map-guided fusion, each color box weighted by ``c * trust(m_b)`` (variants
  ``linear`` and ``power``: the trust form), or also each thermal box by ``1 + beta * m_b``
  (variant ``boost``);
  ``map:NAME`` is the variant that scores best on the train split.

Every weight is chosen on the **train** split (per condition and label set, by AP50 over a grid) and reported
on the **test** split. The label sets are ``thermal`` (the thermal labels) and ``union`` (color and thermal
labels, same-class boxes of IoU >= 0.5 merged: :func:`union_labels`). Intervals: 95% bootstrap over test
images (resampled within the condition; :mod:`invismap.detector.ap_bootstrap` recomputes AP50 on each
resample), the same resamples for every detector, so margins (fused minus the better single detector,
map-guided minus constant fusion) are paired.

Detections and the map's mean inside every color box are computed once per pair
(:func:`compute_pair_records`) and cached (:func:`save_records`, :func:`load_records`).

Example:
    >>> records = compute_pair_records(manifest, load_detector("yolov5n"),  # doctest: +SKIP
    ...                                load_detector("runs/msrs/distill/thermal_detector.pt"),
    ...                                {"predictor":
    ...                                 map_source("predictor:runs/msrs/predictor/predictor.pt")[1]})
    >>> res = evaluate_fusion(records, load_labels(manifest), maps=["predictor"])  # doctest: +SKIP
    >>> print(format_fusion_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from invismap.data.importers.common import box_iou
from invismap.data.manifest import (
    COCO_NAMES,
    ROAD_CLASSES,
    Manifest,
    Sample,
    read_yolo_labels,
    yolo_to_xyxy,
)
from invismap.detector.ap_bootstrap import ap50_replicates, match_at_iou50, mean_over_classes
from invismap.detector.base import Detections, Detector
from invismap.detector.fusion import (
    FusionParams,
    box_map_means,
    color_box_weights,
    fuse_detections,
    thermal_box_weights,
)
from invismap.detector.protocol import ScoringProtocol
from invismap.errors import InvismapError, file_error
from invismap.invisibility.bootstrap import N_BOOT, estimate, format_estimate, resample_weights

log = logging.getLogger(__name__)

LABEL_SETS = ("thermal", "union")
VARIANTS = ("linear", "power", "boost")  # map-guided variants searched (see FusionGrid.guided)
CONDITIONS = ("day", "night")
SINGLE = ("color", "thermal")
RECORDS_FORMAT = 2  # bumped when save_records changes its layout: older caches are recomputed
# (sample, rgb (H, W, 3) uint8, thermal (H, W) uint8) -> (H, W) map in [0, 1]
# (invisibility.evaluate.MapSource)
MapFn = Callable[[Sample, np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------- labels

def union_labels(color: np.ndarray, thermal: np.ndarray, iou_thr: float = 0.5) -> np.ndarray:
    """One label set from color and thermal labels: an object boxed on both images counts once.

    Same-class pairs of IoU >= ``iou_thr`` are matched one to one, highest IoU first, and each matched pair
    becomes the mean of its two boxes; unmatched boxes of either set are kept as they are.

    Args:
        color, thermal: ``(N, 5)`` / ``(M, 5)`` pixel ``[class, x1, y1, x2, y2]`` in the same
            (registered) pixels.
        iou_thr: the IoU at which two boxes are the same object.

    Returns:
        ``(K, 5)`` float32: merged pairs, then thermal-only, then color-only boxes.

    Example:
        >>> c = np.array([[0, 0, 0, 10, 10], [2, 50, 50, 60, 60]])
        >>> t = np.array([[0, 1, 0, 11, 10], [0, 50, 50, 60, 60], [1, 30, 30, 40, 40]])
        >>> union_labels(c, t).tolist()  # the person is merged; the car is not a person; the bicycle stays
        [[0.0, 0.5, 0.0, 10.5, 10.0], [0.0, 50.0, 50.0, 60.0, 60.0], [1.0, 30.0, 30.0, 40.0, 40.0],
         [2.0, 50.0, 50.0, 60.0, 60.0]]
    """
    color = np.asarray(color, np.float64).reshape(-1, 5)
    thermal = np.asarray(thermal, np.float64).reshape(-1, 5)
    iou = box_iou(color[:, 1:], thermal[:, 1:])
    iou[color[:, None, 0] != thermal[None, :, 0]] = -1.0  # only the same class can be the same object
    ci, ti = np.nonzero(iou >= iou_thr)
    used_c, used_t, merged = set(), set(), []
    for k in np.argsort(-iou[ci, ti], kind="stable"):
        i, j = int(ci[k]), int(ti[k])
        if i not in used_c and j not in used_t:
            used_c.add(i)
            used_t.add(j)
            merged.append(np.concatenate([thermal[j, :1], (color[i, 1:] + thermal[j, 1:]) / 2]))
    rest_t = [thermal[j] for j in range(len(thermal)) if j not in used_t]
    rest_c = [color[i] for i in range(len(color)) if i not in used_c]
    return np.array(merged + rest_t + rest_c, np.float32).reshape(-1, 5)


def load_labels(manifest: Manifest) -> dict[str, dict[str, np.ndarray]]:
    """``{name: {"color", "thermal", "union"}}`` pixel labels ``(N, 5)`` of every pair
    (thermal image size)."""
    from invismap.io import image_size

    out = {}
    for s in manifest:
        if s.thermal_labels is None or s.color_labels is None:
            raise file_error(s.thermal if s.thermal_labels is None else s.color, "pair has no labels",
                             "the fusion evaluation needs color and thermal labels for every pair")
        w, h = image_size(s.thermal)
        color = yolo_to_xyxy(read_yolo_labels(s.color_labels), w, h)
        thermal = yolo_to_xyxy(read_yolo_labels(s.thermal_labels), w, h)
        out[s.name] = {"color": color, "thermal": thermal, "union": union_labels(color, thermal)}
    return out


# --------------------------------------------------------------------------------------------- detections

@dataclass
class PairRecord:
    """What fusion needs of one registered pair: both detectors' boxes and the maps' means inside them."""

    name: str
    condition: str
    split: str
    size: tuple[int, int]  # (width, height)
    color: Detections
    thermal: Detections
    color_map_means: dict[str, np.ndarray] = field(default_factory=dict)  # map name -> (N,) per color box
    thermal_map_means: dict[str, np.ndarray] = field(default_factory=dict)  # map name -> (M,) per thermal box


def compute_pair_records(manifest: Manifest, color_detector: Detector, thermal_detector: Detector,
                         maps: Mapping[str, MapFn], protocol: ScoringProtocol = ScoringProtocol(),
                         conf: float = 0.001, classes: Sequence[int] = ROAD_CLASSES,
                         progress: bool = True) -> list[PairRecord]:
    """Run both detectors and every map on every pair of ``manifest``, once.

    Args:
        manifest: registered pairs (color and thermal images of one size, in the same pixels).
        color_detector: run on the color image; thermal_detector: run on the thermal image.
        maps: ``{name: source(sample, rgb, thermal) -> (H, W) map}``
            (see :mod:`invismap.invisibility.sources`).
        protocol: how both detectors run (size, multi-scale sizes, NMS IoU; classes folded onto the
            labels' by default, so that a truck box and a car box of one object fuse).
        conf, classes: detection settings (conf 0.001: YOLOv5's mAP protocol; best class per box).

    Returns:
        One :class:`PairRecord` per pair, in manifest order.
    """
    from invismap.data.dataset import load_pair

    records = []
    for s in tqdm(list(manifest), desc="detect pairs", unit="pair", disable=not progress):
        rgb, thr = load_pair(s)
        color, = protocol.detect(color_detector, [rgb], conf=conf, classes=classes, batch_size=1)
        thermal, = protocol.detect(thermal_detector, [thr], conf=conf, classes=classes, batch_size=1)
        heats = {name: fn(s, rgb, thr) for name, fn in maps.items()}
        records.append(PairRecord(s.name, s.condition, s.split, (rgb.shape[1], rgb.shape[0]), color, thermal,
                                  {m: box_map_means(h, color.boxes) for m, h in heats.items()},
                                  {m: box_map_means(h, thermal.boxes) for m, h in heats.items()}))
    return records


def save_records(path: str | Path, records: Sequence[PairRecord], settings: Mapping) -> None:
    """Write records to one ``.npz`` (no pickles): concatenated boxes with per-pair counts, plus
    ``settings``."""
    from invismap.io import atomic_write

    arrays = {"name": np.array([r.name for r in records]),
              "condition": np.array([r.condition for r in records]),
              "split": np.array([r.split for r in records]),
              "size": np.array([r.size for r in records], np.int64),
              "settings": np.array(json.dumps({**settings, "records_format": RECORDS_FORMAT},
                                              sort_keys=True))}
    for kind in SINGLE:
        dets = [getattr(r, kind) for r in records]
        arrays[f"{kind}_count"] = np.array([len(d) for d in dets], np.int64)
        arrays[f"{kind}_boxes"] = np.concatenate([d.boxes.reshape(-1, 4) for d in dets]).astype(np.float32)
        arrays[f"{kind}_scores"] = np.concatenate([d.scores for d in dets]).astype(np.float32)
        arrays[f"{kind}_classes"] = np.concatenate([d.classes for d in dets]).astype(np.int64)
    for name in records[0].color_map_means if records else ():
        for kind in SINGLE:
            arrays[f"map_{kind}_{name}"] = np.concatenate([getattr(r, f"{kind}_map_means")[name]
                                                           for r in records])
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_records(path: str | Path, settings: Mapping | None = None) -> list[PairRecord] | None:
    """Records from :func:`save_records`; None when the file is missing or was made with other
    ``settings``."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        stored = json.loads(str(z["settings"]))
        if stored.pop("records_format", None) != RECORDS_FORMAT or (
                settings is not None and stored != json.loads(json.dumps(dict(settings)))):
            log.info("%s was computed with other settings or by another version: recomputing", path)
            return None
        data = {k: z[k] for k in z.files}
    split_at = {kind: np.cumsum(data[f"{kind}_count"])[:-1] for kind in SINGLE}
    per_pair = {kind: [np.split(data[f"{kind}_{a}"], split_at[kind]) for a in ("boxes", "scores", "classes")]
                for kind in SINGLE}
    maps = {kind: {k.removeprefix(f"map_{kind}_"): np.split(data[k], split_at[kind]) for k in data
                   if k.startswith(f"map_{kind}_")} for kind in SINGLE}
    return [PairRecord(str(data["name"][i]), str(data["condition"][i]), str(data["split"][i]),
                       (int(data["size"][i, 0]), int(data["size"][i, 1])),
                       *(Detections(*(a[i] for a in per_pair[kind])) for kind in SINGLE),
                       *({m: v[i] for m, v in maps[kind].items()} for kind in SINGLE))
            for i in range(len(data["name"]))]


def cached_pair_records(manifest: Manifest, color: str, thermal_detector: str | Path,
                        map_specs: Mapping[str, str], cache: str | Path,
                        protocol: ScoringProtocol = ScoringProtocol(),
                        progress: bool = True) -> list[PairRecord]:
    """:func:`compute_pair_records` for detectors and map sources given by name, kept in ``cache`` (.npz) and
    read back while the pairs, detectors, maps and protocol stay the same.

    Args:
        color: the color detector (a name or file); thermal_detector: the thermal detector's file.
        map_specs: ``{name: map source spec}``, e.g. ``{"predictor": "predictor:RUN/predictor.pt"}``.
        cache: the ``.npz`` file; protocol: how both detectors run (part of the cache's key).
    """
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.sources import map_source

    settings = {"pairs": [s.name for s in manifest], "color": str(color), "maps": dict(map_specs),
                "thermal_detector": str(Path(thermal_detector).resolve()), **protocol.settings()}
    records = load_records(cache, settings)
    if records is None:
        maps = {m: map_source(spec)[1] for m, spec in map_specs.items()}
        records = compute_pair_records(manifest, load_detector(color), load_detector(str(thermal_detector)),
                                       maps, protocol, progress=progress)
        save_records(cache, records, settings)
    return records


# --------------------------------------------------------------------------------------------- fusion

@dataclass(frozen=True)
class FusionGrid:
    """The weights searched on the train split (every combination)."""

    color_weights: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))
    strengths: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: {
        "linear": (0.25, 0.5, 0.75, 1.0), "power": (0.5, 1.0, 2.0, 4.0), "boost": (0.0, 0.5, 1.0)})
    boosts: tuple[float, ...] = (0.5, 1.0, 2.0)  # beta of the "boost" variant

    def constant(self, base: FusionParams) -> list[FusionParams]:
        return [replace(base, color_weight=c, map_strength=0.0, thermal_boost=0.0)
                for c in self.color_weights]

    def guided(self, base: FusionParams, variant: str) -> list[FusionParams]:
        """``linear``/``power``: c x alpha of that trust form; ``boost``: c x alpha (linear) x beta."""
        if variant == "boost":
            return [replace(base, color_weight=c, map_strength=a, form="linear", thermal_boost=b)
                    for c in self.color_weights for a in self.strengths[variant] for b in self.boosts]
        return [replace(base, color_weight=c, map_strength=a, form=variant, thermal_boost=0.0)
                for c in self.color_weights for a in self.strengths[variant]]


def fuse_record(record: PairRecord, params: FusionParams, map_name: str | None = None) -> Detections:
    """Fused detections of one pair; ``map_name=None`` is constant-weight fusion."""
    if map_name is None:
        means, t_means = np.zeros(len(record.color)), np.zeros(len(record.thermal))
    elif map_name not in record.color_map_means:
        raise KeyError(f"no map {map_name!r} in the records (have {sorted(record.color_map_means)})")
    else:
        means, t_means = record.color_map_means[map_name], record.thermal_map_means[map_name]
    return fuse_detections(record.color, record.thermal, color_box_weights(means, params), record.size,
                           params, thermal_box_weights(t_means, params))


def _method_detections(records: Sequence[PairRecord], method: str,
                       params: FusionParams | None) -> list[Detections]:
    if method in SINGLE:
        return [getattr(r, method) for r in records]
    map_name = None if method == "constant" else method.split(":")[1]
    return [fuse_record(r, params, map_name) for r in records]


def _ap50(records: Sequence[PairRecord], dets: Sequence[Detections], labels, label_set: str,
          classes: Sequence[int]) -> float:
    gts = [labels[r.name][label_set] for r in records]
    m = match_at_iou50(gts, dets, [r.size for r in records], classes)
    return float(mean_over_classes(ap50_replicates(m, np.ones((1, len(records)))))[0])


def choose_on_train(records: Sequence[PairRecord], labels, candidates: Sequence[FusionParams],
                    map_name: str | None, groups: Mapping[str, Sequence[int]], label_sets: Sequence[str],
                    classes: Sequence[int] = ROAD_CLASSES, progress: bool = False) -> dict:
    """The candidate with the highest AP50 on each group (condition) and label set; first one wins ties.

    Returns:
        ``{(group, label_set): (params, ap50)}``.
    """
    best: dict = {}
    for params in tqdm(candidates, desc=f"tune {map_name or 'constant'}", unit="cfg", disable=not progress,
                       leave=False):
        fused = [fuse_record(r, params, map_name) for r in records]
        for g, idx in groups.items():
            for ls in label_sets:
                ap = _ap50([records[i] for i in idx], [fused[i] for i in idx], labels, ls, classes)
                if (g, ls) not in best or ap > best[(g, ls)][1]:
                    best[(g, ls)] = (params, ap)
    return best


# --------------------------------------------------------------------------------------------- evaluation

def evaluate_fusion(records: Sequence[PairRecord], labels: Mapping[str, Mapping[str, np.ndarray]],
                    maps: Sequence[str] = ("predictor",), variants: Sequence[str] = VARIANTS,
                    label_sets: Sequence[str] = LABEL_SETS, conditions: Sequence[str] = CONDITIONS,
                    base: FusionParams | None = None, grid: FusionGrid | None = None,
                    classes: Sequence[int] = ROAD_CLASSES, n_boot: int = N_BOOT, seed: int = 0,
                    train_split: str = "train", test_split: str = "test", progress: bool = True,
                    weights_per: str = "condition") -> dict:
    """Choose fusion weights on the train split, score every detector on the test split with intervals.

    Args:
        records: :func:`compute_pair_records` output for train and test pairs.
        labels: :func:`load_labels` output (every record's name).
        maps: map names in the records' ``color_map_means`` to fuse with (the first is the headline).
        variants: map-guided variants searched for each map (:data:`VARIANTS`, :meth:`FusionGrid.guided`).
        label_sets: ``thermal`` and/or ``union`` (keys of ``labels[name]``).
        conditions: conditions reported; weights are chosen per condition on its train pairs.
        base: method, IoU and skip thresholds of every fusion (default :class:`FusionParams`);
        grid: the weights searched (default :class:`FusionGrid`).
        classes: class ids scored; n_boot, seed: bootstrap replicates and their seed.
        weights_per: ``"condition"``: each condition's weights are chosen on its own train pairs (the scene's
            condition is known when fusing); ``"all"``: one set of weights per method, chosen on the train
            pairs of every condition together (a car that is not told whether it is day or night).

    Returns:
        A JSON-ready dict: settings, and per condition and label set the chosen weights (with train AP50),
        each method's AP50 with 95% interval (mean over classes and per class, in AP points 0..100), the
        better single detector (the higher test AP50: the harder baseline for fusion), and paired margins
        ``fused - best single`` and ``map-guided - constant``.
    """
    base, grid = base or FusionParams(), grid or FusionGrid()
    for m in maps:
        if records and m not in records[0].color_map_means:
            raise InvismapError(f"map {m!r} is not in the cached detections (have "
                                f"{', '.join(records[0].color_map_means) or 'none'})")
    train = [r for r in records if r.split == train_split]
    test = [r for r in records if r.split == test_split]
    groups = {c: [i for i, r in enumerate(train) if r.condition == c] for c in conditions}
    if any(not groups[c] or not any(r.condition == c for r in test) for c in conditions):
        raise InvismapError(f"every condition of {list(conditions)} needs {train_split} "
                            f"and {test_split} pairs")
    if weights_per not in ("condition", "all"):
        raise ValueError(f"weights_per must be 'condition' or 'all', got {weights_per!r}")
    if weights_per == "all":
        groups = {"all": sorted(i for idx in groups.values() for i in idx)}
    tune = {"groups": groups, "label_sets": label_sets, "classes": classes, "progress": progress}
    chosen = {"constant": choose_on_train(train, labels, grid.constant(base), None, **tune)}
    for m in maps:
        per_variant = {v: choose_on_train(train, labels, grid.guided(base, v), m, **tune) for v in variants}
        chosen.update({f"map:{m}:{v}": per_variant[v] for v in variants})
        # the headline per map: the variant (and its weights) with the best train AP50
        chosen[f"map:{m}"] = {key: max((per_variant[v][key] for v in variants), key=lambda pa: pa[1])
                              for key in per_variant[variants[0]]}
    grid_settings = {"color_weights": list(grid.color_weights),
                     "strengths": {v: list(grid.strengths[v]) for v in variants},
                     "boosts": list(grid.boosts)}
    out = {"settings": {"base": asdict(base), "grid": grid_settings,
                        "maps": list(maps), "variants": list(variants), "classes": list(classes),
                        "n_boot": n_boot, "seed": seed, "level": 0.95,
                        "train_split": train_split, "test_split": test_split, "weights_per": weights_per},
           "conditions": {}}
    for c in conditions:
        cond_test = [r for r in test if r.condition == c]
        # (R, N), shared by every method
        weights = resample_weights([np.arange(len(cond_test))], n_boot, seed)
        g = c if weights_per == "condition" else "all"
        out["conditions"][c] = {"n_train": len(groups[g]), "n_test": len(cond_test),
                                "label_sets": {ls: score_methods(cond_test, labels, ls, {m: chosen[m][(g, ls)]
                                                                                           for m in chosen},
                                                                 weights, classes) for ls in label_sets}}
    return out


def chosen_params(path: str | Path, condition: str, label_set: str = "thermal",
                  method: str = "constant") -> FusionParams:
    """The fusion weights a fusion run chose on its train split (``fusion.json``, from
    :func:`evaluate_fusion`) for ``condition``, ``label_set`` and ``method`` (``constant``,
    ``map:predictor``, ``map:pair``, ...): what ``invismap detect --weights-from`` fuses with."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "fusion results not found", "run the pipeline's fusion stage "
                         "(fusion.enabled: true) and give RUN/fusion/fusion.json")
    try:
        conditions = json.loads(path.read_text())["conditions"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise file_error(path, "not a fusion.json (no 'conditions')",
                         "give RUN/fusion/fusion.json, written by the pipeline's fusion stage") from None
    if condition not in conditions:
        raise file_error(path, f"no weights for condition {condition!r} (it has {', '.join(conditions)})",
                         "choose one of those with --condition")
    label_sets = conditions[condition].get("label_sets", {})
    if label_set not in label_sets:
        raise file_error(path, f"no weights for label set {label_set!r} (it has {', '.join(label_sets)})",
                         "choose one of those with --label-set")
    chosen = label_sets[label_set].get("chosen", {})
    if method not in chosen:
        raise file_error(path, f"no weights for {method!r} (it has {', '.join(chosen)})",
                         "give the --map the run fused with ('none' for constant)")
    names = {f.name for f in fields(FusionParams)}
    return FusionParams(**{k: v for k, v in chosen[method].items() if k in names})


def score_methods(records: Sequence[PairRecord], labels, label_set: str, chosen: Mapping[str, tuple],
                  weights: np.ndarray, classes: Sequence[int] = ROAD_CLASSES) -> dict:
    """Test AP50 with intervals of the single detectors and of each fusion, and the paired margins.

    Args:
        records: the test pairs of one condition.
        chosen: ``{method: (FusionParams, train AP50)}`` for each fusion method.
        weights: ``(R, N)`` bootstrap multiplicities of ``records``, the same for every method.
    """
    from invismap.detector.evaluate import coco_ap

    gts = [labels[r.name][label_set] for r in records]
    sizes = [r.size for r in records]
    res, points, reps = {}, {}, {}
    for method in (*SINGLE, *chosen):
        dets = _method_detections(records, method, chosen[method][0] if method in chosen else None)
        point = coco_ap(gts, dets, sizes, classes)
        per_class = ap50_replicates(match_at_iou50(gts, dets, sizes, classes),
                                    np.vstack([np.ones(len(records)), weights]))
        if not np.isclose(mean_over_classes(per_class[:1])[0], point["AP50"], atol=1e-9, equal_nan=True):
            raise AssertionError(f"bootstrap AP50 of {method} disagrees with coco_ap")  # a bug, not bad input
        points[method], reps[method] = point["AP50"], mean_over_classes(per_class[1:])
        res[method] = {"AP50": _pct(estimate(point["AP50"], reps[method])),
                       "classes": {COCO_NAMES[k]: {**_pct(estimate(point["classes"][COCO_NAMES[k]]["AP50"],
                                                                   per_class[1:, j])),
                                                   "n_gt": point["classes"][COCO_NAMES[k]]["n_gt"]}
                                   for j, k in enumerate(classes)}}
    best = max(SINGLE, key=lambda m: points[m])

    def margin(a: str, b: str) -> dict:
        return _pct(estimate(points[a] - points[b], reps[a] - reps[b]))

    return {"methods": res, "best_single": best,
            "chosen": {m: {**asdict(p), "train_AP50": round(100 * ap, 2)} for m, (p, ap) in chosen.items()},
            "margins": {"fused_minus_best_single": {m: margin(m, best) for m in chosen},
                        "map_minus_constant": {m: margin(m, "constant")
                                               for m in chosen if m.startswith("map:")}}}


def _pct(est: Mapping) -> dict:
    """An :func:`estimate` in AP points (0..100), two decimals."""
    return {k: (None if v is None else round(100 * v, 2)) for k, v in est.items()}


# --------------------------------------------------------------------------------------------- report

def format_fusion_table(result: Mapping) -> str:
    """Plain-text tables of :func:`evaluate_fusion`: AP50 [95% CI] per method and class, then the margins."""
    def ci(e: Mapping) -> str:
        return format_estimate(e, "5.1f")

    lines = []
    for c, cond in result["conditions"].items():
        for ls, block in cond["label_sets"].items():
            names = list(next(iter(block["methods"].values()))["classes"])
            every = " of every condition" if result["settings"].get("weights_per") == "all" else ""
            lines.append(f"\n== {c}, {ls} labels ({cond['n_test']} test pairs; weights chosen on "
                         f"{cond['n_train']} train pairs{every}) ==")
            lines.append(f"{'method':<24} {'AP50 [95% CI]':>22} " + " ".join(f"{n:>22}" for n in names)
                         + "  chosen on train")
            for m, r in block["methods"].items():
                p = block["chosen"].get(m)
                how = "" if p is None else (f"c={p['color_weight']:g}"
                                            + (f" {p['form']} a={p['map_strength']:g}"
                                               if m.startswith("map:") else "")
                                            + (f" boost={p['thermal_boost']:g}" if p["thermal_boost"] else "")
                                            + f" (train {p['train_AP50']:.1f})")
                lines.append(f"{m:<24} {ci(r['AP50']):>22} "
                             + " ".join(f"{ci(r['classes'][n]):>22}" for n in names)
                             + f"  {how}")
            lines.append(f"margins (AP50 points, paired bootstrap; best single = {block['best_single']}):")
            for kind, title in (("fused_minus_best_single", "- best single"),
                                ("map_minus_constant", "- constant")):
                for m, e in block["margins"][kind].items():
                    lines.append(f"  {m + ' ' + title:<38} {ci(e):>22}")
    return "\n".join(lines)


__all__ = ["CONDITIONS", "LABEL_SETS", "VARIANTS", "FusionGrid", "PairRecord", "cached_pair_records",
           "choose_on_train",
           "compute_pair_records", "evaluate_fusion", "format_fusion_table", "fuse_record", "load_labels",
           "load_records", "save_records", "union_labels"]
