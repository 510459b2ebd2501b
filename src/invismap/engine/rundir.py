"""Run folders: one per training run, holding ``config.yaml``, ``ckpt/`` and ``tb/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invismap.config import dump_config
from invismap.errors import InvismapError
from invismap.io import atomic_write


def start_run(run_dir: str | Path, cfg: Any, resume: bool) -> Path:
    """Refuse to overwrite an earlier run unless resuming; write the resolved ``config.yaml``."""
    run_dir = Path(run_dir)
    if not resume and (run_dir / "ckpt" / "last.pt").exists():
        raise InvismapError(f"{run_dir}: a run already exists here (add --resume to continue it, "
                            "or choose another folder)")
    with atomic_write(run_dir / "config.yaml", "w") as f:
        f.write(dump_config(cfg))
    return run_dir
