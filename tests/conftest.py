"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.config import shared_dir as _shared_path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data folder: $CONCEPTSCAPE_SHARED, else <repo>/../shared.

    Tests that need it are skipped, with the reason, where it is missing; in CI (CI=true), where
    it is always beside the clone, they fail instead, so a skip can never hide a broken check.
    """
    path = _shared_path()
    if not path.is_dir():
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"shared data folder {path} not found (set CONCEPTSCAPE_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def omniglot_dir(shared_dir: Path) -> Path:
    """shared/data/omniglot, or skip."""
    path = shared_dir / "data" / "omniglot"
    if not (path / "images_background.npz").is_file():
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"Omniglot data not found under {path}")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test models are tiny: intra-op threads gain nothing and, on a shared 2-core machine, only
    contend (runs were up to 30x slower with 2 threads while anything else was running)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
