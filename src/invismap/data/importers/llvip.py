"""LLVIP (Jia et al. 2021, visible-infrared paired dataset for low-light vision) importer.

Layout: ``visible/{train,test}/NAME.jpg`` (color), ``infrared/{train,test}/NAME.jpg`` (thermal, registered
to the color frame) and optional ``Annotations/NAME.xml`` (Pascal VOC, class ``person``). LLVIP's boxes are
drawn on the infrared image and the pairs are registered, so they become *thermal* labels; there are no
color labels. The split is the subfolder; every frame is a night scene (condition ``night``). VOC corners
are used as pixel edges as written (VOC's 1-based convention shifts them by at most one pixel).
"""

from __future__ import annotations

from pathlib import Path

from invismap.data.importers.common import check_pair_sizes, list_images, pair_by_stem, voc_thermal_labels
from invismap.data.manifest import Manifest, Sample, save_manifest
from invismap.errors import file_error

LLVIP_TO_COCO = {"person": 0}


def import_llvip(src: Path, dst: Path, progress: bool = True, check: str = "decode") -> Manifest:
    """Import an LLVIP folder into ``dst`` (manifest.csv + labels/thermal); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    samples, seen = [], set()
    for split in ("train", "test"):
        cdir, tdir = src / "visible" / split, src / "infrared" / split
        if cdir.is_dir() or tdir.is_dir():
            layout = f"LLVIP keeps visible/{split} and infrared/{split} side by side"
            pairs = pair_by_stem(list_images(cdir, layout), list_images(tdir, layout), cdir, tdir)
            for name, c, t in pairs:
                if name in seen:
                    raise file_error(c, f"name {name} is in both train and test", "LLVIP names are unique")
                seen.add(name)
                samples.append(Sample(name, c, t, "night", split))
    if not samples:
        raise file_error(src, "no visible/{train,test} or infrared/{train,test} folders",
                         "point at the LLVIP root")
    sizes = check_pair_sizes(samples, progress=progress, check=check)
    if (src / "Annotations").is_dir():
        samples = voc_thermal_labels(samples, sizes, src / "Annotations", LLVIP_TO_COCO, dst)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
