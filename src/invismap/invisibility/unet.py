"""A small U-Net that predicts the pixel invisibility map from the color image alone.

Paper "Pixel Invisibility", Section 3.4: the deployable product is a network that sees only the RGB frame
and outputs, per pixel, how likely the color camera is to miss what a thermal camera would see. It regresses
the pair score F of :mod:`invismap.invisibility.score` (teacher on color vs. distilled student on thermal).

Design, for real time on a CPU next to the detector it warns for:

- F is smooth (stride 8/16/32 neck features upsampled bilinearly), so the network works on a half-size copy
  of the input (``in_scale=0.5``) and predicts at 1/4 of that internal resolution (1/8 of the input, the
  finest scale F has), then upsamples bilinearly to the input size.
- Plain 3x3 conv + BatchNorm + ReLU blocks: depthwise-separable convs cut the FLOPs 6x (0.02 GMAC) but
  not the eager CPU time at these widths (7.6 vs 6.8 ms, memory-bound small kernels); widths
  ``base_width * 2**level`` (8-16-32-64-128 by default) over five levels
  (internal strides 2..32, i.e. 4..64 input pixels; receptive field ~370 input pixels).
- Skips are merged by bilinear upsampling to the skip's size (taken from the tensor shape, so any input
  size works, including sizes not divisible by 32) and concatenation.
- No data-dependent control flow: the graph traces and exports to ONNX as is (dynamic height/width; checked
  against onnxruntime in ``tests/test_predictor.py``).

Latency at 640x480, batch 1, eager, ``torch.set_num_threads(2)``, on the project's 2-core CPU, against the
teacher yolov5n (real weights) in the same process, models run in turn (``python -m
invismap.invisibility.unet``; other jobs shared the CPU, so the ratio is the figure to trust; the same
ratios hold at one thread). Budget: ~25% of the teacher.

    ================================  ======  =====  =====================  ============
    model                             params  GMAC   ms median (min)        % of teacher
    ================================  ======  =====  =====================  ============
    yolov5n (teacher)                 1.87 M  1.68   63.5 (48.9)            100
    **base 8, depth 5 (default)**     0.43 M  0.14   7.0 (4.9)              11 (10)
    base 12                           0.97 M  0.31   9.7 (6.3)              15 (13)
    base 16                           1.73 M  0.54   11.2 (8.1)             18 (17)
    base 8, in_scale 1.0 (full res)   0.43 M  0.55   14.1 (9.7)             22 (20)
    ================================  ======  =====  =====================  ============

The whole :func:`~invismap.invisibility.predict.predict_image` (letterbox, U-Net, sigmoid, map back) plus the
heat-map overlay takes ~9 ms per 640x480 frame with the default. Width 8 at half input resolution is ~10% of
the teacher, which leaves the pre/post-processing and the overlay inside the 25% budget, and it is the
smallest capacity for a few hundred training pairs; base 12-16 also fit (``unet.base_width``) if the
held-out error says more capacity pays, full-resolution input does not.

Example:
    >>> net = InvisibilityUNet(UNetConfig())
    >>> net.predict(torch.rand(1, 3, 480, 640)).shape
    torch.Size([1, 1, 480, 640])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`InvisibilityUNet` (stored in every predictor checkpoint)."""

    base_width: int = 8  # channels of the first level; level i has base_width * 2**i
    depth: int = 5  # resolution levels (internal strides 2, 4, ..., 2**depth)
    in_scale: float = 0.5  # the input is resized by this factor before the first conv (1.0 = none)
    out_level: int = 2  # the decoder stops at level out_level (internal stride 2**out_level)
    in_channels: int = 3  # RGB in 0..1
    out_channels: int = 1  # logits of the invisibility map

    def widths(self) -> list[int]:
        """Channels per level."""
        return [self.base_width * 2 ** i for i in range(self.depth)]


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class InvisibilityUNet(nn.Module):
    """``(B, 3, H, W)`` RGB in 0..1 -> ``(B, 1, H, W)`` logits; :meth:`predict` applies the sigmoid.

    Args:
        cfg: the architecture (:class:`UNetConfig`).
    """

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        cfg = cfg or UNetConfig()
        if cfg.depth < 2 or not 0 <= cfg.out_level < cfg.depth:
            raise ValueError(f"need depth >= 2 and 0 <= out_level < depth, got {cfg}")
        if not 0 < cfg.in_scale <= 1:
            raise ValueError(f"in_scale must be in (0, 1], got {cfg.in_scale}")
        self.cfg = cfg
        w = cfg.widths()
        # Encoder: level 0 is the stride-2 stem, each further level halves the resolution.
        self.down = nn.ModuleList([nn.Sequential(conv_bn_relu(cfg.in_channels, w[0], 2))])
        for i in range(1, cfg.depth):
            self.down.append(nn.Sequential(conv_bn_relu(w[i - 1], w[i], 2), conv_bn_relu(w[i], w[i])))
        # Decoder: from the deepest level up to out_level, each merging the skip of its level.
        self.up = nn.ModuleList([conv_bn_relu(w[i + 1] + w[i], w[i])
                                 for i in reversed(range(cfg.out_level, cfg.depth - 1))])
        self.head = nn.Conv2d(w[cfg.out_level], cfg.out_channels, 1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in 0..1 -> ``(B, 1, H, W)`` logits at the input size."""
        size = rgb.shape[-2:]
        x = rgb
        if self.cfg.in_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.cfg.in_scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))  # (B, w[i+1] + w[i], h_i, w_i) -> (B, w[i], h_i, w_i)
        x = self.head(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        """The invisibility map in [0, 1], ``(B, 1, H, W)`` (no gradients; call ``eval()`` first)."""
        return torch.sigmoid(self(rgb))


def count_macs(model: nn.Module, shape: tuple[int, ...] = (1, 3, 480, 640)) -> int:
    """Multiply-accumulates of the convolutions in one forward pass of a ``shape`` input."""
    total = 0

    def hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = mod.weight[0].numel()  # (C_in / groups) * kh * kw
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    return total


def measure_latency(models: dict[str, nn.Module], shape: tuple[int, ...] = (1, 3, 480, 640), runs: int = 30,
                    warmup: int = 3) -> dict[str, tuple[float, float, float]]:
    """``(median wall, min wall, median CPU)`` ms of an eager forward pass per model (``eval()``, no grad).

    The models run in turn within each round, so a busy machine slows them alike. With one thread the CPU
    time (``time.process_time``) does not count time spent descheduled, so it is the stable figure on a
    shared machine; with more threads it also counts the threads' spin-waiting.
    """
    import time

    x = torch.rand(shape)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
        for i in range(warmup + runs):
            for name, m in models.items():
                t, c = time.perf_counter(), time.process_time()
                m(x)
                if i >= warmup:
                    wall[name].append(1000 * (time.perf_counter() - t))
                    cpu[name].append(1000 * (time.process_time() - c))
    return {k: (_median(wall[k]), min(wall[k]), _median(cpu[k])) for k in models}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _benchmark(argv: list[str] | None = None) -> None:  # python -m invismap.invisibility.unet
    import argparse

    p = argparse.ArgumentParser(description="U-Net vs yolov5n latency at 640x480, batch 1, eager")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from invismap.detector.zoo import load_detector
        teacher, name = load_detector("yolov5n").float(), "yolov5n (teacher)"
    except Exception as e:  # noqa: BLE001 - no assets: the same compute with random weights
        from invismap.detector.yolov5 import YOLOv5, YOLOv5Config
        teacher, name = YOLOv5(YOLOv5Config.variant("n")), f"yolov5n random weights ({e})"
    models = {name: teacher}
    for label, cfg in [("unet default", UNetConfig()), ("unet base 12", UNetConfig(base_width=12)),
                       ("unet base 16", UNetConfig(base_width=16)),
                       ("unet in_scale 1", UNetConfig(in_scale=1.0))]:
        models[label] = InvisibilityUNet(cfg)
    ms = measure_latency(models, runs=args.runs)
    print(f"{args.threads} thread(s), 640x480, batch 1, eager, {args.runs} runs: "
          "wall median / min, CPU median")
    for label, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        med, low, cpu = ms[label]
        ref = ms[name]
        print(f"{label:28s} params {params / 1e6:6.3f} M  GMAC {count_macs(model) / 1e9:6.3f}  "
              f"wall {med:7.1f} / {low:6.1f} ms  CPU {cpu:7.1f} ms  "
              f"({med / ref[0]:.1%} / {low / ref[1]:.1%} / {cpu / ref[2]:.1%} of the teacher)")


if __name__ == "__main__":
    _benchmark()
