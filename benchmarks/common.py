"""Helpers shared by the benchmark scripts: the machine, interleaved timing, CPU taken by others, tables.

Timings on a shared 2-core machine drift with what else runs, so every script measures the things it compares
in the same run, round-robin (one call of each per round, the order reversed every other round), and reports
medians and *paired* ratios (the median over rounds of the per-round ratio), which cancel slow drifts.
:class:`OthersLoad` reports how much CPU other processes took meanwhile, so a noisy run can be recognised.

Scripts are run from the repository root: ``.venv/bin/python benchmarks/NAME.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """The CPU's model name (from ``lscpu``, else ``/proc/cpuinfo``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> dict[str, str]:
    """CPU, cores, memory and library versions, as printed at the top of every benchmark."""
    import numpy
    import torch

    info = {"cpu": cpu_model(), "cores": str(len(os.sched_getaffinity(0))),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    for mod in ("onnxruntime", "onnx", "cv2"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "not installed"
    try:
        with open("/proc/loadavg") as f:
            info["loadavg"] = " ".join(f.read().split()[:3])
    except OSError:
        pass
    return info


def print_machine(title: str) -> None:
    """Header line of a benchmark's output: what ran where."""
    info = machine_description()
    print(f"# {title}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))


def _busy_jiffies() -> int | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]) - idle - steal


class OthersLoad:
    """Context manager: the share of the machine's CPU time used by *other* processes while it was open.

    Busy time of all cores (``/proc/stat``) minus this process's own CPU time (``os.times``, children
    included), over wall time times cores. 0% means the benchmark had the machine to itself.
    """

    def __enter__(self) -> Self:
        self._t, self._busy, self._own = time.perf_counter(), _busy_jiffies(), self._own_seconds()
        self.share: float | None = None
        return self

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __exit__(self, *exc) -> None:
        busy = _busy_jiffies()
        if busy is None or self._busy is None:
            return
        wall = time.perf_counter() - self._t
        hz = os.sysconf("SC_CLK_TCK")
        others = (busy - self._busy) / hz - (self._own_seconds() - self._own)
        self.share = max(0.0, others) / max(wall * os.cpu_count(), 1e-9)

    def __str__(self) -> str:
        return "n/a" if self.share is None else f"{self.share:.0%}"


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2, desc: str = "timing",
               cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds per call of each function: ``warmup`` untimed rounds, then ``rounds`` timed ones.

    One call of every function per round; the order is reversed every other round, so no function always
    runs right after the same neighbour. ``cpu``, if given, receives this process's CPU seconds per call
    (``time.process_time``): with one thread the figure least disturbed by other processes, since time spent
    descheduled is not counted; with more threads it also counts threads spinning while they wait.
    """
    from tqdm import tqdm

    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = cpu if cpu is not None else {}
    for r in tqdm(range(warmup + rounds), desc=desc, unit="round", leave=False, dynamic_ncols=True):
        for name in (names if r % 2 == 0 else names[::-1]):
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
                cpu_times.setdefault(name, []).append(time.process_time() - c)
    return times


def others_share(seconds: float = 3.0) -> float | None:
    """Share of the machine's CPU used by other processes over the next ``seconds`` (this one sleeps)."""
    with OthersLoad() as load:
        time.sleep(seconds)
    return load.share


def wait_quiet(max_wait: float, threshold: float = 0.15) -> None:
    """Wait up to ``max_wait`` seconds for other processes to use under ``threshold`` of the CPU; says how it
    went (timings of a busy machine are still printed, with the load they ran under)."""
    if max_wait <= 0:
        return
    start = time.perf_counter()
    while True:
        share = others_share()
        if share is None or share < threshold:
            print(f"machine quiet enough: other processes use {share if share is None else f'{share:.0%}'}")
            return
        if time.perf_counter() - start > max_wait:
            print(f"machine still busy after {max_wait:.0f} s (other processes use {share:.0%}); "
                  "measuring anyway")
            return
        time.sleep(10)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``: how many times ``b`` ``a`` takes, drift cancelled."""
    return statistics.median(x / y for x, y in zip(a, b))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into BENCHMARKS.md as is); floats keep the format they were given."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--threads``, ``--rounds``, ``--quick``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2,
                   help="PyTorch / ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default per benchmark)")
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not a measurement")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long for other processes to leave the CPU mostly idle")
    return p


def setup_torch(threads: int) -> None:
    """Fix the thread count and turn off autograd for timing."""
    import torch

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)


def assets_env() -> None:
    """Point ``INVISMAP_ASSETS`` at ``../shared/assets`` when it is unset and the folder exists."""
    if not os.environ.get("INVISMAP_ASSETS"):
        cand = os.path.join(os.path.dirname(REPO), "shared", "assets")
        if os.path.isdir(cand):
            os.environ["INVISMAP_ASSETS"] = cand


def add_soup_scoring_args(p: argparse.ArgumentParser) -> None:
    """The arguments of the scripts that score soups of distilled students (soup.py, class_fold.py)."""
    p.add_argument("--detectors", nargs="+", required=True, help="thermal_detector.pt files, --soup per soup")
    p.add_argument("--soup", type=int, default=3, help="students per soup")
    p.add_argument("--data", nargs="+", required=True, help="pair manifests (manifest.csv or its folder)")
    p.add_argument("--select", default="train", help="the split whose night pairs choose ('' to skip)")
    p.add_argument("--split", default="test", help="the split reported")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--tta-sizes", type=int, nargs="*", default=[])
    p.add_argument("--iou", type=float, default=0.45,
                   help="NMS IoU threshold (msrs.yaml's evaluate.nms_iou: 0.4; earlier tables: 0.45)")
    p.add_argument("--n-boot", type=int, default=1000)


def labelled_thermal_set(manifest, split: str, condition: str, n_boot: int) -> tuple | None:
    """``(pairs, thermal images, truth, weights)`` of ``manifest``'s thermally labelled pairs of ``split`` and
    ``condition`` (None if there are none): thermal labels in pixels, and ``(1 + n_boot, n)`` bootstrap
    weights over the images (the first row all ones), to share between every detector scored on them."""
    import numpy as np

    from invismap.data.manifest import read_yolo_labels, yolo_to_xyxy
    from invismap.invisibility.bootstrap import resample_weights
    from invismap.io import read_thermal

    pairs = [p for p in manifest.select(condition=condition, split=split) if p.thermal_labels]
    if not pairs:
        return None
    images = [read_thermal(p.thermal) for p in pairs]
    truth = [yolo_to_xyxy(read_yolo_labels(p.thermal_labels), im.shape[1], im.shape[0])
             for p, im in zip(pairs, images)]
    weights = np.vstack([np.ones(len(pairs)), resample_weights([np.arange(len(pairs))], n_boot)])
    return pairs, images, truth, weights


def thermal_test_sets(data: Sequence[str], select: str, split: str, n_boot: int) -> list[tuple]:
    """Every labelled set a soup benchmark scores: ``(name, pairs, thermal images, truth, weights)``.

    ``select``'s night pairs of the first dataset ("select night", the column that chooses; ``""`` to skip)
    and ``split``'s day and night pairs of each dataset (named ``"FOLDER SPLIT CONDITION"``), each as
    :func:`labelled_thermal_set`.
    """
    from invismap.data.manifest import load_manifest

    sets = []
    for data_path in data:
        manifest, folder = load_manifest(data_path), os.path.basename(os.path.normpath(data_path))
        wanted = [(select, "night")] if select and data_path == data[0] else []
        for s, cond in wanted + [(split, c) for c in ("day", "night")]:
            found = labelled_thermal_set(manifest, s, cond, n_boot)
            if found is not None:
                sets.append(("select night" if s == select else f"{folder} {s} {cond}", *found))
    return sets
