"""``invismap align-train`` and ``invismap align``: train AlignGAN, then align a dataset's color images.

Run folder of :func:`train_aligngan`::

    RUN/config.yaml            resolved config
    RUN/ckpt/last.pt, best.pt  training state (resume with --resume)
    RUN/aligngan.pt            the four networks + their architecture (kind 'aligngan_model')
    RUN/summary.json           time, pairs/s, validation scores
    RUN/tb/                    TensorBoard logs

:func:`align_dataset` writes ``OUT/color/NAME.png`` (the color image moved onto the thermal image by G),
``OUT/labels/color/NAME.txt`` (the color boxes moved by the same motion field) and ``OUT/manifest.csv``
(aligned color, original thermal and thermal labels).

Example:
    >>> cfg = load_config(AlignConfig, "configs/align.yaml")  # doctest: +SKIP
    >>> train_aligngan(cfg, "runs/align/msrs")  # doctest: +SKIP
    >>> align_dataset("runs/align/msrs/aligngan.pt", "runs/msrs/manifest.csv",  # doctest: +SKIP
    ...               "runs/msrs_aligned")
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invismap.align.data import AlignDataset, FieldConfig, motion_cues
from invismap.align.networks import AlignNetConfig, build_aligngan, generate
from invismap.align.task import GanTask, LossConfig
from invismap.config import from_dict, to_dict
from invismap.data.dataset import load_pair
from invismap.data.manifest import (
    Manifest,
    load_manifest,
    read_yolo_labels,
    refuse_writing_over,
    save_manifest,
    training_pairs,
    write_yolo_labels,
    yolo_to_xyxy,
)
from invismap.engine.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from invismap.engine.loop import TrainConfig, check_processes, fit, resolve_device
from invismap.engine.rundir import start_run
from invismap.engine.summary import TrainSummary
from invismap.errors import InvismapError
from invismap.io import write_image
from invismap.registration.displacement import edge_image

__all__ = ["AlignConfig", "Aligner", "align_dataset", "aligngan_estimators", "load_aligner", "move_boxes",
           "train_aligngan"]

log = logging.getLogger(__name__)

MODEL_KIND = "aligngan_model"


@dataclass
class AlignConfig:
    """One AlignGAN training run."""

    data: str = ""  # manifest.csv (or its folder) of registered / weakly aligned pairs
    split: str = "train"  # pairs trained on ('all' or '' = every pair)
    conditions: list[str] = field(default_factory=list)  # e.g. [day]; empty = every condition
    val_every_nth: int = 10  # every n-th selected pair is held out for validation (0 = none)
    crop: int = 192  # training crop side (the paper trains at 512x512; 192 fits the CPU budget)
    # stream a's target: 'flow' (color warped onto thermal by edge flow, the paper's) | 'color' (the
    # pair's own color image: for registered datasets such as MSRS, where edge flow adds ~3 px of noise)
    target: str = "color"
    neighbours: str = "auto"  # stream b (nearby color frames) when timestamps allow: 'auto' | 'off'
    max_gap: float = 1.0  # seconds between neighbour frames of stream b
    hflip: float = 0.5
    misalign: FieldConfig = field(default_factory=FieldConfig)
    variants: int = 2  # misaligned copies per training pair (see AlignDataset)
    cache: bool = True
    net: AlignNetConfig = field(default_factory=AlignNetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # The measured CPU recipe (MSRS, 177 pairs: ~15 min on 1 thread of a shared 2-core machine).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=550, batch_size=4, lr=1e-3, warmup_steps=20, min_lr_ratio=0.1, grad_clip=10.0,
        eval_every=110, ckpt_every=50, log_every=10))


def _dataset(pairs: Manifest, cfg: AlignConfig, seed: int, augment: bool) -> AlignDataset:
    return AlignDataset(pairs, crop=cfg.crop, target=cfg.target, misalign=cfg.misalign,
                        hflip=cfg.hflip if augment else 0.0, neighbours=cfg.neighbours, max_gap=cfg.max_gap,
                        cues=cfg.net.prior != "none", variants=cfg.variants if augment else 1, seed=seed,
                        cache=cfg.cache)


def train_aligngan(cfg: AlignConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
                   stop_at: int | None = None) -> TrainSummary:
    """Train AlignGAN on ``cfg.data``; writes ``RUN/aligngan.pt`` (``outputs["aligngan"]``) and
    ``summary.json``.

    Raises:
        InvismapError: bad data, a finished run in ``run_dir`` without ``resume``, or several processes
            (torchrun: AlignGAN trains as one process).
    """
    run_dir = Path(run_dir)
    check_processes(GanTask, cfg.train)  # under torchrun: refused before the (slow) datasets
    if not cfg.data:
        raise InvismapError("config key 'data' is empty: give the manifest of the pairs to train on")
    manifest = load_manifest(cfg.data)
    train_pairs, val_pairs = training_pairs(manifest, cfg.split, cfg.conditions, cfg.val_every_nth, cfg.data)
    start_run(run_dir, cfg, resume)  # before the (slow) datasets: fail fast on an existing run
    train_set = _dataset(train_pairs, cfg, cfg.train.seed, augment=True)
    # Validation draws its own fixed fields (another seed), no flips.
    val_set = _dataset(val_pairs, cfg, cfg.train.seed + 1, augment=False) if val_pairs else None
    log.info(f"AlignGAN on {len(train_pairs)} pairs (split {cfg.split or 'all'}), stream b: "
             f"{f'{len(train_set.pairs_b)} neighbour pairs' if train_set.has_stream_b else 'none'}, "
             f"{cfg.train.max_steps} steps of {cfg.train.batch_size} x {cfg.crop}px")
    torch.manual_seed(cfg.train.seed)
    task = GanTask(build_aligngan(cfg.net), cfg.net, cfg.loss)
    t0 = time.time()
    summary = fit(task, train_set, cfg.train, run_dir, val_set=val_set, resume=resume, full_config=cfg,
                  progress=progress, stop_at=stop_at)
    if not summary.finished:
        return summary  # interrupted on purpose: no final artefacts yet
    nets = task.nets
    save_checkpoint(run_dir / "aligngan.pt", {"kind": MODEL_KIND, "model": nets.state_dict(),
                                              "net_config": to_dict(cfg.net), "config": to_dict(cfg)})
    summary.outputs["aligngan"] = run_dir / "aligngan.pt"
    summary.details.update(train_pairs=len(train_pairs), val_pairs=len(val_pairs) if val_pairs else 0,
                           stream_b_pairs=len(train_set.pairs_b), total_seconds=time.time() - t0)
    summary.save(run_dir)
    log.info(f"wrote {run_dir / 'aligngan.pt'} ({summary.pairs_per_s:.2f} pairs/s)")
    return summary


class Aligner:
    """A trained AlignGAN (G and Gm) applied to full images.

    Args:
        nets: the four networks (only G and Gm are used).
        net_cfg: their architecture.
        device: where to run.
    """

    def __init__(self, nets: nn.ModuleDict, net_cfg: AlignNetConfig, device: torch.device | str = "cpu"):
        self.nets = nets.eval().to(device)
        self.cfg, self.device = net_cfg, torch.device(device)
        # Inputs are padded to a multiple of the coarsest stride of either generator.
        self.multiple = max(2 ** (net_cfg.g_depth - 1), 2 ** (net_cfg.corr_levels + net_cfg.m_depth - 1))

    @torch.no_grad()
    def __call__(self, color: np.ndarray, edge: np.ndarray, target_image: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Move ``color`` onto the position whose edge map is ``edge``.

        Args:
            color: ``(H, W, 3)`` uint8 RGB source.
            edge: ``(H, W)`` float edge map of the target position (e.g. ``edge_image(thermal)``).
            target_image: the image at the target position (thermal), for Gm's classical motion cues
                (needed when the model has a prior).

        Returns:
            ``(aligned (H, W, 3) uint8, flow (H, W, 2) float32)`` with ``aligned(x) ~ color(x + flow(x))``.
        """
        if color.shape[:2] != edge.shape[:2]:
            raise ValueError(f"color {color.shape[:2]} and edge map {edge.shape[:2]} differ in size")
        h, w = edge.shape
        src = torch.from_numpy(np.ascontiguousarray(color.transpose(2, 0, 1))).float().div(255)[None]
        e = torch.from_numpy(np.ascontiguousarray(edge, np.float32))[None, None]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        # Pad (edge values) so the networks see a multiple of their stride; the padding is cropped off again.
        src = F.pad(src, (0, pw, 0, ph), mode="replicate").to(self.device)
        e = F.pad(e, (0, pw, 0, ph), mode="replicate").to(self.device)
        cues = None
        if self.cfg.prior != "none":
            if target_image is None:
                raise ValueError("this AlignGAN needs the target image for its motion cues")
            c = motion_cues(target_image, color)
            cues = torch.from_numpy(np.ascontiguousarray(c.transpose(2, 0, 1)))[None]
            cues = F.pad(cues, (0, pw, 0, ph), mode="replicate").to(self.device)
        fake, flow = generate(self.nets, src, e, cues)
        fake = (fake[0, :, :h, :w].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
        return (np.ascontiguousarray(fake),
                flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32))

    def align_pair(self, thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Color image moved onto the thermal image: ``(aligned, flow)`` as in :meth:`__call__`."""
        return self(color, edge_image(thermal), thermal)


def load_aligner(path: str | Path, device: str = "cpu") -> Aligner:
    """An :class:`Aligner` from ``RUN/aligngan.pt`` (or a training checkpoint ``ckpt/*.pt``)."""
    state = load_checkpoint(path, (MODEL_KIND, GanTask.kind))
    if "net_config" not in state:
        raise InvismapError(f"{path}: checkpoint has no network config (re-create it with align-train)")
    net_cfg = from_dict(AlignNetConfig, state["net_config"], "net_config")
    nets = build_aligngan(net_cfg)
    check_state_dict(path, nets, state["model"])
    nets.load_state_dict(state["model"])
    return Aligner(nets, net_cfg, resolve_device(device))


def aligngan_estimators(aligner: Aligner) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Estimators for :func:`invismap.registration.experiment.weak_alignment_experiment`.

    ``aligngan``: G's aligned color image (the paper's AlignGAN output; the benchmark scores it with
    same-modality flow). ``aligngan_flow``: Gm's motion field (scored exactly against the known
    misalignment). Both share one network run per input.
    """
    memo: dict = {}

    def run(thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if memo.get("thr") is not thermal or memo.get("rgb") is not color:
            memo.update(thr=thermal, rgb=color, out=aligner.align_pair(thermal, color))
        return memo["out"]

    return {"aligngan": lambda thr, rgb: run(thr, rgb)[0], "aligngan_flow": lambda thr, rgb: run(thr, rgb)[1]}


def move_boxes(boxes_xyxy: np.ndarray, flow: np.ndarray, samples: int = 5, iters: int = 5) -> np.ndarray:
    """Boxes of the source image moved into the aligned image (``aligned(x) = source(x + flow(x))``).

    Points ``p`` on each box outline go to the ``x`` solving ``x + flow(x) = p`` (fixed point); the
    result is their bounding box, clipped to the image.

    Args:
        boxes_xyxy: ``(N, 4)`` pixel boxes on the source.
        flow: ``(H, W, 2)``.
        samples: points per box side.
        iters: fixed-point iterations.

    Returns:
        ``(N, 4)`` pixel boxes on the aligned image.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if not len(boxes):
        return boxes
    h, w = flow.shape[:2]
    t = np.linspace(0, 1, samples)
    out = []
    for x1, y1, x2, y2 in boxes:
        xs = np.concatenate([x1 + (x2 - x1) * t, np.full(samples, x2),
                             x1 + (x2 - x1) * t, np.full(samples, x1)])
        ys = np.concatenate([np.full(samples, y1), y1 + (y2 - y1) * t,
                             np.full(samples, y2), y1 + (y2 - y1) * t])
        p = np.stack([xs, ys], 1)
        x = p.copy()
        for _ in range(iters):
            xi = np.clip(np.round(x[:, 0]).astype(int), 0, w - 1)
            yi = np.clip(np.round(x[:, 1]).astype(int), 0, h - 1)
            x = p - flow[yi, xi]
        out.append([np.clip(x[:, 0].min(), 0, w), np.clip(x[:, 1].min(), 0, h),
                    np.clip(x[:, 0].max(), 0, w), np.clip(x[:, 1].max(), 0, h)])
    return np.array(out, np.float64)


def align_dataset(checkpoint: str | Path, manifest: str | Path | Manifest, out_dir: str | Path, *,
                  device: str = "cpu", progress: bool = True) -> Manifest:
    """Move every pair's color image onto its thermal image with a trained AlignGAN.

    Args:
        checkpoint: ``RUN/aligngan.pt``.
        manifest: pairs to align (a :class:`Manifest` or the path of its csv/folder).
        out_dir: output folder (``color/``, ``labels/color/``, ``manifest.csv``).
        device: ``cpu``, ``cuda``, ``auto``.
        progress: tqdm bar.

    Returns:
        the new manifest (also saved as ``OUT/manifest.csv``).
    """
    from tqdm import tqdm

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if len(m) == 0:
        raise InvismapError(f"{m.root}: no pairs to align (check --split)")
    refuse_writing_over(m, out_dir)
    aligner = load_aligner(checkpoint, device)
    out_dir = Path(out_dir)
    samples = []
    for s in tqdm(m, desc="align", unit="pair", disable=not progress):
        rgb, thr = load_pair(s)
        aligned, flow = aligner.align_pair(thr, rgb)
        color_path = out_dir / "color" / f"{s.name}.png"
        write_image(color_path, aligned)
        labels = None
        if s.color_labels is not None:
            h, w = thr.shape
            boxes = yolo_to_xyxy(read_yolo_labels(s.color_labels), w, h)
            labels = out_dir / "labels" / "color" / f"{s.name}.txt"
            write_yolo_labels(labels, move_boxes(boxes[:, 1:], flow), boxes[:, 0], w, h)
        samples.append(dataclasses.replace(s, color=color_path.resolve(), color_labels=labels))
    out = Manifest(samples, out_dir.resolve())
    save_manifest(out, out_dir / "manifest.csv")
    log.debug(f"aligned {len(samples)} pairs -> {out_dir / 'manifest.csv'}")
    return out
