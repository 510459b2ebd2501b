"""Deployment of detectors (the teacher, the distilled thermal detector) as ONNX models, and ONNX helpers.

The exported graph takes ``images`` ``(B, C, H, W)`` float32 in 0..1, letterboxed with gray 114 to a multiple
of the largest stride (batch, height and width are dynamic); ``C`` is 1 for a thermal detector (thermal in
0..1) and 3 for a color one (RGB in 0..1). It returns the raw head outputs, one per scale, fine to coarse::

    head_s8   (B, A*(5+nc), H/8,  W/8)    no activation (what Detector.heads returns)
    head_s16  (B, A*(5+nc), H/16, W/16)
    head_s32  (B, A*(5+nc), H/32, W/32)
    predictions (B, N, 5+nc)              Detector.decode: xywh in input pixels, objectness, class probs

Two-scale detectors (yolov3-tiny, yolo-fastest) have two heads. The metadata records the kind, input size,
channels, normalisation, letterbox padding value, strides, class names and output layout.

:class:`OnnxDetector` runs such a file where a :class:`~invismap.detector.base.Detector` is expected for
inference (:func:`invismap.detector.postprocess.detect`, ``invismap detect``, ``invismap eval-detector``).
The ONNX Runtime helpers here (:func:`ort_session`, :func:`write_onnx`) are shared with the predictor's export
(:mod:`invismap.invisibility.export`).

Example:
    >>> export_detector("runs/distill/headline/thermal_detector.pt", "thermal_detector.onnx")  # doctest: +SKIP
    >>> session = ort_session("thermal_detector.onnx", threads=2)  # doctest: +SKIP
    >>> detect(OnnxDetector("thermal_detector.onnx"), [thermal_image])  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invismap import __version__
from invismap.detector.base import Detector
from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write

ONNX_KIND = "invismap.detector"
LETTERBOX_PAD = 114  # gray the detectors were trained with (see detector.postprocess)


def ort_session(path: str | Path, threads: int = 0, spin: bool = False):
    """An ONNX Runtime CPU session for ``path``.

    Args:
        path: .onnx file.
        threads: intra-op threads (0 = ONNX Runtime's default, one per core).
        spin: let idle worker threads busy-wait for the next task. Off by default: the map runs next to a
            PyTorch detector, and spinning threads keep the cores busy for a while after each run, which slows
            whatever runs next on the same cores (measured in ``benchmarks/bench_predictor.py``).

    Raises:
        InvismapError: not a readable ONNX model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise file_error(path, f"not a readable ONNX model ({str(e).splitlines()[0][:120]})",
                         "re-export it with 'invismap export'") from None


def onnx_graph(model: nn.Module, example: torch.Tensor, input_name: str, outputs: dict[str, dict[int, str]],
               opset: int = 17):
    """Trace ``model`` on ``example`` into an ``onnx.ModelProto``.

    The input's batch, height and width are dynamic; ``outputs`` maps each output name to its dynamic axes
    (``{axis: name}``).
    """
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (example,), buf, input_names=[input_name], output_names=list(outputs),
                      opset_version=opset, dynamic_axes={input_name: {0: "batch", 2: "height", 3: "width"},
                                                         **outputs}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def write_onnx(graph, info: dict[str, Any], out: str | Path) -> Path:
    """Add ``info`` (string values) as ONNX metadata to ``graph`` and write it atomically to ``out``."""
    for key, value in info.items():
        graph.metadata_props.add(key=key, value=str(value))
    with atomic_write(out, "wb") as f:
        f.write(graph.SerializeToString())
    return Path(out)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an .onnx file (without building a session)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


class _RawAndDecoded(nn.Module):
    """``images -> (*raw heads, decoded predictions)``: the graph that is exported."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.detector.heads(self.detector.neck_features(images))
        return (*raw, self.detector.decode(raw))


def detector_input_channels(detector: Detector) -> int:
    """1 for the distilled thermal detector (it reads one thermal channel), else 3 (RGB)."""
    from invismap.distill.student import ThermalDetector

    return 1 if isinstance(detector, ThermalDetector) else 3


def head_names(detector: Detector) -> list[str]:
    """Output names of the raw heads, fine to coarse: ``head_s8``, ``head_s16``, ..."""
    return [f"head_s{s}" for s in detector.strides]


def export_detector(model: str | Path | Detector, out: str | Path, size: int = 640, opset: int = 17) -> Path:
    """Write ``out`` (.onnx) for a detector: a name (``yolov5n``), a checkpoint (``thermal_detector.pt``) or a
    :class:`~invismap.detector.base.Detector`; returns the path. ``size`` is the letterbox size recorded in the
    metadata (the export itself accepts any multiple of the largest stride)."""
    from invismap.detector.zoo import load_detector

    detector = model if isinstance(model, Detector) else load_detector(model)
    detector = detector.float().eval()
    channels = detector_input_channels(detector)
    if size % detector.max_stride:
        raise InvismapError(f"--size {size} must be a multiple of the detector's largest stride {detector.max_stride}")
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
            raise file_error(self.path, "not found", "export a detector with 'invismap export --model M --out X.onnx'")
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
