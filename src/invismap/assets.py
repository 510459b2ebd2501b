"""Official assets (detector weights, datasets): where they come from, where they are, whether intact.

The project needs files it cannot ship: pretrained detector weights and color/thermal datasets, each
under its own licence. This module holds one table of them (:data:`ASSETS`), a search path to find
them on disk (:func:`asset_dirs`, :func:`find_asset`), a checked download (:func:`fetch`) and a
checksum audit (:func:`verify`).

Search path: every folder in ``$INVISMAP_ASSETS`` (``os.pathsep``-separated), then the user cache
``$XDG_CACHE_HOME/invismap`` (default ``~/.cache/invismap``). Each folder is an *assets root* laid out
as ``weights/<file>`` and ``data/<dataset>/``; :func:`fetch` downloads into the cache by default.

The sha256 values are those of the public files (computed on the copies the project was developed
with); a sha256 of ``None`` means it is not known here and the file cannot be verified.

Example:
    >>> from invismap.assets import find_asset
    >>> find_asset("yolov5n.pt")  # doctest: +SKIP
    PosixPath('/data/assets/weights/yolov5n.pt')
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from invismap import __version__
from invismap.errors import InvismapError
from invismap.io import atomic_write

log = logging.getLogger(__name__)

ENV_VAR = "INVISMAP_ASSETS"
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20

#: ``Asset.kind`` values: downloadable file, file derived from another one (no URL), dataset folder.
KINDS = ("download", "derived", "dataset")


@dataclass(frozen=True)
class Asset:
    """One official asset.

    Attributes:
        name: short name used on the command line (the file name for weights, e.g. ``yolov5n.pt``).
        relpath: path inside an assets root, POSIX style (``weights/yolov5n.pt``, ``data/msrs``).
        url: direct download URL (``download``), project page (``dataset``) or ``None`` (``derived``).
        sha256: full lowercase hex digest of the file, or ``None`` when unknown (not verifiable).
        licence: licence or terms of use, in a few words.
        size: size in bytes when known, else ``None`` (informational only).
        note: what it is and, for assets without a download, how to make or where to get it.
        kind: ``"download"``, ``"derived"`` or ``"dataset"`` (a folder, never downloaded automatically).
    """

    name: str
    relpath: str
    url: str | None
    sha256: str | None
    licence: str
    size: int | None
    note: str
    kind: str = "download"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Asset kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def is_dataset(self) -> bool:
        """True for dataset folders (checked for presence only, never hashed or downloaded)."""
        return self.kind == "dataset"

    @property
    def source(self) -> str:
        """Where it comes from, in one short string (URL, or how it is made)."""
        if self.kind == "derived":
            return "derived (no download; see note)"
        return self.url or "-"


_YOLOV5_V61 = "https://github.com/ultralytics/yolov5/releases/download/v6.1"
_FASTEST = "https://raw.githubusercontent.com/dog-qiuqiu/Yolo-Fastest/master"
_DARKNET = "https://raw.githubusercontent.com/pjreddie/darknet/master"
_GPL = "GPL-3.0 (yolov5 v6.1; repo now AGPL-3.0)"
_YOLO_LICENCE = "YOLO LICENSE v2 (Darknet)"

#: Every official asset, weights first, then datasets.
ASSETS: tuple[Asset, ...] = (
    Asset("yolov5n.pt", "weights/yolov5n.pt", f"{_YOLOV5_V61}/yolov5n.pt",
          "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3", _GPL, 4062133,
          "official Ultralytics YOLOv5n v6.1 COCO checkpoint (pickled model object, fp16)"),
    Asset("yolov5s.pt", "weights/yolov5s.pt", f"{_YOLOV5_V61}/yolov5s.pt", None, _GPL, None,
          "official Ultralytics YOLOv5s v6.1 COCO checkpoint (about 14 MB); sha256 not known here, "
          "so it is not verified"),
    Asset("yolov5n_state_dict.pt", "weights/yolov5n_state_dict.pt", None,
          "8d1372a00d9e2d863377df23a61a5e709d0dce9b70f084f1c71b0b19d0c5a6da", _GPL, 3874980,
          "yolov5n.pt as a plain state_dict (349 keys, fp16, loads with weights_only=True); get it from "
          "the project's shared assets, or make it in a yolov5 v6.1 checkout with "
          "torch.save(torch.load('yolov5n.pt', weights_only=False)['model'].state_dict(), "
          "'yolov5n_state_dict.pt') "
          "(same tensors, but the file may not be byte-identical, so verify may report a mismatch)",
          kind="derived"),
    Asset("yolov5n_reference_io_416.pt", "weights/yolov5n_reference_io_416.pt", None,
          "be9dd2e6d75d6b64d9cf8bef74d5598201e31ab680c18731092f21b62375c23f", _GPL, 6910888,
          "golden test data from the original yolov5 v6.1 code run on yolov5n.pt in fp32 (x, p3, p4, p5, "
          "pred); get it from the project's shared assets (weights/): it cannot be regenerated "
          "bit for bit",
          kind="derived"),
    Asset("yolo-fastest-1.1-xl.cfg", "weights/yolo-fastest-1.1-xl.cfg",
          f"{_FASTEST}/ModelZoo/yolo-fastest-1.1_coco/yolo-fastest-1.1-xl.cfg",
          "c458427acc4fbeabceff4528ef7b65b066c0308ce599460f8ba299eba63abad3", _YOLO_LICENCE, 9696,
          "Yolo-Fastest 1.1 XL COCO detector, Darknet config (dog-qiuqiu/Yolo-Fastest)"),
    Asset("yolo-fastest-1.1-xl.weights", "weights/yolo-fastest-1.1-xl.weights",
          f"{_FASTEST}/ModelZoo/yolo-fastest-1.1_coco/yolo-fastest-1.1-xl.weights",
          "fac5fb41786c1f38f04972a658443b189f48720d7d117f9a044100e98a35b0c5", _YOLO_LICENCE, 3693964,
          "Yolo-Fastest 1.1 XL COCO weights, Darknet format (mAP@0.5 34.3 at 320)"),
    Asset("yolov3.cfg", "weights/yolov3.cfg", f"{_DARKNET}/cfg/yolov3.cfg",
          "22489ea38575dfa36c67a90048e8759576416a79d32dc11e15d2217777b9a953", _YOLO_LICENCE, 8342,
          "YOLOv3 416 test config, Darknet format (pjreddie/darknet)"),
    Asset("yolov3-tiny.cfg", "weights/yolov3-tiny.cfg", f"{_DARKNET}/cfg/yolov3-tiny.cfg",
          "84eb7a675ef87c906019ff5a6e0effe275d175adb75100dcb47f0727917dc2c7", _YOLO_LICENCE, 1915,
          "YOLOv3-tiny config, Darknet format (pjreddie/darknet)"),
    Asset("yolov3.weights", "weights/yolov3.weights", "https://pjreddie.com/media/files/yolov3.weights",
          None, _YOLO_LICENCE, None,
          "YOLOv3 COCO weights (about 248 MB); sha256 not known here, so it is not verified"),
    Asset("yolov3-tiny.weights", "weights/yolov3-tiny.weights",
          "https://pjreddie.com/media/files/yolov3-tiny.weights", None, _YOLO_LICENCE, None,
          "YOLOv3-tiny COCO weights (about 34 MB); sha256 not known here, so it is not verified"),
    Asset("coco.names", "weights/coco.names", f"{_FASTEST}/data/coco.names",
          "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84", "none stated (class list)",
          625, "the 80 COCO class names in Darknet order"),
    Asset("msrs", "data/msrs", "https://github.com/Linfeng-Tang/MSRS",
          None, "no licence file; academic dataset, cite PIAFusion (Tang et al. 2022)", None,
          "MSRS aligned visible/thermal road scenes; the folder holds vi/ and ir/ (and labels/)",
          kind="dataset"),
    Asset("roadscene", "data/roadscene", "https://github.com/hanna-xu/RoadScene",
          None, "no licence file; FLIR ADAS terms apply", None,
          "RoadScene aligned pairs from FLIR ADAS video; the folder holds crop_LR_visible/ and "
          "cropinfrared/", kind="dataset"),
    Asset("llvip", "data/llvip", "https://bupt-ai-cz.github.io/LLVIP/",
          None, "non-commercial use (see project page)", None,
          "LLVIP low-light visible/infrared pedestrian pairs; the folder holds visible/ and infrared/",
          kind="dataset"),
    Asset("kaist", "data/kaist", "https://soonminhwang.github.io/rgbt-ped-detection/",
          None, "see project page", None,
          "KAIST multispectral pedestrian benchmark; the folder holds its set00.. folders",
          kind="dataset"),
    Asset("flir", "data/flir", "https://www.flir.com/oem/adas/adas-dataset-form/",
          None, "FLIR ADAS dataset terms (registration form)", None,
          "FLIR ADAS thermal/RGB dataset, unpacked", kind="dataset"),
    Asset("m3fd", "data/m3fd", "https://github.com/JinyuanLiu-CV/TarDAL",
          None, "see project page (cite TarDAL, Liu et al. 2022)", None,
          "M3FD visible/infrared fusion and detection pairs, unpacked", kind="dataset"),
)


# ---------------------------------------------------------------------------------------------
# Lookup and search path


def get_asset(name: str) -> Asset:
    """The table entry whose name or relpath is ``name``.

    Raises:
        InvismapError: unknown name (the message lists the known ones).
    """
    for a in ASSETS:
        if name in (a.name, a.relpath):
            return a
    if "/" in name or "\\" in name or ".." in name:
        check_relpath(name)  # a clearer message for paths that try to leave the assets root
    known = ", ".join(a.name for a in ASSETS)
    raise InvismapError(f"unknown asset {name!r} (known assets: {known})")


def cache_dir() -> Path:
    """The user cache assets root: ``$XDG_CACHE_HOME/invismap``, default ``~/.cache/invismap``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "invismap"


def asset_dirs() -> list[Path]:
    """Assets roots in search order: each ``$INVISMAP_ASSETS`` entry, then :func:`cache_dir`."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    dirs.append(cache_dir())
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def check_relpath(relpath: str) -> PurePosixPath:
    """Return ``relpath`` as a relative POSIX path, refusing anything that could leave its root.

    Raises:
        InvismapError: empty, absolute (also ``C:\\...``), or containing ``..``.
    """
    p = PurePosixPath(relpath.replace("\\", "/"))
    if (not relpath.strip() or p.is_absolute() or PureWindowsPath(relpath).drive
            or ".." in p.parts or p == PurePosixPath(".")):
        raise InvismapError(f"{relpath!r}: not a plain relative asset path (absolute paths and '..' "
                            "are refused; use a name from `invismap assets list`)")
    return p


def _inside(root: Path, relpath: str) -> Path:
    """``root / relpath``, refused when it (after resolving links) lands outside ``root``."""
    p = root / check_relpath(relpath)
    real_root = root.resolve()
    if not p.resolve().is_relative_to(real_root):
        raise InvismapError(f"{p}: resolves outside {real_root} (a link points elsewhere; remove it)")
    return p


def _resolve_name(name_or_relpath: str | Asset) -> tuple[Asset | None, str]:
    if isinstance(name_or_relpath, Asset):
        return name_or_relpath, name_or_relpath.relpath
    for a in ASSETS:
        if name_or_relpath in (a.name, a.relpath):
            return a, a.relpath
    return None, str(check_relpath(name_or_relpath))


def locate(asset: str | Asset, dirs: Sequence[str | Path] | None = None) -> Path | None:
    """First existing copy of ``asset`` in ``dirs`` (default :func:`asset_dirs`), else ``None``."""
    _, rel = _resolve_name(asset)
    check_relpath(rel)
    for d in (asset_dirs() if dirs is None else [Path(x) for x in dirs]):
        p = Path(d) / rel
        if p.exists():
            return p
    return None


def find_asset(relpath_or_name: str | Asset, dirs: Sequence[str | Path] | None = None) -> Path:
    """Path of an asset: the first assets root (see :func:`asset_dirs`) that holds it.

    Args:
        relpath_or_name: a name from :data:`ASSETS` (``yolov5n.pt``, ``msrs``) or a relative path
            inside an assets root (``data/msrs/pairs.csv``).
        dirs: assets roots to search instead of :func:`asset_dirs`.

    Returns:
        The existing file (or dataset folder).

    Raises:
        InvismapError: not found (the message lists the folders searched and how to get it), or a
            path that would leave the assets root.
    """
    asset, rel = _resolve_name(relpath_or_name)
    roots = asset_dirs() if dirs is None else [Path(x) for x in dirs]
    found = locate(rel, roots)
    if found is not None:
        return found
    searched = ", ".join(str(r) for r in roots) or "(none)"
    where = (roots[0] if dirs is not None and roots else cache_dir()) / rel
    if asset is not None and asset.kind == "download":
        fix = f"run `invismap assets fetch {asset.name}`, or put the file at {where}"
    elif asset is not None and asset.kind == "dataset":
        fix = f"get it from {asset.url} and put it at {where}"
    elif asset is not None:
        fix = f"put it at {where}; {asset.note}"
    else:
        fix = f"put it at {where}"
    raise InvismapError(f"{rel}: not found in the assets folders ({searched}) "
                        f"({fix}; or set {ENV_VAR} to a folder holding {PurePosixPath(rel).parts[0]}/)")


def manual_instructions(asset: str | Asset, dest_dir: str | Path | None = None) -> str:
    """One line telling where to get an asset that is not downloaded automatically and where to put it."""
    a = get_asset(asset) if isinstance(asset, str) else asset
    where = Path(dest_dir) if dest_dir is not None else cache_dir()
    target = _inside(where, a.relpath)
    if a.kind == "dataset":
        return (f"{a.name}: dataset, no automatic download: get it from {a.url} (licence: {a.licence}) "
                f"and put it at {target} ({a.note}); or set {ENV_VAR} to a folder holding data/{a.name}")
    if a.kind == "derived":
        return f"{a.name}: no download URL: {a.note}; put it at {target}"
    return f"{a.name}: download {a.url} by hand and put it at {target}"


# ---------------------------------------------------------------------------------------------
# Checksums


def sha256_file(path: str | Path) -> str:
    """Full lowercase hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one asset.

    ``status`` is ``"ok"``, ``"mismatch"``, ``"unverified"`` (present, sha256 unknown), ``"present"``
    (dataset folder, not hashed) or ``"missing"``. ``actual`` is the computed sha256 when hashed.
    """

    asset: Asset
    path: Path | None
    status: str
    actual: str | None = None

    @property
    def failed(self) -> bool:
        """True when the file is present but its checksum is wrong."""
        return self.status == "mismatch"


def verify(dirs: Sequence[str | Path] | None = None,
           names: Iterable[str] | None = None) -> list[VerifyResult]:
    """Check the sha256 of every present asset (the copy :func:`find_asset` would return).

    Args:
        dirs: assets roots to search instead of :func:`asset_dirs`.
        names: only these assets (default: all of :data:`ASSETS`).

    Returns:
        One :class:`VerifyResult` per asset, in table order. Present files with an unknown sha256 are
        reported ``"unverified"`` and logged as a warning.
    """
    selected = ASSETS if names is None else tuple(get_asset(n) for n in names)
    results = []
    for a in selected:
        p = locate(a, dirs)
        if p is None:
            results.append(VerifyResult(a, None, "missing"))
        elif a.is_dataset:
            results.append(VerifyResult(a, p, "present"))
        elif a.sha256 is None:
            actual = sha256_file(p)
            log.warning("%s: sha256 not known, not verified (this copy's sha256 is %s)", p, actual)
            results.append(VerifyResult(a, p, "unverified", actual))
        else:
            actual = sha256_file(p)
            if actual != a.sha256:
                log.warning("%s: sha256 mismatch: expected %s, got %s", p, a.sha256, actual)
            results.append(VerifyResult(a, p, "ok" if actual == a.sha256 else "mismatch", actual))
    return results


def status_table(dirs: Sequence[str | Path] | None = None) -> list[tuple[str, str, str, str]]:
    """Rows ``(name, status, licence, source)``, status being ``present at PATH`` or ``missing``."""
    rows = []
    for a in ASSETS:
        p = locate(a, dirs)
        rows.append((a.name, f"present at {p}" if p is not None else "missing", a.licence, a.source))
    return rows


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Plain-text table with left-aligned columns separated by two spaces."""
    allrows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in allrows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Download


def fetch(name: str | Asset, dest_dir: str | Path | None = None, url: str | None = None, *,
          timeout: float = DEFAULT_TIMEOUT_S, force: bool = False, progress: bool | None = None) -> Path:
    """Download an asset into ``dest_dir/<relpath>``, verifying its sha256 before it appears there.

    The data goes to a temporary file in the destination folder and is renamed into place only when
    complete and matching the table's sha256; on any failure nothing is left behind.

    Args:
        name: a name or relpath from :data:`ASSETS`, or an :class:`Asset`.
        dest_dir: assets root to write into (default :func:`cache_dir`).
        url: download from this URL (a mirror) instead of the table's; the sha256 is still checked.
        timeout: seconds to wait for the connection and for each read.
        force: download even when a verified copy is already there.
        progress: show a tqdm bar (default: only when stderr is a terminal).

    Returns:
        The path of the downloaded (or already present and verified) file.

    Raises:
        InvismapError: unknown name, no download for this asset, path that would leave ``dest_dir``,
            network failure or timeout, truncated download, checksum mismatch, unwritable folder.
    """
    asset = name if isinstance(name, Asset) else get_asset(name)
    root = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    target = _inside(root, asset.relpath)
    src = url or asset.url
    if asset.is_dataset or not src:
        raise InvismapError(manual_instructions(asset, root))
    if not src.lower().startswith(("http://", "https://")):
        raise InvismapError(f"{src}: only http(s) URLs are downloaded (download it by hand and put it "
                            f"at {target})")

    if target.exists() and not force:
        if asset.sha256 is None:
            log.warning("%s: already present; sha256 not known, not verified", target)
            return target
        if sha256_file(target) == asset.sha256:
            log.info("%s: already present, sha256 ok", target)
            return target
        log.warning("%s: present but sha256 does not match; downloading again", target)

    by_hand = f"download it by hand from {src} and put it at {target}"
    req = urllib.request.Request(src, headers={"User-Agent": f"invismap/{__version__}"})
    log.info("downloading %s from %s", asset.name, src)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # the scheme is checked above
    except urllib.error.HTTPError as e:
        raise InvismapError(f"{asset.name}: {src} answered HTTP {e.code} {e.reason} ({by_hand})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise InvismapError(f"{asset.name}: cannot reach {src}: {_reason(e)} "
                            f"(no network? {by_hand})") from None

    with resp:
        total = _content_length(resp)
        h = hashlib.sha256()
        got = 0
        disable = None if progress is None else not progress  # None: only on a terminal
        with atomic_write(target, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                                    desc=asset.name, leave=False, disable=disable) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise InvismapError(f"{asset.name}: download from {src} failed after {got} bytes: "
                                        f"{_reason(e)} ({by_hand})") from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            if total is not None and got != total:
                raise InvismapError(f"{asset.name}: download from {src} truncated: {got} of {total} bytes "
                                    f"(try again, or {by_hand})")
            digest = h.hexdigest()
            if asset.sha256 is not None and digest != asset.sha256:
                raise InvismapError(f"{asset.name}: downloaded file from {src} has sha256 {digest}, "
                                    f"expected {asset.sha256}; nothing was saved "
                                    f"(check the URL or {by_hand})")
    if asset.sha256 is None:
        log.warning("%s: sha256 not known, not verified (downloaded file's sha256 is %s)", target, digest)
    else:
        log.info("%s: saved, sha256 ok", target)
    return target


def _content_length(resp: object) -> int | None:
    value = getattr(resp, "headers", {}).get("Content-Length")
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return " ".join(str(text).split())
