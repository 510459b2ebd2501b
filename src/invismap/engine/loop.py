"""One training loop for every trainer (distillation, predictor, AlignGAN).

A trainer is a :class:`Task`; :func:`fit` owns the device, distributed data parallel, the data order,
learning-rate schedule, gradient clipping, NaN guard, logging (progress bar + TensorBoard), periodic
validation, atomic checkpoints and exact resume.

Exact resume: the data order is a pure function of ``(seed, step)`` (see :class:`StepBatchSampler`), the
model, optimizers and RNGs are restored from ``ckpt/last.pt``, so stopping at any checkpoint and resuming
gives bitwise the same weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from invismap.config import to_dict
from invismap.engine.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from invismap.engine.rundir import hold_folder
from invismap.engine.summary import TrainSummary
from invismap.errors import InvismapError, file_error

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings shared by every trainer."""

    max_steps: int = 1000
    batch_size: int = 8  # per process
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 10.0  # max gradient norm (0 = off)
    eval_every: int = 200
    ckpt_every: int = 100
    log_every: int = 10
    image_every: int = 0  # write TensorBoard images every N steps (0 = off)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_bad_steps: int = 5  # stop after this many consecutive non-finite losses
    # moving average of the weights, decay per step (0 = off); the trained net ends with the average. After n
    # steps the start's weights still count decay**n: 0.99 suits a few hundred steps, 0.999 several thousand
    ema: float = 0.0


class Task(nn.Module):
    """What a trainer implements. ``self.net`` is the trained module (wrapped in DDP when distributed).

    ``training_step`` returns a dict; entries ``loss/<optimizer name>`` are backpropagated and stepped in
    order, everything else is only logged.
    """

    kind: str = "task"
    net: nn.Module

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, float]:
        return {}

    def log_images(self, writer, batch: Any, step: int) -> None:
        """Optional: write a few images (feature maps, predictions) to TensorBoard."""

    def extra_checkpoint(self) -> dict[str, Any]:
        """Optional: more entries for the checkpoint (e.g. calibrated thresholds, model config)."""
        return {}


def check_train_config(cfg: TrainConfig, key: str = "train") -> None:
    """Refuse settings no run can use, naming the key and what is allowed (before any work is done)."""
    def bad(name: str, allowed: str) -> InvismapError:
        return InvismapError(f"config key '{key}.{name}': {getattr(cfg, name)!r} is not allowed ({allowed})")

    for name in ("max_steps", "batch_size", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise bad(name, "an integer >= 1")
    for name in ("ckpt_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise bad(name, "an integer >= 1")
    for name in ("warmup_steps", "eval_every", "image_every", "num_workers"):
        if getattr(cfg, name) < 0:
            raise bad(name, "an integer >= 0")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad("lr", "a finite number > 0")
    for name in ("weight_decay", "grad_clip"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise bad(name, "a finite number >= 0")
    if not (math.isfinite(cfg.min_lr_ratio) and 0 <= cfg.min_lr_ratio <= 1):
        raise bad("min_lr_ratio", "a number in [0, 1]")
    if not (math.isfinite(cfg.ema) and 0 <= cfg.ema < 1):
        raise bad("ema", "a decay in [0, 1), 0 = off")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class StepBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that depend only on ``(seed, step)``.

    The global batch of step ``s`` is the slice ``[s*B*W, (s+1)*B*W)`` of an endless stream made of
    per-epoch permutations; rank ``r`` takes its ``B`` indices. Indices are returned as ``i + epoch * n``
    so the dataset can draw the epoch's augmentation (``PairDataset`` wraps them).
    """

    def __init__(self, n: int, batch_size: int, start_step: int, max_steps: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.n, self.b, self.start, self.stop = n, batch_size, start_step, max_steps
        self.seed, self.rank, self.world = seed, rank, world

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        gb = self.b * self.world
        cache: dict[int, torch.Tensor] = {}
        for step in range(self.start, self.stop):
            first = step * gb + self.rank * self.b
            out = []
            for pos in range(first, first + self.b):
                epoch, j = divmod(pos, self.n)
                if epoch not in cache:
                    cache = {epoch: self._epoch_perm(epoch)}
                out.append(int(cache[epoch][j]) + epoch * self.n)
            yield out

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvismapError(f"device '{name}' asked for, but CUDA is not available (use device=cpu)")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise InvismapError(f"device '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from None


def _init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(cfg.device)
    device = resolve_device(cfg.device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return rank, world, device


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_move(v, device) for v in batch]
    return batch


def fit(task: Task, train_set: Dataset, cfg: TrainConfig, run_dir: str | Path,
        **kwargs: Any) -> TrainSummary:
    """:func:`train` with ``run_dir`` held by this process (:func:`~invismap.engine.rundir.hold_folder`): a
    second trainer on the same folder is refused. Under torchrun the first rank holds it for all."""
    if int(os.environ.get("RANK", "0")) != 0:
        return train(task, train_set, cfg, run_dir, **kwargs)
    with hold_folder(run_dir):
        return train(task, train_set, cfg, run_dir, **kwargs)


def train(task: Task, train_set: Dataset, cfg: TrainConfig, run_dir: str | Path, *,
          val_set: Dataset | None = None, collate_fn: Callable | None = None, resume: bool = False,
          full_config: Any = None, progress: bool = True, stop_at: int | None = None) -> TrainSummary:
    """Train ``task.net`` for ``cfg.max_steps`` steps; returns the loop's :class:`TrainSummary` (the trainer
    adds its outputs and details).

    ``stop_at`` ends the run early at that step (after checkpointing), as an interruption would; a later
    ``resume=True`` call continues on the same schedule.

    Writes ``run_dir/ckpt/last.pt`` every ``cfg.ckpt_every`` steps and at the end, ``ckpt/best.pt`` on the
    best validation loss, and TensorBoard logs in ``run_dir/tb``. Runs under ``torchrun`` as DDP. With
    ``cfg.ema``, the checkpoints also hold the weights' moving average, and ``task.net`` ends with it.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    check_train_config(cfg)
    rank, world, device = _init_distributed(cfg)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    task.to(device)
    optimizers = task.configure_optimizers(cfg)
    start_step, best, bad_steps, skipped, ema_state = 0, math.inf, 0, 0, None
    last = run_dir / "ckpt" / "last.pt"
    if is_main and last.parent.is_dir():
        # a run killed while writing a checkpoint leaves its temporary file (never the checkpoint) behind
        for stale in last.parent.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if resume:
        if not last.is_file():
            raise InvismapError(f"{last}: nothing to resume from (start without --resume)")
        state = load_checkpoint(last, task.kind)
        missing = [k for k in ("model", "optimizers", "step", "rng") if k not in state]
        if missing:
            raise file_error(last, f"training checkpoint lacks {', '.join(missing)}",
                             "resume from a ckpt/last.pt written by training, or start without --resume")
        check_state_dict(last, task.net, state["model"])
        task.net.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            try:
                opt.load_state_dict(state["optimizers"][name])
            except (KeyError, ValueError, TypeError) as e:
                raise file_error(last, f"optimizer '{name}' state does not fit this run "
                                 f"({type(e).__name__}: {str(e)[:80]})",
                                 "resume with the config the run was started with") from None
        start_step, best, skipped = state["step"], state.get("best", math.inf), state.get("skipped_steps", 0)
        ema_state = state.get("ema")
        torch.set_rng_state(state["rng"]["torch"])
        if is_main:
            log.info(f"resuming from {last} at step {start_step}")
    ema = None
    if cfg.ema:
        ema = AveragedModel(task.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if ema_state is not None:
            ema.load_state_dict(ema_state)
        elif resume:
            raise file_error(last, "training checkpoint has no moving average (the run was started without "
                             "train.ema)", "resume with the config the run was started with")
    if world > 1:
        task.net = nn.parallel.DistributedDataParallel(
            task.net, device_ids=[device.index] if device.type == "cuda" else None)

    end_step = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, start_step, end_step, cfg.seed, rank, world)
    # The loader's own generator: without one, starting its iterator draws from the global torch RNG, so a
    # resumed run (one more iterator start) would continue with another RNG stream than an uninterrupted one.
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                        persistent_workers=False, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + start_step))
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if resume else None)

    def checkpoint(step: int, path: Path) -> None:
        if not is_main:
            return
        save_checkpoint(path, {
            "kind": task.kind, "step": step, "best": best, "skipped_steps": skipped,
            "model": unwrap(task.net).state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "config": to_dict(full_config if full_config is not None else cfg),
            "rng": _rng_state(), **({"ema": ema.state_dict()} if ema is not None else {}),
            **task.extra_checkpoint(),
        })

    t0, seen, logged = time.time(), 0, {}
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {task.kind}", unit="step",
               disable=not (progress and is_main), dynamic_ncols=True)
    try:  # an error must not leave the progress bar's line open (the error message goes after it)
        step = start_step
        for step, batch in enumerate(loader, start=start_step):
            task.train()
            batch = _move(batch, device)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
            out = task.training_step(batch)
            losses = [(k.split("/", 1)[1], v) for k, v in out.items() if k.startswith("loss/")]
            finite = all(torch.isfinite(v).all() for _, v in losses)
            if world > 1:  # every rank must agree to skip, or DDP's all-reduce would hang
                flag = torch.tensor([float(finite)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag.item())
            if not finite:
                bad_steps, skipped = bad_steps + 1, skipped + 1
                log.warning(f"step {step}: non-finite loss, step skipped ({skipped} so far)")
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                if bad_steps >= cfg.max_bad_steps:
                    raise InvismapError(f"training stopped: {bad_steps} non-finite losses in a row at step "
                                        f"{step} (lower the learning rate, or check the inputs for NaN/blank "
                                        "images)")
                continue
            bad_steps = 0
            for name, loss in losses:
                opt = optimizers[name]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            if ema is not None:
                ema.update_parameters(unwrap(task.net))
            seen += cfg.batch_size * world
            for k, v in out.items():
                logged[k] = logged.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
            done = step + 1
            if is_main and (done % cfg.log_every == 0 or done == cfg.max_steps):
                n = cfg.log_every if done % cfg.log_every == 0 else (done % cfg.log_every)
                for k, v in logged.items():
                    writer.add_scalar(k, v / n, done)
                writer.add_scalar("lr", lr_at(step, cfg), done)
                writer.add_scalar("throughput/pairs_per_s", seen / max(time.time() - t0, 1e-9), done)
                main_loss = next((v / n for k, v in logged.items() if k.startswith("loss/")), float("nan"))
                bar.set_postfix(loss=f"{main_loss:.4g}")
                logged = {}
            if is_main and cfg.image_every and done % cfg.image_every == 0:
                task.log_images(writer, batch, done)
            if (val_set is not None and cfg.eval_every
                    and (done % cfg.eval_every == 0 or done == cfg.max_steps)):
                metrics = evaluate(task, val_set, cfg, device, collate_fn)
                if is_main:
                    for k, v in metrics.items():
                        writer.add_scalar(f"val/{k}", v, done)
                    if metrics.get("loss", math.inf) < best:
                        best = metrics["loss"]
                        checkpoint(done, run_dir / "ckpt" / "best.pt")
            if done % cfg.ckpt_every == 0 or done in (cfg.max_steps, end_step):
                checkpoint(done, last)
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.time() - t0
    if ema is not None and end_step == cfg.max_steps:
        unwrap(task.net).load_state_dict(ema.module.state_dict())
    if world > 1:
        dist.barrier()
    return TrainSummary(steps=end_step, max_steps=cfg.max_steps, start_step=start_step, seconds=elapsed,
                        pairs_per_s=seen / max(elapsed, 1e-9), best_val_loss=best, skipped_steps=skipped,
                        world_size=world)


@torch.no_grad()
def evaluate(task: Task, dataset: Dataset, cfg: TrainConfig, device: torch.device,
             collate_fn: Callable | None = None) -> dict[str, float]:
    """Average ``task.validation_step`` over ``dataset`` (in order, no augmentation)."""
    task.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_fn,
                        num_workers=cfg.num_workers)
    totals: dict[str, float] = {}
    count = 0
    for batch in loader:
        out = task.validation_step(_move(batch, device))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        count += 1
    return {k: v / max(count, 1) for k, v in totals.items()}
