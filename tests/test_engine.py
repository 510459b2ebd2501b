"""The shared training loop: exact resume, NaN guard, DDP on CPU matching a single process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from invismap.engine.checkpoint import load_checkpoint, save_checkpoint
from invismap.engine.loop import StepBatchSampler, Task, TrainConfig, fit, lr_at
from invismap.errors import InvismapError


class Points(Dataset):
    """y = 3x - 1 with noise; index i + epoch*n allowed (the sampler's convention)."""

    def __init__(self, n=40, nan_at=()):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([3.0, -1.0, 0.5, 2.0]) + 0.1 * torch.randn(n, generator=g)
        self.nan_at = set(nan_at)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        i = i % len(self.x)
        x = self.x[i].clone()
        if i in self.nan_at:
            x[0] = float("nan")
        return {"x": x, "y": self.y[i]}


class Regression(Task):
    kind = "toy"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch):
        pred = self.net(batch["x"]).squeeze(1)
        return {"loss/main": nn.functional.mse_loss(pred, batch["y"])}

    def validation_step(self, batch):
        return {"loss": float(self.training_step(batch)["loss/main"])}


def cfg(**kw):
    base = {"max_steps": 30, "batch_size": 4, "lr": 0.05, "warmup_steps": 3, "ckpt_every": 10,
            "eval_every": 15, "log_every": 5}
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    return load_checkpoint(path, "toy")["model"]


def test_resume_is_bitwise_identical(tmp_path):
    torch.manual_seed(0)
    full = Regression()
    fit(full, Points(), cfg(), tmp_path / "full", val_set=Points(8), progress=False)
    torch.manual_seed(0)
    part = Regression()
    fit(part, Points(), cfg(), tmp_path / "part", val_set=Points(8), progress=False, stop_at=20)
    # a new process would start from scratch: new task, same config, --resume
    torch.manual_seed(123)
    again = Regression()
    summary = fit(again, Points(), cfg(), tmp_path / "part", val_set=Points(8), resume=True, progress=False)
    assert summary["start_step"] == 20
    a, b = weights(tmp_path / "full/ckpt/last.pt"), weights(tmp_path / "part/ckpt/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full/ckpt/best.pt").is_file()
    assert any((tmp_path / "full/tb").iterdir())


def test_ema_ends_with_the_average_and_resumes_exactly(tmp_path):
    """``ema``: the net ends with the moving average of its weights (not the last step's), and an interrupted
    run resumes to the same average."""
    torch.manual_seed(0)
    plain, smooth = Regression(), Regression()
    smooth.load_state_dict(plain.state_dict())
    fit(plain, Points(), cfg(), tmp_path / "plain", progress=False)
    fit(smooth, Points(), cfg(ema=0.9), tmp_path / "ema", progress=False)
    last = weights(tmp_path / "ema/ckpt/last.pt")  # the raw weights, trained exactly as without ema
    assert all(torch.equal(last[k], v) for k, v in weights(tmp_path / "plain/ckpt/last.pt").items())
    average = load_checkpoint(tmp_path / "ema/ckpt/last.pt", "toy")["ema"]
    assert all(torch.equal(average[f"module.{k}"], v) for k, v in smooth.net.state_dict().items())
    assert not torch.equal(smooth.net[0].weight, last["0.weight"])
    torch.manual_seed(0)
    part = Regression()
    fit(part, Points(), cfg(ema=0.9), tmp_path / "part", progress=False, stop_at=20)
    again = Regression()
    fit(again, Points(), cfg(ema=0.9), tmp_path / "part", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), smooth.state_dict().values()))
    with pytest.raises(InvismapError, match="no moving average"):
        fit(Regression(), Points(), cfg(ema=0.9, max_steps=40), tmp_path / "plain", resume=True,
            progress=False)


def test_one_process_per_folder_and_a_dead_holder_releases_it(tmp_path):
    """Two real processes: while one holds a folder, a pipeline run and a trainer on it are refused with one
    line naming the holder's PID; once the holder is killed (SIGKILL: no clean-up), the folder is free."""
    import subprocess
    import sys
    from pathlib import Path

    from invismap.engine.rundir import hold_folder

    folder = tmp_path / "out"
    code = ("import sys, time\nfrom invismap.engine.rundir import hold_folder\n"
            "with hold_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        config = tmp_path / "c.yaml"
        config.write_text("report: {gallery: 1}\n")
        run = subprocess.run([str(Path(sys.executable).with_name("invismap")), "run", str(config),
                              f"out={folder}"],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert f"in use by another invismap process (PID {holder.pid})" in run.stderr
        with pytest.raises(InvismapError, match=f"PID {holder.pid}"):
            fit(Regression(), Points(), cfg(), folder, progress=False)
        assert not (folder / "ckpt").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    fit(Regression(), Points(), cfg(max_steps=2), folder, progress=False)  # the dead holder's lock is gone
    with hold_folder(folder):
        pass


def test_training_reduces_the_loss(tmp_path):
    task = Regression()
    data = Points()
    before = float(task.training_step({"x": data.x, "y": data.y})["loss/main"].detach())
    fit(task, data, cfg(max_steps=60), tmp_path, progress=False)
    after = float(task.training_step({"x": data.x, "y": data.y})["loss/main"].detach())
    assert after < 0.2 * before


def test_nan_steps_are_skipped_then_stop(tmp_path, caplog):
    summary = fit(Regression(), Points(nan_at={5}), cfg(max_steps=20), tmp_path / "a", progress=False)
    assert summary["skipped_steps"] >= 1
    with pytest.raises(InvismapError, match="non-finite"):
        fit(Regression(), Points(nan_at=set(range(40))), cfg(), tmp_path / "b", progress=False)


def test_sampler_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(10, 3, 0, 12, seed=7))
    tail = list(StepBatchSampler(10, 3, 5, 12, seed=7))
    assert full[5:] == tail
    ranks = [list(StepBatchSampler(10, 3, 0, 4, seed=7, rank=r, world=2)) for r in (0, 1)]
    single = list(StepBatchSampler(10, 6, 0, 4, seed=7))
    assert [a + b for a, b in zip(*ranks)] == single
    assert lr_at(0, cfg()) < lr_at(2, cfg()) and lr_at(29, cfg()) < lr_at(10, cfg())


def test_wrong_kind_and_corrupt_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "a.pt", {"kind": "predictor", "model": {}})
    with pytest.raises(InvismapError, match="is a 'predictor' checkpoint, expected student"):
        load_checkpoint(tmp_path / "a.pt", "student")
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:100])
    with pytest.raises(InvismapError, match=r"b.pt: not a readable invismap checkpoint"):
        load_checkpoint(tmp_path / "b.pt")


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.manual_seed(0)
    task = Regression()
    fit(task, Points(), cfg(batch_size=4, device="cpu"), out_dir, progress=False)
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    """``batch_size`` is the global batch: two processes of 2 pairs each train what one process of 4 does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, tmp_path / "ddp"), nprocs=2, join=True)
    torch.manual_seed(0)
    fit(Regression(), Points(), cfg(batch_size=4), tmp_path / "single", progress=False)
    a, b = weights(tmp_path / "ddp/ckpt/last.pt"), weights(tmp_path / "single/ckpt/last.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
