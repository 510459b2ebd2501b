"""The experiment report: one static HTML page with its PNGs and the JSON files its numbers come from.

Layout of the report folder::

    index.html     the page (no scripts from elsewhere, no server needed)
    data/*.json    copies of the stage outputs every table is rendered from
    img/*.png      figures (copied from the stages, plus the ones drawn here)

The page is built from the copies in ``data/`` only, so each number on it can be traced to a file beside it.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from invismap import __version__
from invismap.data.manifest import COCO_NAMES, ROAD_CLASSES
from invismap.io import atomic_write, copy_file, save_figure

# stage output (relative to the stage folder) -> name in data/
DATA_FILES = {
    "import": {"summary.json": "pairs.json"},
    "displacement": {"displacement.json": "displacement.json"},
    "register": {"displacement/displacement.json": "displacement_registered.json",
                 "registration.json": "registration.json"},
    "align": {"gan/summary.json": "aligngan.json"},
    "distill": {"summary.json": "distill.json"},
    "predictor": {"summary.json": "predictor.json"},
    "eval_detector": {"detector.json": "detector.json"},
    "eval_maps": {"invisibility.json": "invisibility.json", "layers.json": "layers.json",
                  "invisibility_roadscene.json": "invisibility_roadscene.json"},
    "predictor_cv": {"cv.json": "predictor_cv.json"},
    "experiments": {"losses/table.json": "ablation_losses.json", "pairs/table.json": "ablation_pairs.json",
                    "variants/table.json": "ablation_variants.json",
                    "seeds/table.json": "ablation_seeds.json", "alignment.json": "ablation_alignment.json"},
    "geometry": {"geometry.json": "geometry.json"},
    "fusion": {"fusion.json": "fusion.json"},
    "gallery": {"gallery.json": "gallery.json"},
}
IMAGE_FILES = {
    "import": {"contact_sheet.png": "contact_sheet.png"},
    "displacement": {"displacement_hist.png": "displacement_hist.png"},
    "register": {"displacement/displacement_hist.png": "displacement_hist_registered.png"},
    "predictor_cv": {"separations.png": "predictor_cv_separations.png"},
}
CLASSES = [COCO_NAMES[k] for k in ROAD_CLASSES]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1700px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs img { max-width: 560px; border: 1px solid #ddd; }
.wide img { max-width: 1200px; }
.gallery img { width: 100%; max-width: 1600px; display: block; margin: 0.3em 0 1.2em; }
.note { color: #555; font-size: 0.92em; max-width: 1100px; } .missing { color: #a33; }
pre { background: #f7f7f7; padding: 0.8em; font-size: 0.85em; overflow-x: auto; }
"""
# After load, the page records how many of its images decoded; a headless browser check reads it.
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', broken.length);
});
"""


def collect(stage_dirs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Copy the stage outputs the report uses into ``out/data`` and ``out/img``; return the loaded JSON."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    for stage, files in DATA_FILES.items():
        for rel, name in files.items():
            src = Path(stage_dirs[stage]) / rel if stage in stage_dirs else None
            if src is not None and src.is_file():
                copy_file(src, out / "data" / name)
                data[name] = json.loads(src.read_text(encoding="utf-8"))
    images = {stage: dict(files) for stage, files in IMAGE_FILES.items()}
    if "eval_maps" in stage_dirs:
        plots = Path(stage_dirs["eval_maps"]) / "plots"
        images["eval_maps"] = {p.relative_to(plots.parent).as_posix():
                               p.relative_to(plots).as_posix().replace("/", "_")
                               for p in sorted(plots.rglob("*.png"))}
    if "gallery" in stage_dirs:
        images["gallery"] = {p.name: f"gallery_{p.name}"
                             for p in sorted(Path(stage_dirs["gallery"]).glob("*.png"))}
    for stage, files in images.items():
        for rel, name in files.items():
            src = Path(stage_dirs[stage]) / rel if stage in stage_dirs else None
            if src is not None and src.is_file():
                copy_file(src, out / "img" / name)
    return data


# ------------------------------------------------------------------------------------------- helpers

def esc(x: Any) -> str:
    return html.escape(str(x))


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def num(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else esc(v)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img(out: Path, name: str, alt: str) -> str:
    if not (out / "img" / name).is_file():
        return f'<p class="missing">figure {esc(name)} was not produced by this run</p>'
    return f'<img src="img/{esc(name)}" alt="{esc(alt)}">'


def not_run(what: str, how: str) -> str:
    return f'<p class="note">Not run in this config ({esc(what)}; {esc(how)}).</p>'


# ------------------------------------------------------------------------------------------ sections

def interval(e: Mapping[str, Any] | None, digits: int = 2, value_digits: int = 3,
             missing: str = "n/a", sign: str = "") -> str:
    """``0.812 [0.74, 0.87]``: a figure with its 95% bootstrap interval (``missing`` where not computed;
    ``sign="+"`` for margins: ``+4.3 [-1.9, +14.9]``)."""
    if not e or e.get("value") is None:
        return missing
    if e.get("lo") is None:
        return f"{e['value']:{sign}.{value_digits}f}"
    return (f"{e['value']:{sign}.{value_digits}f} "
            f"<small>[{e['lo']:{sign}.{digits}f}, {e['hi']:{sign}.{digits}f}]</small>")


def metric(res: Mapping[str, Any], name: str, cond: str, key: str) -> Mapping[str, Any] | None:
    return (((res.get(name) or {}).get("conditions") or {}).get(cond) or {}).get("metrics", {}).get(key)


def section_summary(d: dict) -> str:
    """The headline numbers, each with where it comes from; the map's separations lead."""
    items = []
    res = d.get("invisibility.json") or {}
    if "predictor" in res:
        m = lambda key, cond="night", name="predictor": interval(metric(res, name, cond, key))
        items.append(
            "Color-only predictor, night: tells the objects the color detector <b>misses</b> from those it "
            f"<b>detects</b> with AUROC <b>{m('missed_vs_detected')}</b> "
            f"(fixed prior {m('missed_vs_detected', name='prior')}, "
            f"darkness {m('missed_vs_detected', name='darkness')}); "
            "objects invisible in the color image from "
            f"visible ones (labels) <b>{m('invisible_vs_visible')}</b>; "
            f"day: {m('missed_vs_detected', 'day')} and {m('invisible_vs_visible', 'day')}. "
            "0.5 is chance; brackets are 95% bootstrap intervals over images.")
        overlap = (res["predictor"].get("day_vs_night") or {}).get("overlap_interval")
        frame = (res["predictor"].get("pooled") or {}).get("metrics", {}).get("frame_auroc")
        darkness_pooled = (res.get("darkness") or {}).get("pooled") or {}
        items.append(f"Night pixel AUROC of missed objects {m('pixel_auroc')}; "
                     f"{m('coverage_35.9')} of their pixels "
                     f"at 35.9% of the image flagged (paper: 77.5%). Day/night overlap of the map's scores "
                     f"<b>{interval(overlap)}</b> (paper: nearly disjoint). "
                     "Frames holding a missed object, day and night pooled: "
                     f"AUROC {interval(frame)} (darkness "
                     f"{interval(darkness_pooled.get('metrics', {}).get('frame_auroc'))}).")
        margins = (res["predictor"].get("margins") or {}).get("prior") or {}
        if margins:
            parts = [f"{cond} {label} {interval(margins.get(cond, {}).get(key))}" for cond in ("night", "day")
                     for key, label in (("pixel_auroc", "AUROC"), ("missed_vs_detected", "missed/detected"),
                                        ("invisible_vs_visible", "invisible/visible")) if cond in margins]
            items.append("Margin over the fixed prior (what position in the frame alone explains; "
                         "paired bootstrap, above 0 = better): " + "; ".join(parts) + ".")
    other = d.get("invisibility_roadscene.json") or {}
    if "predictor" in other:
        m = lambda key: interval(metric(other, "predictor", "night", key))
        items.append(f"Another camera (RoadScene, FLIR; models trained on MSRS only), night: pixel AUROC "
                     f"{m('pixel_auroc')}, missed vs detected {m('missed_vs_detected')}.")
    det = {r["variant"]: r for r in (d.get("detector.json") or {}).get("rows", [])}
    student = next((r for k, r in det.items() if k.startswith("thermal detector")), None)
    if student:
        base = det.get("teacher on thermal", {})
        color = det.get("teacher on color", {})
        lead = ((d.get("detector.json") or {}).get("intervals") or {}).get("night", {}).get(
            f"{student['variant']} - teacher on thermal")
        items.append(f"Thermal detector trained without labels: "
                     f"night AP50 <b>{num(student.get('night'), 1)}</b> "
                     f"(the color teacher run on thermal images: {num(base.get('night'), 1)}"
                     + (f", a lead of {ap_interval(lead, sign='+')}" if lead else "")
                     + f"; on the color images: {num(color.get('night'), 1)}); "
                     f"day {num(student.get('day'), 1)}.")
    if not items:
        return ""
    return "<h2>At a glance</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def section_data(d: dict, out: Path) -> str:
    rows = d.get("pairs.json")
    if not rows:
        return ""
    body = [[esc(r["split"]), esc(r["condition"]), r["pairs"], r["color_boxes"], r["thermal_boxes"],
             r["thermal_only"]] for r in rows]
    return ("<h2>Data</h2>" + table(["split", "condition", "pairs", "color boxes", "thermal boxes",
                                     "thermal-only objects"], body)
            + '<p class="note">Source: data/pairs.json. Training uses the train split only; '
              "every figure below is on the evaluation split. Color labels green, thermal labels magenta.</p>"
            + f'<div class="figs wide">{img(out, "contact_sheet.png", "contact sheet")}</div>')


def ap_rows(rows: list[dict], more: list[str] = ()) -> list[list[Any]]:
    return [[esc(r["variant"]), num(r.get("select night"), 1), num(r.get("day"), 1), num(r.get("night"), 1)]
            + [num(r.get(f"{c} {k}"), 1) for c in ("day", "night") for k in CLASSES]
            + [num(r.get(k), 1) for k in more]
            + [num(r.get("train_seconds"), 0) if "train_seconds" in r else ""] for r in rows]


def ap_table(rows: list[dict], more: Sequence[str] = ()) -> str:
    """:data:`AP_HEADER` rows, and a day and a night column for each other dataset scored (``more``)."""
    cols = [f"{name} {c}" for name in more for c in ("day", "night")]
    return table(AP_HEADER[:-1] + cols + AP_HEADER[-1:], ap_rows(rows, cols))


AP_HEADER = (["model / variant", "select night*", "day", "night"]
             + [f"{c} {k}" for c in ("day", "night") for k in CLASSES]
             + ["train s"])
AP_NOTE = ('<p class="note">AP50 (x100, mean over person/bicycle/car) of detections on the thermal images '
           "against the thermal labels. *select night: the training split's night pairs, never seen by "
           "distillation (which uses day pairs): choose variants by this column, "
           "not by the test columns.</p>")


def section_detector(d: dict) -> str:
    det = d.get("detector.json")
    if not det:
        return ""
    more = "".join(f"<h3>{esc(fmt)} (data.more: another camera, its own split)</h3>"
                   f"{table(AP_HEADER, ap_rows(rows))}{lead_table(det.get('more_intervals', {}).get(fmt))}"
                   for fmt, rows in (det.get("more") or {}).items())
    return ("<h2>Thermal detection without labels</h2>"
            f"{table(AP_HEADER, ap_rows(det['rows']))}{AP_NOTE}{lead_table(det.get('intervals'))}{more}"
            f'<p class="note">Split {esc(det["split"])}, letterbox {esc(det["size"])}'
            + (f' plus {esc(", ".join(map(str, tta)))} (every detector, candidates of all sizes merged '
               "before NMS)" if (tta := det.get("tta_sizes")) else "")
            + f".{nms_note(det)}{fold_note(det)}{soup_note(d.get('distill.json') or {})} "
            "Source: data/detector.json.</p>")


def lead_table(intervals: Mapping[str, Mapping[str, Any]] | None) -> str:
    """Per condition, each detector's AP50 with its 95% interval and the thermal detector's lead over the
    teacher on the same thermal images (``detector.json``'s ``intervals``; absent in older runs)."""
    if not intervals:
        return ""
    names = [k for k in next(iter(intervals.values())) if " - " not in k]
    leads = [k for k in next(iter(intervals.values())) if k.startswith("thermal detector") and " - " in k]
    body = [[esc(cond)] + [ap_interval(est.get(k)) for k in names] + [ap_interval(est.get(k), sign="+")
                                                                     for k in leads]
            for cond, est in intervals.items()]
    return (table(["condition", *names, *(k.replace(" - ", " minus ") for k in leads)], body)
            + '<p class="note">AP50 with 95% intervals (bootstrap over the test images); the lead is paired: '
              "both detectors on the same resamples of the same thermal images.</p>")


def nms_note(settings: Mapping[str, Any]) -> str:
    """The NMS IoU threshold detectors were scored with (``evaluate.nms_iou``; absent in older runs)."""
    return f" NMS IoU {esc(settings['nms_iou'])}." if "nms_iou" in settings else ""


def fold_note(settings: Mapping[str, Any]) -> str:
    """How the detectors' COCO classes met the labels' (``evaluate.fold_classes``; absent in older runs)."""
    if "fold_classes" not in settings:
        return ""
    if settings["fold_classes"]:
        return " Truck and bus boxes count as car, motorcycle as bicycle, as the datasets label them."
    return " Strict COCO classes: a truck box at a labelled car is not counted."


def soup_note(distill: Mapping[str, Any]) -> str:
    """`` The thermal detector is a soup: ...`` when the distillation averaged students (else empty)."""
    students = distill.get("students")
    if not students:
        return ""
    seeds = ", ".join(str(s["seed"]) for s in students)
    best = ", ".join(f"{s['best_val_loss']:.4f}" for s in students)
    return (f" The thermal detector is a soup: the average of {len(students)} students (seeds {esc(seeds)}); "
            f"validation loss {distill['best_val_loss']:.4f}, the students' best {esc(best)}.")


FUSION_LABELS = {"color": "color detector", "thermal": "thermal detector",
                 "constant": "fusion, constant weight"}


def ap_interval(e: Mapping[str, Any] | None, sign: str = "") -> str:
    """``55.1 [46.3, 66.0]``: AP points with their 95% interval (empty where not computed; ``sign="+"`` for
    leads and margins)."""
    return interval(e, 1, value_digits=1, missing="", sign=sign)


def section_fusion(d: dict) -> str:
    """Color only, thermal only, constant and map-guided fusion: AP50 [95% CI] and margins per condition."""
    fusion = d.get("fusion.json")
    if not fusion:
        return ""
    parts = ["<h2>Fusing color and thermal detections, guided by the map</h2>"]
    for cond, res in fusion["conditions"].items():
        for labels, block in res["label_sets"].items():
            methods = [m for m in block["methods"] if m in FUSION_LABELS or m.count(":") == 1]
            margins = block["margins"]
            rows = [[esc(FUSION_LABELS.get(m, f"fusion weighted by the {m[4:]} map")),
                     ap_interval(block["methods"][m]["AP50"]),
                     ap_interval(margins["fused_minus_best_single"].get(m)),
                     ap_interval(margins["map_minus_constant"].get(m))] for m in methods]
            parts.append(f"<h3>{esc(cond)}, {esc(labels)} labels ({res['n_test']} test pairs)</h3>"
                         + table(["detector", "AP50 [95% CI]", "minus the better single detector",
                                  "minus constant-weight fusion"], rows))
    per = ("per condition and label set" if fusion["settings"].get("weights_per", "condition") == "condition"
           else "per label set, once for day and night together")
    parts.append('<p class="note">Weights (one for every color box, or the map-guided form and strength) '
                 f"chosen on the {esc(fusion['settings']['train_split'])} split {per}; "
                 "AP50 (mean over person/bicycle/car) with 95% intervals and paired margins from "
                 f"{esc(fusion['settings']['n_boot'])} bootstrap resamples of the test images. Union labels: "
                 "color and thermal boxes of one class at IoU ≥ 0.5 merged."
                 + (f" Both detectors also run at sizes {esc(', '.join(map(str, tta)))}, merged before NMS."
                    if (tta := fusion["settings"].get("tta_sizes")) else "")
                 + nms_note(fusion["settings"]) + fold_note(fusion["settings"])
                 + " Source: data/fusion.json.</p>")
    return "".join(parts)


def pairs_curve(rows: list[dict], path: Path) -> None:
    pts = sorted((int(str(r["variant"]).split()[0]), r) for r in rows if str(r["variant"]).endswith("pairs"))
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    base = {r["variant"]: r for r in rows}.get("teacher on thermal")
    for cond, colour in (("day", "tab:orange"), ("night", "tab:blue")):
        ax.plot([n for n, _ in pts], [r.get(cond) for _, r in pts], marker="o", color=colour,
                label=f"thermal detector, {cond}")
        if base and base.get(cond) is not None:
            ax.axhline(base[cond], color=colour, ls=":", lw=1, label=f"teacher on thermal, {cond}")
    ax.set(xlabel="daytime training pairs", ylabel="AP50 (thermal labels)",
           title="Distillation: number of pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    save_figure(fig, path)


def section_experiments(d: dict, out: Path) -> str:
    parts = ["<h2>Distillation ablations</h2>"]
    sizes = next((r["tta_sizes"] for k, r in d.items()
                  if k.startswith("ablation_") and r.get("tta_sizes")), None)
    if sizes:
        parts.append('<p class="note">Every detector in these tables is scored multi-scale: also at sizes '
                     f'{esc(", ".join(map(str, sizes)))}, merged before NMS.</p>')
    losses = d.get("ablation_losses.json")
    parts.append("<h3>Loss (mid-level features, detection head, both)</h3>")
    parts.append(ap_table(losses["rows"], losses.get("more", [])) + AP_NOTE if losses
                 else not_run("loss ablation", "set experiments.losses, e.g. [head, 'mid+head 0.1']"))
    pairs = d.get("ablation_pairs.json")
    parts.append("<h3>Number of training pairs</h3>")
    if pairs:
        pairs_curve(pairs["rows"], out / "img" / "pairs_curve.png")
        parts.append(ap_table(pairs["rows"], pairs.get("more", []))
                     + f'<div class="figs">{img(out, "pairs_curve.png", "pairs curve")}</div>')
    else:
        parts.append(not_run("pairs curve", "set experiments.pairs, e.g. [25, 50]"))
    for key, title, hint in (("ablation_variants.json", "Distillation variants",
                              "set experiments.detector, e.g. {'head, EMA': [loss=head, train.ema=0.99]}"),
                             ("ablation_seeds.json", "Seed-to-seed spread of the main distillation",
                              "set experiments.seeds, e.g. [0, 1, 2]")):
        parts.append(f"<h3>{title}</h3>")
        res = d.get(key)
        parts.append(ap_table(res["rows"], res.get("more", [])) + AP_NOTE if res
                     else not_run(title.lower(), hint))
    align = d.get("ablation_alignment.json")
    parts.append("<h3>Alignment on / off</h3>")
    parts.append(table(AP_HEADER, ap_rows(align["rows"]))
                 + f'<p class="note">{esc(align.get("note", ""))}</p>'
                 if align
                 else not_run("alignment ablation", "enable register or align, and experiments.alignment"))
    return "".join(parts)


MAP_LABELS = {"predictor": "predictor (color only)", "pair": "pair score (needs thermal)",
              "prior": "fixed prior (position only)", "darkness": "darkness", "contrast": "low contrast",
              "random": "random (chance)", "oracle": "object oracle (uses labels)"}
HEADLINE_COLUMNS = {"coverage_35.9": "coverage @ 35.9% flagged", "coverage_25": "coverage @ 25%",
                    "pixel_auroc": "pixel AUROC", "missed_vs_detected": "missed vs detected",
                    "invisible_vs_visible": "invisible vs visible",
                    "missed_vs_detected_object": "missed vs detected, objects",
                    "invisible_vs_visible_object": "invisible vs visible, objects",
                    "frame_auroc": "frame AUROC"}


def headline_tables(res: Mapping[str, Any]) -> str:
    """Per condition, every map's headline figures with 95% intervals, then the margins over the prior."""
    parts = []
    conds = list(next(iter(res.values()))["conditions"])
    for cond in conds:
        objects = next(iter(res.values()))["conditions"][cond]["objects"]
        rows = [[esc(MAP_LABELS.get(name, name))]
                + [interval(((r["conditions"].get(cond) or {}).get("metrics") or {}).get(k))
                   for k in HEADLINE_COLUMNS]
                for name, r in res.items()]
        parts.append(f"<h3>{esc(cond)}: {objects.get('missed', 0)} missed / "
                     f"{objects.get('detected', 0)} detected, "
                     f"{objects.get('invisible', 0)} invisible / "
                     f"{objects.get('visible', 0)} visible objects</h3>"
                     + table(["map"] + list(HEADLINE_COLUMNS.values()), rows))
    rows = []
    references = {ref for r in res.values() for ref in (r.get("margins") or {})}
    for name, r in res.items():
        if name in references or name in ("random", "oracle"):  # the margins of the maps being judged
            continue
        for ref, by_scope in (r.get("margins") or {}).items():
            rows.append([esc(f"{MAP_LABELS.get(name, name)} - {ref}")]
                        + [interval(by_scope.get(c, {}).get(k)) for c in conds
                           for k in ("pixel_auroc", "missed_vs_detected", "invisible_vs_visible")])
    if rows:
        parts.append("<h3>Paired margins over the reference maps (above 0: better)</h3>"
                     + table(["map - reference"]
                             + [f"{c} {k}" for c in conds
                                for k in ("pixel AUROC", "missed vs detected", "invisible vs visible")],
                             rows))
    rows = [[esc(MAP_LABELS.get(name, name)),
             "; ".join(f"{esc(c)} {num(x['scores']['mean'])} ± {num(x['scores']['std'])}"
                       for c, x in r["conditions"].items()),
             interval((r.get("day_vs_night") or {}).get("overlap_interval")),
             interval((r.get("pooled") or {}).get("metrics", {}).get("frame_auroc"))]
            for name, r in res.items()]
    parts.append("<h3>Day vs night, and frames</h3>" + table(
        ["map", "mean ± std of all pixels", "day/night histogram overlap", "frame AUROC, day+night pooled"],
        rows))
    return "".join(parts)


def section_maps(d: dict, out: Path) -> str:
    res = d.get("invisibility.json")
    if not res:
        return ""
    first = next(iter(res.values()))
    settings = first["settings"]
    note = ('<p class="note">Objects are the thermal labels. '
            "<b>missed</b>: no color-detector box of IoU &ge; 0.5 "
            f'and the same class at confidence {esc(settings["detection_conf"])}; '
            "<b>detected</b>: the others; "
            "<b>invisible</b>: no color label of IoU &ge; 0.5 (an annotator saw nothing in the color image); "
            "<b>visible</b>: the others. "
            "Coverage = share of the missed objects' pixels flagged at a given share of "
            "the image flagged (paper, night: 77.5% at 35.9%). "
            "Pixel AUROC: missed-object pixels against every "
            "other pixel. The separations are AUROCs of missed against detected (invisible against visible) "
            "pixels, or, for <i>objects</i>, of each object's mean score: "
            "a map that lights up every object scores "
            "0.5 there, as the object oracle shows. Frame AUROC: the map's maximum per frame against "
            f"'the frame holds a missed object'. "
            f"Brackets: 95% intervals, {esc(settings.get('n_boot'))} bootstrap resamples over images. "
            "The fixed prior is the mean training target, the same map for every image. "
            "Source: data/invisibility.json.</p>")
    parts = ["<h2>Invisibility maps</h2>", note, headline_tables(res)]
    parts.append(f'<div class="figs wide">{img(out, "separations.png", "separations with intervals")}</div>')
    conds = list(first["conditions"])
    figs = [img(out, f"coverage_{c}_{s}.png", f"coverage {c} {s}")
            for c in conds for s in ("missed", "invisible")]
    figs += [img(out, f"scores_{name.replace(' ', '_')}.png", f"scores {name}") for name in res]
    parts.append(f'<div class="figs">{"".join(figs)}</div>')
    layers = d.get("layers.json")
    if layers:
        rows = [[esc(r["scales"]), esc(", ".join(map(str, r["strides"])))]
                + [v for cond in conds for v in (pct((r.get(cond) or {}).get("coverage_at_matched_flagged")),
                                                   num((r.get(cond) or {}).get("auroc")))]
                for r in layers["rows"]]
        parts.append("<h3>Layer ablation: which neck scales the pair score uses</h3>"
                     + table(["scales", "strides"] + [f"{cond} {m}" for cond in conds
                                                      for m in ("coverage @ 35.9%", "AUROC")], rows)
                     + '<p class="note">Missed objects; '
                       "P3/P4/P5 are the teacher's neck outputs at strides 8/16/32 "
                       "(YOLOv3 layers 103/91/79). Source: data/layers.json.</p>")
    other = d.get("invisibility_roadscene.json")
    if other:
        parts.append("<h2>Another camera: RoadScene (FLIR), models trained on MSRS only</h2>"
                     '<p class="note">RoadScene has no color labels, so no invisible/visible sets. Source: '
                     "data/invisibility_roadscene.json.</p>" + headline_tables(other)
                     + f'<div class="figs">'
                       f'{img(out, "roadscene_separations.png", "RoadScene separations")}</div>')
    return "".join(parts)


def section_predictor_cv(d: dict, out: Path) -> str:
    cv = d.get("predictor_cv.json")
    if not cv:
        return ""
    rows = cv["rows"]
    conds = [c for c in ("night", "day") if c in rows[0]]
    keys = ("coverage_35.9", "pixel_auroc", "missed_vs_detected", "invisible_vs_visible")
    body = [[esc(r["variant"]), esc(" ".join(r["overrides"]) or "(the base config)"), num(r["selection"])]
            + [num(r[c].get(k)) for c in conds for k in keys] + [num(r.get("day_vs_night_overlap"))]
            for r in rows]
    settings = next(iter(cv["results"].values()))["settings"]
    return ("<h2>Which predictor: cross-validation on the training split</h2>"
            f'<p class="note">{esc(settings.get("folds"))}-fold cross-validation '
            f"on the {esc(settings.get('pairs'))} training pairs: "
            "each pair is scored by a predictor trained without it; the test split is never read. "
            "Selection score: mean over conditions of pixel AUROC and both separations, "
            "and 1 - day/night overlap. "
            f"Best: <b>{esc(cv['chosen'])}</b>. Source: data/predictor_cv.json.</p>"
            + table(["variant", "overrides", "selection"]
                    + [f"{c} {HEADLINE_COLUMNS[k]}" for c in conds for k in keys]
                    + ["day/night overlap"], body)
            + '<div class="figs wide">'
              f'{img(out, "predictor_cv_separations.png", "cross-validated separations")}</div>')


def _disp_row(label: str, s: dict) -> list[Any]:
    pooled, offs = s.get("pooled", {}), s.get("offsets", {})
    obj = offs.get("edge_ncc_per_box") or {}
    return [esc(label), s.get("n_pairs", ""),
            num(pooled.get("median_dx"), 2), num(pooled.get("median_dy"), 2),
            pct(pooled.get("share_x_ge_big")), pct(pooled.get("share_y_ge_big")),
            f"{num(obj.get('dx'), 2)}, {num(obj.get('dy'), 2)}" if obj else ""]


def section_registration(d: dict, out: Path) -> str:
    before, after = d.get("displacement.json"), d.get("displacement_registered.json")
    if not before:
        return ""
    rows = [_disp_row("imported pairs", before)] + ([_disp_row("after registration", after)] if after else [])
    figs = img(out, "displacement_hist.png", "displacement histograms")
    if after:
        figs += img(out, "displacement_hist_registered.png", "displacement after registration")
    reg = d.get("registration.json")
    removed = reg.get("offset_removed") if reg else None
    note = (f"Removed a global color offset of dx {removed['dx']:+.2f}, dy {removed['dy']:+.2f} px."
            if removed else "No registration in this config (set register.enabled).")
    return ("<h2>Residual misalignment</h2>"
            + table(["pairs", "n", "median dx (px)", "median dy (px)", "|dx| ≥ 5 px", "|dy| ≥ 5 px",
                     "per-object offset dx, dy"], rows)
            + '<p class="note">Dense optical flow between thermal and color edge images, '
              "trusted pixels only "
              f"(dy &lt; 0: color content sits above the thermal content). {esc(note)} Source: "
              f'data/displacement*.json.</p><div class="figs">{figs}</div>')


GEOMETRY_NAMES = {"before": "before (the known field)", "translation": "translation (median edge flow)",
                  "homography_dense": "homography", "flow": "dense edge flow",
                  "aligngan": "AlignGAN (G's image)", "aligngan_flow": "AlignGAN (Gm's flow)"}


def section_geometry(d: dict) -> str:
    geo = d.get("geometry.json")
    if not geo:
        return ""
    def share(v: Any) -> str:
        return "" if v is None else pct(v)  # "before" has no reading of its own

    rows = [[esc(GEOMETRY_NAMES.get(r["method"], r["method"])), num(r["after_abs_epe_edges"], 2),
             share(r["after_abs_share_ge5_edges"]), num(r.get("after_rel_epe_edges"), 2),
             share(r.get("after_rel_share_ge5_edges")), num(r.get("floor_edges"), 2),
             share(r.get("floor_share_ge5_edges"))] for r in geo["rows"]]
    f = geo["field"]
    return ("<h3>Weak-alignment benchmark</h3>"
            + table(["method", "EPE (px)", "≥ 5 px", "EPE, own reference (px)", "≥ 5 px, own reference",
                     "moves the unperturbed pair (px)", "≥ 5 px"], rows)
            + f'<p class="note">{geo["n_pairs"]} {esc(geo["split"])} pairs, '
              "each color image moved by a known random "
              f"field (shift up to {f['max_shift']:g} px, rotation up to {f['max_rot_deg']:g}°, elastic "
              f"{f['elastic_amp']:g} px), scored on co-visible edges. "
              "The first two columns take the original pair as aligned. "
              "The pairs carry their own misalignment, so a method that follows the thermal image is "
              "charged for it; "
              "the last two columns show how much each method moves the unperturbed pair. The "
              "\"own reference\" columns compare with the method's own correction of the unperturbed pair, "
              "which isolates the known part. Source: data/geometry.json.</p>")


def section_gallery(d: dict, out: Path) -> str:
    rows = d.get("gallery.json")
    if not rows:
        return ""
    parts = ["<h2>Gallery</h2>", '<div class="gallery">']
    for r in rows:
        parts.append(f"<p>{esc(r['condition'])} &middot; {esc(r['pair'])} &middot; {r['missed']} missed / "
                     f"{r['detected']} detected thermal objects &middot; mean pair score "
                     f"{num(r['mean_pair_score'])}, predicted {num(r['mean_predicted'])}</p>")
        parts.append(img(out, f"gallery_{r['image']}", f"gallery {r['pair']}"))
    parts.append("</div>")
    return "".join(parts)


def section_run(records: Mapping[str, dict], config_text: str) -> str:
    rows = [[esc(n), esc(r.get("hash", "")), num(r.get("seconds"), 1)] for n, r in records.items()]
    return ("<h2>Run</h2>" + table(["stage", "hash", "seconds"], rows)
            + "<details><summary>Config (resolved, with every default)</summary>"
              f"<pre>{esc(config_text)}</pre></details>")


def write_report(stage_dirs: Mapping[str, Path], out: str | Path, title: str, config_text: str = "",
                 records: Mapping[str, dict] | None = None) -> Path:
    """Write ``out/index.html`` (+ ``data/``, ``img/``) from the stage folders of a run; returns the page."""
    out = Path(out)
    d = collect(stage_dirs, out)
    body = "".join([
        f"<h1>invismap report: {esc(title)}</h1>",
        (f'<p class="note">Generated {time.strftime("%Y-%m-%d %H:%M")} by invismap {esc(__version__)}. '
         "Where a color road camera cannot be trusted, learned from color/thermal pairs without labels.</p>"),
        section_summary(d), section_data(d, out), section_detector(d), section_fusion(d),
        section_experiments(d, out),
        section_maps(d, out),
        section_predictor_cv(d, out),
        section_registration(d, out), section_geometry(d), section_gallery(d, out),
        section_run(records or {}, config_text),
    ])
    page = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>invismap: {esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}<script>{CHECK_SCRIPT}</script></body></html>\n")
    path = out / "index.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path


__all__ = ["collect", "pairs_curve", "write_report"]
