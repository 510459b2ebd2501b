"""Train the color-only invisibility predictor on precomputed, label-free targets.

Paper "Pixel Invisibility", Section 3.4: the pair score F (:mod:`invismap.invisibility.score`) needs both
images and two detectors; the deployable predictor sees the color frame only and learns from pairs of every
condition. What it learns is the target cache (:mod:`invismap.invisibility.targets`: F, or F with where the
color detector misses the thermal detector's objects); the network is ``model``:

- ``neck`` (:mod:`invismap.invisibility.neck_head`): a light head on the frozen color teacher's neck features,
  computed once per training image and flip (``cache: true``). Chosen by cross-validation on MSRS
  (:mod:`invismap.invisibility.experiments`): it tells missed from detected objects far better than
- ``unet`` (:mod:`invismap.invisibility.unet`): a small U-Net on the pixels, the paper's design.

A target cache is a folder of ``NAME.npy`` files (one per pair, keyed by the manifest's sample name, float16,
values in [0, 1]) holding ``(H, W)`` maps either of the letterboxed canvas of a :class:`PairDataset` with the
same ``size``/``square`` (what :func:`cache_targets` writes) or of the original image (letterboxed here).
``object_weight`` weighs the pixels inside the boxes of the folder's ``evidence.json`` in the loss.

Augmentation: only horizontal flips, applied to the image, the target and the valid mask together inside
:class:`TargetMapDataset`. Geometric augmentation of the base dataset would move the image away from its
cached target, so it is refused; photometric augmentation would change what F measures (a darkened image
*is* less visible), so there is none.

Loss: BCE with logits on the soft targets, masked to the image (letterbox padding excluded). Synthetic
check (40 MSRS train pairs day+night, 9 held out, 160 px, batch 8, lr 3e-3, hflip, two seeds each; targets
``1 - blurred brightness`` and the F-like saturating ``clamp((0.45 - blurred brightness) / 0.25, 0, 1)``),
held-out MAE of the sigmoid map:

    ==========================  ===============  ===============
    target, steps               BCE with logits  MSE of sigmoid
    ==========================  ===============  ===============
    darkness, 150               0.051            0.054
    saturating, 150             0.094            0.106
    saturating, 500             0.075            0.079
    ==========================  ===============  ===============

BCE converges faster (its gradient does not vanish where the sigmoid saturates, and F saturates at 0 and 1
over large areas) and ends with a lower MAE at an equal MSE. ``loss: mse`` stays available.

Run folder of :func:`train_predictor`::

    RUN/config.yaml            resolved config
    RUN/ckpt/last.pt, best.pt  training state (resume with resume=True)
    RUN/predictor.pt           deployable: architecture + weights + input size (load_predictor)
    RUN/tb/                    TensorBoard: losses, val/loss, val/mae, rgb | target | prediction images

Example:
    >>> path = train_predictor(PredictorConfig(), "runs/msrs", "runs/targets/msrs",  # doctest: +SKIP
    ...                        "runs/predictor")
    >>> model, meta = load_predictor(path)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from invismap.config import from_dict
from invismap.data.dataset import CACHE_BYTES, BudgetCache, PairDataset
from invismap.data.letterbox import Letterbox
from invismap.data.manifest import Manifest, load_manifest, training_pairs
from invismap.engine.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from invismap.engine.distributed import is_main_process, mean_over_processes
from invismap.engine.loop import Task, TrainConfig, check_train_config, fit
from invismap.engine.rundir import start_run
from invismap.engine.summary import TrainSummary
from invismap.errors import InvismapError, file_error
from invismap.invisibility.neck_head import NeckHead, NeckHeadConfig, TeacherNeckPredictor
from invismap.invisibility.targets import (  # noqa: F401 - the target cache's helpers, re-exported
    TARGETS_META,
    TargetConfig,
    cache_targets,
    check_target_cache,
    check_target_config,
    load_evidence,
    load_target,
    save_target,
    target_path,
)
from invismap.invisibility.unet import InvisibilityUNet, UNetConfig
from invismap.registry import Registry

log = logging.getLogger(__name__)

KIND = "predictor"
MODELS = ("unet", "neck")
NORMALISATION = "rgb 0..1"  # what the U-Net expects: RGB, float, values in 0..1, letterboxed with gray 114
# per-pixel losses: name -> loss(logits, target) -> (B, 1, H, W)
LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("predictor loss")


@LOSSES.register("bce")
def bce_per_pixel(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits on soft targets."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@LOSSES.register("mse")
def mse_per_pixel(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of the sigmoid."""
    return (torch.sigmoid(logits) - target).pow(2)


@dataclass
class PredictorConfig:
    """One predictor training run."""

    data: str = ""  # manifest.csv (or its folder) of the pairs the targets were computed on
    targets: str = ""  # target cache folder (NAME.npy per pair)
    size: int = 640  # letterbox size (longest side); inference uses the same size by default
    square: bool = False  # pad to size x size (needed when images of several aspect ratios are mixed)
    conditions: list[str] = field(default_factory=list)  # empty = all conditions
    split: str = "train"
    val_every_nth: int = 10  # every n-th pair is held out for validation (0 = none)
    hflip: float = 0.5
    loss: Literal["bce", "mse"] = "bce"
    cache: bool = True  # keep decoded, letterboxed pairs, targets (and teacher features) in memory
    # unet: a U-Net on the pixels; neck: a light head on the color teacher's neck features (neck_head.py)
    model: Literal["unet", "neck"] = "unet"
    unet: UNetConfig = field(default_factory=UNetConfig)
    neck: NeckHeadConfig = field(default_factory=NeckHeadConfig)
    teacher: str = "yolov5n"  # the color detector whose neck features model 'neck' reads (the pipeline's)
    # loss weight of the pixels inside the thermal detector's boxes (target kind pair+detectors): > 1 makes
    # the few object pixels, where missed and detected objects differ, count against the background
    object_weight: float = 1.0
    target: TargetConfig = field(default_factory=TargetConfig)  # what the targets are (targets.py)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=2000, batch_size=8, lr=2e-3,
                                                                   weight_decay=1e-4, warmup_steps=50,
                                                                   eval_every=200, image_every=200))


# --------------------------------------------------------------------------------------------- data

def valid_mask(lb: Letterbox) -> torch.Tensor:
    """``(1, H, W)`` float mask: 1 on the image, 0 on the letterbox padding."""
    mask = torch.zeros(1, lb.height, lb.width)
    rows, cols = lb.content_slice()
    mask[:, rows, cols] = 1
    return mask


class TargetMapDataset(Dataset):
    """A :class:`PairDataset` with the target map attached: items ``name, condition, rgb, target, valid``
    (and ``features``, ``weight`` when asked for).

    Args:
        base: the pairs, without geometric augmentation (it would misalign cached targets).
        target_fn: ``item -> (1, H, W)`` target on the canvas, computed on the fly (slow: teacher and
            student per item); or
        target_dir: the target cache (fast), see :func:`cache_targets`.
        hflip: probability of flipping image, target and mask together (0 for validation).
        seed: with the epoch and index, fixes the flips (indices past the end are later epochs).
        cache: keep loaded target maps (and features) in memory (float16), up to
            :data:`~invismap.data.dataset.CACHE_BYTES` of them; either way the items hold them
            rounded to float16.
        feature_fn: ``(1, 3, H, W) -> [(1, C_k, h_k, w_k)]``, e.g. the frozen teacher's ``neck_features``:
            items get ``features`` of the (flipped) image, computed once per image and flip when cached.
        object_weight: items get ``weight``, this inside the thermal boxes of the target folder's
            ``evidence.json`` and 1 elsewhere (1 = no ``weight``).

    Shape:
        rgb ``(3, H, W)`` in 0..1, target ``(1, H, W)`` in [0, 1], valid ``(1, H, W)`` in {0, 1},
        weight ``(1, H, W)``, features ``[(C_k, h_k, w_k)]``.
    """

    def __init__(self, base: PairDataset, target_fn: Callable[[dict], torch.Tensor] | None = None,
                 target_dir: str | Path | None = None, hflip: float = 0.0, seed: int = 0, cache: bool = True,
                 feature_fn: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 object_weight: float = 1.0):
        if (target_fn is None) == (target_dir is None):
            raise ValueError("give exactly one of target_fn and target_dir")
        if base.augment is not None:
            raise InvismapError("TargetMapDataset needs a PairDataset without augmentation (targets are "
                                "precomputed on the unaugmented canvas); use its hflip instead")
        if target_dir is not None:
            if not Path(target_dir).is_dir():
                raise file_error(target_dir, "target cache folder not found", "compute the targets first")
            missing = [s.name for s in base.manifest if not target_path(target_dir, s.name).is_file()]
            if missing:  # fail before training starts, not at the first batch that needs one
                raise file_error(target_dir, f"no cached target for {len(missing)} of {len(base)} pairs "
                                 f"(e.g. {missing[0]})", "compute the targets for every pair first")
        self.base, self.target_fn, self.hflip, self.seed = base, target_fn, hflip, seed
        self.target_dir = Path(target_dir) if target_dir is not None else None
        # float16 targets and features; every epoch reads them rounded so, kept in memory or not (then a
        # pair's values do not depend on whether this process met it before)
        self._cache = BudgetCache(CACHE_BYTES if cache else 0)
        self.feature_fn, self.object_weight = feature_fn, float(object_weight)
        self.evidence = None
        if self.object_weight != 1.0:
            self.evidence = load_evidence(target_dir) if target_dir is not None else None
            if self.evidence is None:
                raise InvismapError("object_weight needs targets of kind 'pair+detectors' "
                                    "(their evidence.json holds the thermal boxes to weigh)")

    def __len__(self) -> int:
        return len(self.base)

    def _target(self, i: int, item: dict) -> torch.Tensor:
        key = ("target", i)
        if key in self._cache:
            return self._cache[key].float()
        if self.target_fn is not None:
            target = torch.as_tensor(self.target_fn(item)).float().reshape(1, *item["rgb"].shape[1:])
        else:
            target = torch.from_numpy(load_target(target_path(self.target_dir, item["name"]),
                                                  item["letterbox"]))[None]
        target = target.half()
        self._cache.put(key, target)
        return target.float()

    def _weight(self, item: dict) -> torch.Tensor:
        """``(1, H, W)``: ``object_weight`` inside the pair's thermal boxes (canvas pixels), 1 elsewhere."""
        from invismap.invisibility.metrics import object_pixel_mask

        lb = item["letterbox"]
        boxes = lb.boxes_to_canvas(np.array(self.evidence[item["name"]]["boxes"], np.float32).reshape(-1, 4))
        inside = torch.from_numpy(object_pixel_mask(boxes, lb.height, lb.width))[None]
        return 1.0 + (self.object_weight - 1.0) * inside.float()

    @torch.no_grad()
    def _features_of(self, i: int, rgb: torch.Tensor, flipped: bool) -> list[torch.Tensor]:
        key = ("features", i, flipped)
        if key in self._cache:
            return [f.float() for f in self._cache[key]]
        feats = [f[0].cpu().half() for f in self.feature_fn(rgb[None])]
        self._cache.put(key, feats)
        return [f.float() for f in feats]

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self.base))
        item = self.base[i]
        rgb, target, valid = item["rgb"], self._target(i, item), valid_mask(item["letterbox"])
        if target.shape[1:] != rgb.shape[1:]:
            raise InvismapError(f"pair {item['name']}: target {tuple(target.shape)} does not fit the image "
                                f"canvas {tuple(rgb.shape)}")
        weight = self._weight(item) if self.evidence is not None else None
        flipped = self.hflip > 0 and np.random.default_rng((self.seed, epoch, i)).random() < self.hflip
        if flipped:
            rgb, target, valid = rgb.flip(-1), target.flip(-1), valid.flip(-1)
            weight = None if weight is None else weight.flip(-1)
        out = {"name": item["name"], "condition": item["condition"], "rgb": rgb, "target": target,
               "valid": valid}
        if weight is not None:
            out["weight"] = weight
        if self.feature_fn is not None:
            out["features"] = self._features_of(i, rgb, flipped)
        return out


# --------------------------------------------------------------------------------------------- task

def masked_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                kind: str = "bce", global_batch: bool = False) -> torch.Tensor:
    """Mean per-pixel loss (one of :data:`LOSSES`) over valid pixels (``valid`` may hold weights).

    With ``global_batch`` under torchrun, the mean is over the valid pixels of every process's share of the
    batch (see :func:`~invismap.engine.distributed.mean_over_processes`): the processes' masks may differ.

    Shape:
        logits, target, valid: ``(B, 1, H, W)``.
    """
    per_pixel = LOSSES.get(kind)(logits, target)
    if valid is None:
        return per_pixel.mean()
    count = mean_over_processes(valid.sum()) if global_batch else valid.sum()
    return (per_pixel * valid).sum() / count.clamp_min(1.0)


def masked_mae(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error over valid pixels (all ``(B, 1, H, W)``)."""
    err = (pred - target).abs()
    if valid is None:
        return err.mean()
    return (err * valid).sum() / valid.sum().clamp_min(1.0)


class PredictorTask(Task):
    """Trains the predictor's network on batches ``{'rgb', 'target', 'valid', 'weight', 'features'}``.

    ``valid``, ``weight`` (per-pixel loss weights) and ``features`` (the teacher's neck features of ``rgb``,
    model ``neck``) are optional.

    Args:
        model: ``'unet'`` (:class:`InvisibilityUNet` on the pixels) or ``'neck'`` (:class:`NeckHead` on
            the batch's ``features``).
        unet, neck: the architectures.
        in_channels: the neck features' channels (model ``'neck'``).
        loss: ``'bce'`` (default) or ``'mse'``, see :func:`masked_loss`.
        input_size: letterbox size the data is prepared at (stored in the checkpoints).
        teacher: the color detector whose features ``'neck'`` reads (stored in the checkpoints).
    """

    kind = KIND

    def __init__(self, unet: UNetConfig | None = None, loss: str = "bce", input_size: int = 640,
                 model: str = "unet", neck: NeckHeadConfig | None = None,
                 in_channels: list[int] | None = None, teacher: str = "yolov5n"):
        super().__init__()
        LOSSES.get(loss)  # an unknown name is refused here, listing the known ones
        if model not in MODELS:
            raise InvismapError(f"predictor model must be one of {', '.join(MODELS)}, got {model!r}")
        self.model, self.teacher = model, teacher
        self.unet_config, self.neck_config = unet or UNetConfig(), neck or NeckHeadConfig()
        self.in_channels = list(in_channels or [])
        self.loss, self.input_size = loss, input_size
        self.net = (InvisibilityUNet(self.unet_config) if model == "unet"
                    else NeckHead(self.in_channels, self.neck_config))

    def logits(self, batch: dict) -> torch.Tensor:
        """``(B, 1, H, W)`` logits at the canvas size."""
        if self.model == "unet":
            return self.net(batch["rgb"])
        logits = self.net(batch["features"])
        return F.interpolate(logits, size=batch["rgb"].shape[-2:], mode="bilinear", align_corners=False)

    def _forward(self, batch: dict, global_batch: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        logits = self.logits(batch)
        target, valid, weight = batch["target"], batch.get("valid"), batch.get("weight")
        weighted = valid if weight is None else (weight if valid is None else valid * weight)
        return logits, target, valid, masked_loss(logits, target, weighted, self.loss, global_batch)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """``loss/main`` (the masked, weighted loss) and ``train/mae`` of the sigmoid map."""
        logits, target, valid, loss = self._forward(batch, global_batch=True)
        with torch.no_grad():
            mae = masked_mae(torch.sigmoid(logits), target, valid)
        return {"loss/main": loss, "train/mae": mae}

    def validation_step(self, batch: dict) -> dict[str, float]:
        """``loss`` (selects ``best.pt``), ``mae`` and ``mse`` of the sigmoid map, over valid pixels."""
        logits, target, valid, loss = self._forward(batch)
        pred = torch.sigmoid(logits)
        return {"loss": float(loss), "mae": float(masked_mae(pred, target, valid)),
                "mse": float(masked_loss(logits, target, valid, "mse"))}

    @torch.no_grad()
    def log_images(self, writer, batch: dict, step: int) -> None:
        """Up to 4 rows of ``rgb | target | prediction`` (gray maps) as one TensorBoard image."""
        was_training = self.net.training
        self.net.eval()  # no BatchNorm statistics update from a logging pass
        try:
            rgb = batch["rgb"][:4]
            few = {**batch, "rgb": rgb, "features": [f[:4] for f in batch.get("features", [])]}
            pred = torch.sigmoid(self.logits(few))
        finally:
            self.net.train(was_training)
        rows = torch.cat([rgb, batch["target"][:4].expand_as(rgb), pred.expand_as(rgb)], -1)  # (N, 3, H, 3W)
        grid = torch.cat(list(rows), 1)  # (3, N*H, 3W): one row per image
        if grid.shape[-1] > 1280:  # keep the event file small: 640x480 inputs are logged at half size
            grid = F.interpolate(grid[None], scale_factor=0.5, mode="bilinear", align_corners=False)[0]
        writer.add_image("predictor/rgb|target|prediction", grid.clamp(0, 1).cpu(), step)

    def extra_checkpoint(self) -> dict[str, Any]:
        """The architecture and input size, so that ``ckpt/*.pt`` load with :func:`load_predictor` too."""
        return {**self.architecture(), "input_size": self.input_size, "normalisation": NORMALISATION,
                "loss": self.loss}

    def architecture(self) -> dict[str, Any]:
        """What :func:`load_predictor` needs to rebuild the network (besides its weights)."""
        if self.model == "unet":
            return {"architecture": "unet", "unet_config": asdict(self.unet_config)}
        return {"architecture": "neck", "neck_config": asdict(self.neck_config),
                "in_channels": self.in_channels, "teacher": self.teacher}


# --------------------------------------------------------------------------------------------- run

def check_predictor_config(cfg: PredictorConfig) -> None:
    """Refuse values no run can use, naming the config key and what is allowed (before any work)."""
    if cfg.size < 32 or cfg.size % 32:
        raise InvismapError(f"config key 'size': {cfg.size} is not allowed "
                            "(a multiple of 32, >= 32, e.g. 640)")
    if not 0.0 <= cfg.hflip <= 1.0:
        raise InvismapError(f"config key 'hflip': {cfg.hflip} is not allowed (a probability in [0, 1])")
    if cfg.val_every_nth < 0:
        raise InvismapError(f"config key 'val_every_nth': {cfg.val_every_nth} is not allowed "
                            "(0 = no validation, or n >= 1)")
    if cfg.model not in MODELS:
        raise InvismapError(f"config key 'model': {cfg.model!r} is not allowed (one of {', '.join(MODELS)})")
    try:
        InvisibilityUNet(cfg.unet)
    except ValueError as e:
        raise InvismapError(f"config key 'unet': {e}") from None
    if cfg.neck.width < 1:
        raise InvismapError(f"config key 'neck.width': {cfg.neck.width} is not allowed (an integer >= 1)")
    if not cfg.object_weight > 0:
        raise InvismapError(f"config key 'object_weight': {cfg.object_weight} is not allowed (a number > 0)")
    check_target_config(cfg.target)
    check_train_config(cfg.train)


def train_predictor(cfg: PredictorConfig, manifest: Manifest | str | Path | None = None,
                    target_dir: str | Path | None = None, run_dir: str | Path = "runs/predictor",
                    resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainSummary:
    """Train the predictor on cached targets and write ``run_dir/predictor.pt`` (``outputs["predictor"]``)
    and ``summary.json``.

    Args:
        cfg: the run's config.
        manifest: the pairs (a :class:`Manifest` or its path); default ``cfg.data``.
        target_dir: the target cache; default ``cfg.targets``.
        run_dir: output folder (see the module docstring).
        resume: continue from ``run_dir/ckpt/last.pt``.
        progress: show a progress bar.
        stop_at: stop at this step (as an interruption would); ``predictor.pt`` is then not written yet.
    """
    run_dir = Path(run_dir)
    check_predictor_config(cfg)
    manifest = manifest if manifest is not None else cfg.data
    if not isinstance(manifest, Manifest):
        if not str(manifest):
            raise InvismapError("no pair data given (set data: to a manifest.csv)")
        manifest = load_manifest(manifest)
    target_dir = Path(target_dir if target_dir is not None else cfg.targets)
    if not str(target_dir) or str(target_dir) == ".":
        raise InvismapError("no target cache given (set targets: to the folder of NAME.npy maps)")
    check_target_cache(target_dir, cfg.target)
    train_pairs, val_pairs = training_pairs(manifest, cfg.split, cfg.conditions, cfg.val_every_nth,
                                            cfg.data or "manifest")

    feature_fn, in_channels = None, None
    if cfg.model == "neck":  # the frozen teacher computes features in the data pipeline, once per image
        from invismap.detector.zoo import load_detector

        teacher = load_detector(cfg.teacher).float().eval()
        feature_fn = teacher.neck_features
        with torch.no_grad():
            in_channels = [f.shape[1] for f in feature_fn(torch.zeros(1, 3, 64, 64))]

    def dataset(pairs: Manifest, hflip: float) -> TargetMapDataset:
        base = PairDataset(pairs, cfg.size, square=cfg.square, cache=cfg.cache)
        return TargetMapDataset(base, target_dir=target_dir, hflip=hflip, seed=cfg.train.seed,
                                cache=cfg.cache, feature_fn=feature_fn, object_weight=cfg.object_weight)

    train_set = dataset(train_pairs, cfg.hflip)
    val_set = dataset(val_pairs, 0.0) if val_pairs else None
    start_run(run_dir, cfg, resume)
    log.info(f"training the invisibility predictor on {len(train_pairs)} pairs "
             f"({len(val_pairs) if val_pairs else 0} held out), model {cfg.model}, size {cfg.size}, "
             f"loss {cfg.loss}, {cfg.train.max_steps} steps")
    torch.manual_seed(cfg.train.seed)
    task = PredictorTask(cfg.unet, cfg.loss, cfg.size, cfg.model, cfg.neck, in_channels, cfg.teacher)
    summary = fit(task, train_set, cfg.train, run_dir, val_set=val_set, resume=resume, full_config=cfg,
                  progress=progress, stop_at=stop_at)
    out = run_dir / "predictor.pt"
    if not summary.finished or not is_main_process():
        return summary  # interrupted on purpose: no deployable file yet; under torchrun rank 0 writes it
    best = run_dir / "ckpt" / "best.pt"
    source = best if best.is_file() and not cfg.train.ema else run_dir / "ckpt" / "last.pt"
    state = load_checkpoint(source, KIND)
    if not cfg.train.ema:  # with train.ema the net ends with the weights' moving average (engine/loop.py)
        task.net.load_state_dict(state["model"])  # into the float32 net, whatever precision it trained in
    save_checkpoint(out, {
        "kind": KIND, **task.architecture(), "model": task.net.state_dict(), "input_size": cfg.size,
        "square": cfg.square, "normalisation": NORMALISATION, "loss": cfg.loss, "step": state["step"],
        "weights_from": "ema" if cfg.train.ema else source.name, "best_val_loss": summary.best_val_loss,
        "config": state["config"],
    })
    summary.outputs["predictor"] = out
    summary.details.update(train_pairs=len(train_pairs), val_pairs=len(val_pairs) if val_pairs else 0,
                           weights_from="ema" if cfg.train.ema else source.name, step=state["step"])
    summary.save(run_dir)
    log.info(f"wrote {out} (weights of step {state['step']}, from {source.name})")
    return summary


def load_predictor(path: str | Path, map_location: str | torch.device = "cpu"
                   ) -> tuple[InvisibilityUNet | TeacherNeckPredictor, dict[str, Any]]:
    """The network of a predictor checkpoint (``predictor.pt`` or ``ckpt/*.pt``), in ``eval()`` mode.

    A ``unet`` predictor is self-contained; a ``neck`` predictor holds only its head and loads the teacher
    it was trained on (:class:`TeacherNeckPredictor`). Either maps ``(B, 3, H, W)`` RGB to logits.

    Returns:
        ``(model, meta)``: meta holds ``architecture``, ``unet_config`` or ``neck_config``, ``input_size``,
        ``normalisation`` and the rest of the checkpoint except the weights and optimizer states.

    Raises:
        InvismapError: missing or unreadable file, another kind of checkpoint, or weights that do not fit
            the stored architecture.
    """
    state = load_checkpoint(path, KIND, map_location=map_location)
    arch = state.get("architecture", "unet")  # checkpoints before the neck head are U-Nets
    key = {"unet": "unet_config", "neck": "neck_config"}.get(arch)
    if key is None or key not in state or "model" not in state:
        raise file_error(path, f"predictor checkpoint lacks its {key or arch + ' architecture'} or weights",
                         "re-train it")
    try:
        if arch == "unet":
            arch_cfg = from_dict(UNetConfig, state[key], key)
            model = InvisibilityUNet(arch_cfg)
        else:
            arch_cfg = from_dict(NeckHeadConfig, state[key], key)
            model = NeckHead(state.get("in_channels") or [], arch_cfg)
    except (InvismapError, ValueError, TypeError) as e:
        label = {"unet": "U-Net", "neck": "neck head"}[arch]
        raise file_error(path, f"unusable {label} config: {e}",
                         "re-train with this invismap version") from None
    check_state_dict(path, model, state["model"])
    model.load_state_dict(state["model"])
    if arch == "neck":
        from invismap.detector.zoo import load_detector

        model = TeacherNeckPredictor(load_detector(state.get("teacher", "yolov5n")).float(), model)
    model.eval()
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizers", "rng")}
    meta["architecture"], meta[key] = arch, arch_cfg
    meta.setdefault("input_size", 640)
    return model, meta
