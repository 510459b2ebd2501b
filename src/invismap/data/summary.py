"""Counting what a pair dataset holds: pairs per split and condition, boxes per modality, and objects
that only the thermal image shows (a thermal box with no color box of IoU >= 0.5)."""

from __future__ import annotations

from collections import defaultdict

from invismap.data.importers.common import box_iou
from invismap.data.manifest import Manifest, read_yolo_labels, yolo_to_xyxy


def thermal_only_mask(color_xyxy, thermal_xyxy, iou_thres: float = 0.5):
    """Boolean ``(M,)``: thermal box has no color box of the same class with IoU >= ``iou_thres``."""
    import numpy as np

    if len(thermal_xyxy) == 0:
        return np.zeros(0, bool)
    if len(color_xyxy) == 0:
        return np.ones(len(thermal_xyxy), bool)
    iou = box_iou(thermal_xyxy[:, 1:], color_xyxy[:, 1:])
    same_class = thermal_xyxy[:, :1] == color_xyxy[:, 0][None, :]
    return ~((iou >= iou_thres) & same_class).any(axis=1)


def summarize(manifest: Manifest) -> list[dict]:
    """One row per (split, condition): pairs, color boxes, thermal boxes, thermal-only objects."""
    rows: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"pairs": 0, "color_boxes": 0, "thermal_boxes": 0, "thermal_only": 0})
    for s in manifest:
        r = rows[(s.split, s.condition)]
        r["pairs"] += 1
        c = yolo_to_xyxy(read_yolo_labels(s.color_labels), 1, 1)
        t = yolo_to_xyxy(read_yolo_labels(s.thermal_labels), 1, 1)
        r["color_boxes"] += len(c)
        r["thermal_boxes"] += len(t)
        if s.color_labels is not None and s.thermal_labels is not None:
            r["thermal_only"] += int(thermal_only_mask(c, t).sum())
    return [dict(split=k[0], condition=k[1], **v) for k, v in sorted(rows.items())]


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of :func:`summarize` rows plus a total line."""
    cols = ["split", "condition", "pairs", "color_boxes", "thermal_boxes", "thermal_only"]
    total = {c: sum(r[c] for r in rows) for c in cols[2:]}
    lines = [" ".join(f"{c:>13}" for c in cols)]
    for r in rows + [dict(split="total", condition="", **total)]:
        lines.append(" ".join(f"{r[c]:>13}" for c in cols))
    return "\n".join(lines)
