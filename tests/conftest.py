"""Shared test fixtures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from engine.config import shared_dir as _shared_path


def kept_plots(at) -> dict[str, dict]:
    """The plots an AppTest drew in ui.glide_map's component (custom components, not plotly_chart
    elements: the live maps and curves), by key, in order: each one's plotly figure."""
    return {c.key: json.loads(json.loads(c.proto.json_args)["spec"]) for c in at.get("component_instance")}


def glide_maps(at) -> dict[str, dict]:
    """The concept maps among kept_plots (keys {key}_map, {key}_twin_map)."""
    return {k: fig for k, fig in kept_plots(at).items() if k.endswith("map")}


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


TINY_RUN = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, concept_dim=16, meta_batch=2,
                ext_batch=8, val_every=3, val_episodes=8, snapshot_every=3, checkpoint_every=6)


@pytest.fixture(scope="session")
def twin_runs_built(tmp_path_factory) -> Path:
    """Two finished tiny runs, built once: deml/ (lambda = 1) and deml-lam0/ (its lambda = 0 twin).
    Read-only: take `twin_runs` for a copy a test may change."""
    from engine.config import preset
    from engine.train.launch import start_run

    root = tmp_path_factory.mktemp("twins")
    for name, lam in (("deml", 1.0), ("deml-lam0", 0.0)):
        trainer, run = start_run(preset("smoke").with_overrides(lam=lam, **TINY_RUN), str(root / name))
        trainer.run(run)
    return root


@pytest.fixture
def twin_runs(twin_runs_built, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the twin runs as the app's runs folder ($CONCEPTSCAPE_RUNS)."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(twin_runs_built, root)
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(root))
    return root


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Files {relative path: bytes} written under root (folders made as needed)."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(autouse=True, scope="session")
def _glyph_cache(tmp_path_factory):
    """Generated glyph sets are cached on disk (engine.data.sources.diskcache): tests keep theirs in
    a fresh folder, never in the repository's .cache/."""
    before = os.environ.get("CONCEPTSCAPE_CACHE")
    os.environ["CONCEPTSCAPE_CACHE"] = str(tmp_path_factory.mktemp("glyph-cache"))
    yield
    if before is None:
        os.environ.pop("CONCEPTSCAPE_CACHE", None)
    else:
        os.environ["CONCEPTSCAPE_CACHE"] = before


@pytest.fixture
def uploads(tmp_path, monkeypatch) -> Path:
    """An empty uploads folder ($CONCEPTSCAPE_UPLOADS) in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    return tmp_path / "uploads"
