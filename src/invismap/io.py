"""File input/output that never leaves half-written files and rejects bad images clearly.

Every file the project writes goes through :func:`atomic_write` (temp file in the same folder, then
``os.replace``), so a crash or a kill leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from invismap.errors import InvismapError, file_error

# Corrupt files are reported by our own one-line errors; OpenCV's C++ warnings would only add noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    The file gets the permissions of any new file (0666 less the umask, usually 0644), not the temporary
    file's private 0600, so a web server can serve a report and a colleague can read the results.

    Example:
        >>> with atomic_write("/tmp/x.txt", "w") as f:  # doctest: +SKIP
        ...     f.write("hello")
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # some filesystems (vfat, CIFS) refuse modes; the data is written
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise _write_error(path, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; set it straight back
    os.umask(mask)
    return mask


def _remove_quietly(p: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


def _write_error(path: Path, e: OSError) -> InvismapError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return file_error(path, "disk full while writing", "free some space and run again")
    if e.errno == errno.EFBIG:
        return file_error(path, "file too large for this disk or this process's file size limit (ulimit -f)",
                          "free some space, raise the limit, or write elsewhere")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return file_error(path, "output folder is not writable", "choose another --out folder")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return file_error(path, f"cannot create the output folder: {blocker} is a file, not a folder",
                          "remove that file or choose another output path")
    return file_error(path, f"cannot write: {e.strerror}")


def check_output_file(path: str | Path | None, suffixes: tuple[str, ...] = (".json",)) -> None:
    """Refuse, before any work, an output file path that is an existing folder (``--json runs/x/``) or
    does not end in one of ``suffixes`` (``--json data/manifest.csv`` would replace the manifest)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a folder, not a file",
                         f"give a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise file_error(path, f"the output must end in {' or '.join(suffixes)}",
                         "choose another file name (an existing file of another kind would be replaced)")


STAGING = ".partial"  # OUT/.partial: a command's outputs until it finishes (staged_outputs)
OUTPUTS = ".outputs.json"  # OUT/.outputs.json: the files the last finished run wrote (staged_outputs)


def check_output_folder(out: str | Path, index: str, reads: tuple[str | Path | None, ...] = ()) -> None:
    """Refuse an output folder that is the folder of an input the command ``reads`` (a file or a folder of
    images), or that holds files but not ``index``: they are not an earlier run's outputs of this command
    (e.g. the user's images), and the run would write over or beside them. Hidden files (``.DS_Store``, a
    killed run's ``.partial``) do not count."""
    out = Path(out)
    for source in (Path(s).resolve() for s in reads if s is not None):
        if out.resolve() == (source.parent if source.is_file() else source):
            raise file_error(out, "--out is the folder of the images read; outputs would land among them, "
                             "and a second run would read them as images", "choose another --out")
    if out.exists() and not out.is_dir():
        raise file_error(out, "is a file, not a folder", "give a folder")
    visible = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    if visible and not (out / index).is_file():
        raise file_error(out, f"holds files that are not an earlier run's outputs (no {index})",
                         "choose a new or empty --out folder")


@contextlib.contextmanager
def staged_outputs(out: str | Path, index: str) -> Iterator[Path]:
    """A folder inside ``out`` (``out/.partial``) to write a command's outputs into, ``out`` being new, empty
    or an earlier run's outputs (:func:`check_output_folder`). When the block ends without an error, the files
    the last finished run wrote (listed in ``out/.outputs.json``) and its ``index`` make way for the new
    files; nothing else in ``out`` is touched. A run that stops midway leaves the last run's files as they
    were. The caller writes its new ``index`` into ``out`` after the block.

    Example:
        >>> with staged_outputs("runs/maps", "index.json") as folder:  # doctest: +SKIP
        ...     write_image(folder / "a_map.png", heat)
    """
    import shutil

    out = Path(out)
    check_output_folder(out, index)
    staging = out / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
        staging.mkdir(parents=True)
    except OSError as e:
        raise _write_error(staging, e) from None
    try:
        yield staging
        new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        _replace_outputs(out, staging, [index, *_last_outputs(out)], new)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _last_outputs(out: Path) -> list[str]:
    """The files the last finished run wrote into ``out`` (relative paths); none before the list existed."""
    try:
        names = json.loads((out / OUTPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    inside = [n for n in names if isinstance(n, str) and not Path(n).is_absolute()]
    return [n for n in inside if ".." not in Path(n).parts]  # a list edited by hand cannot reach outside


def _replace_outputs(out: Path, staging: Path, old: list[str], new: list[str]) -> None:
    """Move the ``old`` files aside, the ``new`` ones from ``staging`` in, then drop the old ones; if any step
    fails, the old files are put back (the new run's are lost, and the error says why)."""
    import shutil

    aside = out / ".replaced"
    shutil.rmtree(aside, ignore_errors=True)
    moved: list[str] = []
    try:
        for name in old:
            if (out / name).is_file():
                (aside / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / name, aside / name)
                moved.append(name)
        for name in new:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
        with atomic_write(out / OUTPUTS, "w") as f:
            json.dump(new, f)
    except OSError as e:
        for name in moved:
            with contextlib.suppress(OSError):
                os.replace(aside / name, out / name)
        raise _write_error(out, e) from None
    shutil.rmtree(aside, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with plain JSON types only: numpy scalars as Python numbers, tuples as lists, NaN/inf as None
    (strict JSON has no NaN).

    >>> json_safe({"a": (np.float32(0.5), float("nan")), "n": np.int64(3)})
    {'a': [0.5, None], 'n': 3}
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image (``(H, W)`` or ``(H, W, 3)`` RGB, uint8 or uint16) atomically; format from suffix."""
    path = Path(path)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", image)
    except cv2.error:  # OpenCV has no writer for this suffix
        ok = False
    if not ok:
        raise file_error(path, f"could not write a {path.suffix or '.png'} image of {image.dtype} "
                               f"{image.shape}", "write .png, or .jpg for 8-bit images")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (a killed copy leaves the old ``dst`` or none, never half a
    file)."""
    import shutil

    try:
        with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except FileNotFoundError:
        raise file_error(src, "file not found") from None
    return Path(dst)


def _decode(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except OSError as e:
        raise file_error(path, f"cannot read: {e.strerror}") from None
    if data.size == 0:
        raise file_error(path, "empty file (0 bytes)", "re-copy or remove it")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise file_error(path, "not a readable image (corrupt or truncated)", "re-copy or remove it")
    if not np.issubdtype(img.dtype, np.integer) and not np.isfinite(img).all():
        raise file_error(path, "image holds NaN or inf values")
    return img


def read_color(path: str | Path) -> np.ndarray:
    """Read a color image as RGB uint8 ``(H, W, 3)``. Gray images are replicated to 3 channels."""
    path = Path(path)
    img = _decode(path)
    if img.dtype != np.uint8:
        raise file_error(path, f"color image has dtype {img.dtype}, expected 8-bit",
                         "convert it to 8-bit RGB")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.shape[2] != 3:
        raise file_error(path, f"color image has {img.shape[2]} channels, expected 3")
    return np.ascontiguousarray(img[:, :, ::-1])


def read_thermal(path: str | Path, refuse_palette: bool = True) -> np.ndarray:
    """Read a thermal frame as one channel uint8 ``(H, W)``.

    8-bit frames are kept as they are. 16-bit frames (FLIR raw counts) are mapped to 8 bits with a
    robust percentile stretch: the 1st and 99th percentiles go to 0 and 255, so a few hot or dead
    pixels do not wash out the scene. 3-channel frames must be gray stored as RGB (channels equal up to
    JPEG noise) and are reduced to one; a false-color palette is refused (``refuse_palette=False``
    converts it to gray instead: only channel count and bit depth are checked then).
    """
    path = Path(path)
    img = _decode(path)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] != 3:
            raise file_error(path, f"thermal image has {img.shape[2]} channels, expected 1 or 3")
        # Gray stored as RGB; JPEG compression may make the channels differ by a few levels (LLVIP, KAIST).
        spread = np.abs(img.astype(np.int16) - img[:, :, :1].astype(np.int16)).mean()
        if spread > 2.0 and refuse_palette:
            raise file_error(path, "thermal image has 3 different channels (false-color palette?)",
                             "export the raw gray thermal frames instead")
        img = img[:, :, 0] if spread == 0 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return stretch_16bit(img)
    raise file_error(path, f"thermal image has dtype {img.dtype}, expected 8- or 16-bit")


def stretch_16bit(img: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map a 16-bit frame ``(H, W)`` to uint8 by a percentile stretch (constant frames give 0)."""
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    out = (img.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, decoding it (which also validates it)."""
    img = _decode(Path(path))
    return img.shape[1], img.shape[0]


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Render a matplotlib ``Figure`` to PNG in memory, then write it atomically."""
    import io as _io

    path = Path(path)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path
