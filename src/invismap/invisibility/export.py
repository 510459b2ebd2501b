"""Deployment: the predictor as an ONNX model, and an ONNX Runtime module that ``predict`` can use.

The exported graph takes ``rgb`` ``(B, 3, H, W)`` float32 in 0..1 (letterboxed, H and W multiples of 32; batch,
height and width are dynamic) and returns ``logits`` ``(B, 1, H, W)``; the map is ``sigmoid(logits)``. The
input size the predictor was trained at and the normalisation are stored as ONNX metadata.

Example:
    >>> export_predictor("runs/predictor/headline/predictor.pt", "predictor.onnx")  # doctest: +SKIP
    >>> model, meta = load_onnx_predictor("predictor.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invismap import __version__
from invismap.config import to_dict
from invismap.errors import file_error
from invismap.io import atomic_write

ONNX_KIND = "invismap.predictor"


def export_predictor(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write ``out`` (.onnx) from a ``predictor.pt``; returns its path."""
    import onnx

    from invismap.invisibility.predictor import load_predictor

    model, meta = load_predictor(checkpoint)
    size = int(meta["input_size"])
    example = torch.rand(1, 3, size * 3 // 4 // 32 * 32 or 32, size)
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, input_names=["rgb"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"rgb": {0: "batch", 2: "height", 3: "width"},
                                    "logits": {0: "batch", 2: "height", 3: "width"}}, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue())
    info = {"kind": ONNX_KIND, "input_size": str(size), "normalisation": str(meta["normalisation"]),
            "output": "logits; map = sigmoid(logits)", "invismap_version": __version__,
            "unet_config": json.dumps(to_dict(meta["unet_config"]))}
    for key, value in info.items():
        graph.metadata_props.add(key=key, value=value)
    with atomic_write(out, "wb") as f:
        f.write(graph.SerializeToString())
    return Path(out)


class OnnxPredictor(nn.Module):
    """Runs an exported predictor with ONNX Runtime behind the same ``forward`` as the PyTorch U-Net."""

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise file_error(path, f"not a readable ONNX model ({str(e).splitlines()[0][:120]})",
                             "re-export it with 'invismap export'") from None
        self.meta: dict[str, Any] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("kind") != ONNX_KIND:
            raise file_error(path, "is not an invismap predictor export", "export one with 'invismap export'")

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"rgb": np.ascontiguousarray(rgb.detach().cpu().numpy(), np.float32)})
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
