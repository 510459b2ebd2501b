"""The shared training loop: exact resume, NaN guard, DDP on CPU matching a single process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from invismap.engine import loop
from invismap.engine.checkpoint import load_checkpoint, save_checkpoint
from invismap.engine.distributed import shutdown
from invismap.engine.loop import StepBatchSampler, Task, TrainConfig, check_train_config, fit, lr_at
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


class NormRegression(Regression):
    """With a BatchNorm layer in training mode, in float64.

    Adam divides each gradient by its own size, so a gradient that is zero up to rounding moves its weight by
    up to the learning rate, in a direction rounding decides: float64, and no bias before the BatchNorm (it
    would have exactly such a gradient), keep the comparison of two runs to rounding.
    """

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Tanh(),
                                 nn.Linear(8, 1)).double()

    def training_step(self, batch):
        pred = self.net(batch["x"].double()).squeeze(1)
        return {"loss/main": nn.functional.mse_loss(pred, batch["y"].double())}


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
    with pytest.raises(InvismapError, match="--stop-at 20: the run is already at step 20; give a later step"):
        fit(Regression(), Points(), cfg(), tmp_path / "part", resume=True, progress=False, stop_at=20)
    # a new process would start from scratch: new task, same config, --resume
    torch.manual_seed(123)
    again = Regression()
    summary = fit(again, Points(), cfg(), tmp_path / "part", val_set=Points(8), resume=True, progress=False)
    assert summary.start_step == 20 and summary.finished
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
    assert summary.skipped_steps >= 1
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
    task = NormRegression()
    fit(task, Points(), cfg(batch_size=4, device="cpu"), out_dir, val_set=Points(10), progress=False)
    shutdown(wait_for_others=True)


def test_ddp_two_processes_match_one(tmp_path):
    """``batch_size`` is the global batch: two processes of 2 pairs each train what one process of 4 does,
    BatchNorm (synchronised over the processes) included: weights, BatchNorm statistics, the validation loss
    and the logged losses agree up to float64 rounding."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, tmp_path / "ddp"), nprocs=2, join=True)
    torch.manual_seed(0)
    fit(NormRegression(), Points(), cfg(batch_size=4), tmp_path / "single", val_set=Points(10),
        progress=False)
    ddp, single = (load_checkpoint(tmp_path / run / "ckpt/last.pt") for run in ("ddp", "single"))
    a, b = ddp["model"], single["model"]
    assert "1.running_var" in a and not torch.equal(a["1.running_var"], torch.ones(8, dtype=torch.float64))
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-10), k
    # validation shared by the two processes (5 batches of 2) and in one process (batches of 4, 4, 2)
    assert ddp["best"] == pytest.approx(single["best"], rel=1e-9)
    assert scalars(tmp_path / "ddp", "loss/main") == pytest.approx(scalars(tmp_path / "single", "loss/main"),
                                                                   rel=1e-9)


def scalars(run, tag):
    """The values TensorBoard holds for ``tag``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_processes_that_cannot_share_a_run_are_refused_before_any_work(tmp_path, monkeypatch):
    """Under torchrun: a global batch that does not split between the processes, a task that bypasses DDP
    (AlignGAN) and the distillation experiments are refused in one line before the process group or any
    file."""
    from invismap.align.run import AlignConfig, train_aligngan
    from invismap.distill.experiments import run_experiment
    from invismap.distill.run import DistillConfig

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InvismapError, match=r"'train.batch_size': 4 does not split between the 3 torchrun "
                                            r"processes .*use a multiple of 3"):
        fit(Regression(), Points(), cfg(batch_size=4), tmp_path / "a", progress=False)
    no_ddp = Regression()
    no_ddp.ddp = False
    with pytest.raises(InvismapError, match="the toy trainer runs as one process only"):
        fit(no_ddp, Points(), cfg(batch_size=3), tmp_path / "b", progress=False)
    with pytest.raises(InvismapError, match=r"the aligngan trainer runs as one process .*without torchrun"):
        train_aligngan(AlignConfig(), tmp_path / "c")
    with pytest.raises(InvismapError, match="distill-experiment runs as one process, not under torchrun"):
        run_experiment("ablation", DistillConfig(), tmp_path / "d")
    assert not any(tmp_path.rglob("*.pt")) and not torch.distributed.is_initialized()


def test_precision_settings_are_checked(tmp_path):
    with pytest.raises(InvismapError, match=r"'train.precision': 'fp8' is not allowed \(fp32, bf16, fp16 or"):
        check_train_config(cfg(precision="fp8"))
    with pytest.raises(InvismapError, match=r"'train.compile': 'yes' is not allowed \(true or false\)"):
        check_train_config(cfg(compile="yes"))
    with pytest.raises(InvismapError, match=r"'train.precision': fp16 needs a CUDA device .*bf16 or fp32"):
        fit(Regression(), Points(), cfg(precision="fp16", device="cpu"), tmp_path, progress=False)


def test_fp16_gradient_scaler_is_checkpointed_and_resumes_exactly(tmp_path, monkeypatch):
    """The GradScaler's state is saved with the checkpoint and restored on resume, so an interrupted fp16 run
    ends bitwise where an uninterrupted one does. fp16 is refused on CPU (slow there); the scaler's plumbing
    does not depend on the device, so this lifts the refusal to test it on CPU."""
    monkeypatch.setattr(loop, "check_precision", lambda *a, **k: None)
    half = cfg(precision="fp16", device="cpu")
    torch.manual_seed(0)
    fit(Regression(), Points(), half, tmp_path / "full", progress=False)
    torch.manual_seed(0)
    fit(Regression(), Points(), half, tmp_path / "part", progress=False, stop_at=20)
    saved = load_checkpoint(tmp_path / "part/ckpt/last.pt", "toy")["scaler"]
    fresh = torch.amp.GradScaler("cpu").state_dict()
    assert (saved["scale"], saved["_growth_tracker"]) != (fresh["scale"], 0)  # what 20 steps made of it
    fit(Regression(), Points(), half, tmp_path / "part", progress=False, resume=True)
    full, part = (load_checkpoint(tmp_path / run / "ckpt/last.pt") for run in ("full", "part"))
    assert full["scaler"] == part["scaler"]
    assert all(torch.equal(full["model"][k], part["model"][k]) for k in full["model"])
    plain = cfg(device="cpu")
    torch.manual_seed(0)
    fit(Regression(), Points(), plain, tmp_path / "fp32", progress=False)
    assert "scaler" not in load_checkpoint(tmp_path / "fp32/ckpt/last.pt")
    fp32 = weights(tmp_path / "fp32/ckpt/last.pt")
    assert not all(torch.equal(full["model"][k], v) for k, v in fp32.items())  # fp16 did run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_channels_last_and_compile_train_on_cuda(tmp_path, precision):
    """The GPU switches together: autocast (fp16 with its scaler), NHWC memory, torch.compile."""
    task, data = Regression(), Points()
    before = float(task.training_step({"x": data.x, "y": data.y})["loss/main"])
    fit(task, data, cfg(max_steps=60, precision=precision, channels_last=True, compile=True, device="cuda"),
        tmp_path, progress=False)
    with torch.no_grad():
        after = float(task.training_step({"x": data.x.cuda(), "y": data.y.cuda()})["loss/main"])
    assert after < 0.2 * before
    assert ("scaler" in load_checkpoint(tmp_path / "ckpt/last.pt")) == (precision == "fp16")
    assert not hasattr(task.net, "_orig_mod")  # the plain module again after training
