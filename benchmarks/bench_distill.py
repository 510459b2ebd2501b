"""Distillation throughput: the real training loop against pure compute, and where the time goes.

Built as ``invismap distill configs/distill.yaml`` builds it (same data, augmentation, cache, teacher,
student, task), then, alternating in the same process:

- **real**: ``engine.loop.fit`` for ``--steps`` steps, the training loop the command runs (data loader with
  the config's workers, augmentation, collation, logging, checkpoints; no validation), instrumented to split
  its time into data (dataset items + collation), teacher forward, student forward and the rest (loss,
  backward, optimizer step, clipping, logging, checkpoints);
- **pure compute**: the same task's training step (teacher forward + student forward/backward + AdamW) on
  batches collated beforehand, no loader.

The pair cache is warm after the first real block (the real run decodes each pair once, in its first epoch of
~11 steps out of 600); that first, cold block is reported on its own, and the one-off decode time separately.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_distill.py [--config configs/distill.yaml] [--steps 20] [--blocks 3]
        [--workers N] [key=value ...] [--quick]
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import OthersLoad, assets_env, base_parser, median, print_machine, table, wait_quiet
from torch.utils.data import Dataset


class Stopwatch:
    """Accumulates seconds per label; :meth:`wrap` times every call of a function."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        return timed

    def reset(self) -> None:
        self.seconds.clear()


class TimedDataset(Dataset):
    """A dataset whose item loading is timed (exact with ``num_workers=0``: items load in this process)."""

    def __init__(self, base: Dataset, watch: Stopwatch):
        self.base, self.watch = base, watch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        t = time.perf_counter()
        try:
            return self.base[index]
        finally:
            self.watch.seconds["data"] += time.perf_counter() - t


def build(args):
    """``(cfg, task, train_set)`` exactly as :func:`invismap.distill.run.run_distill` builds them."""
    from invismap.config import load_config
    from invismap.distill.run import DistillConfig, build_distillation

    overrides = [f"data={args.data}", f"train.num_workers={args.workers}", *args.overrides]
    cfg = load_config(DistillConfig, args.config, overrides)
    task, train_set, _, _, _ = build_distillation(cfg)
    return cfg, task, train_set


def instrument(task, watch: Stopwatch) -> None:
    """Time the teacher's and the student's forward passes of ``task`` (instance attributes shadow
    methods)."""
    task.teacher.neck_features = watch.wrap("teacher", task.teacher.neck_features)
    task.net.forward = watch.wrap("student forward", task.net.forward)


def real_block(cfg, task, dataset: Dataset, steps: int, start: int, watch: Stopwatch, tmp: Path) -> float:
    """Seconds of ``fit`` for ``steps`` steps (a fresh run folder; ``start`` shifts the data order)."""
    import dataclasses

    from invismap.data.dataset import collate_pairs
    from invismap.engine import loop

    train = dataclasses.replace(cfg.train, max_steps=steps, seed=cfg.train.seed + start, eval_every=0)
    run_dir = tmp / f"run{start}"
    saver = loop.save_checkpoint
    loop.save_checkpoint = watch.wrap("checkpoints", saver)
    try:
        t = time.perf_counter()
        loop.fit(task, dataset, train, run_dir, collate_fn=watch.wrap("data", collate_pairs), progress=False)
        return time.perf_counter() - t
    finally:
        loop.save_checkpoint = saver


def preload_batches(cfg, dataset: Dataset, count: int) -> list[dict]:
    """``count`` collated training batches (augmented as in training), loaded before timing."""
    from invismap.data.dataset import collate_pairs

    b = cfg.train.batch_size
    return [collate_pairs([dataset[k * b + j] for j in range(b)]) for k in range(count)]


def pure_block(cfg, task, batches: list[dict], steps: int) -> float:
    """Seconds of ``steps`` training steps on preloaded batches: forward, backward, clip, AdamW step."""
    from invismap.engine.loop import lr_at

    optimizers = task.configure_optimizers(cfg.train)
    task.train()
    t = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        out = task.training_step(batch)
        for name, opt in optimizers.items():
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.train)
            opt.zero_grad(set_to_none=True)
            out[f"loss/{name}"].backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                           cfg.train.grad_clip)
            opt.step()
    return time.perf_counter() - t


def decode_once_seconds(dataset) -> float:
    """Seconds to decode and letterbox every pair once (what the cache saves on every later epoch)."""
    from invismap.data.dataset import PairDataset

    fresh = PairDataset(dataset.manifest, dataset.size, square=dataset.square, cache=False)
    t = time.perf_counter()
    for i in range(len(fresh)):
        fresh._load(i)
    return time.perf_counter() - t


def torch_to_tensor(image):
    """The data loader's former conversion: torch elementwise ops (its thread pool runs for every item)."""
    import numpy as np

    chw = image.transpose(2, 0, 1) if image.ndim == 3 else image[None]
    return torch.from_numpy(np.ascontiguousarray(chw)).float().div_(255)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/distill.yaml")
    p.add_argument("--data", default="runs/msrs/manifest.csv", help="imported MSRS manifest")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=3, help="warm real/pure block pairs")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers of the real run (train.num_workers)")
    p.add_argument("--torch-to-tensor", action="store_true",
                   help="convert items with torch (.float().div_(255)) as the data loader did before, "
                        "to compare")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=4")
    args = p.parse_args()
    if args.quick:
        args.steps, args.blocks = 3, 1
    assets_env()
    torch.set_num_threads(args.threads)
    if args.torch_to_tensor:
        import invismap.data.dataset as dataset_module

        dataset_module.to_tensor = torch_to_tensor
    print_machine(f"bench_distill: {args.config}, {args.steps} steps per block, {args.threads} threads, "
                  f"{args.workers} loader workers{', torch item conversion' if args.torch_to_tensor else ''}")
    cfg, task, dataset = build(args)
    wait_quiet(args.wait_quiet)
    b = cfg.train.batch_size
    watch = Stopwatch()
    instrument(task, watch)
    timed = TimedDataset(dataset, watch)
    with tempfile.TemporaryDirectory() as tmp, OthersLoad() as load:
        cold = real_block(cfg, task, timed, args.steps, 0, watch, Path(tmp))
        batches = preload_batches(cfg, dataset, 4)
        real, pure, split = [], [], defaultdict(float)
        for k in range(args.blocks):
            pure.append(pure_block(cfg, task, batches, args.steps))
            watch.reset()
            real.append(real_block(cfg, task, timed, args.steps, k + 1, watch, Path(tmp)))
            for label, s in watch.seconds.items():
                split[label] += s
        decode = decode_once_seconds(dataset)
    steps = args.steps * args.blocks
    real_rate = [b * args.steps / s for s in real]
    pure_rate = [b * args.steps / s for s in pure]
    ratio = median([r / q for r, q in zip(real_rate, pure_rate)])
    print(f"\n## throughput (batch {b}, crops {cfg.augment.crop}, {args.blocks} x {args.steps} steps each)\n")
    blocks = lambda rates: " ".join(f"{r:.2f}" for r in rates)
    print(table(["loop", "pairs/s median", "pairs/s per block"],
                [["pure compute (preloaded batches)", f"{median(pure_rate):.2f}", blocks(pure_rate)],
                 ["real fit(), warm cache", f"{median(real_rate):.2f}", blocks(real_rate)],
                 ["real fit(), first block (cold cache)", f"{b * args.steps / cold:.2f}", ""]]))
    print(f"\nreal / pure compute throughput: {ratio:.1%} (paired per block; acceptance >= 70%)")
    total = sum(real)
    rest = total - sum(split.values())
    rows = [[label, f"{1000 * s / steps:.1f}", f"{s / total:.1%}"] for label, s in
            [("data: dataset items (cache, augment) + collation", split["data"]),
             ("teacher forward (color)", split["teacher"]),
             ("student forward (thermal)", split["student forward"]),
             ("checkpoints", split["checkpoints"]),
             ("rest: loss, backward, optimizer, logging", rest)]]
    print(f"\n## where a warm real step's time goes\n\n{table(['part', 'ms/step', 'share'], rows)}")
    print(f"\ndecoding + letterboxing all {len(dataset)} training pairs once: {decode:.2f} s "
          f"(= {decode / (cfg.train.max_steps * b) * 1000:.2f} ms per trained pair over the config's "
          f"{cfg.train.max_steps} steps)")
    print(f"CPU used by other processes during the run: {load}")


if __name__ == "__main__":
    main()
