"""The stages of ``invismap run``, in order: what each reads, which settings it sees (and so its hash
covers), and the lines it prints. The work is in ``pipeline/steps.py``.

    import -> displacement -> (register) -> (align) -> distill -> targets -> predictor
           -> eval_detector -> eval_maps -> (students -> experiments) -> (predictor_cv) -> (geometry)
           -> (fusion) -> gallery -> report
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from invismap.config import dump_config
from invismap.errors import InvismapError
from invismap.pipeline import steps
from invismap.pipeline.runner import Stage


def _fingerprint(folder: str) -> list:
    """File names and sizes under ``folder``: a changed dataset changes the import stage's hash."""
    root = Path(folder)
    if not root.is_dir():
        raise InvismapError(f"{root}: dataset folder not found (set data.src, or INVISMAP_ASSETS)")
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def _option_files(*entries) -> list:
    """Names and sizes of the files that importer options name outside their dataset's folder (an MSRS
    ``labels`` folder, a FLIR ``annotations`` json): an edited one changes the import stage's hash."""
    out = []
    for entry in entries:
        src = Path(entry.src).resolve()
        for key, value in sorted((entry.options or {}).items()):
            path = Path(str(value)) if Path(str(value)).exists() else src / str(value)
            if path.exists() and not path.resolve().is_relative_to(src):
                files = _fingerprint(str(path)) if path.is_dir() else [(path.name, path.stat().st_size)]
                out.append([entry.format, key, files])
    return out


def _import_settings(cfg) -> dict:
    """What the import stage reads: the data section and the files of every dataset it imports."""
    settings = {"data": cfg.data, "files": _fingerprint(cfg.data.src),
                "more_files": [_fingerprint(m.src) for m in cfg.data.more]}
    outside = _option_files(cfg.data, *cfg.data.more)
    if outside:  # only then: runs made before options existed keep their hash
        settings["option_files"] = outside
    return settings


def _protocol_record(cfg) -> dict:
    """The scoring protocol's settings among a stage's inputs (a changed protocol scores again)."""
    return steps.scoring_protocol(cfg.evaluate, cfg.distill.size).record()


def _fmt_geometry(s: dict) -> str:
    share = {r["method"]: r["after_abs_share_ge5_edges"] for r in s["rows"]}
    return (f"{s['pairs']} pairs, share off by >= 5 px: "
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))


def _fmt_maps(s: dict) -> str:
    h = s.get("headline", {})
    parts = []
    for name in ("predictor", "pair"):
        night = h.get(name, {}).get("night")
        if night and night.get("coverage_at_matched_flagged") is not None:
            sep = night.get("missed_vs_detected")
            parts.append(f"{name} night: {night['coverage_at_matched_flagged']:.1%} of missed-object pixels "
                         f"at 35.9% flagged, AUROC {night['auroc']:.3f}"
                         + (f", missed vs detected {sep:.3f}" if sep is not None else ""))
    return "; ".join(parts) or "evaluated"


def _fmt_displacement(s: dict) -> str:
    obj = s["offsets"].get("edge_ncc_per_box") or {}
    text = f"pooled flow median dx {s['median_dx']:+.2f}, dy {s['median_dy']:+.2f} px"
    if obj:
        text += f"; per-object offset dx {obj['dx']:+.2f}, dy {obj['dy']:+.2f} px"
    return text


def _plan_distill(cfg) -> str:
    c = cfg.distill
    more = "".join(f" + {m.format}" for m in cfg.data.more)
    student = f"a soup of {c.soup} thermal students" if c.soup > 1 else "a thermal student"
    return (f"distil {c.teacher} into {student} on {'/'.join(c.conditions)} pairs "
            f"of split '{c.split}' of {cfg.data.format}{more} "
            f"(loss {c.loss}, {c.train.max_steps} steps, size {c.size}), then calibrate t_k")


def _plan_experiments(cfg) -> str:
    e = cfg.experiments
    runs = (f"losses {e.losses}" if e.losses else "",
            f"pairs {e.pairs}" if e.pairs else "",
            "alignment on/off" if e.alignment else "",
            f"variants {list(e.detector)}" if e.detector else "",
            f"seeds {e.seeds}" if e.seeds else "")
    return "distillation ablations: " + ", ".join(x for x in runs if x)


def _experiment_runs(cfg):
    """The ``experiments`` keys of the distillation experiments (not those of other stages)."""
    return dataclasses.replace(cfg.experiments, geometry_pairs=0, predictor={}, folds=0)


def _has_experiments(cfg) -> bool:
    e = cfg.experiments
    return bool(e.losses or e.pairs or e.alignment or e.detector or e.seeds)


def _fmt_predictor(s: dict) -> str:
    best = s.get("best_val_loss")  # None without validation
    return f"weights of step {s.get('step')} " + (f"(best validation loss {best:.4f})" if best is not None
                                                  else "(no validation)")


def _fmt_predictor_cv(s: dict) -> str:
    scores = ", ".join(f"{r['variant']} {r['selection']:.3f}" for r in s["rows"])
    return f"best: {s['chosen']} ({scores})"


STAGES = [
    Stage("import", (), _import_settings,
          steps.import_pairs,
          lambda cfg: f"import {cfg.data.format} pairs from {cfg.data.src}"
                      + (f" (at most {cfg.data.max_pairs} per split and condition)"
                         if cfg.data.max_pairs else ""),
          lambda s: f"{s['pairs']} pairs"),
    Stage("displacement", ("import",), lambda cfg: cfg.displacement, steps.displacement,
          lambda cfg: "measure residual color/thermal displacement (optical flow) "
                      f"on split '{cfg.displacement.split}'",
          _fmt_displacement,
          enabled=lambda cfg: cfg.displacement.enabled or cfg.register.enabled),
    Stage("register", ("import", "displacement"),
          lambda cfg: {"register": cfg.register, "displacement": cfg.displacement}, steps.register,
          lambda cfg: f"remove the measured '{cfg.register.offset}' offset from every color image",
          lambda s: f"removed dx {s['removed']['dx']:.2f}, dy {s['removed']['dy']:.2f} px "
                    f"from {s['pairs']} pairs",
          enabled=lambda cfg: cfg.register.enabled),
    Stage("align", ("import", "register"), lambda cfg: cfg.align, steps.align,
          lambda cfg: f"train AlignGAN ({cfg.align.gan.train.max_steps} steps) and align every color image",
          lambda s: f"aligned {s['pairs']} pairs", enabled=lambda cfg: cfg.align.enabled),
    Stage("distill", ("import", "register", "align"), lambda cfg: dataclasses.replace(cfg.distill, data=""),
          steps.distill, _plan_distill,
          lambda s: f"{s.get('steps')} steps at {s.get('pairs_per_s', 0):.1f} pairs/s, t_k = "
                    + ", ".join(f"{t:.3g}" for t in s.get("thresholds", []))),
    Stage("targets", ("import", "register", "align", "distill"),
          lambda cfg: {"size": cfg.predictor.size, "split": cfg.predictor.split,
                       "target": cfg.predictor.target},
          steps.targets,
          lambda cfg: f"targets ({cfg.predictor.target.kind}) of every pair of split '{cfg.predictor.split}' "
                      "from teacher vs student" + (" and the two detectors" if cfg.predictor.target.kind
                                                   != "pair" else ""),
          lambda s: f"{s['pairs']} targets cached"
                    + (f"; the color detector misses {s['missed']} of the {s['objects']} thermal objects"
                       if "objects" in s else "")),
    Stage("predictor", ("import", "register", "align", "distill", "targets"),
          lambda cfg: dataclasses.replace(cfg.predictor, data="", targets="", teacher=""), steps.predictor,
          lambda cfg: f"train the color-only predictor ({cfg.predictor.model}, "
                      f"{cfg.predictor.train.max_steps} steps, size {cfg.predictor.size})",
          _fmt_predictor),
    Stage("eval_detector", ("import", "register", "align", "distill"),
          lambda cfg: {"split": cfg.evaluate.split, **_protocol_record(cfg),
                       "bootstrap": cfg.evaluate.bootstrap},
          steps.eval_detector,
          lambda cfg: f"thermal AP50 by condition and class on split '{cfg.evaluate.split}'",
          lambda s: steps.format_ap(s["rows"])),
    Stage("eval_maps", ("import", "register", "align", "distill", "targets", "predictor"),
          lambda cfg: {"evaluate": cfg.evaluate, "dataset": cfg.data.format, "more": cfg.data.more},
          steps.eval_maps,
          lambda cfg: "evaluate predictor, pair score, fixed prior and "
                      f"{', '.join(cfg.evaluate.baselines) or 'no'} "
                      f"on split '{cfg.evaluate.split}' ({cfg.evaluate.bootstrap} bootstrap resamples)",
          _fmt_maps),
    # the students of the experiments train in a stage of their own, so scoring them another way (e.g.
    # evaluate.tta_sizes) does not train them again
    Stage("students", ("import", "register", "align", "distill"),
          lambda cfg: {"experiments": _experiment_runs(cfg),
                       "distill": dataclasses.replace(cfg.distill, data="")},
          steps.students, lambda cfg: "train the students of the " + _plan_experiments(cfg),
          lambda s: "trained: " + ", ".join(f"{k} {len(v)}" for k, v in s.items()), enabled=_has_experiments),
    Stage("experiments", ("import", "register", "align", "distill", "students"),
          lambda cfg: {"experiments": _experiment_runs(cfg),
                       "distill": dataclasses.replace(cfg.distill, data=""), "split": cfg.evaluate.split,
                       **_protocol_record(cfg)},
          steps.experiments, lambda cfg: "score the " + _plan_experiments(cfg),
          lambda s: ", ".join(f"{k}: {len(v)} rows" for k, v in s.items()), enabled=_has_experiments),
    Stage("predictor_cv", ("import", "register", "align", "distill"),
          lambda cfg: {"variants": cfg.experiments.predictor, "folds": cfg.experiments.folds,
                       "predictor": dataclasses.replace(cfg.predictor, data="", targets="", teacher=""),
                       "conditions": cfg.evaluate.conditions, "bootstrap": cfg.evaluate.bootstrap,
                       "detector_size": cfg.evaluate.detector_size},
          steps.predictor_cv,
          lambda cfg: f"cross-validate {len(cfg.experiments.predictor)} predictor variants on split "
                      f"'{cfg.predictor.split}' ({cfg.experiments.folds} folds)",
          _fmt_predictor_cv, enabled=lambda cfg: bool(cfg.experiments.predictor)),
    Stage("geometry", ("import", "register", "align"),
          lambda cfg: {"pairs": cfg.experiments.geometry_pairs, "split": cfg.evaluate.split}, steps.geometry,
          lambda cfg: f"weak-alignment benchmark: {cfg.experiments.geometry_pairs} '{cfg.evaluate.split}' "
                      "pairs moved by known fields, recovered by the homography"
                      + (" and AlignGAN" if cfg.align.enabled else ""),
          _fmt_geometry, enabled=lambda cfg: cfg.experiments.geometry_pairs > 0),
    Stage("fusion", ("import", "register", "align", "distill", "predictor"),
          lambda cfg: {"fusion": cfg.fusion, "splits": [cfg.predictor.split, cfg.evaluate.split],
                       "conditions": cfg.evaluate.conditions, "bootstrap": cfg.evaluate.bootstrap,
                       **_protocol_record(cfg)},
          steps.fusion,
          lambda cfg: f"fuse color and thermal detections ({cfg.fusion.method}; constant weight and "
                      f"weighted by {', '.join(cfg.fusion.maps)}), chosen on '{cfg.predictor.split}', "
                      "AP50 on "
                      f"'{cfg.evaluate.split}'",
          lambda s: "; ".join(f"{c} {ls}: " + ", ".join(f"{m} {v:.1f}" for m, v in r.items() if v is not None)
                              for c, blocks in s.items() for ls, r in blocks.items() if ls == "thermal"),
          enabled=lambda cfg: cfg.fusion.enabled),
    Stage("gallery", ("import", "register", "align", "distill", "predictor"),
          lambda cfg: {"n": cfg.report.gallery, "evaluate": cfg.evaluate}, steps.gallery,
          lambda cfg: f"render {cfg.report.gallery} gallery rows per condition",
          lambda s: f"{len(s['images'])} images"),
    Stage("report", ("import", "displacement", "register", "align", "distill", "targets", "predictor",
                     "eval_detector", "eval_maps", "students", "experiments", "predictor_cv", "geometry",
                     "fusion", "gallery"),
          lambda cfg: {"name": cfg.name, "config": dump_config(cfg)}, steps.report,
          lambda cfg: "write the HTML report", lambda s: f"open {s['page']}"),
]


FUSION_MAPS = ("predictor", "pair")


def _check_evaluation(c) -> None:
    """The evaluate section's names and ranges, which the stages would otherwise meet only when they start."""
    from invismap.data.manifest import CONDITIONS
    from invismap.invisibility.sources import SOURCES, map_source_name

    if not c.conditions:
        raise InvismapError("config key 'evaluate.conditions' is empty: list the conditions to score "
                            f"(of {', '.join(CONDITIONS)})")
    bad = [x for x in c.conditions if x not in CONDITIONS]
    if bad:
        raise InvismapError(f"config key 'evaluate.conditions': '{bad[0]}' is not allowed (a list of "
                            f"{', '.join(CONDITIONS)})")
    kinds = [map_source_name(b) for b in c.baselines]
    bad = [k for k in kinds if k not in SOURCES]
    if bad:
        raise InvismapError(f"config key 'evaluate.baselines': unknown map source '{bad[0]}' "
                            f"(known: {', '.join(SOURCES.names())})")
    bad = [r for r in c.references if r not in SOURCES]  # a known one that is not scored is skipped
    if bad:
        raise InvismapError(f"config key 'evaluate.references': '{bad[0]}' is not a map source (known: "
                            f"{', '.join(SOURCES.names())})")
    for key, value in (("tau", c.tau), ("conf", c.conf)):
        if not 0 < value < 1:  # a float already (from_dict)
            raise InvismapError(f"config key 'evaluate.{key}': {value:g} is not allowed (a number between 0 "
                                "and 1)")


def _check_experiments(cfg) -> None:
    """Every experiment variant's overrides, applied to a copy of the section they change."""
    from invismap.distill.experiments import LOSS_VARIANTS
    from invismap.distill.experiments import variant_config as distill_variant
    from invismap.invisibility.experiments import variant_config as predictor_variant

    e = cfg.experiments
    bad = [v for v in e.losses if v not in LOSS_VARIANTS]
    if bad:
        raise InvismapError(f"config key 'experiments.losses': unknown loss variant '{bad[0]}' (known: "
                            f"{', '.join(LOSS_VARIANTS)})")
    bad = [n for n in e.pairs if n < 1]
    if bad:
        raise InvismapError(f"config key 'experiments.pairs': {bad[0]} is not allowed (numbers of pairs "
                            ">= 1; the curve always ends with all of them)")
    if e.max_steps < 0:
        raise InvismapError(f"config key 'experiments.max_steps': {e.max_steps} is not allowed (steps >= 0; "
                            "0 = the distill section's)")
    for key, section, apply in (("detector", cfg.distill, distill_variant),
                                ("predictor", cfg.predictor, predictor_variant)):
        for name, overrides in getattr(e, key).items():
            if not isinstance(overrides, list):
                raise InvismapError(f"config key 'experiments.{key}', variant '{name}': give a list of "
                                    f"overrides (e.g. [{overrides}]), not {overrides!r}")
            try:
                apply(section, list(overrides))
            except InvismapError as err:
                raise InvismapError(f"config key 'experiments.{key}', variant '{name}': {err}") from None


def _check_names(cfg) -> None:
    """Split names and the registration's offset key, which the stages would meet only when they start."""
    from invismap.data.manifest import SPLITS
    from invismap.registration.run import OFFSET_KEYS

    splits = [("evaluate.split", cfg.evaluate.split), ("distill.split", cfg.distill.split),
              ("predictor.split", cfg.predictor.split), ("displacement.split", cfg.displacement.split)]
    for key, split in splits + [("evaluate.other.split", o.split) for o in cfg.evaluate.other]:
        if split not in SPLITS:
            raise InvismapError(f"config key '{key}': '{split}' is not a split ({', '.join(SPLITS)})")
    if cfg.register.enabled and cfg.register.offset not in OFFSET_KEYS:
        raise InvismapError(f"config key 'register.offset': '{cfg.register.offset}' is not one of "
                            f"{', '.join(OFFSET_KEYS)}")


def _check_datasets(cfg) -> None:
    """Each dataset's format, importer options and folder, one entry per format, and out= outside the
    folders the import stage fingerprints."""
    from invismap.data.importers import IMPORTERS, check_options

    entries = [("data", cfg.data)] + [("data.more", m) for m in cfg.data.more] + \
        [("evaluate.other", o) for o in cfg.evaluate.other]
    for key, entry in entries:
        if entry.format not in IMPORTERS:
            raise InvismapError(f"config key '{key}.format': unknown dataset format '{entry.format}' (known: "
                                f"{', '.join(IMPORTERS.names())})")
        try:
            check_options(entry.format, entry.options or {})
        except InvismapError as err:
            raise InvismapError(f"config key '{key}.options': {err}") from None
        if key != "data" and not Path(entry.src).is_dir():  # data.src is imported first anyway
            raise InvismapError(f"config key '{key}': {entry.src}: folder not found (its src)")
        fingerprinted = key != "evaluate.other"
        if fingerprinted and entry.src and Path(cfg.out).resolve().is_relative_to(Path(entry.src).resolve()):
            raise InvismapError(f"config key 'out': {cfg.out} is inside {key}'s folder {entry.src}: the "
                                "run's own files would change the dataset's fingerprint, so nothing would "
                                "stay cached; choose an out= outside the dataset")
    for key, formats in (("data.more", [m.format for m in cfg.data.more]),
                         ("evaluate.other", [o.format for o in cfg.evaluate.other])):
        twice = [f for f in formats if formats.count(f) > 1]
        if twice:  # each writes OUT/.../<format>: the second would replace the first
            raise InvismapError(f"config key '{key}': format '{twice[0]}' is listed twice "
                                "(one entry per dataset format)")


def check_config(cfg) -> None:
    """Refuse combinations that cannot run, before any stage starts."""
    from invismap.detector.fusion import METHODS

    unknown = [m for m in cfg.fusion.maps if m not in FUSION_MAPS]
    if cfg.fusion.enabled and unknown:
        raise InvismapError(f"config key 'fusion.maps': unknown map '{unknown[0]}' "
                            f"(known: {', '.join(FUSION_MAPS)})")
    if cfg.fusion.enabled and cfg.fusion.method not in METHODS:
        raise InvismapError(f"config key 'fusion.method': '{cfg.fusion.method}' is not one of "
                            f"{', '.join(METHODS)}")
    bad = [v for v in cfg.evaluate.tta_sizes
           if isinstance(v, bool) or not (isinstance(v, int) and 32 <= v <= 8192 and v % 32 == 0)
           or v == cfg.distill.size]
    if bad:
        raise InvismapError(f"config key 'evaluate.tta_sizes': {bad[0]!r} is not allowed (multiples of 32 "
                            f"between 32 and 8192 other than distill.size {cfg.distill.size}, which always "
                            "runs; e.g. [416, 512, 800, 960])")
    iou = cfg.evaluate.nms_iou
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou < 1:
        raise InvismapError(f"config key 'evaluate.nms_iou': {iou!r} is not allowed (a number between 0 and "
                            "1, e.g. 0.45)")
    if cfg.fusion.enabled and cfg.fusion.weights_per not in ("condition", "all"):
        raise InvismapError(f"config key 'fusion.weights_per': '{cfg.fusion.weights_per}' is not one of "
                            "condition, all")
    counts = {"threads": (cfg.threads, "torch's default"), "data.max_pairs": (cfg.data.max_pairs, "all"),
              "displacement.max_pairs": (cfg.displacement.max_pairs, "all"),
              "evaluate.max_pairs": (cfg.evaluate.max_pairs, "all"),
              "report.gallery": (cfg.report.gallery, "none")}
    for key, (value, zero) in counts.items():
        if value < 0:
            raise InvismapError(f"config key '{key}': {value} is not allowed (a count >= 0; 0 = {zero})")
    if cfg.distill.extra_repeat > 1 and not cfg.data.more:
        raise InvismapError(f"config key 'distill.extra_repeat': {cfg.distill.extra_repeat} draws "
                            "data.more's pairs more often, and data.more is empty: list a dataset there or "
                            "set it to 1")
    if cfg.experiments.alignment and not (cfg.register.enabled or cfg.align.enabled):
        raise InvismapError("experiments.alignment compares distillation with and without "
                            "registration/alignment: enable register or align too")
    c = cfg.evaluate
    for key, split in (("predictor.split", cfg.predictor.split), ("distill.split", cfg.distill.split),
                       ("displacement.split", cfg.displacement.split)):
        if split == c.split:
            raise InvismapError(f"config key '{key}': '{split}' is the evaluation split (evaluate.split); "
                                "training, calibration and targets must never see the pairs "
                                "they are scored on")
    for other in cfg.evaluate.other:  # distilled on its training pairs: only its evaluation split is unseen
        if other.format in {m.format for m in cfg.data.more} and other.split != cfg.evaluate.split:
            raise InvismapError(f"config key 'evaluate.other': {other.format} is also in data.more (its "
                                f"'{cfg.distill.split}' pairs are distilled on), so score it on split "
                                f"'{cfg.evaluate.split}', not '{other.split}'")
    if cfg.experiments.predictor and cfg.experiments.folds < 2:
        raise InvismapError(f"config key 'experiments.folds': {cfg.experiments.folds} is not allowed (>= 2)")
    if c.detector_size < 32 or c.detector_size % 32:
        raise InvismapError(f"config key 'evaluate.detector_size': {c.detector_size} is not allowed "
                            "(a multiple of 32, e.g. 640)")
    from invismap.data.importers import CHECKS

    _check_names(cfg)
    _check_datasets(cfg)
    _check_evaluation(cfg.evaluate)
    _check_experiments(cfg)
    if cfg.data.check not in CHECKS:
        raise InvismapError(f"config key 'data.check': '{cfg.data.check}' is not one of {', '.join(CHECKS)}")
    if cfg.nproc < 1:
        raise InvismapError(f"config key 'nproc': {cfg.nproc} is not allowed (processes per training stage, "
                            ">= 1)")
    if c.bootstrap < 1:
        raise InvismapError(f"config key 'evaluate.bootstrap': {c.bootstrap} is not allowed "
                            "(an integer >= 1)")
    if cfg.experiments.geometry_pairs < 0:
        raise InvismapError("config key 'experiments.geometry_pairs': "
                            f"{cfg.experiments.geometry_pairs} is not "
                            "allowed (a number of pairs >= 0; 0 = no weak-alignment benchmark)")
