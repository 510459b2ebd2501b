"""Data at scale: the manifest, the import and a short distillation on 1k, 5k and 20k synthetic pairs.

For each size, a pair dataset in the flattened MSRS layout (``vi/``, ``ir/``, ``pairs.csv``; small
160x120 pairs, :mod:`synthetic`) is written to a temporary folder and then, each step in a fresh child
process (peak RSS is the kernel's ``ru_maxrss`` of that child, from ``os.wait4``):

- **import**: ``import_dataset("msrs", ...)`` with ``check="decode"`` (every image decoded, the default)
  and ``check="header"`` (sizes from file headers); seconds of that call;
- **manifest**: ``load_manifest`` after ``import torch, invismap.cli`` (the baseline every command pays);
  its seconds, the growth of that process's RSS over the call, its peak RSS against a child that only
  imports, and the manifest's own size: what the loaded :class:`Manifest` holds by ``tracemalloc`` (in a
  third child). RSS figures hide it (torch's start-up leaves freed memory the load reuses), so the
  ``tracemalloc`` figure is what is subtracted below;
- **distill**: ``invismap distill configs/distill.yaml`` at ``size=160`` for ``--steps`` steps, with the
  config's validation at the end and the t_k calibration, once with the pair cache on (the config's
  default) and once off (``cache=false``). Its peak RSS minus the manifest's own size is what the
  distillation costs besides the manifest: the figure that must not grow with the number of pairs;
- **data time**: the real training loop (``engine.loop.fit``) with 0, 2 and 4 loader workers: the share of
  the steps after the first ``--warmup`` spent between an optimizer step and the next training step
  (waiting for the batch, plus the loop's own bookkeeping); and the peak summed PSS of the process and its
  workers. Each worker count runs ``--rounds`` times (default 2), in alternating order; medians.

Usage (from the repository root; ~6 minutes on a quiet 2-core machine, ~40 under heavy load)::

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000 5000 20000] [--steps 20] [--workers 0 2 4]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, OthersLoad, assets_env, base_parser, median, print_machine, table, wait_quiet

INVISMAP = str(Path(sys.executable).parent / "invismap")
SIZE = 160  # distillation letterbox size: the synthetic pairs' longest side
CONFIG = "configs/distill.yaml"


# --------------------------------------------------------------------------------------------- children

def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """``(peak RSS MiB, wall s, JSON it printed last or {})`` of ``cmd`` run as a child process."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {' | '.join(tail)}")
        out.seek(0)
        lines = [ln for ln in out.read().decode().splitlines() if ln.startswith("{")]
    return usage.ru_maxrss / 1024, wall, json.loads(lines[-1]) if lines else {}


def child(kind: str, *args: str) -> list[str]:
    return [sys.executable, __file__, "--child", kind, *args]


def child_main(kind: str, args: list[str]) -> None:
    """What one child process does; prints one JSON line."""
    import torch  # noqa: F401 - the baseline every invismap command pays

    import invismap.cli  # noqa: F401

    if kind == "baseline":
        print(json.dumps({}))
    elif kind == "import":
        from invismap.data.importers import import_dataset

        src, dst, check = args
        t = time.perf_counter()
        m = import_dataset("msrs", src, dst, progress=False, check=check)
        print(json.dumps({"seconds": time.perf_counter() - t, "pairs": len(m)}))
    elif kind == "load":
        from invismap.data.manifest import load_manifest

        before, t = _status_kib(os.getpid(), "VmRSS"), time.perf_counter()
        m = load_manifest(args[0])
        seconds = time.perf_counter() - t
        print(json.dumps({"seconds": seconds, "pairs": len(m),
                          "rss_growth_mib": (_status_kib(os.getpid(), "VmRSS") - before) / 1024}))
    elif kind == "traced":
        import tracemalloc

        from invismap.data.manifest import load_manifest

        tracemalloc.start()
        m = load_manifest(args[0])
        held, peak = tracemalloc.get_traced_memory()
        print(json.dumps({"held": held, "peak": peak, "pairs": len(m)}))
    elif kind == "data-time":
        print(json.dumps(data_time(args[0], int(args[1]), int(args[2]), int(args[3]))))
    else:
        raise SystemExit(f"unknown child {kind}")


def _kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a ``/proc`` file (0 if the process is gone)."""
    try:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration, ValueError):
        return 0


def _status_kib(pid: int, key: str) -> int:
    return _kib(f"/proc/{pid}/status", key)


def _pss_kib(pid: int) -> int:
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class TreePss:
    """Peak summed PSS (proportional set size: shared pages split between their users) of this process and
    its children (the loader workers), sampled every ``interval`` seconds on a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in [me, *_children(me)]))

    def __enter__(self) -> TreePss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def data_time(manifest: str, workers: int, steps: int, warmup: int) -> dict:
    """Run ``fit`` as ``invismap distill`` would (``size``, ``workers``, no validation) and time, per step,
    the gap between the optimizer step and the next ``training_step`` (the loop waiting for its batch)."""
    import dataclasses

    from invismap.config import load_config
    from invismap.data.dataset import collate_pairs
    from invismap.distill.run import DistillConfig, build_distillation
    from invismap.engine.loop import fit

    cfg = load_config(DistillConfig, os.path.join(REPO, CONFIG),
                      [f"data={manifest}", f"size={SIZE}", f"train.num_workers={workers}"])
    task, train_set, _, _, _ = build_distillation(cfg)
    train = dataclasses.replace(cfg.train, max_steps=steps, eval_every=0, ckpt_every=steps, image_every=0)
    starts: list[float] = []
    ends: list[float] = []
    step_fn = task.training_step
    configure = task.configure_optimizers

    def timed_step(batch):
        starts.append(time.perf_counter())
        return step_fn(batch)

    def configure_timed(cfg_):
        optimizers = configure(cfg_)
        for opt in optimizers.values():
            opt.register_step_post_hook(lambda *_: ends.append(time.perf_counter()))
        return optimizers

    task.training_step, task.configure_optimizers = timed_step, configure_timed
    with tempfile.TemporaryDirectory() as run_dir, TreePss() as pss:
        t = time.perf_counter()
        fit(task, train_set, train, run_dir, collate_fn=collate_pairs, progress=False)
        wall = time.perf_counter() - t
    # step k's period runs from its training_step to the next one; its data gap from the optimizer step
    # that ended step k - 1 to step k's training_step
    gaps = [starts[k] - ends[k - 1] for k in range(max(warmup, 1), len(starts))]
    periods = [starts[k] - starts[k - 1] for k in range(max(warmup, 1), len(starts))]
    return {"workers": workers, "data_share": sum(gaps) / sum(periods), "step_ms": 1000 * median(periods),
            "data_ms": 1000 * median(gaps), "first_batch_s": starts[0] - t, "wall": wall,
            "pss_mib": pss.peak_kib / 1024, "pairs": len(train_set)}


# --------------------------------------------------------------------------------------------- parent

def measure_size(n: int, args, tmp: Path, env: dict[str, str]) -> dict:
    """Every measurement for a dataset of ``n`` pairs (written under ``tmp``)."""
    from synthetic import write_msrs_pairs

    src, out = tmp / f"src{n}", {"pairs": n}
    write_msrs_pairs(src, n)
    for check in ("decode", "header"):
        print(f"  {n} pairs: import, check={check}", file=sys.stderr, flush=True)
        dst = tmp / f"dst{n}_{check}"
        rss, _, res = run_child(child("import", str(src), str(dst), check), env)
        out[f"import_{check}_s"], out[f"import_{check}_rss"] = res["seconds"], rss
    manifest = tmp / f"dst{n}_header" / "manifest.csv"
    out["csv_mib"] = manifest.stat().st_size / 2**20
    print(f"  {n} pairs: manifest", file=sys.stderr, flush=True)
    out["base_rss"] = run_child(child("baseline"), env)[0]
    out["load_rss"], _, res = run_child(child("load", str(manifest)), env)
    out["load_s"], out["load_growth"] = res["seconds"], res["rss_growth_mib"]
    res = run_child(child("traced", str(manifest)), env)[2]
    out["held_mib"], out["traced_peak_mib"] = res["held"] / 2**20, res["peak"] / 2**20
    for cache in ("true", "false"):
        print(f"  {n} pairs: distill, cache={cache}", file=sys.stderr, flush=True)
        cmd = [INVISMAP, "distill", CONFIG, f"data={manifest}", f"size={SIZE}", f"cache={cache}",
               f"train.max_steps={args.steps}", f"train.ckpt_every={args.steps}", "--run",
               str(tmp / f"distill{n}_{cache}")]
        out[f"distill_{cache}_rss"], out[f"distill_{cache}_s"], _ = run_child(cmd, env)
        summary = json.loads((tmp / f"distill{n}_{cache}" / "summary.json").read_text())
        out[f"distill_{cache}_fit"] = summary["seconds"]  # training steps + validation
        out["val_pairs"] = summary["val_pairs"]
    # rounds of 0, 2, 4 workers, then 4, 2, 0, ...: a slow drift of the machine's load hits all alike
    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    for r in range(args.rounds):
        for w in args.workers if r % 2 == 0 else args.workers[::-1]:
            print(f"  {n} pairs: data time, {w} workers, round {r + 1}", file=sys.stderr, flush=True)
            runs[w].append(run_child(child("data-time", str(manifest), str(w), str(args.time_steps),
                                           str(args.warmup)), env)[2])
    out["data_time"] = [{k: median([r[k] for r in rs]) for k in rs[0]} for rs in runs.values()]
    return out


def flat(values: list[float]) -> str:
    """Largest over smallest, as a percentage above 1."""
    return f"{max(values) / min(values) - 1:+.1%}"


def report(results: list[dict], args) -> None:
    rows = [[f"{r['pairs']:,}", f"{r['csv_mib']:.2f}", f"{r['held_mib']:.1f}", f"{r['load_s']:.2f}",
             f"{r['load_growth']:+.1f}", f"{r['load_rss']:.0f} (+{r['load_rss'] - r['base_rss']:.0f})",
             f"{r['import_decode_s']:.1f}", f"{r['import_header_s']:.1f}",
             f"{r['import_decode_rss']:.0f} / {r['import_header_rss']:.0f}"] for r in results]
    print("\n## manifest and import\n")
    print(table(["pairs", "manifest.csv MiB", "manifest held MiB (tracemalloc)", "load s",
                 "RSS growth of the load MiB", "load peak RSS MiB (+ over imports only)",
                 "import s, check=decode", "import s, check=header", "import peak RSS MiB decode / header"],
                rows))
    print(f"\nbaseline (python + torch + invismap CLI imported): {results[0]['base_rss']:.0f} MiB")

    print(f"\n## short distillation ({args.steps} steps, size {SIZE}, batch 8, validation + calibration on "
          "the held-out pairs)\n")
    rows, beyond = [], {"true": [], "false": []}
    for r in results:
        row = [f"{r['pairs']:,}", r["val_pairs"], f"{r['held_mib']:.1f}"]
        for cache in ("true", "false"):
            rss, wall, fit = r[f"distill_{cache}_rss"], r[f"distill_{cache}_s"], r[f"distill_{cache}_fit"]
            beyond[cache].append(rss - r["held_mib"])
            row += [f"{rss:.0f}", f"{rss - r['held_mib']:.0f}", f"{wall:.0f} ({fit:.0f} + {wall - fit:.0f})"]
        rows.append(row)
    headers = ["pairs", "held-out pairs", "manifest MiB", "peak RSS MiB, cache on", "- manifest",
               "wall s (fit + rest)", "peak RSS MiB, cache off", "- manifest", "wall s (fit + rest)"]
    print(table(headers, rows))
    print("fit: the training steps and the validation; rest: start-up, the t_k calibration on the held-out "
          "pairs, writing the checkpoints")
    for cache, label in (("true", "cache on (config default)"), ("false", "cache off")):
        print(f"distill RSS beyond the manifest, {label}: {flat(beyond[cache])} from smallest to largest "
              "(acceptance: within 10%)")

    print(f"\n## data time ({args.time_steps} steps, the first {args.warmup} not counted; median of "
          f"{args.rounds} runs each)\n")
    rows = []
    for r in results:
        for d in r["data_time"]:
            rows.append([f"{r['pairs']:,}", int(d["workers"]), f"{d['step_ms']:.0f}", f"{d['data_ms']:.1f}",
                         f"{d['data_share']:.1%}", f"{d['first_batch_s']:.1f}", f"{d['pss_mib']:.0f}"])
    print(table(["pairs", "workers", "step ms (median)", "data ms (median)", "data share of step",
                 "s to first step", "peak PSS MiB (process + workers)"], rows))
    best = [min(d["data_share"] for d in r["data_time"]) for r in results]
    print("best data share per size: " + ", ".join(f"{r['pairs']:,}: {b:.1%}" for r, b in zip(results, best))
          + " (acceptance: under 30%)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3:])
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000], help="pairs per dataset")
    p.add_argument("--steps", type=int, default=20, help="steps of the short distillation")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="loader workers to time")
    p.add_argument("--time-steps", type=int, default=40, help="steps of each data-time run")
    p.add_argument("--warmup", type=int, default=8, help="first steps of a data-time run not counted")
    p.add_argument("--tmp", default=None, help="folder for the synthetic datasets (default: a temp folder)")
    args = p.parse_args()
    args.rounds = args.rounds or 2
    if args.quick:
        args.sizes, args.steps, args.workers, args.time_steps, args.warmup = [200, 400], 2, [0, 2], 6, 2
        args.rounds = 1
    assets_env()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print_machine(f"bench_scale: sizes {args.sizes}, {args.threads} threads")
    wait_quiet(args.wait_quiet)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, OthersLoad() as load:
        results = []
        for n in args.sizes:
            results.append(measure_size(n, args, Path(tmp), env))
    report(results, args)
    print(f"\nCPU used by other processes during the run: {load}; total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
