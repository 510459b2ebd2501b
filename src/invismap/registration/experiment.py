"""Weak-alignment benchmark: misalign real color/thermal pairs by a known field, measure recovery.

The color image of each real pair is warped by a random smooth displacement field ``g`` (shift + small
rotation + elastic part; :func:`~invismap.registration.synthetic.random_displacement_field`), so that
clean-color content at ``x`` sits at ``x + g(x)`` in the misaligned image. An *estimator* (an
:data:`Estimator`) sees only ``(thermal, misaligned color)`` and returns

* a displacement field ``f`` ``(H, W, 2)`` (its estimate of ``g``), optionally with the mask of pixels it
  trusts: scored by endpoint error and by the misalignment left after warping the color image by ``f``
  (computed exactly from ``g`` and ``f``); or
* an aligned color image ``(H, W, 3)`` (e.g. an AlignGAN generator output): scored by the misalignment
  left, measured with same-modality optical flow.

Real pairs are never perfectly aligned (MSRS has a few pixels of its own, varying over the image), so
every score exists twice: ``abs`` takes the original pair as aligned (and floors at its misalignment),
``rel`` measures against the estimator's own reading of the unperturbed pair, which isolates the recovery
of the *known* part. ``before`` is ``|g|``. Masks: ``edges`` (co-visible edges), ``all`` and, for
estimators that return one, ``trusted``.

Reference estimators (:func:`default_estimators`): ``translation`` (median edge flow),
``homography_ransac`` (MAGSAC on the trusted flow), ``homography_dense`` (least squares on the filled
flow) and ``flow`` (the filled dense flow itself).

Usage (about 2 s per pair on two CPU cores)::

    python -m invismap.registration.experiment --data runs/msrs/manifest.csv --split test --out runs/weak \
        [--aligngan RUN/aligngan.pt]

Example:
    >>> res = weak_alignment_experiment(pairs, default_estimators())  # doctest: +SKIP
    >>> res["summary"]["homography_dense"]["after_abs_share_ge5_edges"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from invismap.data.manifest import evenly
from invismap.registration.displacement import (
    DEFAULT_PARAMS,
    DisplacementParams,
    dense_displacement,
    densify_flow,
    edge_image,
    fit_homography_to_flow,
    homography_flow,
    measure_residual,
    translation_flow,
)
from invismap.registration.synthetic import apply_displacement, random_displacement_field
from invismap.registration.warp import offset_correction, warp_image
from invismap.registry import Registry

__all__ = [
    "DEFAULT_FIELD",
    "ESTIMATORS",
    "Estimator",
    "default_estimators",
    "flow_estimator",
    "homography_estimator",
    "residual_after_flow",
    "run_weak_alignment",
    "translation_estimator",
    "weak_alignment_experiment",
]

log = logging.getLogger(__name__)

Estimator = Callable[[np.ndarray, np.ndarray], object]
"""``(thermal (H, W), misaligned color (H, W, 3))`` to one of: a flow ``(H, W, 2)``; a tuple
``(flow, trusted_mask (H, W))``; or an aligned color image ``(H, W, 3)``."""


# Keyword arguments of random_displacement_field used unless the caller gives its own.
DEFAULT_FIELD = {"max_shift": 6.0, "max_rot_deg": 1.5, "elastic_amp": 2.5, "elastic_sigma": 48.0}


def _memo_displacement(params: DisplacementParams) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """``dense_displacement`` that remembers its last call (estimators built together share it)."""
    memo: dict = {}

    def run(thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if memo.get("thr") is not thermal or memo.get("rgb") is not color:
            memo.update(thr=thermal, rgb=color, out=dense_displacement(thermal, color, params))
        return memo["out"]

    return run


def flow_estimator(params: DisplacementParams = DEFAULT_PARAMS, sigma: float = 48.0,
                   _disp: Callable | None = None) -> Estimator:
    """Dense edge flow from its trusted pixels, filled in smoothly (:func:`densify_flow`, ``sigma`` px).

    Only ~5 % of MSRS pixels are trusted, so the fill dominates; on the MSRS weak-alignment benchmark a
    wide fill (48 px) corrects best (12 px keeps more of the flow's pixel-scale roughness).
    """
    disp = _disp or _memo_displacement(params)

    def est(thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flow, mask = disp(thermal, color)
        return densify_flow(flow, mask, sigma), mask

    return est


def homography_estimator(params: DisplacementParams = DEFAULT_PARAMS, method: str = "ransac",
                         ransac_thresh: float = 2.0, _disp: Callable | None = None) -> Estimator:
    """Homography fitted to the trusted edge flow (:func:`fit_homography_to_flow`); zero flow on failure."""
    disp = _disp or _memo_displacement(params)

    def est(thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flow, mask = disp(thermal, color)
        H, _ = fit_homography_to_flow(flow, mask, method=method, ransac_thresh=ransac_thresh)
        if H is None:
            return np.zeros_like(flow), mask
        return homography_flow(flow.shape[:2], H), mask

    return est


def translation_estimator(params: DisplacementParams = DEFAULT_PARAMS,
                          _disp: Callable | None = None) -> Estimator:
    """Median of the trusted edge flow as one global shift."""
    disp = _disp or _memo_displacement(params)

    def est(thermal: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flow, mask = disp(thermal, color)
        if not mask.any():
            return np.zeros_like(flow), mask
        return translation_flow(flow.shape[:2], float(np.median(flow[..., 0][mask])),
                                float(np.median(flow[..., 1][mask]))), mask

    return est


# name -> factory(params, shared_displacement) -> Estimator: the reference estimators by name
ESTIMATORS: Registry[Callable[[DisplacementParams, Callable], Estimator]] = Registry("alignment estimator")


@ESTIMATORS.register("translation")
def _translation(params: DisplacementParams, disp: Callable) -> Estimator:
    return translation_estimator(params, _disp=disp)


@ESTIMATORS.register("homography_ransac")
def _homography_ransac(params: DisplacementParams, disp: Callable) -> Estimator:
    return homography_estimator(params, "ransac", _disp=disp)


@ESTIMATORS.register("homography_dense")
def _homography_dense(params: DisplacementParams, disp: Callable) -> Estimator:
    return homography_estimator(params, "dense", _disp=disp)


@ESTIMATORS.register("flow")
def _flow(params: DisplacementParams, disp: Callable) -> Estimator:
    return flow_estimator(params, _disp=disp)


def default_estimators(params: DisplacementParams = DEFAULT_PARAMS,
                       names: Sequence[str] | None = None) -> dict[str, Estimator]:
    """The reference estimators (all of :data:`ESTIMATORS`, or ``names``), sharing one flow computation per
    input.

    ``translation`` (median flow), ``homography_ransac`` (MAGSAC on trusted pixels),
    ``homography_dense`` (least squares on the filled field) and ``flow`` (the filled dense field).
    """
    disp = _memo_displacement(params)
    return {name: ESTIMATORS.get(name)(params, disp) for name in (names or ESTIMATORS.names())}


def _solve(target: np.ndarray, f: np.ndarray, iters: int) -> np.ndarray:
    """Positions ``z`` ``(H, W, 2)`` solving ``z + f(z) = target`` by fixed-point iteration."""
    f32 = f.astype(np.float32)
    z = target - f32
    for _ in range(iters):
        fz = cv2.remap(f32, z[..., 0], z[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        z = target - fz
    return z


def _grid(h: int, w: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.stack([xs, ys], -1)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a(x) + b(x + a(x))``: where content ends up after displacement ``a`` then ``b``."""
    h, w = a.shape[:2]
    pos = _grid(h, w) + a
    return a + cv2.remap(b.astype(np.float32), pos[..., 0], pos[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)


def residual_after_flow(g: np.ndarray, f: np.ndarray, f0: np.ndarray | None = None, iters: int = 5
                        ) -> np.ndarray:
    """Misalignment left after warping the misaligned color image by an estimated field ``f``.

    The corrected image is ``C2(z) = C1(z + f(z))``, and clean-color content at ``p`` sits at
    ``p + g(p)`` in ``C1``, hence at the ``z`` solving ``z + f(z) = p + g(p)`` in ``C2``.

    * ``f0`` None (absolute): returns ``z - p``, the offset from the clean color image.
    * ``f0`` given (relative): the estimator's output on the clean pair, ``f0``, defines its own
      corrected clean image ``C0(z) = clean(z + f0(z))``; returns ``z - z0`` with ``z0 + f0(z0) = p``,
      i.e. how far the corrected misaligned image is from the corrected clean one, on ``C0``'s grid.

    Args:
        g: true field ``(H, W, 2)``.
        f: estimated field on the misaligned pair ``(H, W, 2)``.
        f0: estimated field on the clean pair ``(H, W, 2)``, or None.
        iters: fixed-point iterations.

    Returns:
        float32 ``(H, W, 2)`` residual.
    """
    h, w = g.shape[:2]
    grid = _grid(h, w)
    if f0 is None:
        p = grid
        z = _solve(p + g.astype(np.float32), f, iters)
        return (z - p).astype(np.float32)
    # Index by z0 (the grid of the corrected clean image): p = z0 + f0(z0).
    p = grid + f0.astype(np.float32)
    gp = cv2.remap(g.astype(np.float32), p[..., 0], p[..., 1], cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)
    z = _solve(p + gp, f, iters)
    return (z - grid).astype(np.float32)


def _stats(v: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    n = np.hypot(v[..., 0], v[..., 1])[mask]
    if not n.size:
        return float("nan"), float("nan")
    return float(n.mean()), float((n >= 5).mean())


def _split(out: object) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(out, tuple):
        return np.asarray(out[0]), (None if out[1] is None else np.asarray(out[1], bool))
    return np.asarray(out), None


def _check_output(name: str, out: np.ndarray, h: int, w: int) -> str:
    if out.shape == (h, w, 2):
        return "flow"
    if out.shape[:2] == (h, w) and out.ndim in (2, 3):
        return "image"
    raise ValueError(f"estimator '{name}' returned shape {out.shape}, expected ({h}, {w}, 2) flow "
                     f"or ({h}, {w}[, C]) image")


def weak_alignment_experiment(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
                              estimators: dict[str, Estimator], *, trials_per_pair: int = 1,
                              field: dict | None = None, base_offset: tuple[float, float] = (0.0, 0.0),
                              edge_thresh: float = 0.35, border: int = 16, seed: int = 0,
                              progress: bool = False) -> dict:
    """Misalign each pair by a known random field and score every estimator.

    Two ways of scoring, because real pairs are never perfectly aligned to start with:

    * ``abs``: the original pair is taken as aligned. ``epe_abs = |f - g|``; ``after_abs`` is the
      corrected image's offset from the clean color image. Floors at the pair's own misalignment.
    * ``rel``: the estimator's output on the *unperturbed* pair, ``f0``, is its reading of the original
      misalignment; it should then read ``f0`` composed with ``g`` on the misaligned pair.
      ``epe_rel = |f - (f0 + g(x + f0))|``; ``after_rel`` is the offset between the corrected
      misaligned image and the corrected clean image. This isolates recovery of the *known* part.

    For image-returning estimators only ``after_*`` exist (measured with same-modality flow).
    ``floor`` is ``|f0|``: what the estimator reads on the unperturbed pairs (for image estimators, how far
    its output on the unperturbed pair is from that pair's color image). ``after_abs`` cannot fall much
    below it for an estimator that aligns to the thermal image, since the pairs' own offsets are part of
    what ``abs`` counts as error.

    Args:
        pairs: ``(name, thermal (H, W), color (H, W, 3))`` real pairs of equal size.
        estimators: name to :data:`Estimator`.
        trials_per_pair: random fields per pair.
        field: :func:`random_displacement_field` keyword arguments (default :data:`DEFAULT_FIELD`).
        base_offset: known ``(dx, dy)`` offset of the original pairs, removed from the color image first.
        edge_thresh: thermal edge-image threshold of the ``edges`` evaluation mask.
        border: pixels near the border excluded from both evaluation masks.
        seed: seed of the random fields.
        progress: show a tqdm bar.

    Returns:
        dict with ``trials`` (one row per pair and trial, keys ``<estimator>/<metric>_<mask>``) and
        ``summary`` (per estimator and ``before``: the mean over trials of each metric).
    """
    rng = np.random.default_rng(seed)
    fparams = dict(DEFAULT_FIELD if field is None else field)
    rows = []
    pairs = list(pairs)
    bar = tqdm(total=len(pairs) * trials_per_pair, desc="weak alignment", disable=not progress)
    for name, thermal, color in pairs:
        if thermal.shape[:2] != color.shape[:2]:
            raise ValueError(f"{name}: thermal {thermal.shape[:2]} and color {color.shape[:2]} "
                             "differ in size")
        clean = color
        if tuple(base_offset) != (0.0, 0.0):
            clean = warp_image(color, offset_correction(*base_offset), border="replicate")
        h, w = thermal.shape[:2]
        masks = {"all": np.zeros((h, w), bool)}
        masks["all"][border:h - border, border:w - border] = True
        # Co-visible structure: thermal edges with a color edge nearby (alignment is visible there).
        near_rgb = cv2.dilate((edge_image(clean) > edge_thresh).astype(np.uint8), np.ones((11, 11), np.uint8))
        masks["edges"] = masks["all"] & (edge_image(thermal) > edge_thresh) & (near_rgb > 0)
        # Each estimator's reading of the unperturbed pair (its own baseline).
        base = {}
        for est_name, est in estimators.items():
            out0, trust0 = _split(est(thermal, clean))
            kind = _check_output(est_name, out0, h, w)
            # An aligner's floor: what it does to the unperturbed pair (same for every trial of the pair).
            floor = None if kind == "flow" else measure_residual(clean, out0.astype(np.uint8))
            base[est_name] = (kind, out0, trust0, floor)
        for k in range(trials_per_pair):
            g = random_displacement_field((h, w), generator=rng, **fparams)
            moved = apply_displacement(clean, g)
            row: dict = {"name": name, "trial": k, "true_median_dx": float(np.median(g[..., 0])),
                         "true_median_dy": float(np.median(g[..., 1]))}
            for key, m in masks.items():
                row[f"before/after_abs_epe_{key}"], row[f"before/after_abs_share_ge5_{key}"] = _stats(g, m)
            for est_name, est in estimators.items():
                kind, out0, trust0, floor = base[est_name]
                out, trust = _split(est(thermal, moved))
                if _check_output(est_name, out, h, w) != kind:
                    raise ValueError(f"estimator '{est_name}' returned a flow once and an image once")
                if kind == "flow":
                    expected_rel = _compose(out0, g)
                    res_abs = residual_after_flow(g, out)
                    res_rel = residual_after_flow(g, out, out0)
                    emasks = dict(masks)
                    if trust is not None and trust0 is not None:
                        emasks["trusted"] = masks["all"] & trust & trust0
                        row[f"{est_name}/trusted_fraction"] = float(emasks["trusted"].mean())
                    for key, m in emasks.items():
                        row[f"{est_name}/epe_abs_{key}"] = _stats(out - g, m)[0]
                        row[f"{est_name}/epe_rel_{key}"] = _stats(out - expected_rel, m)[0]
                        (row[f"{est_name}/floor_{key}"],
                         row[f"{est_name}/floor_share_ge5_{key}"]) = _stats(out0, m)
                else:
                    res_abs = measure_residual(clean, out.astype(np.uint8))
                    res_rel = measure_residual(out0.astype(np.uint8), out.astype(np.uint8))
                    for key, m in masks.items():
                        (row[f"{est_name}/floor_{key}"],
                         row[f"{est_name}/floor_share_ge5_{key}"]) = _stats(floor, m)
                for key, m in masks.items():
                    (row[f"{est_name}/after_abs_epe_{key}"],
                     row[f"{est_name}/after_abs_share_ge5_{key}"]) = _stats(res_abs, m)
                    (row[f"{est_name}/after_rel_epe_{key}"],
                     row[f"{est_name}/after_rel_share_ge5_{key}"]) = _stats(res_rel, m)
            rows.append(row)
            bar.update(1)
    bar.close()
    summary: dict[str, dict] = {}
    for key in rows[0] if rows else []:
        if "/" not in key:
            continue
        est_name, metric = key.split("/", 1)
        vals = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        summary.setdefault(est_name, {})[metric] = float(np.mean(vals)) if vals else float("nan")
    return {"trials": rows, "summary": summary, "field": fparams, "base_offset": list(base_offset),
            "n_pairs": len(pairs), "trials_per_pair": trials_per_pair,
            "mask": f"'edges': thermal edge image > {edge_thresh} with a color edge within 5 px "
                    f"(co-visible structure); 'all': every pixel; 'trusted': the estimator's own trusted "
                    f"pixels on both runs; all exclude a {border}-px border",
            "metrics": "epe_abs |f-g|; epe_rel |f-(f0+g(x+f0))|; after_abs/after_rel: residual "
                       "misalignment after warping by the estimate (abs: vs clean color, rel: vs the "
                       "estimator's own correction of the clean pair); floor |f0| (image estimators: their "
                       "output on the clean pair vs its color image); share_ge5: share >= 5 px"}


def run_weak_alignment(manifest, out_dir: str | Path | None = None, *, split: str | None = "test",
                       max_pairs: int | None = None, trials_per_pair: int = 1,
                       base_offset: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                       estimators: dict[str, Estimator] | None = None, progress: bool = True) -> dict:
    """Run :func:`weak_alignment_experiment` on a manifest's pairs; write ``weak_alignment.json``.

    Args:
        manifest: a :class:`~invismap.data.manifest.Manifest` (already registered pairs).
        out_dir: folder for ``weak_alignment.json`` (None: write nothing).
        split: only pairs of this split (None: all).
        max_pairs: use at most this many pairs (evenly spaced).
        trials_per_pair: random fields per pair.
        base_offset: known global offset of the original pairs, removed first.
        seed: random seed.
        estimators: default :func:`default_estimators`.
        progress: tqdm bar.

    Returns:
        the experiment's result dict.
    """
    from invismap.io import read_color, read_thermal, write_json

    samples = list(manifest.select(split=split)) if split else list(manifest)
    if max_pairs is not None:
        samples = evenly(samples, max_pairs)
    pairs = ((s.name, read_thermal(s.thermal), read_color(s.color)) for s in samples)
    res = weak_alignment_experiment(pairs, estimators or default_estimators(),
                                    trials_per_pair=trials_per_pair, base_offset=base_offset, seed=seed,
                                    progress=progress)
    if out_dir is not None:
        write_json(Path(out_dir) / "weak_alignment.json", res)
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m invismap.registration.experiment``: run the benchmark on a manifest."""
    from invismap.data.manifest import load_manifest

    p = argparse.ArgumentParser(prog="python -m invismap.registration.experiment",
                                description="Weak-alignment benchmark on real pairs with known misalignment.")
    p.add_argument("--data", required=True, help="manifest.csv of registered pairs")
    p.add_argument("--split", default="test", help="split to use ('all' or '' for every pair)")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--trials", type=int, default=1, help="random fields per pair")
    p.add_argument("--base-offset", type=float, nargs=2, default=(0.0, 0.0), metavar=("DX", "DY"),
                   help="known global color offset of the original pairs, removed first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for weak_alignment.json")
    p.add_argument("--aligngan", metavar="RUN/aligngan.pt", help="also score a trained AlignGAN")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    estimators = default_estimators()
    if a.aligngan:
        from invismap.align.run import aligngan_estimators, load_aligner

        estimators.update(aligngan_estimators(load_aligner(a.aligngan)))
    res = run_weak_alignment(load_manifest(a.data), a.out, split=None if a.split in ("", "all") else a.split,
                             max_pairs=a.max_pairs, trials_per_pair=a.trials,
                             base_offset=tuple(a.base_offset), seed=a.seed, estimators=estimators)
    for est, m in res["summary"].items():
        log.info("%-12s %s", est, "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
