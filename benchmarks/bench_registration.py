"""Registration and warping throughput (pairs/s) on real 640x480 MSRS pairs.

In memory, round-robin over the same pairs (see ``common.interleave``), OpenCV with ``--threads`` threads:

- full registration of a raw pair (undistort + homography folded into one ``cv2.remap`` per image) with the
  remap maps computed once (:func:`~invismap.registration.warp.color_maps`), and recomputed for every pair;
- a global offset correction (``warp_image``, one ``cv2.warpPerspective``);
- the residual displacement of a registered pair (edge images, DIS flow forward and backward, trust mask);

and, on files, ``register_manifest`` (read PNGs, remap, write PNGs and labels), the ``invismap register``
stage. The calibration is a plausible rig (barrel distortion on both cameras, a small rotation/scale/shift
homography), since MSRS pairs come registered already; the cost does not depend on its values.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_registration.py [--data runs/msrs] [--pairs 16] [--rounds N] [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import (
    OthersLoad,
    assets_env,
    base_parser,
    interleave,
    median,
    paired_ratio,
    print_machine,
    table,
    wait_quiet,
)


def rig(size: tuple[int, int] = (640, 480)):
    """A calibration with distortion on both cameras and a 1 degree, 2% scale, (6, -4) px homography."""
    from invismap.registration.calibration import CameraModel, RigCalibration

    w, h = size
    K = np.array([[620.0, 0, (w - 1) / 2], [0, 620.0, (h - 1) / 2], [0, 0, 1]])
    dist = np.array([-0.12, 0.03, 0.0005, -0.0003, 0.0])
    a, s = np.deg2rad(1.0), 1.02
    H = np.array([[s * np.cos(a), -s * np.sin(a), 6.0], [s * np.sin(a), s * np.cos(a), -4.0], [0, 0, 1]])
    cam = CameraModel(K, dist, (w, h))
    return RigCalibration(cam, cam, H, H_method="manual")


def load_pairs(data: str, count: int):
    """The first ``count`` pairs of the manifest: ``(manifest subset, [(rgb, thermal), ...])``."""
    from invismap.data.dataset import load_pair
    from invismap.data.manifest import Manifest, load_manifest

    manifest = load_manifest(data)
    subset = Manifest(manifest.samples[:count], manifest.root)
    return subset, [load_pair(s) for s in subset]


def in_memory_table(pairs, rounds: int) -> str:
    """ms per pair and pairs/s of each in-memory operation, over all ``pairs`` per call."""
    from invismap.registration.displacement import dense_displacement
    from invismap.registration.warp import (
        color_maps,
        offset_correction,
        thermal_maps,
        undistort_thermal,
        warp_color_to_thermal,
        warp_image,
    )

    calib = rig((pairs[0][0].shape[1], pairs[0][0].shape[0]))
    mc, mt = color_maps(calib), thermal_maps(calib)
    registered = [(warp_color_to_thermal(c, calib, maps=mc), undistort_thermal(t, calib, maps=mt))
                  for c, t in pairs]
    H = offset_correction(1.5, -3.0)

    def each(fn):
        return lambda: [fn(c, t) for c, t in pairs]

    calls = {
        "register pair, maps computed once": each(lambda c, t: (warp_color_to_thermal(c, calib, maps=mc),
                                                                undistort_thermal(t, calib, maps=mt))),
        "register pair, maps per pair": each(lambda c, t: (warp_color_to_thermal(c, calib),
                                                           undistort_thermal(t, calib))),
        "offset correction (warpPerspective, color)": each(lambda c, t: warp_image(c, H)),
        "displacement (edges + DIS flow fwd/bwd + mask)":
            lambda: [dense_displacement(t, c) for c, t in registered],
    }
    times = interleave(calls, rounds, warmup=1, desc="registration")
    ref = times["register pair, maps computed once"]
    n = len(pairs)
    rows = [[name, f"{1000 * median(ts) / n:.2f}", f"{n / median(ts):.1f}", f"{paired_ratio(ts, ref):.2f}x"]
            for name, ts in times.items()]
    return table(["operation (640x480 pair)", "ms/pair median", "pairs/s", "x register (maps once)"], rows)


def file_table(manifest, pairs, repeats: int) -> str:
    """``register_manifest`` on files (read, remap both images, write PNGs and labels), and its image I/O
    alone (the same reads and atomic PNG writes without the remap), interleaved."""
    from invismap.io import read_color, write_image
    from invismap.registration.run import read_thermal_raw, register_manifest

    calib = rig()
    n = len(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10 ** 6))
        calls = {
            "register_manifest (read, remap, write PNG + labels)":
                lambda: register_manifest(manifest, Path(tmp) / f"r{next(runs)}", calib=calib,
                                          progress=False),
            "read both PNGs of each pair":
                lambda: [(read_color(s.color), read_thermal_raw(s.thermal)) for s in manifest],
            "write both PNGs of each pair (io.write_image)":
                lambda: [(write_image(Path(tmp) / "c.png", c), write_image(Path(tmp) / "t.png", t))
                         for c, t in pairs],
        }
        times = interleave(calls, repeats, warmup=1, desc="files")
    ref = times["register_manifest (read, remap, write PNG + labels)"]
    rows = [[name, f"{1000 * median(ts) / n:.1f}", f"{n / median(ts):.1f}", f"{paired_ratio(ts, ref):.0%}"]
            for name, ts in times.items()]
    return table(["stage (files)", "ms/pair median", "pairs/s", "share of register_manifest"], rows)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/msrs", help="imported pair dataset")
    p.add_argument("--pairs", type=int, default=16, help="pairs per timed call")
    args = p.parse_args()
    assets_env()
    cv2.setNumThreads(args.threads)
    rounds = args.rounds or (2 if args.quick else 10)
    print_machine(f"bench_registration: {args.pairs} MSRS pairs per call, OpenCV {args.threads} threads, "
                  f"{rounds} rounds")
    manifest, pairs = load_pairs(args.data, 4 if args.quick else args.pairs)
    wait_quiet(args.wait_quiet)
    with OthersLoad() as load:
        print(f"\n## in memory\n\n{in_memory_table(pairs, rounds)}")
        print(f"\n## on files\n\n{file_table(manifest, pairs, 1 if args.quick else 5)}")
    print(f"\nCPU used by other processes during the run: {load}")


if __name__ == "__main__":
    main()
