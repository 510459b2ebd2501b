"""Run every fuzz target of ``tests/test_fuzz.py`` for a time budget each and report what it found.

    python tools/fuzz.py                         # 120 s per target, all targets
    python tools/fuzz.py --seconds 10 --targets manifest letterbox_round_trip --json fuzz.json

Each target is run in chunks of hypothesis examples (a fresh random seed per chunk) until its budget is spent.
An input either passes the target's checks or is refused with the intended one-line ``InvismapError``;
anything else is a crash: hypothesis shrinks it to a minimal example, which is printed, and the target stops
there.
Exit status 1 when any target crashed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_targets():
    """The ``tests/test_fuzz.py`` module (its ``TARGETS`` and ``fuzz``), imported by path."""
    spec = importlib.util.spec_from_file_location("invismap_fuzz_targets", REPO / "tests" / "test_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_target(module, name: str, seconds: float, chunk: int) -> dict:
    """Fuzz ``name`` for ``seconds``; returns examples run, outcome counts and the crash, if any."""
    outcomes: Counter = Counter()
    start, chunks, crash = time.monotonic(), 0, None
    while time.monotonic() - start < seconds:
        try:
            module.fuzz(name, max_examples=chunk, outcomes=outcomes)
        except Exception as e:  # noqa: BLE001 - a crash: hypothesis re-raises the shrunk example's error
            notes = "\n".join(getattr(e, "__notes__", []))
            crash = {"error": f"{type(e).__name__}: {str(e)[:500]}", "example": notes[:2000],
                     "traceback": "".join(traceback.format_exception(e))[-3000:]}
            break
        chunks += 1
    return {"target": name, "seconds": round(time.monotonic() - start, 1), "examples": sum(outcomes.values()),
            "chunks": chunks, "outcomes": dict(outcomes), "crash": crash}


def main(argv: list[str] | None = None) -> int:
    module = load_targets()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="time budget per target (default 120)")
    p.add_argument("--targets", nargs="+", choices=sorted(module.TARGETS), help="default: all")
    p.add_argument("--chunk", type=int, default=300, help="examples per hypothesis run (default 300)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results = []
    print(f"{'target':<26} {'seconds':>8} {'examples':>9} {'accepted':>9} {'refused':>8}  crash", flush=True)
    for name in args.targets or list(module.TARGETS):
        r = run_target(module, name, args.seconds, args.chunk)
        results.append(r)
        o = r["outcomes"]
        crash = r["crash"]["error"] if r["crash"] else "none"
        print(f"{name:<26} {r['seconds']:>8.1f} {r['examples']:>9} {o.get('ok', 0):>9} "
              f"{o.get('refused', 0):>8}  {crash}", flush=True)
        if r["crash"]:
            print(r["crash"]["example"], r["crash"]["traceback"], sep="\n", file=sys.stderr, flush=True)
    if args.json:
        report = {"seconds_per_target": args.seconds, "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(r["crash"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
