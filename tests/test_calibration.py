"""Calibration of a run (engine.eval.calibration): the temperature, the expected calibration error
before and after, the "unknown" threshold, and the run folder's calibration.json."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from engine.config import preset
from engine.eval import calibration
from engine.eval.checkpoints import load_model
from engine.services import adapt
from engine.train.launch import start_run

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=3, val_episodes=8, snapshot_every=3, checkpoint_every=6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    trainer, r = start_run(preset("smoke").with_overrides(**TINY), str(tmp_path_factory.mktemp("cal") / "p"))
    trainer.run(r)
    return str(r.path)


def test_temperature_undoes_overconfidence():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(4000, 5, generator=g) * 2.0
    labels = torch.distributions.Categorical(logits=true).sample()
    over = true * 4.0  # the same answers, four times too sure
    t = calibration.fit_temperature(over, labels)
    assert t == pytest.approx(4.0, rel=0.15)
    assert calibration.ece(torch.softmax(over / t, -1), labels) < 0.5 * calibration.ece(torch.softmax(over, -1), labels)
    fields = calibration.calibrate(over.view(40, 100, 5), labels.view(40, 100), keep=0.9)
    assert fields["ece_after"] < fields["ece_before"]
    score, pred = over.max(-1)
    kept = (score[pred == labels] >= fields["unknown_below"]).float().mean()
    assert float(kept) == pytest.approx(0.9, abs=0.01)


def test_calibration_is_measured_once_and_kept_in_the_run(run):
    cal = calibration.run_calibration(run)
    assert cal.ece_after <= cal.ece_before and cal.temperature > 0
    assert cal.episodes == calibration.EPISODES and cal.ways >= 2 and 0 < cal.keep < 1
    assert "95%" in cal.rule() and "none of these" in cal.rule()
    path = os.path.join(run, calibration.FILE)
    saved = json.loads(open(path).read())
    assert saved["entries"]["-"]["unknown_below"] == cal.unknown_below
    stamp = os.stat(path).st_mtime_ns
    assert calibration.run_calibration(run) == cal and os.stat(path).st_mtime_ns == stamp  # read back, not redone
    open(path, "w").write("{ damaged")
    assert calibration.run_calibration(run) == cal  # measured again, never fatal
    assert json.loads(open(path).read())["entries"]["-"] == saved["entries"]["-"]
    saved["checkpoint"] = ["step_0000001.pt", 0, 0]  # another checkpoint's numbers are not used
    saved["entries"]["-"]["unknown_below"] = 123.0
    open(path, "w").write(json.dumps(saved))
    assert calibration.run_calibration(run) == cal


def test_classify_answers_none_of_these_below_the_threshold(run):
    cfg, model, dev = load_model(run)
    cal = calibration.run_calibration(run)
    task = adapt.sample_task(cfg, 3, 1, 3, seed=2)
    plain = adapt.classify(model, task, dev)
    assert not plain["unknown"].any()
    middle = float(np.median(plain["score"]))
    strict = calibration.Calibration(**{**cal.__dict__, "unknown_below": middle, "temperature": 2.0})
    got = adapt.classify(model, task, dev, calibration=strict)
    np.testing.assert_array_equal(got["unknown"], plain["score"] < middle)
    assert got["unknown"].any() and not got["correct"][got["unknown"]].any()
    np.testing.assert_allclose(got["probs"], torch.softmax(torch.log(torch.from_numpy(plain["probs"])) / 2.0, -1),
                               atol=1e-5)


@pytest.mark.slow
def test_images_of_a_class_outside_the_task_are_unknown(tmp_path):
    """A protonet trained a little (5-shot glyphs): queries of held-out classes that are not in the
    task mostly score below the threshold, the task's own queries mostly above it."""
    trainer, r = start_run(preset("smoke").with_overrides(
        dataset="glyphs:classes=60,drawings=16,seed=1", shots=5, steps=80, width=16, concept_dim=32, meta_batch=2,
        ext_batch=8, val_every=80, val_episodes=8, snapshot_every=80, checkpoint_every=80), str(tmp_path / "p"))
    trainer.run(r)
    cfg, model, dev = load_model(str(r.path))
    cal = calibration.run_calibration(str(r.path))
    inside, outside = [], []
    for seed in range(4):
        task = adapt.sample_task(cfg, 3, 5, 6, seed=seed)
        other = adapt.sample_task(cfg, 5, 1, 6, seed=100 + seed)
        strangers = [c for c in range(5) if other.class_names[c] not in task.class_names][:2]
        mask = np.isin(other.query_labels, strangers)
        task.query = np.concatenate([task.query, other.query[mask]])
        task.query_labels = np.concatenate([task.query_labels, np.full(int(mask.sum()), adapt.UNKNOWN)])
        task.query_names += [f"stranger {i}" for i in range(int(mask.sum()))]
        task.sampler = None
        got = adapt.classify(model, task, dev, calibration=cal)
        inside += list(got["unknown"][:18])
        outside += list(got["unknown"][18:])
    assert np.mean(outside) >= 0.4 and np.mean(inside) <= 0.25, (np.mean(outside), np.mean(inside))
