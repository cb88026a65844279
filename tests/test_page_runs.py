"""The Runs page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.config import REPO
from engine.runs import RunDir

PAGE = str(REPO / "app_pages" / "4_Runs.py")


@pytest.fixture
def root(twin_runs):
    (twin_runs / "broken").mkdir()
    (twin_runs / "broken" / "config.json").write_text("{damaged")
    return twin_runs


def page(run: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if run:
        at.query_params["run"] = run
    return at.run()


def chart_keys(at) -> list[str]:
    return [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]


def test_runs_renders_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "none"))
    at = page()
    assert not at.exception
    assert at.title[0].value == "Runs"
    assert "No saved runs" in at.info[0].value and "Start demo" in at.info[0].value


def test_runs_lists_every_run_and_compares_them(root):
    at = page()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["broken", "deml", "deml-lam0"]
    states = dict(zip(table["run"], table["state"]))
    assert states["deml"] == "finished" and states["broken"].startswith("unreadable")
    assert any(e.value.startswith("broken:") for e in at.error)  # its config expander says why
    assert len(at.json) == 2  # configurations of the readable runs
    compare = at.multiselect(key="runs_compare")
    compare.set_value([str(root / "deml"), str(root / "deml-lam0")]).run()
    assert not at.exception
    assert "runs_compare_curves" in chart_keys(at)
    results = at.dataframe[1].value
    assert list(results["run"]) == ["deml", "deml-lam0"] and results["validation accuracy (last)"].str.contains("±").all()
    at.button(key="runs_record_curves").click().run()  # no curves recorded yet: record them, then overlay
    assert not at.exception
    assert "runs_compare_adaptation_shots" in chart_keys(at)


def test_full_evaluation_shows_progress_and_records_the_result(root):
    at = page(str(root / "deml"))
    assert at.selectbox(key="runs_selected").value == str(root / "deml")
    assert at.number_input(key="runs_eval_episodes").value == 600
    at.number_input(key="runs_eval_episodes").set_value(20)
    at.button(key="runs_evaluate").click().run()
    assert not at.exception, at.exception
    assert any("over 20 5-way 1-shot episodes" in s.value for s in at.success)
    assert at.get("progress")[-1].proto.value == 100 and "20/20 episodes" in at.get("progress")[-1].proto.text
    assert RunDir(root / "deml").read_evaluations()[-1]["episodes"] == 20
    assert "(20 ep.)" in dict(zip(at.dataframe[0].value["run"], at.dataframe[0].value["test accuracy"]))["deml"]


def test_report_and_checkpoint_downloads(root):
    at = page(str(root / "deml"))
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download checkpoint (0.0 MB)"] or labels[0].startswith("Download checkpoint")
    at.button(key="runs_build_report").click().run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.get("download_button")]
    assert labels[0] == "Download HTML report" and labels[1].startswith("Download checkpoint")


def test_delete_needs_confirmation(root):
    at = page(str(root / "deml-lam0"))
    assert at.button(key="runs_delete").disabled
    at.checkbox(key="runs_delete_confirm").check().run()
    assert not at.button(key="runs_delete").disabled
    at.button(key="runs_delete").click().run()
    assert not at.exception, at.exception
    assert not (root / "deml-lam0").exists() and (root / "deml").is_dir()
    assert any("Deleted deml-lam0" in s.value for s in at.success)
    assert "deml-lam0" not in list(at.dataframe[0].value["run"])
    assert "run" not in at.query_params
    assert not at.checkbox(key="runs_delete_confirm").value  # the next run needs its own confirmation


def test_a_run_another_process_trains_is_shown_so_and_cannot_be_deleted_or_resumed(root, monkeypatch):
    import os

    from engine.viz import project

    run = RunDir(root / "deml")
    run.update_config({**run.config(), "steps": 12})  # continuable: Resume would be on without the lock
    monkeypatch.setattr(project, "start_umap_warmup", lambda: None)
    train = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60)
    train.query_params["run"] = str(root / "deml")
    with run.lock():
        at = page(str(root / "deml"))
        assert not at.exception, at.exception
        states = dict(zip(at.dataframe[0].value["run"], at.dataframe[0].value["state"]))
        assert states["deml"].startswith(f"training (another process) (by process {os.getpid()}")
        assert any("Another process trains this run" in c.value for c in at.caption)
        assert at.checkbox(key="runs_delete_confirm").disabled and at.button(key="runs_delete").disabled
        assert any("Delete is refused" in c.value for c in at.caption)

        train.run()
        assert not train.exception, train.exception
        assert train.button(key="live_resume").disabled
        assert any("another process trains this run" in c.value for c in train.caption)
        assert any("training (another process)" in p.proto.text for p in train.get("progress"))
    train.run()
    assert not train.button(key="live_resume").disabled
    at = page(str(root / "deml"))
    assert not at.checkbox(key="runs_delete_confirm").disabled


def test_a_run_is_renamed_on_the_page(root):
    at = page(str(root / "deml"))
    assert not at.exception
    at.text_input(key=f"runs_name_{root / 'deml'}").set_value("first letters")
    at.button(key="runs_rename").click().run()
    assert not at.exception
    assert RunDir(root / "deml").run_name() == "first letters"
    assert "Renamed deml to “first letters”" in at.success[0].value
    assert "first letters" in list(at.dataframe[0].value["run"])  # the runs table shows the name
    box = at.selectbox(key="runs_selected")
    assert box.value == str(root / "deml"), [e.value for e in at.error]  # still this run, and no error from the new label
    assert not [e for e in at.error if "not a run" in e.value]  # (the fixture's broken run has its own error)
    assert "first letters" in box.format_func(box.value)  # the list shows the new name
