"""Every implementation picked by name comes from one :class:`~invismap.registry.Registry`; each test here is
parametrized over a registry's names, so a new entry is tested the moment it is registered (as timm tests its
models)."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from invismap.data.importers import IMPORTERS, import_dataset
from invismap.detector.zoo import KINDS, load_detector
from invismap.distill.losses import LOSSES as DISTILL_LOSSES
from invismap.distill.losses import distill_loss
from invismap.distill.run import DistillConfig
from invismap.engine.checkpoint import save_checkpoint
from invismap.errors import InvismapError
from invismap.invisibility.predictor import LOSSES as PREDICTOR_LOSSES
from invismap.invisibility.predictor import PredictorConfig, masked_loss
from invismap.invisibility.sources import SOURCES, map_source
from invismap.registration.experiment import ESTIMATORS, default_estimators, weak_alignment_experiment
from invismap.registry import Registry

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_registry_refuses_a_name_twice_and_lists_the_known_on_a_miss():
    r: Registry[int] = Registry("thing", lazy={"later": "math:pi"})
    r.register("one")(1)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("one")(2)
    assert r.names() == ["one", "later"] and "later" in r and len(r) == 2
    assert r.get("later") == pytest.approx(3.14159, abs=1e-5)  # imported on first use
    with pytest.raises(InvismapError, match=r"unknown thing 'two' \(known: one, later\)"):
        r.get("two")


# ------------------------------------------------------------------------------------------ map sources

NEEDS_A_FILE = {"predictor", "pair", "prior"}  # built from a trained run; scored in test_invisibility_eval


@pytest.mark.parametrize("name", SOURCES.names())
def test_map_source(name, msrs):
    """A source that needs no file maps a real pair to an (H, W) map in [0, 1]; one that needs a file says
    so in one line when it is missing."""
    if name in NEEDS_A_FILE:
        with pytest.raises(InvismapError, match=f"map source '{name}' needs"):
            map_source(name)
        with pytest.raises(InvismapError) as e:
            map_source(f"{name}:/nonexistent/run/file.pt")
        assert "\n" not in str(e.value) and "/nonexistent/run" in str(e.value)
        return
    from invismap.io import read_color, read_thermal

    sample = next(s for s in msrs if s.thermal_labels is not None)
    rgb, thermal = read_color(sample.color), read_thermal(sample.thermal)
    _, source = map_source(name)
    m = np.asarray(source(sample, rgb, thermal))
    assert m.shape == rgb.shape[:2] and np.isfinite(m).all() and 0 <= m.min() <= m.max() <= 1
    assert m.std() > 0 or (name == "oracle" and not sample.thermal_labels)  # not a constant


# ------------------------------------------------------------------------------------------- importers

@pytest.mark.parametrize("fmt", IMPORTERS.names())
def test_importer_refuses_an_empty_folder_in_one_line_and_is_documented(fmt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvismapError) as e:
        import_dataset(fmt, empty, tmp_path / "out")
    assert "\n" not in str(e.value) and str(empty) in str(e.value)
    assert f"| `{fmt}` |" in README  # a row in the README's table of layouts


# -------------------------------------------------------------------------------------------- losses

def _features(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, s, s, generator=g) for c, s in ((8, 16), (16, 8))]


def _heads(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [f.mean(1, keepdim=True) * 2 for f in feats]


def test_the_losses_are_the_configs_choices():
    def choices(cls) -> set[str]:
        return set(typing.get_args(typing.get_type_hints(cls)["loss"]))

    assert set(DISTILL_LOSSES.names()) == choices(DistillConfig)
    assert set(PREDICTOR_LOSSES.names()) == choices(PredictorConfig)


@pytest.mark.parametrize("name", DISTILL_LOSSES.names())
def test_distill_loss(name):
    """Zero when the student matches the teacher; positive otherwise, with a gradient to the student only."""
    teacher = _features(0)
    assert float(distill_loss(name, teacher, teacher, _heads)["total"]) == 0
    student = [f.clone().requires_grad_() for f in _features(1)]
    out = distill_loss(name, student, teacher, _heads)
    assert float(out["total"].detach()) > 0 and set(out) <= {"total", "mid", "head"}
    out["total"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


@pytest.mark.parametrize("name", PREDICTOR_LOSSES.names())
def test_predictor_loss(name):
    """Lower for logits that agree with the target; padding (valid = 0) does not count."""
    target = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    valid = torch.ones_like(target)
    valid[..., :, 4:] = 0
    good, bad = (target * 2 - 1) * 4, (1 - target * 2) * 4
    assert masked_loss(good, target, valid, name) < masked_loss(bad, target, valid, name)
    noise = torch.randn(1, 1, 8, 8)
    noisy_padding = torch.where(valid.bool(), good, noise)
    assert masked_loss(noisy_padding, target, valid, name) == pytest.approx(float(masked_loss(good, target,
                                                                                                valid, name)))


# ------------------------------------------------------------------------------- alignment estimators

@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_alignment_estimator_recovers_a_known_misalignment(name, msrs):
    """Each estimator, given a real pair whose color image was moved by a known field, reduces the
    misalignment (edge end-point error) below what it was."""
    from invismap.io import read_color, read_thermal

    sample = next(s for s in msrs if s.split == "train" and s.condition == "day")
    pairs = [(sample.name, read_thermal(sample.thermal), read_color(sample.color))]
    res = weak_alignment_experiment(pairs, default_estimators(names=[name]), seed=0)
    summary = res["summary"]
    before, after = summary["before"]["after_abs_epe_edges"], summary[name]["after_rel_epe_edges"]
    assert before > 2 and after < before


# ----------------------------------------------------------------------------- detector checkpoint kinds

@pytest.mark.parametrize("kind", KINDS.names())
def test_detector_kind_refuses_a_checkpoint_without_its_weights_in_one_line(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(path, {"kind": kind})
    with pytest.raises(InvismapError) as e:
        load_detector(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_an_unknown_detector_kind_lists_the_registered_ones(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, {"kind": "predictor"})
    with pytest.raises(InvismapError, match="is not a detector.*" + ", ".join(KINDS.names())):
        load_detector(path)
