"""ONNX files, shared by every export (detectors, the predictor): trace a module into a graph, write it with
metadata, read the metadata back, and run it with ONNX Runtime on the CPU.

Example:
    >>> graph = onnx_graph(model, torch.rand(1, 3, 64, 64), "images", {"out": {0: "batch"}})  # doctest: +SKIP
    >>> write_onnx(graph, {"kind": "invismap.detector"}, "model.onnx")  # doctest: +SKIP
    >>> session = ort_session("model.onnx", threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invismap.errors import file_error
from invismap.io import atomic_write


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


__all__ = ["onnx_graph", "onnx_metadata", "ort_session", "write_onnx"]
