"""What every trainer returns: :class:`TrainSummary` (distillation, predictor, AlignGAN alike)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from invismap.errors import file_error
from invismap.io import json_safe, write_json


@dataclass
class TrainSummary:
    """The training loop's figures, the files the trainer wrote and the trainer's own figures.

    ``outputs`` are the deployable files by name (``{"thermal_detector": RUN/thermal_detector.pt}``), written
    only when the run reached ``max_steps``; ``details`` are what only that trainer knows (the calibrated t_k,
    the number of training pairs...). :meth:`save` writes it all as ``RUN/summary.json``.
    """

    steps: int  # the step the run stopped at
    max_steps: int
    start_step: int = 0  # > 0 when resumed
    seconds: float = 0.0  # in the training loop
    pairs_per_s: float = 0.0
    best_val_loss: float = math.inf
    skipped_steps: int = 0  # non-finite losses
    world_size: int = 1
    outputs: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the run reached ``max_steps`` (not stopped early with ``stop_at``)."""
        return self.steps >= self.max_steps

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON-able dict: the loop's figures, ``outputs`` as paths, then ``details``."""
        out = {k: v for k, v in asdict(self).items() if k != "details"}
        out["finished"] = self.finished
        return json_safe({**out, "outputs": {k: str(v) for k, v in self.outputs.items()}, **self.details})

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainSummary:
        """The summary a finished run saved (e.g. one trained in other processes, under torchrun)."""
        path = Path(run_dir) / "summary.json"
        try:
            flat = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise file_error(path, f"no readable training summary ({type(e).__name__})",
                             "the run did not finish: resume it") from None
        loop = {k: flat.pop(k) for k in list(flat) if k in cls.__dataclass_fields__ and k != "details"}
        flat.pop("finished", None)
        if loop.get("best_val_loss") is None:
            loop["best_val_loss"] = math.inf
        outputs = {k: Path(v) for k, v in loop.pop("outputs", {}).items()}
        return cls(**loop, outputs=outputs, details=flat)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/summary.json``; returns its path."""
        path = Path(run_dir) / "summary.json"
        write_json(path, self.to_dict())
        return path


__all__ = ["TrainSummary"]
