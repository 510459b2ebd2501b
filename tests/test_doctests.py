"""The examples in the docstrings run (pure modules; examples that need data are marked +SKIP)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["invismap.invisibility.metrics", "invismap.invisibility.bootstrap",
           "invismap.invisibility.targets", "invismap.invisibility.references",
           "invismap.invisibility.sources", "invismap.invisibility.neck_head",
           "invismap.data.importers.roadscene", "invismap.distill.experiments",
           "invismap.data.manifest", "invismap.data.dataset", "invismap.io",
           "invismap.invisibility.baselines", "invismap.invisibility.unet", "invismap.detector.fusion",
           "invismap.detector.ap_bootstrap", "invismap.detector.fusion_eval", "invismap.detector.protocol",
           "invismap.detector.evaluate", "invismap.data.letterbox"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0, result
