"""Train AlignGAN's motion-cue generator Gm alone and report how far it improves on its classical cue.

A quick diagnostic of what the learned part of Gm adds on a pair dataset, without G and the discriminators.
It uses supervised motion losses only (flow L1 plus cross-entropy on the cost volume), as in
:class:`invismap.align.task.GanTask`. Every ``--every`` steps it prints the validation endpoint error of Gm
and of its prior (the homography fitted to the edge flow) on held-out training pairs, and the share of pixels
off by 5 px or more.

    python tools/probe_motion_net.py --data runs/msrs-aligngan/import/manifest.csv --steps 300

Measured on MSRS (imported pairs, 1 thread, ~1 s/step): EPE 2.95 -> 2.85 px in 300 steps. On the
registered pairs (runs/msrs-registered/register) it drops 3.42 -> 2.64 px in 100 steps. That gain is
the registration's constant offset (the labels are the registered color image), not better matching.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from invismap.align.data import AlignDataset
from invismap.align.networks import AlignNetConfig, MotionNet
from invismap.align.task import _masked_l1, _match_loss
from invismap.data.manifest import load_manifest


def _epe_and_share(flow: torch.Tensor, s: dict) -> tuple[float, float]:
    err = (flow - s["motion"]).norm(dim=1)[s["valid"][:, 0] > 0]
    return float(err.mean()), float((err >= 5).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="manifest.csv of the pairs (its 'train' split is used)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--variants", type=int, default=4, help="misaligned copies per pair")
    p.add_argument("--every", type=int, default=100, help="validate every this many steps")
    a = p.parse_args()
    torch.set_num_threads(1)
    train, val = load_manifest(a.data).select(split="train").holdout(10)
    ds = AlignDataset(train, crop=a.crop, target="color", variants=a.variants, seed=0)
    vs = AlignDataset(val, crop=a.crop, target="color", variants=1, hflip=0.0, seed=1)
    # Two crops of each validation pair, stacked once (fixed fields: seed 1).
    val_items = [vs[i]["a"] for i in range(2 * len(vs))]
    cfg = AlignNetConfig()
    torch.manual_seed(0)
    gm = MotionNet(cfg)
    opt = torch.optim.Adam(gm.parameters(), lr=a.lr)

    @torch.no_grad()
    def validate() -> str:
        gm.eval()
        rows = []
        for it in val_items:
            s = {k: v[None] for k, v in it.items()}
            rows.append(_epe_and_share(gm(s["source"], s["edge"], s["cues"]), s)
                        + _epe_and_share(s["cues"][:, :2], s))
        gm.train()
        m = np.mean(rows, 0)
        return f"Gm EPE {m[0]:.2f} px ({m[1]:.1%} >= 5 px), prior EPE {m[2]:.2f} px ({m[3]:.1%} >= 5 px)"

    print(f"{len(train)} training pairs, {len(val)} validation pairs; step 0: {validate()}", flush=True)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        items = [ds[int(i)]["a"] for i in rng.integers(0, len(ds) * 50, a.batch_size)]
        s = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        lr = a.lr * min(1.0, step / 20) * (0.1 + 0.45 * (1 + np.cos(np.pi * step / a.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        flow, logps = gm(s["source"], s["edge"], s["cues"], aux=True)
        loss = (20 * _masked_l1(flow, s["motion"], s["valid"]) * 2 / cfg.flow_scale
                + _match_loss(gm, logps, s["motion"], s["valid"], s["cues"]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gm.parameters(), 10.0)
        opt.step()
        if step % a.every == 0 or step == a.steps:
            print(f"step {step} ({time.time() - t0:.0f} s): {validate()}", flush=True)


if __name__ == "__main__":
    main()
