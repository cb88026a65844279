"""Class splits: meta-train / meta-validation / meta-test, and the external set for the
discriminator, with their disjointness checked and reported."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from engine.data.imageset import ImageSet
from engine.errors import UserError

VALIDATION = ("classes", "images", "train")  # SplitConfig.validation's choices
MIN_GROUPS_FOR_GROUP_SPLIT = 8  # with fewer groups (alphabets) a group split leaves a side nearly empty


@dataclass(frozen=True)
class SplitConfig:
    """How classes are divided. A value below 1 is a fraction of the units, 1 or more a count.

    Units are groups (alphabets) when the data has at least 8 of them, else single classes, so
    that test alphabets are never seen in training.
    """

    val: float = 0.1  # meta-validation units (fixed episodes tracked during training)
    test: float = 0.2  # meta-test units (never seen in training)
    external: float = 0.2  # discriminator units, used only when the external set is "auto"
    train_limit: int = 0  # >0: keep at most this many meta-train units (scarce-data studies)
    rotations: bool = False  # Omniglot-style: each 90-degree turn of a meta-train class is a new class
    pool_external: bool = False  # control: external classes join meta-train episodes instead
    seed: int = 0  # split seed, separate from the training seed so seeds share test classes
    # what meta-validation episodes are drawn from: "classes" (held-out classes, val units), "images"
    # (`held_out` images of each meta-train class kept out of training: they are the queries, the
    # support comes from the class's training images) or "train" (the meta-train images themselves,
    # when too few images to hold any out: it measures fit, not generalisation)
    validation: str = "classes"
    held_out: int = 1  # images per meta-train class held out for validation "images"


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    external: ImageSet | None
    report: dict  # which classes/groups went where, and the disjointness checks
    # validation "images": True for val's held-out images (queries only), False for its training
    # images (support only); None when val's images are all alike (validation "classes" or "train")
    val_held_out: np.ndarray | None = None


def _count(value: float, units: int) -> int:
    if value <= 0:
        return 0
    if value >= 1:
        return int(value)
    return max(1, int(round(value * units)))


def _units(data: ImageSet) -> tuple[str, list[np.ndarray], list[str]]:
    """('group'|'class', class ids per unit, unit names)."""
    if data.groups is not None and len(set(data.groups)) >= MIN_GROUPS_FOR_GROUP_SPLIT:
        names = sorted(set(data.groups))
        groups = np.asarray(data.groups)
        return "group", [np.flatnonzero(groups == g) for g in names], names
    return "class", [np.array([c]) for c in range(data.num_classes)], list(data.class_names)


def image_hashes(data: ImageSet) -> list[bytes]:
    """A content hash per image, to find the same picture in two sets."""
    return [hashlib.blake2b(im.tobytes(), digest_size=12).digest() for im in data.images]


def rotate_classes(data: ImageSet) -> ImageSet:
    """Each class plus its 90/180/270-degree rotations as three new classes (square images)."""
    images = [data.images]
    labels = [data.labels]
    names = list(data.class_names)
    for k in (1, 2, 3):
        images.append(np.rot90(data.images, k, axes=(1, 2)))  # (N, H, W, C) turned in the H-W plane
        labels.append(data.labels + k * data.num_classes)
        names += [f"{n}@{90 * k}" for n in data.class_names]
    return ImageSet(
        images=np.ascontiguousarray(np.concatenate(images)),
        labels=np.concatenate(labels),
        class_names=names,
        groups=None if data.groups is None else list(data.groups) * 4,
        source=data.source + " (+rotations)",
        problems=list(data.problems),
        inverted=data.inverted,
    )


def make_splits(data: ImageSet, cfg: SplitConfig, external: ImageSet | str | None = "auto") -> Splits:
    """Divide `data` into meta-train/val/test classes and choose the external set.

    external: "auto" (a class-disjoint part of `data`), another ImageSet (used whole, checked
    for shared images), or None (no discriminator data; only lambda = 0 can train).
    """
    if cfg.validation not in VALIDATION:
        raise UserError(f"--validation must be one of {', '.join(VALIDATION)}, not {cfg.validation!r}")
    if cfg.pool_external and cfg.validation != "classes":
        raise UserError("--pool-external needs --validation classes (held-out images would be pooled too)")
    kind, units, unit_names = _units(data)
    order = np.random.default_rng(cfg.seed).permutation(len(units))
    n_val = _count(cfg.val, len(units)) if cfg.validation == "classes" else 0
    n_test = _count(cfg.test, len(units))
    n_ext = _count(cfg.external, len(units)) if isinstance(external, str) else 0
    n_train = len(units) - n_val - n_test - n_ext
    if n_train < 1:
        kinds = {"group": "groups", "class": "classes"}[kind]
        raise UserError(
            f"{data.source}: {len(units)} {kinds} cannot be split into {n_val} validation, {n_test} test "
            f"and {n_ext} external {kinds} with any left for meta-training; use data with more classes "
            "or smaller split fractions"
        )
    if cfg.train_limit > 0:
        n_train = min(n_train, cfg.train_limit)
    # val, test and external units come first in the order, and limited meta-training takes the
    # last units: the same ones whether or not units are held out for an "auto" external set, so
    # a run with another external set (or none) meta-trains on exactly the same classes
    picked = [*np.split(order[: n_val + n_test + n_ext], np.cumsum([n_val, n_test])), order[len(order) - n_train:]]

    def classes_of(positions) -> np.ndarray:
        return np.concatenate([units[p] for p in positions]) if len(positions) else np.array([], dtype=np.int64)

    val_c, test_c, ext_c, train_c = (np.sort(classes_of(p)) for p in picked)
    ext_set: ImageSet | None
    if isinstance(external, str):
        ext_set = data.subset(ext_c, " [external]") if len(ext_c) else None
    else:
        ext_set = external
    if cfg.pool_external and ext_set is not None and isinstance(external, str):
        train_c = np.sort(np.concatenate([train_c, ext_c]))

    train = data.subset(train_c, " [meta-train]")
    val, held = data.subset(val_c, " [meta-val]"), None
    if cfg.validation == "train":
        val = data.subset(train_c, " [meta-val: the meta-train images]")
    elif cfg.validation == "images":
        val = data.subset(train_c, " [meta-val: held-out images of the meta-train classes]")
        held = _hold_out(val, cfg.held_out, cfg.seed)
        train = ImageSet(val.images[~held], val.labels[~held], list(val.class_names), val.groups,
                         data.source + " [meta-train]", list(data.problems), data.inverted)
    if cfg.rotations:
        train = rotate_classes(train)
    splits = Splits(train, val, data.subset(test_c, " [meta-test]"), ext_set, {}, held)
    splits.report = _check_and_report(data, splits, kind, picked, unit_names, cfg, external)
    return splits


def _hold_out(data: ImageSet, per_class: int, seed: int) -> np.ndarray:
    """A mask of `per_class` images of each class (fewer where a class has no more), seeded."""
    rng = np.random.default_rng([seed, 0x4E1D])
    held = np.zeros(len(data.images), dtype=bool)
    for idx in data.class_indices():
        held[rng.choice(idx, min(per_class, len(idx)), replace=False)] = True
    return held


def _check_and_report(data, splits: Splits, kind, picked, unit_names, cfg, external) -> dict:
    meta = {"meta-train": splits.train, "meta-val": splits.val, "meta-test": splits.test}
    # rotated copies (name@90...) follow the originals, so compare originals only; splitting names
    # at "@" would also cut class names that contain one and report a false overlap
    base = {k: set(s.class_names[: s.num_classes // 4] if k == "meta-train" and cfg.rotations else s.class_names)
            for k, s in meta.items()}
    pairs = [("meta-train", "meta-val"), ("meta-train", "meta-test"), ("meta-val", "meta-test")]
    if cfg.validation != "classes":  # validation shares the meta-train classes on purpose (held-out images)
        pairs = pairs[1:2]
    for a, b in pairs:
        shared = base[a] & base[b]
        assert not shared, f"split bug: {a} and {b} share {sorted(shared)[:3]}"
    ext_report = None
    if splits.external is not None:
        if isinstance(external, str):
            shared = {n for n in splits.external.class_names} & (base["meta-val"] | base["meta-test"])
            if not cfg.pool_external:
                shared |= {n for n in splits.external.class_names} & base["meta-train"]
            assert not shared, f"split bug: external shares {sorted(shared)[:3]}"
        else:
            ext_hashes = set(image_hashes(splits.external))
            for name, s in meta.items():
                clash = [s.class_names[int(s.labels[i])] for i, h in enumerate(image_hashes(s)) if h in ext_hashes]
                if clash:
                    raise UserError(
                        f"the external set {splits.external.source!r} shares {len(clash)} images with the "
                        f"{name} classes (for example class {clash[0]!r}); the discriminator must learn "
                        "other classes: choose a different external set, or use --external auto"
                    )
        ext_report = {"source": splits.external.source, "classes": splits.external.num_classes,
                      "images": len(splits.external.images)}
    units = dict(zip(("meta-val", "meta-test", "external", "meta-train"), picked))
    return {
        "unit": kind,
        "units": {k: sorted(unit_names[p] for p in v) for k, v in units.items()} if kind == "group" else None,
        "classes": {k: s.num_classes for k, s in meta.items()},
        "class_names": {k: list(s.class_names) for k, s in meta.items()},
        "external": ext_report,
        "external_pooled_into_meta_train": bool(cfg.pool_external),
        "rotations": bool(cfg.rotations),
        "validation": cfg.validation,
        "held_out_images_per_class": cfg.held_out if cfg.validation == "images" else 0,
        "disjoint": True,  # reached only when every check above passed
    }

