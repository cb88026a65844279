"""engine.records: the one metric-record reader and the run-state groups."""
from __future__ import annotations

import json

import pytest

from engine.records import (
    ACTIVE,
    CATALOG_STATES,
    DONE,
    JOB_STATES,
    RunState,
    adaptation_records,
    read_metric_records,
    train_records,
    val_records,
)
from engine.runs import RunDir

GOOD = [
    {"kind": "train", "step": 1, "meta_loss": 1.5, "meta_acc": 0.4, "disc_loss": None, "disc_acc": None},
    {"kind": "train", "step": 2, "meta_loss": float("nan"), "meta_acc": 0.5},  # a NaN value is data, kept
    {"kind": "val", "step": 2, "val_acc": 0.6, "val_ci95": 0.03, "episodes": 10, "seconds": 1.0},
    {"kind": "train", "step": 3},
    {"kind": "adaptation", "step": 2, "axis": "shots", "x": [1, 2, 3], "accuracy": [0.4, 0.55, 0.6], "ways": 5},
]
BAD = [
    '{"kind": "train", "st',  # cut short by a crash
    "[1, 2, 3]",  # a list, not an object
    '"train"',  # a bare string
    "null",
    '{"step": 4, "meta_loss": 1.0}',  # no kind
    '{"kind": "mine", "step": 4}',  # an unknown kind
    '{"kind": "train"}',  # no step
    '{"kind": "train", "step": "4"}',  # a step of the wrong type
    '{"kind": "train", "step": true}',
    '{"kind": "train", "step": NaN}',  # a non-finite step
    '{"kind": "val", "step": Infinity, "val_acc": 0.5}',
    '{"kind": "train", "step": 2.5}',  # not a whole step
    '{"kind": "val", "step": 4, "val_acc": "high"}',  # a value of the wrong type
    '{"kind": "train", "step": 4, "meta_loss": [1.0]}',
    "",
]
GOOD_CURVE = {"kind": "adaptation", "step": 4, "axis": "inner_steps", "x": [0, 1, 2], "accuracy": [0.2, 0.5, 1.0],
              "ways": 5, "episodes": 20}
BAD_CURVES = [  # what each breaks
    {"axis": "steps"}, {"axis": None}, {"x": []}, {"accuracy": []}, {"x": [0, 1]}, {"x": "012"},
    {"x": [0, 2, 1]}, {"x": [0, 1, 1]}, {"x": [-1, 0, 1]}, {"x": [0, 1.5, 2]}, {"x": [0, True, 2]},
    {"accuracy": [0.2, 0.5, 1.2]}, {"accuracy": [0.2, -0.1, 0.5]}, {"accuracy": [0.2, float("nan"), 0.5]},
    {"accuracy": [0.2, None, 0.5]}, {"accuracy": [0.2, "0.5", 0.5]}, {"accuracy": 0.5}, {"ways": 0},
    {"ways": "5"}, {"episodes": 2.5}, {"step": -1},
]


def test_reader_keeps_good_lines_in_order_and_skips_each_malformed_one():
    lines = []
    for i, good in enumerate(GOOD):
        lines.append(json.dumps(good))
        lines.extend(BAD if i == 1 else BAD[i::4])
    got = read_metric_records(lines)
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in GOOD]
    assert got[0] == GOOD[0]


@pytest.mark.parametrize("bad", BAD)
def test_reader_skips_a_malformed_line_without_raising(bad):
    assert read_metric_records([bad]) == []


def test_reader_takes_parsed_dicts_and_other_objects_too():
    raw = [GOOD[0], ["kind", "train"], None, 3, {"kind": "val"}, GOOD[2], {"kind": "train", "step": 5.0}]
    got = read_metric_records(raw)
    assert [r["step"] for r in got] == [1, 2, 5]
    assert isinstance(got[-1]["step"], int)  # a whole float step becomes an int


def test_run_dir_reads_metrics_through_the_reader(tmp_path):
    run = RunDir.create(tmp_path / "run", {"steps": 3})
    run.append_metrics(GOOD)
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write("\n".join(BAD) + "\n")
    assert [(r["kind"], r["step"]) for r in run.read_metrics()] == [(r["kind"], r["step"]) for r in GOOD]


def test_what_is_written_is_unchanged(tmp_path):
    run = RunDir.create(tmp_path / "run", {"steps": 3})
    run.append_metrics(GOOD[:1])
    assert (run.path / "metrics.jsonl").read_text() == json.dumps(GOOD[0]) + "\n"


def test_reader_keeps_a_good_adaptation_curve():
    assert read_metric_records([json.dumps(GOOD_CURVE)]) == [GOOD_CURVE]
    assert adaptation_records([GOOD_CURVE, GOOD[0], GOOD[2]]) == [GOOD_CURVE]
    bare = {k: GOOD_CURVE[k] for k in ("kind", "step", "axis", "x", "accuracy")}  # ways, episodes optional
    assert read_metric_records([bare]) == [bare]


@pytest.mark.parametrize("change", BAD_CURVES, ids=str)
def test_reader_and_filter_skip_a_malformed_adaptation_curve(change):
    bad = {**GOOD_CURVE, **change}
    assert read_metric_records([json.dumps(bad)]) == [] and read_metric_records([bad]) == []
    assert adaptation_records([bad]) == []
    for key in ("axis", "x", "accuracy"):  # each of them must be there
        assert read_metric_records([{k: v for k, v in GOOD_CURVE.items() if k != key}]) == []


def test_kind_filters():
    mixed = GOOD + [{"kind": "train"}, {"kind": "val", "step": "x"}, {"kind": "mine", "step": 1}]
    assert [r["step"] for r in train_records(mixed)] == [1, 2, 3]
    assert [r["step"] for r in val_records(mixed)] == [2]
    assert [r["step"] for r in adaptation_records(mixed)] == [2]
    assert train_records([]) == [] and val_records(iter([])) == [] and adaptation_records([]) == []


def test_run_state_is_a_plain_string_too():
    assert RunState.RUNNING == "running" and "running" == RunState.RUNNING
    assert RunState("paused") is RunState.PAUSED
    assert f"{RunState.STOPPED}" == str(RunState.STOPPED) == "stopped"
    assert json.dumps({"state": RunState.FINISHED}) == '{"state": "finished"}'
    assert "running" in ACTIVE and "saved" not in ACTIVE


def test_run_state_groups():
    assert ACTIVE == {"starting", "running", "paused", "stopping"}
    assert DONE == {"finished", "stopped", "failed"}
    assert set(JOB_STATES) == ACTIVE | DONE and not ACTIVE & DONE
    assert set(CATALOG_STATES) == {"running", "training (another process)", "finished", "stopped", "unreadable"}
    assert {s.value for s in RunState} >= set(JOB_STATES) | set(CATALOG_STATES) | {"saved", "none"}
    assert [s for s in RunState if s.active] == [s for s in JOB_STATES if s in ACTIVE]
    assert all(s.done == (s in DONE) for s in RunState)
