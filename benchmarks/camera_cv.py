"""Does a distillation recipe carry to a second camera? Leave-drives-out cross-validation on its train split.

A second camera's labelled training pairs (RoadScene's 45 day pairs) are the pairs it adds to distillation,
so a recipe cannot be chosen for that camera on pairs the student never saw, and its test split must not
choose (BENCHMARKS section 10). This splits the camera's labelled training *drives*
(:func:`invismap.data.importers.roadscene.drive_of`; neighbouring frames stay together) into ``--folds``
folds of about equal labelled pairs (:func:`~invismap.data.importers.roadscene.drive_folds`). For every
recipe and fold, one student is distilled as the pipeline's ``distill`` section says (one student, no soup;
``--variant`` overrides), with that fold's pairs left out (their split set to ``val``), and scored on them.
Each held-out pair is thus scored by a student that never saw it; AP50 (thermal images, thermal labels,
the config's ``evaluate`` protocol) is pooled over the folds and printed beside the teacher on the same
thermal images, with paired 95% intervals over the images (1000 bootstrap resamples): each recipe's lead
over the teacher and its gain over the first recipe. With ``--select-night`` the same students are also scored
on the main dataset's selection column (its training split's night pairs, which distillation never sees): each
fold's student against the first recipe's student of the same fold, paired over the images.

Students are trained by ``invismap distill`` in ``--jobs`` processes of one thread each; a fold whose
``thermal_detector.pt`` exists is not trained again, so an interrupted run resumes.

Usage (from the repository root, after ``invismap run configs/msrs.yaml --to register``)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/camera_cv.py --config configs/msrs.yaml \\
        --data runs/msrs/register --camera runs/msrs/import/more/roadscene --out runs/camera-cv \\
        --variant base --variant lr_half train.lr=0.0001 --json runs/camera-cv/cv.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from common import assets_env, base_parser, print_machine, setup_torch, table

if TYPE_CHECKING:
    from invismap.detector.protocol import ScoringProtocol


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/msrs.yaml", help="the pipeline config whose distill recipe")
    p.add_argument("--data", required=True, help="the main pairs (the config's register or import folder)")
    p.add_argument("--camera", required=True, help="the second camera's imported pairs (its manifest folder)")
    p.add_argument("--out", required=True, help="folder for the fold manifests and the students")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="train.seed of every student")
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a recipe: a name and distill overrides (none: the config's recipe); repeatable")
    p.add_argument("--jobs", type=int, default=2, help="students trained at once")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--select-night", action="store_true",
                   help="also score every fold's students on the main pairs' training night pairs")
    p.add_argument("--json", help="also write the estimates here")
    return p.parse_args()


def write_fold_manifests(camera: str, out: Path, folds: int) -> list[Path]:
    """One manifest per fold: the camera's pairs with that fold's labelled training pairs moved to ``val``."""
    from invismap.data.importers.roadscene import drive_folds, drive_of
    from invismap.data.manifest import load_manifest, save_manifest

    manifest = load_manifest(camera)
    labelled = [s for s in manifest.select(split="train") if s.thermal_labels is not None]
    if not labelled:
        raise SystemExit(f"{camera}: no thermally labelled training pairs to hold out")
    fold_of = drive_folds(Counter(drive_of(s.name) for s in labelled), folds)
    held = {s.name: fold_of[drive_of(s.name)] for s in labelled}
    paths = []
    for k in range(folds):
        samples = [replace(s, split="val") if held.get(s.name) == k else s for s in manifest]
        paths.append(save_manifest(replace(manifest, samples=samples), out / "folds" / str(k)))
        drives = sorted(d for d, f in fold_of.items() if f == k)
        print(f"fold {k}: {sum(f == k for f in held.values())} labelled pairs held out, drives {drives}")
    return paths


def student_configs(args, base, fold_manifests: list[Path]) -> dict[str, list[Path]]:
    """``{recipe: [run folder per fold]}``, each folder holding the student's ``config.yaml``: the distill
    section ``base`` as one student of ``--seed``, on the main pairs and that fold's camera manifest."""
    from invismap.config import dump_config
    from invismap.distill.experiments import variant_config

    runs = {}
    for name, *overrides in args.variant or [["base"]]:
        runs[name] = []
        for k, fold in enumerate(fold_manifests):
            cfg = variant_config(replace(base, data=str(Path(args.data).resolve()), soup=1,
                                         extra_data=[str(fold.resolve())]),
                                 [f"train.seed={args.seed}", *overrides])
            run = Path(args.out) / name / f"fold_{k}"
            run.mkdir(parents=True, exist_ok=True)
            (run / "config.yaml").write_text(dump_config(cfg))
            runs[name].append(run)
    return runs


def train_students(runs: list[Path], jobs: int) -> None:
    """``invismap distill`` on every run folder without a ``thermal_detector.pt``, ``jobs`` at a time."""
    todo = [r for r in runs if not (r / "thermal_detector.pt").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[tuple[Path, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < jobs:
            run = todo.pop(0)
            print(f"training {run}", flush=True)
            log = open(run / "train.log", "w")  # noqa: SIM115 (closed with its process)
            cmd = [sys.executable, "-m", "invismap", "distill", str(run / "config.yaml"), "--run", str(run)]
            if (run / "ckpt" / "last.pt").exists():
                cmd.append("--resume")
            running.append((run, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        run, proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"{run}: distillation failed, see {run / 'train.log'}")


def main() -> None:
    args = parse_args()
    assets_env()
    from invismap.pipeline.config import load_pipeline_config

    cfg = load_pipeline_config(args.config)
    fold_manifests = write_fold_manifests(args.camera, Path(args.out), args.folds)
    runs = student_configs(args, cfg.distill, fold_manifests)
    train_students([r for folds in runs.values() for r in folds], args.jobs)

    setup_torch(args.threads)
    from invismap.data.manifest import load_manifest
    from invismap.detector.ap_bootstrap import ap50_estimates
    from invismap.detector.evaluate import LabelledDetections, detect_labelled
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import format_estimate
    from invismap.pipeline.steps import scoring_protocol

    protocol = scoring_protocol(cfg.evaluate, cfg.distill.size)
    print_machine(f"{args.folds}-fold leave-drives-out cross-validation on {args.camera} (thermal labels)")
    print(f"recipes {list(runs)}, seed {args.seed}, {protocol.describe()}")
    teacher = load_detector(cfg.distill.teacher)
    by_fold = {name: [] for name in ["teacher", *runs]}
    for k, fold in enumerate(fold_manifests):
        manifest = load_manifest(fold)
        models = {"teacher": teacher, **{name: load_detector(folds[k] / "thermal_detector.pt")
                                         for name, folds in runs.items()}}
        for name, model in models.items():
            by_fold[name].append(detect_labelled(model, manifest, "thermal", "thermal", split="val",
                                                 protocol=protocol))
    pooled = {name: LabelledDetections.pooled(parts) for name, parts in by_fold.items()}
    n = len(pooled["teacher"].image_sizes)
    first = next(iter(runs))
    estimates = ap50_estimates(pooled, reference="teacher", n_boot=args.n_boot)
    gains = ap50_estimates({name: pooled[name] for name in runs}, reference=first, n_boot=args.n_boot)

    def cell(e: dict | None, spec: str = "+.1f") -> str:
        return "" if e is None else format_estimate(e, spec)

    rows = [[name, cell(estimates[name], ".1f"), cell(estimates.get(f"{name} - teacher")),
             cell(gains.get(f"{name} - {first}"))] for name in pooled]
    print(f"{n} held-out labelled pairs of {args.camera}, each scored by the student that never saw it")
    print(table(["recipe", "AP50 [95% CI]", "- teacher", f"- {first}"], rows))
    results = {"pairs": n, "seed": args.seed, "folds": args.folds, "estimates": estimates, "gains": gains,
               "protocol": {"size": protocol.size, **protocol.record()}}
    if args.select_night:
        results["select_night"] = select_night(args, runs, protocol)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def select_night(args: argparse.Namespace, runs: dict[str, list[Path]],
                 protocol: ScoringProtocol) -> list[dict]:
    """Every fold's students on the main pairs' training night pairs, each recipe's paired against the first's
    (same fold and seed); prints a row per fold and the folds' mean.

    Returns:
        per fold, ``{recipe or "recipe - first": {"value", "lo", "hi"}}`` (AP50 points, 95% interval).
    """
    import numpy as np

    from invismap.data.manifest import load_manifest
    from invismap.detector.ap_bootstrap import ap50_estimates
    from invismap.detector.evaluate import detect_labelled
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import format_estimate

    manifest = load_manifest(args.data)
    first = next(iter(runs))
    columns = {**dict.fromkeys(runs, ".1f"), **{f"{name} - {first}": "+.1f" for name in list(runs)[1:]}}
    per_fold, rows, n = [], [], 0
    for k in range(args.folds):
        found = {name: detect_labelled(load_detector(folds[k] / "thermal_detector.pt"), manifest, "thermal",
                                       "thermal", condition="night", split="train", protocol=protocol)
                 for name, folds in runs.items()}
        n = len(found[first].image_sizes)
        e = ap50_estimates(found, reference=first, n_boot=args.n_boot)
        per_fold.append(e)
        rows.append([f"fold {k}", *(format_estimate(e[key], spec) for key, spec in columns.items())])
    rows.append(["mean", *(format(np.mean([e[key]["value"] for e in per_fold]), spec)
                           for key, spec in columns.items())])
    print(f"{args.data} select night ({n} training night pairs), each fold's student, seed {args.seed}")
    print(table(["student", *columns], rows))
    return per_fold


if __name__ == "__main__":
    main()
