"""Several processes under ``torchrun``: ranks, the process group, and BatchNorm over the global batch.

``torchrun --nproc_per_node N`` starts N copies of a command with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set; :func:`~invismap.engine.loop.train` then trains as distributed data parallel (DDP). What
each process needs to know lives here, read from those variables (never from a global of ours):

- :func:`world_size`, :func:`rank`, :func:`is_main_process`: only the first process writes files;
- :func:`init_distributed`: the process group (NCCL on CUDA, gloo on CPU) and this process's device;
- :func:`sync_batchnorm`: BatchNorm layers that normalise with the statistics of the global batch, so that N
  processes train the same weights as one process on the same global batch;
- :func:`mean_over_processes`: the denominator of a ratio loss (a masked mean) over the global batch;
- :func:`shutdown`: end the process group before the process exits (the command line does it).

Example:
    >>> world_size(), is_main_process()  # a plain process is a world of one
    (1, True)
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from invismap.errors import InvismapError


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE`` set by torchrun; 1 without it)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's index among them (``RANK``; 0 without torchrun)."""
    return _env_int("RANK", 0)


def is_main_process() -> bool:
    """True in the process that writes files (rank 0), and in a plain single process."""
    return rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvismapError(f"environment variable {name}={value!r} is not an integer (torchrun sets it; "
                            "unset it to train as one process)") from None


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """``(rank, world, device)``; joins the process group when ``WORLD_SIZE > 1``.

    On CUDA each process takes the GPU ``LOCAL_RANK`` (torchrun's index on this machine) and NCCL; on CPU
    the processes talk through gloo.
    """
    world = world_size()
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0))
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the torchrun processes, detached (``x`` itself in a plain process).

    For a loss that is a ratio over the batch, ``sum_p / count_p``: each process dividing its own sum by
    ``mean_over_processes(count_p)`` instead makes DDP's averaged gradient, and the mean of the logged
    losses, those of ``sum / count`` over the global batch, as one process computes it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x.detach()
    total = x.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def shutdown(wait_for_others: bool = False) -> None:
    """Leave the process group, if this process joined one (torch warns at exit otherwise).

    ``wait_for_others``: first wait until every process has finished (rank 0 may still be writing the run's
    files). A process that leaves early closes its connections under the others, and gloo can abort on that.

    Objects still holding the group (a DDP wrapper in a reference cycle) are collected first: left to the
    interpreter's exit, the group is destroyed after its threads' runtime is gone, and the process aborts
    ("terminate called without an active exception") after its work is done.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum over processes of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm normalising with the mean and variance of the global batch over every process, on CPU.

    torch's ``SyncBatchNorm`` runs only on GPUs; this is the same computation written with two all-reduces
    (the channel sums, then the centred sums of squares), differentiable through both. In eval mode, or
    outside a process group, it is a plain BatchNorm.

    Shape:
        input ``(B, C, *)``, output the same.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = (1, -1) + (1,) * (x.dim() - 2)  # a (C,) vector broadcast over (B, C, *)
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics of bf16/fp16 inputs in float32
        xf = x.to(dtype)
        # float64 sums: the count of a large batch (64 x 640 x 640 values per channel) is not exact in float32
        local_n = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims).double(), local_n]))  # (C + 1,): sums, count
        n = sums[-1].detach()
        mean = (sums[:-1] / n).to(dtype)
        centred = xf - mean.view(shape)
        var = (_AllReduceSum.apply((centred * centred).sum(dims).double()) / n).to(dtype)  # biased, as BN
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * float(n / (n - 1).clamp_min(1))  # the running variance is unbiased, as in BN
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by one synchronised over the processes.

    Per-process statistics would normalise each process's share of the batch on its own, so N processes
    would not train what one process does on the same global batch. torch's ``SyncBatchNorm`` on CUDA,
    :class:`GlooSyncBatchNorm` on CPU. The new layers hold the same parameter and buffer tensors (optimizers
    built earlier still hold them) under the same ``state_dict`` keys, and keep the old layers' train/eval
    mode: frozen (eval-mode) BatchNorm, as the distillation student's, stays frozen.
    """
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, GlooSyncBatchNorm)):
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module
