"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_path() -> Path:
    env = os.environ.get("CONCEPTSCAPE_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data folder: $CONCEPTSCAPE_SHARED, else <repo>/../shared.

    Tests that need it are skipped, with the reason, where it is missing.
    """
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set CONCEPTSCAPE_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def omniglot_dir(shared_dir: Path) -> Path:
    """shared/data/omniglot, or skip."""
    path = shared_dir / "data" / "omniglot"
    if not (path / "images_background.npz").is_file():
        pytest.skip(f"Omniglot data not found under {path}")
    return path
