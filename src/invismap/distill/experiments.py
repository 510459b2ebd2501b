"""The paper's distillation experiments as one command each (Tables 1 and 2 on the user's data).

- ``ablation``: loss variants mid / head / mid+head (lambda 0.05, 0.1, 1.0);
- ``pairs``: the number-of-pairs curve (e.g. 25, 50, all daytime pairs).

Each variant is a full distillation run; its thermal detector is evaluated on thermal images against thermal
labels of the test split, day and night separately, beside the two baselines (the teacher run directly on the
thermal images, and the teacher on the color images). Writes ``table.md`` and ``table.json``.

Choosing a variant by its test AP would be tuning on the test set. Distillation only sees *daytime*
training pairs, so the night pairs of the training split are unseen by every student: the ``select night``
column (AP50 on them) is the one to choose a variant by; the test columns are the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from invismap.config import from_dict, to_dict
from invismap.data.manifest import COCO_NAMES, ROAD_CLASSES, load_manifest
from invismap.detector.evaluate import evaluate_detector
from invismap.detector.zoo import load_detector
from invismap.distill.run import DistillConfig, run_distill, split_pairs
from invismap.errors import InvismapError
from invismap.io import atomic_write, write_json

log = logging.getLogger(__name__)

LOSS_VARIANTS = {"mid": {"loss": "mid"}, "head": {"loss": "head"},
                 "mid+head 0.05": {"loss": "mid+head", "head_weight": 0.05},
                 "mid+head 0.1": {"loss": "mid+head", "head_weight": 0.1},
                 "mid+head 1.0": {"loss": "mid+head", "head_weight": 1.0}}


def detector_scores(model, manifest, images: str, split: str, size: int,
                    select_split: str | None = "train") -> dict[str, Any]:
    """AP50 (x100) per class and mean over person/bicycle/car, day and night, against thermal labels.

    With ``select_split``, also ``select night``: AP50 on that split's night pairs (for model selection).
    """
    row: dict[str, Any] = {}
    if select_split and manifest.select(condition="night", split=select_split).samples:
        r = evaluate_detector(model, manifest, images=images, labels="thermal", condition="night",
                              split=select_split, size=size, progress=False)
        row["select night"] = round(100 * r["AP50"], 1)
    for condition in ("day", "night"):
        r = evaluate_detector(model, manifest, images=images, labels="thermal", condition=condition, split=split,
                              size=size, progress=False)
        row[condition] = round(100 * r["AP50"], 1)
        for name, v in r["classes"].items():
            row[f"{condition} {name}"] = round(100 * v["AP50"], 1)
    return row


def _variant(base: DistillConfig, changes: dict) -> DistillConfig:
    data = to_dict(base)
    data.update(changes)
    return from_dict(DistillConfig, data)


def variant_dir(out_dir: str | Path, name: str) -> Path:
    """The run folder of variant ``name`` (e.g. ``mid+head 0.1`` -> ``OUT/midphead_0.1``)."""
    return Path(out_dir) / name.replace(" ", "_").replace("+", "p")


def run_experiment(kind: str, base: DistillConfig, out_dir: str | Path, pair_counts: list[int] | None = None,
                   eval_split: str = "test", eval_size: int = 640,
                   losses: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every variant of ``kind`` (``ablation`` or ``pairs``), evaluate, write the tables.

    ``losses`` limits the ablation to those variants of :data:`LOSS_VARIANTS`. A variant whose folder
    already holds ``thermal_detector.pt`` is evaluated, not trained again.
    """
    out_dir = Path(out_dir)
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
    else:
        raise ValueError(f"unknown experiment {kind!r}")
    teacher = load_detector(base.teacher)
    rows = [{"variant": "teacher on thermal", **detector_scores(teacher, manifest, "thermal", eval_split, eval_size)},
            {"variant": "teacher on color", **detector_scores(teacher, manifest, "color", eval_split, eval_size)}]
    for name, changes in variants.items():
        cfg = _variant(base, changes)
        run_dir = variant_dir(out_dir, name)
        if (run_dir / "thermal_detector.pt").is_file():
            log.info(f"{name}: reusing {run_dir}")
            done = run_dir / "summary.json"
            summary = json.loads(done.read_text()) if done.is_file() else {}
        else:
            log.info(f"{name}: training in {run_dir}")
            summary = run_distill(cfg, run_dir, resume=(run_dir / "ckpt" / "last.pt").is_file())
        model = load_detector(str(run_dir / "thermal_detector.pt"))
        row = {"variant": name, **detector_scores(model, manifest, "thermal", eval_split, eval_size)}
        if summary:
            row["train_seconds"] = round(summary["seconds"])
            row["pairs_per_s"] = round(summary["pairs_per_s"], 2)
        rows.append(row)
        _write(out_dir, kind, base, rows)
    return rows


def _write(out_dir: Path, kind: str, base: DistillConfig, rows: list[dict]) -> None:
    cols = ["variant", "select night", "day", "night"] + [f"{c} {COCO_NAMES[k]}" for c in ("day", "night") for k in ROAD_CLASSES]
    cols += [c for c in ("train_seconds", "pairs_per_s") if any(c in r for r in rows)]
    lines = [f"# Distillation {kind}: thermal AP50 (mean over person/bicycle/car) vs thermal labels",
             "", f"teacher {base.teacher}, {base.train.max_steps} steps, batch {base.train.batch_size}. "
             "'select night': night pairs of the training split (never seen in distillation, which uses day "
             "pairs only) - choose a variant by this column; day/night columns: test split.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    with atomic_write(out_dir / "table.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json(out_dir / "table.json", {"experiment": kind, "config": to_dict(base), "rows": rows})

