"""Choices on meta-validation classes: `engine select` (test-time inner steps and step size, and
among runs), `engine curve` on validation classes by default, every result naming its split; and
checkpoints of runs trained with the old zero-initialised head refused with a clear message."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from engine import cli
from engine.errors import UserError
from engine.eval.checkpoints import load_trained
from engine.eval.evaluate import run_evaluation
from engine.eval.select import select
from engine.runs import RunDir
from engine.train.launch import resume_run, start_run
from tests.test_trainer import tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs: MAML at lambda 1 and lambda 0 (3 steps each)."""
    out = {}
    for lam in (1.0, 0.0):
        path = tmp_path_factory.mktemp("runs") / f"maml-lam{lam:g}"
        trainer, run = start_run(tiny(learner="maml", lam=lam, steps=3, val_every=3, checkpoint_every=3), str(path))
        trainer.run(run)
        out[lam] = str(path)
    return out


def run_cli(*argv) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None, err.getvalue()


def test_select_scores_every_candidate_on_validation_classes(runs):
    result = select([runs[1.0], runs[0.0]], steps=2, inner_lrs=[0.1, 0.3], episodes=4)
    assert result["split"] == "meta-validation" and result["candidates"] == 2 * 2 * 3
    table = result["table"]
    assert result["chosen"] == max(table, key=lambda r: r["accuracy"])
    assert {(r["lam"], r["inner_lr"], r["steps"]) for r in table} == {
        (lam, lr, s) for lam in (1.0, 0.0) for lr in (0.1, 0.3) for s in range(3)}
    # at the run's own step size (0.1) the numbers are the validation curve's, episode for episode
    curve = run_evaluation(runs[1.0], "curve", classes="val", episodes=4, steps=2)
    assert curve["split"] == "meta-validation"
    mine = [r["accuracy"] for r in table if r["lam"] == 1.0 and r["inner_lr"] == 0.1]
    np.testing.assert_allclose(mine, curve["accuracy"])
    assert "test" not in result  # the test classes are not touched unless asked


def test_select_scores_the_chosen_setting_once_on_test(runs):
    result = select([runs[0.0]], steps=1, inner_lrs=[0.1], episodes=3, test_episodes=5)
    assert result["test"]["split"] == "meta-test" and result["test"]["episodes"] == 5
    assert 0.0 <= result["test"]["accuracy"] <= 1.0


def test_select_and_curve_on_the_command_line_say_their_split(runs):
    code, out, err = run_cli("select", runs[1.0], "--steps", "1", "--inner-lrs", "0.1", "--episodes", "3")
    assert code == 0, err
    assert out["split"] == "meta-validation" and "chosen on meta-validation" in err
    code, out, err = run_cli("curve", runs[1.0], "--steps", "1", "--episodes", "2")
    assert code == 0, err
    assert out["classes"] == "val" and out["split"] == "meta-validation"  # curve's default: validation classes
    code, out, err = run_cli("evaluate", runs[1.0], "--episodes", "2")
    assert code == 0, err
    assert out["split"] == "meta-test"
    code, _, err = run_cli("select", runs[1.0], "--inner-lrs", "0.1,x")
    assert code == 2 and "--inner-lrs takes comma-separated numbers" in err


def test_old_checkpoints_with_the_zero_head_are_refused_clearly(runs, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs[1.0], old)
    ckpt = RunDir(old).checkpoints()[-1]
    state = torch.load(ckpt, weights_only=True)
    state["model"]["learner.head.shared.row_weight"] = torch.zeros(16)
    state["model"]["learner.head.shared.row_bias"] = torch.zeros(())
    torch.save(state, ckpt)
    with pytest.raises(UserError, match="earlier maml head.*train the run again"):
        load_trained(old)  # evaluate, curve, select, the Adapt page
    with pytest.raises(UserError, match="earlier maml head.*train the run again"):
        resume_run(str(old))  # train --resume, Resume on the Train page
    load_trained(runs[1.0])  # today's checkpoints load
