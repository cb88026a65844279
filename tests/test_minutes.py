"""train --minutes: a run bounded by time, whose learning-rate schedule follows the budget and
whose config.json records the steps it did."""
from __future__ import annotations

import json
import math

import pytest

from engine.config import LIMITS
from engine.errors import UserError
from engine.records import RunState
from engine.services.catalog import summarize
from engine.train import trainer as trainer_module
from engine.train.launch import resume_run, start_run
from tests.test_cli import TINY, assert_one_error_line, run_cli, strict_json
from tests.test_trainer import tiny

STEP_S = 0.5  # the fake clock's seconds per training step


@pytest.fixture()
def step_clock(monkeypatch):
    """The trainer's clock advances STEP_S a training step and never otherwise: its time budget
    then ends after an exact number of steps, whatever the machine's pace."""
    now = [0.0]
    monkeypatch.setattr(trainer_module, "_clock", lambda: now[0])
    step = trainer_module.Trainer.train_step

    def timed_step(self):
        now[0] += STEP_S
        return step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", timed_step)


def test_a_run_bounded_by_minutes_stops_at_its_budget_with_the_schedule_over_the_time(step_clock, tmp_path):
    budget_s = 10 * STEP_S  # ten steps of the fake clock
    trainer, run = start_run(tiny(minutes=budget_s / 60, steps=1_000, lr_schedule="cosine"), str(tmp_path / "run"))
    summary = trainer.run(run)

    assert summary["steps"] == 10 and summary["loop_seconds"] == pytest.approx(budget_s)
    assert run.train_config().steps == 10  # config.json: the steps it did; the run reads as finished
    assert summarize(run.path).state == RunState.FINISHED
    train = [r for r in run.read_metrics() if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 11))
    lr = trainer.cfg.lr
    for r in train:  # step k is taken after (k - 1) * STEP_S of the budget: the cosine over the time
        progress = (r["step"] - 1) * STEP_S / budget_s
        assert r["lr"] == pytest.approx(lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))))
        assert r["progress"] == pytest.approx(max(progress, (r["step"] - 1) / 1_000))  # the further of the two
    assert [r for r in run.read_metrics() if r["kind"] == "val"][-1]["step"] == 10  # validated at the end


def test_the_steps_stay_an_upper_bound_on_a_run_bounded_by_minutes(step_clock, tmp_path):
    trainer, run = start_run(tiny(minutes=1.0, steps=4), str(tmp_path / "run"))
    summary = trainer.run(run)
    assert summary["steps"] == 4 and run.train_config().steps == 4
    # the schedule is at the further of the two: the last step began at 3 of 4 steps, not 1.5 s of 60
    assert [r for r in run.read_metrics() if r["kind"] == "train"][-1]["progress"] == 0.75


def test_a_stopped_run_bounded_by_minutes_resumes_with_the_rest_of_its_budget(step_clock, tmp_path):
    from engine.train.trainer import Control

    trainer, run = start_run(tiny(minutes=8 * STEP_S / 60, steps=1_000, checkpoint_every=3), str(tmp_path / "run"))
    control = Control()
    trainer.run(run, control, lambda kind, rec: setattr(control, "stop", control.stop or rec.get("step") == 3))
    assert trainer.step == 3 and run.train_config().steps == 1_000  # stopped, not finished
    # the Runs table: its steps are an upper bound until the end, so the time limit is shown instead
    assert summarize(run.path).row()["steps"] == "3 (limit 0.07 min)"

    again, run = resume_run(str(run.path))
    assert again.loop_seconds == pytest.approx(3 * STEP_S)  # the time already spent is counted
    assert again.run(run)["steps"] == 8 and run.train_config().steps == 8
    assert summarize(run.path).row()["steps"] == "8/8"

    longer, run = resume_run(str(run.path), steps=11)  # given steps, a spent budget goes on by steps
    assert longer.cfg.minutes == 0 and longer.run(run)["steps"] == 11


def test_train_minutes_on_the_command_line_ends_by_time_and_prints_the_steps(tmp_path):
    out = tmp_path / "run"
    flags = [f for f in TINY if f not in ("--steps", "6")]
    code, stdout, err = run_cli("train", *flags, "--minutes", "0.04", "--out", out)
    assert code == 0, err
    summary = strict_json(stdout)
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["minutes"] == 0.04 and 1 <= summary["steps"] == config["steps"] < LIMITS["steps"]
    assert summary["loop_seconds"] >= 0.04 * 60
    assert "s of 2s" in err or "s of 3s" in err  # the progress line counts the budget, not the steps


@pytest.mark.parametrize("value", ["-1", "nan", str(LIMITS["minutes"] + 1)])
def test_a_bad_minutes_is_one_error_naming_the_flag(value):
    code, out, err = run_cli("train", *TINY, "--minutes", value)
    assert_one_error_line(code, out, err)
    assert "--minutes" in err


def test_recorded_runs_without_minutes_still_load():
    config = tiny().to_dict()
    del config["minutes"]
    assert type(tiny()).from_dict(config).minutes == 0.0
    with pytest.raises(UserError, match="minutes"):
        type(tiny()).from_dict({**config, "minutes": "ten"})



def test_the_live_view_shows_a_run_bounded_by_time_against_its_budget(step_clock, tmp_path):
    """Read from disk mid-run (stopped at 3 of the 8 steps its budget allows), the progress is the
    time used, not 3 of the upper bound's 1,000 steps; once finished, steps again."""
    from engine.train.trainer import Control
    from engine.viz.live import LiveMap
    from ui.live import step_text

    trainer, run = start_run(tiny(minutes=8 * STEP_S / 60, steps=1_000, checkpoint_every=3), str(tmp_path / "run"))
    control = Control()
    trainer.run(run, control, lambda kind, rec: setattr(control, "stop", control.stop or rec.get("step") == 3))
    p = LiveMap(warm_up=False).read(str(run.path)).progress
    assert p["fraction"] == pytest.approx(2 / 8)  # the last step began after 2 of its 8 steps' time
    assert step_text(p) == "step 3, 25% of 0.07 min"

    again, run = resume_run(str(run.path))
    again.run(run)
    assert step_text(LiveMap(warm_up=False).read(str(run.path)).progress) == "step 8/8"
