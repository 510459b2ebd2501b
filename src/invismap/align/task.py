"""AlignGAN as a :class:`~invismap.engine.loop.Task`: pix2pix losses for G and Gm, two discriminators.

Paper "Pixel Invisibility", Section 3.1. For every stream ``s`` of the batch (see :mod:`.data`), with
edge map ``e``, source ``x``, target ``y``, real motion cue ``m`` and validity mask ``v``::

    m_hat = Gm(x, e)                  y_hat = G(x, e, m_hat)
    loss/gen  = mean_s [ adv(D(e, y_hat), real) + l1_weight * |y_hat - y|_v
                        + motion_adv_weight * adv(Dm(e, m_hat), real)
                        + motion_weight * |m_hat - m|_v / flow_scale
                        + warp_weight * |warp(x, m_hat) - y|_v + match_weight * CE(Gm's cost, m) ]
    loss/disc = mean_s [ 0.5 adv(D(e, y), real) + 0.5 adv(D(e, y_hat.detach()), fake)
                        + 0.5 adv(Dm(e, m), real) + 0.5 adv(Dm(e, m_hat.detach()), fake) ]

``adv`` is LSGAN (mean squared error to 1/0) or BCE-with-logits (``gan_mode``), as in pix2pix's
``GANLoss``; ``|.|_v`` is the mean absolute error over valid pixels. The engine backpropagates
``loss/gen`` with the generators' optimizer, then ``loss/disc`` with the discriminators'. D and Dm are
frozen (``requires_grad=False``) while the generator loss is built, so its backward leaves them without
gradients; the discriminator loss sees only detached fakes, so stepping G first does not disturb it.

Not DDP-ready: the networks are called one by one (not through the wrapped module's ``forward``), which
DDP's gradient synchronisation requires, so ``GanTask.ddp`` is False and the training loop refuses to run it
under torchrun. Train on one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from invismap.align.networks import AlignNetConfig, generate, warp
from invismap.config import to_dict
from invismap.engine.loop import Task, TrainConfig, unwrap

__all__ = ["GanTask", "LossConfig", "set_requires_grad"]


@dataclass(frozen=True)
class LossConfig:
    """Weights of the AlignGAN losses (pix2pix: l1_weight 100 with gan_mode 'vanilla' / 'lsgan')."""

    gan_mode: str = "lsgan"  # "lsgan" | "vanilla" (BCE with logits)
    l1_weight: float = 100.0
    motion_weight: float = 20.0  # L1 of the motion cue, in units of flow_scale
    motion_adv_weight: float = 1.0  # Dm's adversarial term on Gm
    warp_weight: float = 0.0  # L1 of the plainly warped source (photometric signal for Gm)
    match_weight: float = 1.0  # cross-entropy of Gm's pooled cost volumes at the true displacement
    disc_lr_scale: float = 1.0  # discriminators' learning rate relative to train.lr
    beta1: float = 0.5  # Adam beta1 (pix2pix)

    def __post_init__(self):
        if self.gan_mode not in ("lsgan", "vanilla"):
            raise ValueError(f"gan_mode must be 'lsgan' or 'vanilla', got {self.gan_mode!r}")


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    """Switch gradients of every parameter of ``modules`` on or off (CycleGAN's ``set_requires_grad``)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def _adv(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def _masked_l1(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean ``|a - b|`` over valid pixels (all channels); ``valid`` is ``(B, 1, H, W)``."""
    return ((a - b).abs() * valid).sum() / (valid.sum() * a.shape[1]).clamp_min(1.0)


def _match_loss(gm: nn.Module, logps: list[torch.Tensor], motion: torch.Tensor, valid: torch.Tensor,
                cues: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of each pooled cost volume against the true displacement (soft one-hot).

    Teaches Gm's features to match directly (as a classification over displacements); the flow L1 alone
    reaches them only through the soft-argmax and learns far more slowly (measured).
    """
    target = gm.displacement_targets(motion, cues)  # (B, K, h, w)
    v = F.interpolate(valid, size=target.shape[-2:], mode="area")
    v = (v > 0.999).float()  # cells fully inside the source
    ce = [-(target * lp).sum(1, keepdim=True) for lp in logps]
    return sum((c * v).sum() for c in ce) / (v.sum() * len(ce)).clamp_min(1.0)


class GanTask(Task):
    """Trains ``net`` = ``ModuleDict(G, Gm, D, Dm)`` on batches of :class:`~invismap.align.data.AlignDataset`.

    Args:
        nets: from :func:`~invismap.align.networks.build_aligngan`.
        net_cfg: their architecture (stored in checkpoints).
        loss: loss weights.
    """

    kind = "aligngan"
    ddp = False  # training_step calls G, Gm, D and Dm one by one, past DDP's forward (module docstring)

    def __init__(self, nets: nn.ModuleDict, net_cfg: AlignNetConfig, loss: LossConfig | None = None):
        super().__init__()
        self.net = nets
        self.net_cfg = net_cfg
        self.loss_cfg = loss or LossConfig()

    @property
    def nets(self) -> nn.ModuleDict:
        return unwrap(self.net)

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        n, betas = self.nets, (self.loss_cfg.beta1, 0.999)
        gen = [*n["G"].parameters(), *n["Gm"].parameters()]
        disc = [*n["D"].parameters(), *n["Dm"].parameters()]
        return {"gen": torch.optim.Adam([{"params": gen}], lr=cfg.lr, betas=betas,
                                        weight_decay=cfg.weight_decay),
                "disc": torch.optim.Adam([{"params": disc, "lr_scale": self.loss_cfg.disc_lr_scale}],
                                         lr=cfg.lr * self.loss_cfg.disc_lr_scale, betas=betas,
                                         weight_decay=cfg.weight_decay)}

    @staticmethod
    def _streams(batch: dict) -> list[tuple[str, dict]]:
        return [(k, batch[k]) for k in ("a", "b") if k in batch]

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        n, lc = self.nets, self.loss_cfg
        scale = self.net_cfg.flow_scale
        streams = self._streams(batch)
        logs: dict[str, torch.Tensor] = {}
        gen_total = 0.0
        fakes = []
        set_requires_grad([n["D"], n["Dm"]], False)
        for name, s in streams:
            cues = s.get("cues")
            flow, logps = n["Gm"](s["source"], s["edge"], cues, aux=True)
            fake = n["G"](s["source"], s["edge"], flow)
            adv_g = _adv(n["D"](torch.cat([s["edge"], fake], 1)), True, lc.gan_mode)
            adv_m = _adv(n["Dm"](torch.cat([s["edge"], flow / scale], 1)), True, lc.gan_mode)
            l1 = _masked_l1(fake, s["target"], s["valid"])
            motion = _masked_l1(flow, s["motion"], s["valid"]) * 2 / scale  # both channels: x2 = EPE-ish
            total = adv_g + lc.l1_weight * l1 + lc.motion_adv_weight * adv_m + lc.motion_weight * motion
            if lc.match_weight:
                match = _match_loss(n["Gm"], logps, s["motion"], s["valid"], cues)
                total = total + lc.match_weight * match
                logs[f"{name}/match_ce"] = match.detach()
            if lc.warp_weight:
                total = total + lc.warp_weight * _masked_l1(warp(s["source"], flow), s["target"], s["valid"])
            gen_total = gen_total + total
            with torch.no_grad():
                epe = (((flow - s["motion"]).norm(dim=1, keepdim=True) * s["valid"]).sum()
                       / s["valid"].sum().clamp_min(1))
            logs.update({f"{name}/adv_g": adv_g.detach(), f"{name}/adv_m": adv_m.detach(),
                         f"{name}/l1": l1.detach(), f"{name}/motion_epe": epe})
            fakes.append((s, fake.detach(), flow.detach()))
        set_requires_grad([n["D"], n["Dm"]], True)
        disc_total = 0.0
        for s, fake, flow in fakes:
            e = s["edge"]
            d = 0.5 * (_adv(n["D"](torch.cat([e, s["target"]], 1)), True, lc.gan_mode)
                       + _adv(n["D"](torch.cat([e, fake], 1)), False, lc.gan_mode))
            dm = 0.5 * (_adv(n["Dm"](torch.cat([e, s["motion"] / scale], 1)), True, lc.gan_mode)
                        + _adv(n["Dm"](torch.cat([e, flow / scale], 1)), False, lc.gan_mode))
            disc_total = disc_total + d + dm
            logs.update({"disc/D": d.detach(), "disc/Dm": dm.detach()})
        k = len(streams)
        return {"loss/gen": gen_total / k, "loss/disc": disc_total / k, **logs}

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, float]:
        """``loss`` = the L1 of G's output to the target (what ``best.pt`` minimises), plus motion EPE."""
        n = self.nets
        out: dict[str, float] = {}
        for name, s in self._streams(batch):
            fake, flow = generate(n, s["source"], s["edge"], s.get("cues"))
            v = s["valid"]
            out[f"{name}_l1"] = float(_masked_l1(fake, s["target"], v))
            out[f"{name}_epe"] = float(((flow - s["motion"]).norm(dim=1, keepdim=True) * v).sum()
                                       / v.sum().clamp_min(1))
        out["loss"] = out["a_l1"]
        return out

    @torch.no_grad()
    def log_images(self, writer, batch: dict, step: int) -> None:
        """Stream a, first item: source | target edge | G output | target, and the flow magnitude."""
        s = batch["a"]
        n = self.nets
        was = n.training
        n.eval()
        cues = s["cues"][:1] if "cues" in s else None
        fake, flow = generate(n, s["source"][:1], s["edge"][:1], cues)
        n.train(was)
        row = torch.cat([s["source"][0], s["edge"][0].expand(3, -1, -1), fake[0].clamp(0, 1),
                         s["target"][0]], 2)
        writer.add_image("align/source|edge|aligned|target", row, step)
        mag = torch.cat([flow[0].norm(dim=0), s["motion"][0].norm(dim=0)], 1)
        writer.add_image("align/motion_pred|real", (mag / mag.max().clamp_min(1e-6))[None], step)

    def extra_checkpoint(self) -> dict[str, Any]:
        return {"net_config": to_dict(self.net_cfg)}
