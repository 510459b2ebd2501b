"""Large inputs: the import's header-only check, fast path resolution in manifests, the bounded pair cache,
and videos predicted as a stream (``benchmarks/bench_scale.py`` and ``bench_stream.py`` measure them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.data.dataset import CACHE_BYTES, PairDataset
from invismap.data.importers import import_dataset
from invismap.data.manifest import FolderResolver, Manifest, Sample, load_manifest, save_manifest
from invismap.errors import InvismapError

SIZES = {"0001D": (40, 32), "0002N": (48, 24), "0003D": (40, 32)}  # name -> (width, height)


def _flat_msrs(src: Path, sizes=SIZES, thermal_sizes=None) -> Path:
    for sub in ("vi", "ir"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h)) in enumerate(sizes.items()):
        tw, th = (thermal_sizes or sizes)[name]
        assert cv2.imwrite(str(src / "vi" / f"{name}.png"), np.full((h, w, 3), 30 * i, np.uint8))
        assert cv2.imwrite(str(src / "ir" / f"{name}.png"), np.full((th, tw), 30 * i + 5, np.uint8))
    return src


# --------------------------------------------------------------------------------------------- import check

def test_header_check_writes_the_same_manifest_as_decoding(tmp_path):
    src = _flat_msrs(tmp_path / "src")
    import_dataset("msrs", src, tmp_path / "decode", progress=False)
    import_dataset("msrs", src, tmp_path / "header", progress=False, check="header")
    assert ((tmp_path / "decode" / "manifest.csv").read_text()
            == (tmp_path / "header" / "manifest.csv").read_text())


def test_header_check_still_refuses_sizes_that_differ_and_unreadable_files(tmp_path):
    thermal = {**SIZES, "0002N": (40, 32)}
    src = _flat_msrs(tmp_path / "src", thermal_sizes=thermal)
    with pytest.raises(InvismapError, match=r"0002N\.png: size 40x32 differs from its color twin"):
        import_dataset("msrs", src, tmp_path / "dst", progress=False, check="header")
    src = _flat_msrs(tmp_path / "src2")
    (src / "ir" / "0003D.png").write_bytes(b"not an image at all")
    with pytest.raises(InvismapError, match=r"0003D\.png: not a readable image") as e:
        import_dataset("msrs", src, tmp_path / "dst2", progress=False, check="header")
    assert "\n" not in str(e.value)


def test_unknown_check_is_refused_before_any_work(tmp_path):
    src = _flat_msrs(tmp_path / "src")
    with pytest.raises(InvismapError, match="image check 'quick' is not one of decode, header"):
        import_dataset("msrs", src, tmp_path / "dst", progress=False, check="quick")
    assert not (tmp_path / "dst").exists()


def test_import_cli_takes_the_check(tmp_path, capsys):
    from invismap.cli import main

    src = _flat_msrs(tmp_path / "src")
    main(["data", "import", "msrs", str(src), str(tmp_path / "dst"), "--check", "header"])
    assert "imported 3 pairs" in capsys.readouterr().out
    assert len(load_manifest(tmp_path / "dst")) == 3


# --------------------------------------------------------------------------------------------- manifests

def test_folder_resolver_agrees_with_path_resolve(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(b"x")
    (tmp_path / "linked_dir").symlink_to(real)
    (real / "link.png").symlink_to(real / "a.png")
    monkeypatch.chdir(tmp_path)
    resolve = FolderResolver()
    for p in [real / "a.png", tmp_path / "linked_dir" / "a.png", real / "link.png", real / "missing.png",
              real / ".." / "real" / "a.png", Path("linked_dir/a.png"), Path("real/.."), Path(".")]:
        assert resolve(p) == p.resolve(), p
        assert resolve(p) == p.resolve(), p  # the folder now comes from the resolver's memory


def test_manifest_paths_through_a_linked_folder_round_trip(tmp_path):
    real = _flat_msrs(tmp_path / "real")
    os.symlink(real, tmp_path / "link")
    samples = [Sample(n, tmp_path / "link" / "vi" / f"{n}.png", tmp_path / "link" / "ir" / f"{n}.png")
               for n in SIZES]
    save_manifest(Manifest(samples, tmp_path / "ds"), tmp_path / "ds" / "manifest.csv")
    assert "../real/vi/0001D.png" in (tmp_path / "ds" / "manifest.csv").read_text()
    loaded = load_manifest(tmp_path / "ds")
    assert [s.color for s in loaded] == [(real / "vi" / f"{n}.png").resolve() for n in SIZES]


# --------------------------------------------------------------------------------------------- pair cache

def _pairs(tmp_path: Path) -> Manifest:
    src = _flat_msrs(tmp_path / "src", sizes=dict.fromkeys(SIZES, (40, 32)))
    return Manifest([Sample(n, src / "vi" / f"{n}.png", src / "ir" / f"{n}.png") for n in SIZES], src)


def test_pair_cache_holds_what_fits_its_budget(tmp_path):
    pairs = _pairs(tmp_path)
    plain = PairDataset(pairs, size=64)
    one = plain._load(0)
    item_bytes = one[0].nbytes + one[1].nbytes + one[2].nbytes + one[3].nbytes
    budgeted = PairDataset(pairs, size=64, cache=2 * item_bytes)
    for _ in range(2):
        items = [budgeted[i] for i in range(len(pairs))]
    cache = budgeted._cache
    first, second = pairs[0].name, pairs[1].name
    assert cache.nbytes == 2 * item_bytes and len(cache) == 2 and first in cache and second in cache
    for a, b in zip(items, [plain[i] for i in range(len(pairs))]):
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["thermal"], b["thermal"])
    assert plain._cache.budget == 0 and len(plain._cache) == 0
    assert PairDataset(pairs, size=64, cache=True)._cache.budget == CACHE_BYTES
    # a pair listed twice (distill.extra_repeat) is kept once
    twice = PairDataset(Manifest(pairs.samples * 2, pairs.root), size=64, cache=True)
    _ = [twice[i] for i in range(len(twice))]
    assert len(twice._cache) == len(pairs) and twice._cache.nbytes == len(pairs) * item_bytes


def test_predictor_cache_holds_what_fits_and_items_do_not_depend_on_it(tmp_path, monkeypatch):
    """The predictor's targets and features: bounded like the pairs, and read rounded to float16 whether kept
    or not, so a pair's values never depend on whether this process (or loader worker) met it before."""
    from invismap.invisibility import predictor

    pairs = _pairs(tmp_path)
    target = lambda item: item["rgb"].mean(0, keepdim=True)  # (1, H, W), in [0, 1]
    features = lambda rgb: [rgb * 1.0001, rgb[..., ::2, ::2] / 3]  # two "scales"
    item_bytes = 2 * (64 * 64 + 3 * 64 * 64 + 3 * 32 * 32)  # float16 target + features of one image, one flip

    def items(cache):
        data = predictor.TargetMapDataset(PairDataset(pairs, size=64), target_fn=target, cache=cache,
                                          feature_fn=features, hflip=0.5, seed=3)
        return data, [data[i] for i in range(3 * len(pairs))]  # three epochs: each image flipped or not

    monkeypatch.setattr(predictor, "CACHE_BYTES", 3 * item_bytes)
    kept, with_cache = items(True)
    _, without = items(False)
    assert kept._cache.nbytes <= 3 * item_bytes and len(kept._cache) >= 2
    for a, b in zip(with_cache, without):
        assert torch.equal(a["target"], b["target"]) and all(map(torch.equal, a["features"], b["features"]))
        assert torch.equal(a["target"], a["target"].half().float())


@pytest.mark.parametrize("cache", [-1, 1.5, "yes"])
def test_pair_cache_refuses_a_bad_budget(tmp_path, cache):
    with pytest.raises(InvismapError, match="cache must be true, false or a number of bytes"):
        PairDataset(_pairs(tmp_path), size=64, cache=cache)


# --------------------------------------------------------------------------------------------- video stream

def test_video_is_predicted_and_written_one_batch_at_a_time(tmp_path, monkeypatch):
    """No list of frames or maps builds up: each batch's overlays are made before the next batch is read."""
    from invismap.invisibility import predict
    from invismap.invisibility.unet import InvisibilityUNet, UNetConfig

    video, frames, batch = tmp_path / "clip.mp4", 11, 4
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for k in range(frames):
        writer.write(np.full((48, 64, 3), 20 * k, np.uint8))
    writer.release()
    events = []
    predict_images, overlay = predict.predict_images, predict.overlay
    monkeypatch.setattr(predict, "predict_images",
                        lambda model, imgs, *a: events.append(len(imgs)) or predict_images(model, imgs, *a))
    monkeypatch.setattr(predict, "overlay", lambda *a: events.append("o") or overlay(*a))
    monkeypatch.setattr(predict, "release_freed_memory", lambda: events.append("r"))
    model = InvisibilityUNet(UNetConfig(base_width=4)).eval()
    (rec,) = predict.predict_source(model, video, tmp_path / "out", batch_size=batch, size=64, progress=False)
    assert rec["frames"] == frames
    assert events == [4, *"oooor", 4, *"oooor", 3, *"ooor"]
    cap, written = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4")), 0
    while cap.grab():
        written += 1
    assert written == frames


def test_freed_memory_goes_back_where_malloc_is_glibcs():
    from invismap.invisibility.predict import release_freed_memory

    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")
