"""YOLOv5 (v6.x, P3-P5) as an invismap :class:`Detector`, written from the architecture, not imported.

Module names follow the official ``models/yolov5*.yaml`` layer list, so an official ``state_dict``
(``model.0.conv.weight`` ... ``model.24.m.2.bias``, ``model.24.anchors``) loads by key, for every
width/depth variant (n/s/m/l/x). Reference: Ultralytics YOLOv5 v6.1, ``models/common.py`` and
``models/yolo.py`` (GPL-3.0); re-implemented here from the published layer table.

Example:
    >>> state = torch.load("yolov5n_state_dict.pt", weights_only=True)  # doctest: +SKIP
    >>> model = YOLOv5.from_state_dict(state)  # doctest: +SKIP
    >>> p3, p4, p5 = model.neck_features(images)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invismap.data.manifest import COCO_NAMES
from invismap.detector.base import Detector
from invismap.errors import InvismapError

log = logging.getLogger(__name__)

# COCO anchors in input pixels, per scale P3/P4/P5 (w, h): the official defaults.
COCO_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
STRIDES = (8, 16, 32)
# (depth_multiple, width_multiple) of the official variants.
VARIANTS = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
NECK_LAYERS = (17, 20, 23)  # model.17 = P3 (s8), model.20 = P4 (s16), model.23 = P5 (s32)


@dataclass(frozen=True)
class YOLOv5Config:
    """Architecture hyperparameters: the ``depth_multiple``/``width_multiple`` of the yaml, plus the head."""

    depth_multiple: float = 0.33
    width_multiple: float = 0.25
    num_classes: int = 80
    anchors: tuple[tuple[tuple[float, float], ...], ...] = COCO_ANCHORS  # pixels, per scale

    @classmethod
    def variant(cls, name: str, num_classes: int = 80) -> YOLOv5Config:
        """Config of an official variant: ``'n'``, ``'s'``, ``'m'``, ``'l'`` or ``'x'``."""
        gd, gw = VARIANTS[name]
        return cls(gd, gw, num_classes)

    def channels(self, c: int) -> int:
        """Scale a yaml channel count by the width multiple, rounded up to a multiple of 8 (as upstream)."""
        return math.ceil(c * self.width_multiple / 8) * 8

    def repeats(self, n: int) -> int:
        """Scale a yaml repeat count by the depth multiple (at least 1)."""
        return max(round(n * self.depth_multiple), 1) if n > 1 else n


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, 'same' padding for odd kernels (upstream ``autopad``)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        # eps/momentum are upstream's; eps matters for inference with the official running stats.
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual add when ``shortcut`` (backbone) and shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1)
        self.cv2 = Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with 3 convs: ``cv3(cat(m(cv1(x)), cv2(x)))``; ``m`` is ``n`` Bottlenecks at half width."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c1, c_, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools == SPP with 5/9/13 kernels."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Channel concatenation; a module only so layer indices match the official ones."""

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), 1)


class Detect(nn.Module):
    """The head: one 1x1 conv per scale to ``A * (5 + nc)`` channels; ``anchors`` in stride units
    (upstream)."""

    def __init__(self, nc: int, anchors: torch.Tensor, channels: Sequence[int]):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = anchors.shape[:2]
        self.register_buffer("anchors", anchors.float())  # (nl, na, 2), pixels / stride
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)


class YOLOv5(Detector):
    """YOLOv5 v6.x with P3-P5 outputs; ``self.model`` has the official 25 layers in order.

    Args:
        cfg: width/depth multiples, classes and anchors.
        names: class names (index = class id); default COCO names when ``num_classes == 80``.

    Shape:
        - input: ``(B, 3, H, W)`` RGB in 0..1, ``H`` and ``W`` multiples of 32.
        - neck_features: ``[(B, C3, H/8, W/8), (B, C4, H/16, W/16), (B, C5, H/32, W/32)]``
          (yolov5n: 64/128/256 channels).
        - output: ``(B, N, 5 + nc)`` with ``N = 3 * (H*W/64 + H*W/256 + H*W/1024)``.
    """

    strides = STRIDES

    def __init__(self, cfg: YOLOv5Config = YOLOv5Config(), names: Sequence[str] | None = None):
        super().__init__()
        self.cfg = cfg
        ch, n = cfg.channels, cfg.repeats
        c64, c128, c256, c512, c1024 = (ch(c) for c in (64, 128, 256, 512, 1024))
        layers: list[nn.Module] = [
            Conv(3, c64, 6, 2, 2),  # 0 P1/2
            Conv(c64, c128, 3, 2),  # 1 P2/4
            C3(c128, c128, n(3)),  # 2
            Conv(c128, c256, 3, 2),  # 3 P3/8
            C3(c256, c256, n(6)),  # 4
            Conv(c256, c512, 3, 2),  # 5 P4/16
            C3(c512, c512, n(9)),  # 6
            Conv(c512, c1024, 3, 2),  # 7 P5/32
            C3(c1024, c1024, n(3)),  # 8
            SPPF(c1024, c1024, 5),  # 9
            Conv(c1024, c512, 1, 1),  # 10
            nn.Upsample(scale_factor=2, mode="nearest"),  # 11
            Concat(),  # 12: cat layer 6 (backbone P4)
            C3(2 * c512, c512, n(3), shortcut=False),  # 13
            Conv(c512, c256, 1, 1),  # 14
            nn.Upsample(scale_factor=2, mode="nearest"),  # 15
            Concat(),  # 16: cat layer 4 (backbone P3)
            C3(2 * c256, c256, n(3), shortcut=False),  # 17 P3 out
            Conv(c256, c256, 3, 2),  # 18
            Concat(),  # 19: cat layer 14
            C3(2 * c256, c512, n(3), shortcut=False),  # 20 P4 out
            Conv(c512, c512, 3, 2),  # 21
            Concat(),  # 22: cat layer 10
            C3(2 * c512, c1024, n(3), shortcut=False),  # 23 P5 out
        ]
        anchors = torch.tensor(cfg.anchors, dtype=torch.float32)  # (nl, na, 2) pixels
        anchors = anchors / torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
        layers.append(Detect(cfg.num_classes, anchors, (c256, c512, c1024)))  # 24
        self.model = nn.ModuleList(layers)
        if names is None:
            names = COCO_NAMES if cfg.num_classes == len(COCO_NAMES) else [f"class{i}" for i in
                                                                            range(cfg.num_classes)]
        if len(names) != cfg.num_classes:
            raise ValueError(f"{len(names)} names for {cfg.num_classes} classes")
        self.names = list(names)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def neck_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        x = m[3](m[2](m[1](m[0](images))))
        b3 = m[4](x)  # backbone P3
        b4 = m[6](m[5](b3))  # backbone P4
        h10 = m[10](m[9](m[8](m[7](b4))))
        h14 = m[14](m[13](m[12]((m[11](h10), b4))))
        p3 = m[17](m[16]((m[15](h14), b3)))
        p4 = m[20](m[19]((m[18](p3), h14)))
        p5 = m[23](m[22]((m[21](p4), h10)))
        return [p3, p4, p5]

    def heads(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.model[24].m, features)]

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        det = self.model[24]
        out = []
        for i, r in enumerate(raw):
            b, _, ny, nx = r.shape
            # (B, A*no, ny, nx) -> (B, A, ny, nx, no): rows ordered (anchor, y, x) as upstream.
            y = r.view(b, det.na, det.no, ny, nx).permute(0, 1, 3, 4, 2).float().sigmoid()
            gy, gx = torch.meshgrid(torch.arange(ny, device=r.device, dtype=torch.float32),
                                    torch.arange(nx, device=r.device, dtype=torch.float32), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2)
            anchor_px = (det.anchors[i] * self.strides[i]).view(1, det.na, 1, 1, 2)
            xy = (y[..., 0:2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_px
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(b, -1, det.no))
        return torch.cat(out, 1)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], names: Sequence[str] | None = None,
                        source: str = "state_dict") -> YOLOv5:
        """Build the variant the weights describe and load them (fp16 weights become fp32).

        Raises:
            InvismapError: the keys or shapes are not those of a YOLOv5 v6 P3-P5 model; ``source``
                (a file name) is named in the message.
        """
        cfg = infer_config(state_dict, source)
        if names is not None and len(names) != cfg.num_classes:
            log.warning("%s: %d class names for %d classes; using default names", source, len(names),
                        cfg.num_classes)
            names = None
        model = cls(cfg, names)
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise InvismapError(f"{source}: not a YOLOv5 v6 (P3-P5) checkpoint: {first}") from None
        return model.eval()


def infer_config(state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> YOLOv5Config:
    """Read width, depth, classes and anchors off the tensor shapes of an official state_dict."""
    required = ("model.0.conv.weight", "model.24.anchors", "model.24.m.0.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        sample = ", ".join(list(state_dict)[:3])
        raise InvismapError(f"{source}: not a YOLOv5 v6 (P3-P5) checkpoint: no key {missing[0]} "
                            f"(keys start {sample or 'nothing'}); use a yolov5n/s/m/l/x .pt file")
    width = state_dict["model.0.conv.weight"].shape[0] / 64
    n6 = len({m.group(1) for k in state_dict if (m := re.match(r"model\.6\.m\.(\d+)\.", k))})
    depth = n6 / 9
    # Snap to the official multiples so repeats() rounds exactly as upstream does.
    depth = min((v[0] for v in VARIANTS.values()), key=lambda d: abs(d - depth)) if n6 else depth
    anchors_stride = state_dict["model.24.anchors"].float()  # (nl, na, 2) in stride units
    if anchors_stride.ndim != 3 or anchors_stride.shape[0] != 3 or anchors_stride.shape[2] != 2:
        raise InvismapError(f"{source}: model.24.anchors has shape {tuple(anchors_stride.shape)}, "
                            "expected (3, A, 2): not a YOLOv5 P3-P5 model")
    na = anchors_stride.shape[1]
    out_ch = state_dict["model.24.m.0.weight"].shape[0]
    if out_ch % na or out_ch // na <= 5:
        raise InvismapError(f"{source}: head has {out_ch} channels, "
                            f"not a multiple of {na} anchors x (5 + nc)")
    px = anchors_stride * torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
    anchors = tuple(tuple((float(w), float(h)) for w, h in level.tolist()) for level in px)
    return YOLOv5Config(depth, width, out_ch // na - 5, anchors)
