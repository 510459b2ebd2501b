"""What each stage of ``invismap run`` does: one function per stage, each calling its pipeline step's library.

Each is ``run(settings, inputs, out, resume) -> summary`` (the contract of ``pipeline/runner.py``):
``settings`` holds exactly what its row in ``pipeline/stages.py:STAGES`` hashes, ``inputs`` the folders and
records of the stages it names. It writes into its own folder ``OUT/<stage>/`` and returns a small JSON-able
summary; the data stages (import, register, align) each leave a ``manifest.csv`` and later stages read the
last of them. Values that cross stages (the teacher, the image size and the loss of the distillation) are
read from the distill stage's record, never from another stage's settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from invismap.data.manifest import Manifest, evenly, load_manifest, save_manifest
from invismap.detector.protocol import ScoringProtocol
from invismap.distill.run import DistillConfig
from invismap.engine.rundir import can_resume
from invismap.errors import InvismapError
from invismap.invisibility.predictor import PredictorConfig
from invismap.io import copy_file, write_json
from invismap.pipeline.config import AlignSection, DisplacementSection, EvaluateSection
from invismap.pipeline.runner import Inputs, Settings

DATA_STAGES = ("import", "register", "align")


def pairs_manifest(inputs: Inputs) -> Path:
    """The manifest a stage trains and evaluates on: the output of the last data stage among its inputs."""
    last = [n for n in DATA_STAGES if n in inputs.dirs][-1]
    return inputs.dirs[last] / ("pairs" if last == "align" else "") / "manifest.csv"


def source_manifest(inputs: Inputs) -> Path:
    """The pairs registration/alignment start from: the registered ones if registered, else the imported."""
    return inputs.dirs.get("register", inputs.dirs["import"]) / "manifest.csv"


def more_manifests(inputs: Inputs) -> dict[str, Path]:
    """The manifests of ``data.more``, by format, as the import stage wrote them."""
    return {fmt: inputs.dirs["import"] / "more" / fmt / "manifest.csv"
            for fmt in inputs.summary("import").get("more", {})}


def distilled(inputs: Inputs) -> tuple[str, int, str]:
    """``(teacher, size, loss)`` of the distillation upstream, from its record."""
    s = inputs.summary("distill")
    return s["teacher"], s["size"], s["loss"]


def scoring_protocol(s: Settings, size: int) -> ScoringProtocol:
    """How detectors are scored and fused (``evaluate``'s ``tta_sizes``, ``nms_iou``, ``fold_classes``) at
    the distillation's letterbox ``size``."""
    return ScoringProtocol(size, s.tta_sizes, s.nms_iou, s.fold_classes)


def subset(manifest: Manifest, per_group: int, key=lambda s: (s.split, s.condition)) -> Manifest:
    """At most ``per_group`` evenly spaced pairs of each group (default: each split and condition)."""
    if not per_group:
        return manifest
    groups: dict = {}
    for s in manifest:
        groups.setdefault(key(s), []).append(s)
    keep = {s.name for g in groups.values() for s in evenly(g, per_group)}
    return Manifest([s for s in manifest if s.name in keep], manifest.root)


def import_pairs(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.data.importers import import_dataset
    from invismap.data.show import contact_sheet
    from invismap.data.summary import format_table, summarize

    c = s.data
    manifest = subset(import_dataset(c.format, c.src, d, check=c.check, **(c.options or {})), c.max_pairs)
    save_manifest(manifest, d / "manifest.csv")
    rows = summarize(manifest)
    write_json(d / "summary.json", rows)
    contact_sheet(manifest, d / "contact_sheet.png", max_pairs=8)
    inputs.echo(format_table(rows))
    out = {"pairs": len(manifest), "table": rows}
    for m in c.more:  # as imported: their own split, all of their pairs
        more = import_dataset(m.format, m.src, d / "more" / m.format, check=c.check, **(m.options or {}))
        inputs.echo(f"{m.format} (data.more):\n{format_table(summarize(more))}")
        out.setdefault("more", {})[m.format] = len(more)
    return out


def displacement(c: DisplacementSection, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.registration.run import run_displacement

    summary = run_displacement(load_manifest(inputs.dirs["import"]), d, split=c.split or None,
                               max_pairs=c.max_pairs or None)
    return _displacement_summary(summary)


def _displacement_summary(s: dict) -> dict:
    pooled = s.get("pooled", {})
    return {"pairs": s.get("n_pairs"), "offsets": s.get("offsets", {}),
            "median_dx": pooled.get("median_dx"), "median_dy": pooled.get("median_dy"),
            "share_ge_5px": pooled.get("share_ge_big"), "share_x_ge_5px": pooled.get("share_x_ge_big"),
            "share_y_ge_5px": pooled.get("share_y_ge_big")}


def register(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.registration.run import correct_offset, load_offset, run_displacement

    dx, dy = load_offset(inputs.dirs["displacement"], s.register.offset)
    manifest = correct_offset(load_manifest(inputs.dirs["import"]), dx, dy, d)
    c = s.displacement  # measured again after the correction, as the displacement stage measures
    after = run_displacement(manifest, d / "displacement", split=c.split or None,
                             max_pairs=c.max_pairs or None)
    return {"pairs": len(manifest), "removed": {"dx": dx, "dy": dy}, "after": _displacement_summary(after)}


def align(c: AlignSection, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.align.run import align_dataset, train_aligngan

    source = source_manifest(inputs)
    gan = dataclasses.replace(c.gan, data=str(source))
    summary = train_aligngan(gan, d / "gan", resume=resume and can_resume(d / "gan"))
    manifest = align_dataset(d / "gan" / "aligngan.pt", source, d / "pairs")
    return {"pairs": len(manifest), "train": _brief(summary, ("steps", "seconds", "pairs_per_s",
                                                               "best_val_loss", "train_pairs", "val_pairs"))}


def _brief(summary, keys: tuple[str, ...]) -> dict:
    """The figures of a trainer's :class:`~invismap.engine.summary.TrainSummary` a stage records."""
    flat = summary.to_dict()
    return {k: flat[k] for k in keys if k in flat}


def distill_config(c: DistillConfig, inputs: Inputs, data: Path | None = None, **changes):
    """The distill section ``c`` with its data (and ``data.more``) filled in, and ``changes`` applied."""
    return dataclasses.replace(c, data=str(data or pairs_manifest(inputs)),
                               extra_data=[str(m) for m in more_manifests(inputs).values()], **changes)


def train(command: str, trainer, cfg, inputs: Inputs, d: Path, resume: bool):
    """Run a trainer (``run_distill``, ``train_predictor``) on ``cfg`` in ``d``, in this process or, with
    ``inputs.nproc > 1``, as ``torchrun ... -m invismap COMMAND`` on the same config; its TrainSummary."""
    resume = resume and can_resume(d)
    if inputs.nproc <= 1:
        return trainer(cfg, run_dir=d, resume=resume)
    import subprocess
    import sys

    from invismap.config import dump_config
    from invismap.engine.summary import TrainSummary
    from invismap.io import atomic_write

    config = d / "launch.yaml"
    with atomic_write(config, "w") as f:
        f.write(dump_config(cfg))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(inputs.nproc), "-m", "invismap", command, str(config), "--run-dir", str(d)]
    inputs.echo("  " + " ".join(argv[1:]) + (" --resume" if resume else ""))
    code = subprocess.run(argv + (["--resume"] if resume else []), check=False).returncode
    if code != 0:
        raise InvismapError(f"{d}: '{command}' under torchrun ({inputs.nproc} processes) failed with exit "
                            f"code {code} (its error is above); run again to resume")
    return TrainSummary.load(d)


def distill(c: DistillConfig, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.distill.run import run_distill

    summary = train("distill", run_distill, distill_config(c, inputs), inputs, d, resume)
    return {**_brief(summary, ("steps", "seconds", "pairs_per_s", "thresholds", "offsets", "train_pairs",
                               "val_pairs", "best_val_loss")),
            "teacher": c.teacher, "size": c.size, "loss": c.loss}  # what later stages read (distilled())


def targets(c: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    import json

    from invismap.invisibility.targets import TARGETS_META, score_pairs

    score_pairs(inputs.dirs["distill"] / "student.pt", pairs_manifest(inputs), d, split=c.split, size=c.size,
                cfg=c.target)
    meta = json.loads((d / TARGETS_META).read_text())
    return {"pairs": meta["count"], "split": c.split, "kind": c.target.kind,
            **{k: meta[k] for k in ("objects", "missed", "mean_miss_rate") if k in meta}}


def predictor(c: PredictorConfig, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.invisibility.predictor import train_predictor

    cfg = dataclasses.replace(c, data=str(pairs_manifest(inputs)), targets=str(inputs.dirs["targets"]),
                              teacher=distilled(inputs)[0])
    summary = train("train-predictor", train_predictor, cfg, inputs, d, resume)
    return _brief(summary, ("steps", "seconds", "best_val_loss", "step", "train_pairs", "val_pairs"))


def eval_detector(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """Thermal AP50 of the teacher (on color and thermal images) and the thermal detector, per condition and
    class, on the main dataset and each ``data.more`` one; with 95% intervals over images and the thermal
    detector's paired lead over the teacher on the same thermal images (``intervals``)."""
    from invismap.detector.zoo import load_detector
    from invismap.distill.experiments import scored_detections
    from invismap.invisibility.bootstrap import format_estimate

    manifest, (teacher_name, size, loss) = load_manifest(pairs_manifest(inputs)), distilled(inputs)
    teacher = load_detector(teacher_name)
    student = load_detector(str(inputs.dirs["distill"] / "thermal_detector.pt"))
    models = (("teacher on color", teacher, "color"), ("teacher on thermal", teacher, "thermal"),
              (f"thermal detector ({loss})", student, "thermal"))
    protocol = scoring_protocol(s, size)

    def score(m: Manifest, main: bool) -> tuple[list[dict], dict]:
        rows, found = [], {}  # found: variant -> condition -> LabelledDetections
        for name, model, images in models:
            if main or images == "thermal" or _has_color_labels(m):
                if main:
                    inputs.echo(f"  AP50 of {name}")
                row, found[name] = scored_detections(model, m, images, s.split, protocol)
                rows.append({"variant": name, **row})
        return rows, detector_intervals(found, s.bootstrap)

    rows, intervals = score(manifest, main=True)
    more, more_intervals = {}, {}
    for fmt, path in more_manifests(inputs).items():  # each dataset's own test split, reported apart
        more[fmt], more_intervals[fmt] = score(load_manifest(path), main=False)
        inputs.echo(f"  {fmt}: " + format_ap(more[fmt]))
    for fmt, by_condition in (("", intervals), *more_intervals.items()):
        inputs.echo(f"  {fmt + ': ' if fmt else ''}lead over the teacher on thermal images " + ", ".join(
            f"{cond} {format_estimate(e, '+.1f')}" for cond, est in by_condition.items()
            for k, e in est.items() if k == f"thermal detector ({loss}) - teacher on thermal"))
    write_json(d / "detector.json", {"split": s.split, "size": size, **protocol.record(),
                                     "labels": "thermal", "rows": rows, "more": more,
                                     "bootstrap": s.bootstrap, "intervals": intervals,
                                     "more_intervals": more_intervals})
    return {"rows": rows, "more": more, "intervals": intervals, "more_intervals": more_intervals}


def detector_intervals(found: dict, n_boot: int) -> dict:
    """``{condition: ap50_estimates}`` of the detectors in ``found`` (variant -> condition -> detections):
    each one's AP50 with its 95% interval, and each one's lead over ``teacher on thermal``."""
    from invismap.detector.ap_bootstrap import ap50_estimates

    conditions = next(iter(found.values())).keys()
    reference = "teacher on thermal" if "teacher on thermal" in found else None
    return {cond: ap50_estimates({name: by[cond] for name, by in found.items()}, reference, n_boot=n_boot)
            for cond in conditions}


def _has_color_labels(manifest: Manifest) -> bool:
    return any(s.color_labels is not None for s in manifest)


def evaluation_pairs(c: EvaluateSection, inputs: Inputs) -> Manifest:
    """The pairs the evaluation section ``c`` scores (its split and conditions, at most ``c.max_pairs``)."""
    manifest = load_manifest(pairs_manifest(inputs)).select(condition=c.conditions, split=c.split)
    manifest = subset(manifest, c.max_pairs, key=lambda s: s.condition)
    if len(manifest) == 0:
        raise InvismapError(f"{pairs_manifest(inputs)}: no pairs in split '{c.split}' "
                            f"with condition {c.conditions}")
    return manifest


def map_specs(inputs: Inputs, baselines: list[str]) -> dict[str, str]:
    """The maps the evaluation scores: predictor, pair score, the fixed prior and the configured baselines."""
    from invismap.invisibility.sources import map_source_name

    specs = {"predictor": f"predictor:{inputs.dirs['predictor'] / 'predictor.pt'}",
             "pair": f"pair:{inputs.dirs['distill'] / 'student.pt'}",
             "prior": f"prior:{inputs.dirs['targets']}"}
    specs.update({map_source_name(b): b for b in baselines})
    return specs


def eval_maps(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.evaluate import format_table, teacher_detections
    from invismap.invisibility.plots import write_plots
    from invismap.invisibility.sources import evaluate_specs

    c, teacher = s.evaluate, distilled(inputs)[0]
    manifest = evaluation_pairs(c, inputs)
    results = evaluate_specs(manifest, map_specs(inputs, c.baselines), teacher, conditions=c.conditions,
                             tau=c.tau, conf=c.conf, references=c.references, n_boot=c.bootstrap,
                             size=c.detector_size)
    write_json(d / "invisibility.json", results)
    write_plots(results, d / "plots")
    inputs.echo(format_table(results))
    for other in c.other:
        other_results = evaluate_other(s, inputs, other, d)
        inputs.echo(f"{other.format} (another camera, models trained on {s.dataset} only):")
        inputs.echo(format_table(other_results))
    if c.layers:
        detections = teacher_detections(manifest, load_detector(teacher), size=c.detector_size, conf=c.conf)
        layer_ablation(c, inputs, manifest, detections, d)
    return {"headline": headline(results)}


def evaluate_other(s: Settings, inputs: Inputs, other, d: Path) -> dict:
    """The same maps on another camera's pairs: ``d/invisibility_<format>.json`` and ``d/plots/<format>/``."""
    from invismap.data.importers import import_dataset
    from invismap.invisibility.plots import write_plots
    from invismap.invisibility.sources import evaluate_specs

    c = s.evaluate
    same = [m for m in s.more
            if (m.format, m.src, m.options or {}) == (other.format, other.src, other.options or {})]
    if same:  # imported already (data.more)
        manifest = load_manifest(more_manifests(inputs)[other.format])
    else:
        manifest = import_dataset(other.format, other.src, d / "other" / other.format, progress=False,
                                  **(other.options or {}))
    manifest = manifest.select(split=other.split, condition=c.conditions)
    if len(manifest) == 0:
        raise InvismapError(f"{other.src}: no {'/'.join(c.conditions)} pairs in split '{other.split}' "
                            "to evaluate")
    results = evaluate_specs(manifest, map_specs(inputs, c.baselines), distilled(inputs)[0],
                             conditions=c.conditions, tau=c.tau, conf=c.conf, references=c.references,
                             n_boot=c.bootstrap, size=c.detector_size)
    for r in results.values():
        r["settings"].update(dataset=other.format, split=other.split)
    write_json(d / f"invisibility_{other.format}.json", results)
    write_plots(results, d / "plots" / other.format)
    return results


def layer_ablation(c: EvaluateSection, inputs: Inputs, manifest: Manifest, detections: dict, d: Path) -> None:
    """The pair score from each neck scale alone and from all of them: ``d/layers.json``."""
    from invismap.invisibility.evaluate import evaluate_maps
    from invismap.invisibility.pair import PairScorer

    rows = []
    # load once, score with each subset
    full = PairScorer.from_checkpoint(inputs.dirs["distill"] / "student.pt")
    strides = full.teacher.strides
    for scales in [[k] for k in range(len(strides))] + [list(range(len(strides)))]:
        scorer = PairScorer(full.teacher, full.student, full.thresholds, full.size, full.offsets, scales)

        def source(sample, rgb, thermal, scorer=scorer):
            return scorer.score(rgb, thermal)

        source.__name__ = "pair " + "+".join(f"P{int(strides[k]).bit_length() - 1}" for k in scales)
        res = evaluate_maps(manifest, source, detections, conditions=tuple(c.conditions), tau=c.tau,
                            detection_conf=c.conf)
        rows.append({"scales": source.__name__[5:], "strides": [int(strides[k]) for k in scales],
                     **headline({"pair": res})["pair"]})
    write_json(d / "layers.json", {"set": "missed", "rows": rows})


def headline(results: dict, set_name: str = "missed") -> dict:
    """Per map and condition: coverage at tau and at 35.9% flagged, AUROC, and the two separations."""
    out: dict = {}
    for name, res in results.items():
        for cond, r in res["conditions"].items():
            s = r["sets"].get(set_name) or {}
            out.setdefault(name, {})[cond] = {
                **{k: s.get(k) for k in ("coverage_at_tau", "flagged_at_tau", "coverage_at_matched_flagged",
                                         "auroc")},
                **{k: (r.get("metrics", {}).get(k) or {}).get("value")
                   for k in ("missed_vs_detected", "invisible_vs_visible")}}
        if "day_vs_night" in res:
            out[name]["day_vs_night_overlap"] = res["day_vs_night"]["overlap"]
    return out


def _experiment_base(s: Settings, inputs: Inputs) -> tuple[DistillConfig, dict]:
    """The distill settings every experiment varies, and the ``train`` change of ``experiments.max_steps``."""
    c = s.experiments
    steps = {"train": dataclasses.replace(s.distill.train, max_steps=c.max_steps)} if c.max_steps else {}
    return distill_config(s.distill, inputs, **steps), steps


def students(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """Train the students of every distillation experiment (``OUT/students/<kind>/<variant>/``, and
    ``OUT/students/alignment_off/``), unscored: the ``experiments`` stage scores them, so a new scoring
    protocol does not train them again."""
    from invismap.distill.experiments import LOSS_VARIANTS, run_experiment, variant_dir
    from invismap.distill.run import run_distill, split_pairs

    c = s.experiments
    base, steps = _experiment_base(s, inputs)
    main = base.loss if base.loss != "mid+head" else f"mid+head {base.head_weight}"
    losses = list(c.losses)
    reused = []  # the main distill run is one variant of each table: reuse it instead of training it again
    if not steps:
        n_all = len(split_pairs(load_manifest(base.data), base)[0])
        losses += [main] if main in LOSS_VARIANTS and main not in losses and losses else []
        reused += [variant_dir(d / "losses", main), variant_dir(d / "pairs", f"{n_all} pairs")]
        reused += [variant_dir(d / "seeds", f"seed {base.train.seed}")] if base.train.seed in c.seeds else []
    for folder in reused:
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("thermal_detector.pt", "summary.json"):
            copy_file(inputs.dirs["distill"] / f, folder / f)
    out: dict = {}
    kw = {"score": False}
    if losses:
        out["losses"] = run_experiment("ablation", base, d / "losses", losses=losses, **kw)
    if c.pairs:
        out["pairs"] = run_experiment("pairs", base, d / "pairs", pair_counts=c.pairs, **kw)
    if c.detector:
        out["variants"] = run_experiment("variants", base, d / "variants", variants=c.detector, **kw)
    if c.seeds:
        out["seeds"] = run_experiment("seeds", base, d / "seeds", seeds=c.seeds, **kw)
    if c.alignment:
        run = d / "alignment_off"
        if not (run / "thermal_detector.pt").is_file():
            other = inputs.dirs["import"] / "manifest.csv"
            run_distill(distill_config(s.distill, inputs, data=other, **steps), run, resume=can_resume(run))
        out["alignment"] = [{"variant": "without (imported pairs)"}]
    return {kind: [r["variant"] for r in rows] for kind, rows in out.items()}


def experiments(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """Score the students of the ``students`` stage beside the teacher baselines; ``OUT/experiments/<kind>/
    table.{md,json}`` and ``OUT/experiments/alignment.json``."""
    from invismap.detector.zoo import load_detector
    from invismap.distill.experiments import detector_scores, run_experiment

    c, size, split = s.experiments, s.distill.size, s.split
    base, _ = _experiment_base(s, inputs)
    trained = inputs.dirs["students"]
    kinds = inputs.summary("students")
    out: dict = {}
    protocol = scoring_protocol(s, size)
    scored = {"eval_split": split, "protocol": protocol, "more": more_manifests(inputs),
              "train": False}
    if "losses" in kinds:
        out["losses"] = run_experiment("ablation", base, d / "losses", losses=kinds["losses"],
                                       runs_dir=trained / "losses", **scored)
    if c.pairs:
        out["pairs"] = run_experiment("pairs", base, d / "pairs", pair_counts=c.pairs,
                                      runs_dir=trained / "pairs", **scored)
    if c.detector:
        out["variants"] = run_experiment("variants", base, d / "variants", variants=c.detector,
                                         runs_dir=trained / "variants", **scored)
    if c.seeds:
        out["seeds"] = run_experiment("seeds", base, d / "seeds", seeds=c.seeds, runs_dir=trained / "seeds",
                                      **scored)
    if c.alignment:
        manifest = load_manifest(pairs_manifest(inputs))
        rows = []
        for name, path in (("with registration/alignment", inputs.dirs["distill"] / "thermal_detector.pt"),
                           ("without (imported pairs)", trained / "alignment_off" / "thermal_detector.pt")):
            rows.append({"variant": name, **detector_scores(load_detector(str(path)), manifest, "thermal",
                                                            split, protocol)})
        write_json(d / "alignment.json", {"rows": rows, **protocol.record(),
                                          "note": "thermal AP50 on the same test pairs; the two "
                                                  "runs differ only in the color images distilled from"})
        out["alignment"] = rows
    return out


def predictor_cv(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """Predictor variants cross-validated on the training split: ``cv.json``, ``table.md``,
    ``separations.png``."""
    from invismap.invisibility.experiments import predictor_ablation

    pred, teacher = s.predictor, distilled(inputs)[0]
    rows = predictor_ablation(dataclasses.replace(pred, teacher=teacher), s.variants,
                              inputs.dirs["distill"] / "student.pt", pairs_manifest(inputs), d, k=s.folds,
                              split=pred.split, conditions=s.conditions, teacher=teacher, n_boot=s.bootstrap,
                              size=s.detector_size)
    return {"chosen": rows[0]["variant"], "rows": [{k: r[k] for k in ("variant", "selection")} for r in rows]}


def geometry(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """The weak-alignment benchmark on the pairs registration/alignment started from; writes geometry.json."""
    from invismap.registration.experiment import default_estimators, run_weak_alignment

    source = source_manifest(inputs)
    estimators = default_estimators(names=("translation", "homography_dense", "flow"))
    if "align" in inputs.dirs:
        from invismap.align.run import aligngan_estimators, load_aligner

        estimators.update(aligngan_estimators(load_aligner(inputs.dirs["align"] / "gan" / "aligngan.pt")))
    manifest, split = load_manifest(source), s.split or None
    if not len(manifest.select(split=split)):
        raise InvismapError(f"{source}: no pairs in split '{split}' for the weak-alignment benchmark "
                            "(set evaluate.split, or experiments.geometry_pairs: 0)")
    res = run_weak_alignment(manifest, None, split=split, max_pairs=s.pairs, estimators=estimators)
    keys = ("after_abs_epe_edges", "after_abs_share_ge5_edges", "after_rel_epe_edges",
            "after_rel_share_ge5_edges", "floor_edges", "floor_share_ge5_edges")
    rows = [{"method": name, **{k: m.get(k) for k in keys}} for name, m in res["summary"].items()]
    write_json(d / "geometry.json", {"rows": rows, "n_pairs": res["n_pairs"], "field": res["field"],
                                     "data": str(source), "split": s.split, "mask": res["mask"],
                                     "metrics": res["metrics"]})
    write_json(d / "geometry_trials.json", res)
    return {"pairs": res["n_pairs"], "rows": rows}


def fusion(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    """Color only, thermal only, constant and map-guided fusion: weights chosen on the training split, AP50
    with 95% intervals on the evaluation split, against thermal and union labels; writes ``fusion.json``."""
    from invismap.detector.fusion import FusionParams
    from invismap.detector.fusion_eval import (
        cached_pair_records,
        evaluate_fusion,
        format_fusion_table,
        load_labels,
    )

    c, (train, test), (teacher, size, _) = s.fusion, s.splits, distilled(inputs)
    protocol = scoring_protocol(s, size)
    thermal = inputs.dirs["distill"] / "thermal_detector.pt"
    known = {"predictor": f"predictor:{inputs.dirs['predictor'] / 'predictor.pt'}", "pair": f"pair:{thermal}"}
    manifest = load_manifest(pairs_manifest(inputs)).select(split=(train, test), condition=s.conditions)
    # an interrupted run keeps its detections
    records = cached_pair_records(manifest, teacher, thermal, {m: known[m] for m in c.maps},
                                  d / "detections.npz", protocol)
    result = evaluate_fusion(records, load_labels(manifest), maps=list(c.maps), conditions=s.conditions,
                             base=FusionParams(method=c.method, iou_thr=c.iou), n_boot=s.bootstrap,
                             train_split=train, test_split=test, weights_per=c.weights_per)
    result["settings"].update(protocol.record())
    write_json(d / "fusion.json", result)
    inputs.echo(format_fusion_table(result))
    return {cond: {ls: {m: r["AP50"]["value"] for m, r in block["methods"].items()}
                   for ls, block in res["label_sets"].items()} for cond, res in result["conditions"].items()}


def gallery(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.report.gallery import write_gallery

    rows = write_gallery(evaluation_pairs(s.evaluate, inputs), inputs.dirs["distill"] / "student.pt",
                         inputs.dirs["predictor"] / "predictor.pt", distilled(inputs)[0], d,
                         per_condition=s.n, conf=s.evaluate.conf, size=s.evaluate.detector_size)
    return {"images": rows}


def report(s: Settings, inputs: Inputs, d: Path, resume: bool) -> dict:
    from invismap.report.html import write_report

    page = write_report(inputs.dirs, d, s.name, s.config, inputs.records)
    return {"page": str(page)}


def format_ap(rows: list[dict]) -> str:
    return "; ".join(f"{r['variant']}: day {r.get('day')} / night {r.get('night')}" for r in rows)
