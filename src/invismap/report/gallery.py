"""Gallery rows for the report: color | thermal | pair score | predicted map | objects the color camera
missed.

Example:
    >>> write_gallery(test_pairs, "RUN/student.pt", "RUN/predictor.pt", "yolov5n",  # doctest: +SKIP
    ...               "out/gallery")
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps

from invismap.data.dataset import load_boxes, load_pair
from invismap.data.manifest import Manifest, evenly
from invismap.detector.zoo import load_detector
from invismap.invisibility.evaluate import object_sets, teacher_detections
from invismap.invisibility.pair import PairScorer
from invismap.invisibility.predict import predict_image
from invismap.invisibility.predictor import load_predictor
from invismap.io import image_size, write_image, write_json

PANEL_WIDTH = 320
TITLES = ("color", "thermal", "pair score F (teacher vs student)", "predicted from color only",
          "thermal objects: missed (red) / detected (green)")
MISSED_RGB, DETECTED_RGB = (255, 50, 50), (40, 220, 40)


def heat_rgb(score: np.ndarray) -> np.ndarray:
    """``(H, W)`` scores in [0, 1] -> ``(H, W, 3)`` uint8 with the inferno colormap."""
    return (colormaps["inferno"](np.clip(score, 0, 1))[..., :3] * 255).astype(np.uint8)


def _boxes(img: np.ndarray, boxes: np.ndarray, rgb: tuple[int, int, int], scale: float, width: int) -> None:
    for b in np.asarray(boxes).reshape(-1, 5):
        x1, y1, x2, y2 = (round(v * scale) for v in b[1:])
        cv2.rectangle(img, (x1, y1), (x2, y2), rgb, width, cv2.LINE_AA)


def render_row(rgb: np.ndarray, thermal: np.ndarray, pair_score: np.ndarray, predicted: np.ndarray,
               missed: np.ndarray, detected: np.ndarray, width: int = PANEL_WIDTH) -> np.ndarray:
    """One gallery row ``(h, 5 * width, 3)`` uint8 with a title strip over each panel.

    Args:
        rgb: ``(H, W, 3)`` uint8 color image; thermal: ``(H, W)`` uint8.
        pair_score, predicted: ``(H, W)`` maps in [0, 1].
        missed, detected: ``(N, 5)`` pixel ``[cls, x1, y1, x2, y2]`` thermal objects of each set.
    """
    h, w = thermal.shape
    scale = width / w
    size = (width, round(h * scale))

    def fit(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x, size, interpolation=cv2.INTER_AREA)

    objects = fit(rgb)
    _boxes(objects, detected, DETECTED_RGB, scale, 1)
    _boxes(objects, missed, MISSED_RGB, scale, 2)
    panels = [fit(rgb), cv2.cvtColor(fit(thermal), cv2.COLOR_GRAY2RGB), heat_rgb(fit(pair_score)),
              heat_rgb(fit(predicted)), objects]
    titled = []
    for title, panel in zip(TITLES, panels):
        strip = np.full((18, width, 3), 30, np.uint8)
        cv2.putText(strip, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1, cv2.LINE_AA)
        titled.append(np.concatenate([strip, panel], axis=0))
    return np.concatenate(titled, axis=1)


def write_gallery(pairs: Manifest, student: str | Path, predictor: str | Path, teacher: str,
                  out_dir: str | Path, per_condition: int = 3, conf: float = 0.25,
                  size: int = 640) -> list[dict]:
    """Render ``per_condition`` rows per condition (pairs with missed objects first) to ``out_dir``; the
    color detector runs at ``size``.

    Writes ``out_dir/<condition>_<name>.png`` and ``out_dir/gallery.json`` (one entry per row, with its
    counts and mean scores); returns those entries.
    """
    out_dir = Path(out_dir)
    scorer = PairScorer.from_checkpoint(student)
    model, meta = load_predictor(predictor)
    color_detector = load_detector(teacher)
    rows = []
    for condition in dict.fromkeys(s.condition for s in pairs):
        group = pairs.select(condition=condition)
        detections = teacher_detections(group, color_detector, size=size, conf=conf, progress=False)
        sets = {}
        for s in group:
            _, thermal_boxes = load_boxes(s, *image_size(s.thermal))
            sets[s.name] = object_sets(thermal_boxes, None, detections[s.name], conf=conf)
        with_missed = [s for s in group if len(sets[s.name]["missed"])]
        chosen = with_missed or list(group)
        for s in evenly(chosen, per_condition) if per_condition else []:
            rgb, thermal = load_pair(s)
            f = scorer.score(rgb, thermal)
            pred = predict_image(model, rgb, int(meta.get("input_size", 640)))
            row = render_row(rgb, thermal, f, pred, sets[s.name]["missed"], sets[s.name]["detected"])
            name = f"{condition}_{s.name}.png".replace("/", "__")
            write_image(out_dir / name, row)
            rows.append({"image": name, "pair": s.name, "condition": condition,
                         "missed": len(sets[s.name]["missed"]), "detected": len(sets[s.name]["detected"]),
                         "mean_pair_score": float(f.mean()), "mean_predicted": float(pred.mean())})
    write_json(out_dir / "gallery.json", rows)
    return rows

