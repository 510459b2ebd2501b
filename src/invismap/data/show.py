"""Contact sheets: rows of color | thermal with both label sets drawn, to look at a pair dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from invismap.data.dataset import load_boxes, load_pair
from invismap.data.manifest import COCO_NAMES, Manifest, evenly
from invismap.io import write_image

COLOR_LABEL_RGB = (40, 220, 40)  # green: boxes drawn on the color image
THERMAL_LABEL_RGB = (255, 60, 200)  # magenta: boxes drawn on the thermal image


def _draw(img: np.ndarray, boxes: np.ndarray, rgb: tuple[int, int, int], scale: float, dashed: bool) -> None:
    for cls, x1, y1, x2, y2 in boxes:
        p1, p2 = (int(x1 * scale), int(y1 * scale)), (int(x2 * scale), int(y2 * scale))
        cv2.rectangle(img, p1, p2, rgb, 1 if dashed else 2, lineType=cv2.LINE_AA)
        cv2.putText(img, COCO_NAMES[int(cls)], (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    rgb, 1, cv2.LINE_AA)


def render_pair(sample, width: int = 480) -> np.ndarray:
    """One contact-sheet row ``(h, 2*width, 3)``: color | thermal, each with both label sets.

    Color labels are green, thermal labels magenta (thinner where drawn on the other modality).
    """
    rgb, thr = load_pair(sample)
    h, w = thr.shape
    cboxes, tboxes = load_boxes(sample, w, h)
    scale = width / w
    size = (width, round(h * scale))
    left = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    right = cv2.cvtColor(cv2.resize(thr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2RGB)
    _draw(left, tboxes, THERMAL_LABEL_RGB, scale, dashed=True)
    _draw(left, cboxes, COLOR_LABEL_RGB, scale, dashed=False)
    _draw(right, cboxes, COLOR_LABEL_RGB, scale, dashed=True)
    _draw(right, tboxes, THERMAL_LABEL_RGB, scale, dashed=False)
    row = np.concatenate([left, right], axis=1)
    header = np.full((18, row.shape[1], 3), 30, np.uint8)
    text = (f"{sample.name}  {sample.condition}  {sample.split}   color labels: {len(cboxes)} (green)   "
            f"thermal labels: {len(tboxes)} (magenta)")
    cv2.putText(header, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([header, row], axis=0)


def contact_sheet(manifest: Manifest, out: str | Path, max_pairs: int = 12, width: int = 480,
                  columns: int = 2) -> Path:
    """Write a PNG contact sheet of (up to) ``max_pairs`` pairs, spread evenly over the manifest."""
    rows = [render_pair(s, width) for s in evenly(manifest.samples, max_pairs)]
    hmax = max(r.shape[0] for r in rows)
    rows = [np.pad(r, ((0, hmax - r.shape[0]), (0, 0), (0, 0))) for r in rows]
    rows += [np.zeros_like(rows[0])] * (-len(rows) % columns)
    grid = [np.concatenate(rows[i:i + columns], axis=1) for i in range(0, len(rows), columns)]
    sheet = np.concatenate(grid, axis=0)
    write_image(out, sheet)
    return Path(out)
