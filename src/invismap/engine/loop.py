"""One training loop for every trainer (distillation, predictor, AlignGAN).

A trainer is a :class:`Task`; :func:`fit` owns the device, distributed data parallel, the data order,
learning-rate schedule, mixed precision, gradient clipping, NaN guard, logging (progress bar + TensorBoard),
periodic validation, atomic checkpoints and exact resume.

Several processes (``torchrun --nproc_per_node N``, :mod:`invismap.engine.distributed`): ``batch_size`` is
the global batch, each process takes ``batch_size / N`` pairs of it, gradients are averaged by DDP and
BatchNorm layers in training mode see the whole global batch, so N processes train the same weights as one
(up to float rounding). Only the first process writes checkpoints and logs.

Exact resume: the data order is a pure function of ``(seed, step)`` (see :class:`StepBatchSampler`), the
model, optimizers and RNGs are restored from ``ckpt/last.pt``, so stopping at any checkpoint and resuming
gives bitwise the same weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from invismap.config import to_dict
from invismap.engine.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from invismap.engine.distributed import (
    init_distributed,
    is_main_process,
    mean_over_processes,
    sync_batchnorm,
    world_size,
)
from invismap.engine.rundir import hold_folder
from invismap.engine.summary import TrainSummary
from invismap.errors import InvismapError, file_error

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings shared by every trainer."""

    max_steps: int = 1000
    # the global batch: under torchrun each of the N processes takes batch_size / N of it (a multiple of N)
    batch_size: int = 8
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
    # throughput switches for GPUs, off by default. precision: fp32 | bf16 | fp16 (torch.amp autocast; fp16
    # adds a gradient scaler and needs CUDA) | fp64 (weights and batches in float64: slow, for checking
    # numerics, e.g. that N processes compute what one does). channels_last: NHWC memory for the
    # convolutions. compile: torch.compile the trained network (minutes of compiling first; CPU needs a C++
    # compiler)
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
    channels_last: bool = False
    compile: bool = False


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Task(nn.Module):
    """What a trainer implements. ``self.net`` is the trained module (during :func:`train` wrapped in DDP
    under torchrun, and by torch.compile with ``compile``; :func:`unwrap` gives the module itself).

    ``training_step`` returns a dict; entries ``loss/<optimizer name>`` are backpropagated and stepped in
    order, everything else is only logged.
    """

    kind: str = "task"
    net: nn.Module
    # False: training_step calls the networks past ``self.net``'s forward, so DDP could not synchronise the
    # gradients; the loop then refuses to run under torchrun
    ddp: bool = True

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
    if cfg.precision not in ("fp32", "fp64", *AMP_DTYPES):
        raise bad("precision", "fp32, bf16, fp16 or fp64")
    for name in ("channels_last", "compile"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, "true or false")


def check_processes(task: Task | type[Task], cfg: TrainConfig, key: str = "train") -> None:
    """Refuse, before any work, a run the ``torchrun`` processes cannot share: a task (or task class) that
    bypasses DDP, or a global batch that does not split evenly between the processes."""
    world = world_size()
    if world <= 1:
        return
    if not getattr(task, "ddp", True):
        raise InvismapError(f"the {task.kind} trainer runs as one process only (its training step calls "
                            f"the networks past DDP's gradient sync), not under torchrun "
                            f"(WORLD_SIZE={world}); start it without torchrun")
    if cfg.batch_size % world:
        raise InvismapError(f"config key '{key}.batch_size': {cfg.batch_size} does not split between the "
                            f"{world} torchrun processes (it is the global batch); use a multiple of {world}")


def check_precision(cfg: TrainConfig, device: torch.device, key: str = "train") -> None:
    """Refuse fp16 off CUDA: CPUs have no fast fp16 arithmetic, and its gradient scaler is a GPU tool."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise InvismapError(f"config key '{key}.precision': fp16 needs a CUDA device (this run is on "
                            f"{device.type}); use bf16 or fp32")


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


def unwrap(module: nn.Module) -> nn.Module:
    """The trained module itself, out of torch.compile's and DDP's wrappers."""
    module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


@contextmanager
def plain_net(task: Task) -> Iterator[Task]:
    """``task`` with ``task.net`` out of its wrappers for a while, for what runs without gradients
    (validation, images): a DDP forward may wait for the other processes, a compiled one would recompile."""
    wrapped = task.net
    task.net = unwrap(wrapped)
    try:
        yield task
    finally:
        task.net = wrapped


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _move(batch: Any, device: torch.device, cfg: TrainConfig) -> Any:
    """``batch`` on ``device``; with ``cfg.channels_last``, images ``(B, C, H, W)`` in NHWC memory; with
    ``cfg.precision`` fp64, floating tensors in float64."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if batch.is_floating_point() and cfg.precision == "fp64":
            batch = batch.double()
        if cfg.channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: _move(v, device, cfg) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_move(v, device, cfg) for v in batch]
    return batch


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """Mixed precision for forward passes: ``cfg.precision`` bf16/fp16, a no-op for fp32."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.precision), enabled=cfg.precision != "fp32")


def fit(task: Task, train_set: Dataset, cfg: TrainConfig, run_dir: str | Path,
        **kwargs: Any) -> TrainSummary:
    """:func:`train` with ``run_dir`` held by this process (:func:`~invismap.engine.rundir.hold_folder`): a
    second trainer on the same folder is refused. Under torchrun the first rank holds it for all."""
    if not is_main_process():
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
    best validation loss, and TensorBoard logs in ``run_dir/tb``. Runs under ``torchrun`` as DDP (see the
    module docstring). ``task.net`` is wrapped (DDP, torch.compile) while training and plain again when this
    returns. With ``cfg.ema``, the checkpoints also hold the weights' moving average, and ``task.net`` ends
    with it.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    check_train_config(cfg)
    check_processes(task, cfg)
    device = resolve_device(cfg.device)
    check_precision(cfg, device)
    rank, world, device = init_distributed(device)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    task.to(device, torch.float64 if cfg.precision == "fp64" else None)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    optimizers = task.configure_optimizers(cfg)
    # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
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
        if scaler.is_enabled() and "scaler" in state:  # a run started in another precision starts one anew
            scaler.load_state_dict(state["scaler"])
        start_step, best, skipped = state["step"], state.get("best", math.inf), state.get("skipped_steps", 0)
        ema_state = state.get("ema")
        torch.set_rng_state(state["rng"]["torch"])
        if is_main:
            log.info(f"resuming from {last} at step {start_step}")
    if stop_at is not None and stop_at <= start_step:
        raise InvismapError(f"--stop-at {stop_at}: the run is already at step {start_step}; "
                            "give a later step")
    ema = None
    if cfg.ema:
        ema = AveragedModel(task.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if ema_state is not None:
            ema.load_state_dict(ema_state)
        elif resume:
            raise file_error(last, "training checkpoint has no moving average (the run was started without "
                             "train.ema)", "resume with the config the run was started with")
    if world > 1:
        sync_batchnorm(task.net, device)
        task.net = nn.parallel.DistributedDataParallel(
            task.net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        task.net = torch.compile(task.net)

    end_step = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size // world, start_step, end_step, cfg.seed,
                               rank, world)
    # The loader's own generator: without one, starting its iterator draws from the global torch RNG, so a
    # resumed run (one more iterator start) would continue with another RNG stream than an uninterrupted one.
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                        persistent_workers=False, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + start_step))
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        # what was logged up to the checkpoint's step stays; later events (of a run killed after it) go
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resume else None)

    def checkpoint(step: int, path: Path) -> None:
        if not is_main:
            return
        save_checkpoint(path, {
            "kind": task.kind, "step": step, "best": best, "skipped_steps": skipped,
            "model": unwrap(task.net).state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "config": to_dict(full_config if full_config is not None else cfg),
            "rng": _rng_state(), **({"ema": ema.state_dict()} if ema is not None else {}),
            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            **task.extra_checkpoint(),
        })

    t0, seen, logged = time.time(), 0, {}
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {task.kind}", unit="step",
               disable=not (progress and is_main), dynamic_ncols=True)
    try:  # an error must not leave the progress bar's line open (the error message goes after it)
        step = start_step
        for step, batch in enumerate(loader, start=start_step):
            task.train()
            batch = _move(batch, device, cfg)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
            with autocast(cfg, device):
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
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)  # skipped by the scaler when fp16 gradients overflowed
            scaler.update()
            if ema is not None:
                ema.update_parameters(unwrap(task.net))
            seen += cfg.batch_size
            for k, v in out.items():
                logged[k] = logged.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                if world > 1:  # log the global batch's values, not the first process's share of it
                    logged = _mean_over_processes(logged, device)
                n = cfg.log_every if done % cfg.log_every == 0 else (done % cfg.log_every)
                if is_main:
                    for k, v in logged.items():
                        writer.add_scalar(k, v / n, done)
                    writer.add_scalar("lr", lr_at(step, cfg), done)
                    writer.add_scalar("throughput/pairs_per_s", seen / max(time.time() - t0, 1e-9), done)
                    shown = next((v / n for k, v in logged.items() if k.startswith("loss/")), float("nan"))
                    bar.set_postfix(loss=f"{shown:.4g}")
                logged = {}
            if is_main and cfg.image_every and done % cfg.image_every == 0:
                with plain_net(task):
                    task.log_images(writer, batch, done)
            if (val_set is not None and cfg.eval_every
                    and (done % cfg.eval_every == 0 or done == cfg.max_steps)):
                with plain_net(task):
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
        task.net = unwrap(task.net)
        if cfg.precision == "fp64":
            task.float()  # what runs after training (export, calibration, evaluation) is float32
    elapsed = time.time() - t0
    if ema is not None and end_step == cfg.max_steps:
        task.net.load_state_dict(ema.module.state_dict())
    if world > 1:
        dist.barrier()
    return TrainSummary(steps=end_step, max_steps=cfg.max_steps, start_step=start_step, seconds=elapsed,
                        pairs_per_s=seen / max(elapsed, 1e-9), best_val_loss=best, skipped_steps=skipped,
                        world_size=world)


def _mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over the processes (every process logs the same keys, from the same code)."""
    keys = sorted(values)
    means = mean_over_processes(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, means.tolist()))


@torch.no_grad()
def evaluate(task: Task, dataset: Dataset, cfg: TrainConfig, device: torch.device,
             collate_fn: Callable | None = None) -> dict[str, float]:
    """The mean of ``task.validation_step`` over ``dataset`` (in order, no augmentation), each batch weighted
    by its number of items: for a per-item mean (a loss) that is the mean over the items, however they are
    batched.

    Under torchrun the processes share the batches (process r takes batches r, r + N, ...), each of
    ``cfg.batch_size / N`` items as in training, and every process returns the mean over all of them.
    """
    task.eval()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    size = max(1, cfg.batch_size // world)
    batches = [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]
    mine = batches[dist.get_rank()::world] if world > 1 else batches
    loader = DataLoader(dataset, batch_sampler=mine, collate_fn=collate_fn, num_workers=cfg.num_workers)
    totals: dict[str, float] = {}
    count = 0
    for indices, batch in zip(mine, loader):
        with autocast(cfg, device):
            out = task.validation_step(_move(batch, device, cfg))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(indices)
        count += len(indices)
    if world > 1:  # a process may have had no batch, hence no keys: gather the dicts, not tensors
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (totals, count))
        totals, count = {}, sum(c for _, c in parts)
        for part, _ in parts:
            for k, v in part.items():
                totals[k] = totals.get(k, 0.0) + v
    return {k: v / max(count, 1) for k, v in totals.items()}
