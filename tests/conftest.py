"""Shared fixtures: where the real assets are, a deterministic torch setup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_assets() -> Path | None:
    """``$INVISMAP_ASSETS`` or ``../shared/assets`` beside the repository."""
    env = os.environ.get("INVISMAP_ASSETS")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "assets"]:
        if (cand / "data" / "msrs").is_dir():
            return cand.resolve()
    return None


def pytest_configure(config) -> None:
    """Commands the tests start (``invismap ...`` in a subprocess) find the assets as the tests do."""
    found = find_assets()
    if found is not None and not os.environ.get("INVISMAP_ASSETS"):
        os.environ["INVISMAP_ASSETS"] = str(found)


@pytest.fixture(scope="session")
def assets() -> Path:
    """The real shared assets folder (weights/, data/msrs, data/roadscene)."""
    found = find_assets()
    if found is None:
        if os.environ.get("CI"):  # CI always has ../shared: a missing folder must not pass as skips
            pytest.fail("real assets not found in CI: expected ../shared/assets or $INVISMAP_ASSETS")
        pytest.skip("real assets not found: set INVISMAP_ASSETS=../shared/assets")
    return found


@pytest.fixture(scope="session")
def msrs_dir(assets: Path) -> Path:
    return assets / "data" / "msrs"


@pytest.fixture(scope="session")
def weights_dir(assets: Path) -> Path:
    return assets / "weights"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: threads only add sync cost (and stall badly on a busy machine)
    yield


@pytest.fixture(scope="session")
def msrs(msrs_dir: Path, tmp_path_factory):
    """The whole MSRS sample imported once per session (a Manifest)."""
    from invismap.data.importers import import_dataset

    return import_dataset("msrs", msrs_dir, tmp_path_factory.mktemp("msrs"), progress=False)
