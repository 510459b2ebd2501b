"""Deployment of detectors (the teacher, the distilled thermal detector) as ONNX models.

The exported graph takes ``images`` ``(B, C, H, W)`` float32 in 0..1, letterboxed with gray 114 to a multiple
of the largest stride (batch, height and width are dynamic); ``C`` is 1 for a thermal detector (thermal in
0..1) and 3 for a color one (RGB in 0..1). It returns the raw head outputs, one per scale, fine to coarse::

    head_s8   (B, A*(5+nc), H/8,  W/8)    no activation (what Detector.heads returns)
    head_s16  (B, A*(5+nc), H/16, W/16)
    head_s32  (B, A*(5+nc), H/32, W/32)
    predictions (B, N, 5+nc)              Detector.decode: xywh in input pixels, objectness, class probs

Two-scale detectors (yolov3-tiny, yolo-fastest) have two heads. The metadata records the kind, input size,
channels, normalisation, letterbox padding value, strides, class names and output layout.

:class:`~invismap.detector.onnx_detector.OnnxDetector` runs such a file where a
:class:`~invismap.detector.base.Detector` is expected for inference
(:func:`invismap.detector.postprocess.detect`, ``invismap detect``, ``invismap eval-detector``); the ONNX
helpers are in :mod:`invismap.onnx_io`.

Example:
    >>> export_detector("runs/distill/headline/thermal_detector.pt",  # doctest: +SKIP
    ...                 "thermal_detector.onnx")
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from invismap import __version__
from invismap.detector.base import Detector
from invismap.detector.onnx_detector import ONNX_KIND
from invismap.errors import InvismapError
from invismap.onnx_io import onnx_graph, write_onnx

LETTERBOX_PAD = 114  # gray the detectors were trained with (see detector.postprocess)


class _RawAndDecoded(nn.Module):
    """``images -> (*raw heads, decoded predictions)``: the graph that is exported."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.detector.heads(self.detector.neck_features(images))
        return (*raw, self.detector.decode(raw))


def head_names(detector: Detector) -> list[str]:
    """Output names of the raw heads, fine to coarse: ``head_s8``, ``head_s16``, ..."""
    return [f"head_s{s}" for s in detector.strides]


def export_detector(model: str | Path | Detector, out: str | Path, size: int = 640, opset: int = 17) -> Path:
    """Write ``out`` (.onnx) for a detector: a name (``yolov5n``), a checkpoint (``thermal_detector.pt``) or a
    :class:`~invismap.detector.base.Detector`; returns the path. ``size`` is the letterbox size recorded in
    the metadata (the export itself accepts any multiple of the largest stride)."""
    from invismap.detector.zoo import load_detector

    detector = model if isinstance(model, Detector) else load_detector(model)
    detector = detector.float().eval()
    channels = detector.in_channels
    if size % detector.max_stride:
        raise InvismapError(f"--size {size} must be a multiple of the detector's largest stride "
                            f"{detector.max_stride}")
    example = torch.rand(1, channels, size * 3 // 4 // detector.max_stride * detector.max_stride, size)
    outputs = {name: {0: "batch", 2: f"height/{s}", 3: f"width/{s}"}
               for name, s in zip(head_names(detector), detector.strides)}
    outputs["predictions"] = {0: "batch", 1: "boxes"}
    with warnings.catch_warnings():
        # The channel checks of the thermal detector read the input's channel count, which the graph fixes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        graph = onnx_graph(_RawAndDecoded(detector), example, "images", outputs, opset)
    source = model if isinstance(model, (str, Path)) else type(detector).__name__
    info = {"kind": ONNX_KIND, "source": str(source), "detector": type(detector).__name__,
            "input_size": size, "input_channels": channels,
            "normalisation": "thermal 0..1" if channels == 1 else "rgb 0..1",
            "letterbox_pad": LETTERBOX_PAD, "strides": json.dumps(list(detector.strides)),
            "names": json.dumps(list(detector.names)),
            "outputs": "head_s*: raw head outputs (no activation), fine to coarse; predictions: (B, N, 5+nc) "
                       "xywh input pixels, objectness, class probabilities",
            "invismap_version": __version__}
    return write_onnx(graph, info, out)
