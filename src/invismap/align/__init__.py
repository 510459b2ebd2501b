"""AlignGAN (paper Section 3.1): move a color image onto the thermal image's position, learned.

* :mod:`.networks`: Gm (motion cue = flow), G (warp + U-Net refinement), PatchGAN D and Dm.
* :mod:`.data`: the two training streams (color -> thermal position; color -> nearby color frame).
* :mod:`.task`: :class:`GanTask`, the pix2pix losses for the shared training loop.
* :mod:`.run`: ``align-train`` (:func:`train_aligngan`) and ``align`` (:func:`align_dataset`).

Example:
    >>> from invismap.align import load_aligner  # doctest: +SKIP
    >>> aligner = load_aligner("runs/align/msrs/aligngan.pt")  # doctest: +SKIP
    >>> aligned, flow = aligner.align_pair(thermal, color)  # doctest: +SKIP
"""

from invismap.align.networks import AlignNetConfig, build_aligngan, generate
from invismap.align.run import (
    AlignConfig,
    Aligner,
    align_dataset,
    aligngan_estimators,
    load_aligner,
    train_aligngan,
)
from invismap.align.task import GanTask, LossConfig

__all__ = [
    "AlignConfig",
    "AlignNetConfig",
    "Aligner",
    "GanTask",
    "LossConfig",
    "align_dataset",
    "aligngan_estimators",
    "build_aligngan",
    "generate",
    "load_aligner",
    "train_aligngan",
]
