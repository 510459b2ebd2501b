"""``invismap distill CONFIG.yaml [--resume] [key=value ...]``."""

from __future__ import annotations

import argparse

from invismap.engine.rundir import add_training_arguments, config_and_run_dir, report_training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil the color teacher into a thermal student (no labels)",
                       description="Train a thermal student on daytime pairs; writes RUN/student.pt and "
                                   "RUN/thermal_detector.pt.")
    add_training_arguments(p, "distill", "distill.yaml")
    p.set_defaults(func=_distill)
    add_experiment_parser(sub)


def _distill(args) -> None:
    from invismap.distill.run import DistillConfig, run_distill

    cfg, run = config_and_run_dir(DistillConfig, args, "distill")
    summary = run_distill(cfg, run, resume=args.resume, stop_at=args.stop_at)
    report_training(run, summary.steps, summary.max_steps,
                    f"thermal detector: {run / 'thermal_detector.pt'}  "
                    f"({summary.pairs_per_s:.2f} pairs/s, {summary.seconds:.0f} s)")


def add_experiment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill-experiment", help="run the loss ablation or the number-of-pairs curve",
                       description="Train every variant, evaluate thermal AP50 day/night on the test split "
                                   "beside the teacher baselines, write OUT/table.md and OUT/table.json.")
    p.add_argument("experiment", choices=["ablation", "pairs"])
    p.add_argument("config", help="base distillation YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the base config")
    p.add_argument("--out", required=True, help="experiment folder (one run folder per variant)")
    p.add_argument("--pairs", type=int, nargs="+",
                   help="pair counts for the pairs curve (default 25 50 100 200)")
    p.set_defaults(func=_experiment)


def _experiment(args) -> None:
    from invismap.config import load_config
    from invismap.distill.experiments import run_experiment
    from invismap.distill.run import DistillConfig

    base = load_config(DistillConfig, args.config, args.overrides)
    run_experiment(args.experiment, base, args.out, pair_counts=args.pairs)
    from pathlib import Path

    print((Path(args.out) / "table.md").read_text())
