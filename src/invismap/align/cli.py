"""``invismap align-train CONFIG [--resume] [key=value ...]`` and ``invismap align --model --data --out``."""

from __future__ import annotations

import argparse

from invismap.data.manifest import SPLITS
from invismap.engine.rundir import add_training_arguments, config_and_run_dir, report_training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align-train", help="train AlignGAN (color -> thermal position) on pairs",
                       description="Train AlignGAN (paper Section 3.1) on registered or weakly aligned "
                                   "pairs; writes RUN/aligngan.pt.")
    add_training_arguments(p, "align", "align.yaml")
    p.set_defaults(func=_train)

    p = sub.add_parser("align", help="move each pair's color image onto its thermal image with AlignGAN",
                       description="Write OUT/color/*.png (aligned color), OUT/labels/color/*.txt (moved "
                                   "color boxes) and OUT/manifest.csv.")
    p.add_argument("--model", required=True, help="RUN/aligngan.pt from align-train")
    p.add_argument("--data", required=True, help="manifest.csv (or its folder) of the pairs to align")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--split", default=None, choices=SPLITS, help="only pairs of this split (default: all)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.set_defaults(func=_align)


def _train(args) -> None:
    from invismap.align.run import AlignConfig, train_aligngan

    cfg, run = config_and_run_dir(AlignConfig, args, "align")
    summary = train_aligngan(cfg, run, resume=args.resume, stop_at=args.stop_at)
    report_training(run, summary.steps, summary.max_steps,
                    f"AlignGAN: {run / 'aligngan.pt'}  "
                    f"({summary.pairs_per_s:.2f} pairs/s, {summary.seconds:.0f} s)")


def _align(args) -> None:
    from invismap.align.run import align_dataset
    from invismap.data.manifest import load_manifest

    m = load_manifest(args.data)
    if args.split:
        m = m.select(split=args.split)
    out = align_dataset(args.model, m, args.out, device=args.device)
    print(f"aligned {len(out)} pairs: {args.out}/manifest.csv")
