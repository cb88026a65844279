"""Run directories: atomic writes, damaged and hostile checkpoints, cut-off metrics, refusals."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.runs import FORMAT_VERSION, KEEP_CHECKPOINTS, RunDir, atomic_json, atomic_write


def make_run(tmp_path, name="run") -> RunDir:
    return RunDir.create(tmp_path / name, {"learner": "protonet", "steps": 10})


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "last_val": None}


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


class Payload:
    """Unpickling this calls open(path, "w"): a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    run = make_run(tmp_path)
    run.save_checkpoint(state(1), 1)
    run.save_snapshot(1, {"concepts": np.zeros((2, 3), np.float32)})
    run.save_probe({"split": np.zeros(2, np.int8)})
    run.write_json("splits.json", {"a": 1})
    run.append_metrics([{"kind": "train", "step": 1}])
    run.truncate_metrics(1)
    assert leftovers(run.path) == []
    assert sorted(p.name for p in run.path.iterdir()) == \
        ["checkpoints", "config.json", "metrics.jsonl", "snapshots", "splits.json"]
    assert run.read_json("splits.json") == {"a": 1}


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    atomic_json(target, {"v": 1})

    def fail(f):
        f.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ------------------------------------------------------------------------------ checkpoints


def test_only_the_newest_checkpoints_are_kept_and_the_newest_loads(tmp_path):
    run = make_run(tmp_path)
    for step in (3, 6, 9):
        run.save_checkpoint(state(step), step)
    assert KEEP_CHECKPOINTS == 2
    assert [p.name for p in run.checkpoints()] == ["step_0000006.pt", "step_0000009.pt"]
    loaded, warnings = run.load_checkpoint()
    assert loaded["step"] == 9 and warnings == []
    assert loaded["format_version"] == FORMAT_VERSION
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 9.0))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage):
    run = make_run(tmp_path)
    run.save_checkpoint(state(3), 3)
    newest = run.save_checkpoint(state(6), 6)
    data = newest.read_bytes()
    newest.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\xffnot a checkpoint" * 50,
                        "empty": b""}[damage])
    loaded, warnings = run.load_checkpoint()
    assert loaded["step"] == 3
    assert len(warnings) == 1 and "step_0000006.pt" in warnings[0]


def test_no_readable_checkpoint_is_a_user_error(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(UserError, match="no readable checkpoint"):
        run.load_checkpoint()  # none written yet
    for step in (3, 6):
        run.save_checkpoint(state(step), step).write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="step_0000006.pt.*step_0000003.pt"):
        run.load_checkpoint()


def test_a_checkpoint_of_another_format_or_shape_is_skipped(tmp_path):
    run = make_run(tmp_path)
    run.save_checkpoint(state(2), 2)
    newer = run.path / "checkpoints" / "step_0000004.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "step": 4}, newer)
    loaded, warnings = run.load_checkpoint()
    assert loaded["step"] == 2 and "format" in warnings[0]
    torch.save(torch.zeros(3), newer)  # loads under weights_only, but is no checkpoint dict
    loaded, warnings = run.load_checkpoint()
    assert loaded["step"] == 2 and "step_0000004.pt" in warnings[0]


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path, writer):
    side_effect = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    if writer == "torch.save":
        torch.save({"format_version": FORMAT_VERSION, "step": 9, "x": Payload(side_effect)}, hostile)
    else:
        hostile.write_bytes(pickle.dumps(Payload(side_effect), protocol=2))
    # the payload is live: loading it the trusting way does run it
    try:
        torch.load(hostile, weights_only=False)
    except Exception:
        pass
    assert side_effect.exists()
    side_effect.unlink()

    run = make_run(tmp_path)
    run.save_checkpoint(state(3), 3)
    (run.path / "checkpoints" / "step_0000009.pt").write_bytes(hostile.read_bytes())
    loaded, warnings = run.load_checkpoint()
    assert loaded["step"] == 3
    assert "step_0000009.pt" in warnings[0]
    assert not side_effect.exists()


# ------------------------------------------------------------------------------ metrics


def test_metrics_with_a_cut_off_last_line_read_up_to_it(tmp_path):
    run = make_run(tmp_path)
    run.append_metrics([{"kind": "train", "step": s} for s in (1, 2, 3)])
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a crash mid-line
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]


def test_truncate_metrics_keeps_records_up_to_the_step(tmp_path):
    run = make_run(tmp_path)
    records = [{"kind": "train", "step": s} for s in range(1, 7)] + [{"kind": "val", "step": 4}]
    run.append_metrics(sorted(records, key=lambda r: r["step"]))
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "tr')
    run.truncate_metrics(4)
    kept = run.read_metrics()
    assert [(r["kind"], r["step"]) for r in kept] == \
        [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("val", 4)]
    assert (run.path / "metrics.jsonl").read_text().endswith("}\n")  # the cut line is gone too
    run.append_metrics([{"kind": "train", "step": 5}])
    assert [r["step"] for r in run.read_metrics()][-1] == 5
    assert leftovers(run.path) == []


def test_evaluations_survive_a_cut_off_line(tmp_path):
    run = make_run(tmp_path)
    run.append_evaluation({"kind": "evaluate", "accuracy": 0.5})
    with open(run.path / "evaluations.jsonl", "a") as f:
        f.write('{"accur')
    run.append_evaluation({"kind": "evaluate", "accuracy": 0.7})
    assert [e["accuracy"] for e in run.read_evaluations()] == [0.5, 0.7]
    assert run.skipped_evaluations == 1


# ------------------------------------------------------------------------------ snapshots


def test_snapshot_steps_and_dropping_later_ones(tmp_path):
    run = make_run(tmp_path)
    for step in (0, 1, 2, 4, 10, 20):
        run.save_snapshot(step, {"step": np.int64(step), "concepts": np.full((2, 2), step, np.float32)})
    assert run.snapshot_steps() == [0, 1, 2, 4, 10, 20]
    run.drop_snapshots_after(4)
    assert run.snapshot_steps() == [0, 1, 2, 4]
    assert float(run.load_snapshot(4)["concepts"][0, 0]) == 4.0


# ------------------------------------------------------------------------------ refusals


def test_create_refuses_a_non_empty_folder_but_takes_an_empty_one(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        RunDir.create(tmp_path / "busy", {})
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    run = RunDir.create(tmp_path / "empty", {"a": 1})
    assert run.config() == {"a": 1}


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        RunDir.open(tmp_path)
    with pytest.raises(UserError, match="not a run directory"):
        RunDir.open(tmp_path / "missing")
    make_run(tmp_path)
    assert RunDir.open(tmp_path / "run").config()["learner"] == "protonet"


def test_format_version_mismatch_is_a_user_error(tmp_path):
    run = make_run(tmp_path)
    (run.path / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1, "config": {}}))
    with pytest.raises(UserError, match="format"):
        RunDir.open(run.path).config()
    (run.path / "config.json").write_text('{"format_version": 1, "conf')
    with pytest.raises(UserError, match="unreadable"):
        run.config()


def test_config_is_parsed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    """A RunDir passed down parses config.json once; a resume that rewrites it is seen at once."""
    run = make_run(tmp_path)
    reads = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: reads.append(1) or real(text, *a, **k))
    first = run.config()
    first["steps"] = -1  # a caller's change to its copy does not reach the run
    assert run.config() == run.config() and run.config()["steps"] == 10 and len(reads) == 1
    run.update_config({**run.config(), "steps": 300, "note": "resumed with more steps"})
    assert run.config()["steps"] == 300 and len(reads) == 2


@pytest.mark.parametrize("settings", [None, [1, 2], "x"])
def test_config_without_a_settings_object_is_a_user_error(tmp_path, settings):
    run = make_run(tmp_path)
    (run.path / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "config": settings}))
    with pytest.raises(UserError, match="no settings object"):
        RunDir.open(run.path).config()
