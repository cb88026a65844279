"""Adapting a trained run to a new task (engine.services.adapt): sampled and uploaded tasks, polarity,
bad uploads, and the run next to its lambda = 0 twin on the same episodes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.config import preset
from engine.data.episodes import EpisodeIndex, EpisodeSampler
from engine.errors import UserError
from engine.eval.checkpoints import evaluation_classes, held_out_classes, load_model
from engine.eval.evaluate import adaptation_curve, episode_accuracies, query_predictions
from engine.eval.twins import compare_held_out, index_digest
from engine.learners.base import CURVE_SHOTS
from engine.services import adapt
from engine.train.launch import start_run
from engine.viz.charts import episode_view
from engine.viz.episode import episode_detail

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=3, val_episodes=8, snapshot_every=3, checkpoint_every=6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny finished runs: protonet DEML, its lambda = 0 twin, and a MAML run (gradient learner)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (("deml", dict(lam=1.0)), ("twin", dict(lam=0.0)),
                        ("maml", dict(learner="maml", inner_steps=3))):
        trainer, run = start_run(preset("smoke").with_overrides(**TINY, **extra), str(root / name))
        trainer.run(run)
        out[name] = str(run.path)
    return out


def png(image: np.ndarray) -> bytes:
    return adapt.image_bytes(image)


def as_upload(task: adapt.Task, invert: bool = False, names=None) -> tuple[list[adapt.NewClass], list]:
    """The task's own images as PNG files: per class, its support and (labelled) queries."""
    def files(images, prefix):
        return [adapt.Upload(f"{prefix}{i}.png", png(255 - im if invert else im)) for i, im in enumerate(images)]
    classes = [adapt.NewClass((names or task.class_names)[c], files(task.support_of(c), f"support{c}-"),
                              files(task.query[task.query_labels == c], f"query{c}-")) for c in range(task.ways)]
    return classes, []


@pytest.mark.parametrize("name", ["deml", "maml"])
def test_sampled_task_predictions_agree_with_evaluate(runs, name):
    cfg, model, dev = load_model(runs[name])
    task = adapt.sample_task(cfg, 5, 1, 3, seed=7)
    assert task.support.shape[0] == 5 and task.query.shape[0] == 15 and len(task.class_names) == 5
    result = adapt.classify(model, task, dev)
    np.testing.assert_array_equal(result["pred"], query_predictions(model, task.sampler, task.index, dev)[0])
    assert result["accuracy"] == pytest.approx(episode_accuracies(model, task.sampler, task.index, dev)[0])
    assert np.allclose(result["probs"].sum(1), 1) and (result["confidence"] == result["probs"].max(1)).all()
    detail = adapt.task_detail(model, task, dev, grid=12)
    np.testing.assert_array_equal(detail["query_pred"], result["pred"])
    assert detail["class_names"] == task.class_names
    fig = episode_view(detail)
    assert any(t.name == "query, answered right" for t in fig.data)
    assert adapt.sample_task(cfg, 5, 1, 3, seed=7).class_names == task.class_names  # seeded
    assert adapt.sample_task(cfg, 5, 1, 3, seed=8).class_names != task.class_names
    with pytest.raises(UserError, match="classes"):
        adapt.sample_task(cfg, 40, 1, 3)


@pytest.mark.parametrize("name", ["deml", "maml"])
def test_uploaded_glyphs_are_answered_as_the_sampled_path_answers(runs, name):
    """Held-out glyphs saved as PNG files and uploaded as 'new' classes are prepared to exactly the
    pixels the sampled path uses, so every answer, confidence and concept-space position agrees.
    (A 6-step run is not reliably above chance: equality with the evaluated path cannot flake.)"""
    cfg, model, dev = load_model(runs[name])
    sampled = adapt.sample_task(cfg, 4, 2, 3, seed=3)
    classes, _ = as_upload(sampled, names=["alpha", "beta", "gamma", "delta"])
    task = adapt.prepare_upload(cfg, classes)
    assert task.problems == [] and not task.inverted and task.class_names == ["alpha", "beta", "gamma", "delta"]
    np.testing.assert_array_equal(task.support, sampled.support)
    np.testing.assert_array_equal(task.query, sampled.query)
    np.testing.assert_array_equal(task.query_labels, sampled.query_labels)
    mine, theirs = adapt.classify(model, task, dev), adapt.classify(model, sampled, dev)
    np.testing.assert_array_equal(mine["pred"], theirs["pred"])
    np.testing.assert_allclose(mine["probs"], theirs["probs"], atol=1e-5)
    assert mine["accuracy"] == pytest.approx(episode_accuracies(model, sampled.sampler, sampled.index, dev)[0])
    # the concept-space layout of an upload is the one engine.viz.episode computes for the same images
    ours = adapt.task_detail(model, task, dev, grid=12)
    ref = episode_detail(model, sampled.sampler, sampled.index, dev, 0, grid=12)
    for key in ("support_xy", "query_xy"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4)
    np.testing.assert_array_equal(ours["query_pred"], ref["query_pred"])
    np.testing.assert_array_equal(ours["regions"].pred, ref["regions"].pred)
    assert ("steps_pred" in ours) == ("steps_pred" in ref) == model.learner.adapts_by_steps
    episode_view(ours)


def test_white_background_uploads_of_bright_on_dark_data_are_flipped(runs):
    cfg, model, dev = load_model(runs["deml"])
    sampled = adapt.sample_task(cfg, 3, 1, 2, seed=1)
    assert sampled.support[:, 0].mean() < 127  # glyphs: bright ink on dark paper
    classes, _ = as_upload(sampled, invert=True)
    task = adapt.prepare_upload(cfg, classes)
    assert task.inverted and task.problems == []
    np.testing.assert_array_equal(task.support, sampled.support)
    np.testing.assert_array_equal(task.query, sampled.query)
    np.testing.assert_array_equal(adapt.classify(model, task, dev)["pred"], adapt.classify(model, sampled, dev)["pred"])
    # one dark-background image among white ones: the task is flipped as a whole and the odd one is named
    classes[0].queries.append(adapt.Upload("odd-one.png", png(sampled.query[0])))
    task = adapt.prepare_upload(cfg, classes)
    assert task.inverted and any(p.startswith("odd-one.png") and "background" in p for p in task.problems)
    # RGB photos of a gray run become gray; a colour image with a white background is flipped too
    rgb = np.repeat(255 - sampled.query[1], 3, axis=2)
    rgb[..., 0] = np.maximum(rgb[..., 0], 40)
    task = adapt.prepare_upload(cfg, classes, [adapt.Upload("colour.png", png(rgb))])
    assert task.query.shape[1:] == (28, 28, 1) and task.query_labels[-1] == adapt.UNKNOWN


def test_bad_uploads_are_named_with_their_reason(runs):
    cfg, model, dev = load_model(runs["deml"])
    sampled = adapt.sample_task(cfg, 2, 5, 1, seed=0)
    classes, _ = as_upload(sampled, names=["cat", "dog"])
    big = np.zeros((80, 80, 1), np.uint8)
    classes[0].support.append(adapt.Upload("sixth.png", png(sampled.support[0])))  # over 5 per class
    classes[1].queries += [adapt.Upload("notes.txt", b"hello, not an image"), adapt.Upload("empty.png", b"")]
    queries = [adapt.Upload("huge.png", png(big)), adapt.Upload("tiny.png", png(big[:4, :4])),
               adapt.Upload("heavy.png", png(big) + b"\0" * 3000), adapt.Upload("cut.png", png(big[:20, :20])[:40])]
    limits = replace(adapt.LIMITS, max_side=64, max_file_bytes=2500)
    task = adapt.prepare_upload(cfg, classes, queries, limits)
    text = "\n".join(task.problems)
    for fname, reason in (("sixth.png", "5 support images"), ("notes.txt", "not a readable image"),
                          ("empty.png", "empty file"), ("huge.png", "64 px limit"), ("tiny.png", "8 px minimum"),
                          ("heavy.png", "limit per image"), ("cut.png", "not a readable image")):
        assert any(p.startswith(fname) and reason in p and "left out" in p for p in task.problems), (fname, text)
    assert len(task.support) == 10 and len(task.query) == 2  # what was valid is kept
    adapt.classify(model, task, dev)
    # what cannot make a task at all is refused with a message that says why
    with pytest.raises(UserError, match="2 to 10 classes"):
        adapt.prepare_upload(cfg, classes[:1])
    with pytest.raises(UserError, match="both named 'cat'"):
        adapt.prepare_upload(cfg, [classes[0], adapt.NewClass(" cat ", classes[1].support)])
    with pytest.raises(UserError, match="at least one query"):
        adapt.prepare_upload(cfg, [adapt.NewClass(c.name, c.support) for c in classes])
    with pytest.raises(UserError, match="only 1 class.*broken.png: not a readable image"):
        adapt.prepare_upload(cfg, [classes[0], adapt.NewClass("dog", [adapt.Upload("broken.png", b"\x89PNG..")])],
                             [adapt.Upload("q.png", png(sampled.query[0]))])
    with pytest.raises(UserError, match="over the 1000 bytes limit"):
        adapt.prepare_upload(cfg, classes, limits=replace(adapt.LIMITS, max_upload_bytes=1000))
    unnamed = adapt.prepare_upload(cfg, [adapt.NewClass("", c.support) for c in classes], queries[:0] +
                                   [adapt.Upload("q.png", png(sampled.query[0]))])
    assert unnamed.class_names == ["class 1", "class 2"] and unnamed.query_labels.tolist() == [adapt.UNKNOWN]
    fig = episode_view(adapt.task_detail(model, unnamed, dev, grid=10))
    assert any("without a label" in str(t.name) for t in fig.data)
    assert "1-5 support images" in adapt.limits_text() and "8 MiB per image" in adapt.limits_text()


def test_twin_comparison_uses_the_same_episodes(runs):
    comp = compare_held_out(runs["deml"], runs["twin"], ways=3, shots=1, queries=2, episodes=12, seed=5)
    assert [r["lam"] for r in comp["runs"]] == [1.0, 0.0]
    assert comp["runs"][0]["episodes_digest"] == comp["runs"][1]["episodes_digest"]
    cfg, _, dev = load_model(runs["deml"])
    data = evaluation_classes(cfg, None, "test")  # built independently of engine.services.adapt
    curve_sampler = EpisodeSampler(data, 3, CURVE_SHOTS, 2)  # shot curves run over 1..5 shots
    index = curve_sampler.fixed(12, 5)
    one_shot = EpisodeIndex(index.support.reshape(12, 3, 5)[:, :, :1].reshape(12, 3), index.query, index.classes)
    assert comp["runs"][0]["episodes_digest"] == index_digest(index)
    for r in comp["runs"]:
        _, model, _ = load_model(r["run_dir"])
        reference = adaptation_curve(model, curve_sampler, 12, 5, dev)  # the evaluator's own shot curve
        assert r["curve"]["axis"] == "shots" and r["curve"]["steps"] == reference["steps"] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(r["curve"]["accuracy"], reference["accuracy"], atol=1e-6)
        np.testing.assert_allclose(r["curve"]["loss"], reference["loss"], atol=1e-4)
        np.testing.assert_allclose(r["per_episode"],  # the 1-shot accuracy: the same episodes, first shot only
                                   episode_accuracies(model, EpisodeSampler(data, 3, 1, 2), one_shot, dev))
        assert r["accuracy"] == pytest.approx(reference["accuracy"][0])
    diff = np.asarray(comp["runs"][0]["per_episode"]) - np.asarray(comp["runs"][1]["per_episode"])
    assert comp["difference"]["accuracy"] == pytest.approx(diff.mean())
    assert comp["difference"]["wins"] + comp["difference"]["losses"] + comp["difference"]["ties"] == 12
    # from the twin's side the difference is still DEML minus lambda = 0
    back = compare_held_out(runs["twin"], runs["deml"], ways=3, shots=1, queries=2, episodes=12, seed=5)
    assert back["difference"]["accuracy"] == pytest.approx(comp["difference"]["accuracy"])
    with pytest.raises(UserError, match="not a λ = 0 twin"):
        compare_held_out(runs["deml"], runs["maml"], episodes=4)


def test_a_gradient_learner_is_compared_over_inner_steps(runs):
    _, model, dev = load_model(runs["maml"])
    alone = compare_held_out(runs["maml"], None, ways=3, shots=1, queries=2, episodes=6, steps=4, curve_steps=2)
    assert alone["difference"] is None and alone["steps"] == 4
    curve = alone["runs"][0]["curve"]
    assert curve["axis"] == "steps" and curve["steps"] == [0, 1, 2]
    sampler = adapt.EpisodeSampler(held_out_classes(load_model(runs["maml"])[0]), 3, 1, 2)
    reference = adaptation_curve(model, sampler, 6, 0, dev, 2)
    np.testing.assert_allclose(curve["accuracy"], reference["accuracy"], atol=1e-6)
    np.testing.assert_allclose(alone["runs"][0]["per_episode"],  # after 4 inner steps
                               episode_accuracies(model, sampler, sampler.fixed(6, 0), dev, steps=4))


def test_models_are_cached_per_checkpoint(runs):
    a = load_model(runs["deml"])
    assert load_model(runs["deml"] + "/")[1] is a[1]
    assert not a[1].training
