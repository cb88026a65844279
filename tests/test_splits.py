"""Class splits: group and class units, counts and fractions, rotations, the external set and
the disjointness checks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.data.imageset import ImageSet
from engine.data.splits import MIN_GROUPS_FOR_GROUP_SPLIT, SplitConfig, make_splits
from engine.errors import UserError

PROPS = settings(max_examples=40, deadline=None)
SIDES = ("train", "val", "test")


def imageset(classes: int, per_class: int = 3, groups: list[str] | None = None, size: int = 5,
             seed: int = 0, names: list[str] | None = None, source: str = "toy") -> ImageSet:
    """Distinct random images (an image's index is written into it), class-major."""
    rng = np.random.default_rng(seed)
    n = classes * per_class
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    names = names or [f"{source}{c:03d}" for c in range(classes)]
    return ImageSet(images, np.repeat(np.arange(classes), per_class), names, groups=groups, source=source)


def grouped(n_groups: int, per_group: int, seed: int = 0) -> ImageSet:
    groups = [f"alpha{g:02d}" for g in range(n_groups) for _ in range(per_group)]
    names = [f"{g}/char{i:02d}" for i, g in enumerate(groups)]
    return imageset(len(groups), groups=groups, names=names, seed=seed)


def names_of(splits) -> dict[str, set[str]]:
    out = {side: set(getattr(splits, side).class_names) for side in SIDES}
    out["external"] = set(splits.external.class_names) if splits.external is not None else set()
    return out


def split_images_match_source(data: ImageSet, part: ImageSet):
    """Every class of `part` holds exactly the images of the same-named class of `data`."""
    source_idx = dict(zip(data.class_names, data.class_indices()))
    for name, idx in zip(part.class_names, part.class_indices()):
        assert np.array_equal(part.images[idx], data.images[source_idx[name]]), name


# ----------------------------------------------------------------------------- group split


fractions = st.sampled_from([0.0, 0.1, 0.2, 0.3, 1, 2])


@given(n_groups=st.integers(MIN_GROUPS_FOR_GROUP_SPLIT, 14), per_group=st.integers(1, 3),
       val=fractions, test=fractions, ext=fractions, seed=st.integers(0, 10**6))
@PROPS
def test_group_split_keeps_each_group_on_one_side(n_groups, per_group, val, test, ext, seed):
    data = grouped(n_groups, per_group)
    cfg = SplitConfig(val=val, test=test, external=ext, seed=seed)
    try:
        splits = make_splits(data, cfg, "auto")
    except UserError:
        count = lambda v: 0 if v <= 0 else int(v) if v >= 1 else max(1, round(v * n_groups))  # noqa: E731
        assert count(val) + count(test) + count(ext) >= n_groups  # raised only when no group is left
        return
    report = splits.report
    assert report["unit"] == "group" and report["disjoint"] is True
    group_of = dict(zip(data.class_names, data.groups))
    sides = names_of(splits)
    groups_by_side = {side: {group_of[n] for n in names} for side, names in sides.items()}
    seen = [g for gs in groups_by_side.values() for g in gs]
    assert len(seen) == len(set(seen))  # no group on two sides
    # whole groups: a side that has one class of a group has all of them
    for side, names in sides.items():
        for g in groups_by_side[side]:
            assert {n for n, gg in group_of.items() if gg == g} <= names
    # every class is used exactly once (no train_limit)
    assert sorted(n for names in sides.values() for n in names) == sorted(data.class_names)
    units = report["units"]
    assert set(units["meta-train"]) == groups_by_side["train"]
    assert set(units["meta-val"]) == groups_by_side["val"] and set(units["meta-test"]) == groups_by_side["test"]
    assert set(units["external"]) == groups_by_side["external"]
    for side in SIDES:
        split_images_match_source(data, getattr(splits, side))


def test_few_groups_fall_back_to_a_class_split():
    data = grouped(MIN_GROUPS_FOR_GROUP_SPLIT - 1, 4)
    splits = make_splits(data, SplitConfig(val=2, test=3, external=4, seed=0), "auto")
    assert splits.report["unit"] == "class" and splits.report["units"] is None
    assert splits.report["classes"] == {"meta-train": 28 - 9, "meta-val": 2, "meta-test": 3}
    group_of = dict(zip(data.class_names, data.groups))
    train_groups = {group_of[n] for n in splits.train.class_names}
    test_groups = {group_of[n] for n in splits.test.class_names}
    assert splits.external.num_classes == 4
    assert train_groups & test_groups  # classes as units: a group can sit on both sides (it does for seed 0)
    assert make_splits(grouped(MIN_GROUPS_FOR_GROUP_SPLIT, 2), SplitConfig(), "auto").report["unit"] == "group"


def test_no_groups_is_a_class_split():
    splits = make_splits(imageset(20), SplitConfig(), "auto")
    assert splits.report["unit"] == "class"
    assert splits.train.groups is None


# ------------------------------------------------------------------------ counts and limits


@pytest.mark.parametrize("val,test,ext,expect", [
    (2, 3, 4, (2, 3, 4)),  # 1 or more: counts
    (0.25, 0.1, 0.5, (5, 2, 10)),  # below 1: fractions of the 20 classes
    (1.0, 1, 1.5, (1, 1, 1)),  # 1.0 is one class, not all of them; 1.5 is a count of 1
    (0.01, 0.0, 0, (1, 0, 0)),  # a positive fraction keeps at least one; zero is none
])
def test_counts_and_fractions(val, test, ext, expect):
    splits = make_splits(imageset(20), SplitConfig(val=val, test=test, external=ext), "auto")
    n_ext = splits.external.num_classes if splits.external is not None else 0
    assert (splits.val.num_classes, splits.test.num_classes, n_ext) == expect
    assert splits.train.num_classes == 20 - sum(expect)
    assert splits.report["classes"]["meta-train"] == 20 - sum(expect)


def test_train_limit_keeps_only_that_many_units():
    data = imageset(20)
    full = make_splits(data, SplitConfig(val=2, test=2, external=2, seed=3), "auto")
    limited = make_splits(data, SplitConfig(val=2, test=2, external=2, train_limit=5, seed=3), "auto")
    assert limited.train.num_classes == 5 and full.train.num_classes == 14
    assert set(limited.train.class_names) < set(full.train.class_names)
    for side in ("val", "test", "external"):  # the limit changes nothing else
        assert getattr(limited, side).class_names == getattr(full, side).class_names
    big = make_splits(data, SplitConfig(val=2, test=2, external=2, train_limit=100, seed=3), "auto")
    assert big.train.class_names == full.train.class_names
    groups = make_splits(grouped(10, 3), SplitConfig(val=1, test=1, external=1, train_limit=2), "auto")
    assert len(groups.report["units"]["meta-train"]) == 2 and groups.train.num_classes == 6


def test_limited_meta_train_is_the_same_with_another_external_set():
    """DEML ablations compare an "auto" external set, another one and none: the limited
    meta-train units (and val/test) must not move with that choice."""
    data = grouped(12, 3)
    cfg = SplitConfig(val=2, test=2, external=3, train_limit=2, seed=5)
    auto = make_splits(data, cfg, "auto")
    other = make_splits(data, cfg, imageset(4, seed=99, source="other"))
    none = make_splits(data, cfg, None)
    for s in (other, none):
        assert s.report["units"]["meta-train"] == auto.report["units"]["meta-train"]
        assert s.test.class_names == auto.test.class_names and s.val.class_names == auto.val.class_names
    assert not set(auto.report["units"]["external"]) & set(auto.report["units"]["meta-train"])


def test_too_few_units():
    with pytest.raises(UserError) as err:
        make_splits(imageset(3), SplitConfig(val=1, test=1, external=1), "auto")
    assert "3 classes" in str(err.value) and "meta-training" in str(err.value)
    with pytest.raises(UserError, match="groups"):
        make_splits(grouped(8, 2), SplitConfig(val=3, test=3, external=2), "auto")
    # without an automatic external set its share is not taken: the same data now splits
    splits = make_splits(imageset(3), SplitConfig(val=1, test=1, external=1), None)
    assert splits.train.num_classes == 1 and splits.external is None


# --------------------------------------------------------------------------------- rotations


def test_rotations_make_four_classes_from_each_meta_train_class():
    data = imageset(12, per_class=2, size=6)
    plain = make_splits(data, SplitConfig(val=2, test=2, external=2, seed=1), "auto")
    rot = make_splits(data, SplitConfig(val=2, test=2, external=2, seed=1, rotations=True), "auto")
    base = plain.train.class_names
    assert rot.train.num_classes == 4 * len(base)
    assert rot.train.class_names == base + [f"{n}@{a}" for a in (90, 180, 270) for n in base]
    per_class = dict(zip(rot.train.class_names, rot.train.class_indices()))
    for n in base:
        original = rot.train.images[per_class[n]]
        assert np.array_equal(original, data.images[data.class_indices()[data.class_names.index(n)]])
        for k, angle in ((1, 90), (2, 180), (3, 270)):
            turned = rot.train.images[per_class[f"{n}@{angle}"]]
            assert turned.shape == original.shape
            assert np.array_equal(turned, np.stack([np.rot90(im, k) for im in original]))
            assert not np.array_equal(turned, original)
    # only meta-train turns: the other sides are the plain split's
    for side in ("val", "test", "external"):
        assert getattr(rot, side).class_names == getattr(plain, side).class_names
        assert not any("@" in n for n in getattr(rot, side).class_names)
    assert rot.report["rotations"] is True and rot.report["disjoint"] is True
    assert rot.report["class_names"]["meta-train"] == rot.train.class_names


def test_rotations_repeat_groups():
    data = grouped(9, 2)
    rot = make_splits(data, SplitConfig(val=1, test=1, external=1, rotations=True), "auto")
    n = rot.train.num_classes // 4
    assert rot.train.groups == rot.train.groups[:n] * 4


def test_class_names_with_at_signs_are_not_confused_with_rotations():
    """Regression: the overlap check once cut names at '@', so 'x@1' and 'x@2' looked like one class."""
    data = imageset(10, names=[f"x@{i}" for i in range(10)])
    for rotations in (False, True):
        splits = make_splits(data, SplitConfig(val=2, test=2, external=2, rotations=rotations), "auto")
        assert splits.report["disjoint"] is True
        if rotations:
            assert splits.train.num_classes == 16


# ------------------------------------------------------------------------------ external set


def test_pool_external_adds_external_classes_to_meta_train():
    data = imageset(20)
    plain = make_splits(data, SplitConfig(val=2, test=2, external=5, seed=4), "auto")
    pooled = make_splits(data, SplitConfig(val=2, test=2, external=5, seed=4, pool_external=True), "auto")
    assert set(pooled.train.class_names) == set(plain.train.class_names) | set(plain.external.class_names)
    assert pooled.train.num_classes == 16
    assert pooled.external.class_names == plain.external.class_names
    assert pooled.val.class_names == plain.val.class_names and pooled.test.class_names == plain.test.class_names
    assert pooled.report["external_pooled_into_meta_train"] is True and pooled.report["disjoint"] is True
    assert plain.report["external_pooled_into_meta_train"] is False
    split_images_match_source(data, pooled.train)


def test_external_imageset_is_used_whole_and_takes_no_share():
    data = imageset(20)
    other = imageset(7, seed=99, source="other")
    splits = make_splits(data, SplitConfig(val=2, test=2, external=5), other)
    assert splits.external is other
    assert splits.train.num_classes == 16  # the external share is not carved out of `data`
    assert splits.report["external"] == {"source": "other", "classes": 7, "images": 21}
    assert splits.report["disjoint"] is True


@pytest.mark.parametrize("side", ["train", "val", "test"])
def test_external_imageset_sharing_an_image_is_refused(side):
    data = imageset(20)
    cfg = SplitConfig(val=2, test=2, external=0, rotations=False)
    clean = imageset(5, seed=7, source="other")
    reference = make_splits(data, cfg, clean)  # which class lands where (the external set takes no share)
    victim = getattr(reference, side).class_names[1]
    image = data.images[data.class_indices()[data.class_names.index(victim)][2]]
    images = clean.images.copy()
    images[4] = image  # one picture of `victim` hides in the external set
    dirty = ImageSet(images, clean.labels, clean.class_names, source="other")
    with pytest.raises(UserError) as err:
        make_splits(data, cfg, dirty)
    msg = str(err.value)
    assert repr(victim) in msg and "'other'" in msg and "meta-" + side in msg and "1 images" in msg


def test_external_imageset_sharing_a_rotated_image_is_refused():
    data = imageset(12, size=6)
    cfg = SplitConfig(val=2, test=2, external=0, rotations=True, seed=2)
    clean = imageset(3, size=6, seed=5, source="other")
    victim = make_splits(data, cfg, clean).train.class_names[0]
    images = clean.images.copy()
    images[0] = np.rot90(data.images[data.class_indices()[data.class_names.index(victim)][0]], 1)
    with pytest.raises(UserError, match=f"'{victim}@90'"):
        make_splits(data, cfg, ImageSet(images, clean.labels, clean.class_names, source="other"))


def test_no_external_set():
    splits = make_splits(imageset(10), SplitConfig(val=2, test=2, external=3), None)
    assert splits.external is None and splits.report["external"] is None
    assert splits.train.num_classes == 6


# ---------------------------------------------------------------------- disjoint, determinism


@given(classes=st.integers(6, 30), seed=st.integers(0, 10**6), rotations=st.booleans(), pool=st.booleans())
@PROPS
def test_sides_are_disjoint_and_reported(classes, seed, rotations, pool):
    cfg = SplitConfig(val=0.2, test=0.2, external=0.2, rotations=rotations, pool_external=pool, seed=seed)
    assume(classes - 3 * max(1, round(0.2 * classes)) >= 1)
    data = imageset(classes, per_class=2)
    splits = make_splits(data, cfg, "auto")
    report = splits.report
    assert report["disjoint"] is True
    names = report["class_names"]
    assert names["meta-train"] == splits.train.class_names
    originals = {n.split("@")[0] for n in names["meta-train"]}
    val, test = set(names["meta-val"]), set(names["meta-test"])
    assert not originals & val and not originals & test and not val & test
    ext = set(splits.external.class_names)
    assert not ext & val and not ext & test
    assert bool(ext & originals) == pool  # only pooling puts external classes into meta-train
    assert report["classes"] == {"meta-train": splits.train.num_classes, "meta-val": len(val),
                                 "meta-test": len(test)}
    assert splits.val.source.endswith("[meta-val]") and splits.test.source.endswith("[meta-test]")


def test_deterministic_for_a_seed():
    data = grouped(10, 2)
    cfg = SplitConfig(val=2, test=2, external=2, seed=11)
    a, b = make_splits(data, cfg, "auto"), make_splits(data, cfg, "auto")
    assert a.report == b.report
    for side in ("train", "val", "test", "external"):
        assert np.array_equal(getattr(a, side).images, getattr(b, side).images)
        assert np.array_equal(getattr(a, side).labels, getattr(b, side).labels)
    c = make_splits(data, SplitConfig(val=2, test=2, external=2, seed=12), "auto")
    assert c.report["units"] != a.report["units"]
