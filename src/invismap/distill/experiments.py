"""The paper's distillation experiments as one command each (Tables 1 and 2 on the user's data).

- ``ablation``: loss variants mid / head / mid+head (lambda 0.05, 0.1, 1.0);
- ``pairs``: the number-of-pairs curve (e.g. 25, 50, all daytime pairs);
- ``variants``: any distill settings, name -> overrides (``["loss=head", "train.ema=0.99"]``);
- ``seeds``: the base config again with other seeds, and the mean and standard deviation of every column.

Each variant is a full distillation run; its thermal detector is evaluated on thermal images against thermal
labels of the test split, day and night separately, beside the two baselines (the teacher run directly on the
thermal images, and the teacher on the color images), and on the test split of each ``more`` dataset (another
camera: columns ``NAME day``, ``NAME night``). Writes ``table.md`` and ``table.json``.

Choosing a variant by its test AP would be tuning on the test set. Distillation only sees *daytime*
training pairs, so the night pairs of the training split are unseen by every student: the ``select night``
column (AP50 on them) is the one to choose a variant by; the test columns are the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from invismap.config import apply_overrides, from_dict, to_dict
from invismap.data.manifest import COCO_NAMES, ROAD_CLASSES, load_manifest
from invismap.detector.evaluate import LabelledDetections, coco_ap, detect_labelled
from invismap.detector.protocol import ScoringProtocol
from invismap.detector.zoo import load_detector
from invismap.distill.run import DistillConfig, run_distill, split_pairs
from invismap.engine.distributed import world_size
from invismap.engine.rundir import can_resume
from invismap.errors import InvismapError
from invismap.io import atomic_write, write_json

log = logging.getLogger(__name__)

LOSS_VARIANTS = {"mid": {"loss": "mid"}, "head": {"loss": "head"},
                 "mid+head 0.05": {"loss": "mid+head", "head_weight": 0.05},
                 "mid+head 0.1": {"loss": "mid+head", "head_weight": 0.1},
                 "mid+head 1.0": {"loss": "mid+head", "head_weight": 1.0}}


def detector_scores(model, manifest, images: str, split: str, protocol: ScoringProtocol = ScoringProtocol(),
                    select_split: str | None = "train") -> dict[str, Any]:
    """AP50 (x100) per class and mean over person/bicycle/car, day and night, against thermal labels, every
    detector run under ``protocol``.

    With ``select_split``, also ``select night``: AP50 on that split's night pairs (for model selection).
    """
    return scored_detections(model, manifest, images, split, protocol, select_split)[0]


def scored_detections(model, manifest, images: str, split: str, protocol: ScoringProtocol = ScoringProtocol(),
                      select_split: str | None = "train",
                      ) -> tuple[dict[str, Any], dict[str, LabelledDetections]]:
    """:func:`detector_scores`' row, and the detections it scored per condition of ``split`` (for
    intervals: :func:`~invismap.detector.ap_bootstrap.ap50_estimates`)."""
    row: dict[str, Any] = {}
    if select_split and manifest.select(condition="night", split=select_split).samples:
        found = detect_labelled(model, manifest, images=images, labels="thermal", condition="night",
                                split=select_split, protocol=protocol, progress=False)
        row["select night"] = round(100 * coco_ap(found.ground_truth, found.detections,
                                                  found.image_sizes)["AP50"], 1)
    kept = {}
    for condition in ("day", "night"):
        kept[condition] = found = detect_labelled(model, manifest, images=images, labels="thermal",
                                                  condition=condition, split=split, protocol=protocol,
                                                  progress=False)
        r = coco_ap(found.ground_truth, found.detections, found.image_sizes)
        row[condition] = round(100 * r["AP50"], 1)
        for name, v in r["classes"].items():
            row[f"{condition} {name}"] = round(100 * v["AP50"], 1)
    return row, kept


def variant_config(base: DistillConfig, changes: dict | list[str]) -> DistillConfig:
    """``base`` with ``changes``: top-level values (a dict) or ``key.sub=value`` overrides (a list)."""
    data = to_dict(base)
    if isinstance(changes, dict):
        data.update(changes)
    else:
        data = apply_overrides(data, list(changes))
    return from_dict(DistillConfig, data, "distill")


def variant_dir(out_dir: str | Path, name: str) -> Path:
    """The run folder of variant ``name`` (e.g. ``mid+head 0.1`` -> ``OUT/midphead_0.1``)."""
    return Path(out_dir) / name.replace(" ", "_").replace("+", "p")


def run_experiment(kind: str, base: DistillConfig, out_dir: str | Path, pair_counts: list[int] | None = None,
                   eval_split: str = "test", protocol: ScoringProtocol = ScoringProtocol(),
                   losses: list[str] | None = None,
                   variants: Mapping[str, list[str]] | None = None, seeds: list[int] | None = None,
                   more: Mapping[str, str | Path] | None = None, runs_dir: str | Path | None = None,
                   score: bool = True, train: bool = True) -> list[dict[str, Any]]:
    """Run every variant of ``kind`` (``ablation``, ``pairs``, ``variants`` or ``seeds``), evaluate, write the
    tables.

    ``losses`` limits the ablation to those variants of :data:`LOSS_VARIANTS`; ``variants`` (kind
    ``variants``) maps names to overrides of ``base``; ``seeds`` (kind ``seeds``) are the seeds to train
    ``base`` with. ``more``: other datasets (name -> manifest) scored on their ``eval_split`` too;
    ``protocol``: how every detector is run when scored (:func:`detector_scores`). Each variant
    trains in its folder under ``runs_dir`` (default ``out_dir``); one whose folder already holds
    ``thermal_detector.pt`` is evaluated, not trained again. ``score=False`` only trains (no tables; one row
    per variant with its training time); ``train=False`` only scores, and refuses a variant not trained yet.
    """
    if world_size() > 1:  # its evaluation reads each variant's files, which only rank 0 writes
        raise InvismapError("distill-experiment runs as one process, not under torchrun; start it without "
                            "torchrun ('invismap distill' runs under torchrun for one variant)")
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir
    manifest = load_manifest(base.data)
    if kind == "ablation":
        unknown = [v for v in losses or [] if v not in LOSS_VARIANTS]
        if unknown:
            raise InvismapError(f"unknown loss variant '{unknown[0]}' (known: {', '.join(LOSS_VARIANTS)})")
        variants = {k: v for k, v in LOSS_VARIANTS.items() if not losses or k in losses}
    elif kind == "pairs":
        n_all = len(split_pairs(manifest, base)[0]) if not base.max_pairs else base.max_pairs
        counts = [c for c in (pair_counts or [25, 50, 100, 200]) if c < n_all] + [n_all]
        variants = {f"{c} pairs": {"max_pairs": c} for c in counts}
    elif kind == "variants":
        variants = dict(variants or {})
    elif kind == "seeds":
        variants = {f"seed {s}": [f"train.seed={s}"] for s in seeds or []}
    else:
        raise ValueError(f"unknown experiment {kind!r}")
    untrained = [n for n in variants if not (variant_dir(runs_dir, n) / "thermal_detector.pt").is_file()]
    if untrained and not train:
        raise InvismapError(f"{variant_dir(runs_dir, untrained[0])}: variant '{untrained[0]}' is not trained "
                            "yet (no thermal_detector.pt); train it first (invismap run CONFIG --from "
                            "students)")
    teacher = load_detector(base.teacher) if score else None
    others = {name: load_manifest(path) for name, path in (more or {}).items()}

    def scores(model, images: str) -> dict[str, Any]:
        row = detector_scores(model, manifest, images, eval_split, protocol)
        # other cameras: thermal labels only
        for name, other in others.items() if images == "thermal" else ():
            r = detector_scores(model, other, images, eval_split, protocol, select_split=None)
            row.update({f"{name} {c}": r[c] for c in ("day", "night")})
        return row

    rows = [{"variant": "teacher on thermal", **scores(teacher, "thermal")},
            {"variant": "teacher on color", **scores(teacher, "color")}] if score else []
    for name, changes in variants.items():
        cfg = variant_config(base, changes)
        run_dir = variant_dir(runs_dir, name)
        if (run_dir / "thermal_detector.pt").is_file():
            log.info(f"{name}: reusing {run_dir}")
            done = run_dir / "summary.json"
            summary = json.loads(done.read_text()) if done.is_file() else {}
        else:
            log.info(f"{name}: training in {run_dir}")
            summary = run_distill(cfg, run_dir, resume=can_resume(run_dir)).to_dict()
        row = {"variant": name}
        if score:
            row.update(scores(load_detector(str(run_dir / "thermal_detector.pt")), "thermal"))
        if summary:
            row["train_seconds"] = round(summary["seconds"])
            row["pairs_per_s"] = round(summary["pairs_per_s"], 2)
        rows.append(row)
        if score:
            _write(out_dir, kind, base, rows, list(others), protocol)
    if not score:
        return rows
    if kind == "seeds" and len(variants) > 1:
        rows += spread([r for r in rows if r["variant"] in variants])
        _write(out_dir, kind, base, rows, list(others), protocol)
    return rows


def spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two rows, ``mean`` and ``std`` (sample standard deviation), of every numeric column of ``rows``.

    >>> spread([{"variant": "seed 0", "night": 50.0}, {"variant": "seed 1", "night": 54.0}])
    [{'variant': 'mean', 'night': 52.0}, {'variant': 'std', 'night': 2.83}]
    """
    keys = [k for k in rows[0] if k != "variant" and all(isinstance(r.get(k), (int, float)) for r in rows)]
    values = {k: np.array([r[k] for r in rows], dtype=float) for k in keys}
    return [{"variant": "mean", **{k: round(float(v.mean()), 1) for k, v in values.items()}},
            {"variant": "std", **{k: round(float(v.std(ddof=1)), 2) for k, v in values.items()}}]


def _write(out_dir: Path, kind: str, base: DistillConfig, rows: list[dict], more: list[str],
           protocol: ScoringProtocol) -> None:
    cols = (["variant", "select night", "day", "night"]
            + [f"{c} {COCO_NAMES[k]}" for c in ("day", "night") for k in ROAD_CLASSES])
    cols += [f"{name} {c}" for name in more for c in ("day", "night")]  # other cameras' test splits
    cols += [c for c in ("train_seconds", "pairs_per_s") if any(c in r for r in rows)]
    about = (f"teacher {base.teacher}, {base.train.max_steps} steps, batch {base.train.batch_size}. "
             "'select night': night pairs of the training split (never seen in distillation, which uses day "
             "pairs only) - choose a variant by this column; day/night columns: test split.")
    about += f" Every detector is scored with {protocol.describe()}."
    lines = [f"# Distillation {kind}: thermal AP50 (mean over person/bicycle/car) vs thermal labels",
             "", about, "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    with atomic_write(out_dir / "table.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json(out_dir / "table.json",
               {"experiment": kind, "config": to_dict(base), "rows": rows, "more": more,
                "size": protocol.size, **protocol.record()})

