"""Predictor vs the yolov5n teacher per 640x480 frame: eager PyTorch and ONNX Runtime, batch 1 and 8.

Every model runs in the same process on the same input, round-robin (see ``common.interleave``), with
``torch.set_num_threads(THREADS)`` and ONNX Runtime ``intra_op_num_threads = THREADS`` (default 2), worker
spinning off (see the last table). A large float32 matmul runs in the same rounds: its FLOP/s is the
machine's measured peak, against which each model's achieved FLOP/s (counted FLOPs / time) is read.

Tables:
  1. per batch size: ms per frame (median and best), share of the teacher's time (paired ratio, teacher
     eager and teacher ONNX Runtime), FLOPs per frame, achieved GFLOP/s and % of peak;
  2. the predictor's ONNX Runtime speed-up over eager PyTorch;
  3. ``predict_images`` end to end (letterbox, model, sigmoid, map back) on a real uint8 frame;
  4. the teacher's time right after an ONNX Runtime call, with and without spinning worker threads.

Usage (from the repository root; INVISMAP_ASSETS defaults to ../shared/assets)::

    .venv/bin/python benchmarks/bench_predictor.py [--predictor runs/predictor/headline/predictor.pt]
        [--data runs/msrs] [--threads 2] [--rounds N] [--compile] [--quick]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    OthersLoad,
    assets_env,
    base_parser,
    interleave,
    median,
    paired_ratio,
    print_machine,
    setup_torch,
    table,
    wait_quiet,
)
from tqdm import tqdm

HEIGHT, WIDTH = 480, 640
PEAK = "peak: matmul 2048^2 fp32"
OPTIMISED = "predictor, eager fused + channels-last"  # what `invismap predict` runs with --backend torch


@dataclass
class Variant:
    """One way to run a model: ``make(x)`` returns a no-argument call on the ``(B, C, H, W)`` batch ``x``."""

    name: str
    model: str  # "teacher" or "predictor"
    make: Callable[[torch.Tensor], Callable[[], Any]]
    flops: float | None = None  # per frame


def count_flops(model: torch.nn.Module, channels: int = 3) -> float:
    """FLOPs of one ``(1, C, 480, 640)`` forward pass (convolutions and matmuls, as ``FlopCounterMode``
    counts them: 2 per multiply-accumulate; activations, norms and resizes are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(1, channels, HEIGHT, WIDTH))
    return float(counter.get_total_flops())


def torch_call(model: torch.nn.Module):
    def make(x: torch.Tensor) -> Callable[[], Any]:
        return lambda: model(x)

    return make


def ort_call(session, input_name: str):
    def make(x: torch.Tensor) -> Callable[[], Any]:
        feed = {input_name: np.ascontiguousarray(x.numpy())}
        return lambda: session.run(None, feed)

    return make


def matmul_peak(n: int = 2048) -> Variant:
    a, b = torch.rand(n, n), torch.rand(n, n)
    return Variant(PEAK, "peak", lambda x: (lambda: torch.mm(a, b)), flops=2.0 * n ** 3)


def build_variants(args, tmp: Path) -> tuple[list[Variant], dict[str, Any]]:
    """Every model variant to time, plus objects the later tables need."""
    from invismap.detector.export import export_detector
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.export import (
        calibration_frames,
        export_predictor,
        fuse_conv_bn,
        optimize_for_inference,
        quantize_predictor,
    )
    from invismap.invisibility.predictor import load_predictor
    from invismap.onnx_io import ort_session

    teacher = load_detector("yolov5n").float().eval()
    teacher_onnx = export_detector(teacher, tmp / "yolov5n.onnx")
    predictor, meta = load_predictor(args.predictor)
    fused, optimised = fuse_conv_bn(predictor), optimize_for_inference(predictor)
    fp32 = export_predictor(args.predictor, tmp / "predictor.onnx")
    sessions = {"teacher": ort_session(teacher_onnx, args.threads), "fp32": ort_session(fp32, args.threads)}
    t_flops, p_flops = count_flops(teacher), count_flops(predictor)
    variants = [
        Variant("teacher yolov5n, eager", "teacher", torch_call(teacher), t_flops),
        Variant("teacher yolov5n, ORT fp32", "teacher", ort_call(sessions["teacher"], "images"), t_flops),
        Variant("predictor, eager", "predictor", torch_call(predictor), p_flops),
        Variant("predictor, eager conv+BN fused", "predictor", torch_call(fused), p_flops),
        Variant(OPTIMISED, "predictor", torch_call(optimised), p_flops),
        Variant("predictor, ORT fp32", "predictor", ort_call(sessions["fp32"], "rgb"), p_flops),
    ]
    if Path(args.data).exists():
        frames = calibration_frames(args.data, int(meta["input_size"]), count=32)
        int8 = quantize_predictor(fp32, tmp / "predictor.int8.onnx", frames)
        sessions["int8"] = ort_session(int8, args.threads)
        variants.append(Variant("predictor, ORT int8 (static QDQ)", "predictor",
                                ort_call(sessions["int8"], "rgb"), p_flops))
    else:
        print(f"(no {args.data}: int8 calibration frames unavailable, int8 skipped)")
    if args.compile:
        compiled = torch.compile(fused, dynamic=False)
        variants.append(Variant("predictor, torch.compile(fused)", "predictor", torch_call(compiled),
                                p_flops))
    variants.append(matmul_peak())
    extra = {"teacher": teacher, "optimised": optimised, "sessions": sessions,
             "size": int(meta["input_size"]), "teacher_onnx": teacher_onnx, "fp32": fp32}
    return variants, extra


def time_batch(variants: list[Variant], batch: int, rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Wall and CPU seconds per frame (per call for the matmul) of every variant on one random batch."""
    x = torch.rand(batch, 3, HEIGHT, WIDTH)
    calls = {v.name: v.make(x) for v in variants}
    for v in variants:
        if "compile" in v.name:
            calls[v.name]()  # compile for this batch shape before timing
    cpu: dict[str, list[float]] = {}
    wall = interleave(calls, rounds, warmup=2, desc=f"batch {batch}", cpu=cpu)
    per_frame = lambda d: {k: [t / (1 if k == PEAK else batch) for t in ts] for k, ts in d.items()}
    return per_frame(wall), per_frame(cpu)


def batch_table(variants: list[Variant], times: dict[str, list[float]], cpu: dict[str, list[float]]
                ) -> tuple[str, dict[str, float]]:
    """Table 1 for one batch size, and the paired wall-time ratios to the eager teacher (by variant name)."""
    teacher_eager, teacher_ort = times["teacher yolov5n, eager"], times["teacher yolov5n, ORT fp32"]
    peak_flops = [2.0 * 2048 ** 3 / t for t in times[PEAK]]
    rows, ratios = [], {}
    for v in variants:
        ts = times[v.name]
        if v.model == "peak":
            rows.append([v.name + " (per call)", f"{1000 * median(ts):.1f}", f"{1000 * min(ts):.1f}",
                         f"{1000 * median(cpu[v.name]):.1f}", "", "", "", f"{v.flops / 1e9:.2f}",
                         f"{median(peak_flops) / 1e9:.1f}", "100%"])
            continue
        ratios[v.name] = paired_ratio(ts, teacher_eager)
        achieved = [v.flops / t for t in ts]
        rows.append([v.name, f"{1000 * median(ts):.2f}", f"{1000 * min(ts):.2f}",
                     f"{1000 * median(cpu[v.name]):.2f}",
                     f"{ratios[v.name]:.1%}", f"{paired_ratio(ts, teacher_ort):.1%}",
                     f"{paired_ratio(cpu[v.name], cpu['teacher yolov5n, eager']):.1%}",
                     f"{v.flops / 1e9:.3f}",
                     f"{median(achieved) / 1e9:.1f}", f"{paired_ratio(achieved, peak_flops):.1%}"])
    head = ["model", "wall ms/frame median", "best", "CPU ms/frame", "x teacher eager", "x teacher ORT",
            "x teacher eager (CPU)", "GFLOP/frame", "GFLOP/s", "% of peak"]
    return table(head, rows), ratios


def speedup_table(times_by_batch: dict[int, dict[str, list[float]]]) -> str:
    """Table 2: eager time / ORT time for the predictor, paired per round."""
    rows = []
    for batch, times in times_by_batch.items():
        eager, fused = times["predictor, eager"], times["predictor, eager conv+BN fused"]
        best = times[OPTIMISED]
        for name in [k for k in times if k.startswith("predictor, ORT")]:
            rows.append([batch, name, f"{paired_ratio(eager, times[name]):.2f}x",
                         f"{paired_ratio(fused, times[name]):.2f}x",
                         f"{paired_ratio(best, times[name]):.2f}x"])
    return table(["batch", "ONNX Runtime model", "vs eager", "vs eager fused",
                  "vs eager fused + channels-last"], rows)


def end_to_end_table(args, extra: dict[str, Any], rounds: int) -> str:
    """Table 3: ``predict_images`` (letterbox, model, sigmoid, map back) vs the teacher's ``detect``."""
    from invismap.detector.postprocess import detect
    from invismap.invisibility.export import OnnxPredictor
    from invismap.invisibility.predict import predict_images

    frame = real_frame(args.data)
    onnx_model = OnnxPredictor(extra["fp32"], args.threads)
    rows = []
    for batch in (1, 8):
        frames = [frame] * batch
        calls = {"teacher detect() (letterbox, model, NMS)":
                     partial(detect, extra["teacher"], frames, size=640),
                 "predict_images, eager fused + channels-last":
                     partial(predict_images, extra["optimised"], frames, extra["size"], batch),
                 "predict_images, ORT fp32":
                     partial(predict_images, onnx_model, frames, extra["size"], batch)}
        times = interleave(calls, rounds, desc=f"end to end, batch {batch}")
        ref = times["teacher detect() (letterbox, model, NMS)"]
        for name, ts in times.items():
            rows.append([batch, name, f"{1000 * median(ts) / batch:.2f}", f"{paired_ratio(ts, ref):.1%}"])
    return table(["batch", "call", "ms/frame median", "x teacher detect()"], rows)


def real_frame(data: str) -> np.ndarray:
    """A 640x480 RGB uint8 MSRS frame if the manifest exists, else noise of that size."""
    try:
        from invismap.data.manifest import load_manifest
        from invismap.io import read_color

        return read_color(load_manifest(data).select(split="test")[0].color)
    except Exception:  # noqa: BLE001 - no data: the cost does not depend on the content
        return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def spin_table(args, extra: dict[str, Any], rounds: int) -> str:
    """Table 4: an ONNX Runtime predictor call and the eager teacher right after it, ORT spinning on vs off.

    Kept out of table 1: a session with spinning threads slows whatever is timed after it.
    """
    from invismap.onnx_io import ort_session

    x = torch.rand(1, 3, HEIGHT, WIDTH)
    feed = {"rgb": x.numpy()}
    sessions = {"spin": ort_session(extra["fp32"], args.threads, spin=True),
                "no spin": extra["sessions"]["fp32"]}
    pred: dict[str, list[float]] = {name: [] for name in sessions}
    teacher: dict[str, list[float]] = {name: [] for name in sessions}
    for r in tqdm(range(rounds + 2), desc="spinning", unit="round", leave=False):
        for name in (list(sessions) if r % 2 else list(sessions)[::-1]):
            t = time.perf_counter()
            sessions[name].run(None, feed)
            t_pred = time.perf_counter()
            extra["teacher"](x)
            if r >= 2:
                pred[name].append(t_pred - t)
                teacher[name].append(time.perf_counter() - t_pred)
    rows = [[name, f"{1000 * median(pred[name]):.2f}", f"{1000 * median(teacher[name]):.1f}"]
            for name in sessions]
    return (table(["ORT worker threads", "predictor ORT fp32 ms", "teacher eager ms right after"], rows)
            + f"\npredictor speed-up from spinning: {paired_ratio(pred['no spin'], pred['spin']):.2f}x; "
            "teacher slowdown caused by it: "
            f"{paired_ratio(teacher['spin'], teacher['no spin']):.2f}x (paired)")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--predictor", default="runs/predictor/headline/predictor.pt", help="predictor.pt to time")
    p.add_argument("--data", default="runs/msrs", help="pair dataset for int8 calibration and a real frame")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (about a minute to compile)")
    args = p.parse_args()
    assets_env()
    setup_torch(args.threads)
    rounds = args.rounds or (3 if args.quick else 30)
    print_machine(f"bench_predictor: 640x480, {args.threads} threads, {rounds} rounds")
    wait_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory() as tmp, OthersLoad() as load:
        variants, extra = build_variants(args, Path(tmp))
        times_by_batch = {}
        for batch in (1, 8):
            times_by_batch[batch], cpu = time_batch(variants, batch,
                                                    rounds if batch == 1 else max(3, rounds // 3))
            text, ratios = batch_table(variants, times_by_batch[batch], cpu)
            print(f"\n## batch {batch}: per frame\n\n{text}")
            for name in ("predictor, eager", "predictor, ORT fp32", "predictor, ORT int8 (static QDQ)"):
                if name in ratios:
                    print(f"predictor/teacher time ratio ({name} / teacher eager, batch {batch}): "
                          f"{ratios[name]:.1%}")
        print(f"\n## ONNX Runtime speed-up for the predictor\n\n{speedup_table(times_by_batch)}")
        print(f"\n## end to end at 640x480\n\n{end_to_end_table(args, extra, max(3, rounds // 2))}")
        print(f"\n## ONNX Runtime thread spinning and the detector next to it\n\n"
              f"{spin_table(args, extra, max(3, rounds // 2))}")
    print(f"\nCPU used by other processes during the run: {load}")


if __name__ == "__main__":
    main()
