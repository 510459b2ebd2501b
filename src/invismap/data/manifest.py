"""The canonical description of a color/thermal pair dataset.

On disk a dataset is a folder holding ``manifest.csv`` with one row per pair::

    name,color,thermal,condition,split,timestamp,color_labels,thermal_labels

``color``/``thermal`` are image paths and ``*_labels`` optional YOLO-txt label paths, all relative to the
manifest's folder (or absolute). Label files hold one box per line, ``class cx cy w h``, normalised to the
image of *that* modality, with class ids in COCO's 80-class Darknet order (0 person, 1 bicycle, 2 car, ...).
Color labels and thermal labels are different things: a box only on the thermal image is an object the
color image does not show. An empty label path means "not labelled"; an empty file means "no objects".

Example:
    >>> m = load_manifest("runs/msrs/manifest.csv")  # doctest: +SKIP
    >>> night = m.select(condition="night", split="test")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write

T = TypeVar("T")

CONDITIONS = ("day", "dawn", "dusk", "night", "fog", "unknown")
SPLITS = ("train", "val", "test", "all")
COLUMNS = ("name", "color", "thermal", "condition", "split", "timestamp", "color_labels", "thermal_labels")

# COCO class names in Darknet (80-class) order; label files use these indices.
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()
# The classes that road-scene thermal datasets label and evaluation uses by default.
ROAD_CLASSES = (0, 1, 2)  # person, bicycle, car
# COCO's finer classes folded onto the road label set before a detection is matched to a label: a labelled
# "car" the detector calls a truck or bus was found, and so was a "bicycle" it calls a motorcycle.
CLASS_FOLD: dict[int, int] = {3: 1, 5: 2, 7: 2}  # motorcycle -> bicycle, bus -> car, truck -> car


@dataclass(frozen=True)
class Sample:
    """One color/thermal pair. Paths are absolute once loaded."""

    name: str
    color: Path
    thermal: Path
    condition: str = "unknown"
    split: str = "all"
    timestamp: float | None = None
    color_labels: Path | None = None
    thermal_labels: Path | None = None

    def __post_init__(self) -> None:
        check_sample_name(self.name)  # stages write OUT/.../NAME.png: a name must not lead outside OUT


@dataclass
class Manifest:
    """A list of samples plus the folder the manifest lives in."""

    samples: list[Sample]
    root: Path = field(default_factory=Path.cwd)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def select(self, condition: str | Iterable[str] | None = None, split: str | Iterable[str] | None = None,
               names: Iterable[str] | None = None) -> Manifest:
        """Samples matching a condition, a split and/or a set of names (None = any; split 'all' = any).

        >>> m = Manifest([Sample("a", Path("a.png"), Path("a.png"), "day", "train"),
        ...               Sample("b", Path("b.png"), Path("b.png"), "night", "test")], Path("."))
        >>> [s.name for s in m.select(split="test")], [s.name for s in m.select(split="all")]
        (['b'], ['a', 'b'])
        """
        conds = {condition} if isinstance(condition, str) else (set(condition) if condition else None)
        splits = {split} if isinstance(split, str) else (set(split) if split else None)
        if splits is not None and "all" in splits:
            splits = None
        keep = set(names) if names is not None else None
        out = [s for s in self.samples
               if (conds is None or s.condition in conds) and (splits is None or s.split in splits)
               and (keep is None or s.name in keep)]
        return Manifest(out, self.root)

    def holdout(self, every_nth: int) -> tuple[Manifest, Manifest | None]:
        """Split off every ``every_nth`` sample for validation (0 = none): ``(train, val or None)``.

        Deterministic and spread over the list, so a manifest ordered by name gives a representative val set.
        """
        n = every_nth
        val = [s for i, s in enumerate(self.samples) if n and i % n == n - 1]
        train = [s for i, s in enumerate(self.samples) if not (n and i % n == n - 1)]
        return Manifest(train, self.root), (Manifest(val, self.root) if val else None)

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of samples per (split, condition)."""
        c: dict[tuple[str, str], int] = {}
        for s in self.samples:
            c[(s.split, s.condition)] = c.get((s.split, s.condition), 0) + 1
        return c


def evenly(items: Sequence[T], n: int) -> list[T]:
    """At most ``n`` of ``items``, evenly spaced, first and last included (all of them when ``n`` is 0).

    >>> evenly(list(range(10)), 4)
    [0, 3, 6, 9]
    """
    if not n or len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def training_pairs(manifest: Manifest, split: str, conditions: Sequence[str] | None, val_every_nth: int,
                   source: str | Path = "manifest") -> tuple[Manifest, Manifest | None]:
    """The pairs a trainer learns from, and its validation pairs: those of ``split`` ('' or 'all' = any) and
    ``conditions`` (empty = any), every ``val_every_nth`` held out (:meth:`Manifest.holdout`).

    Raises:
        InvismapError: no such pairs in ``source``, none left to train on, or test pairs among them.
    """
    pool = manifest.select(condition=list(conditions) if conditions else None, split=split or None)
    if len(pool) == 0:
        which = f"{'/'.join(conditions)} " if conditions else ""
        raise InvismapError(f"{source}: no {which}pairs in split '{split}'")
    refuse_test_pairs(pool, split, source)
    train, val = pool.holdout(val_every_nth)
    if len(train) == 0:
        raise InvismapError(f"val_every_nth={val_every_nth} leaves no training pairs")
    return train, val


def refuse_test_pairs(pairs: Manifest, split: str, source: str | Path = "manifest") -> None:
    """Training data never holds a test pair: the split every result is reported on.

    Raises:
        InvismapError: naming ``source``, the ``split`` asked for and how many test pairs it holds.
    """
    n = sum(s.split == "test" for s in pairs)
    if n:
        raise InvismapError(f"{source}: split '{split}' holds {n} test pair{'s' * (n != 1)}, and nothing "
                            "trains on the test split that results are reported on: use split 'train'")


def refuse_writing_over(manifest: Manifest, out_dir: str | Path) -> None:
    """A command that writes a new pair dataset never writes it over the one it reads (its images would be
    changed in place, and a second run would apply the change twice).

    Raises:
        InvismapError: ``out_dir`` is ``manifest``'s folder.
    """
    if Path(out_dir).resolve() == Path(manifest.root).resolve():
        raise file_error(out_dir, "is the dataset being read", "write the new dataset to another folder")


def load_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.csv`` (or a folder containing it), validating every row."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise file_error(path, "manifest not found", "run 'invismap data import FORMAT SRC DST' first")
    root = path.parent.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(path, "manifest is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("name", "color", "thermal") if c not in (reader.fieldnames or [])]
    if missing:
        raise file_error(path, f"manifest lacks column(s) {', '.join(missing)}",
                         f"expected header {','.join(COLUMNS)}")
    unknown = [c for c in reader.fieldnames or [] if c not in COLUMNS]
    if unknown:
        raise file_error(path, f"manifest has unknown column(s) {', '.join(unknown)}",
                         f"allowed: {', '.join(COLUMNS)}")
    samples, seen, resolve = [], set(), FolderResolver()
    for row in reader:
        lineno = reader.line_num  # the row's last physical line (a quoted field may span several)
        if None in row:
            raise InvismapError(f"{path}:{lineno}: row has more fields than the header "
                                f"({len(reader.fieldnames or [])} columns; quote paths that hold a comma)")
        samples.append(_parse_row(row, root, f"{path}:{lineno}", resolve))
        if samples[-1].name in seen:
            raise InvismapError(f"{path}:{lineno}: duplicate sample name '{samples[-1].name}'")
        seen.add(samples[-1].name)
    if not samples:
        raise file_error(path, "manifest lists no samples", "check the import source folder")
    return Manifest(samples, root)


def check_sample_name(name: str, where: str = "") -> str:
    """Refuse a sample name that is not a plain file stem.

    Stages write ``OUT/<subfolder>/NAME.png`` and the like, so a name holding a path separator or ``..``
    could write outside the output folder.
    """
    if not isinstance(name, str) or any(c in name for c in "/\\\0") or name in (".", ".."):
        prefix = f"{where}: " if where else ""
        raise InvismapError(f"{prefix}sample name {name!r} is not a plain file name (outputs are named after "
                            "it: remove '/', '\\' and '..' from the name column)")
    return name


class FolderResolver:
    """``Path.resolve()`` for many files in few folders: each folder is resolved once, then only the file
    itself is checked for being a link (one ``lstat`` instead of one per path component).

    >>> FolderResolver()(Path("/a/b/../c.png")).as_posix()
    '/a/c.png'
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> Path:
        path = Path(os.path.join(os.getcwd(), path))  # as resolve(): relative paths are taken from the cwd
        if path.name in ("", ".."):
            return path.resolve()
        key = str(path.parent)
        folder = self._folders.get(key)
        if folder is None:
            folder = self._folders[key] = os.path.realpath(key)
        full = os.path.join(folder, path.name)
        return Path(os.path.realpath(full) if os.path.islink(full) else full)


def _parse_row(row: dict, root: Path, where: str, resolve: FolderResolver) -> Sample:
    def path_of(key: str) -> Path | None:
        v = (row.get(key) or "").strip()
        return resolve(root / v) if v else None

    name = (row.get("name") or "").strip()
    if not name:
        raise InvismapError(f"{where}: empty sample name")
    check_sample_name(name, where)
    color, thermal = path_of("color"), path_of("thermal")
    if color is None or thermal is None:
        raise InvismapError(f"{where}: sample '{name}' needs both a color and a thermal path")
    condition = (row.get("condition") or "unknown").strip()
    if condition not in CONDITIONS:
        raise InvismapError(f"{where}: condition '{condition}' is not one of {', '.join(CONDITIONS)}")
    split = (row.get("split") or "all").strip()
    if split not in SPLITS:
        raise InvismapError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}")
    ts_text = (row.get("timestamp") or "").strip()
    try:
        timestamp = float(ts_text) if ts_text else None
    except ValueError:
        raise InvismapError(f"{where}: timestamp '{ts_text}' is not a number (seconds)") from None
    if timestamp is not None and not math.isfinite(timestamp):
        raise InvismapError(f"{where}: timestamp must be finite")
    return Sample(name, color, thermal, condition, split, timestamp, path_of("color_labels"),
                  path_of("thermal_labels"))


def save_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest.csv`` atomically; paths are stored relative to its folder where possible."""
    path = Path(path)
    if path.suffix != ".csv":
        path = path / "manifest.csv"
    root = path.parent.resolve()
    resolve = FolderResolver()

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        full = resolve(Path(p))
        try:
            return full.relative_to(root).as_posix()
        except ValueError:
            return Path(os.path.relpath(full, root)).as_posix()

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for s in manifest.samples:
        w.writerow([s.name, rel(s.color), rel(s.thermal), s.condition, s.split,
                    "" if s.timestamp is None else repr(s.timestamp),
                    rel(s.color_labels), rel(s.thermal_labels)])
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
    return path


def read_yolo_labels(path: Path | None, num_classes: int = len(COCO_NAMES)) -> np.ndarray:
    """Read a YOLO txt label file into ``(N, 5)`` float32 ``[class, cx, cy, w, h]`` (normalised).

    A missing path (not labelled) gives an empty array. Bad lines raise an error naming file and line.
    """
    if path is None:
        return np.zeros((0, 5), np.float32)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise file_error(path, "label file not found") from None
    except UnicodeDecodeError:
        raise file_error(path, "label file is not text") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 5:
            raise InvismapError(f"{where}: expected 'class cx cy w h', got {len(parts)} fields")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise InvismapError(f"{where}: not numbers: '{line.strip()}'") from None
        if not 0 <= cls < num_classes:
            raise InvismapError(f"{where}: class {cls} out of range 0..{num_classes - 1}")
        vals = (cx, cy, w, h)
        if not all(math.isfinite(v) for v in vals) or not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1
                                                          and 0 < h <= 1):
            raise InvismapError(f"{where}: box {cx} {cy} {w} {h} out of range (normalised values in 0..1)",)
        rows.append((cls, cx, cy, w, h))
    return np.array(rows, np.float32).reshape(-1, 5)


def write_yolo_labels(path: Path, boxes_xyxy: np.ndarray, classes: np.ndarray, width: int,
                      height: int) -> None:
    """Write pixel ``(N, 4)`` xyxy boxes as a normalised YOLO txt file (boxes clipped to the image)."""
    lines = []
    for (x1, y1, x2, y2), c in zip(np.asarray(boxes_xyxy, float).reshape(-1, 4),
                                   np.asarray(classes).reshape(-1)):
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        lines.append(f"{int(c)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))


def yolo_to_xyxy(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N, 5)`` normalised ``[cls, cx, cy, w, h]`` to ``(N, 5)`` pixel ``[cls, x1, y1, x2, y2]``."""
    out = np.zeros_like(labels, dtype=np.float32)
    out[:, 0] = labels[:, 0]
    out[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * width
    out[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * height
    out[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * width
    out[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * height
    return out
