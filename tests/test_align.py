"""AlignGAN: networks, the two data streams, the GAN step's freezing, a short real run, resume, align."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from invismap.align.cli import add_parser
from invismap.align.data import AlignDataset, FieldConfig, compose_flows, find_neighbours, remap
from invismap.align.networks import (
    AlignNetConfig,
    build_aligngan,
    correlation,
    edge_map,
    generate,
    warp,
)
from invismap.align.run import AlignConfig, align_dataset, load_aligner, move_boxes, train_aligngan
from invismap.align.task import GanTask
from invismap.config import load_config
from invismap.data.manifest import Manifest, Sample, load_manifest, read_yolo_labels, save_manifest
from invismap.engine.checkpoint import load_checkpoint
from invismap.engine.loop import TrainConfig
from invismap.errors import InvismapError
from invismap.io import read_color, read_thermal, write_image
from invismap.registration.displacement import edge_image
from invismap.registration.synthetic import cross_modal_pair, random_scene

NAMES = ("00001D", "00002D", "00003N", "00004N")
TINY = AlignNetConfig(g_width=4, g_depth=3, m_width=4, m_depth=2, corr_levels=2, corr_radius=2,
                      corr_windows=(3, 5), d_width=4, d_layers=2)


@pytest.fixture(scope="module")
def msrs4(msrs_dir: Path, tmp_path_factory) -> Path:
    """Manifest of four real MSRS pairs (two day, two night) with their color labels."""
    samples = [Sample(n, msrs_dir / "vi" / f"{n}.png", msrs_dir / "ir" / f"{n}.png",
                      "night" if n.endswith("N") else "day", "train", None,
                      msrs_dir / "labels" / "visible" / f"{n}.txt",
                      msrs_dir / "labels" / "infrared" / f"{n}.txt")
               for n in NAMES]
    return save_manifest(Manifest(samples, msrs_dir), tmp_path_factory.mktemp("msrs4") / "manifest.csv")


def _cfg(data: Path, **train) -> AlignConfig:
    t = {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "eval_every": 2, "ckpt_every": 2,
         "log_every": 1, "image_every": 2}
    t.update(train)
    return AlignConfig(data=str(data), crop=64, val_every_nth=4, net=TINY, train=TrainConfig(**t))


# ---------------------------------------------------------------- networks


def test_networks_forward_backward_shapes():
    nets = build_aligngan(TINY)
    src, edge, cues = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64), torch.randn(2, 5, 64, 64)
    fake, flow = generate(nets, src, edge, cues)
    assert fake.shape == (2, 3, 64, 64) and flow.shape == (2, 2, 64, 64)
    (fake.mean() + flow.mean()).backward()
    for name in ("G", "Gm"):
        grads = [p.grad for p in nets[name].parameters()]
        assert all(g is not None for g in grads), name
    assert nets["D"](torch.cat([edge, fake.detach()], 1)).shape[:2] == (2, 1)
    assert nets["Dm"](torch.cat([edge, flow.detach()], 1)).shape[:2] == (2, 1)
    # At initialisation Gm's flow is its prior, the classical cue.
    assert torch.allclose(flow, cues[:, :2], atol=1e-5)
    with pytest.raises(ValueError, match="needs motion cues"):
        generate(nets, src, edge)
    # Without a prior; sizes that are no multiple of the strides work too (the aligner pads anyway).
    plain = build_aligngan(dataclasses.replace(TINY, prior="none"))
    fake, flow = generate(plain, torch.rand(1, 3, 60, 76), torch.rand(1, 1, 60, 76))
    assert fake.shape == (1, 3, 60, 76) and flow.shape == (1, 2, 60, 76)


def test_generator_starts_as_the_warped_source():
    nets = build_aligngan(TINY)
    src = torch.rand(1, 3, 32, 32)
    flow = torch.zeros(1, 2, 32, 32)
    flow[:, 0] = 2.0  # out(x) = src(x + 2)
    out = nets["G"](src, torch.rand(1, 1, 32, 32), flow)
    assert torch.allclose(out[..., :-2], src[..., 2:], atol=1e-5)
    assert torch.allclose(warp(src, torch.zeros(1, 2, 32, 32)), src, atol=1e-6)


def test_correlation_peaks_at_the_true_shift():
    a = torch.randn(1, 8, 16, 16)
    b = torch.roll(a, shifts=(1, -2), dims=(2, 3))  # b(x) = a(x - (dx=-2, dy=1)), so a(x) = b(x + (-2, 1))
    cost = correlation(a, b, radius=3)[0, :, 4:-4, 4:-4].mean((1, 2))
    k = int(cost.argmax())
    assert (k // 7 - 3, k % 7 - 3) == (1, -2)  # (dy, dx)


def test_edge_map_matches_edge_image():
    img = cv2.cvtColor(random_scene((96, 128)), cv2.COLOR_GRAY2RGB)
    ref = edge_image(img)
    ours = edge_map(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
    inner = (slice(20, -20), slice(20, -20))
    assert np.corrcoef(ref[inner].ravel(), ours[inner].ravel())[0, 1] > 0.95


def test_net_config_is_checked():
    with pytest.raises(ValueError, match="norm"):
        AlignNetConfig(norm="group")
    with pytest.raises(ValueError, match="odd"):
        AlignNetConfig(corr_windows=(4,))


# ---------------------------------------------------------------- data streams


def _stream_error(s: dict) -> float:
    """Mean |warp(source, motion) - target| over valid pixels away from the border."""
    warped = warp(s["source"][None], s["motion"][None])[0]
    v = s["valid"].clone()
    v[:, :8], v[:, -8:], v[:, :, :8], v[:, :, -8:] = 0, 0, 0, 0
    return float(((warped - s["target"]).abs() * v).sum() / (3 * v.sum()))


@pytest.mark.parametrize("target", ["color", "flow"])
def test_stream_a_motion_moves_source_onto_target(msrs4: Path, target: str):
    ds = AlignDataset(load_manifest(msrs4).select(names=["00001D"]), crop=128, target=target)
    item = ds[0]
    s = item["a"]
    assert s["source"].shape == (3, 128, 128) and s["edge"].shape == (1, 128, 128)
    assert s["cues"].shape == (5, 128, 128)
    assert torch.isfinite(s["cues"]).all()
    assert 0 <= float(s["cues"][4].min()) <= float(s["cues"][4].max()) <= 1
    assert float(s["motion"].norm(dim=0).mean()) > 1.0  # moved for real
    assert float((s["source"] - s["target"]).abs().mean()) > 2 * _stream_error(s)
    assert _stream_error(s) < 0.02
    assert "b" not in item and not ds.has_stream_b  # MSRS has no timestamps
    again = ds[0]["a"]
    assert all(torch.equal(s[k], again[k]) for k in s)  # a pure function of (seed, epoch, index)
    assert not torch.equal(ds[len(ds)]["a"]["source"], s["source"])  # next epoch: another draw
    assert "cues" not in AlignDataset(ds.manifest, crop=64, cues=False)[0]["a"]


def test_compose_and_remap():
    a = np.zeros((20, 30, 2), np.float32)
    a[..., 0] = 1.5
    b = np.zeros_like(a)
    b[..., 1] = -2.0
    assert np.allclose(compose_flows(a, b), [1.5, -2.0])
    img = np.tile(np.arange(30, dtype=np.float32), (20, 1))
    assert np.allclose(remap(img, a)[:, :25], img[:, :25] + 1.5)


def _sequence(root: Path, n: int = 4, step: float = 3.0) -> Manifest:
    """A synthetic video: the color camera pans ``step`` px per frame over one scene; thermal alike."""
    scene = random_scene((200, 260), n_shapes=80, generator=np.random.default_rng(3))
    thermal, color = cross_modal_pair(scene)
    samples = []
    for t in range(n):
        m = np.float32([[1, 0, -step * t], [0, 1, 0]])  # frame t(x) = scene(x + step * t)
        c = cv2.warpAffine(color, m, (260, 200), borderMode=cv2.BORDER_REFLECT)[20:180, 20:240]
        th = cv2.warpAffine(thermal, m, (260, 200), borderMode=cv2.BORDER_REFLECT)[20:180, 20:240]
        write_image(root / "color" / f"f{t}.png", c)
        write_image(root / "thermal" / f"f{t}.png", th)
        samples.append(Sample(f"f{t}", root / "color" / f"f{t}.png", root / "thermal" / f"f{t}.png", "day",
                              "train", 100.0 + 0.1 * t))
    return Manifest(samples, root)


def a_edge_of(rgb: torch.Tensor) -> torch.Tensor:
    """edge_image of a crop (border effects aside, the dataset's edge map of the full frame)."""
    img = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return torch.from_numpy(edge_image(img))[None]


def test_stream_b_on_a_synthetic_sequence(tmp_path: Path):
    m = _sequence(tmp_path)
    assert find_neighbours(m, max_gap=0.15) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert find_neighbours(m, max_gap=0.05) == []
    ds = AlignDataset(m, crop=96, hflip=0.0, max_gap=0.15)
    assert ds.has_stream_b
    item = ds[0]
    b = item["b"]
    # Frames are 1 apart: the neighbour's content sits 3 px to the side, and DIS finds it.
    med = b["motion"].flatten(1).median(1).values
    assert abs(abs(float(med[0])) - 3.0) < 0.5 and abs(float(med[1])) < 0.5
    assert _stream_error(b) < 0.03
    assert abs(float(b["cues"][0].median() - med[0])) < 0.5  # the classical cue sees the pan too
    assert float((b["edge"] - a_edge_of(b["target"])).abs().mean()) < 0.05  # the target frame's edges
    # One GAN step on both streams.
    batch = default_collate([ds[0], ds[1]])
    task = GanTask(build_aligngan(TINY), TINY)
    out = task.training_step(batch)
    assert {"a/l1", "b/l1", "b/motion_epe"} <= set(out) and torch.isfinite(out["loss/gen"])
    assert "b" not in AlignDataset(m, crop=96, neighbours="off")[0]


# ---------------------------------------------------------------- the GAN step


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_gan_step_freezes_each_side(msrs4: Path):
    ds = AlignDataset(load_manifest(msrs4), crop=64)
    batch = default_collate([ds[0], ds[1]])
    task = GanTask(build_aligngan(TINY), TINY)
    opts = task.configure_optimizers(TrainConfig(lr=1e-2))
    n = task.nets
    out = task.training_step(batch)
    assert [k for k in out if k.startswith("loss/")] == ["loss/gen", "loss/disc"]
    assert all(p.requires_grad for p in n.parameters())  # D and Dm are unfrozen again
    gen, disc = [*n["G"].parameters(), *n["Gm"].parameters()], [*n["D"].parameters(), *n["Dm"].parameters()]
    before_g, before_d = _params(n["G"]) + _params(n["Gm"]), _params(n["D"]) + _params(n["Dm"])
    # Exactly what engine.loop.fit does, in the same order.
    opts["gen"].zero_grad(set_to_none=True)
    out["loss/gen"].backward()
    assert all(p.grad is None for p in disc)  # D and Dm were frozen while G's loss was built
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in n["G"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in n["Gm"].parameters())
    opts["gen"].step()
    mid_g, mid_d = [p.detach().clone() for p in gen], [p.detach().clone() for p in disc]
    assert not _same(before_g, mid_g) and _same(before_d, mid_d)
    grads_g = [p.grad.clone() for p in gen if p.grad is not None]
    opts["disc"].zero_grad(set_to_none=True)
    out["loss/disc"].backward()  # must not fail although G was stepped in place
    assert _same(grads_g, [p.grad for p in gen if p.grad is not None])  # fakes were detached
    opts["disc"].step()
    assert _same(mid_g, [p.detach() for p in gen]) and not _same(mid_d, [p.detach() for p in disc])


# ---------------------------------------------------------------- training, resume, align


@pytest.fixture(scope="module")
def trained(msrs4: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("align_run")
    summary = train_aligngan(_cfg(msrs4), run, progress=False)
    assert summary.steps == 4 and summary.details["train_pairs"] == 3 and summary.details["val_pairs"] == 1
    assert summary.outputs["aligngan"].is_file()
    return run


def test_short_fit_on_real_pairs_and_exact_resume(trained: Path, msrs4: Path, tmp_path: Path):
    assert (trained / "aligngan.pt").is_file() and (trained / "ckpt" / "best.pt").is_file()
    assert any((trained / "tb").iterdir())
    part = tmp_path / "part"
    train_aligngan(_cfg(msrs4), part, progress=False, stop_at=2)
    assert not (part / "aligngan.pt").exists()
    torch.manual_seed(99)  # a new process: other RNG state, same config
    summary = train_aligngan(_cfg(msrs4), part, progress=False, resume=True)
    assert summary.start_step == 2
    a = load_checkpoint(trained / "ckpt" / "last.pt", "aligngan")["model"]
    b = load_checkpoint(part / "ckpt" / "last.pt", "aligngan")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InvismapError, match="already exists"):
        train_aligngan(_cfg(msrs4), part, progress=False)


def test_align_dataset_writes_a_valid_manifest(trained: Path, msrs4: Path, tmp_path: Path):
    src = load_manifest(msrs4).select(names=["00001D", "00003N"])
    out = align_dataset(trained / "aligngan.pt", src, tmp_path / "aligned", progress=False)
    again = load_manifest(tmp_path / "aligned")
    assert [s.name for s in again] == ["00001D", "00003N"] == [s.name for s in out]
    for s, orig in zip(again, src):
        assert s.thermal == orig.thermal and s.thermal_labels == orig.thermal_labels
        assert s.color.parent == (tmp_path / "aligned" / "color").resolve()
        assert read_color(s.color).shape == (*read_thermal(s.thermal).shape, 3)
        assert len(read_yolo_labels(s.color_labels)) <= len(read_yolo_labels(orig.color_labels))
    aligner = load_aligner(trained / "aligngan.pt")
    aligned, flow = aligner.align_pair(read_thermal(src[0].thermal), read_color(src[0].color))
    assert aligned.dtype == np.uint8 and flow.shape == (480, 640, 2)
    with pytest.raises(InvismapError, match="not a readable invismap checkpoint"):
        load_aligner(msrs4)

def test_move_boxes_follows_the_flow():
    flow = np.zeros((100, 120, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0  # aligned(x) = source(x + (3, -2))
    moved = move_boxes(np.array([[10.0, 20, 40, 60]]), flow)
    assert np.allclose(moved, [[7, 22, 37, 62]])


# ---------------------------------------------------------------- config and CLI


def test_config_and_cli(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("data: x.csv\ncrop: 128\nnet:\n  corr_windows: [5, 9]\n")
    cfg = load_config(AlignConfig, tmp_path / "a.yaml", ["misalign.max_shift=4", "train.max_steps=7"])
    assert cfg.crop == 128 and cfg.net.corr_windows == (5, 9) and cfg.misalign == FieldConfig(max_shift=4.0)
    assert cfg.train.max_steps == 7
    with pytest.raises(InvismapError, match=r"unknown config key 'net.width'"):
        load_config(AlignConfig, None, ["net.width=3"])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["align-train", "c.yaml", "crop=64", "--resume"])
    assert args.resume and args.overrides == ["crop=64"]
    args = parser.parse_args(["align", "--model", "m.pt", "--data", "d", "--out", "o"])
    assert args.model == "m.pt" and callable(args.func)


def test_aligner_plugs_into_the_weak_alignment_benchmark(trained: Path, msrs4: Path):
    from invismap.align.run import aligngan_estimators
    from invismap.registration.experiment import weak_alignment_experiment

    s = load_manifest(msrs4)[0]
    thr, rgb = read_thermal(s.thermal)[100:260, 200:400], read_color(s.color)[100:260, 200:400]
    res = weak_alignment_experiment([(s.name, thr, rgb)],
                                    aligngan_estimators(load_aligner(trained / "aligngan.pt")))
    for key in ("aligngan/after_abs_share_ge5_all", "aligngan_flow/epe_abs_all",
                "before/after_abs_epe_edges"):
        assert np.isfinite(res["trials"][0][key]), key
