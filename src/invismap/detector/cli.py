"""``invismap detect`` and ``invismap eval-detector``: run a detector on images, score it on a dataset.

With ``--thermal``, ``detect`` fuses the color detector's boxes on registered color images with a thermal
detector's boxes on their thermal twins, each color box weighted by how far the invisibility map trusts the
color camera there (:mod:`invismap.detector.fusion`).

Examples:
    invismap detect --model yolov5n photos/ --out runs/detect
    invismap detect --model yolov5n color/ --thermal thermal/ \\
        --thermal-detector runs/msrs/thermal_detector.pt --map runs/msrs/predictor.pt --out runs/fused
    invismap eval-detector --data runs/msrs --model yolov5n --images thermal --labels thermal \\
        --condition night --split test --json runs/eval/thermal_night.json
    # a distilled thermal detector's lead over the teacher on the same thermal images, with its interval
    invismap eval-detector --data runs/msrs/import/more/roadscene --reference yolov5n \\
        --model runs/msrs/distill/thermal_detector.pt --images thermal --labels thermal \\
        --condition night --split test --json lead.json
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from invismap.data.letterbox import check_size
from invismap.data.manifest import SPLITS
from invismap.detector.fusion import FORMS, METHODS
from invismap.detector.postprocess import NMS_IOU

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("detect", help="detect objects in images with a color detector",
                       description="Write OUT/<image>.png with boxes drawn and OUT/detections.json "
                                   "(COCO results format; category_id = 0-based COCO-80 class id).")
    d.add_argument("source", help="an image file or a folder of images")
    d.add_argument("--model", default="yolov5n",
                   help="model name (yolov5n, ...), .pt/.cfg file, or an .onnx export")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--modality", choices=("color", "thermal"), default="color",
                   help="read images as color RGB or as one-channel thermal (fed as gray RGB)")
    d.add_argument("--conf", type=float, default=0.25, help="score threshold")
    d.add_argument("--iou", type=float, default=NMS_IOU, help="NMS IoU threshold")
    d.add_argument("--size", type=int, default=640, help="letterbox size (longest side)")
    d.add_argument("--tta-sizes", type=int, nargs="+", default=[], metavar="SIZE",
                   help="multi-scale test-time augmentation: also detect at these sizes, merged before NMS")
    f = d.add_argument_group("fusion with thermal detections (registered pairs: same size, same pixels)")
    f.add_argument("--thermal", metavar="IMAGE_OR_FOLDER",
                   help="the thermal twin of SOURCE (a folder: twins matched by file name stem)")
    f.add_argument("--thermal-detector", metavar="PATH", help="thermal detector (RUN/thermal_detector.pt)")
    f.add_argument("--map", default="none", metavar="PREDICTOR|pair|none",
                   help="invisibility map weighting each color box: a predictor (RUN/predictor.pt or .onnx), "
                        "'pair' (the pair score, from the thermal detector's checkpoint) or 'none' (constant "
                        "weight)")
    f.add_argument("--color-weight", type=float, default=1.0, help="weight c of every color box (thermal: 1)")
    f.add_argument("--map-strength", type=float, default=1.0,
                   help="alpha: color weight c * (1 - alpha * m) (linear) or c * (1 - m) ** alpha (power)")
    f.add_argument("--trust-form", choices=FORMS, default="linear",
                   help="how the map lowers a color box's weight")
    f.add_argument("--thermal-boost", type=float, default=0.0,
                   help="beta: each thermal box weighs 1 + beta * m (0: every thermal box weighs 1)")
    f.add_argument("--fusion", choices=METHODS, default="wbf",
                   help="weighted boxes fusion or score-aware NMS over both sets")
    f.add_argument("--fusion-iou", type=float, default=0.55, help="IoU at which two boxes are one object")
    f.add_argument("--weights-from", metavar="FUSION_JSON",
                   help="fuse with the weights a pipeline run chose on its train split "
                        "(RUN/fusion/fusion.json) for --condition, --label-set and --map; replaces the "
                        "weight flags above")
    f.add_argument("--condition", choices=("day", "night"),
                   help="the scene's condition (with --weights-from)")
    f.add_argument("--label-set", choices=("thermal", "union"), default="thermal",
                   help="the labels the weights were chosen for (with --weights-from)")
    d.set_defaults(func=_detect)

    e = sub.add_parser("eval-detector", help="COCO AP of a detector on a pair dataset",
                       description="AP50 and AP50:95 per class (person, bicycle, car) and their mean.")
    e.add_argument("--data", required=True, help="manifest.csv or its folder")
    e.add_argument("--model", default="yolov5n",
                   help="model name (yolov5n, ...), .pt/.cfg file, or an .onnx export")
    e.add_argument("--images", choices=("color", "thermal"), default="color", help="images to detect on")
    e.add_argument("--labels", choices=("color", "thermal"), default="color", help="labels to score against")
    e.add_argument("--condition", help="only this condition (day, night, ...)")
    e.add_argument("--split", choices=SPLITS, help="only this split (e.g. test)")
    e.add_argument("--size", type=int, default=640, help="letterbox size (longest side)")
    e.add_argument("--tta-sizes", type=int, nargs="+", default=[], metavar="SIZE",
                   help="multi-scale test-time augmentation: also detect at these sizes, merged before NMS")
    e.add_argument("--conf", type=float, default=0.001, help="score threshold")
    e.add_argument("--iou", type=float, default=NMS_IOU, help="NMS IoU threshold")
    e.add_argument("--multi-label", action="store_true",
                   help="YOLOv5 val.py multi-label NMS (a box may count for several classes); "
                        "default: best class")
    e.add_argument("--strict-classes", action="store_true",
                   help="score COCO classes as they are (a truck box at a labelled car does not count); "
                        "default: truck and bus count as car, motorcycle as bicycle (the datasets' classes)")
    e.add_argument("--reference", metavar="MODEL",
                   help="also score this detector on the same images (e.g. the teacher when --model is a "
                        "distilled thermal detector) and give --model's lead over it with its 95%% interval")
    e.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of the images for the 95%% intervals (0: none)")
    e.add_argument("--json", required=True, help="output JSON file")
    e.set_defaults(func=_eval)


def check_detection_args(args: argparse.Namespace) -> None:
    """Refuse sizes and thresholds no detector can use, naming the flag and the allowed range."""
    from invismap.errors import InvismapError

    for flag, size in [("--size", args.size)] + [("--tta-sizes", s) for s in args.tta_sizes]:
        check_size(size, flag)
    repeated = [s for i, s in enumerate(args.tta_sizes) if s == args.size or s in args.tta_sizes[:i]]
    if repeated:  # recorded as given, it would claim a size that adds nothing
        raise InvismapError(f"--tta-sizes {repeated[0]}: given twice, or equal to --size {args.size} (which "
                            "always runs); list each added size once")
    for flag, v in (("--conf", args.conf), ("--iou", args.iou)):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise InvismapError(f"{flag} {v}: must be a number in [0, 1]")
    if getattr(args, "out", None):  # before any model loads: not a folder of the user's own files
        from invismap.io import check_output_folder

        check_output_folder(args.out, "detections.json", reads=(args.source, getattr(args, "thermal", None)))


def _detect(args: argparse.Namespace) -> int:
    if args.thermal is not None or args.thermal_detector is not None:
        return _detect_fused(args)
    if args.map != "none":
        from invismap.errors import InvismapError

        raise InvismapError(f"--map {args.map}: a map only weights a fusion "
                            "(add --thermal and --thermal-detector)")
    from invismap.detector.postprocess import detect
    from invismap.detector.zoo import load_inference_detector
    from invismap.io import read_color, read_thermal, staged_outputs, write_image, write_json

    check_detection_args(args)
    files = list_images(Path(args.source))
    model = load_inference_detector(args.model)
    read = read_color if args.modality == "color" else read_thermal
    out = Path(args.out)
    results, images = [], []
    batch = 8
    # an interrupted run leaves the last run's drawings whole; a finished one replaces them whole
    with staged_outputs(out, "detections.json") as staging:
        for k in range(0, len(files), batch):
            chunk = files[k:k + batch]
            imgs = [read(f) for f in chunk]
            for f, img, det in zip(chunk, imgs, detect(model, imgs, size=args.size, conf=args.conf,
                                                         iou=args.iou, batch_size=batch,
                                                         tta_sizes=args.tta_sizes)):
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": str(f),
                               "width": img.shape[1], "height": img.shape[0]})
                results += coco_results(det, image_id, str(f), model.names)
                write_image(staging / f"{f.stem}.png", draw_detections(img, det, model.names))
                log.info("%s: %d detections", f.name, len(det))
    write_json(out / "detections.json", results)
    print(f"{len(results)} detections in {len(files)} images -> {out}/ (detections.json, annotated PNGs)")
    return 0


def _fusion_settings(path: str) -> dict:
    """How a fusion run's detections were made: ``tta_sizes`` (absent: one size) and ``fold_classes``
    (absent: an older run, strict classes)."""
    import json

    return json.loads(Path(path).read_text()).get("settings", {})


def fusion_params(args: argparse.Namespace):
    """The :class:`~invismap.detector.fusion.FusionParams` of the flags, refused with the flag's name."""
    from invismap.detector.fusion import FusionParams
    from invismap.errors import InvismapError

    if args.weights_from is not None:
        from invismap.detector.fusion_eval import chosen_params

        if args.condition is None:
            raise InvismapError("--weights-from needs --condition day or night (the weights are chosen per "
                                "condition)")
        method = "constant" if args.map == "none" else "map:pair" if args.map == "pair" else "map:predictor"
        params = chosen_params(args.weights_from, args.condition, args.label_set, method)
        settings = _fusion_settings(args.weights_from)
        chosen_with = list(settings.get("tta_sizes") or [])
        if sorted(chosen_with) != sorted(args.tta_sizes):
            log.warning("%s: its weights were chosen with --tta-sizes %s, this run uses %s; give the same "
                        "--tta-sizes to fuse as they were chosen", args.weights_from, chosen_with or "none",
                        list(args.tta_sizes) or "none")
        chosen_iou = settings.get("nms_iou", NMS_IOU)  # runs before the setting used the default
        if chosen_iou != args.iou:
            log.warning("%s: its weights were chosen with NMS IoU %s, this run uses %s; give --iou %s to "
                        "fuse as they were chosen", args.weights_from, chosen_iou, args.iou, chosen_iou)
        if not settings.get("fold_classes", False):
            log.warning("%s: its weights were chosen with strict COCO classes, and this fuses truck and bus "
                        "boxes as car; re-run the fusion stage (invismap run CONFIG --from fusion) to choose "
                        "them the same way", args.weights_from)
        return params
    if args.condition is not None:
        raise InvismapError("--condition only picks the weights of --weights-from (add --weights-from "
                            "RUN/fusion/fusion.json)")
    flags = {"color_weight": "--color-weight", "map_strength": "--map-strength",
             "thermal_boost": "--thermal-boost", "iou_thr": "--fusion-iou"}
    guided = args.map != "none"
    try:
        return FusionParams(color_weight=args.color_weight, map_strength=args.map_strength if guided else 0.0,
                            form=args.trust_form, thermal_boost=args.thermal_boost if guided else 0.0,
                            method=args.fusion, iou_thr=args.fusion_iou)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        raise InvismapError(f"{flags.get(name, name)}: {str(e).split(' ', 1)[1]}") from None


def pair_images(color: Path, thermal: Path) -> list[tuple[Path, Path]]:
    """``(color, thermal)`` files: two files, or two folders whose images are matched by name stem."""
    from invismap.errors import InvismapError, file_error

    colors = list_images(color)
    if not thermal.exists():
        raise file_error(thermal, "not found",
                         "give the thermal twin of the color image, or a folder of them")
    if color.is_file() != thermal.is_file():
        raise InvismapError(f"{color} and {thermal}: give two image files or two folders, not one of each")
    if color.is_file():
        return [(color, thermal)]
    twins = {p.stem: p for p in list_images(thermal)}
    missing = [c.name for c in colors if c.stem not in twins]
    if missing:
        raise file_error(thermal, f"no thermal twin of {missing[0]} ({len(missing)} of {len(colors)} color "
                         "images have none)", "name each thermal image like its color image")
    return [(c, twins[c.stem]) for c in colors]


def map_spec(value: str, thermal_detector: str) -> str | None:
    """The :mod:`~invismap.invisibility.sources` spec of ``--map`` (None for 'none'), checked before any
    model loads."""
    from invismap.errors import InvismapError, file_error

    if value == "none":
        return None
    if value == "pair":
        return f"pair:{thermal_detector}"
    if Path(value).suffix not in (".pt", ".onnx"):
        raise InvismapError(f"--map {value}: give a predictor checkpoint (.pt or .onnx), 'pair' or 'none'")
    if not Path(value).is_file():
        raise file_error(value, "predictor not found", "give RUN/predictor.pt, 'pair' or 'none' to --map")
    return f"predictor:{value}"


def _detect_fused(args: argparse.Namespace) -> int:
    from invismap.detector.fusion import fuse_with_map
    from invismap.detector.protocol import ScoringProtocol
    from invismap.detector.zoo import load_detector, load_inference_detector
    from invismap.distill.student import ThermalDetector
    from invismap.errors import InvismapError, file_error
    from invismap.invisibility.sources import map_source
    from invismap.io import image_size, read_color, read_thermal, staged_outputs, write_image, write_json

    check_detection_args(args)
    if args.thermal is None or args.thermal_detector is None:
        raise InvismapError("fusion needs both --thermal (the thermal images) and --thermal-detector")
    params = fusion_params(args)
    spec = map_spec(args.map, args.thermal_detector)
    pairs = pair_images(Path(args.source), Path(args.thermal))
    for c, t in pairs:  # before any model loads or any file is written
        wh_color, wh_thermal = image_size(c), image_size(t)
        if wh_color != wh_thermal:
            raise file_error(t, f"size {wh_thermal[0]}x{wh_thermal[1]} differs from its color twin {c.name} "
                             f"({wh_color[0]}x{wh_color[1]})",
                             "register the pair first ('invismap register')")
    thermal_model = load_detector(args.thermal_detector)
    if not isinstance(thermal_model, ThermalDetector):  # e.g. yolov5n.pt, the teacher, trained on color
        log.warning(f"{args.thermal_detector}: not a distilled thermal detector; if it was trained on color "
                    "images (e.g. the teacher), give RUN/distill/thermal_detector.pt to --thermal-detector")
    model = load_inference_detector(args.model)
    invisibility = None if spec is None else map_source(spec)[1]
    out = Path(args.out)
    # a truck seen by one camera and a car by the other are one object: fused as the labels' classes
    protocol = ScoringProtocol(args.size, args.tta_sizes, args.iou, fold_classes=True)
    results = []
    with staged_outputs(out, "detections.json") as staging:  # as in _detect
        for image_id, (c, t) in enumerate(pairs, start=1):
            rgb, thr = read_color(c), read_thermal(t)
            heat = invisibility(None, rgb, thr) if invisibility else None
            color, = protocol.detect(model, [rgb], conf=args.conf, classes=None, batch_size=1)
            thermal, = protocol.detect(thermal_model, [thr], conf=args.conf, classes=None, batch_size=1)
            fused = fuse_with_map(color, thermal, heat, params, image_size=(rgb.shape[1], rgb.shape[0]))
            results += coco_results(fused, image_id, str(c), model.names)
            write_yolo(staging / "labels" / f"{c.stem}.txt", fused, rgb.shape[1], rgb.shape[0])
            write_image(staging / f"{c.stem}.png", draw_fused(rgb, thr, fused, heat, model.names))
            log.info("%s + %s: %d fused detections", c.name, t.name, len(fused))
    write_json(out / "detections.json", results)
    print(f"{len(results)} fused detections in {len(pairs)} pairs (map: {args.map}) -> {out}/ "
          "(detections.json, labels/*.txt, drawings)")
    return 0


def coco_results(det, image_id: int, file_name: str, names: list[str]) -> list[dict]:
    """COCO results records (xywh pixels) of one image's detections."""
    return [{"image_id": image_id, "file_name": file_name,
             "category_id": int(c), "category_name": names[int(c)],
             "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(float(s), 5)}
            for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist())]


def write_yolo(path: Path, det, width: int, height: int) -> None:
    """YOLO txt: one ``class cx cy w h score`` line per box, coordinates normalised to the image."""
    from invismap.io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
            f.write(f"{int(c)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                    f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {s:.5f}\n")


def draw_fused(rgb: np.ndarray, thermal: np.ndarray, det, heat: np.ndarray | None,
               names: list[str]) -> np.ndarray:
    """``(H, 2W, 3)``: the color image (under the map as a heat map, if any) and the thermal image,
    boxes on both."""
    from invismap.invisibility.predict import overlay

    left = overlay(rgb, heat) if heat is not None else rgb
    return np.concatenate([draw_detections(left, det, names), draw_detections(thermal, det, names)], axis=1)


def list_images(source: Path) -> list[Path]:
    """The image files of ``source`` (a file, or a folder's images sorted by name, not recursive)."""
    from invismap.errors import InvismapError, file_error

    if source.is_file():
        return [source]
    if not source.is_dir():
        raise file_error(source, "not found", "give an image file or a folder of images")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InvismapError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def draw_detections(image: np.ndarray, det, names: list[str]) -> np.ndarray:
    """RGB ``(H, W, 3)`` copy of ``image`` (gray is expanded) with labelled boxes drawn."""
    import cv2

    img = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image.copy()
    thick = max(1, round(max(img.shape[:2]) / 400))
    for (x1, y1, x2, y2), s, c in zip(det.boxes, det.scores, det.classes):
        hue = (int(c) * 47) % 180  # a stable color per class
        color = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(img, p1, p2, color, thick)
        cv2.putText(img, f"{names[int(c)]} {s:.2f}", (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.25 * (thick + 1), color, 1, cv2.LINE_AA)
    return img


def _eval(args: argparse.Namespace) -> int:
    from invismap.data.manifest import ROAD_CLASSES, load_manifest
    from invismap.detector.ap_bootstrap import ap50_estimates
    from invismap.detector.evaluate import detect_labelled, evaluation_result, evaluation_settings
    from invismap.detector.protocol import ScoringProtocol
    from invismap.detector.zoo import load_inference_detector
    from invismap.errors import InvismapError
    from invismap.invisibility.bootstrap import format_estimate
    from invismap.io import check_output_file, write_json

    check_detection_args(args)
    check_output_file(args.json)
    if args.bootstrap < 0:
        raise InvismapError(f"--bootstrap {args.bootstrap}: must be 0 (no intervals) or more (e.g. 1000)")
    if args.reference is not None and str(args.reference) == str(args.model):
        raise InvismapError(f"--reference {args.reference} is --model itself; give another detector")
    manifest = load_manifest(args.data)
    protocol = ScoringProtocol(args.size, args.tta_sizes, args.iou, fold_classes=not args.strict_classes)
    settings = evaluation_settings(args.images, args.labels, args.condition, args.split, protocol, args.conf,
                                   ROAD_CLASSES, args.multi_label)
    models = {str(m): load_inference_detector(m) for m in (args.model, args.reference) if m is not None}
    found = {name: detect_labelled(model, manifest, args.images, args.labels, args.condition, args.split,
                                   protocol, args.conf, multi_label=args.multi_label)
             for name, model in models.items()}
    res, *ref = [evaluation_result(f, settings) for f in found.values()]
    res.update(model=str(args.model), data=str(args.data))
    print(f"{args.model} on {args.images} images vs {args.labels} labels "
          f"(condition={args.condition or 'all'}, split={args.split or 'all'}, {res['n_images']} images)")
    print(format_ap_table(res))
    if ref:
        res["reference"] = {"model": str(args.reference),
                            **{k: ref[0][k] for k in ("AP50", "AP50_95", "classes")},
                            "lead_AP50": res["AP50"] - ref[0]["AP50"]}
        print(f"reference {args.reference}:\n{format_ap_table(ref[0])}")
        print(f"AP50 lead over {args.reference}: {100 * res['reference']['lead_AP50']:+.1f}")
    if args.bootstrap:  # AP50 x100 with 95% intervals; the lead paired on the same resamples
        res["intervals"] = ap50_estimates(found, str(args.reference) if ref else None, n_boot=args.bootstrap)
        for name, e in res["intervals"].items():
            print(f"AP50 {name}: {format_estimate(e, '+.1f' if ' - ' in name else '.1f')}")  # leads signed
    write_json(args.json, _nan_to_none(res))
    print(f"wrote {args.json}")
    return 0


def _nan_to_none(obj):
    """JSON has no NaN: undefined APs (no ground truth) become null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def format_ap_table(res: dict) -> str:
    """Plain-text table of :func:`~invismap.detector.evaluate.coco_ap` output, AP in percent."""
    def pct(v: float) -> str:
        return "  n/a" if v is None or math.isnan(v) else f"{100 * v:5.1f}"

    lines = [f"{'class':<10} {'n_gt':>6} {'n_det':>7} {'AP50':>6} {'AP50:95':>8}"]
    for name, c in res["classes"].items():
        lines.append(f"{name:<10} {c['n_gt']:>6} {c['n_det']:>7} {pct(c['AP50']):>6} {pct(c['AP50_95']):>8}")
    lines.append(f"{'all':<10} {'':>6} {'':>7} {pct(res['AP50']):>6} {pct(res['AP50_95']):>8}")
    return "\n".join(lines)
