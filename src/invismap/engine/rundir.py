"""Run folders: one per training run, holding ``config.yaml``, ``ckpt/`` and ``tb/``; one process at a
time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from invismap.config import dump_config
from invismap.errors import InvismapError
from invismap.io import atomic_write

LOCK = ".invismap.lock"


@contextmanager
def hold_folder(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` for this process: a second process (a run, a trainer) on it is refused.

    Two processes writing the same checkpoints and stage records would corrupt both runs. The lock is the
    kernel's (``flock`` on ``FOLDER/.invismap.lock``, which records the holder's PID for the message), so a
    lock left by a killed process is released with it and the next run simply takes the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InvismapError(f"{folder}: cannot use this output folder ({e.strerror}); "
                            "choose another") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InvismapError(f"{folder}: in use by another invismap process (PID {holder}); "
                                "wait for it to finish or stop it, or choose another output folder") from None
        except OSError as e:  # e.g. a network filesystem without locks
            raise InvismapError(f"{folder}: cannot lock this output folder ({e.strerror}); "
                                "choose a folder on a local disk") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def can_resume(run_dir: str | Path) -> bool:
    """Whether a training run in ``run_dir``, or one nested in it (a soup's students, ``soup/seed_N/``, and
    distillation rounds, ``rounds/round_R/``), left a checkpoint to resume from (``ckpt/last.pt``)."""
    run_dir = Path(run_dir)
    nested = ("soup/*/ckpt/last.pt", "rounds/*/ckpt/last.pt", "rounds/*/soup/*/ckpt/last.pt")
    return (run_dir / "ckpt" / "last.pt").is_file() or any(any(run_dir.glob(p)) for p in nested)


# keys that say how a run is carried out, not what it learns: a resumed run may change them
HOW_TO_RUN = {"cache", *(f"train.{k}" for k in ("eval_every", "ckpt_every", "log_every", "image_every",
                                                 "num_workers", "device", "max_bad_steps", "precision",
                                                 "channels_last", "compile"))}


def start_run(run_dir: str | Path, cfg: Any, resume: bool) -> Path:
    """Refuse to overwrite an earlier run unless resuming, and to resume one with other settings; write the
    resolved ``config.yaml`` (under torchrun the first process writes it)."""
    from invismap.engine.distributed import is_main_process  # imports torch: not at --help time

    run_dir = Path(run_dir)
    if not resume and can_resume(run_dir):
        raise InvismapError(f"{run_dir}: a run already exists here (add --resume to continue it, "
                            "or choose another folder)")
    if resume:
        refuse_changed_settings(run_dir / "config.yaml", cfg)
    if is_main_process():
        with atomic_write(run_dir / "config.yaml", "w") as f:
            f.write(dump_config(cfg))
    return run_dir


def refuse_changed_settings(saved: Path, cfg: Any) -> None:
    """A resumed run keeps what it learns: every key of ``cfg`` outside :data:`HOW_TO_RUN` must equal the
    run's ``config.yaml``. Paths are compared as the files they name (a dataset folder as its
    ``manifest.csv``); not compared are keys that file lacks (added to the code since) and paths that no
    longer exist (a moved folder)."""
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return  # nothing written yet (stopped before its first checkpoint)
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InvismapError(f"{saved}: not readable YAML (start a new --run)") from None
    if not isinstance(old, dict):
        raise InvismapError(f"{saved}: not a run's config (start a new --run)")
    old, new = _flat(old), _flat(yaml.safe_load(dump_config(cfg)))
    for k in new:
        if k in HOW_TO_RUN or k not in old or _gone(old[k]) or _as_file(old[k]) == _as_file(new[k]):
            continue
        raise InvismapError(f"{saved}: resuming with '{k}' changed ({old[k]!r} -> {new[k]!r}); resume with "
                            "the run's own settings, or start a new run (another --run folder; in "
                            "'invismap run', --from STAGE)")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _as_file(v: Any) -> Any:
    """A setting as compared on resume: an existing path as the file it names, lists element-wise."""
    if isinstance(v, list):
        return [_as_file(x) for x in v]
    if isinstance(v, str) and v and Path(v).exists():
        p = Path(v).resolve()
        return str(p / "manifest.csv") if (p / "manifest.csv").is_file() else str(p)
    return v


def _gone(v: Any) -> bool:
    """A path (or a list holding one) that no longer exists: its folder was moved or removed."""
    if isinstance(v, list):
        return any(_gone(x) for x in v)
    return isinstance(v, str) and "/" in v and not Path(v).exists()


def _step(text: str) -> int:
    import argparse

    try:
        step = int(text)
    except ValueError:
        step = 0
    if step < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step (an integer >= 1)")
    return step


def add_training_arguments(parser, stage: str, example: str) -> None:
    """The arguments every trainer command takes:
    ``CONFIG [key=value ...] [--run RUN] [--resume] [--stop-at STEP]`` (``--run-dir`` = ``--run``)."""
    parser.add_argument("config", help=f"YAML config (see configs/{example})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    # --run-dir: the spelling torchrun lets through (its own parser takes --run for --run-path/--run_path)
    parser.add_argument("--run", "--run-dir", dest="run",
                        help=f"run folder (default runs/{stage}/<config name>); --run-dir under torchrun")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/ckpt/last.pt")
    parser.add_argument("--stop-at", type=_step, metavar="STEP",
                        help="stop after this step (checkpointed), e.g. to fit a time-limited job; continue "
                             "later with --resume (the schedule is that of train.max_steps)")


def config_and_run_dir(cls: type, args, stage: str) -> tuple[Any, Path]:
    """The typed config (YAML + overrides) and run folder that :func:`add_training_arguments` asked for."""
    from invismap.config import load_config

    cfg = load_config(cls, args.config, args.overrides)
    return cfg, Path(args.run) if args.run else Path("runs") / stage / Path(args.config).stem



def report_training(run: Path, steps: int, max_steps: int, done: str) -> None:
    """Print a trainer command's last line: ``done`` once ``max_steps`` are done, else how to continue (a
    run stopped by ``--stop-at``). Under torchrun only the first process prints."""
    from invismap.engine.distributed import is_main_process, world_size

    if is_main_process():
        flag = "--run-dir" if world_size() > 1 else "--run"
        print(done if steps >= max_steps else
              f"stopped at step {steps} of {max_steps}: continue with --resume {flag} {run}")
