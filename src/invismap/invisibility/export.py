"""Deployment: the predictor made fast for inference, as an ONNX model (fp32 or int8), run by ONNX Runtime.

The exported graph takes ``rgb`` ``(B, 3, H, W)`` float32 in 0..1 (letterboxed, H and W multiples of 32;
batch, height and width are dynamic) and returns ``logits`` ``(B, 1, H, W)``; the map is ``sigmoid(logits)``.
The input size the predictor was trained at and the normalisation are stored as ONNX metadata.

Three ways to make the predictor cheaper, measured side by side in ``benchmarks/bench_predictor.py`` and for
accuracy in ``benchmarks/bench_accuracy.py`` (figures in ``BENCHMARKS.md``):

- :func:`optimize_for_inference`: fold each BatchNorm into the conv before it (:func:`fuse_conv_bn`) and use
  channels-last weights (PyTorch, exact up to rounding);
- ONNX Runtime (:class:`OnnxPredictor`), which fuses conv+BN+ReLU itself;
- :func:`quantize_predictor`: int8 static quantisation (QDQ, per-channel weights, activation ranges calibrated
  on real letterboxed frames, :func:`calibration_frames`).

Example:
    >>> export_predictor("runs/predictor/headline/predictor.pt", "predictor.onnx")  # doctest: +SKIP
    >>> quantize_predictor("predictor.onnx", "predictor.int8.onnx",  # doctest: +SKIP
    ...                    calibration_frames("runs/msrs"))
    >>> model, meta = load_onnx_predictor("predictor.int8.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invismap import __version__
from invismap.config import to_dict
from invismap.data.manifest import evenly
from invismap.errors import InvismapError, file_error
from invismap.onnx_io import onnx_graph, onnx_metadata, ort_session, write_onnx

ONNX_KIND = "invismap.predictor"


# --------------------------------------------------------------------------------------------- PyTorch

def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every ``Conv2d`` directly followed by a ``BatchNorm2d``
    inside an ``nn.Sequential`` folded into one conv (the BatchNorm becomes ``Identity``); ``eval()`` mode.

    The U-Net's blocks are ``Sequential(conv, bn, relu)``, so this removes every BatchNorm pass; outputs agree
    with the original to float rounding (~1e-6).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return fused


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """:func:`fuse_conv_bn`, with the weights in channels-last layout (``eval()`` mode, a copy).

    Channels-last lets oneDNN run the convolutions without reordering every activation (NCHW input is fine:
    the first convolution switches the layout). Outputs agree with the original to float rounding.
    """
    return fuse_conv_bn(model).to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------- ONNX

def export_predictor(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write ``out`` (.onnx, float32) from a ``predictor.pt``; returns its path."""
    from invismap.invisibility.predictor import NORMALISATION, load_predictor

    model, meta = load_predictor(checkpoint)
    size = int(meta.get("input_size", 640))  # training checkpoints (ckpt/*.pt) may predate these keys
    example = torch.rand(1, 3, size * 3 // 4 // 32 * 32 or 32, size)
    graph = onnx_graph(model, example, "rgb", {"logits": {0: "batch", 2: "height", 3: "width"}}, opset)
    arch = meta.get("architecture", "unet")
    info = {"kind": ONNX_KIND, "input_size": size, "normalisation": meta.get("normalisation", NORMALISATION),
            "output": "logits; map = sigmoid(logits)", "invismap_version": __version__, "architecture": arch,
            f"{arch}_config": json.dumps(to_dict(meta[f"{arch}_config"])), "precision": "float32"}
    if arch == "neck":  # the graph holds the teacher's backbone and neck too
        info["teacher"] = str(meta.get("teacher", ""))
    return write_onnx(graph, info, out)


def calibration_frames(data: str | Path, size: int = 640, count: int = 32, split: str = "train",
                       progress: bool = True) -> list[np.ndarray]:
    """``count`` letterboxed color frames of ``split`` (every condition, evenly spaced over the manifest),
    each ``(1, 3, H, W)`` float32 in 0..1: activation ranges for :func:`quantize_predictor`.

    Never pass the test split: calibration is a (tiny) fit to the data.
    """
    from tqdm import tqdm

    from invismap.data.dataset import PairDataset
    from invismap.data.manifest import load_manifest

    if count < 1:
        raise InvismapError(f"--calibration-frames {count}: the int8 calibration needs at least 1 frame")
    manifest = load_manifest(data).select(split=split)
    if len(manifest) == 0:
        raise InvismapError(f"{data}: no pairs in split '{split}' to calibrate the int8 model on")
    dataset = PairDataset(manifest, size)
    picks = evenly(range(len(dataset)), count)
    return [dataset[i]["rgb"][None].numpy()
            for i in tqdm(picks, desc="calibration frames", unit="img", disable=not progress)]


class _Frames:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over in-memory frames."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self._it = iter([{"rgb": np.ascontiguousarray(f, np.float32)} for f in frames])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_predictor(onnx_in: str | Path, out: str | Path, frames: Sequence[np.ndarray],
                       method: str = "minmax", keep_float: Sequence[str] = ()) -> Path:
    """Write an int8 copy of an exported predictor: QDQ format, per-channel int8 weights, uint8 activations.

    Args:
        onnx_in: float32 export (:func:`export_predictor`).
        out: int8 .onnx file.
        frames: calibration inputs, each ``(B, 3, H, W)`` float32 in 0..1 (:func:`calibration_frames`).
        method: activation range estimator: ``minmax``, ``percentile`` (99.999th) or ``entropy``.
        keep_float: ONNX node names left in float32 (e.g. the 1x1 output conv).

    Returns:
        ``out``; its metadata is the input's plus ``precision`` and the calibration it used.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, got {method!r}")
    if not frames:
        raise ValueError("int8 calibration needs at least one frame")
    meta = onnx_metadata(onnx_in)
    if meta.get("kind") != ONNX_KIND:
        raise file_error(onnx_in, "is not an invismap predictor export", "export one with 'invismap export'")
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_in), str(pre), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            quantize_static(str(pre), str(q), _Frames(frames), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=list(keep_float))
        graph = onnx.load(str(q))
    del graph.metadata_props[:]
    meta.update(precision="int8 static QDQ (per-channel int8 weights, uint8 activations)",
                calibration=f"{method} over {len(frames)} frames", float_nodes=json.dumps(list(keep_float)))
    return write_onnx(graph, meta, out)


class OnnxPredictor(nn.Module):
    """Runs an exported predictor with ONNX Runtime behind the same ``forward`` as the PyTorch U-Net.

    Args:
        path: .onnx file from :func:`export_predictor` or :func:`quantize_predictor`.
        threads: intra-op threads (0 = one per core).
        spin: let idle worker threads busy-wait (faster alone, slows a detector running next to it; see
            :func:`~invismap.onnx_io.ort_session`).
    """

    def __init__(self, path: str | Path, threads: int = 0, spin: bool = False):
        super().__init__()
        self.session = ort_session(path, threads, spin)
        self.meta: dict[str, Any] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("kind") != ONNX_KIND:
            raise file_error(path, "is not an invismap predictor export", "export one with 'invismap export'")

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in 0..1 -> ``(B, 1, H, W)`` logits."""
        batch = np.ascontiguousarray(rgb.detach().cpu().numpy(), np.float32)
        (logits,) = self.session.run(None, {"rgb": batch})
        return torch.from_numpy(logits)


def load_onnx_predictor(path: str | Path, threads: int = 0) -> tuple[OnnxPredictor, dict[str, Any]]:
    """``(model, meta)`` like :func:`~invismap.invisibility.predictor.load_predictor`, for an .onnx file."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "ONNX model not found")
    model = OnnxPredictor(path, threads)
    meta = dict(model.meta)
    meta["input_size"] = int(meta["input_size"])
    return model, meta
