"""``invismap run CONFIG.yaml``: every stage from pairs to report, cached by a hash of its inputs.

Example:
    >>> from invismap.pipeline import run_pipeline
    >>> run_pipeline("configs/demo.yaml")  # doctest: +SKIP
"""

from invismap.pipeline.config import PipelineConfig, load_pipeline_config
from invismap.pipeline.runner import Pipeline, Stage
from invismap.pipeline.stages import STAGES, check_config


def build_pipeline(config: str, overrides: list[str] | None = None, echo=print) -> Pipeline:
    """The :class:`Pipeline` of a config file (+ ``key=value`` overrides)."""
    cfg = load_pipeline_config(config, overrides)
    check_config(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    return Pipeline(cfg, STAGES, echo=echo)


def run_pipeline(config: str, overrides: list[str] | None = None, start: str | None = None,
                 only: str | None = None, until: str | None = None, echo=print) -> dict[str, str]:
    """Run (or resume, or skip) the stages of ``config``; returns stage -> ``"ran"``/``"cached"``."""
    return build_pipeline(config, overrides, echo).run(start=start, only=only, until=until)


__all__ = ["STAGES", "Pipeline", "PipelineConfig", "Stage", "build_pipeline", "load_pipeline_config",
           "run_pipeline"]
