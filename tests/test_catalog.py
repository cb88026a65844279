"""The catalog of saved runs (the Runs page's engine): summaries, damaged runs, deleting."""
from __future__ import annotations

import dataclasses
import os
import time

import pytest
from conftest import TINY_RUN

from engine.config import preset
from engine.errors import UserError
from engine.eval.evaluate import run_evaluation
from engine.services import catalog, compare
from engine.train.job import REGISTRY, TrainingJob


@pytest.fixture
def root(twin_runs):
    """deml/ and its twin deml-lam0/, copied as runs_root() (tests change them)."""
    return twin_runs


def test_lists_runs_with_summaries(root):
    run_evaluation(str(root / "deml"), "evaluate", episodes=10)
    runs = catalog.list_runs()
    assert sorted(r.name for r in runs) == ["deml", "deml-lam0"]
    by = {r.name: r for r in runs}
    deml, vanilla = by["deml"], by["deml-lam0"]
    for r in runs:
        assert r.state == "finished" and r.readable and r.adaptable
        assert (r.learner, r.dataset, r.steps_done, r.steps_total) == ("protonet", TINY_RUN["dataset"], 6, 6)
        assert 0 <= r.val_acc <= 1 and r.val_ci95 > 0
        assert r.checkpoint.endswith("step_0000006.pt")
        assert r.config["steps"] == 6
    assert (deml.lam, vanilla.lam) == (1.0, 0.0)
    assert deml.test["episodes"] == 10 and 0 <= deml.test["accuracy"] <= 1 and vanilla.test is None
    row = deml.row()
    assert row["steps"] == "6/6" and row["test accuracy"].endswith("(10 ep.)") and "±" in row["validation accuracy"]
    assert "DEML" in deml.label() and "λ = 0" in vanilla.label()
    assert catalog.find(runs, str(root / "deml" / ".." / "deml")) == runs.index(deml)
    table = compare.comparison_table(runs)
    assert [t["run"] for t in table] == [r.name for r in runs]
    fig = compare.comparison_curves(runs)
    assert {t.name for t in fig.data if t.showlegend is not False} >= {"deml (protonet DEML (λ = 1))",
                                                                      "deml-lam0 (protonet vanilla (λ = 0))"}
    assert catalog.newest_checkpoint(root / "deml").name == "step_0000006.pt"
    # same dataset, same episodes: nothing to warn about; the twin is compared with its run
    assert compare.comparison_notes(runs) == []
    assert compare.default_comparison(runs, str(root / "deml"), str(root / "deml-lam0")) == [deml.path, vanilla.path]


def test_runs_are_named_renamed_and_never_compared_across_datasets_unsaid(root):
    runs = catalog.list_runs(root)
    deml = next(r for r in runs if r.name == "deml")
    assert catalog.rename_run(deml.path, "  my   letters ", root) == "my letters"
    renamed = next(r for r in catalog.list_runs(root) if r.name == "deml")
    assert renamed.title == "my letters" and renamed.row()["run"] == "my letters"
    assert renamed.label().startswith("my letters (deml) · ")
    with pytest.raises(UserError, match="at most 80 characters"):
        catalog.rename_run(deml.path, "x" * 81, root)
    with pytest.raises(UserError):
        catalog.rename_run(str(root.parent), "outside", root)  # only runs inside the runs root
    renamed.test = {"episodes": 10, "accuracy": 0.5, "ci95": 0.1}
    other = dataclasses.replace(renamed, path=str(root / "other"), name="other", dataset="digits",
                                test={"episodes": 600, "accuracy": 0.5, "ci95": 0.01})
    notes = compare.comparison_notes([renamed, other])
    assert any(n.startswith("different datasets") for n in notes)
    assert any("test accuracies over different numbers of episodes: 10, 600" in n for n in notes)
    assert compare.default_comparison([other, renamed], None) == [other.path]  # the newest, alone: no match
    catalog.rename_run(deml.path, "", root)


def test_a_damaged_run_is_listed_as_unreadable(root):
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a run")  # plain files are not runs
    (root / "deml-lam0" / "metrics.jsonl").write_text('{"kind": "train", "step": 3}\n{cut off')  # tolerated
    runs = {r.name: r for r in catalog.list_runs()}
    assert sorted(runs) == ["broken", "deml", "deml-lam0", "empty"]
    assert runs["broken"].state == "unreadable" and "config.json" in runs["broken"].detail
    assert runs["empty"].state == "unreadable" and "no config.json" in runs["empty"].detail
    assert not runs["broken"].adaptable and runs["broken"].row()["learner"] is None
    assert runs["deml"].state == "finished"
    assert runs["deml-lam0"].state == "stopped" and runs["deml-lam0"].steps_done == 3  # what its metrics say
    assert catalog.list_runs(root / "missing") == []


def test_delete_refuses_paths_outside_the_runs_root(root, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    for bad in (outside, root, root / ".." / "precious", root / "link", "/"):
        with pytest.raises(UserError, match="not a run under"):
            catalog.delete_run(bad)
    assert outside.is_dir() and root.is_dir()
    with pytest.raises(UserError, match="does not exist"):
        catalog.delete_run(root / "never")
    assert catalog.delete_run(root / "deml-lam0") == {"deleted": os.path.realpath(root / "deml-lam0"), "stopped_job": False}
    assert not (root / "deml-lam0").exists() and (root / "deml").is_dir()


def test_delete_stops_a_running_job_first(root):
    cfg = preset("smoke").with_overrides(**{**TINY_RUN, "steps": 100_000, "checkpoint_every": 100_000})
    job = REGISTRY.start(TrainingJob(cfg, out=str(root / "live")))
    try:
        deadline = time.monotonic() + 30
        while not (job.trainer is not None and job.trainer.step > 0) and time.monotonic() < deadline:
            assert not job.done, job.error
            time.sleep(0.02)
        job.pause()
        live = {r.name: r for r in catalog.list_runs()}["live"]
        assert live.state == "running" and live.detail == "paused" and live.steps_total == 100_000
        result = catalog.delete_run(root / "live")
        assert result["stopped_job"] and job.done and job.state == "stopped"
        assert not (root / "live").exists()
        assert "live" not in {r.name for r in catalog.list_runs()}
    finally:
        job.stop()
        job.join(30)
