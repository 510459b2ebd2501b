"""Importers: turn a dataset's own layout into an invismap pair dataset (``manifest.csv`` + labels).

Each importer is ``import_xxx(src, dst, progress=True, check="decode", ...) -> Manifest``; images stay where
they are (the manifest points at them), labels are converted to YOLO txt with COCO class ids under
``dst/labels/{color,thermal}/``. ``check`` says how the images are checked at import
(:func:`~invismap.data.importers.common.check_pair_sizes`): ``"decode"`` reads every image in full,
``"header"`` only each file's size (for large sets; pixel data is then checked when training reads it).
"""

from __future__ import annotations

import inspect
import shutil
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from invismap.data.manifest import Manifest, save_manifest
from invismap.errors import InvismapError, file_error
from invismap.registry import Registry

# format name -> its importer, imported on first use (one broken importer does not break the others)
IMPORTERS: Registry[Callable[..., Manifest]] = Registry("dataset format", lazy={
    "msrs": "invismap.data.importers.msrs:import_msrs",
    "roadscene": "invismap.data.importers.roadscene:import_roadscene",
    "llvip": "invismap.data.importers.llvip:import_llvip",
    "kaist": "invismap.data.importers.kaist:import_kaist",
    "flir": "invismap.data.importers.flir:import_flir",
    "m3fd": "invismap.data.importers.m3fd:import_m3fd",
})

# How an importer checks the images it lists (check_pair_sizes): "decode" reads every image in full with the
# readers training uses; "header" reads only each file's header (format and size), for sets too large to
# decode at import.
CHECKS = ("decode", "header")


def get_importer(fmt: str) -> Callable[..., Manifest]:
    """The import function for a format name; unknown names list the known ones."""
    return IMPORTERS.get(fmt)


def import_dataset(fmt: str, src: str | Path, dst: str | Path, progress: bool = True, check: str = "decode",
                   **options) -> Manifest:
    """Import ``src`` in format ``fmt`` into the pair dataset folder ``dst``; ``options`` are the importer's
    own (:func:`check_options`).

    The import is written into ``dst/.importing`` and moved in only when it has finished, so a failed or
    interrupted re-import leaves the dataset that was there whole: its manifest and the labels it points at.
    """
    src = Path(src)
    if src.is_file():
        raise file_error(src, "is a file, not the dataset's folder", f"give its folder ({src.parent})")
    if not src.is_dir():
        raise InvismapError(f"{src}: source folder not found")
    if check not in CHECKS:
        raise InvismapError(f"image check '{check}' is not one of {', '.join(CHECKS)}")
    importer = get_importer(fmt)
    options = check_options(fmt, options)
    dst = Path(dst).resolve()
    staging = dst / ".importing"
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by an import that was killed
        staging.mkdir(parents=True)
    except OSError as e:
        raise file_error(dst, f"cannot write the dataset here ({e.strerror})",
                         "choose another output folder") from None
    try:
        return _move_in(importer(src, staging, progress=progress, check=check, **options), staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def importer_options(importer: Callable[..., Manifest]) -> list[str]:
    """The options an importer takes beyond ``src``, ``dst``, ``progress`` and ``check``."""
    skip = {"src", "dst", "progress", "check"}
    return [n for n in inspect.signature(importer).parameters if n not in skip]


def check_options(fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against what the ``fmt`` importer takes, before any file is read; a number option
    given as text (``--option test_fraction=0.2``) becomes a number."""
    importer = get_importer(fmt)
    hints, known = typing.get_type_hints(importer), importer_options(importer)
    out = {}
    for name, value in options.items():
        if name in ("check", "src", "dst", "progress"):
            raise InvismapError(f"option '{name}' is not an importer option: set it with the command's own "
                                "argument (--check, SRC, DST) or the config's data.check / src")
        if name not in known:
            raise InvismapError(f"option '{name}' is not one the {fmt} importer takes "
                                f"(it takes: {', '.join(known) or 'none'})")
        out[name] = _option_value(name, value, typing.get_args(hints.get(name)) or (hints.get(name),))
    return out


def _option_value(name: str, value: Any, types: tuple) -> Any:
    """An option's value as the importer's annotation ``types`` want: a number (also from text), or text."""
    if value is None and type(None) in types:
        return None
    if float in types:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool):  # True would read as 1.0
            raise InvismapError(f"option '{name}': {value!r} is not a number")
        return number
    if str in types and not isinstance(value, (str, Path)):
        raise InvismapError(f"option '{name}': {value!r} is not text (a name or a path)")
    return value


def _move_in(manifest: Manifest, staging: Path, dst: Path) -> Manifest:
    """Move a finished import's label folders from ``staging`` into ``dst`` (replacing only those folders:
    ``dst`` may hold the source's own files) and write its manifest there."""
    dst.mkdir(parents=True, exist_ok=True)
    for new in sorted((staging / "labels").glob("*")):
        (dst / "labels").mkdir(exist_ok=True)
        target = dst / "labels" / new.name
        if target.exists():
            target.rename(staging / f"old-{new.name}")
        new.rename(target)

    def moved(path: Path | None) -> Path | None:
        return dst / path.relative_to(staging) if path is not None and path.is_relative_to(staging) else path

    samples = [replace(s, color=moved(s.color), thermal=moved(s.thermal), color_labels=moved(s.color_labels),
                       thermal_labels=moved(s.thermal_labels)) for s in manifest.samples]
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
