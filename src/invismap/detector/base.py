"""The detector interface every teacher (and the thermal student detector) implements.

A detector is an ``nn.Module`` split where the paper splits it:

    images (B, 3, H, W) RGB in 0..1
      -> neck_features: [P3 (s8), P4 (s16), P5 (s32)]   (the features the student learns)
      -> heads:         raw head outputs, one (B, A*(5+nc), h, w) tensor per scale
      -> decode:        (B, N, 5+nc) [cx, cy, w, h in input pixels, objectness, class probs], sigmoid applied

Two-scale models (yolov3-tiny, yolo-fastest) return two features, fine to coarse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Detections:
    """Detections for one image, in original image pixels."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64, COCO 80-class ids

    def __len__(self) -> int:
        return len(self.scores)


class Detector(nn.Module):
    """Base class: subclasses implement ``neck_features``, ``heads`` and ``decode``."""

    names: list[str]  # class names, index = class id
    strides: tuple[int, ...]  # stride of each neck feature, fine to coarse
    # What the network expects: RGB, values in 0..1, letterboxed with gray 114 to a multiple of max stride.
    input_range: tuple[float, float] = (0.0, 1.0)
    in_channels: int = 3  # image channels it reads: 3 (RGB), or 1 for a thermal detector

    def neck_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> list of neck outputs, fine to coarse (strides 8/16/32)."""
        raise NotImplementedError

    def heads(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Neck outputs -> raw head outputs (no activation), one per scale."""
        raise NotImplementedError

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw head outputs -> ``(B, N, 5 + nc)`` predictions (xywh pixels, obj, class probs)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.heads(self.neck_features(images)))

    @property
    def max_stride(self) -> int:
        return max(self.strides)
