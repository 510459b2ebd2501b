"""Seed-to-seed spread of a map's headline figures: mean ± std over runs that differ only in their seed.

    python tools/seed_spread.py runs/msrs runs/msrs-seed1 runs/msrs-seed2 \\
        [--map predictor] [--file invisibility.json]

Each RUN is an ``invismap run`` output folder (its ``eval_maps/<file>`` is read). A run for another seed is
the same config with ``predictor.train.seed=N`` (copy the folder first and only the predictor and what
follows re-run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ("coverage_35.9", "coverage_25", "pixel_auroc", "missed_vs_detected", "invisible_vs_visible",
        "missed_vs_detected_object", "invisible_vs_visible_object")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (one per seed)")
    p.add_argument("--map", default="predictor", help="which map (default predictor)")
    p.add_argument("--file", default="invisibility.json",
                   help="eval_maps JSON (e.g. invisibility_roadscene.json)")
    args = p.parse_args(argv)
    results = [json.loads((Path(r) / "eval_maps" / args.file).read_text())[args.map] for r in args.runs]
    print(f"{args.map} in {args.file}, {len(results)} runs: mean ± std (min .. max)")
    for cond in results[0]["conditions"]:
        for key in KEYS:
            v = np.array([np.nan if (r["conditions"][cond]["metrics"].get(key) or {}).get("value") is None
                          else r["conditions"][cond]["metrics"][key]["value"] for r in results])
            if np.isnan(v).all():
                continue
            std = np.nanstd(v, ddof=1) if len(v) > 1 else 0
            print(f"  {cond:<6} {key:<28} {np.nanmean(v):.3f} ± {std:.3f} "
                  f"({np.nanmin(v):.3f} .. {np.nanmax(v):.3f})")
    for label, get in (("day/night overlap", lambda r: (r.get("day_vs_night") or {}).get("overlap")),
                       ("frame AUROC, pooled", lambda r: r["pooled"]["metrics"]["frame_auroc"]["value"])):
        v = np.array([np.nan if get(r) is None else get(r) for r in results], float)
        if not np.isnan(v).all():
            std = np.nanstd(v, ddof=1) if len(v) > 1 else 0
            print(f"  {'all':<6} {label:<28} {np.nanmean(v):.3f} ± {std:.3f}")


if __name__ == "__main__":
    main()
