"""One thermal rendering in training and at inference: every frame stretched to its own percentiles.

The two thermal cameras render a scene very differently (BENCHMARKS section 10): MSRS's frames are dark and
flat, RoadScene's FLIR camera stretches every frame over the whole range. The gain-control *augmentation*
teaches the student both renderings and was not adopted. This measures the other way round: render every
thermal frame one way, in distillation and in scoring alike (1st / 99th percentile to 0 / 255,
``data/dataset.py:thermal_gain_control``), so the cameras' gray levels are out of the problem.

Two steps, from the repository root after ``invismap run configs/msrs.yaml --to register``:

1. ``copy``: copies of the pairs whose thermal frames are rendered (PNG; color, labels and splits unchanged)::

       .venv/bin/python benchmarks/thermal_render.py copy --data runs/msrs/register \\
           --camera runs/msrs/import/more/roadscene --out runs/render

   then train the cross-validation students on them, one run per seed (``camera_cv.py`` also trains and
   scores the same recipe on the original pairs, ``--out runs/camera-cv-sS --variant base``)::

       .venv/bin/python benchmarks/camera_cv.py --data runs/render/msrs --camera runs/render/roadscene \\
           --out runs/camera-cv-render-sS --seed S --variant render

2. ``compare``: each seed's students, original against rendered, on the two selection columns in one run,
   paired over the images (95% intervals, 1000 bootstrap resamples): RoadScene's held-out training drives
   (each pair scored by the student that never saw it) and MSRS select night (the train split's night pairs,
   never distilled on; every fold's student scored on all of them). The teacher is scored on both renderings::

       .venv/bin/python benchmarks/thermal_render.py compare --data runs/msrs/register \\
           --camera runs/msrs/import/more/roadscene --out runs/render \\
           --runs runs/camera-cv-s0 runs/camera-cv-s1 \\
           --render-runs runs/camera-cv-render-s0 runs/camera-cv-render-s1
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from common import assets_env, base_parser, print_machine, setup_torch, table

LOW, HIGH = 1.0, 99.0  # percentiles mapped to 0 and 255
RENDERINGS = ("own", "rendered")  # the camera's own gray levels; the copies of render_copy


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("step", choices=("copy", "compare"))
    p.add_argument("--config", default="configs/msrs.yaml", help="the pipeline config (teacher, protocol)")
    p.add_argument("--data", required=True, help="the main pairs (the config's register or import folder)")
    p.add_argument("--camera", required=True, help="the second camera's imported pairs (its manifest folder)")
    p.add_argument("--out", required=True, help="folder of the rendered copies (msrs/, roadscene/)")
    p.add_argument("--runs", nargs="+", default=[], help="camera_cv.py --out folders on the original pairs")
    p.add_argument("--render-runs", nargs="+", default=[], help="the same on the rendered copies, same seeds")
    p.add_argument("--recipe", default="base", help="the recipe folder inside --runs")
    p.add_argument("--render-recipe", default="render", help="the recipe folder inside --render-runs")
    p.add_argument("--n-boot", type=int, default=1000)
    return p.parse_args()


def render_copy(src: str, dst: Path) -> Path:
    """``src``'s manifest with every thermal frame rendered into ``dst/thermal/NAME.png``."""
    from invismap.data.dataset import thermal_gain_control
    from invismap.data.manifest import load_manifest, save_manifest
    from invismap.io import read_thermal, write_image

    manifest = load_manifest(src)
    (dst / "thermal").mkdir(parents=True, exist_ok=True)
    samples = []
    for s in manifest:
        path = dst / "thermal" / f"{s.name}.png"
        if not path.exists():
            write_image(path, thermal_gain_control(read_thermal(s.thermal), LOW, HIGH))
        samples.append(replace(s, thermal=path.resolve()))
    return save_manifest(replace(manifest, samples=samples, root=dst.resolve()), dst)


def compare(args) -> None:
    import numpy as np

    from invismap.data.manifest import load_manifest
    from invismap.detector.ap_bootstrap import ap50_estimates
    from invismap.detector.evaluate import LabelledDetections, detect_labelled
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import format_estimate
    from invismap.pipeline.config import load_pipeline_config
    from invismap.pipeline.steps import scoring_protocol

    if len(args.runs) != len(args.render_runs) or not args.runs:
        raise SystemExit("give one --render-runs folder per --runs folder (same seeds, same order)")
    cfg = load_pipeline_config(args.config)
    protocol = scoring_protocol(cfg.evaluate, cfg.distill.size)
    out = Path(args.out)
    print_machine(f"one thermal rendering (percentiles {LOW:g} / {HIGH:g}) against the cameras' own")
    print(protocol.describe())
    teacher = load_detector(cfg.distill.teacher)
    folds = sorted(Path(args.runs[0], "folds").iterdir(), key=lambda p: int(p.name))

    def scored(model, manifest, split, condition=None) -> LabelledDetections:
        return detect_labelled(model, manifest, "thermal", "thermal", condition=condition, split=split,
                               protocol=protocol)

    msrs = {"own": load_manifest(args.data), "rendered": load_manifest(out / "msrs")}
    rendered_folds = [Path(args.render_runs[0], "folds", fold.name) for fold in folds]
    cv = [{"own": load_manifest(a), "rendered": load_manifest(b)} for a, b in zip(folds, rendered_folds)]
    select = defaultdict(dict)  # detector -> rendering -> LabelledDetections
    held_out = defaultdict(lambda: defaultdict(list))  # the same, one per fold
    for r in RENDERINGS:
        select["teacher"][r] = scored(teacher, msrs[r], "train", "night")
        for fold in cv:
            held_out["teacher"][r].append(scored(teacher, fold[r], "val"))
    for runs in zip(args.runs, args.render_runs):
        for k, fold in enumerate(cv):
            for r, run, recipe in zip(RENDERINGS, runs, (args.recipe, args.render_recipe)):
                model = load_detector(Path(run, recipe, f"fold_{k}", "thermal_detector.pt"))
                held_out[f"student {Path(runs[0]).name}"][r].append(scored(model, fold[r], "val"))
                select[f"student {Path(runs[0]).name} fold {k}"][r] = scored(model, msrs[r], "train", "night")

    def rows_for(sets: dict[str, dict[str, LabelledDetections]]) -> list[list[str]]:
        rows, students = [], []
        for name, by_render in sets.items():
            e = ap50_estimates(dict(by_render), reference="own", n_boot=args.n_boot)
            rows.append([name, *(format_estimate(e[k], spec) for k, spec in
                                  (("own", ".1f"), ("rendered", ".1f"), ("rendered - own", "+.1f")))])
            if name != "teacher":
                students.append([e[k]["value"] for k in ("own", "rendered", "rendered - own")])
        mean = np.mean(students, axis=0)
        return [*rows, ["students' mean", f"{mean[0]:.1f}", f"{mean[1]:.1f}", f"{mean[2]:+.1f}"]]

    headers = ["detector", "own rendering", "one rendering", "gain [95% CI]"]
    cv_sets = {name: {r: LabelledDetections.pooled(parts) for r, parts in by.items()}
               for name, by in held_out.items()}
    print(f"\nRoadScene held-out training drives ({len(cv_sets['teacher']['own'].image_sizes)} pairs, "
          f"{len(folds)} folds; each student pooled over its folds)")
    print(table(headers, rows_for(cv_sets)))
    print(f"\nMSRS select night ({len(select['teacher']['own'].image_sizes)} pairs; every fold's student)")
    print(table(headers, rows_for(select)))


def main() -> None:
    args = parse_args()
    assets_env()
    if args.step == "copy":
        for src, name in ((args.data, "msrs"), (args.camera, "roadscene")):
            print(render_copy(src, Path(args.out) / name))
        return
    setup_torch(args.threads)
    compare(args)


if __name__ == "__main__":
    main()
