"""The DEML training loop: determinism, exact resume, lambda = 0, snapshots, every learner, and
the smoke preset really learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import preset
from engine.learners import LEARNERS
from engine.records import adaptation_records
from engine.train.launch import resume_run, start_run
from engine.train.trainer import Control, Trainer

TINY_DATA = "glyphs:classes=60,drawings=8,seed=1"  # 6 meta-val classes: enough for 5-way
TIMING_KEYS = {"step_seconds", "images_per_s", "seconds"}


def tiny(**overrides):
    base = dict(steps=6, val_every=3, val_episodes=8, snapshot_every=3, checkpoint_every=3, width=8,
                concept_dim=16, meta_batch=2, ext_batch=8, dataset=TINY_DATA, inner_steps=2)
    return preset("smoke").with_overrides(**{**base, **overrides})


def collect(trainer: Trainer, run=None, control=None, stop_after: int | None = None):
    """Run the trainer and return the (kind, record) events it emitted."""
    events = []
    control = control or Control()

    def on_event(kind, rec):
        events.append((kind, rec))
        if stop_after is not None and kind == "train" and rec["step"] == stop_after:
            control.stop = True

    summary = trainer.run(run, control, on_event)
    return summary, events


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def metric_records(events):
    return [rec for kind, rec in events if kind in ("train", "val")]


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_params_close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), f"{k} differs"


def max_param_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    cfg = tiny()
    t1, t2, t3 = Trainer(cfg), Trainer(cfg), Trainer(cfg.with_overrides(seed=1))
    _, e1 = collect(t1)
    _, e2 = collect(t2)
    _, e3 = collect(t3)
    r1, r2, r3 = (untimed(metric_records(e)) for e in (e1, e2, e3))
    assert [r["step"] for r in r1 if r["kind"] == "train"] == list(range(1, 7))
    assert r1 == r2  # losses, accuracies, disc metrics, validation: bit for bit
    p1, p2, p3 = params(t1.model), params(t2.model), params(t3.model)
    assert max_param_diff(p1, p2) == 0.0
    assert max_param_diff(p1, p3) > 1e-4
    assert [r["meta_loss"] for r in r1 if r["kind"] == "train"] != [r["meta_loss"] for r in r3 if r["kind"] == "train"]


def test_validation_episodes_do_not_depend_on_seed_or_lambda():
    """A DEML run and its lambda = 0 twin (and other seeds) are validated on the same tasks."""
    a = Trainer(tiny())
    b = Trainer(tiny(seed=5, lam=0.0))
    c = Trainer(tiny(split_seed=1))
    for field in ("support", "query", "classes"):
        assert np.array_equal(getattr(a.val_index, field), getattr(b.val_index, field))
    assert a.splits.val.class_names == b.splits.val.class_names
    assert a.splits.val.class_names != c.splits.val.class_names  # the split seed does move them


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_resume_after_stop_equals_uninterrupted(tmp_path, learner):
    cfg = tiny(learner=learner, steps=8, val_every=4, checkpoint_every=3)
    straight, straight_run = start_run(cfg, tmp_path / "straight")
    s_summary, _ = collect(straight, straight_run)

    first, run = start_run(cfg, tmp_path / "interrupted")
    summary, _ = collect(first, run, stop_after=5)  # stops between checkpoints (3 and 6)
    assert summary["steps"] == 5
    assert [p.name for p in run.checkpoints()] == ["step_0000003.pt", "step_0000005.pt"]

    resumed, run2 = resume_run(str(tmp_path / "interrupted"))
    assert resumed.step == 5
    r_summary, _ = collect(resumed, run2)
    assert r_summary["steps"] == 8

    assert_params_close(params(straight.model), params(resumed.model))
    s_opt, r_opt = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert s_opt.keys() == r_opt.keys()
    for i in s_opt:  # Adam's moments too, so the runs would keep agreeing
        assert_params_close(s_opt[i], r_opt[i])
    assert abs(r_summary["val_accuracy"] - s_summary["val_accuracy"]) <= 1e-5

    done, straight_metrics = run2.read_metrics(), straight_run.read_metrics()
    train_steps = [r["step"] for r in done if r["kind"] == "train"]
    assert train_steps == list(range(1, 9))  # none missing, none twice
    val_steps = [r["step"] for r in done if r["kind"] == "val"]
    assert val_steps == [4, 5, 8]  # the stop added one validation at step 5
    for a, b in zip([r for r in done if r["kind"] == "train"], [r for r in straight_metrics if r["kind"] == "train"]):
        assert a["meta_loss"] == pytest.approx(b["meta_loss"], abs=1e-5)
        assert a["meta_acc"] == pytest.approx(b["meta_acc"], abs=1e-5)
    # the adaptation curves too: measured at each validation, the same at the same step
    curves = {r["step"]: r for r in adaptation_records(done)}
    straight_curves = {r["step"]: r for r in adaptation_records(straight_metrics)}
    assert sorted(curves) == [4, 5, 8] and sorted(straight_curves) == [4, 8]
    for step in (4, 8):
        assert curves[step]["x"] == straight_curves[step]["x"]
        assert curves[step]["accuracy"] == pytest.approx(straight_curves[step]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("learner, axis, x", [("maml", "inner_steps", [0, 1, 2]), ("reptile", "inner_steps", [0, 1, 2]),
                                              ("protonet", "shots", [1, 2, 3, 4]),
                                              ("matching", "shots", [1, 2, 3, 4])])
def test_every_validation_records_an_adaptation_curve(tmp_path, learner, axis, x):
    """Gradient learners: accuracy after 0..S inner steps; metric learners: against 1..K' shots, K' > K
    (as many as the 8-drawing validation classes hold beside the queries), on the fixed curve episodes."""
    cfg = tiny(learner=learner, shots=1, queries=4)
    trainer, run = start_run(cfg, tmp_path / "run")
    _, events = collect(trainer, run)
    emitted = [rec for kind, rec in events if kind == "adaptation"]
    on_disk = adaptation_records(run.read_metrics())
    assert untimed(emitted) == on_disk  # handed to the live view as recorded
    assert [r["step"] for r in on_disk] == [3, 6]  # beside each validation
    assert [r["step"] for r in on_disk] == [r["step"] for r in run.read_metrics() if r["kind"] == "val"]
    for r in on_disk:
        assert r["axis"] == axis and r["x"] == x and r["ways"] == cfg.ways
        assert len(r["accuracy"]) == len(x) and all(0.0 <= a <= 1.0 for a in r["accuracy"])
    # deterministic: the same model on the same fixed episodes gives the same curve
    assert trainer.adaptation() == {**on_disk[-1], "step": trainer.step}


def test_resume_after_crash_falls_back_and_redoes_lost_steps(tmp_path):
    """The newest checkpoint is damaged: the run continues from the older one, drops the records
    and snapshots made after it, and still ends exactly where an unbroken run ends."""
    cfg = tiny(steps=8, val_every=4, checkpoint_every=3, snapshot_every=3)
    straight = Trainer(cfg)
    collect(straight)

    trainer, run = start_run(cfg, tmp_path / "run")
    collect(trainer, run)
    assert [p.name for p in run.checkpoints()] == ["step_0000006.pt", "step_0000008.pt"]
    assert 8 in run.snapshot_steps()
    newest = run.checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a crash mid-write

    resumed, run = resume_run(str(tmp_path / "run"))
    assert resumed.step == 6
    assert any("step_0000008.pt" in w for w in resumed.warnings)
    assert max(r["step"] for r in run.read_metrics()) == 6
    assert max(run.snapshot_steps()) == 6
    warned = []
    resumed.run(run, None, lambda kind, rec: warned.append(rec["message"]) if kind == "warning" else None)
    assert any("step_0000008.pt" in w for w in warned)  # the fallback is reported to the caller too
    assert_params_close(params(straight.model), params(resumed.model))
    train_steps = [r["step"] for r in run.read_metrics() if r["kind"] == "train"]
    assert train_steps == list(range(1, 9))
    assert run.snapshot_steps() == [0, 1, 2, 3, 6, 8]


# ------------------------------------------------------------------------------ lambda


def test_lambda_zero_leaves_the_discriminator_untouched():
    trainer = Trainer(tiny(lam=0.0, steps=4))
    assert trainer.model.discriminator is not None  # there is an external set, only its weight is 0
    before = params(trainer.model.discriminator)
    gen_before = params(trainer.model.generator)
    _, events = collect(trainer)
    assert max_param_diff(before, params(trainer.model.discriminator)) == 0.0
    assert max_param_diff(gen_before, params(trainer.model.generator)) > 0.0
    train = [rec for kind, rec in events if kind == "train"]
    assert len(train) == 4
    assert all(r["disc_loss"] is None and r["disc_acc"] is None for r in train)
    snaps = [rec for kind, rec in events if kind == "snapshot"]
    assert snaps and all(not bool(s["disc_trained"]) for s in snaps)


def test_lambda_positive_trains_the_discriminator():
    trainer = Trainer(tiny(lam=1.0, steps=4))
    before = params(trainer.model.discriminator)
    _, events = collect(trainer)
    assert max_param_diff(before, params(trainer.model.discriminator)) > 1e-5
    train = [rec for kind, rec in events if kind == "train"]
    assert all(isinstance(r["disc_loss"], float) and np.isfinite(r["disc_loss"]) for r in train)
    assert all(0.0 <= r["disc_acc"] <= 1.0 for r in train)
    assert all(bool(rec["disc_trained"]) for kind, rec in events if kind == "snapshot")


# ------------------------------------------------------------------------------ snapshots


def test_snapshots_and_probe_on_disk(tmp_path):
    cfg = tiny(steps=10, snapshot_every=5, val_every=5, checkpoint_every=5, probe_classes=3, probe_per_class=2)
    trainer, run = start_run(cfg, tmp_path / "run")
    collect(trainer, run)
    assert run.snapshot_steps() == [0, 1, 2, 4, 5, 10]  # step 0, early powers of two, every 5th

    probe = run.load_probe()
    assert {"images", "split", "label", "class_name"} <= set(probe)
    p = len(probe["split"])
    assert probe["images"].shape == (p, 28, 28, 1) and probe["images"].dtype == np.uint8
    assert probe["label"].shape == probe["class_name"].shape == (p,)
    assert set(probe["split"].tolist()) == {0, 1, 2}  # meta-train, meta-test, external
    assert p == 3 * 3 * 2
    assert all(isinstance(n, str) and n for n in probe["class_name"].tolist())

    for step in run.snapshot_steps():
        snap = run.load_snapshot(step)
        assert int(snap["step"]) == step
        assert snap["concepts"].shape == (p, cfg.concept_dim)
        assert np.isfinite(snap["concepts"]).all()
        assert snap["disc_pred"].shape == snap["disc_conf"].shape == (p,)
        assert bool(snap["disc_trained"])
        assert any(k.startswith("disc.") for k in snap)
    assert not np.allclose(run.load_snapshot(0)["concepts"], run.load_snapshot(10)["concepts"])


def test_snapshots_without_an_external_set_have_no_discriminator_arrays(tmp_path):
    trainer, run = start_run(tiny(lam=0.0, external="none", steps=2), tmp_path / "run")
    assert trainer.model.discriminator is None
    collect(trainer, run)
    assert set(run.load_probe()["split"].tolist()) == {0, 1}
    snap = run.load_snapshot(run.snapshot_steps()[-1])
    assert not any(k.startswith("disc") for k in snap)


# ------------------------------------------------------------------------------ every learner


@pytest.mark.parametrize("lam", [1.0, 0.0])
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_learner_trains(learner, lam):
    trainer = Trainer(tiny(learner=learner, lam=lam, steps=2, val_every=2, val_episodes=4))
    before = params(trainer.model.generator)
    summary, events = collect(trainer)
    assert summary["steps"] == 2 and summary["learner"] == learner
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    train = [rec for kind, rec in events if kind == "train"]
    assert all(np.isfinite(r["meta_loss"]) for r in train)
    assert max_param_diff(before, params(trainer.model.generator)) > 0.0
    assert (train[-1]["disc_loss"] is None) == (lam == 0)


# ------------------------------------------------------------------------------ it learns


@pytest.mark.slow
def test_smoke_preset_clearly_beats_chance_and_its_untrained_self():
    trainer = Trainer(preset("smoke"))
    untrained = trainer.validate()
    summary = trainer.run()
    trained = trainer.last_val
    assert summary["steps"] == preset("smoke").steps
    assert trained["val_acc"] > 0.5  # chance is 0.2 for 5-way
    margin = untrained["val_ci95"] + trained["val_ci95"]
    assert trained["val_acc"] - untrained["val_acc"] > max(0.1, margin), (untrained, trained)


# ------------------------------------------------------------------------------ loading back


@pytest.mark.parametrize("changes", [dict(), dict(lam=0.0, external="none")])
def test_a_trained_run_loads_back_with_its_own_test_classes(tmp_path, changes):
    from engine.eval.checkpoints import evaluation_classes, load_trained

    trainer, run = start_run(tiny(steps=3, **changes), tmp_path / "run")
    collect(trainer, run)
    cfg, model, device = load_trained(str(run.path), "cpu")
    assert (cfg.image_size, cfg.channels) == (28, 1)  # pinned when the data was read
    assert not model.training
    x = torch.from_numpy(trainer.probe["images"]).permute(0, 3, 1, 2).float() / 255
    trainer.model.eval()
    assert torch.allclose(model.concepts(x), trainer.model.concepts(x), atol=1e-6)
    test = evaluation_classes(cfg, None, "test")
    assert test.class_names == trainer.splits.test.class_names
    assert np.array_equal(test.images, trainer.splits.test.images)
    everything = evaluation_classes(cfg, None, "all")
    assert everything.num_classes == 60
