"""M3FD (Liu et al., TarDAL, CVPR 2022) detection-set importer.

Layout: ``Vis/NAME.png`` (color), ``Ir/NAME.png`` (thermal, registered to the color frame) and optional
``Annotation/NAME.xml`` (Pascal VOC). Classes map to COCO: People -> person 0, Car -> car 2, Bus -> bus 5,
Motorcycle -> motorcycle 3, Truck -> truck 7; Lamp (street lamps) has no COCO class and is dropped (counted).

M3FD draws one set of boxes on the registered pair and uses it for both modalities. We store it as *thermal*
labels only (the objects present), never as color labels: copying it to color would claim the color camera
sees every object, which is exactly what invismap has to find out.

Condition is ``unknown`` unless ``conditions`` names a CSV with columns ``name,condition`` (day, night, ...;
a path, or one relative to SRC). Split: ``all``, or with ``test_fraction`` a deterministic train/test split
by a hash of the name.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from invismap.data.importers.common import (
    check_pair_sizes,
    hash_split,
    list_images,
    pair_by_stem,
    voc_thermal_labels,
)
from invismap.data.manifest import CONDITIONS, Manifest, Sample, save_manifest
from invismap.errors import file_error

M3FD_TO_COCO = {"people": 0, "car": 2, "bus": 5, "motorcycle": 3, "truck": 7}


def _read_conditions(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise file_error(path, "conditions CSV not found", "give a CSV with columns name,condition")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(path, "is not UTF-8 text", "give a CSV with columns name,condition") from None
    reader = csv.DictReader(io.StringIO(text))
    if not {"name", "condition"} <= set(reader.fieldnames or []):
        raise file_error(path, "needs columns name,condition",
                         f"it has {', '.join(reader.fieldnames or [])}")
    table = {(row["name"] or "").strip(): (row["condition"] or "").strip() for row in reader}
    for name, cond in table.items():
        if cond not in CONDITIONS:
            raise file_error(path, f"pair {name}: condition '{cond}' not one of {', '.join(CONDITIONS)}")
    return table


def import_m3fd(src: Path, dst: Path, progress: bool = True, conditions: str | Path | None = None,
               test_fraction: float | None = None, check: str = "decode") -> Manifest:
    """Import an M3FD folder into ``dst`` (manifest.csv + labels/thermal); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    cdir, tdir = src / "Vis", src / "Ir"
    layout = "M3FD keeps Vis/ and Ir/ side by side"
    pairs = pair_by_stem(list_images(cdir, layout), list_images(tdir, layout), cdir, tdir)
    table = {}
    if conditions is not None:
        table = _read_conditions(Path(conditions) if Path(conditions).is_file() else src / conditions)
    samples = [Sample(name, c, t, table.get(name, "unknown"),
                      "all" if test_fraction is None else hash_split(name, test_fraction))
               for name, c, t in pairs]
    sizes = check_pair_sizes(samples, progress=progress, check=check)
    if (src / "Annotation").is_dir():
        samples = voc_thermal_labels(samples, sizes, src / "Annotation", M3FD_TO_COCO, dst)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
