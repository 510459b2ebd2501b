"""Load a detector by name (``yolov5n``) or by file (``.pt`` checkpoint, Darknet ``.cfg``).

Names resolve to files in the assets folders (``$INVISMAP_ASSETS``, then ``~/.cache/invismap``; see
:mod:`invismap.assets`). A ``.pt`` file is read safely (:func:`~invismap.detector.unpickle.load_checkpoint`)
and recognised by content:

- an invismap checkpoint: a dict with a ``'kind'`` string, built by the loader registered for that kind
  with :func:`register_kind` (``'yolov5'`` here; later stages add e.g. ``'thermal_detector'``);
- an official Ultralytics checkpoint: a dict whose ``'model'`` (or ``'ema'``) is a pickled model object;
- a plain ``state_dict`` (tensor per key), whose keys say the architecture (YOLOv5 v6 today).

Example:
    >>> model = load_detector("yolov5n")  # doctest: +SKIP
    >>> model = load_detector("weights/yolo-fastest-1.1-xl.cfg")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from invismap.detector.base import Detector
from invismap.detector.unpickle import PickledObject, load_checkpoint, module_state_dict
from invismap.detector.yolov5 import VARIANTS, YOLOv5
from invismap.errors import InvismapError, file_error
from invismap.registry import Registry

# Short names -> file inside an assets root.
NAMED_MODELS: dict[str, str] = {f"yolov5{v}": f"weights/yolov5{v}.pt" for v in VARIANTS}
NAMED_MODELS.update({
    "yolo-fastest-1.1-xl": "weights/yolo-fastest-1.1-xl.cfg",
    "yolov3": "weights/yolov3.cfg",
    "yolov3-tiny": "weights/yolov3-tiny.cfg",
})

KindLoader = Callable[[dict, Path], Detector]
# checkpoint kind -> loader(checkpoint_dict, path) -> Detector. The distill stage registers its kinds when
# imported, which happens on demand so that loading a 'thermal_detector' file works without the caller
# importing the distill stage (and without a cycle).
KINDS: Registry[KindLoader] = Registry("detector checkpoint kind", modules=("invismap.distill.student",))
register_kind = KINDS.register  # @register_kind("kind"): build checkpoints with {'kind': kind}


def load_detector(name_or_path: str | Path) -> Detector:
    """A frozen (``eval()``, no grad) detector from a model name or a weights file.

    Args:
        name_or_path: ``yolov5n`` ... ``yolov5x``, ``yolo-fastest-1.1-xl``, ``yolov3(-tiny)``, or a path to a
            ``.pt``/``.pth`` checkpoint or a Darknet ``.cfg`` (weights: same stem, ``.weights``, beside it; a
            named model's may also be in another assets folder).

    Raises:
        InvismapError: unknown name, missing file (the message says where to put it), unsupported or
            unsafe file.
    """
    path = resolve_model_path(name_or_path)
    if path.suffix == ".cfg":
        model = _load_darknet(path, _darknet_weights(name_or_path, path))
    else:
        model = detector_from_checkpoint(load_checkpoint(path), path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_inference_detector(name_or_path: str | Path):
    """:func:`load_detector`, or an :class:`~invismap.detector.onnx_detector.OnnxDetector` for an ``.onnx``
    file.

    For inference only (``detect``, ``eval-detector``): an ONNX detector has no neck features to distil.
    """
    if str(name_or_path).lower().endswith(".onnx"):
        from invismap.detector.onnx_detector import OnnxDetector

        return OnnxDetector(Path(str(name_or_path)).expanduser())
    return load_detector(name_or_path)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Path of a model file: a registered name looked up in the assets folders, or an existing path."""
    text = str(name_or_path)
    if text in NAMED_MODELS:
        from invismap.assets import find_asset
        return find_asset(NAMED_MODELS[text])
    path = Path(text).expanduser()
    if path.suffix == ".weights":
        raise file_error(path, "Darknet weights are read through their .cfg",
                         f"pass {path.with_suffix('.cfg').name}, with the .weights beside it")
    if path.suffix not in (".pt", ".pth", ".cfg"):
        raise InvismapError(f"{text}: not a known model name nor a .pt/.pth/.cfg file "
                            f"(names: {', '.join(NAMED_MODELS)})")
    if not path.is_file():
        raise file_error(path, "model file not found", "check the path, or use a model name such as yolov5n")
    return path


def detector_from_checkpoint(obj: Any, path: Path) -> Detector:
    """Build a detector from what :func:`load_checkpoint` returned for ``path``."""
    if isinstance(obj, dict) and isinstance(obj.get("kind"), str):
        if obj["kind"] not in KINDS:
            raise file_error(path, f"checkpoint kind {obj['kind']!r} is not a detector",
                             f"detector kinds: {', '.join(KINDS.names())}")
        return KINDS.get(obj["kind"])(obj, path)
    if isinstance(obj, dict) and isinstance(obj.get("ema") or obj.get("model"), PickledObject):
        return _from_ultralytics(obj, path)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return YOLOv5.from_state_dict(obj, _names_beside(path), source=str(path))
    raise file_error(path, f"not a detector checkpoint (holds a {type(obj).__name__})",
                     "expected an Ultralytics YOLOv5 .pt, a YOLOv5 state_dict or an invismap checkpoint")


def _from_ultralytics(ckpt: dict, path: Path) -> YOLOv5:
    model = ckpt.get("ema") or ckpt["model"]  # EMA weights are the ones upstream evaluates
    try:
        sd = module_state_dict(model)
    except TypeError as e:
        raise file_error(path, f"model object holds non-tensor weights: {e}") from None
    names = model.state.get("names")
    if isinstance(names, dict):  # newer Ultralytics: {id: name}
        names = [names[i] for i in sorted(names)]
    return YOLOv5.from_state_dict(sd, names if isinstance(names, list) else None, source=str(path))


def _names_beside(path: Path) -> list[str] | None:
    """Class names from a ``coco.names`` next to a bare state_dict, if there is one."""
    f = path.parent / "coco.names"
    if f.is_file():
        names = [n.strip() for n in f.read_text(encoding="utf-8").splitlines() if n.strip()]
        return names or None
    return None


@register_kind("yolov5")
def _load_yolov5_kind(ckpt: dict, path: Path) -> YOLOv5:
    """``{'kind': 'yolov5', 'state_dict': ..., 'names': [...]}``: a YOLOv5 saved by invismap."""
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise file_error(path, "yolov5 checkpoint has no 'state_dict'")
    return YOLOv5.from_state_dict(ckpt["state_dict"], ckpt.get("names"), source=str(path))


def _darknet_weights(name_or_path: str | Path, cfg: Path) -> Path:
    """The ``.weights`` of a Darknet ``cfg``: the file beside it with the same stem; for a named model, else
    the first assets folder holding it (``invismap assets fetch`` writes to the user cache, which need not
    be the folder holding the cfg, e.g. a read-only shared one)."""
    beside = cfg.with_suffix(".weights")
    if beside.is_file() or str(name_or_path) not in NAMED_MODELS:
        return beside
    from invismap.assets import find_asset

    return find_asset(str(PurePosixPath(NAMED_MODELS[str(name_or_path)]).with_suffix(".weights")))


def _load_darknet(cfg: Path, weights: Path) -> Detector:
    if not weights.is_file():
        raise file_error(weights, "Darknet weights not found",
                         f"put the .weights file for {cfg.name} next to it, with the same name")
    try:
        from invismap.detector.darknet import load_darknet
    except ImportError as e:
        raise InvismapError(f"{cfg}: Darknet models are not available in this build ({e})") from None
    return load_darknet(cfg, weights)
