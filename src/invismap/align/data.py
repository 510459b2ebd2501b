"""AlignGAN training samples: the two streams of the paper's Section 3.1.

Every item holds stream ``a`` and, when the dataset has video neighbours, stream ``b``; each stream is a
dict of ``(B, C, S, S)`` crops::

    source       (3, S, S) color image to be moved, 0..1
    edge         (1, S, S) edge map of the target position, 0..1
    target       (3, S, S) the color image at the target position, 0..1
    motion       (2, S, S) real motion cue m (pixels) with target(x) = source(x + m(x))
    valid        (1, S, S) 1 where x + m(x) lies inside the source crop (losses ignore the rest)
    cues         (5, S, S) classical motion cues of the source (:func:`motion_cues`), when asked for

* **Stream a (color -> thermal position).** The edge map is the thermal image's. The target is the color
  image warped onto the thermal image (``target="flow"``: by the dense DIS edge flow of
  :mod:`invismap.registration.displacement`, filled from its trusted pixels, as the paper does;
  ``target="color"``: the color image itself, for datasets that are registered already). Registered
  pairs carry no misalignment to learn, so the source is the color image moved by a random smooth field
  ``g`` (:func:`~invismap.registration.synthetic.random_displacement_field`, the weak misalignment the
  registration benchmark uses); ``m`` follows exactly from ``g`` and the flow.
* **Stream b (color -> nearby color frame).** Only for datasets with timestamps: the source is a color
  frame, the target a color frame at most ``max_gap`` seconds away, the edge map is the target frame's,
  and ``m`` is the same-modality DIS flow between the two frames. MSRS has no timestamps, so it has no
  stream b.

Randomness (crop, flip, field, neighbour pick) is a function of ``(seed, epoch, index)`` only, so runs
are reproducible and resume exactly (see :class:`invismap.engine.loop.StepBatchSampler`).

Example:
    >>> ds = AlignDataset(load_manifest("runs/msrs"), crop=256)  # doctest: +SKIP
    >>> ds[0]["a"]["source"].shape  # doctest: +SKIP
    torch.Size([3, 256, 256])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from invismap.data.dataset import CACHE_BYTES, BudgetCache, load_pair
from invismap.data.manifest import Manifest
from invismap.errors import InvismapError
from invismap.io import read_color
from invismap.registration.displacement import (
    dense_displacement,
    densify_flow,
    edge_image,
    fit_homography_to_flow,
    homography_flow,
    measure_residual,
)
from invismap.registration.synthetic import apply_displacement, random_displacement_field

__all__ = ["AlignDataset", "FieldConfig", "compose_flows", "find_neighbours", "motion_cues", "remap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldConfig:
    """Random weak misalignment applied to the source of stream a (see ``random_displacement_field``).

    Slightly wider than the registration benchmark's default field (6 px, 1.5 deg, 2.5 px) so that the
    benchmark's fields lie inside the training distribution.
    """

    max_shift: float = 7.0
    max_rot_deg: float = 1.75
    elastic_amp: float = 3.0
    elastic_sigma: float = 48.0
    p_identity: float = 0.05  # share of items left unmoved (the aligner must also leave aligned pairs)


def remap(image: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """``out(x) = image(x + flow(x))`` (bilinear); ``flow`` is ``(H, W, 2)`` pixels."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border)


def compose_flows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a(x) + b(x + a(x))``: sampling by ``a`` from an image that samples by ``b``."""
    return (a + remap(b.astype(np.float32), a.astype(np.float32))).astype(np.float32)


def motion_cues(target_image: np.ndarray, source: np.ndarray, sigma: float = 48.0) -> np.ndarray:
    """Classical motion cues for Gm: where the source's content sits, from DIS flow on edge images.

    Channels: the homography fitted to the filled edge flow (``fit_homography_to_flow(method="dense")``,
    the registration baseline ``homography_dense``) as ``dx, dy``; the filled edge flow itself
    (:func:`densify_flow`, ``sigma`` px) as ``dx, dy``; the local density of trusted flow pixels in 0..1.

    Args:
        target_image: ``(H, W)`` thermal image or ``(H, W, 3)`` color frame at the target position.
        source: ``(H, W, 3)`` color image to be moved.
        sigma: fill width, pixels.

    Returns:
        float32 ``(H, W, 5)``; with ``target(x) ~ source(x + cue(x))`` for both flows. All zero when the
        edge flow trusts no pixel.
    """
    flow, mask = dense_displacement(target_image, source)
    h, w = mask.shape
    out = np.zeros((h, w, 5), np.float32)
    if not mask.any():
        return out
    out[..., 2:4] = densify_flow(flow, mask, sigma)
    H, _ = fit_homography_to_flow(flow, mask, method="dense", sigma=sigma / 2)
    out[..., 0:2] = homography_flow((h, w), H) if H is not None else out[..., 2:4]
    # ~5 % of pixels are trusted on MSRS: a local share of 10 % counts as fully supported.
    out[..., 4] = np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 8.0) * 10, 0, 1)
    return out


def _cues_to_grid(cues: np.ndarray, stride: int = 4) -> np.ndarray:
    """Store cues at 1/stride resolution (they are smooth); :func:`_cues_from_grid` undoes it."""
    h, w = cues.shape[:2]
    return cv2.resize(cues, (max(w // stride, 1), max(h // stride, 1)), interpolation=cv2.INTER_AREA)


def _cues_from_grid(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def find_neighbours(manifest: Manifest, max_gap: float) -> list[tuple[int, int]]:
    """``(i, j)`` pairs of samples whose timestamps differ by at most ``max_gap`` seconds (``i != j``).

    Each timestamped sample is paired with its previous and next frame in time (when close enough).
    Samples without a timestamp are ignored. Sorted by ``i``.
    """
    timed = sorted((s.timestamp, i) for i, s in enumerate(manifest) if s.timestamp is not None)
    out = []
    for k, (t, i) in enumerate(timed):
        for kk in (k - 1, k + 1):
            if 0 <= kk < len(timed) and abs(timed[kk][0] - t) <= max_gap:
                out.append((i, timed[kk][1]))
    return sorted(out)


@dataclass
class _Pair:
    rgb: np.ndarray  # (H, W, 3) uint8
    thr: np.ndarray  # (H, W) uint8
    edge_thr: np.ndarray  # (H, W) float32 thermal edge map
    target: np.ndarray  # (H, W, 3) uint8 color at the thermal position
    base_flow: np.ndarray | None  # (H, W, 2) target(x) = rgb(x + base_flow(x)); None = zero


@dataclass
class _Neighbour:
    source: np.ndarray
    target: np.ndarray
    edge: np.ndarray
    motion: np.ndarray
    cues: np.ndarray | None  # (H, W, 5) float32


@dataclass
class _Moved:
    source: np.ndarray  # (H, W, 3) uint8: the pair's color image moved by g
    g: np.ndarray  # (H, W, 2) float16: color content at x sits at x + g(x) in source
    cues: np.ndarray | None  # motion cues at 1/4 resolution


def _flip(x: np.ndarray | None, is_flow: bool = False) -> np.ndarray | None:
    if x is None:
        return None
    out = np.ascontiguousarray(x[:, ::-1])
    if is_flow:
        out[..., 0] *= -1
    return out


def _valid(motion: np.ndarray) -> np.ndarray:
    h, w = motion.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    px, py = xs + motion[..., 0], ys + motion[..., 1]
    return ((px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)).astype(np.float32)


def _tensor(x: np.ndarray, scale: float = 1.0) -> torch.Tensor:
    x = x[..., None] if x.ndim == 2 else x
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float().mul_(scale)


def _stream(source, edge, target, motion, cues=None) -> dict[str, torch.Tensor]:
    out = {"source": _tensor(source, 1 / 255), "edge": _tensor(edge), "target": _tensor(target, 1 / 255),
           "motion": _tensor(motion), "valid": _tensor(_valid(motion))}
    if cues is not None:
        out["cues"] = _tensor(cues)
    return out


def _flip_cues(c: np.ndarray | None) -> np.ndarray | None:
    if c is None:
        return None
    out = np.ascontiguousarray(c[:, ::-1])
    out[..., 0] *= -1
    out[..., 2] *= -1
    return out


@dataclass
class AlignDataset(Dataset):
    """Both AlignGAN streams over a manifest of (registered or weakly aligned) pairs.

    Args:
        manifest: the pairs (color and thermal of equal size).
        crop: side of the square training crops (pixels); must fit in every image.
        target: ``"flow"`` (color warped onto thermal by dense edge flow) or ``"color"``.
        misalign: random misalignment of stream a's source.
        hflip: probability of a horizontal flip (both streams, all images and flows alike).
        neighbours: ``"auto"`` (stream b when timestamps give neighbour pairs), ``"off"``.
        max_gap: largest time gap (s) between neighbour frames.
        flow_sigma: fill width (pixels) of :func:`densify_flow` for ``target="flow"`` and the cues.
        cues: add the classical :func:`motion_cues` of each source (for a Gm with a prior).
        variants: misaligned copies kept per pair: epoch ``e`` uses copy ``e % variants`` (moving the
            full image and computing its cues costs ~0.3 s, so copies are made once and reused; crops
            and flips still change every epoch).
        seed: base seed of every random draw.
        cache: keep decoded pairs, misaligned copies and flows in memory, up to
            :data:`~invismap.data.dataset.CACHE_BYTES` of them (later ones are computed each time).
    """

    manifest: Manifest
    crop: int = 256
    target: str = "color"
    misalign: FieldConfig = field(default_factory=FieldConfig)
    hflip: float = 0.5
    neighbours: str = "auto"
    max_gap: float = 1.0
    flow_sigma: float = 48.0
    cues: bool = True
    variants: int = 3
    seed: int = 0
    cache: bool = True

    def __post_init__(self):
        if len(self.manifest) == 0:
            raise InvismapError("AlignGAN dataset is empty: no pairs match the selected split")
        if self.target not in ("flow", "color"):
            raise InvismapError(f"align target must be 'flow' or 'color', got {self.target!r}")
        if self.variants < 1:
            raise InvismapError(f"variants must be >= 1, got {self.variants}")
        if self.neighbours not in ("auto", "off"):
            raise InvismapError(f"neighbours must be 'auto' or 'off', got {self.neighbours!r}")
        self.pairs_b = find_neighbours(self.manifest, self.max_gap) if self.neighbours == "auto" else []
        self._cache = BudgetCache(CACHE_BYTES if self.cache else 0)

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def has_stream_b(self) -> bool:
        return bool(self.pairs_b)

    def _pair(self, i: int) -> _Pair:
        if i in self._cache:
            return self._cache[i]
        s = self.manifest[i]
        rgb, thr = load_pair(s)
        if min(thr.shape) < self.crop:
            raise InvismapError(f"{s.thermal}: image {thr.shape[1]}x{thr.shape[0]} smaller than the "
                                f"training crop {self.crop} (lower 'crop')")
        e_thr = edge_image(thr)
        if self.target == "flow":
            flow, mask = dense_displacement(thr, rgb)
            base = densify_flow(flow, mask, self.flow_sigma)
            item = _Pair(rgb, thr, e_thr, remap(rgb, base), base)
        else:
            item = _Pair(rgb, thr, e_thr, rgb, None)
        self._cache.put(i, item)
        return item

    def _neighbour(self, k: int) -> _Neighbour:
        key = ("b", k)
        if key in self._cache:
            return self._cache[key]
        i, j = self.pairs_b[k]
        src, tgt = read_color(self.manifest[i].color), read_color(self.manifest[j].color)
        if src.shape != tgt.shape:
            raise InvismapError(f"{self.manifest[j].color}: neighbour frame of {self.manifest[i].name} has "
                                f"another size")
        # measure_residual(reference, moved) is the DIS flow d with reference(x) ~ moved(x + d(x)).
        item = _Neighbour(src, tgt, edge_image(tgt), measure_residual(tgt, src).astype(np.float32),
                          motion_cues(tgt, src, self.flow_sigma) if self.cues else None)
        self._cache.put(key, item)
        return item

    def _crop_origin(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        return int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))

    def _moved(self, i: int, v: int) -> _Moved:
        """Copy ``v`` of pair ``i``'s color image, moved by its own random field (cached)."""
        key = ("a", i, v)
        if key in self._cache:
            return self._cache[key]
        p = self._pair(i)
        h, w = p.thr.shape
        f = self.misalign
        rng = np.random.default_rng((self.seed, 1, v, i))
        g = random_displacement_field((h, w), max_shift=f.max_shift, max_rot_deg=f.max_rot_deg,
                                      elastic_amp=f.elastic_amp, elastic_sigma=f.elastic_sigma, generator=rng)
        if rng.random() < f.p_identity:
            g[...] = 0
        moved = apply_displacement(p.rgb, g)
        cues = _cues_to_grid(motion_cues(p.thr, moved, self.flow_sigma)) if self.cues else None
        item = _Moved(moved, g.astype(np.float16), cues)
        self._cache.put(key, item)
        return item

    def _stream_a(self, i: int, epoch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        p = self._pair(i)
        mv = self._moved(i, epoch % self.variants)
        h, w = p.thr.shape
        source, g = mv.source, mv.g.astype(np.float32)
        cues = _cues_from_grid(mv.cues, h, w) if mv.cues is not None else None
        edge, target, base = p.edge_thr, p.target, p.base_flow
        if rng.random() < self.hflip:
            source, edge, target = _flip(source), _flip(edge), _flip(target)
            g, base, cues = _flip(g, True), _flip(base, True), _flip_cues(cues)
        # target(x) = rgb(x + base(x)), and rgb content at p sits at p + g(p) in the source.
        motion = g if base is None else compose_flows(base, g)
        y0, x0 = self._crop_origin(h, w, rng)
        sl = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        return _stream(source[sl], edge[sl], target[sl], motion[sl], None if cues is None else cues[sl])

    def _stream_b(self, k: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        n = self._neighbour(k)
        src, tgt, edge, motion, cues = n.source, n.target, n.edge, n.motion, n.cues
        if rng.random() < self.hflip:
            src, tgt, edge, motion = _flip(src), _flip(tgt), _flip(edge), _flip(motion, True)
            cues = _flip_cues(cues)
        h, w = edge.shape
        if min(h, w) < self.crop:
            raise InvismapError(f"neighbour frames {w}x{h} smaller than the training crop {self.crop}")
        y0, x0 = self._crop_origin(h, w, rng)
        sl = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        return _stream(src[sl], edge[sl], tgt[sl], motion[sl], None if cues is None else cues[sl])

    def __getitem__(self, index: int) -> dict:
        # Indices past the end select a later epoch's draw (engine.loop.StepBatchSampler's convention).
        epoch, i = divmod(int(index), len(self.manifest))
        rng = np.random.default_rng((self.seed, epoch, i))
        item = {"name": self.manifest[i].name, "a": self._stream_a(i, epoch, rng)}
        if self.pairs_b:
            item["b"] = self._stream_b(int(rng.integers(len(self.pairs_b))), rng)
        return item
