"""Distillation as a :class:`~invismap.engine.loop.Task`: frozen teacher on color, student on thermal."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from invismap.detector.base import Detector
from invismap.distill.losses import distill_loss, union_of_teachers
from invismap.distill.student import ThermalStudent, student_checkpoint
from invismap.engine.loop import unwrap


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def freeze_unreached(student: ThermalStudent) -> list[str]:
    """Stop training the student's parameters that its neck features never reach (its copy of the heads).

    Every distillation loss compares neck features, directly (``mid``) or through the *teacher's* frozen heads
    (``head``), so the student's own head layers never receive a gradient. Left trainable they would stop DDP
    at the first step (it waits for a gradient of every trainable parameter) and hold optimizer state for
    nothing. One backward pass on a tiny input finds them, whatever the detector's architecture.

    Returns:
        the names of the parameters frozen (``requires_grad`` set to False).
    """
    trainable = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    side = 2 * max(student.detector.strides)
    was_training = student.training
    student.eval()  # the probe must not move BatchNorm statistics
    try:
        with torch.enable_grad():
            feats = student(torch.zeros(1, 1, side, side, device=trainable[0][1].device))
            grads = torch.autograd.grad(sum(f.sum() for f in feats), [p for _, p in trainable],
                                        allow_unused=True)
    finally:
        student.train(was_training)
    unreached = [(name, p) for (name, p), g in zip(trainable, grads) if g is None]
    for _, p in unreached:
        p.requires_grad_(False)
    return [name for name, _ in unreached]


class DistillTask(nn.Module):
    """Trains ``net`` (a :class:`ThermalStudent`) to reproduce ``teacher``'s neck features.

    Batch norm layers of the student stay in eval mode (``freeze_bn``): with the small batches this runs
    on, batch statistics are noisy (trained, they cost 16 AP50 on the training split's nights: BENCHMARKS
    section 10). Without it, under torchrun, the loop synchronises them over the processes
    (:func:`~invismap.engine.distributed.sync_batchnorm`). The student's copy of the heads is frozen
    (:func:`freeze_unreached`): no loss reaches it.

    ``thermal_teacher`` (optional, a thermal detector from an earlier distillation, frozen): the head term's
    target becomes :func:`~invismap.distill.losses.union_of_teachers` of the teacher on color and it on
    thermal.
    """

    kind = "student"

    def __init__(self, teacher: Detector, student: ThermalStudent, loss: str = "mid",
                 head_weight: float = 0.1, freeze_bn: bool = True, extra: dict[str, Any] | None = None,
                 thermal_teacher: Detector | None = None, head_focus: float = 0.0):
        super().__init__()
        self.teacher = freeze(teacher)
        self.thermal_teacher = None if thermal_teacher is None else freeze(thermal_teacher)
        self.net = student
        self.unreached = freeze_unreached(student)
        self.loss, self.head_weight, self.freeze_bn = loss, head_weight, freeze_bn
        self.head_focus = head_focus
        self.outputs_per_anchor = 5 + len(teacher.names)  # box, objectness, one score per class
        self.extra = extra or {}

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self.teacher.eval()
        if self.thermal_teacher is not None:
            self.thermal_teacher.eval()
        if self.freeze_bn:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_feats = self.teacher.neck_features(batch["rgb"])
            teacher_raw = None
            if self.thermal_teacher is not None:
                thermal_raw = self.thermal_teacher.heads(self.thermal_teacher.neck_features(batch["thermal"]))
                teacher_raw = union_of_teachers(self.teacher.heads(teacher_feats), thermal_raw,
                                                self.outputs_per_anchor)
        student_feats = self.net(batch["thermal"])
        return distill_loss(self.loss, student_feats, teacher_feats, self.teacher.heads, self.head_weight,
                            teacher_raw, self.head_focus, self.outputs_per_anchor)

    def configure_optimizers(self, cfg) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        parts = self._losses(batch)
        out = {"loss/main": parts.pop("total")}
        out.update({f"distill/{k}": v.detach() for k, v in parts.items()})
        return out

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, float]:
        parts = self._losses(batch)
        return {"loss": float(parts.pop("total")), **{k: float(v) for k, v in parts.items()}}

    @torch.no_grad()
    def log_images(self, writer, batch: dict, step: int) -> None:
        """Channel-mean |feature| of teacher (color) and student (thermal) at each scale, first image."""
        teacher = self.teacher.neck_features(batch["rgb"][:1])
        student = unwrap(self.net)(batch["thermal"][:1])
        for k, (t, s) in enumerate(zip(teacher, student)):
            pair = torch.cat([t[0].abs().mean(0), s[0].abs().mean(0)], dim=1)
            writer.add_image(f"features/scale{k}_teacher|student", (pair / pair.max().clamp_min(1e-6))[None],
                             step)
        writer.add_image("input/color", batch["rgb"][0], step)
        writer.add_image("input/thermal", batch["thermal"][0], step)

    def extra_checkpoint(self) -> dict[str, Any]:
        ckpt = student_checkpoint(unwrap(self.net), **self.extra)
        ckpt.pop("student")  # the engine stores the weights under 'model'
        return ckpt
