"""?run= naming anything but a run strictly inside the runs root, on every page (AppTest): no
exception, a notice, the link dropped, and nothing outside read for training or touched."""
from __future__ import annotations

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from engine.config import REPO
from engine.runs import inside_runs_root
from engine.train.job import REGISTRY
from engine.viz import project
from ui.common import RUN_REFUSED

PAGES = ["0_Home.py", "1_Data.py", "2_Train.py", "3_Adapt.py", "4_Runs.py"]
BAD = ["outside", "link", "root", "nul", "long"]


@pytest.fixture
def world(twin_runs, tmp_path, monkeypatch):
    """The runs root (with two finished runs), a real unfinished run outside it that Resume would
    continue, and a link inside the root to that run."""
    monkeypatch.setattr(project, "start_umap_warmup", lambda: None)  # no background compile in tests
    victim = tmp_path / "elsewhere" / "victim"
    shutil.copytree(twin_runs / "deml", victim)
    config = json.loads((victim / "config.json").read_text())
    config["config"]["steps"] = 1000  # saved at step 6 of 1000: continuable from its checkpoint
    (victim / "config.json").write_text(json.dumps(config))
    (twin_runs / "link").symlink_to(victim, target_is_directory=True)
    values = {"outside": str(victim), "link": str(twin_runs / "link"), "root": str(twin_runs),
              "nul": f"{twin_runs}/deml\x00", "long": f"{twin_runs}/" + "x" * 5000}
    return twin_runs, victim, values


def files(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def open_page(name: str, run: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app_pages" / name), default_timeout=120)
    at.query_params["run"] = run
    return at.run()


def test_the_victim_inside_the_root_would_be_offered_resume(world):
    """The control: the same run, inside the root, is shown with Resume enabled (so the test below
    would see it if the link were followed)."""
    root, victim, _ = world
    shutil.copytree(victim, root / "inside")
    at = open_page("0_Home.py", str(root / "inside"))
    assert not at.exception, at.exception
    assert not at.button(key="live_resume").disabled
    assert RUN_REFUSED not in [w.value for w in at.warning]


@pytest.mark.parametrize("page", PAGES)
def test_a_run_outside_the_root_is_ignored_with_a_notice_on_every_page(world, page):
    root, victim, values = world
    before = files(victim)
    for kind in BAD:
        at = open_page(page, values[kind])
        assert not at.exception, (kind, at.exception)
        assert RUN_REFUSED in [w.value for w in at.warning], kind
        shown = at.query_params.get("run")  # dropped from the link (Adapt then names the run it shows)
        assert shown is None or (page == "3_Adapt.py" and inside_runs_root(shown)), (kind, shown)
        assert not [b for b in at.button if b.key and b.key.endswith("_resume")], kind  # no Resume offered
        assert not any("victim" in str(getattr(e, "value", "")) for e in at.main), kind
        if page == "4_Runs.py":
            assert "link" not in list(at.dataframe[0].value["run"])  # the link out is not listed
            assert str(root / "link") not in at.selectbox(key="runs_selected").options
        if page == "3_Adapt.py":
            assert str(root / "link") not in at.selectbox(key="adapt_run").options
    assert files(victim) == before  # nothing outside the root written (checkpoints, metrics, snapshots)
    assert REGISTRY.get(str(victim)) is None  # and no job started there
