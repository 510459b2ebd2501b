"""A light head on the color teacher's own neck features: the invisibility map the car gets almost for free.

The car runs its color detector anyway; its neck features ``[P3, P4, P5]`` (strides 8/16/32) already say what
the detector sees and how confidently. :class:`NeckHead` turns them into a map with a few thousand weights,
FPN-style:

    P_k (B, C_k, H/s_k, W/s_k) --1x1 conv--> (B, width, ...) --upsample to P3, sum-->
        --2x [3x3 conv + BN + ReLU]--> --1x1 conv--> logits (B, 1, H/8, W/8)

:class:`TeacherNeckPredictor` is the deployable whole: frozen teacher + head, ``(B, 3, H, W)`` RGB in 0..1 ->
``(B, 1, H, W)`` logits, the same interface as :class:`~invismap.invisibility.unet.InvisibilityUNet`, so
``predict``, ``export`` and the evaluation take either. Beside the detector its cost is the head alone
(33k weights, 0.11 GMAC at 640x480: 6% of yolov5n's 1.68); standalone it costs the teacher's backbone and
neck too.

Rule (issue 14): the head reads the neck features only, never the detector's decoded outputs (boxes,
objectness, class scores): "missed vs detected" would be circular otherwise.

Example:
    >>> head = NeckHead([64, 128, 256])
    >>> feats = [torch.rand(1, c, 60 // 2 ** k, 80 // 2 ** k) for k, c in enumerate([64, 128, 256])]
    >>> head(feats).shape
    torch.Size([1, 1, 60, 80])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invismap.invisibility.unet import conv_bn_relu


@dataclass(frozen=True)
class NeckHeadConfig:
    """Architecture of :class:`NeckHead` (stored in every predictor checkpoint)."""

    width: int = 32  # channels after the lateral 1x1 convs and in the body
    # add a frame-wide summary (global average of the fused features, one 1x1 conv) to every position, so the
    # map can rise and fall with the whole frame's light, not only with what each position sees
    context: bool = False


class NeckHead(nn.Module):
    """Neck features, fine to coarse -> ``(B, 1, h_0, w_0)`` logits at the finest feature's resolution.

    Args:
        in_channels: channels of each neck feature, fine to coarse (yolov5n: 64, 128, 256).
        cfg: the architecture.
    """

    def __init__(self, in_channels: Sequence[int], cfg: NeckHeadConfig | None = None):
        super().__init__()
        cfg = cfg or NeckHeadConfig()
        if not in_channels or cfg.width < 1:
            raise ValueError(f"need at least one neck feature and width >= 1, got {list(in_channels)}, {cfg}")
        self.cfg, self.in_channels = cfg, [int(c) for c in in_channels]
        self.lateral = nn.ModuleList([nn.Conv2d(c, cfg.width, 1) for c in self.in_channels])
        self.context = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cfg.width, cfg.width, 1), nn.ReLU())
                        if cfg.context else None)
        self.body = nn.Sequential(conv_bn_relu(cfg.width, cfg.width), conv_bn_relu(cfg.width, cfg.width),
                                  nn.Conv2d(cfg.width, 1, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[(B, C_k, h_k, w_k)]`` -> ``(B, 1, h_0, w_0)`` logits."""
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} neck features, got {len(features)}")
        dtype = self.lateral[0].weight.dtype  # float32 features from a bf16 teacher; float64 in fp64 training
        x = self.lateral[0](features[0].to(dtype))
        for conv, f in zip(self.lateral[1:], features[1:]):  # coarser scales, upsampled to the finest
            x = x + F.interpolate(conv(f.to(dtype)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.context is not None:
            x = x + self.context(x)  # (B, width, 1, 1), broadcast over positions
        return self.body(x)


class TeacherNeckPredictor(nn.Module):
    """The deployable map: frozen teacher neck + :class:`NeckHead`, ``(B, 3, H, W)`` -> ``(B, 1, H, W)``
    logits.

    ``H`` and ``W`` must be multiples of the teacher's largest stride (the letterbox guarantees it).
    """

    def __init__(self, teacher: nn.Module, head: NeckHead):
        super().__init__()
        self.teacher, self.head = teacher.eval(), head
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherNeckPredictor:
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never move
        return self

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.teacher.neck_features(rgb))
        return F.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        """The invisibility map in [0, 1], ``(B, 1, H, W)``."""
        return torch.sigmoid(self(rgb))


__all__ = ["NeckHead", "NeckHeadConfig", "TeacherNeckPredictor"]
