"""Label-free baseline invisibility maps computed from the color image alone.

A learned map must beat what the color image says about itself. Two obvious cues:

- :func:`darkness_map`: dark regions hide objects, so score = 1 - local mean luminance;
- :func:`local_contrast_map`: flat regions (low local contrast) hide objects, whatever their brightness,
  so score = 1 - local standard deviation of luminance / a "fully visible" contrast.

Both use BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of the gamma-encoded 8-bit image, scaled to
[0, 1], and a Gaussian window of ``sigma = 2%`` of the image width (12.8 px at 640 px): about the size of a
distant pedestrian, so the maps describe object-sized neighbourhoods rather than single pixels.

Example:
    >>> score = darkness_map(rgb)  # doctest: +SKIP
"""

from __future__ import annotations

import cv2
import numpy as np

SIGMA_FRACTION = 0.02  # Gaussian sigma as a fraction of the image width
FULL_CONTRAST = 0.10  # local luminance std (on a 0..1 scale) at and above which a region is fully visible


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image: ``(H, W, 3)`` -> ``(H, W)`` float32 in [0, 1]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"color image must be uint8, got {rgb.dtype}")
    if rgb.ndim == 2:
        return rgb.astype(np.float32) / 255.0
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"color image must be (H, W, 3) RGB, got shape {rgb.shape}")
    weights = np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    return rgb.astype(np.float32) @ weights


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    # BORDER_REFLECT keeps the window's weights summing to 1 at the image edges
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _sigma(width: int, sigma_fraction: float) -> float:
    if sigma_fraction <= 0:
        raise ValueError(f"sigma_fraction must be positive, got {sigma_fraction}")
    return max(sigma_fraction * width, 0.5)


def darkness_map(rgb: np.ndarray, sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """1 - Gaussian-smoothed luminance.

    Args:
        rgb: ``(H, W, 3)`` RGB uint8 (``(H, W)`` gray is accepted).
        sigma_fraction: Gaussian sigma as a fraction of the image width.

    Returns:
        ``(H, W)`` float32 in [0, 1]: 1 on a black image, 0 on a white one.

    Example:
        >>> float(darkness_map(np.zeros((4, 4, 3), np.uint8)).max())
        1.0
    """
    y = luminance(rgb)
    out = 1.0 - _blur(y, _sigma(y.shape[1], sigma_fraction))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def local_contrast_map(rgb: np.ndarray, sigma_fraction: float = SIGMA_FRACTION,
                       full_contrast: float = FULL_CONTRAST) -> np.ndarray:
    """1 - normalised local standard deviation of luminance (low contrast: objects cannot stand out).

    The local std is ``sqrt(G*Y^2 - (G*Y)^2)`` with ``G`` the Gaussian window; it is divided by
    ``full_contrast`` (0.10: a region whose luminance varies by 10% of the full range shows objects) and
    clipped, so the score is fixed across images rather than normalised per image. A constant image
    scores 1 everywhere, whatever its brightness.

    Args:
        rgb: ``(H, W, 3)`` RGB uint8 (``(H, W)`` gray is accepted).
        sigma_fraction: Gaussian sigma as a fraction of the image width.
        full_contrast: local std (luminance on a 0..1 scale) mapped to score 0.

    Returns:
        ``(H, W)`` float32 in [0, 1].

    Example:
        >>> float(local_contrast_map(np.full((4, 4, 3), 200, np.uint8)).min())
        1.0
    """
    if full_contrast <= 0:
        raise ValueError(f"full_contrast must be positive, got {full_contrast}")
    y = luminance(rgb).astype(np.float64)  # E[Y^2] - E[Y]^2 cancels badly in float32
    sigma = _sigma(y.shape[1], sigma_fraction)
    mean = _blur(y, sigma)
    var = _blur(y * y, sigma) - mean * mean
    var[var < 1e-12] = 0.0  # rounding residue of a flat region (std < 1e-6, far below one 8-bit step)
    out = 1.0 - np.sqrt(var) / full_contrast
    return np.clip(out, 0.0, 1.0).astype(np.float32)


__all__ = ["FULL_CONTRAST", "SIGMA_FRACTION", "darkness_map", "local_contrast_map", "luminance"]
