"""Damaged run folders: every command, the Runs page's catalog and the live view answer them
cleanly (exit 0, or exit 2 with one `error:` line; a damaged run listed as such, never raised).

One small real run is trained once per module (with an evaluation and a curve recorded); each
example copies it and damages ONE of its files: config.json, metrics.jsonl, evaluations.jsonl, a
snapshot, probe.npz, a checkpoint or splits.json (wrong types, NaN/Infinity, truncation, binary
junk, odd file names, symlinks, missing files)."""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import cli
from engine.config import TrainConfig, preset
from engine.errors import UserError
from engine.eval.twins import find_twin
from engine.records import RunState, read_evaluation_records
from engine.runs import RunDir
from engine.services import catalog
from engine.train.launch import start_run
from engine.viz.live import LiveMap

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=4, val_episodes=8, snapshot_every=2, checkpoint_every=4)
STEPS = TINY["steps"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished tiny run with one evaluation and one curve recorded (so that `report` needs no
    new ones). Read-only: copy it."""
    root = tmp_path_factory.mktemp("base")
    trainer, run = start_run(preset("smoke").with_overrides(**TINY), str(root / "run"))
    trainer.run(run)
    for kind in ("evaluate", "curve"):  # on the meta-test classes, which the Runs page and report show
        assert call([kind, str(run.path), "--episodes", "2", "--classes", "test"])[0] == 0
    return run.path


def call(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `python -m engine ARGV`, run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def assert_clean(argv: list[str]) -> int:
    """The command exits 0, or 2 with exactly one `error:` line (its last) and no traceback."""
    code, err = call(argv)
    assert code in (0, 2), f"{argv} exited {code}: {err}"
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), err
        assert sum(line.startswith("error:") for line in lines) == 1, err
    return code


def fresh(base: Path, tmp: Path) -> tuple[Path, Path]:
    """(a copy of the base run to damage, a healthy copy beside it) in a runs folder of their own."""
    root = tmp / "runs"
    shutil.copytree(base, root / "run", symlinks=True)
    shutil.copytree(base, root / "healthy", symlinks=True)
    return root / "run", root / "healthy"


def check_everything(run: Path, healthy: Path, tmp: Path) -> None:
    """Every reader of a run folder survives it: catalog, live view, twin lookup, the commands."""
    listed = {s.name: s for s in catalog.list_runs(run.parent)}
    assert listed["healthy"].readable and listed["healthy"].state == RunState.FINISHED
    summary = catalog.summarize(run)
    summary.row()
    if not summary.readable:
        assert summary.state == RunState.UNREADABLE and summary.detail
    live = LiveMap(warm_up=False)
    view = live.read(str(run))
    live.refresh(view.snapshots, view.probe, run=str(run), method="pca", regions=True)
    live.frames(view.snapshots, run=str(run), method="pca")
    find_twin(str(healthy))  # the damaged neighbour is skipped, never raised
    assert_clean(["evaluate", str(run), "--episodes", "2"])
    assert_clean(["report", str(run), "-o", str(tmp / "report.html"), "--method", "pca", "--episodes", "2"])
    assert_clean(["train", "--resume", str(run), "--steps", str(STEPS + 1)])


# ------------------------------------------------------------------------------------------------
# The family of damages
# ------------------------------------------------------------------------------------------------
FILES = ["config.json", "metrics.jsonl", "evaluations.jsonl", "splits.json", "snapshots/probe.npz",
         "snapshot", "checkpoint"]
BAD_VALUES = st.one_of(  # what a damaged JSON field may hold
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-2**70, max_value=2**70),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
WRONG_TYPES = st.one_of(  # what a damaged config setting may hold: never a usable value of its type
    st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 5.5, True, {"a": 1}, "5", 1e999]))
BAD_ARRAYS = st.sampled_from(["missing", "nan", "strings", "objects", "shape", "scalar", "empty"])


def target(run: Path, name: str) -> Path:
    if name == "snapshot":
        return run / "snapshots" / f"step_{RunDir(run).snapshot_steps()[-1]:07d}.npz"
    if name == "checkpoint":
        return RunDir(run).checkpoints()[-1]
    return run / name


class Evil:
    """Unpickling this would leave a file behind: proof that a loader unpickled it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def bad_array(kind: str, like: np.ndarray | None):
    like = np.zeros((4, 3), np.float32) if like is None else like
    if kind == "nan":
        return np.full(like.shape, np.nan, np.float32)
    if kind == "strings":
        return np.full(like.shape or (1,), "x")
    if kind == "objects":
        return np.array([Evil(), None], dtype=object)
    if kind == "shape":
        return np.zeros((like.size + 1, 2), like.dtype if like.dtype.kind != "U" else np.float32)
    if kind == "scalar":
        return np.asarray(7, like.dtype)
    return np.zeros((0,) + like.shape[1:], like.dtype)  # empty


def damage_npz(path: Path, key: str, kind: str, marker: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    Evil.marker = marker
    if kind == "missing":
        arrays.pop(key, None)
    else:
        arrays[key] = bad_array(kind, arrays.get(key))
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # object arrays are pickled into the file, as a hostile writer would


@st.composite
def damages(draw):
    """(description, function(run, tmp)) that damages one file of a run copy."""
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["missing", "truncate", "junk", "symlink", "content", "odd name"]))
    fraction = draw(st.floats(0, 1, exclude_max=True))
    junk = draw(st.binary(max_size=64))
    field_value = draw(BAD_VALUES)
    wrong = draw(WRONG_TYPES)
    config_field = draw(st.sampled_from(sorted(TrainConfig.__dataclass_fields__)))
    array_kind = draw(BAD_ARRAYS)
    link_to = draw(st.sampled_from(["outside", "dangling", "folder", "self"]))

    def apply(run: Path, tmp: Path) -> None:
        path = target(run, name)
        if how == "missing":
            path.unlink()
        elif how == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * fraction)])
        elif how == "junk":
            path.write_bytes(junk)
        elif how == "symlink":
            path.unlink()
            other = {"outside": tmp / "outside.bin", "dangling": tmp / "nowhere", "folder": tmp, "self": path}[link_to]
            if link_to == "outside":
                other.write_bytes(junk)
            path.symlink_to(other)
        elif how == "odd name":  # files beside the real ones, named almost like them
            folder = path.parent
            for odd in ("step_abc.npz", "step_12.npz", "step_0000001.npz.tmp", ".step_0000003.npz.x.tmp",
                        "step_abc.pt", "step_99999999.pt", "probe.npz.bak"):
                (folder / odd).write_bytes(junk)
            (folder / "step_0000005.npz").mkdir(exist_ok=True) if not (folder / "step_0000005.npz").exists() else None
        elif name == "config.json":
            data = json.loads(path.read_text())
            if field_value is None or isinstance(field_value, (list, int)) and fraction < 0.3:
                data["config"] = field_value  # the settings object itself
            else:
                data["config"][config_field] = wrong
            path.write_text(json.dumps(data))
        elif name in ("metrics.jsonl", "evaluations.jsonl"):
            lines = path.read_text().splitlines()
            i = int(fraction * len(lines))
            record = json.loads(lines[i])
            key = sorted(record)[int(fraction * 1000) % len(record)]
            record[key] = field_value
            lines[i] = json.dumps(record)
            lines.append(json.dumps(field_value))  # and a line that is no record at all
            path.write_text("\n".join(lines) + "\n")
        elif name == "splits.json":
            path.write_text(json.dumps(field_value))
        elif name == "checkpoint":
            state = torch.load(path, weights_only=True)
            key = sorted(state)[int(fraction * 1000) % len(state)]
            if key == "model":
                first = sorted(state["model"])[0]
                state["model"][first] = torch.zeros(3, 1, 7)
            else:
                state[key] = field_value if not isinstance(field_value, dict) else "x"
            torch.save(state, path)
        else:  # an .npz
            with np.load(path, allow_pickle=False) as z:
                keys = sorted(z.files)
            damage_npz(path, keys[int(fraction * 1000) % len(keys)], array_kind, tmp / "unpickled")

    return f"{name}: {how}", apply


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=damages())
def test_every_reader_survives_a_damaged_run_folder(base, tmp_path_factory, damage):
    _, apply = damage
    tmp = tmp_path_factory.mktemp("damaged")
    run, healthy = fresh(base, tmp)
    apply(run, tmp)
    check_everything(run, healthy, tmp)
    assert not (tmp / "unpickled").exists()  # no object array was ever unpickled


# ------------------------------------------------------------------------------------------------
# Each damaged form of the issue's finding 3, one by one
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def pair(base, tmp_path) -> tuple[Path, Path]:
    return fresh(base, tmp_path)


def append_line(path: Path, obj) -> None:
    with open(path, "a") as f:
        f.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")


@pytest.mark.parametrize("line", [{"kind": "train", "step": "x"}, {"kind": "val", "step": 3, "val_acc": "high"},
                                  [1, 2], '{"kind": "train", "step": 1e999}', {"kind": "train", "step": 2**80},
                                  {"kind": "train", "step": 3, "seconds": 2**80}, '{"kind": "val", "step": NaN}'])
def test_a_damaged_metrics_line_is_skipped_and_counted(pair, line):
    run, healthy = pair
    append_line(run / "metrics.jsonl", line)
    append_line(run / "metrics.jsonl", "\x00\xff binary")
    summary = catalog.summarize(run)
    assert summary.readable and summary.steps_done == STEPS and summary.skipped_lines == 2
    assert summary.row()["notes"] == "2 damaged lines skipped"
    view = LiveMap(warm_up=False).read(str(run))
    assert view.progress["step"] == STEPS and any("2 damaged lines" in w for w in view.warnings)


def test_a_metrics_record_without_its_time_is_kept(pair):
    run, _ = pair
    append_line(run / "metrics.jsonl", {"kind": "val", "step": 4, "val_acc": 0.5, "seconds": None})
    view = LiveMap(warm_up=False).read(str(run))
    assert view.progress["step"] == STEPS and view.progress["seconds"] > 0 and not view.warnings


@pytest.mark.parametrize("bad", [{"accuracy": "x"}, {"accuracy": float("inf")}, {"ci95": "wide"},
                                 {"episodes": "600"}, {"ways": 5.5}, {"dataset": 3}, {"steps": ["a"]},
                                 {"accuracy": [0.5]}, {"kind": None}])
def test_a_damaged_evaluation_is_skipped_and_counted(pair, bad):
    run, _ = pair
    good = RunDir(run).read_evaluations()
    assert [r["kind"] for r in good] == ["evaluate", "curve"]
    for rec in good:  # the same records, damaged, written last (so they would be the latest)
        append_line(run / "evaluations.jsonl", {**rec, **bad})
    records = RunDir(run).read_evaluations()
    summary = catalog.summarize(run)
    assert summary.readable and summary.skipped_lines == 2 and summary.test == good[0] and summary.curve == good[1]
    assert records == good
    assert "2 damaged lines" in summary.row()["notes"]
    assert read_evaluation_records(["", "not json", "[1]", json.dumps(good[0])]) == ([good[0]], 2)


@pytest.mark.parametrize("config", [{"ways": "5"}, {"ways": 5.5}, {"ways": True}, {"lam": float("nan")},
                                    {"steps": 1e999}, {"learner": "nope"}, {"backbone": 3}, {"norm": "x"},
                                    {"polarity": None}, {"dataset": ["a"]}, {"rotations": "yes"}])
def test_a_config_setting_of_the_wrong_type_names_the_field_value_and_run(pair, config):
    run, healthy = pair
    data = json.loads((run / "config.json").read_text())
    data["config"].update(config)
    (run / "config.json").write_text(json.dumps(data))
    name = next(iter(config))
    with pytest.raises(UserError) as e:
        RunDir(run).train_config()
    assert f"'{name}'" in str(e.value) and str(run / "config.json") in str(e.value)
    summary = catalog.summarize(run)
    assert summary.state == RunState.UNREADABLE and f"'{name}'" in summary.detail
    assert find_twin(str(healthy)) is None  # the broken neighbour is skipped
    code, err = call(["train", "--resume", str(run)])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and f"'{name}'" in err


@pytest.mark.parametrize("settings_object", [None, [1, 2], "x", 3])
def test_a_config_without_a_settings_object_is_skipped_by_twin_lookups(pair, settings_object):
    run, healthy = pair
    (run / "config.json").write_text(json.dumps({"format_version": 1, "config": settings_object}))
    assert find_twin(str(healthy)) is None
    runs = {s.name: s for s in catalog.list_runs(run.parent)}
    assert runs["run"].state == RunState.UNREADABLE and runs["healthy"].readable
    assert assert_clean(["evaluate", str(run), "--episodes", "2"]) == 2


def test_missing_settings_take_their_defaults(pair):
    run, _ = pair
    data = json.loads((run / "config.json").read_text())
    del data["config"]["amp"], data["config"]["weight_decay"]
    (run / "config.json").write_text(json.dumps(data))
    cfg = RunDir(run).train_config()
    assert cfg.amp is False and cfg.weight_decay == 0.0


def test_steps_1e999_is_refused_before_training(pair):
    run, _ = pair
    data = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(data).replace(f'"steps": {STEPS}', '"steps": 1e999'))
    code, err = call(["train", "--resume", str(run)])
    assert code == 2 and "'steps'" in err and "whole number" in err
    assert LiveMap(warm_up=False).read(str(run)).progress["steps"] == 0


def test_snapshot_files_are_matched_by_exact_name(pair):
    run, _ = pair
    steps = RunDir(run).snapshot_steps()
    for odd in ("step_abc.npz", "step_12.npz", "step_0000001.npz.tmp", "xstep_0000003.npz", "step_00000001.npz"):
        (run / "snapshots" / odd).write_bytes(b"junk")
    assert RunDir(run).snapshot_steps() == steps
    view = LiveMap(warm_up=False).read(str(run))
    assert len(view.snapshots) == len(steps) and not view.warnings


@pytest.mark.parametrize("key,kind", [("concepts", "missing"), ("concepts", "nan"), ("concepts", "shape"),
                                      ("concepts", "objects"), ("step", "strings"), ("step", "missing"),
                                      ("disc_pred", "shape"), ("disc.net.weight", "shape")])
def test_a_damaged_snapshot_is_skipped_and_said(pair, tmp_path, key, kind):
    run, _ = pair
    steps = RunDir(run).snapshot_steps()
    path = run / "snapshots" / f"step_{steps[-1]:07d}.npz"
    damage_npz(path, key, kind, tmp_path / "unpickled")
    live = LiveMap(warm_up=False)
    view = live.read(str(run))
    assert [int(s["step"]) for s in view.snapshots] == steps[:-1]
    assert any(path.name in w for w in view.warnings)
    xy, _, _ = live.refresh(view.snapshots, view.probe, run=str(run), method="pca", regions=True)
    assert xy is not None and len(xy) == len(view.probe["images"])
    assert assert_clean(["report", str(run), "-o", str(tmp_path / "r.html"), "--method", "pca", "--episodes", "2"]) == 0
    assert "damaged snapshot" in (tmp_path / "r.html").read_text()
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("key,kind", [("class_name", "objects"), ("images", "objects"), ("split", "strings"),
                                      ("images", "nan"), ("label", "shape"), ("images", "missing")])
def test_a_damaged_probe_is_refused_cleanly_and_never_unpickled(pair, tmp_path, key, kind):
    run, _ = pair
    damage_npz(run / "snapshots" / "probe.npz", key, kind, tmp_path / "unpickled")
    with pytest.raises(UserError, match="probe"):
        RunDir(run).load_probe()
    live = LiveMap(warm_up=False)
    view = live.read(str(run))
    assert view.probe is None and any("probe" in w for w in view.warnings)
    xy, _, note = live.refresh(view.snapshots, view.probe, run=str(run), method="pca")
    assert xy is None
    assert assert_clean(["report", str(run), "-o", str(tmp_path / "r.html"), "--method", "pca", "--episodes", "2"]) == 0
    assert "No replay" in (tmp_path / "r.html").read_text()
    assert not (tmp_path / "unpickled").exists()
    pickle.dumps(Evil())  # the marker class really pickles (else the check above proves nothing)


@pytest.mark.parametrize("damage", ["no model", "wrong shapes", "step text", "no optimizer"])
def test_a_damaged_checkpoint_is_a_clean_error(pair, damage):
    run, _ = pair
    for path in RunDir(run).checkpoints():
        state = torch.load(path, weights_only=True)
        if damage == "no model":
            state["model"] = "x"
        elif damage == "wrong shapes":
            state["model"] = {k: torch.zeros(2, 1) for k in state["model"]}
        elif damage == "step text":
            state["step"] = "9"
        else:
            del state["optimizer"]
        torch.save(state, path)
    code, err = call(["train", "--resume", str(run), "--steps", str(STEPS + 1)])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    code, err = call(["evaluate", str(run), "--episodes", "2"])
    assert code == (0 if damage == "no optimizer" else 2) and "Traceback" not in err
