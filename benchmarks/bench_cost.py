"""What a paper-scale distillation costs: measured pairs/s here, and the hours for 18,546 pairs per epoch.

For each configuration (the headline yolov5n distillation of ``configs/msrs.yaml``, and the paper's YOLOv3 at
416 of ``configs/paper-yolov3.yaml``; fp32 and bf16), the real training loop (``engine.loop.fit``, as
``invismap distill`` runs it: data loader, augmentation, teacher and student forward, backward, AdamW,
checkpoints) runs ``--steps`` steps after a warm-up block, in this process, one configuration after the other.
The paper's YOLOv3 weights (248 MB) are not reachable here: its teacher is the real ``yolov3.cfg`` with random
weights, which costs the same arithmetic.

It also counts the floating-point operations of one training pair (``torch.utils.flop_counter``: teacher
forward, student forward and backward) and times the data pipeline of one pair on one core (decode, letterbox,
augment; no cache, as a data set too large to cache would run). A GPU's pairs/s is then **estimated** as the
smaller of ``utilisation x peak / FLOPs per pair`` (peak dense tensor-core throughput of an H200: 989 TFLOP/s
in bf16, 494 in TF32; the utilisation is an assumption, ``--utilisation``) and ``loader cores / data seconds
per pair`` (``--loader-cores``, 16 on the lent GPU machine), and 8 GPUs as 8 x that x the assumed scaling
efficiency, each GPU with its own loader cores. Only the CPU rows are measurements.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_cost.py [--steps 4] [--pairs 18546] [--epochs 50]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from common import OthersLoad, assets_env, base_parser, print_machine, table, wait_quiet

H200_PEAK = {"bf16": 989e12, "fp32": 494e12}  # dense tensor-core FLOP/s (fp32 convolutions run as TF32)


def configurations(tmp: Path) -> dict[str, list[str]]:
    """name -> overrides of ``configs/distill.yaml`` (the pipeline configs' distill sections)."""
    import shutil

    from invismap.assets import find_asset
    from invismap.detector.darknet import load_darknet, save_darknet_weights

    cfg = tmp / "yolov3.cfg"  # the real architecture; random weights in the real file format
    shutil.copy(find_asset("weights/yolov3.cfg"), cfg)
    save_darknet_weights(load_darknet(cfg), tmp / "yolov3.weights")
    return {
        "yolov5n, 640, crops 256x320, head loss (msrs.yaml)": ["teacher=yolov5n", "loss=head", "size=640"],
        "YOLOv3, 416, whole images, mid loss (paper-yolov3.yaml)": [
            f"teacher={cfg}", "loss=mid", "size=416", "augment.crop=null", "thresholds=[3.2,3.5,4.0]",
            "offset_percentile=null", "train.batch_size=4"],
    }


def build(data: str, overrides: list[str]):
    from invismap.config import load_config
    from invismap.distill.run import DistillConfig, build_distillation

    cfg = load_config(DistillConfig, "configs/distill.yaml",
                      [f"data={data}", "train.eval_every=0", *overrides])
    task, train_set, _, _, _ = build_distillation(cfg)
    return cfg, task, train_set


def pairs_per_s(cfg, task, dataset, steps: int, run_dir: Path) -> float:
    """Pairs/s of ``fit`` over ``steps`` steps (a fresh run folder; the first call also warms the cache)."""
    from invismap.data.dataset import collate_pairs
    from invismap.engine.loop import fit

    train = dataclasses.replace(cfg.train, max_steps=steps, warmup_steps=1, ckpt_every=steps, log_every=steps)
    t = time.perf_counter()
    fit(task, dataset, train, run_dir, collate_fn=collate_pairs, progress=False)
    return steps * cfg.train.batch_size / (time.perf_counter() - t)


def flops_per_pair(cfg, task, dataset) -> float:
    """FLOPs of one training step per pair: teacher forward, student forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from invismap.data.dataset import collate_pairs

    batch = collate_pairs([dataset[i] for i in range(cfg.train.batch_size)])
    task.train()
    with FlopCounterMode(display=False) as counter:
        out = task.training_step(batch)
        next(v for k, v in out.items() if k.startswith("loss/")).backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops() / cfg.train.batch_size


def data_seconds_per_pair(dataset, n: int = 16) -> float:
    """Seconds one core spends to decode, letterbox and augment one training pair (no cache)."""
    from invismap.data.dataset import PairDataset

    fresh = PairDataset(dataset.manifest, dataset.size, augment=dataset.augment, seed=1, cache=False,
                        square=dataset.square)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        for i in range(n):
            fresh[i % len(fresh)]
        return (time.perf_counter() - t) / n
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/msrs/manifest.csv", help="imported MSRS manifest")
    p.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after a warm-up)")
    p.add_argument("--pairs", type=int, default=18546, help="pairs per epoch (the paper's distillation set)")
    p.add_argument("--epochs", type=int, default=50,
                   help="epochs for the total (the paper's schedule could not be read here: an assumption)")
    p.add_argument("--utilisation", type=float, default=0.3, help="assumed share of the GPU's peak reached")
    p.add_argument("--scaling", type=float, default=0.9, help="assumed 8-GPU scaling efficiency")
    p.add_argument("--loader-cores", type=int, default=16, help="CPU cores feeding each GPU (assumed)")
    args = p.parse_args()
    if args.quick:
        args.steps = 2
    assets_env()
    torch.set_num_threads(args.threads)
    print_machine(f"bench_cost: {args.steps} steps per configuration, {args.threads} threads")
    wait_quiet(args.wait_quiet)
    rows, estimates = [], []
    with tempfile.TemporaryDirectory() as tmp, OthersLoad() as load:
        tmp = Path(tmp)
        for name, overrides in configurations(tmp).items():
            for precision in ("fp32", "bf16"):
                cfg, task, dataset = build(args.data, [*overrides, f"train.precision={precision}"])
                pairs_per_s(cfg, task, dataset, 1, tmp / f"warm-{len(rows)}")  # cache, allocator, first step
                rate = pairs_per_s(cfg, task, dataset, args.steps, tmp / f"run-{len(rows)}")
                flops = flops_per_pair(cfg, task, dataset)
                data = data_seconds_per_pair(dataset)
                hours = args.pairs / rate / 3600
                rows.append([name, precision, f"{rate:.2f}", f"{flops / 1e9:.1f}", f"{1000 * data:.0f}",
                             f"{hours:.1f}", f"{hours * args.epochs:.0f}"])
                compute, loader = args.utilisation * H200_PEAK[precision] / flops, args.loader_cores / data
                gpu = min(compute, loader)
                gpu_hours = args.pairs / gpu / 3600
                estimates.append([name, precision, f"{compute:.0f}", f"{loader:.0f}", f"{gpu:.0f}",
                                  f"{60 * gpu_hours:.1f}",
                                  f"{gpu_hours * args.epochs:.1f}",
                                  f"{gpu_hours * args.epochs / (8 * args.scaling):.2f}"])
                print(" | ".join(rows[-1]), flush=True)
    print(f"\n## measured on this CPU ({args.threads} threads; {args.steps} steps after a warm-up step)\n")
    print(table(["configuration", "precision", "pairs/s", "GFLOP per pair", "data ms per pair (1 core)",
                 f"h per epoch of {args.pairs}", f"h for {args.epochs} epochs"], rows))
    print(f"\n## ESTIMATED for an H200 (not measured: {args.utilisation:.0%} of its peak, "
          f"{args.loader_cores} loader cores per GPU, 8 GPUs at {args.scaling:.0%} scaling)\n")
    print(table(["configuration", "precision", "compute-bound pairs/s", "loader-bound pairs/s",
                 "pairs/s, 1 GPU", "min per epoch, 1 GPU",
                 f"h for {args.epochs} epochs, 1 GPU", f"h for {args.epochs} epochs, 8 GPUs"], estimates))
    print(f"\nCPU used by other processes during the run: {load}")


if __name__ == "__main__":
    main()
