"""The one rule for run paths the app takes from a visitor (engine.runs.inside_runs_root), and the
services that refuse a run outside the runs root as a second line of defence."""
from __future__ import annotations

import os
import shutil

import pytest

from engine.errors import UserError
from engine.runs import MAX_RUN_PATH_CHARS, inside_runs_root
from engine.services import adapt, catalog
from engine.services.training import pause_runs, resume_runs, stop_runs
from engine.train.job import REGISTRY


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "inner-link").symlink_to(root / "a", target_is_directory=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(root))
    return root


def test_runs_strictly_inside_the_root_are_accepted_as_their_real_path(root):
    real = os.path.realpath(root)
    assert inside_runs_root(root / "a") == inside_runs_root(str(root / "a")) == type(root)(real) / "a"
    assert str(inside_runs_root(root / "a" / "deep")) == os.path.join(real, "a", "deep")
    assert str(inside_runs_root(root / "inner-link")) == os.path.join(real, "a")  # a link that stays inside
    assert str(inside_runs_root(root / "not-yet")) == os.path.join(real, "not-yet")  # a run about to be made
    assert str(inside_runs_root(f"{root}/x/../a")) == os.path.join(real, "a")


@pytest.mark.parametrize("bad", [
    lambda r: r,  # the root itself
    lambda r: f"{r}/",
    lambda r: f"{r}/.",
    lambda r: r / ".." / "elsewhere",
    lambda r: r.parent / "elsewhere",
    lambda r: r / "out-link",  # a link inside the root to a folder outside
    lambda r: r / "out-link" / "sub",
    lambda r: f"{r}-evil/run",  # shares the root's name as a prefix only
    lambda r: "/",
    lambda r: "",
    lambda r: f"{r}/a\x00b",  # NUL byte
    lambda r: f"{r}/" + "x" * 5000,  # absurd length
    lambda r: "x" * (MAX_RUN_PATH_CHARS + 1),
    lambda r: os.fsencode(r / "a"),  # bytes, not a path string
    lambda r: None,
    lambda r: 7,
])
def test_everything_else_is_refused_with_a_user_error(root, bad):
    with pytest.raises(UserError, match="is not a run under"):
        inside_runs_root(bad(root))


def test_the_message_of_a_long_value_is_short(root):
    with pytest.raises(UserError) as e:
        inside_runs_root("y" * 5000)
    assert len(str(e.value)) < 300 + len(str(root))


def test_an_explicit_root_is_used(tmp_path):
    (tmp_path / "other" / "r").mkdir(parents=True)
    assert inside_runs_root(tmp_path / "other" / "r", tmp_path / "other").name == "r"
    with pytest.raises(UserError):
        inside_runs_root(tmp_path / "other" / "r", tmp_path / "other" / "r")


@pytest.fixture
def victim(twin_runs, tmp_path):
    """A real, unfinished run outside the runs root, and links to it from inside the root."""
    outside = tmp_path / "elsewhere" / "victim"
    shutil.copytree(twin_runs / "deml", outside)
    (twin_runs / "link").symlink_to(outside, target_is_directory=True)
    (twin_runs / "deml-2-lam0").symlink_to(outside, target_is_directory=True)  # a twin folder linking out
    shutil.copytree(twin_runs / "deml", twin_runs / "deml-2")
    return outside


def files(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_services_refuse_runs_outside_the_root_and_touch_nothing(twin_runs, victim):
    before = files(victim)
    for bad in (str(victim), str(twin_runs / "link"), str(twin_runs / "deml-2"), str(twin_runs), f"{victim}\x00"):
        for action in (resume_runs, pause_runs, stop_runs):
            with pytest.raises(UserError, match="is not a run under"):
                action(bad)
    for bad in (str(victim), str(twin_runs / "link")):
        with pytest.raises(UserError, match="is not a run under"):
            catalog.delete_run(bad)
        with pytest.raises(UserError, match="is not a run under"):
            adapt.load_run(bad)
    assert REGISTRY.get(str(victim)) is None
    assert files(victim) == before


def test_the_catalog_leaves_out_links_to_outside_the_root(twin_runs, victim):
    names = [r.name for r in catalog.list_runs()]
    assert "link" not in names and "deml-2-lam0" not in names
    assert {"deml", "deml-lam0", "deml-2"} <= set(names)
    cfg, model, device = adapt.load_run(str(twin_runs / "deml"))  # a run inside still loads
    assert cfg.lam == 1.0
