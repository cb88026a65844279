"""The command line's contract, which other tools script against: the last stdout line is one
JSON object, progress goes to stderr, and bad input exits 2 with one "error:" line."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import cli
from engine.runs import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = "glyphs:classes=60,drawings=8,seed=1"
TINY = ["--preset", "smoke", "--steps", "6", "--val-every", "3", "--val-episodes", "8", "--snapshot-every", "3",
        "--checkpoint-every", "3", "--width", "8", "--concept-dim", "16", "--meta-batch", "2", "--ext-batch", "8",
        "--dataset", TINY_DATA]
TRAIN_KEYS = {"run_dir", "steps", "seconds", "val_accuracy", "val_ci95"}


def run_cli(*argv) -> tuple[int, str, str]:
    """engine.cli.main in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def strict_json(text: str) -> dict:
    """The last stdout line, parsed as strict JSON (NaN/Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text.strip().splitlines()[-1], parse_constant=refuse)


def assert_one_error_line(code: int, out: str, err: str):
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10
    assert "Traceback" not in err
    assert out == ""


def python_m_engine(*argv, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A trained protonet run and a trained MAML run (through the command line), and what train printed."""
    root = tmp_path_factory.mktemp("cli")
    made = {}
    for learner in ("protonet", "maml"):
        out_dir = root / learner
        code, out, err = run_cli("train", *TINY, "--learner", learner, "--inner-steps", "2", "--out", out_dir)
        assert code == 0, err
        made[learner] = {"dir": out_dir, "stdout": out, "stderr": err}
    return made


# ------------------------------------------------------------------------------ train


def test_train_prints_one_json_line_and_progress_on_stderr(runs):
    made = runs["protonet"]
    assert len(made["stdout"].strip().splitlines()) == 1  # nothing else on stdout
    result = strict_json(made["stdout"])
    assert TRAIN_KEYS <= set(result)
    assert result["run_dir"] == str(made["dir"]) and result["steps"] == 6
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["val_ci95"] >= 0 and result["seconds"] > 0
    assert "step 6/6" in made["stderr"] and "val " in made["stderr"]
    run = RunDir.open(made["dir"])
    assert run.config()["learner"] == "protonet" and run.config()["steps"] == 6
    assert run.checkpoints()[-1].name == "step_0000006.pt"


def test_train_flags_override_the_preset(runs):
    cfg = RunDir.open(runs["maml"]["dir"]).config()
    assert (cfg["learner"], cfg["inner_steps"], cfg["width"], cfg["dataset"]) == ("maml", 2, 8, TINY_DATA)
    assert cfg["probe_classes"] == 6  # from the smoke preset, not the default


def test_train_resume_continues_from_the_last_good_checkpoint(tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "--out", out_dir)
    assert code == 0, err
    straight = strict_json(out)
    run = RunDir.open(out_dir)
    run.checkpoints()[-1].write_bytes(b"cut short")  # step 6 is damaged; step 3 is good

    code, out, err = run_cli("train", "--resume", out_dir)
    assert code == 0, err
    resumed = strict_json(out)
    assert "resuming" in err and "at step 3" in err and "warning: step_0000006.pt" in err
    assert resumed["steps"] == 6 and resumed["run_dir"] == str(out_dir)
    assert resumed["val_accuracy"] == pytest.approx(straight["val_accuracy"], abs=1e-5)
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "train"] == list(range(1, 7))


def test_train_resume_with_more_steps_trains_longer(tmp_path):
    out_dir = tmp_path / "run"
    assert run_cli("train", *TINY, "--out", out_dir)[0] == 0
    code, out, err = run_cli("train", "--resume", out_dir, "--steps", "9")
    assert code == 0, err
    assert strict_json(out)["steps"] == 9
    assert RunDir.open(out_dir).config()["steps"] == 9  # a later resume keeps the new length
    assert [r["step"] for r in RunDir.open(out_dir).read_metrics() if r["kind"] == "train"] == list(range(1, 10))


def test_train_resume_refuses_other_settings(tmp_path):
    out_dir = tmp_path / "run"
    assert run_cli("train", *TINY, "--out", out_dir)[0] == 0
    code, out, err = run_cli("train", "--resume", out_dir, "--lam", "0")
    assert_one_error_line(code, out, err)
    assert "--lam" in err and "only --steps" in err


# ------------------------------------------------------------------------------ evaluate / curve


def test_evaluate_prints_accuracy_with_its_interval(runs):
    code, out, err = run_cli("evaluate", runs["protonet"]["dir"], "--episodes", "20")
    assert code == 0, err
    result = strict_json(out)
    assert {"accuracy", "ci95", "episodes", "ways", "shots"} <= set(result)
    assert (result["episodes"], result["ways"], result["shots"]) == (20, 5, 1)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 < result["ci95"] < 0.5
    assert "episodes: 20/20" in err
    saved = RunDir(runs["protonet"]["dir"]).read_evaluations()[-1]
    assert saved["accuracy"] == result["accuracy"] and saved["kind"] == "evaluate"


def test_evaluate_of_one_episode_still_prints_strict_json(runs):
    code, out, err = run_cli("evaluate", runs["protonet"]["dir"], "--episodes", "1")
    assert code == 0, err
    result = strict_json(out)  # its interval is undefined: null, not NaN
    assert result["ci95"] is None and result["episodes"] == 1


def test_evaluate_on_another_dataset_with_all_its_classes(runs, shared_dir):
    zips = sorted((shared_dir / "data" / "omniglot").glob("images_background_small*.zip"))
    if not zips:
        pytest.skip("no small Omniglot zip in the shared data")
    code, out, err = run_cli("evaluate", runs["protonet"]["dir"], "--dataset", zips[0], "--classes", "all",
                             "--ways", "5", "--episodes", "20")
    assert code == 0, err
    result = strict_json(out)
    assert result["ways"] == 5 and result["classes"] == "all" and result["dataset"] == str(zips[0])
    assert 0.0 <= result["accuracy"] <= 1.0


def test_curve_of_a_gradient_learner_is_over_inner_steps(runs):
    code, out, err = run_cli("curve", runs["maml"]["dir"], "--steps", "3", "--episodes", "10")
    assert code == 0, err
    result = strict_json(out)
    assert result["axis"] == "steps" and result["steps"] == [0, 1, 2, 3]
    assert len(result["accuracy"]) == len(result["loss"]) == 4
    assert result["loss"][-1] < result["loss"][0]  # adapting on the support set lowers the query loss


def test_curve_of_a_metric_learner_is_over_shots(runs):
    code, out, err = run_cli("curve", runs["protonet"]["dir"], "--shots", "3", "--episodes", "10")
    assert code == 0, err
    result = strict_json(out)
    assert result["axis"] == "shots" and result["steps"] == [1, 2, 3]
    assert len(result["accuracy"]) == len(result["loss"]) == 3
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"])


def test_curve_of_a_metric_learner_defaults_to_as_many_shots_as_the_classes_allow(runs):
    code, out, err = run_cli("curve", runs["protonet"]["dir"], "--episodes", "10")
    assert code == 0, err
    # the run trained 1-shot, so one point would say nothing; its classes (8 images, 4 queries) allow 4 shots
    assert strict_json(out)["steps"] == [1, 2, 3, 4]


def test_curve_with_zero_steps_is_just_the_starting_point(runs):
    code, out, err = run_cli("curve", runs["maml"]["dir"], "--steps", "0", "--episodes", "4")
    assert code == 0, err
    result = strict_json(out)
    assert result["steps"] == [0] and len(result["accuracy"]) == 1


# ------------------------------------------------------------------------------ inspect


def test_inspect_glyphs():
    code, out, err = run_cli("inspect", "glyphs")
    assert code == 0, err
    result = strict_json(out)
    assert result["classes"] >= 2 and result["usable_classes"] == result["classes"]
    assert "classes" in err


def test_inspect_of_a_single_class_folder_exits_2(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "only").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "only" / f"{i}.png")
    code, out, err = run_cli("inspect", tmp_path)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def busy_dir(tmp_path) -> Path:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    return tmp_path / "busy"


TRAIN_ERRORS = {
    "missing dataset": (["--dataset", "/no/such/data"], "does not exist"),
    "unknown learner": (["--learner", "nonesuch"], "unknown learner"),
    "unknown preset": (["--preset", "nonesuch"], "invalid choice"),
    "bad flag value": (["--ways", "abc"], "invalid int value"),
    "unknown flag": (["--no-such-flag"], "unrecognized arguments"),
    "too many ways": (["--ways", "100"], "--ways 100 needs 100 classes in meta-train"),
    "external is the dataset": (["--external", TINY_DATA], "same data"),
    "external is the dataset, spelled otherwise": (["--external", "glyphs:seed=1,drawings=8,classes=60"], "shares"),
    "lam without external": (["--lam", "1", "--external", "none"], "external"),
    "zero steps": (["--steps", "0"], "at least 1"),
}


@pytest.mark.parametrize("name", TRAIN_ERRORS)
def test_train_bad_input_is_one_error_line(tmp_path, name):
    flags, message = TRAIN_ERRORS[name]
    code, out, err = run_cli("train", *TINY, *flags, "--out", tmp_path / "run")
    assert_one_error_line(code, out, err)
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing half-made


@pytest.mark.parametrize("flags", [
    ["--val-split", "-1"],
    ["--probe-classes", "0"],
    ["--probe-per-class", "0"],
    ["--seed", "-1"],
    ["--split-seed", "-1"],
    ["--weight-decay", "-1"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--lam", "nan"],
    ["--train-limit", "-1"],
    ["--image-size", "8"],
    ["--head-hidden", "-1"],
    ["--disc-hidden", "-1"],
    ["--inner-steps", "-1"],
], ids=" ".join)
def test_train_impossible_settings_are_one_error_line(tmp_path, flags):
    code, out, err = run_cli("train", *TINY, *flags, "--out", tmp_path / "run")
    assert_one_error_line(code, out, err)


def test_train_into_a_non_empty_folder_is_refused(busy_dir):
    code, out, err = run_cli("train", *TINY, "--out", busy_dir)
    assert_one_error_line(code, out, err)
    assert "not empty" in err
    assert sorted(p.name for p in busy_dir.iterdir()) == ["keep.txt"]


def test_resume_of_a_folder_that_is_not_a_run(busy_dir):
    code, out, err = run_cli("train", "--resume", busy_dir)
    assert_one_error_line(code, out, err)
    assert "not a run directory" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_device_cuda_without_a_gpu(tmp_path, runs):
    code, out, err = run_cli("train", *TINY, "--device", "cuda", "--out", tmp_path / "run")
    assert_one_error_line(code, out, err)
    assert "CUDA" in err
    code, out, err = run_cli("evaluate", runs["protonet"]["dir"], "--device", "cuda")
    assert_one_error_line(code, out, err)


@pytest.mark.parametrize("flags, message", [
    (["--ways", "50"], "50-way"),
    (["--ways", "0"], "ways >= 2"),
    (["--shots", "0"], "shots >= 1"),
    (["--episodes", "0"], "--episodes"),
    (["--steps", "-1"], "--steps"),
    (["--seed", "-1"], "--seed"),
    (["--classes", "some"], "invalid choice"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_evaluate_bad_input_is_one_error_line(runs, flags, message):
    code, out, err = run_cli("evaluate", runs["maml"]["dir"], *flags)
    assert_one_error_line(code, out, err)
    assert message in err


@pytest.mark.parametrize("command", ["evaluate", "curve"])
def test_evaluate_or_curve_of_a_folder_that_is_not_a_run(busy_dir, command):
    code, out, err = run_cli(command, busy_dir)
    assert_one_error_line(code, out, err)
    assert "not a run directory" in err


def test_usage_errors_point_at_the_right_help():
    code, out, err = run_cli("train", "--ways", "abc")
    assert_one_error_line(code, out, err)
    assert "(see python -m engine train --help)" in err
    code, out, err = run_cli("train", "--no-such-flag")  # found by the top-level parser
    assert_one_error_line(code, out, err)
    assert "(see python -m engine --help)" in err
    code, out, err = run_cli("nonesuch")
    assert_one_error_line(code, out, err)
    assert "(see python -m engine --help)" in err
    code, out, err = run_cli()
    assert_one_error_line(code, out, err)


def test_train_help_lists_the_config_flags():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    for flag in ("--lam", "--learner", "--inner-steps", "--external", "--resume", "--first-order", "--no-batched"):
        assert flag in out.getvalue()
    assert "--channels" not in out.getvalue()


# ------------------------------------------------------------------------------ the real process


def test_python_m_engine_train_then_evaluate(tmp_path):
    out_dir = tmp_path / "run"
    done = python_m_engine("train", *TINY, "--steps", "2", "--out", out_dir)
    assert done.returncode == 0, done.stderr
    result = strict_json(done.stdout)
    assert TRAIN_KEYS <= set(result) and result["steps"] == 2 and result["run_dir"] == str(out_dir)
    assert "step 2/2" in done.stderr
    done = python_m_engine("evaluate", out_dir, "--episodes", "8")
    assert done.returncode == 0, done.stderr
    assert strict_json(done.stdout)["episodes"] == 8


def test_python_m_engine_error_exit_status(tmp_path):
    done = python_m_engine("train", "--dataset", tmp_path / "missing", "--out", tmp_path / "run")
    assert_one_error_line(done.returncode, done.stdout, done.stderr)
    assert "does not exist" in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is a POSIX thing")
def test_ctrl_c_checkpoints_and_stops_cleanly(tmp_path):
    import signal

    out_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", *TINY, "--steps", "100000", "--out", str(out_dir)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the first progress line comes after the Ctrl-C handler is in place
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    result = strict_json(stdout)
    assert 1 <= result["steps"] < 100000
    run = RunDir.open(out_dir)
    assert run.checkpoints()[-1].name == f"step_{result['steps']:07d}.pt"
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "train"] == list(range(1, result["steps"] + 1))
