"""Which predictor to ship, chosen on the training split only: k-fold cross-validation of predictor variants.

Each variant is a set of overrides of the predictor config (``model=neck``, ``target.kind=pair+detectors``,
...). The training pairs are cut into ``k`` folds (every k-th pair, so day and night mix); for each fold a
predictor is trained on the other folds and scores the fold's pairs, so every training pair gets a map from
a predictor that never saw it. All variants are then scored on the same pairs with
:func:`~invismap.invisibility.evaluate.summarise_records`: 95% intervals by bootstrap over images, and
paired margins of every variant over the first one.

The test split is never read: the thermal labels of the *training* pairs say which objects are missed,
detected, invisible or visible (they are never used to train anything), and the variant to ship is the one
with the best :func:`selection_score` here. Targets depend on a fold only through the mean miss rate that
shrinks each frame's base rate (``target.light``), computed once over all training pairs.

Writes ``OUT/cv.json`` (the summaries), ``OUT/table.md``, ``OUT/separations.png``, ``OUT/targets/DIGEST`` (one
per distinct target config) and ``OUT/VARIANT-DIGEST/fold*`` (the fold runs). Folders are named by a digest of
the config they hold, so a rerun reuses exactly the work whose settings did not change.

Example:
    >>> rows = predictor_ablation(cfg, {"U-Net, F": [], "neck, F": ["model=neck"]},  # doctest: +SKIP
    ...                           "runs/x/distill/student.pt", "runs/x/import/manifest.csv",
    ...                           "runs/x/ablation")
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invismap.config import apply_overrides, from_dict, to_dict
from invismap.data.manifest import Manifest, load_manifest, refuse_test_pairs
from invismap.engine.rundir import can_resume
from invismap.errors import InvismapError
from invismap.invisibility.evaluate import (
    HEADLINE,
    METRIC_LABELS,
    MapRecords,
    collect_records,
    summarise_records,
    teacher_detections,
)
from invismap.invisibility.predictor import PredictorConfig, check_predictor_config, train_predictor
from invismap.invisibility.targets import TARGETS_META, compute_targets
from invismap.io import atomic_write, write_json

log = logging.getLogger(__name__)

# per condition, + 1 - day/night overlap
SELECTION = ("pixel_auroc", "missed_vs_detected", "invisible_vs_visible")


def variant_config(base: PredictorConfig, overrides: Sequence[str]) -> PredictorConfig:
    """``base`` with ``key=value`` overrides applied (checked like a config file)."""
    cfg = from_dict(PredictorConfig, apply_overrides(to_dict(base), list(overrides)), "predictor")
    check_predictor_config(cfg)
    return cfg


def folds(manifest: Manifest, k: int) -> list[Manifest]:
    """``k`` folds of the pairs, pair ``i`` in fold ``i % k`` (so each fold mixes conditions and drives)."""
    if k < 2 or k > len(manifest):
        raise InvismapError(f"cross-validation needs 2 <= folds <= {len(manifest)} pairs, got {k}")
    return [Manifest([s for i, s in enumerate(manifest) if i % k == f], manifest.root) for f in range(k)]


def concat_records(parts: Sequence[MapRecords]) -> MapRecords:
    """One :class:`MapRecords` of several, images in order."""
    return MapRecords(names=[n for p in parts for n in p.names],
                      conditions=[c for p in parts for c in p.conditions],
                      **{f: np.concatenate([getattr(p, f) for p in parts])
                         for f in ("pixels", "objects", "defined", "frame", "missed", "moments")})


def selection_score(result: Mapping[str, Any]) -> float:
    """One number to choose a variant by: the mean, over conditions, of pixel AUROC and both separations,
    and ``1 - day/night overlap``, all weighted equally (every acceptance figure of issue 14 that is an AUROC
    or the overlap)."""
    values = [(c.get("metrics", {}).get(k) or {}).get("value") for c in result["conditions"].values()
              for k in SELECTION]
    overlap = (result.get("day_vs_night") or {}).get("overlap")
    values += [] if overlap is None else [1.0 - overlap]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def digest(text: str) -> str:
    """A short stable name for a configuration (cache folders)."""
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "variant"


def predictor_ablation(base: PredictorConfig, variants: Mapping[str, Sequence[str]], student: str | Path,
                       data: str | Path, out: str | Path, k: int = 4, split: str = "train",
                       conditions: Sequence[str] = ("day", "night"), teacher: str = "yolov5n",
                       n_boot: int = 1000, progress: bool = True, size: int = 640) -> list[dict[str, Any]]:
    """Cross-validate predictor variants on the ``split`` pairs; returns the table rows (best first).

    Args:
        base: the predictor config the variants override (``data``/``targets`` are set here).
        variants: name -> overrides, e.g.
            ``{"neck, detectors": ["model=neck", "target.kind=pair+detectors"]}``;
            the first is the reference of the paired margins.
        student: ``RUN/student.pt`` (targets need it, and its ``thermal_detector.pt``).
        data: the pairs (manifest or folder).
        out: output folder.
        k: folds.
        split: the split to cross-validate on (never the test split).
        conditions: the conditions scored.
        teacher: the color detector that defines missed objects.
        size: its input size.
        n_boot: bootstrap resamples.
    """
    if split == "test":
        raise InvismapError("the predictor ablation selects a variant: "
                            "run it on the train split, never on test")
    if not variants:
        raise InvismapError("no predictor variants to compare")
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.sources import map_source

    out = Path(out)
    pairs = load_manifest(data).select(split=split, condition=list(conditions))
    if len(pairs) == 0:
        raise InvismapError(f"{data}: no {'/'.join(conditions)} pairs in split '{split}' "
                            "to cross-validate on")
    refuse_test_pairs(pairs, split, data)
    configs = {name: variant_config(base, ov) for name, ov in variants.items()}
    parts = folds(pairs, k)
    detections = teacher_detections(pairs, load_detector(teacher), size=size, progress=progress)
    targets: dict[str, Path] = {}  # one target folder per distinct target config and size
    records: dict[str, MapRecords] = {}
    for name, cfg in configs.items():
        key = repr((dataclasses.astuple(cfg.target), cfg.size, cfg.square))
        # folders named by what they hold, so a changed variant list reuses nothing stale
        if key not in targets:
            folder = out / "targets" / digest(key)
            if not (folder / TARGETS_META).is_file():
                compute_targets(pairs, student, folder, cfg.size, cfg.target, cfg.square, progress=progress)
            targets[key] = folder
        per_fold = []
        for f, held in enumerate(parts):
            train = Manifest([s for s in pairs if s.name not in {h.name for h in held}], pairs.root)
            run = out / f"{slug(name)}-{digest(repr(dataclasses.astuple(cfg)))}" / f"fold{f}"
            fold_cfg = dataclasses.replace(cfg, data="", targets=str(targets[key]), val_every_nth=0,
                                           split=split)
            if not (run / "predictor.pt").is_file():
                log.info(f"{name}: fold {f + 1}/{k}, training on {len(train)} pairs")
                train_predictor(fold_cfg, train, targets[key], run,
                                resume=can_resume(run), progress=progress)
            _, source = map_source(f"predictor:{run / 'predictor.pt'}")
            per_fold.append(collect_records(held, source, detections, conditions, progress=progress))
        records[name] = concat_records(per_fold)
    first = next(iter(configs))
    results = summarise_records(records, (first,), {"folds": k, "split": split, "pairs": len(pairs)},
                                n_boot=n_boot)
    rows = [{"variant": name, "overrides": list(variants[name]), "selection": selection_score(res),
             **{cond: {m: (c["metrics"].get(m) or {}).get("value") for m in HEADLINE}
                for cond, c in res["conditions"].items()},
             "day_vs_night_overlap": (res.get("day_vs_night") or {}).get("overlap")}
            for name, res in results.items()]
    rows.sort(key=lambda r: -r["selection"] if np.isfinite(r["selection"]) else np.inf)
    write_json(out / "cv.json", {"rows": rows, "results": results, "chosen": rows[0]["variant"],
                                 "reference": first,
                                 "selection": list(SELECTION) + ["1 - day/night overlap"]})
    with atomic_write(out / "table.md", "w") as fh:
        fh.write(format_rows(rows, k, len(pairs)) + "\n")
    from invismap.invisibility.plots import plot_intervals

    plot_intervals(results, out / "separations.png",
                   title=f"{k}-fold cross-validation on {len(pairs)} '{split}' pairs")
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]], k: int, n: int,
                metrics: Sequence[str] = ("coverage_35.9", "pixel_auroc", "missed_vs_detected",
                                          "invisible_vs_visible")) -> str:
    """The ablation as a Markdown table (best selection score first)."""
    conds = [c for c in ("night", "day") if c in rows[0]]
    head = (["variant", "selection"] + [f"{c} {METRIC_LABELS[m]}" for c in conds for m in metrics]
            + ["overlap"])
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    lines = [f"# Predictor variants, {k}-fold cross-validation on {n} training pairs (chosen: first row)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], fmt(r["selection"])] + [fmt(r[c].get(m)) for c in conds for m in metrics]
        lines.append("| " + " | ".join(cells + [fmt(r["day_vs_night_overlap"])]) + " |")
    return "\n".join(lines)


__all__ = ["SELECTION", "concat_records", "folds", "format_rows", "predictor_ablation", "selection_score",
           "variant_config"]
