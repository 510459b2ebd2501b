"""Importers: turn a dataset's own layout into an invismap pair dataset (``manifest.csv`` + labels).

Each importer is ``import_xxx(src, dst, progress=True, check="decode", ...) -> Manifest``; images stay where
they are (the manifest points at them), labels are converted to YOLO txt with COCO class ids under
``dst/labels/{color,thermal}/``. ``check`` says how the images are checked at import
(:func:`~invismap.data.importers.common.check_pair_sizes`): ``"decode"`` reads every image in full,
``"header"`` only each file's size (for large sets; pixel data is then checked when training reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from invismap.data.manifest import Manifest
from invismap.errors import InvismapError
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


def import_dataset(fmt: str, src: str | Path, dst: str | Path, **options) -> Manifest:
    """Import ``src`` in format ``fmt`` into the pair dataset folder ``dst``."""
    src = Path(src)
    if not src.is_dir():
        raise InvismapError(f"{src}: source folder not found")
    if options.get("check", CHECKS[0]) not in CHECKS:
        raise InvismapError(f"image check '{options['check']}' is not one of {', '.join(CHECKS)}")
    return get_importer(fmt)(src, Path(dst), **options)
