"""Synthetic inputs for the scale benchmarks: pair datasets in the MSRS layout, long videos, a predictor.

Nothing here is real data; it exists so that a benchmark can make inputs of any size in a temporary folder
and run the real code paths on them (the MSRS importer, ``invismap distill``, ``invismap predict``).

- :func:`write_msrs_pairs`: the flattened MSRS layout ``SRC/vi/NAME.png``, ``SRC/ir/NAME.png`` and
  ``SRC/pairs.csv`` (``name,dev_split``), which ``invismap data import msrs`` reads. Names end in ``D``
  (day) or ``N`` (night) as MSRS names do.
- :func:`write_video`: an mp4v video of a smooth moving scene (compresses well, decodes like a real one).
- :func:`write_untrained_predictor`: a ``predictor.pt`` holding a freshly initialised U-Net, loadable by
  ``invismap predict`` (memory and speed do not depend on the weights).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

NIGHT_EVERY = 4  # every 4th synthetic pair is a night one (distillation trains on day pairs)
TEST_EVERY = 10  # every 10th synthetic pair is in the test split


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth gray ``(height, width)`` uint8 texture: upsampled noise (PNG-compressible, not constant)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2)), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def pair_name(i: int) -> str:
    """Name of synthetic pair ``i``: zero-padded number + the MSRS day/night suffix."""
    return f"{i:07d}{'N' if i % NIGHT_EVERY == NIGHT_EVERY - 1 else 'D'}"


def write_msrs_pairs(dst: str | Path, n: int, width: int = 160, height: int = 120, seed: int = 0,
                     progress: bool = True) -> Path:
    """Write ``n`` distinct ``width`` x ``height`` pairs in the flattened MSRS layout under ``dst``.

    Pair ``i`` is a window of one large smooth texture, shifted with ``i`` (so no two pairs are the same
    image); the thermal image is the inverted gray of the color one. Split: every ``TEST_EVERY``-th pair
    is ``test``, the rest ``train``.
    """
    from tqdm import tqdm

    dst = Path(dst)
    (dst / "vi").mkdir(parents=True, exist_ok=True)
    (dst / "ir").mkdir(parents=True, exist_ok=True)
    big = _texture(4 * height, 4 * width, seed)
    tint = np.array([1.0, 0.9, 0.8], np.float32)
    rows = []
    for i in tqdm(range(n), desc=f"writing {n} synthetic pairs", unit="pair", disable=not progress,
                  leave=False):
        y, x = (i * 7) % (3 * height), (i * 13) % (3 * width)
        gray = big[y:y + height, x:x + width]
        color = (gray[:, :, None] * tint).astype(np.uint8)  # BGR, as cv2 writes it
        name = pair_name(i)
        cv2.imwrite(str(dst / "vi" / f"{name}.png"), color)
        cv2.imwrite(str(dst / "ir" / f"{name}.png"), 255 - gray)
        rows.append((name, "test" if i % TEST_EVERY == TEST_EVERY - 1 else "train"))
    with open(dst / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "dev_split"])
        w.writerows(rows)
    return dst


def video_frame(k: int, width: int, height: int, background: np.ndarray) -> np.ndarray:
    """Frame ``k`` (BGR uint8): the background scrolling sideways, a bright box crossing it."""
    shift = (4 * k) % background.shape[1]
    frame = np.roll(background, -shift, axis=1)[:height, :width].copy()
    bx = (9 * k) % width
    cv2.rectangle(frame, (bx, height // 2), (min(bx + width // 8, width - 1), height // 2 + height // 6),
                  (40, 220, 250), -1)
    return frame


def write_video(path: str | Path, seconds: float, fps: float, width: int = 640, height: int = 480,
                progress: bool = True) -> Path:
    """Write ``seconds`` of ``fps`` frames per second, ``width`` x ``height``, as an mp4v video."""
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = _texture(height, 2 * width, seed=1)
    background = cv2.applyColorMap(gray, cv2.COLORMAP_BONE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v here")
    frames = round(seconds * fps)
    try:
        for k in tqdm(range(frames), desc=f"writing {seconds:g} s video", unit="frame",
                      disable=not progress, leave=False):
            writer.write(video_frame(k, width, height, background))
    finally:
        writer.release()
    return path


def write_untrained_predictor(path: str | Path, size: int, seed: int = 0) -> Path:
    """A ``predictor.pt`` with a freshly initialised default U-Net at letterbox ``size`` (no training)."""
    import torch

    from invismap.engine.checkpoint import save_checkpoint
    from invismap.invisibility.predictor import KIND, PredictorTask

    torch.manual_seed(seed)
    task = PredictorTask(input_size=size)
    return save_checkpoint(path, {"kind": KIND, **task.extra_checkpoint(), "model": task.net.state_dict(),
                                  "square": False, "step": 0, "weights_from": "untrained (benchmark)"})
