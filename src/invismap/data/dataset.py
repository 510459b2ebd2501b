"""``PairDataset``: aligned color/thermal tensors with the same geometry applied to both and their boxes.

Each item is a dict with fixed keys::

    name          str
    condition     str
    rgb           (3, H, W) float32 in 0..1        letterboxed color image
    thermal       (1, H, W) float32 in 0..1        letterboxed thermal image (one channel)
    color_boxes   (N, 5) float32 [cls, x1, y1, x2, y2] in canvas pixels (empty if not labelled)
    thermal_boxes (M, 5) float32 likewise for the thermal labels
    letterbox     Letterbox mapping canvas pixels back to the original image

H and W are multiples of 32. Use :func:`collate_pairs` as the DataLoader's ``collate_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from invismap.data.letterbox import PAD_VALUE, Letterbox, apply_letterbox, letterbox_params
from invismap.data.manifest import Manifest, Sample, read_yolo_labels, yolo_to_xyxy
from invismap.errors import InvismapError, file_error
from invismap.io import read_color, read_thermal

# What ``cache=True`` may hold per dataset (and per loader worker: each has its own copy): ~850 letterboxed
# 640x480 pairs, several times the MSRS training set. Past it, further pairs are decoded every time they are
# read, so a large manifest costs decoding time, not memory that grows with it.
CACHE_BYTES = 1 << 30


def nbytes(x: Any) -> int:
    """Bytes held by the arrays and tensors in ``x`` (an array, a tensor, or a dataclass, tuple, list or dict
    of them; anything else counts 0)."""
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.nelement()
    if is_dataclass(x) and not isinstance(x, type):
        return sum(nbytes(getattr(x, f.name)) for f in fields(x))
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(nbytes(v) for v in x.values())
    return 0


class BudgetCache:
    """Items kept in memory while their arrays fit in ``budget`` bytes; past it, nothing more is kept.

    No eviction: the first items stay, so a manifest larger than the budget costs recomputing the rest each
    time they are read, not memory that grows with it.

    Example:
        >>> cache = BudgetCache(budget=100)
        >>> cache.put("a", np.zeros(10))  # 80 bytes: kept
        >>> cache.put("b", np.zeros(10))  # would make 160: not kept
        >>> "a" in cache, "b" in cache, cache.nbytes
        (True, False, 80)
    """

    def __init__(self, budget: int):
        self.budget, self.nbytes = int(budget), 0
        self._items: dict = {}

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: Any, value: Any) -> None:
        """Keep ``value`` under ``key`` if it fits in what is left of the budget."""
        size = nbytes(value)
        if key not in self._items and self.nbytes + size <= self.budget:
            self._items[key] = value
            self.nbytes += size


@dataclass(frozen=True)
class Augment:
    """Augmentation for training: geometry applied identically to both images and their boxes, and the
    thermal image's gray levels alone (another camera's gain control)."""

    hflip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (1.0, 1.0)  # random zoom range (1 = none); >1 crops, <1 shrinks
    translate: float = 0.0  # max shift as a fraction of the image size
    crop: tuple[int, int] | None = None  # random (height, width) crop, multiples of 32, same scale as eval
    # probability that the thermal frame is stretched to its own percentiles, as a camera with automatic gain
    # control would show it (thermal_gain_control)
    thermal_agc: float = 0.0
    thermal_gamma: tuple[float, float] = (1.0, 1.0)  # range of a random gamma on the thermal gray levels


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one pair: RGB ``(H, W, 3)`` uint8 and thermal ``(H, W)`` uint8 of equal size."""
    rgb = read_color(sample.color)
    thr = read_thermal(sample.thermal)
    if rgb.shape[:2] != thr.shape[:2]:
        raise file_error(sample.thermal, f"size {thr.shape[1]}x{thr.shape[0]} differs from its color twin "
                         f"{sample.color.name} ({rgb.shape[1]}x{rgb.shape[0]})", "register the pair first")
    return rgb, thr


def load_boxes(sample: Sample, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Color and thermal boxes of a sample as ``(N, 5)`` pixel ``[cls, x1, y1, x2, y2]``."""
    return (yolo_to_xyxy(read_yolo_labels(sample.color_labels), width, height),
            yolo_to_xyxy(read_yolo_labels(sample.thermal_labels), width, height))


def _random_affine(w: int, h: int, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """A 2x3 affine (flip, zoom about the center, shift) drawn from ``aug``."""
    s = rng.uniform(*aug.scale)
    tx, ty = rng.uniform(-aug.translate, aug.translate, size=2) * (w, h)
    flip = rng.random() < aug.hflip
    sx = -s if flip else s
    # x' = sx * (x - w/2) + w/2 + tx
    return np.array([[sx, 0, (1 - sx) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]], np.float32)


def _warp_boxes(boxes: np.ndarray, m: np.ndarray, w: int, h: int) -> np.ndarray:
    if len(boxes) == 0:
        return boxes
    xs = boxes[:, [1, 3]] * m[0, 0] + m[0, 2]
    ys = boxes[:, [2, 4]] * m[1, 1] + m[1, 2]
    out = np.stack([boxes[:, 0], xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, w)
    out[:, [2, 4]] = out[:, [2, 4]].clip(0, h)
    keep = ((out[:, 3] - out[:, 1]) > 2) & ((out[:, 4] - out[:, 2]) > 2)
    return out[keep].astype(np.float32)


class PairDataset(Dataset):
    """Color/thermal pairs of a :class:`Manifest`, letterboxed to ``size`` (multiple of 32).

    Args:
        manifest: the pairs.
        size: longest side of the canvas; with ``square=False`` the short side is padded only to the next
            multiple of 32 (640x480 stays 640x480).
        augment: geometric augmentation (same for both modalities), or None.
        seed: base seed; item ``i`` at epoch ``e`` draws from ``(seed, e, i)`` so runs are reproducible.
        cache: keep decoded, letterboxed pairs in memory (decode once; augmentation still varies): True for
            up to :data:`CACHE_BYTES` of them, a number for that many bytes, False for none. The first pairs
            read are kept until the budget is full; later ones are decoded each time.
    """

    def __init__(self, manifest: Manifest, size: int = 640, augment: Augment | None = None, seed: int = 0,
                 square: bool = False, cache: bool | int = False):
        if len(manifest) == 0:
            raise InvismapError("dataset is empty: no pairs match the selected split/condition")
        if size % 32:
            raise InvismapError(f"image size {size} must be a multiple of 32")
        if not isinstance(cache, bool) and (not isinstance(cache, int) or cache < 0):
            raise InvismapError(f"cache must be true, false or a number of bytes >= 0, got {cache!r}")
        self.manifest, self.size, self.augment, self.seed = manifest, size, augment, seed
        self.square, self.epoch = square, 0
        self._cache = BudgetCache((CACHE_BYTES if cache else 0) if isinstance(cache, bool) else cache)

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch)."""
        self.epoch = epoch

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Letterbox]:
        s = self.manifest[i]
        if s.name in self._cache:  # by name: a pair listed twice (distill.extra_repeat) is decoded once
            return self._cache[s.name]
        rgb, thr = load_pair(s)
        h, w = thr.shape
        cboxes, tboxes = load_boxes(s, w, h)
        lb = letterbox_params(w, h, self.size, auto=not self.square)
        rgb, thr = apply_letterbox(rgb, lb), apply_letterbox(thr, lb)
        for b in (cboxes, tboxes):
            b[:, 1:] = lb.boxes_to_canvas(b[:, 1:]) if len(b) else b[:, 1:]
        item = (rgb, thr, cboxes, tboxes, lb)
        self._cache.put(s.name, item)
        return item

    def __getitem__(self, index: int) -> dict:
        # Indices past the end select a later epoch's augmentation (see engine.loop.StepBatchSampler).
        extra_epochs, i = divmod(int(index), len(self.manifest))
        rgb, thr, cboxes, tboxes, lb = self._load(i)
        if self.augment is not None:
            draw = (self.seed, self.epoch + extra_epochs, i)
            a = self.augment
            if a.thermal_agc > 0 or a.thermal_gamma != (1.0, 1.0):  # own draws: the geometry's are unchanged
                thr = _thermal_gray_levels(thr, lb, a, np.random.default_rng((*draw, 1)))
            rgb, thr, cboxes, tboxes = _augment(rgb, thr, cboxes, tboxes, a, np.random.default_rng(draw))
        s = self.manifest[i]
        return {"name": s.name, "condition": s.condition, "rgb": to_tensor(rgb), "thermal": to_tensor(thr),
                "color_boxes": torch.from_numpy(cboxes), "thermal_boxes": torch.from_numpy(tboxes),
                "letterbox": lb}


def _augment(rgb: np.ndarray, thr: np.ndarray, cboxes: np.ndarray, tboxes: np.ndarray, aug: Augment,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random affine (then crop) of both images and both box sets, drawn from ``rng``.

    The whole image is warped and the crop cut out afterwards. Folding the crop's shift into the affine and
    rendering only the crop would warp 3.75x fewer pixels for a 256x320 crop of 640x480, but OpenCV rounds its
    fixed-point source coordinates per output pixel, so a shifted affine moves some pixels by one gray level
    (most items differ somewhere): training would no longer reproduce earlier runs bit for bit, to save a few
    percent of a step (``benchmarks/bench_distill.py`` measures the data share).
    """
    h, w = thr.shape
    m = _random_affine(w, h, aug, rng)
    rgb = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(114, 114, 114))
    thr = cv2.warpAffine(thr, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=114)
    cboxes, tboxes = _warp_boxes(cboxes, m, w, h), _warp_boxes(tboxes, m, w, h)
    if aug.crop is not None:
        ch, cw = min(aug.crop[0], h), min(aug.crop[1], w)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        shift = np.array([[1, 0, -x0], [0, 1, -y0]], np.float32)
        rgb, thr = rgb[y0:y0 + ch, x0:x0 + cw], thr[y0:y0 + ch, x0:x0 + cw]
        cboxes, tboxes = _warp_boxes(cboxes, shift, cw, ch), _warp_boxes(tboxes, shift, cw, ch)
    return rgb, thr, cboxes, tboxes


def _thermal_gray_levels(thr: np.ndarray, lb: Letterbox, aug: Augment, rng: np.random.Generator
                         ) -> np.ndarray:
    """The canvas ``thr`` with its image (not the letterbox padding) rendered by :func:`thermal_gain_control`
    with settings drawn from ``aug``: the whole frame, as a camera's gain control sees it."""
    stretch = rng.random() < aug.thermal_agc
    low, high = rng.uniform(0, 2), rng.uniform(98, 100)
    gamma = float(np.exp(rng.uniform(*np.log(aug.thermal_gamma))))
    rows, cols = lb.content_slice()
    out = thr.copy()  # the cached canvas is left as it is
    out[rows, cols] = thermal_gain_control(thr[rows, cols], low if stretch else None, high, gamma)
    return out


def thermal_gain_control(thr: np.ndarray, low: float | None, high: float = 100.0, gamma: float = 1.0
                         ) -> np.ndarray:
    """Gray levels of a uint8 thermal image ``(H, W)`` as another camera might render the same scene.

    ``out = 255 * clip((thr - p_low) / (p_high - p_low), 0, 1) ** gamma`` with ``p_q`` the image's ``q``-th
    percentile (no stretch, i.e. ``p_low = 0`` and ``p_high = 255``, when ``low`` is None or the image is
    flat, ``p_high - p_low < 1``). Thermal cameras differ mostly here: MSRS's frames are dark and flat (mean
    gray ~29 by day, ~17 at night), FLIR's automatic gain control stretches every frame over the whole range
    (RoadScene: mean ~126).

    >>> thr = np.array([[0, 50, 100]], np.uint8)
    >>> thermal_gain_control(thr, 0, 100).tolist()
    [[0, 128, 255]]
    >>> thermal_gain_control(thr, None, gamma=0.5).tolist()
    [[0, 113, 160]]
    """
    lo, hi = (0.0, 255.0) if low is None else map(float, np.percentile(thr, (low, high)))
    if hi - lo < 1:
        lo, hi = 0.0, 255.0
    levels = np.clip((np.arange(256, dtype=np.float64) - lo) / (hi - lo), 0, 1) ** gamma
    return cv2.LUT(thr, np.round(levels * 255).astype(np.uint8))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, C)`` or ``(H, W)`` -> float32 ``(C, H, W)`` in 0..1 (``x / 255``, as
    ``.float().div(255)``).

    Converted by numpy on the calling thread: a torch elementwise op starts its thread pool for every item,
    which on a busy 2-core machine waits for a descheduled thread (milliseconds per call, see
    ``benchmarks/bench_distill.py``).
    """
    chw = np.ascontiguousarray(image.transpose(2, 0, 1) if image.ndim == 3 else image[None])
    return torch.from_numpy(np.divide(chw, np.float32(255), dtype=np.float32))


def collate_pairs(items: list[dict]) -> dict:
    """Stack images into ``(B, C, H, W)``; boxes stay lists (their counts differ).

    Canvases of different sizes in one batch (cameras of other aspect ratios, or crops larger than a small
    frame's canvas) are padded at the bottom and right with the letterbox's gray to the batch's largest, so
    canvas pixel coordinates (the boxes, the letterbox) stay as they are.
    """
    out = {k: [it[k] for it in items] for k in items[0]}
    h = max(t.shape[1] for t in out["rgb"])
    w = max(t.shape[2] for t in out["rgb"])
    for key in ("rgb", "thermal"):
        out[key] = torch.stack([F.pad(t, (0, w - t.shape[2], 0, h - t.shape[1]), value=PAD_VALUE / 255)
                                for t in out[key]])
    return out
