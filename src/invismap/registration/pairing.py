"""Pair color and thermal frames: by file name, or by timestamp within a tolerance.

Color and thermal cameras are rarely triggered together: they run at different frame rates and each
stamps its own frames. Pairing by time keeps, for every thermal frame, the color frame closest in time
if it is within ``tolerance`` seconds (each color frame used at most once). Timestamps come from file
names (:func:`parse_timestamp`) or from video frame times.

Example:
    >>> parse_timestamp("cam0_1570722156.952177.png")
    1570722156.952177
    >>> pair_by_time([0.0, 0.033, 0.066], [0.01, 0.05], tolerance=0.02)
    [(0, 0, -0.01), (2, 1, 0.016)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "IMAGE_SUFFIXES",
    "TIME_UNITS",
    "VIDEO_SUFFIXES",
    "pair_by_name",
    "pair_by_time",
    "pair_streams",
    "parse_timestamp",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".m4v", ".webm")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# The last number in a file stem, with an optional fractional part: "frame_0012", "1570722156.952177".
_LAST_NUMBER = re.compile(r"(\d+(?:[.,]\d+)?)(?!.*\d)")

T = TypeVar("T")
U = TypeVar("U")


def _auto_unit(value: float) -> float:
    """Guess the unit of an epoch-like integer timestamp from its magnitude (s, ms, us or ns)."""
    if value >= 1e17:
        return 1e-9
    if value >= 1e14:
        return 1e-6
    if value >= 1e11:
        return 1e-3
    return 1.0


def parse_timestamp(name: str, pattern: str | None = None, unit: str = "auto") -> float | None:
    """Timestamp (seconds) from a file name.

    Args:
        name: file name or path; only the stem is searched.
        pattern: regular expression; its named group ``t`` (or else its first group) is the number.
            Default: the last number in the stem.
        unit: ``"s"``, ``"ms"``, ``"us"``, ``"ns"`` or ``"auto"`` (epoch-like magnitudes: >= 1e17 ns,
            >= 1e14 us, >= 1e11 ms, else s; frame counters are then read as seconds, so pass a unit).

    Returns:
        seconds as float, or None if the name holds no number.
    """
    stem = Path(name).stem
    if pattern:
        m = re.search(pattern, stem)
        if not m:
            return None
        text = m.group("t") if "t" in m.re.groupindex else (m.group(1) if m.re.groups else m.group(0))
    else:
        m = _LAST_NUMBER.search(stem)
        if not m:
            return None
        text = m.group(1)
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return None
    if unit == "auto":
        return value * _auto_unit(value)
    if unit not in TIME_UNITS:
        raise ValueError(f"unknown time unit '{unit}', expected one of auto, {', '.join(TIME_UNITS)}")
    return value * TIME_UNITS[unit]


def pair_by_name(color_names: Sequence[str], thermal_names: Sequence[str]) -> list[tuple[int, int, str]]:
    """Pairs ``(color_index, thermal_index, stem)`` of files with the same stem, in thermal order."""
    by_stem = {Path(n).stem: i for i, n in enumerate(color_names)}
    out = []
    for j, n in enumerate(thermal_names):
        stem = Path(n).stem
        if stem in by_stem:
            out.append((by_stem[stem], j, stem))
    return out


def pair_streams(color: Iterable[tuple[float, T]], thermal: Iterable[tuple[float, U]], tolerance: float,
                 offset: float = 0.0) -> Iterator[tuple[float, float, T, U]]:
    """Pair two time-ordered streams, keeping the color item nearest to each thermal item.

    Streams are consumed lazily (one color item of look-ahead), so videos never sit in memory.

    Args:
        color: ``(time_s, item)`` in increasing time.
        thermal: ``(time_s, item)`` in increasing time.
        tolerance: largest accepted ``|t_color + offset - t_thermal|``, seconds.
        offset: seconds added to color times to put them on the thermal clock.

    Yields:
        ``(t_color, t_thermal, color_item, thermal_item)``; each color item is used at most once.
    """
    it = iter(color)
    prev: tuple[float, T] | None = None
    nxt = next(it, None)
    used_prev = False
    for t_thr, thr in thermal:
        while nxt is not None and nxt[0] + offset <= t_thr:
            prev, nxt, used_prev = nxt, next(it, None), False
        cands = []
        if prev is not None and not used_prev:
            cands.append((abs(prev[0] + offset - t_thr), 0, prev))
        if nxt is not None:
            cands.append((abs(nxt[0] + offset - t_thr), 1, nxt))
        if not cands:
            continue
        dt, which, best = min(cands, key=lambda c: c[0])
        if dt > tolerance:
            continue
        if which == 0:
            used_prev = True
        else:
            # The look-ahead item is consumed: it becomes "prev", already used.
            prev, nxt, used_prev = nxt, next(it, None), True
        yield best[0], t_thr, best[1], thr


def pair_by_time(color_times: Sequence[float], thermal_times: Sequence[float], tolerance: float,
                 offset: float = 0.0) -> list[tuple[int, int, float]]:
    """Pairs ``(color_index, thermal_index, dt)`` of nearest timestamps within ``tolerance`` seconds.

    ``dt = t_color + offset - t_thermal``. Inputs need not be sorted.
    """
    c_order = sorted(range(len(color_times)), key=lambda i: color_times[i])
    t_order = sorted(range(len(thermal_times)), key=lambda i: thermal_times[i])
    out = []
    for tc, tt, ic, it in pair_streams(((color_times[i], i) for i in c_order),
                                       ((thermal_times[j], j) for j in t_order), tolerance, offset):
        out.append((ic, it, round(tc + offset - tt, 9)))
    return out
