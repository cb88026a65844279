"""N-way K-shot episodes: property tests of EpisodeSampler over small random image sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data.episodes import EpisodeSampler, channels_first, take
from engine.data.imageset import ImageSet
from engine.errors import UserError

PROPS = settings(max_examples=60, deadline=None)


def imageset(counts, size=3, channels=1, seed=0, shuffle=True) -> ImageSet:
    """counts[c] images of class c; every image distinct (its index is written in its pixels),
    in a shuffled order so class images are not contiguous."""
    rng = np.random.default_rng(seed)
    n = int(sum(counts))
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    if shuffle:
        labels = labels[rng.permutation(n)]
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1 % size, -1] = np.arange(n) // 256
    return ImageSet(images, labels, [f"class{c}" for c in range(len(counts))], source="toy")


@st.composite
def setups(draw):
    ways = draw(st.integers(2, 5))
    shots = draw(st.integers(1, 3))
    queries = draw(st.integers(1, 3))
    need = shots + queries
    enough = draw(st.lists(st.integers(need, need + 3), min_size=ways, max_size=ways + 3))
    short = draw(st.lists(st.integers(0, need - 1), max_size=3))
    counts = enough + short
    order = draw(st.permutations(range(len(counts))))
    counts = [counts[i] for i in order]
    data = imageset(counts, size=draw(st.integers(2, 5)), channels=draw(st.sampled_from([1, 3])),
                    seed=draw(st.integers(0, 2**16)))
    return data, ways, shots, queries, draw(st.integers(1, 4)), draw(st.integers(0, 2**32 - 1))


@given(setups())
@PROPS
def test_episode_structure(setup):
    data, ways, shots, queries, tasks, seed = setup
    sampler = EpisodeSampler(data, ways, shots, queries)
    index = sampler.draw(tasks, np.random.default_rng(seed))
    assert index.support.shape == (tasks, ways * shots)
    assert index.query.shape == (tasks, ways * queries)
    assert index.classes.shape == (tasks, ways)
    counts = data.counts()
    for t in range(tasks):
        classes = index.classes[t]
        assert len(set(classes.tolist())) == ways  # every class in a task is distinct
        assert all(counts[c] >= shots + queries for c in classes)
        support, query = index.support[t], index.query[t]
        assert len(set(support.tolist()) | set(query.tolist())) == ways * (shots + queries)  # disjoint, no repeats
        # class-major: class n's shots (and queries) are block n, all images of class classes[n]
        assert np.array_equal(data.labels[support].reshape(ways, shots), np.repeat(classes[:, None], shots, 1))
        assert np.array_equal(data.labels[query].reshape(ways, queries), np.repeat(classes[:, None], queries, 1))

    ep = sampler.materialize(index)
    c, h = data.channels, data.image_size
    assert ep.support.shape == (tasks, ways * shots, c, h, h) and ep.support.dtype == torch.float32
    assert ep.query.shape == (tasks, ways * queries, c, h, h)
    assert ep.tasks == tasks
    assert ep.support_labels.dtype == torch.int64 and ep.query_labels.dtype == torch.int64
    assert ep.support_labels.tolist() == [[n for n in range(ways) for _ in range(shots)]] * tasks
    assert ep.query_labels.tolist() == [[n for n in range(ways) for _ in range(queries)]] * tasks
    assert torch.equal(ep.classes, torch.from_numpy(index.classes))
    for x, idx in ((ep.support, index.support), (ep.query, index.query)):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        expect = torch.from_numpy(data.images[idx].astype(np.float32) / 255.0).permute(0, 1, 4, 2, 3)
        assert torch.equal(x, expect)


@given(setups())
@PROPS
def test_same_seed_same_episodes(setup):
    data, ways, shots, queries, tasks, seed = setup
    sampler = EpisodeSampler(data, ways, shots, queries)
    a = sampler.sample(tasks, np.random.default_rng(seed))
    b = sampler.sample(tasks, np.random.default_rng(seed))
    for field in ("support", "support_labels", "query", "query_labels", "classes"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    fa, fb = sampler.fixed(tasks, seed % 1000), sampler.fixed(tasks, seed % 1000)
    assert all(np.array_equal(getattr(fa, f), getattr(fb, f)) for f in ("support", "query", "classes"))
    # a second sampler over the same data agrees too: nothing hides in sampler state
    fc = EpisodeSampler(data, ways, shots, queries).fixed(tasks, seed % 1000)
    assert np.array_equal(fa.support, fc.support) and np.array_equal(fa.query, fc.query)


def test_fixed_sets_differ_between_seeds_and_from_training_draws():
    sampler = EpisodeSampler(imageset([8] * 12, seed=1), ways=5, shots=1, queries=3)
    a, b = sampler.fixed(20, 0), sampler.fixed(20, 1)
    assert not np.array_equal(a.support, b.support)
    assert not np.array_equal(a.support, sampler.draw(20, np.random.default_rng(0)).support)
    assert len(a.classes) == 20
    # consecutive draws from one generator differ
    rng = np.random.default_rng(5)
    assert not np.array_equal(sampler.draw(20, rng).support, sampler.draw(20, rng).support)


def test_every_eligible_class_and_image_gets_drawn():
    data = imageset([6, 5, 2, 7, 5, 0, 3], seed=2)
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=2)
    index = sampler.draw(300, np.random.default_rng(0))
    assert set(np.unique(index.classes).tolist()) == {0, 1, 3, 4}
    used = set(index.support.ravel().tolist()) | set(index.query.ravel().tolist())
    eligible_images = {i for i, y in enumerate(data.labels) if y in (0, 1, 3, 4)}
    assert used == eligible_images


def test_short_classes_are_skipped_and_named():
    counts = [5, 5, 5, 1, 3, 0, 5]
    sampler = EpisodeSampler(imageset(counts), ways=3, shots=2, queries=2)
    assert sampler.eligible == [0, 1, 2, 6]
    assert sampler.skipped == ["class3", "class4", "class5"]
    (warning,) = sampler.warnings()
    assert "3 classes have fewer than 4 images" in warning
    assert all(repr(n) in warning for n in sampler.skipped) and "..." not in warning
    index = sampler.draw(50, np.random.default_rng(1))
    assert not set(index.classes.ravel().tolist()) & {3, 4, 5}
    assert EpisodeSampler(imageset([4] * 4), 3, 2, 2).warnings() == []


def test_many_short_classes_are_listed_in_part():
    sampler = EpisodeSampler(imageset([3] * 2 + [1] * 8), ways=2, shots=1, queries=1)
    (warning,) = sampler.warnings()
    assert "8 classes" in warning and warning.endswith("...")
    assert warning.count("'class") == 5


def test_too_few_eligible_classes():
    with pytest.raises(UserError) as err:
        EpisodeSampler(imageset([5, 5, 1, 2]), ways=3, shots=2, queries=2)
    msg = str(err.value)
    assert "2 classes have at least 4 images" in msg and "3-way" in msg and "2 left out" in msg
    with pytest.raises(UserError):
        EpisodeSampler(imageset([2, 2]), ways=3, shots=1, queries=1)


@pytest.mark.parametrize("ways,shots,queries", [(1, 1, 1), (2, 0, 1), (2, 1, 0)])
def test_impossible_task_shapes(ways, shots, queries):
    with pytest.raises(UserError, match="ways >= 2"):
        EpisodeSampler(imageset([5] * 4), ways, shots, queries)


@given(setups(), st.data())
@PROPS
def test_fewer_shots_keep_the_first_ones(setup, data_):
    data, ways, shots, queries, tasks, seed = setup
    sampler = EpisodeSampler(data, ways, shots, queries)
    index = sampler.draw(tasks, np.random.default_rng(seed))
    full = sampler.materialize(index)
    k = data_.draw(st.integers(1, shots))
    few = sampler.materialize(index, shots=k)
    c, h = data.channels, data.image_size
    assert few.support.shape == (tasks, ways * k, c, h, h)
    blocks = full.support.view(tasks, ways, shots, c, h, h)[:, :, :k].reshape(tasks, ways * k, c, h, h)
    assert torch.equal(few.support, blocks)
    assert few.support_labels.tolist() == [[n for n in range(ways) for _ in range(k)]] * tasks
    assert torch.equal(few.query, full.query) and torch.equal(few.query_labels, full.query_labels)
    assert torch.equal(few.classes, full.classes)


@pytest.mark.parametrize("shots", [0, 4])
def test_shots_outside_the_drawn_ones_are_refused(shots):
    sampler = EpisodeSampler(imageset([6] * 4), 2, 3, 1)
    with pytest.raises(ValueError, match="shots must be 1..3"):
        sampler.materialize(sampler.fixed(2, 0), shots=shots)


def test_take_slices_tasks():
    sampler = EpisodeSampler(imageset([6] * 6), 3, 1, 2)
    index = sampler.fixed(10, 3)
    part = take(index, 4, 7)
    assert np.array_equal(part.support, index.support[4:7]) and np.array_equal(part.query, index.query[4:7])
    assert np.array_equal(part.classes, index.classes[4:7])
    ep = sampler.materialize(part)
    assert torch.equal(ep.support, sampler.materialize(index).support[4:7])


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_first_copies_read_only_arrays(channels, recwarn):
    """Regression: with one channel the transpose is contiguous already, and the tensor used to be
    a view of the read-only source (PyTorch warned, and writing to it wrote into the source)."""
    data = imageset([2, 2], size=4, channels=channels)
    frozen = data.images.copy()
    frozen.setflags(write=False)
    x = channels_first(frozen)
    assert x.shape == (4, channels, 4, 4) and x.dtype == torch.uint8 and x.is_contiguous()
    assert np.array_equal(x.numpy(), frozen.transpose(0, 3, 1, 2))
    assert not np.shares_memory(x.numpy(), frozen)
    x[0] = 0  # ours to change
    assert np.array_equal(frozen, data.images)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_episode_to_device_keeps_values():
    sampler = EpisodeSampler(imageset([4] * 3, channels=3), 2, 1, 1)
    ep = sampler.sample(2, np.random.default_rng(0))
    moved = ep.to(torch.device("cpu"))
    for field in ("support", "support_labels", "query", "query_labels", "classes"):
        assert torch.equal(getattr(moved, field), getattr(ep, field))
