"""The thermal student (a copy of the teacher's backbone + neck) and the thermal detector built from it.

The paper's knowledge transfer (Section 3.2): the student reads the thermal image and learns to reproduce
the teacher's neck features of the color image. Student features + the teacher's own detection heads make
a thermal detector trained with no labels.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invismap.detector.base import Detector
from invismap.errors import file_error

INPUT_MODES = ("replicate", "conv1")


def _first_rgb_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The first ``Conv2d`` reading 3 channels, with its parent and attribute name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError("the detector has no convolution reading 3 input channels")


def adapt_first_conv_to_one_channel(model: nn.Module) -> None:
    """Replace the first 3-channel conv by a 1-channel one whose kernel is the sum over RGB.

    On a gray image replicated to RGB the two give the same output, so the student starts exactly where
    the ``replicate`` mode does, with a third of the first layer's input cost.
    """
    parent, attr, conv = _first_rgb_conv(model)
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)
    if hasattr(model, "in_channels"):  # detectors that check their input (Darknet)
        model.in_channels = 1


def reset_weights(model: nn.Module, seed: int = 0) -> None:
    """Re-initialise every layer (the ``init: random`` ablation)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


class ThermalStudent(nn.Module):
    """Backbone + neck of a detector copy, reading a thermal image.

    Args:
        teacher: the color detector to copy (it is not modified).
        input_mode: ``replicate`` (gray copied to 3 channels) or ``conv1`` (first conv takes 1 channel).
        init: ``teacher`` (start from the teacher's weights) or ``random``.

    Shape:
        - input: ``(B, 1, H, W)`` thermal in 0..1.
        - output: neck features, the same shapes as the teacher's for an ``(B, 3, H, W)`` image.
    """

    def __init__(self, teacher: Detector, input_mode: str = "replicate", init: str = "teacher",
                 seed: int = 0):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        self.input_mode = input_mode
        self.detector = copy.deepcopy(teacher)
        if init == "random":
            reset_weights(self.detector, seed)
        elif init != "teacher":
            raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
        if input_mode == "conv1":
            adapt_first_conv_to_one_channel(self.detector)
        for p in self.detector.parameters():
            p.requires_grad_(True)

    def forward(self, thermal: torch.Tensor) -> list[torch.Tensor]:
        if thermal.shape[1] != 1:
            raise ValueError(f"student expects (B, 1, H, W) thermal, got {tuple(thermal.shape)}")
        x = thermal.expand(-1, 3, -1, -1) if self.input_mode == "replicate" else thermal
        return self.detector.neck_features(x)


class ThermalDetector(Detector):
    """Student neck features + the teacher's heads: a detector for thermal images (no fine-tuning).

    Accepts ``(B, 1, H, W)`` thermal or ``(B, 3, H, W)`` gray-as-RGB (channels are averaged), so it can be
    used wherever a color detector is, e.g. ``invismap detect --model RUN/thermal_detector.pt``.
    """

    in_channels = 1  # one thermal channel (exports take (B, 1, H, W))

    def __init__(self, student: ThermalStudent):
        super().__init__()
        self.student = student
        self.names = list(student.detector.names)
        self.strides = tuple(student.detector.strides)

    def neck_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        thermal = images.mean(1, keepdim=True) if images.shape[1] == 3 else images
        return self.student(thermal)

    def heads(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        # The student's copy of the heads is never trained, so these are the teacher's heads.
        return self.student.detector.heads(features)

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        return self.student.detector.decode(raw)


# ---- saving and rebuilding without the teacher's file ----------------------------------------------

def architecture_spec(detector: Detector) -> dict[str, Any]:
    """What is needed to rebuild ``detector``'s architecture (weights excluded)."""
    from invismap.detector.yolov5 import YOLOv5

    if isinstance(detector, YOLOv5):
        return {"arch": "yolov5", "names": list(detector.names)}
    if hasattr(detector, "sections"):  # Darknet: the parsed cfg ([net] first) rebuilds it
        net = {"type": "net", "height": detector.input_size[0], "width": detector.input_size[1],
               "channels": 3}  # the skeleton is the 3-channel teacher; conv1 students adapt it
        return {"arch": "darknet", "sections": [net] + copy.deepcopy(detector.sections),
                "names": list(detector.names)}
    raise ValueError(f"cannot serialise a {type(detector).__name__} teacher")


def build_from_spec(spec: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path) -> Detector:
    """Rebuild an (uninitialised) detector skeleton from :func:`architecture_spec` and 3-channel weights."""
    if spec.get("arch") == "yolov5":
        from invismap.detector.yolov5 import YOLOv5

        return YOLOv5.from_state_dict(state_dict, spec.get("names"), source=str(path))
    if spec.get("arch") == "darknet":
        from invismap.detector.darknet import DarknetDetector

        model = DarknetDetector(spec["sections"], path, names=spec.get("names"))
        model.load_state_dict(state_dict)
        return model
    raise file_error(path, f"unknown teacher architecture {spec.get('arch')!r}")


def student_checkpoint(student: ThermalStudent, **extra: Any) -> dict[str, Any]:
    """A self-contained dict describing the student (architecture, input mode, weights)."""
    return {"arch": architecture_spec(student.detector), "input_mode": student.input_mode,
            "student": student.state_dict(), **extra}


def load_student(ckpt: dict[str, Any], path: Path) -> ThermalStudent:
    """Rebuild a :class:`ThermalStudent` from :func:`student_checkpoint` output."""
    for key in ("arch", "input_mode", "student"):
        if key not in ckpt:
            raise file_error(path, f"student checkpoint lacks '{key}'", "re-run 'invismap distill'")
    sd = {k.removeprefix("detector."): v for k, v in ckpt["student"].items()}
    skeleton_sd = dict(sd)
    if ckpt["input_mode"] == "conv1":  # the skeleton is built as the 3-channel teacher, then adapted
        probe = build_from_spec(ckpt["arch"], _expand_first_conv(sd), path)
    else:
        probe = build_from_spec(ckpt["arch"], skeleton_sd, path)
    student = ThermalStudent(probe, ckpt["input_mode"], init="teacher")
    from invismap.engine.checkpoint import check_state_dict

    check_state_dict(path, student, ckpt["student"])
    student.load_state_dict(ckpt["student"])
    return student.eval()


def _expand_first_conv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("weight") and v.ndim == 4 and v.shape[1] == 1:
            out[k] = v.repeat(1, 3, 1, 1) / 3
            break
    return out


def _register_detector_kinds() -> None:
    from invismap.detector.zoo import register_kind

    @register_kind("thermal_detector")
    def _thermal(ckpt: dict, path: Path) -> Detector:
        return ThermalDetector(load_student(ckpt, path))

    @register_kind("student")
    def _student(ckpt: dict, path: Path) -> Detector:
        return ThermalDetector(load_student(ckpt, path))


_register_detector_kinds()
