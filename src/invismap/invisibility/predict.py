"""Invisibility maps for new color images, folders and videos, from the color image alone.

``invismap predict --model RUN/predictor.pt SOURCE --out DIR`` letterboxes each image to the predictor's
training size, runs the U-Net (:mod:`invismap.invisibility.unet`), and maps the result back to original
pixels (:func:`~invismap.data.letterbox.map_to_original`). For each image ``NAME`` it writes:

    NAME_map.png      16-bit gray PNG, value * 65535 (lossless to 1.5e-5)
    NAME_map.npy      float32 (H, W) map in [0, 1], at the original image size
    NAME_overlay.png  the map as a heat map (JET: blue visible .. red invisible) over the image, with the
                      detector's boxes when ``--boxes-from`` is given

and for a video ``NAME_overlay.mp4`` (mp4v) with the overlay on every frame. ``index.json`` lists every input
with its outputs and the map's mean and 95th percentile (per frame for videos).

Example:
    >>> model, meta = load_predictor("runs/predictor/predictor.pt")  # doctest: +SKIP
    >>> heat = predict_image(model, read_color("street.png"), size=meta["input_size"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from invismap.data.letterbox import apply_letterbox, check_size, letterbox_params, map_to_original
from invismap.data.manifest import COCO_NAMES
from invismap.detector.base import Detections
from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write, check_output_folder, read_color, staged_outputs, write_image, write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
BoxFn = Callable[[Sequence[np.ndarray]], Sequence[Detections]]

# --------------------------------------------------------------------------------------------- maps

def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 2:  # a gray frame: the color model sees R = G = B
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be (H, W, 3) RGB, got shape {image.shape}")
    return image


@torch.no_grad()
def predict_images(model: nn.Module, images: Sequence[np.ndarray], size: int = 640,
                   batch_size: int = 8) -> list[np.ndarray]:
    """Invisibility maps of RGB uint8 images, each ``(H, W)`` float32 in [0, 1] at its original size.

    Images are letterboxed to ``size`` (longest side, padded to the next multiple of 32 only), batched by
    canvas size, run through ``model`` (logits out, as :class:`InvisibilityUNet`) and mapped back.
    """
    images = [_check_rgb(im) for im in images]
    device = next(iter(model.parameters()), torch.empty(0)).device  # an ONNX Runtime module has none
    model.eval()
    lbs = [letterbox_params(im.shape[1], im.shape[0], size, 32, auto=True) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lb in enumerate(lbs):
        groups.setdefault((lb.height, lb.width), []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            canvases = np.stack([apply_letterbox(images[i], lbs[i]) for i in chunk])  # (B, H, W, 3)
            # (B, 3, H, W) view of the HWC memory: a channels-last tensor without a copy, the layout the
            # optimised model runs in (optimize_for_inference); ONNX Runtime copies it to NCHW itself.
            x = torch.from_numpy(canvases).permute(0, 3, 1, 2).to(device)
            heat = torch.sigmoid(model(x.float().div_(255.0)))[:, 0].float().cpu().numpy()  # (B, H, W)
            for i, h in zip(chunk, heat):
                out[i] = np.clip(map_to_original(h, lbs[i]), 0, 1).astype(np.float32)
    return out  # type: ignore[return-value]


def load_any_predictor(path: str | Path) -> tuple[nn.Module, dict]:
    """A predictor from ``predictor.pt`` (PyTorch) or its ``.onnx`` export (ONNX Runtime):
    ``(model, meta)``."""
    if str(path).endswith(".onnx"):
        from invismap.invisibility.export import load_onnx_predictor

        return load_onnx_predictor(path)
    from invismap.invisibility.predictor import load_predictor

    return load_predictor(path)


def predict_image(model: nn.Module, rgb: np.ndarray, size: int = 640) -> np.ndarray:
    """The invisibility map of one RGB uint8 ``(H, W, 3)`` image: ``(H, W)`` float32 in [0, 1]."""
    return predict_images(model, [rgb], size, 1)[0]


# --------------------------------------------------------------------------------------------- drawing

def overlay(rgb: np.ndarray, heat: np.ndarray, detections: Detections | None = None,
            alpha: float = 0.6) -> np.ndarray:
    """The map as a JET heat map blended over ``rgb`` (more opaque where the map is high), plus boxes.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        heat: ``(H, W)`` map in [0, 1].
        detections: boxes in the image's pixels, drawn in green with class and score.
        alpha: opacity of the heat map where the map is 1 (it is ``0.25 * alpha`` where it is 0).

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    heat = np.clip(heat, 0, 1).astype(np.float32)
    colors = cv2.cvtColor(cv2.applyColorMap((heat * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    a = heat * (0.75 * alpha) + 0.25 * alpha  # per-pixel opacity of the heat map
    out = cv2.blendLinear(np.ascontiguousarray(rgb), colors, 1 - a, a)  # 5x faster than numpy at 640x480
    if detections is not None:
        draw_boxes(out, detections)
    return out


def draw_boxes(image: np.ndarray, detections: Detections) -> np.ndarray:
    """Draw boxes with ``class score`` labels on ``image`` (RGB uint8, in place); returns it."""
    thick = max(1, round(max(image.shape[:2]) / 400))
    for (x1, y1, x2, y2), score, cls in zip(detections.boxes, detections.scores, detections.classes):
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(image, p1, p2, (0, 255, 0), thick, cv2.LINE_AA)
        name = COCO_NAMES[cls] if 0 <= cls < len(COCO_NAMES) else str(int(cls))
        cv2.putText(image, f"{name} {score:.2f}", (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (0, 255, 0), thick, cv2.LINE_AA)
    return image


# --------------------------------------------------------------------------------------------- sources

def list_source(source: str | Path) -> tuple[str, list[Path]]:
    """``('images', files)`` for an image file or a folder of images, ``('video', [file])`` for a video."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise file_error(source, "folder holds no images", f"expected {', '.join(IMAGE_SUFFIXES)} files")
        return "images", files
    if not source.is_file():
        raise file_error(source, "source not found", "give an image, a folder of images or a video file")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return "images", [source]
    if source.suffix.lower() in VIDEO_SUFFIXES:
        return "video", [source]
    raise file_error(source, f"unknown source type '{source.suffix}'",
                     f"images: {', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES)}")


def _output_names(files: Sequence[Path]) -> list[str]:
    """Output stems; files sharing a stem (a.png, a.jpg) keep their suffix in the name (a_png, a_jpg)."""
    stems = [f.stem for f in files]
    return [f"{f.stem}_{f.suffix[1:].lower()}" if stems.count(f.stem) > 1 else f.stem for f in files]


def _box_fn(boxes: BoxFn | nn.Module | None, size: int = 640) -> BoxFn | None:
    if boxes is None or not isinstance(boxes, nn.Module):
        return boxes
    from invismap.detector.postprocess import detect

    return partial(detect, boxes, size=size)


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for k in range(0, len(items), n):
        yield items[k:k + n]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        return None


def release_freed_memory() -> bool:
    """Hand the memory freed so far back to the system (glibc's ``malloc_trim``); True if it could.

    glibc keeps freed heap memory for reuse and, once a large block has been freed, raises the size from which
    blocks are mmapped (and given back on free) and the free space it keeps before trimming. Over a long video
    a batch's big arrays then land on a heap whose fragments stay resident, and RSS drifts up at random
    moments (by up to 41% between the first and the tenth minute, ``benchmarks/bench_stream.py``). Called
    after each batch, this keeps RSS at what one batch needs, for the whole stream.
    """
    trim = _malloc_trim()
    return trim is not None and trim(0) in (0, 1)


def _stats(heat: np.ndarray) -> dict[str, float]:
    return {"mean": float(heat.mean()), "p95": float(np.percentile(heat, 95))}


def predict_source(model: nn.Module, source: str | Path, out_dir: str | Path,
                   boxes: BoxFn | nn.Module | None = None, batch_size: int = 8, size: int = 640,
                   progress: bool = True) -> list[dict]:
    """Write maps and overlays for an image file, a folder of images, or a video file.

    Args:
        model: the U-Net (see :func:`~invismap.invisibility.predictor.load_predictor`).
        source: image file, folder of images (not recursive) or video file.
        out_dir: output folder (created); files as in the module docstring.
        boxes: a detector (:class:`~invismap.detector.base.Detector`, run at 640) or a function
            ``images -> list[Detections]`` whose boxes are drawn on the overlays; None for none.
        batch_size: images or frames per forward pass.
        size: letterbox size; use the predictor's training size (``meta['input_size']``).
        progress: show a progress bar.

    Returns:
        One record per input (also written to ``out_dir/index.json``).

    Raises:
        InvismapError: missing or unknown source, unreadable video, every image unreadable, unwritable
            output folder.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    kind, files = list_source(source)
    out_dir = Path(out_dir)
    box_fn = _box_fn(boxes)
    # an interrupted run leaves the last run's maps whole; a finished one replaces them whole
    with staged_outputs(out_dir, "index.json") as staging:
        if kind == "video":
            record = _predict_video(model, files[0], staging, box_fn, batch_size, size, progress)
            records = [{**record, "overlay_video": str(out_dir / Path(record["overlay_video"]).name)}]
        else:
            records = []
            bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
            for chunk in _chunks(list(zip(files, _output_names(files))), batch_size):
                loaded = []
                for path, name in chunk:
                    try:
                        loaded.append((path, name, read_color(path)))
                    except InvismapError as e:
                        with logging_redirect_tqdm():  # on a line of its own, not glued to the bar
                            log.warning(f"skipped: {e}")
                        records.append({"source": str(path), "error": str(e)})
                if loaded:
                    images = [im for _, _, im in loaded]
                    heats = predict_images(model, images, size, batch_size)
                    dets = box_fn(images) if box_fn else [None] * len(images)
                    for (path, name, rgb), heat, det in zip(loaded, heats, dets):
                        records.append(_write_image_outputs(staging, out_dir, name, path, rgb, heat, det))
                bar.update(len(chunk))
                release_freed_memory()
            bar.close()
            if all("error" in r for r in records):
                raise InvismapError(f"{source}: none of the {len(files)} images could be read")
    write_json(out_dir / "index.json", records)
    return records


def _write_image_outputs(folder: Path, out_dir: Path, name: str, path: Path, rgb: np.ndarray,
                         heat: np.ndarray, det: Detections | None) -> dict:
    """Write one image's outputs into ``folder``; its record names them where they will be, in ``out_dir``."""
    files = {"map_png": f"{name}_map.png", "map_npy": f"{name}_map.npy", "overlay": f"{name}_overlay.png"}
    write_image(folder / files["map_png"], (heat * 65535 + 0.5).astype(np.uint16))
    with atomic_write(folder / files["map_npy"], "wb") as f:
        np.save(f, heat.astype(np.float32))
    write_image(folder / files["overlay"], overlay(rgb, heat, det))
    rec = {"source": str(path), "width": rgb.shape[1], "height": rgb.shape[0], **_stats(heat),
           **{k: str(out_dir / v) for k, v in files.items()}}
    if det is not None:
        rec["detections"] = len(det)
    return rec


def _predict_video(model: nn.Module, path: Path, out_dir: Path, box_fn: BoxFn | None, batch_size: int,
                   size: int, progress: bool) -> dict:
    from tqdm import tqdm

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise file_error(path, "cannot open the video (corrupt, or a codec OpenCV lacks)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out = out_dir / f"{path.stem}_overlay.mp4"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{path.stem}_overlay.tmp.mp4"  # the suffix picks the container: keep .mp4 last
    writer, means, p95s = None, [], []
    bar = tqdm(total=total, desc=f"predict {path.name}", unit="frame", disable=not progress,
               dynamic_ncols=True)
    try:
        while True:
            frames = []
            while len(frames) < batch_size:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB
            if not frames:
                break
            heats = predict_images(model, frames, size, batch_size)
            dets = box_fn(frames) if box_fn else [None] * len(frames)
            for rgb, heat, det in zip(frames, heats, dets):
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (rgb.shape[1], rgb.shape[0]))
                    if not writer.isOpened():
                        raise file_error(out, "cannot write an mp4v video here", "check the --out folder")
                writer.write(np.ascontiguousarray(overlay(rgb, heat, det)[:, :, ::-1]))
                stats = _stats(heat)
                means.append(stats["mean"])
                p95s.append(stats["p95"])
            bar.update(len(frames))
            release_freed_memory()
        if writer is None:
            raise file_error(path, "video holds no readable frames")
        writer.release()
        writer = None
        os.replace(tmp, out)
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
        with contextlib.suppress(OSError):
            tmp.unlink()
    return {"source": str(path), "frames": len(means), "fps": fps, "overlay_video": str(out),
            "mean": float(np.mean(means)), "mean_per_frame": means, "p95_per_frame": p95s}


# --------------------------------------------------------------------------------------------- CLI

def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``invismap predict`` to the CLI's subcommands."""
    p = sub.add_parser("predict", help="invisibility maps of color images, a folder or a video",
                       description="Predict, from the color image alone, where the color camera misses "
                                   "what a thermal camera would see. Writes NAME_map.png (16-bit), "
                                   "NAME_map.npy, NAME_overlay.png per image, NAME_overlay.mp4 per video, "
                                   "and index.json.")
    p.add_argument("source", help="an image, a folder of images, or a video file")
    p.add_argument("--model", required=True,
                   help="predictor checkpoint (RUN/predictor.pt) or its .onnx export")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                   help="inference engine (default: onnxruntime for .onnx files, torch otherwise)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=None,
                   help="letterbox size (default: the size the predictor was trained at)")
    p.add_argument("--batch", type=int, default=8, help="images or frames per forward pass")
    p.add_argument("--boxes-from", metavar="DETECTOR", help="also draw this detector's boxes (e.g. yolov5n)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_predict)


def _predict(args) -> None:
    from invismap.engine.loop import resolve_device
    from invismap.invisibility.predictor import load_predictor

    if args.batch < 1:
        raise InvismapError(f"--batch must be at least 1, got {args.batch}")
    check_size(args.size)
    check_output_folder(args.out, "index.json", reads=(args.source,))  # before any model loads
    device = resolve_device(args.device)
    backend = args.backend or ("onnxruntime" if str(args.model).endswith(".onnx") else "torch")
    if backend == "onnxruntime":
        from invismap.invisibility.export import load_onnx_predictor

        if not str(args.model).endswith(".onnx"):
            raise InvismapError(f"{args.model}: --backend onnxruntime needs an .onnx file "
                                "(make one with 'invismap export')")
        model, meta = load_onnx_predictor(args.model)
        device = torch.device("cpu")
    else:
        from invismap.invisibility.export import optimize_for_inference

        if str(args.model).endswith(".onnx"):
            raise InvismapError(f"{args.model}: --backend torch runs the .pt checkpoint (RUN/predictor.pt); "
                                "leave --backend out to run the .onnx file with ONNX Runtime")
        model, meta = load_predictor(args.model)
        model = optimize_for_inference(model)  # same maps to ~1e-6, faster (benchmarks/bench_predictor.py)
    size = args.size if args.size is not None else int(meta["input_size"])
    if size % 32:
        raise InvismapError(f"--size {size} must be a multiple of 32")
    if size != meta["input_size"]:
        log.warning(f"predicting at size {size}, the predictor was trained at {meta['input_size']}: "
                    "objects appear at another scale than in training")
    boxes = None
    if args.boxes_from:
        from invismap.detector.zoo import load_detector

        boxes = load_detector(args.boxes_from).float().to(device)
    records = predict_source(model.to(device), args.source, args.out, boxes=boxes, batch_size=args.batch,
                             size=size)
    done = [r for r in records if "error" not in r]
    print(f"wrote maps for {len(done)} input(s) to {args.out} (index.json lists them)")
