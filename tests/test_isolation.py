"""The discriminator's effect isolated: nothing about the external batch reaches the task images'
forward pass (their BatchNorm batch statistics, or the running statistics evaluation uses), and the
data order and initial weights are the same at every lambda. So lambda = 0 against lambda > 0 differs
by D's gradient alone, and a lambda of 1e-9 trains what lambda = 0 trains, to float noise."""
from __future__ import annotations

import pytest
import torch

from engine.models.deml import eval_mode, external_pass
from engine.train.trainer import Trainer
from tests.test_trainer import collect, params, tiny


def bn_buffers(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.generator.named_buffers()}


def test_default_generator_has_batch_norm():
    """The isolation matters for BatchNorm, the default norm: the tests below run with it."""
    assert tiny().norm == "batch"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in Trainer(tiny()).model.generator.modules())


def test_same_tasks_and_initial_weights_at_every_lambda():
    runs = {lam: Trainer(tiny(lam=lam)) for lam in (0.0, 1e-9, 1.0)}
    base = runs[0.0]
    for lam, trainer in runs.items():
        for step in (0, 3):
            a, b = base.sample_batch(step), trainer.sample_batch(step)
            assert torch.equal(a["x"], b["x"]), (lam, step)
            assert torch.equal(a["support_labels"], b["support_labels"])
        for k, v in params(base.model.generator).items():
            assert torch.equal(v, params(trainer.model.generator)[k]), (lam, k)
        assert ("x_ext" in trainer.sample_batch(0)) == (lam > 0)


def test_first_step_meta_loss_is_identical_at_lambda_zero_and_one():
    """One step at lambda = 0 and at lambda = 1 from the same weights and data: the same meta loss and
    accuracy to the last bit, and the same running statistics afterwards (the task images' alone)."""
    records, buffers = {}, {}
    for lam in (0.0, 1.0):
        trainer = Trainer(tiny(lam=lam))
        records[lam] = trainer.train_step()
        buffers[lam] = bn_buffers(trainer)
    assert records[0.0]["meta_loss"] == records[1.0]["meta_loss"]
    assert records[0.0]["meta_acc"] == records[1.0]["meta_acc"]
    assert records[1.0]["disc_loss"] is not None
    for k, v in buffers[0.0].items():
        assert torch.equal(v, buffers[1.0][k]), k


def test_external_pass_uses_its_own_batch_statistics_and_leaves_the_running_ones():
    trainer = Trainer(tiny(lam=1.0))
    g = trainer.model.generator.train()
    x_ext = trainer.sample_batch(0)["x_ext"]
    before = bn_buffers(trainer)
    z = external_pass(g, x_ext)
    for k, v in bn_buffers(trainer).items():
        assert torch.equal(v, before[k]), k
    assert torch.allclose(z, g(x_ext), atol=1e-6)  # training mode: normalised by the batch's own statistics
    g.eval()
    with torch.no_grad():
        assert not torch.allclose(z, g(x_ext), atol=1e-3)  # not by the running ones
    g.train()
    z.sum().backward()  # gradients still reach G
    assert all(p.grad is not None for p in g.parameters())


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_a_negligible_lambda_ends_where_lambda_zero_does(learner):
    """lambda = 1e-9 against lambda = 0 over a few steps with validation: D trains (Adam normalises
    its tiny gradient), but the task path sees the external images nowhere, so G and the validation
    accuracy end the same up to float noise."""
    ends = {}
    for lam in (0.0, 1e-9):
        trainer = Trainer(tiny(lam=lam, learner=learner, steps=6, val_every=3))
        summary, _ = collect(trainer)
        probe = torch.from_numpy(trainer.probe["images"]).permute(0, 3, 1, 2).float() / 255
        with eval_mode(trainer.model):
            ends[lam] = summary["val_accuracy"], trainer.model.concepts(probe)
    # the same answers but, at most, one validation query whose two top scores are within float noise
    # (seen on one Xeon: 0.575 against 0.56875, one of 160 queries)
    one_query = 1 / (trainer.cfg.val_episodes * trainer.cfg.ways * trainer.cfg.queries)
    assert ends[0.0][0] == pytest.approx(ends[1e-9][0], abs=one_query + 1e-9)
    # G's concepts, close (not its raw weights, nor to 1e-6: a conv bias before BatchNorm gets only a
    # float-noise gradient, which Adam turns into full-size steps that differ between any two runs;
    # the running means then lag behind them a little differently)
    assert torch.allclose(ends[0.0][1], ends[1e-9][1], atol=5e-3, rtol=0)
    assert not torch.allclose(ends[0.0][1], Trainer(tiny(learner=learner)).model.concepts(probe), atol=1e-2)
