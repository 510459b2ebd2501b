"""A detector exported to ONNX (:func:`invismap.detector.export.export_detector`), run by ONNX Runtime.

Example:
    >>> detect(OnnxDetector("thermal_detector.onnx"), [thermal_image])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from invismap.errors import file_error
from invismap.onnx_io import ort_session

ONNX_KIND = "invismap.detector"  # the 'kind' metadata of a detector export


class OnnxDetector:
    """An exported detector run by ONNX Runtime, usable wherever inference needs a detector.

    It has what :func:`~invismap.detector.postprocess.detect` uses: ``names``, ``strides``, ``max_stride``
    and a call from letterboxed ``(B, 3, H, W)`` images in 0..1 to the decoded predictions
    ``(B, N, 5 + nc)``. A one-channel (thermal) export gets the mean of the three channels, as the PyTorch
    thermal detector does with gray-as-RGB input.

    Args:
        path: .onnx file written by :func:`export_detector`.
        threads: ONNX Runtime intra-op threads (0 = one per core).

    Raises:
        InvismapError: not an invismap detector export (e.g. a predictor), or an unreadable file.
    """

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise file_error(self.path, "not found",
                             "export a detector with 'invismap export --model M --out X.onnx'")
        self.session = ort_session(self.path, threads)  # a one-line error for files that are not ONNX
        meta = dict(self.session.get_modelmeta().custom_metadata_map)  # the file is read once, by the session
        if meta.get("kind") != ONNX_KIND:
            raise file_error(self.path, f"not a detector export (kind {meta.get('kind')!r})",
                             "give a file written by 'invismap export --model DETECTOR'")
        self.names = list(json.loads(meta["names"]))
        self.strides = tuple(json.loads(meta["strides"]))
        self.max_stride = max(self.strides)
        self.channels = int(meta["input_channels"])
        self.input_size = int(meta["input_size"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in 0..1 (H, W multiples of ``max_stride``) -> ``(B, N, 5 + nc)``."""
        x = images.mean(1, keepdim=True) if self.channels == 1 and images.shape[1] == 3 else images
        (pred,) = self.session.run(["predictions"], {"images": x.float().contiguous().numpy()})
        return torch.from_numpy(pred)


__all__ = ["ONNX_KIND", "OnnxDetector"]
