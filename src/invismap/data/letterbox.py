"""Letterboxing: resize keeping the aspect ratio, pad to a multiple of 32, and map boxes both ways.

The same :class:`Letterbox` is applied to the color image, the thermal image and their boxes, and maps
detections and score maps back to original pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from invismap.errors import InvismapError

PAD_VALUE = 114  # YOLOv5's gray


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``orig_size`` was put into a canvas of ``size``: ``x_new = x * scale + pad_x``."""

    orig_w: int
    orig_h: int
    width: int
    height: int
    scale: float
    pad_x: int
    pad_y: int

    def boxes_to_canvas(self, xyxy: np.ndarray) -> np.ndarray:
        """Original-pixel ``(N, 4)`` xyxy boxes to canvas pixels."""
        out = np.asarray(xyxy, np.float32).copy().reshape(-1, 4)
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out

    def boxes_to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Canvas ``(N, 4)`` xyxy boxes to original pixels, clipped to the original image."""
        out = np.asarray(xyxy, np.float32).copy().reshape(-1, 4)
        out[:, [0, 2]] = ((out[:, [0, 2]] - self.pad_x) / self.scale).clip(0, self.orig_w)
        out[:, [1, 3]] = ((out[:, [1, 3]] - self.pad_y) / self.scale).clip(0, self.orig_h)
        return out

    def content_slice(self) -> tuple[slice, slice]:
        """Rows and columns of the canvas that hold the image (not the padding)."""
        h, w = _scaled(self.orig_h, self.scale), _scaled(self.orig_w, self.scale)
        return slice(self.pad_y, self.pad_y + h), slice(self.pad_x, self.pad_x + w)


def check_size(size: int | None, flag: str = "--size") -> None:
    """Refuse a letterbox size no model can use, naming the flag (a negative one ran and gave constant maps).

    >>> check_size(-32)
    Traceback (most recent call last):
    ...
    invismap.errors.InvismapError: --size -32: must be between 32 and 8192 pixels (e.g. 640)
    """
    if size is not None and not 32 <= size <= 8192:
        raise InvismapError(f"{flag} {size}: must be between 32 and 8192 pixels (e.g. 640)")


def _scaled(n: int, scale: float) -> int:
    """Pixels a side of ``n`` pixels covers at ``scale``: at least one (a 1x3000 strip stays 1 px wide)."""
    return max(1, round(n * scale))


def letterbox_params(orig_w: int, orig_h: int, size: int | tuple[int, int], stride: int = 32,
                     auto: bool = True) -> Letterbox:
    """Plan a letterbox of an ``orig_w x orig_h`` image into ``size`` (int = longest side, or (h, w)).

    ``auto=True`` pads only to the next multiple of ``stride`` (a 640x480 image stays 640x480 at size 640);
    ``auto=False`` pads to the full square/rectangle ``size``.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    if th % stride or tw % stride:
        raise ValueError(f"letterbox size {size} must be a multiple of {stride}")
    scale = min(th / orig_h, tw / orig_w)
    new_w, new_h = _scaled(orig_w, scale), _scaled(orig_h, scale)
    if auto:
        tw = math.ceil(new_w / stride) * stride
        th = math.ceil(new_h / stride) * stride
    pad_x = (tw - new_w) // 2
    pad_y = (th - new_h) // 2
    return Letterbox(orig_w, orig_h, tw, th, scale, pad_x, pad_y)


def apply_letterbox(image: np.ndarray, lb: Letterbox, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Resize and pad ``(H, W)`` or ``(H, W, C)`` ``image`` as planned by ``lb``."""
    if image.shape[0] != lb.orig_h or image.shape[1] != lb.orig_w:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, "
                         f"letterbox planned for {lb.orig_w}x{lb.orig_h}")
    rows, cols = lb.content_slice()
    new_h, new_w = rows.stop - rows.start, cols.stop - cols.start
    if (new_w, new_h) != (lb.orig_w, lb.orig_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((lb.height, lb.width) + image.shape[2:], pad_value, dtype=image.dtype)
    canvas[rows, cols] = image
    return canvas


def letterbox(image: np.ndarray, size: int | tuple[int, int], stride: int = 32, auto: bool = True,
              pad_value: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """Letterbox one image; returns the canvas and the :class:`Letterbox` that undoes it."""
    lb = letterbox_params(image.shape[1], image.shape[0], size, stride, auto)
    return apply_letterbox(image, lb, pad_value), lb


def map_to_original(score: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Crop the padding off a canvas-sized ``(H, W)`` map and resize it to the original image size."""
    rows, cols = lb.content_slice()
    crop = np.ascontiguousarray(score[rows, cols])
    if crop.shape != (lb.orig_h, lb.orig_w):
        crop = cv2.resize(crop, (lb.orig_w, lb.orig_h), interpolation=cv2.INTER_LINEAR)
    return crop
