"""OpenMP waiting policy: 2-thread inference, OMP_WAIT_POLICY unset (spinning) against PASSIVE (sleeping).

Measured on a quiet machine and with another process busy on one core.

PyTorch's CPU kernels run on an OpenMP pool whose threads wait for each other at the end of every parallel op.
When another process holds one of the two cores, a spinning thread can wait a whole scheduler slice for its
descheduled partner. The policy must be set before the OpenMP runtime starts, so every measurement runs in a
child process (this file with ``--child``) with its own environment; the parent runs the cells in rounds, the
order of the variants reversed every other round, and prints each cell's median milliseconds per call and
the paired ratio to "unset" (median over rounds of the per-round ratio; < 1: faster). Two more variants:
libgomp spinning only briefly (``GOMP_SPINCOUNT=10000``; the default is 300000) and one thread (nothing to
wait for).

Timed per call: the teacher (yolov5n) detecting on one 640x480 MSRS color image (letterbox, forward, NMS), and
with ``--predictor`` the invisibility predictor on the same image
(:func:`invismap.invisibility.predict.predict_images`).

Usage (from the repository root, on an otherwise quiet machine)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/omp_wait.py \\
        [--predictor RUN/predictor/predictor.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import (
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

# name -> (environment added to the child's, threads; None: --threads)
VARIANTS = {"unset": ({}, None), "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
            "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, None), "1 thread": ({}, 1)}
LOADS = ("quiet", "one core busy")


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--predictor", help="a predictor.pt to time as well")
    p.add_argument("--calls", type=int, default=20,
                   help="timed rounds per child (one call of each model per round, after 3 warm-up rounds)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    """Time the models in this process (its OMP_WAIT_POLICY as inherited) and print one JSON line."""
    setup_torch(args.threads)
    from invismap.assets import find_asset
    from invismap.detector.postprocess import detect
    from invismap.detector.zoo import load_detector
    from invismap.io import read_color

    image = read_color(find_asset("data/msrs/vi/00001D.png"))
    teacher = load_detector("yolov5n")
    calls = {"teacher": lambda: detect(teacher, [image], size=640, batch_size=1)}
    if args.predictor:
        from invismap.invisibility.predict import predict_images
        from invismap.invisibility.predictor import load_predictor

        predictor, _ = load_predictor(args.predictor)
        calls["predictor"] = lambda: predict_images(predictor, [image], batch_size=1)
    seconds = interleave(calls, rounds=args.calls, warmup=3)
    ms = {name: 1000 * median(t) for name, t in seconds.items()}
    print(json.dumps(ms))


def run_child(args, variant: str) -> dict[str, float]:
    added, threads = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | added
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads or args.threads),
           "--calls", str(args.calls)]
    cmd += ["--predictor", args.predictor] if args.predictor else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    assets_env()
    if args.child:
        child(args)
        return
    if args.threads < 2:
        raise SystemExit("--threads: at least 2 (one thread never waits for another)")
    if args.quick:
        args.calls = 3
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    print_machine(f"OpenMP waiting policy, {args.threads} threads, batch 1")
    rounds = args.rounds or (1 if args.quick else 5)
    ms: dict[tuple[str, str, str], list[float]] = {}  # (load, policy, model) -> per-round medians
    for load in LOADS:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "quiet" else None
        try:
            for r in range(rounds):
                order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
                for variant in order:
                    for model, v in run_child(args, variant).items():
                        ms.setdefault((load, variant, model), []).append(v)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    rows = []
    for load in LOADS:
        for model in dict.fromkeys(m for (_, _, m) in ms):
            unset = ms[load, "unset", model]
            cells = [(median(ms[load, v, model]), paired_ratio(ms[load, v, model], unset))
                     for v in list(VARIANTS)[1:]]
            rows.append([load, model, f"{median(unset):.1f}", *(f"{m:.1f} ({r:.2f}x)" for m, r in cells)])
    print(f"{rounds} rounds; each cell a child process timing {args.calls} rounds after 3 warm-up rounds; "
          "ms per call (paired ratio to unset)")
    print(table(["load", "model", "ms unset", *list(VARIANTS)[1:]], rows))


if __name__ == "__main__":
    main()
