"""Evaluation details behind the episode view and the confusion matrix."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from engine.config import preset
from engine.data.episodes import EpisodeSampler
from engine.eval.evaluate import confusion, episode_accuracies, evaluate
from engine.train.trainer import Trainer
from engine.viz.episode import episode_detail

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=6, val_episodes=8, snapshot_every=6, checkpoint_every=6)


@pytest.fixture(scope="module", params=["protonet", "maml"])
def trained(request):
    trainer = Trainer(preset("smoke").with_overrides(learner=request.param, inner_steps=3, **TINY))
    for _ in range(6):
        trainer.train_step()
    sampler = EpisodeSampler(trainer.splits.test, 5, 1, 3)
    return trainer.model, sampler, trainer.device


def test_confusion_counts_every_query_and_agrees_with_accuracy(trained):
    model, sampler, device = trained
    result = confusion(model, sampler, 20, 0, device)
    m = result["matrix"]
    assert m.shape == (sampler.data.num_classes,) * 2
    assert m.sum() == 20 * 5 * 3  # episodes x ways x queries
    assert result["accuracy"] == pytest.approx(evaluate(model, sampler, 20, 0, device)["accuracy"])
    for (r, c), images in result["cells"].items():
        assert m[r, c] == len(images)
        assert all(sampler.data.labels[i] == r for i in images)  # a cell holds images of its true class


def test_episode_detail_is_consistent_with_the_learner(trained):
    model, sampler, device = trained
    index = sampler.fixed(4, 0)
    d = episode_detail(model, sampler, index, device, task=2, grid=20)
    assert d["support_xy"].shape == (5, 2) and d["query_xy"].shape == (15, 2)
    np.testing.assert_array_equal(d["support_images"], index.support[2])
    assert d["class_names"] == [sampler.data.class_names[c] for c in index.classes[2]]
    acc = (d["query_pred"] == d["query_labels"]).mean()
    assert acc == pytest.approx(episode_accuracies(model, sampler, index, device)[2])
    regions = d["regions"]
    assert regions.exact and regions.pred.shape == (20, 20) and regions.class_names == d["class_names"]
    assert ((regions.conf > 0) & (regions.conf <= 1)).all()
    if model.learner.adapts_by_steps:
        assert d["steps_pred"].shape == (4, 15)  # inner steps 0..3
        np.testing.assert_array_equal(d["steps_pred"][-1], d["query_pred"])
        assert "prototypes_xy" not in d
    else:
        assert d["prototypes_xy"].shape == (5, 2)


def test_task_regions_are_what_the_learner_answers_on_the_plane(trained):
    """Exactness: a grid point's region is the learner's own answer for that plane point."""
    model, sampler, device = trained
    index = sampler.fixed(2, 3)
    d = episode_detail(model, sampler, index, device, task=0, grid=7)
    ep = sampler.materialize(index)
    with torch.no_grad():
        model.eval()
        zs, zq = model.concepts(ep.support[0]), model.concepts(ep.query[0])
    pca = PCA(2, random_state=0).fit(torch.cat([zs, zq]).numpy())
    r = d["regions"]
    point = np.array([[r.x[3], r.y[5]]])
    concept = torch.as_tensor(pca.inverse_transform(point), dtype=torch.float32)
    logits = model.learner.logits(zs[None], ep.support_labels[:1], concept[None], 5, training=False)
    assert int(logits.argmax(-1)) == r.pred[5, 3]



@pytest.mark.parametrize("learner", ["protonet", "matching", "maml", "metasgd", "reptile"])
def test_every_learner_has_an_adaptation_curve(learner):
    from engine.eval.evaluate import adaptation_curve

    trainer = Trainer(preset("smoke").with_overrides(learner=learner, inner_steps=2, **TINY))
    for _ in range(2):
        trainer.train_step()
    sampler = EpisodeSampler(trainer.splits.test, 5, 3, 2)
    curve = adaptation_curve(trainer.model, sampler, 6, 0, trainer.device, max_steps=3)
    expected = [0, 1, 2, 3] if trainer.model.learner.adapts_by_steps else [1, 2, 3]
    assert curve["steps"] == expected and curve["axis"] == ("steps" if expected[0] == 0 else "shots")
    assert len(curve["accuracy"]) == len(curve["loss"]) == len(curve["accuracy_ci95"]) == len(expected)
    assert all(0.0 <= a <= 1.0 for a in curve["accuracy"])
    if curve["axis"] == "steps":
        # before any inner step the head is the prototype classifier of the support: ProtoNet's loss
        # and accuracy on the same episodes with all 3 shots
        from engine.learners import LearnerConfig, build_learner

        model, own = trainer.model, trainer.model.learner
        model.learner = build_learner("protonet", trainer.cfg.concept_dim, LearnerConfig())
        proto = adaptation_curve(model, sampler, 6, 0, trainer.device, max_steps=3)
        model.learner = own
        assert curve["loss"][0] == pytest.approx(proto["loss"][-1], rel=1e-5)
        assert curve["accuracy"][0] == pytest.approx(proto["accuracy"][-1])


def test_matching_networks_are_drawn_without_prototypes():
    """Only a learner with class centres (ProtoNet) gets prototype stars; matching networks compare
    each query with every support concept, so they have none to draw."""
    trainer = Trainer(preset("smoke").with_overrides(learner="matching", **TINY))
    sampler = trainer.val_sampler
    d = episode_detail(trainer.model, sampler, sampler.fixed(1, 0), trainer.device, grid=5)
    assert "prototypes_xy" not in d and "steps_pred" not in d
    assert len(d["query_pred"]) == sampler.ways * sampler.queries
