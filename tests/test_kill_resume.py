"""A real training run killed with SIGKILL at random steps resumes to bitwise the same weights.

``invismap train-predictor`` (the cheapest real trainer) runs on tiny generated pairs with a checkpoint after
every step. One run is killed five times, each time at a seeded random step and a seeded random moment inside
the next step (so kills also land while a checkpoint is being written), and continued with ``--resume``; a
sixth ``--resume`` finishes it. The killed runs wait after each checkpoint until the test has seen it, so a
busy machine cannot let one finish before its kill. After every kill the checkpoint on disk must load and
hold bitwise the weights an uninterrupted run had at that step; at the end the killed-and-resumed run and an
uninterrupted run with the same seed must agree bitwise (weights, BatchNorm statistics, optimizer state, RNG
state). No temporary file may be left in ``ckpt/``.

The uninterrupted reference is the console script in a fresh interpreter. The killed segments are separate
processes forked from the test process, each running the CLI's ``main`` with the same arguments: a fresh
interpreter spends ~4 s importing torch before its first step, which would make this test take a minute.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tqdm import tqdm

from invismap.config import load_config
from invismap.data.manifest import Manifest, Sample, save_manifest
from invismap.engine import loop
from invismap.engine.checkpoint import load_checkpoint
from invismap.invisibility.predictor import PredictorConfig, train_predictor

SEED = 20240917  # the kill schedule
KILLS = 5
MAX_STEPS = 24
INVISMAP = Path(sys.executable).with_name("invismap")


def make_run_config(root: Path) -> Path:
    """8 generated 64x48 pairs, targets = darkness, and a config checkpointing after every step."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "targets").mkdir()
    samples = []
    for i in range(8):
        base = cv2.GaussianBlur(rng.random((48, 64, 3)).astype(np.float32), (0, 0), 3)
        rgb = (np.clip(base * (0.3 + i / 10), 0, 1) * 255).astype(np.uint8)
        color, thermal = root / "img" / f"p{i}_color.png", root / "img" / f"p{i}_thermal.png"
        cv2.imwrite(str(color), rgb)
        cv2.imwrite(str(thermal), rgb[:, :, 0])
        np.save(root / "targets" / f"p{i}.npy", (1 - rgb.mean(2) / 255).astype(np.float16))
        samples.append(Sample(f"p{i}", color, thermal, "day" if i % 2 else "night", "train"))
    save_manifest(Manifest(samples, root), root / "manifest.csv")
    cfg = root / "predictor.yaml"
    cfg.write_text(f"data: {root / 'manifest.csv'}\ntargets: {root / 'targets'}\nsize: 64\nval_every_nth: 0\n"
                   f"train:\n  max_steps: {MAX_STEPS}\n  batch_size: 2\n  warmup_steps: 3\n  ckpt_every: 1\n"
                   "  eval_every: 0\n  log_every: 5\n  seed: 3\n")
    return cfg


def cli_args(cfg: Path, run: Path, resume: bool) -> list[str]:
    return ["train-predictor", str(cfg), "--run", str(run)] + (["--resume"] if resume else [])


def launch(cfg: Path, run: Path, resume: bool, log: Path) -> subprocess.Popen:
    """The console script in a fresh interpreter."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "ab") as f:
        return subprocess.Popen([str(INVISMAP), *cli_args(cfg, run, resume)], stdout=f,
                                stderr=subprocess.STDOUT, env=env)


class Forked:
    """``invismap.cli.main(argv)`` in a child process forked from this one (torch already imported)."""

    def __init__(self, argv: list[str], log: Path, gated: bool = False):
        from invismap.cli import main

        self.returncode: int | None = None
        self._gate = os.pipe() if gated else None  # (read end: the child's, write end: ours)
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                if self._gate is not None:
                    os.close(self._gate[1])
                    save, gate = loop.save_checkpoint, self._gate[0]

                    def save_then_wait(path, state):
                        # the next step waits until the test has seen this checkpoint (or closed the gate),
                        # so a test process the machine schedules late cannot find the run already ended
                        save(path, state)
                        os.read(gate, 1)

                    loop.save_checkpoint = save_then_wait
                # tqdm's lock is shared across fork (a multiprocessing semaphore, plus a thread lock the
                # parent's monitor thread may hold at the moment of the fork). A child killed while holding it
                # would deadlock the test process at its next progress bar; a child that inherits it held
                # would hang.
                tqdm.set_lock(threading.RLock())
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives until os._exit
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - likewise
                code = main(argv)
            except BaseException:  # noqa: BLE001 - report anything, then leave the child
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        if self._gate is not None:
            os.close(self._gate[0])

    def release(self) -> None:
        """Let a gated child start its next step."""
        os.write(self._gate[1], b"x")

    def _status(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._gate is not None:
                    os.close(self._gate[1])
        return self.returncode

    def poll(self) -> int | None:
        return self._status(os.WNOHANG)

    def wait(self, timeout: float = 0) -> int:
        return self._status(0)

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


def identity(path: Path) -> tuple[int, int] | None:
    """Changes with every checkpoint: each one is a new file renamed over the old one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def kill_after(proc: Forked, last: Path, target_step: int, fraction: float) -> None:
    """Wait for the checkpoint of ``target_step``, then SIGKILL ``fraction`` of a step later.

    ``proc`` is gated: it starts each step only when released, so it cannot run past ``target_step``.
    """
    seen, step_times, released = identity(last), [], None
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no progress in 120 s"
        now = identity(last)
        if now is not None and now != seen:
            seen = now
            if released is not None:
                step_times.append(time.monotonic() - released)
            if torch.load(last, map_location="cpu", weights_only=True)["step"] >= target_step:
                break
            released = time.monotonic()
            proc.release()
        time.sleep(0.002)
    step_time = float(np.median(step_times)) if step_times else 0.05
    proc.release()
    time.sleep(fraction * step_time)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def same(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_gives_identical_weights(tmp_path, monkeypatch):
    cfg_path = make_run_config(tmp_path / "data")
    # The uninterrupted CLI run, in parallel with the killed one (timing does not change the result).
    reference = launch(cfg_path, tmp_path / "reference", resume=False, log=tmp_path / "reference.log")

    # The weights an uninterrupted run holds after every step, recorded in-process as it checkpoints.
    per_step: dict[int, dict] = {}
    save = loop.save_checkpoint

    def recording_save(path, state):
        per_step[state["step"]] = {k: v.clone() for k, v in state["model"].items()}
        return save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", recording_save)
    train_predictor(load_config(PredictorConfig, cfg_path), run_dir=tmp_path / "in-process", progress=False)
    monkeypatch.undo()
    assert sorted(per_step) == list(range(1, MAX_STEPS + 1))

    rng = random.Random(SEED)
    run, step, kills, proc = tmp_path / "killed", 0, [], None
    last = run / "ckpt" / "last.pt"
    try:
        for k in range(KILLS):
            target, fraction = step + rng.randint(1, 3), rng.random()
            proc = Forked(cli_args(cfg_path, run, resume=k > 0), tmp_path / "killed.log", gated=True)
            kill_after(proc, last, target, fraction)
            state = load_checkpoint(last, "predictor")  # the previous checkpoint survived the kill intact
            assert target <= state["step"] < MAX_STEPS, (step, target, state["step"])
            same(state["model"], per_step[state["step"]], f"model after kill {k} at step {state['step']}")
            assert not (run / "predictor.pt").exists()
            step = state["step"]
            kills.append((step, len(list(last.parent.glob(".*.tmp")))))  # (step, temp files of a cut write)
        proc = Forked(cli_args(cfg_path, run, resume=True), tmp_path / "killed.log")
        assert proc.wait() == 0, (tmp_path / "killed.log").read_text()[-2000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    finally:  # a failed check must not leave training processes behind
        for child in (proc, reference):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
    print(f"killed at (checkpoint step, temporary files left): {kills}")

    ours, theirs = load_checkpoint(last, "predictor"), load_checkpoint(tmp_path / "reference/ckpt/last.pt")
    assert ours["step"] == theirs["step"] == MAX_STEPS
    same(ours["model"], theirs["model"], "model")
    same(ours["optimizers"], theirs["optimizers"], "optimizers")
    same(ours["rng"], theirs["rng"], "rng")
    same(load_checkpoint(run / "predictor.pt")["model"],
         load_checkpoint(tmp_path / "reference" / "predictor.pt")["model"], "predictor.pt")
    same(ours["model"], per_step[MAX_STEPS], "model vs in-process run")
    assert not list((run / "ckpt").glob(".*.tmp")), "temporary checkpoint files left behind"
