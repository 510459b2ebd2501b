"""Importers: turn a dataset's own layout into an invismap pair dataset (``manifest.csv`` + labels).

Each importer is ``import_xxx(src, dst) -> Manifest``; images stay where they are (the manifest points at
them), labels are converted to YOLO txt with COCO class ids under ``dst/labels/{color,thermal}/``.
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


def get_importer(fmt: str) -> Callable[..., Manifest]:
    """The import function for a format name; unknown names list the known ones."""
    return IMPORTERS.get(fmt)


def import_dataset(fmt: str, src: str | Path, dst: str | Path, **options) -> Manifest:
    """Import ``src`` in format ``fmt`` into the pair dataset folder ``dst``."""
    src = Path(src)
    if not src.is_dir():
        raise InvismapError(f"{src}: source folder not found")
    return get_importer(fmt)(src, Path(dst), **options)
