"""The restricted unpickler: reads official Ultralytics checkpoints, runs nothing from any file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
import zipfile

import pytest
import torch

from invismap.detector.unpickle import PickledObject, load_checkpoint, module_state_dict, restricted_load
from invismap.detector.zoo import load_detector
from invismap.errors import InvismapError


class _Reduce:
    """Pickles as ``func(*args)``: how a hostile checkpoint smuggles a call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_official_checkpoint_state_dict_matches_plain_state_dict(weights_dir):
    ckpt = restricted_load(weights_dir / "yolov5n.pt")
    model = ckpt["model"]
    assert isinstance(model, PickledObject) and model.type_name == "models.yolo.Model"
    assert ckpt["ema"] is None and model.state["nc"] == 80 and model.state["names"][2] == "car"
    sd = module_state_dict(model)
    ref = torch.load(weights_dir / "yolov5n_state_dict.pt", weights_only=True)
    assert list(sd) == list(ref) and len(sd) == 349
    assert all(torch.equal(sd[k].float(), ref[k].float()) for k in ref)
    assert sd["model.0.conv.weight"].dtype == torch.float16  # stored dtype kept; the model converts


@pytest.fixture
def fake_yolov5_repo(monkeypatch):
    """Importable stand-ins for the yolov5 repo's ``models.yolo.Model`` / ``models.common.Conv``, so that
    torch.save can write checkpoints that reference them, as real Ultralytics files do."""
    classes = {}
    for mod_name, cls_name in (("models.yolo", "Model"), ("models.common", "Conv")):
        mod = types.ModuleType(mod_name)
        classes[cls_name] = type(cls_name, (), {"__module__": mod_name})
        setattr(mod, cls_name, classes[cls_name])
        monkeypatch.setitem(sys.modules, mod_name, mod)
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    return classes


def _marker_cmd(marker):
    return f"touch {marker}"


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.call", "nested"])
def test_malicious_zip_checkpoint_is_refused_and_nothing_runs(tmp_path, payload, fake_yolov5_repo):
    marker = tmp_path / "pwned"
    evil = {
        "os.system": _Reduce(os.system, _marker_cmd(marker)),
        "builtins.eval": _Reduce(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
        # A call hidden inside the state of an allowed model class.
        "nested": {"model": _Reduce(fake_yolov5_repo["Model"], _Reduce(os.system, _marker_cmd(marker)))},
    }[payload]
    path = tmp_path / "evil.pt"
    torch.save({"epoch": -1, "model": evil, "w": torch.zeros(3)}, path)  # a real torch zip checkpoint
    for load in (restricted_load, load_checkpoint, load_detector):
        with pytest.raises(InvismapError) as e:
            load(path)
        msg = str(e.value)
        assert str(path) in msg and "refused" in msg
        name = {"os.system": "system", "builtins.eval": "builtins.eval", "subprocess.call": "subprocess.call",
                "nested": "system"}[payload]
        assert name in msg
    assert not marker.exists()


def test_malicious_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _Reduce(os.system, _marker_cmd(marker))}, protocol=2))
    for load in (restricted_load, load_detector):
        with pytest.raises(InvismapError, match="system"):
            load(path)
    assert not marker.exists()


def test_hand_made_zip_with_forbidden_global(tmp_path):
    """A data.pkl written by hand (no torch.save), with a protocol-0 GLOBAL for posix.system."""
    marker = tmp_path / "pwned"
    path = tmp_path / "hand.pt"
    data = f"cposix\nsystem\n(V{_marker_cmd(marker)}\ntR.".encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
    with pytest.raises(InvismapError, match=r"posix.system"):
        restricted_load(path)
    assert not marker.exists()


def test_model_classes_become_inert_placeholders(tmp_path, fake_yolov5_repo):
    obj = fake_yolov5_repo["Conv"]()
    obj.__dict__.update({"_parameters": {"weight": torch.ones(2)}, "_buffers": {}, "_modules": {}})
    path = tmp_path / "m.pt"
    torch.save({"model": obj}, path)
    loaded = restricted_load(path)["model"]
    assert type(loaded).__name__ == "Conv" and loaded.type_name == "models.common.Conv"
    assert torch.equal(module_state_dict(loaded)["weight"], torch.ones(2))


def test_shared_storage_views_are_rebuilt(tmp_path, fake_yolov5_repo):
    base = torch.arange(12, dtype=torch.float32)
    path = tmp_path / "views.pt"
    torch.save({"model": fake_yolov5_repo["Model"](), "a": base[2:8].view(2, 3), "b": base.view(3, 4).t()},
               path)
    out = restricted_load(path)
    assert torch.equal(out["a"], base[2:8].view(2, 3)) and torch.equal(out["b"], base.view(3, 4).t())


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InvismapError, match=r"bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(InvismapError, match="not found"):
        restricted_load(tmp_path / "nope.pt")
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C))  # the legacy format's magic number
    with pytest.raises(InvismapError, match="legacy"):
        restricted_load(legacy)
