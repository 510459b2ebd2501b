"""Peak memory (RSS) of the deployed commands and of short training runs, each in its own process.

Every command runs as a child process; its peak resident set size is the kernel's ``ru_maxrss`` for that
child alone (``os.wait4``), so nothing measured here shares a process with another measurement:

- a baseline (Python + torch + the invismap CLI imported, nothing run);
- ``invismap predict`` on one 1280x1024 color image (an MSRS frame resized), PyTorch and ONNX Runtime
  (fp32 and int8) backends;
- ``invismap distill configs/distill.yaml`` and ``invismap train-predictor configs/predictor.yaml`` with
  ``train.max_steps`` set small (``--steps``, default 12: one full epoch of the 87 training pairs at batch 8,
  so the in-memory pair cache is full, as it is for the rest of a real run), checkpoints and calibration
  included.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_memory.py [--data runs/msrs] [--steps 12] [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, assets_env, base_parser, print_machine, table

INVISMAP = str(Path(sys.executable).parent / "invismap")


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """``(peak RSS MiB, wall s, exit code, last stderr line)`` of ``cmd`` run as a child process."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").replace("\r", "\n").splitlines()
                 if ln.strip()]
    return usage.ru_maxrss / 1024, wall, proc.returncode, lines[-1][:120] if lines else ""


def big_image(data: str, out: Path) -> Path:
    """A 1280x1024 RGB PNG: the first test frame of ``data`` resized (noise if there is no data)."""
    import cv2
    import numpy as np

    try:
        from invismap.data.manifest import load_manifest

        frame = cv2.imread(str(load_manifest(data).select(split="test")[0].color))
    except Exception:  # noqa: BLE001 - memory does not depend on the content
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(out), cv2.resize(frame, (1280, 1024), interpolation=cv2.INTER_LINEAR))
    return out


def commands(args, tmp: Path) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` of every measured command."""
    image = big_image(args.data, tmp / "frame_1280x1024.png")
    onnx, int8 = tmp / "predictor.onnx", tmp / "predictor.int8.onnx"
    manifest = Path(args.data) / "manifest.csv" if Path(args.data).is_dir() else Path(args.data)
    steps = [f"train.max_steps={args.steps}", "train.ckpt_every=6", "train.eval_every=6"]
    return [
        ("baseline: python + torch + invismap CLI imported",
         [sys.executable, "-c", "import torch, invismap.cli"]),
        ("export predictor.onnx (fp32)", [INVISMAP, "export", "--model", args.predictor, "--out", str(onnx)]),
        ("export predictor.int8.onnx (calibration included)",
         [INVISMAP, "export", "--model", args.predictor, "--out", str(int8), "--int8", "--calibration-data",
          str(manifest)]),
        ("predict 1280x1024, torch", [INVISMAP, "predict", "--model", args.predictor, str(image),
                                      "--out", str(tmp / "p_torch")]),
        ("predict 1280x1024, onnxruntime fp32", [INVISMAP, "predict", "--model", str(onnx), str(image),
                                                 "--out", str(tmp / "p_ort")]),
        ("predict 1280x1024, onnxruntime int8", [INVISMAP, "predict", "--model", str(int8), str(image),
                                                 "--out", str(tmp / "p_int8")]),
        ("predict 1280x1024, torch, with yolov5n boxes",
         [INVISMAP, "predict", "--model", args.predictor, str(image), "--out", str(tmp / "p_boxes"),
          "--boxes-from", "yolov5n"]),
        (f"distill configs/distill.yaml, {args.steps} steps",
         [INVISMAP, "distill", "configs/distill.yaml", f"data={manifest}", *steps,
          "--run", str(tmp / "distill")]),
        (f"train-predictor configs/predictor.yaml, {args.steps} steps",
         [INVISMAP, "train-predictor", "configs/predictor.yaml", f"data={manifest}",
          f"targets={args.targets}", *steps, "--run", str(tmp / "predictor")]),
    ]


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/msrs", help="imported MSRS pair dataset")
    p.add_argument("--predictor", default="runs/predictor/headline/predictor.pt")
    p.add_argument("--targets", default="runs/targets/headline", help="pair-score cache for train-predictor")
    p.add_argument("--steps", type=int, default=12, help="training steps of the training runs")
    args = p.parse_args()
    if args.quick:
        args.steps = 2
    assets_env()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print_machine(f"bench_memory: peak RSS per command ({args.threads} threads)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(args, Path(tmp))
        base = None
        for label, cmd in todo:
            print(f"running: {label}", file=sys.stderr, flush=True)
            mib, wall, code, last = peak_rss(cmd, env)
            base = mib if base is None else base
            rows.append([label, f"{mib:.0f}", f"{mib - base:+.0f}", f"{wall:.1f}",
                         "ok" if code == 0 else f"exit {code}: {last}"])
    print(f"\n{table(['command', 'peak RSS MiB', 'vs baseline', 'wall s', 'status'], rows)}")


if __name__ == "__main__":
    main()
