"""What a dataset holds, for the Data page: previews, the split a training run would make, the
sizes of the images as stored, and how the page offers a spec.

UI-free (no streamlit): the page renders the dicts that come back.

- ``preview(spec, ...)``: what a dataset holds (counts, sizes, a few thumbnails per class) and every
  problem found, including classes too small for K shots + Q queries.
- ``split_preview(spec, external, fields, ...)``: which classes go to meta-train / meta-val /
  meta-test / external, exactly as a training run would divide them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.config import TrainConfig, uploads_root
from engine.data import images
from engine.data.imageset import Preprocess
from engine.data.plan import Plan, Words, plan_config
from engine.data.sources import load_imageset, parse_spec
from engine.data.sources.zips import file_members
from engine.viz.charts.thumbnails import tile

SHOWN_CLASSES = 12  # classes with thumbnails in a preview
SIZE_SCAN_FILES = 500  # image headers read to report the original sizes of a folder or zip


def original_sizes(spec: str, limit: int = SIZE_SCAN_FILES) -> dict | None:
    """Sizes of the images as stored (before resizing), from the headers of up to `limit` images
    of a folder or zip; None for built-in and array data."""
    kind, target, _ = parse_spec(spec)
    sizes: list[tuple[int, int]] = []
    if kind == "zip":
        try:
            with zipfile.ZipFile(target) as zf:
                for info, parts in file_members(zf.infolist()):
                    if len(sizes) >= limit:
                        break
                    if isinstance(parts, str) or info.file_size > images.READ.max_file_bytes \
                            or not images.is_image_name(parts[-1]):
                        continue
                    try:
                        with zf.open(info) as member:
                            sizes.append(images.header(member)[1:])
                    except Exception:  # noqa: BLE001 - the loader names unreadable members
                        continue
        except (zipfile.BadZipFile, OSError):
            return None
    elif kind == "folder":
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not images.is_ignored(d))
            for fname in sorted(filenames):
                if len(sizes) >= limit:
                    break
                if images.is_ignored(fname) or not images.is_image_name(fname):
                    continue
                try:
                    sizes.append(images.header(os.path.join(dirpath, fname))[1:])
                except Exception:  # noqa: BLE001
                    continue
            if len(sizes) >= limit:
                break
    else:
        return None
    if not sizes:
        return None
    distinct = sorted(set(sizes), key=lambda s: (s[0] * s[1], s))
    return {"checked": len(sizes), "distinct": len(distinct), "smallest": distinct[0], "largest": distinct[-1],
            "square": all(w == h for w, h in distinct)}


def preview(spec: str, prep: Preprocess = Preprocess(), ways: int = 5, shots: int = 1, queries: int = 5,
            per_class: int = 8, first_class: int = 0, show_classes: int = SHOWN_CLASSES) -> dict:
    """What SPEC holds, for people: summary, per-class counts, thumbnails of `show_classes`
    classes from `first_class` (each a tile of up to `per_class` images), and every problem found.

    Keys: spec, summary, counts [(class, images)], image_size, channels, tiles [{name, count,
    image (H, W, 3) uint8}], original_sizes, need (K+Q), too_small [class names], problems [lines].
    Raises UserError when SPEC cannot be read at all. Whether it can train, and how, is the
    plan's to say (fit_data_plan).
    """
    data = load_imageset(spec, prep)
    counts = data.counts()
    need = shots + queries
    problems = list(data.problems)
    sizes = original_sizes(spec)
    shape = f"{data.image_size}×{data.image_size} px"
    if sizes and (sizes["distinct"] > 1 or not sizes["square"]):
        (w0, h0), (w1, h1) = sizes["smallest"], sizes["largest"]
        what = f"{sizes['distinct']} different sizes, from {w0}×{h0} to {w1}×{h1} px" if sizes["distinct"] > 1 \
            else f"{w0}×{h0} px, not square"
        problems.append(f"mixed image sizes ({what}): every image is resized to {shape}"
                        + ("" if sizes["square"] else ", squashed to a square"))
    too_small = [name for name, c in zip(data.class_names, counts) if c < need]
    if too_small:
        names = ", ".join(repr(n) for n in too_small[:10]) + (" ..." if len(too_small) > 10 else "")
        problems.append(f"{len(too_small)} of {data.num_classes} classes have fewer than {need} images "
                        f"({shots} shots + {queries} queries) and will be left out of tasks: {names}")
    first_class = max(0, min(int(first_class), max(0, data.num_classes - 1)))
    tiles = []
    for c, idx in enumerate(data.class_indices()[first_class:first_class + show_classes], first_class):
        picked = np.asarray(data.images[idx[:per_class]])
        tiles.append({"name": data.class_names[c], "count": int(counts[c]), "image": tile(picked, columns=per_class)})
    summary = data.summary()
    summary.pop("problems")
    return {"spec": spec, "summary": summary, "counts": [(n, int(c)) for n, c in zip(data.class_names, counts)],
            "image_size": data.image_size, "channels": data.channels, "tiles": tiles, "first_class": first_class,
            "original_sizes": sizes, "need": need, "too_small": too_small, "problems": problems}


SPLITS = ("meta-train", "meta-val", "meta-test", "external")


def split_preview(spec: str, external: str = "auto", fields: Mapping | None = None, image_size: int | None = None,
                  ways: int = 5, shots: int = 1, queries: int = 5) -> dict:
    """Which classes go where, exactly as a training run divides them (engine.train.trainer.load_data).

    fields: split settings (val_split, test_split, external_split, train_limit, rotations,
    split_seed, pool_external, validation). Keys of the result: report (make_splits' report), rows (one per
    split: split, classes, images, groups), class_names {split: [names]}, problems (a meta-test
    too small for ways-way evaluation; whether training can start is the plan's to say). Raises UserError for impossible
    splits or an external set that overlaps the data.
    """
    from engine.train.trainer import load_data  # lazy: imports torch

    cfg = TrainConfig().with_overrides(dataset=spec, external=external, image_size=image_size,
                                       ways=ways, shots=shots, queries=queries, **dict(fields or {}))
    cfg, splits = load_data(cfg)
    report = splits.report
    parts = {"meta-train": splits.train, "meta-val": splits.val, "meta-test": splits.test,
             "external": splits.external}
    rows, names, problems = [], {}, []
    need = shots + queries
    for split in SPLITS:
        s = parts[split]
        if s is None:
            rows.append({"split": split, "classes": 0, "images": 0, "groups": None, "source": "none"})
            names[split] = []
            continue
        groups = None if s.groups is None else len(set(s.groups))
        rows.append({"split": split, "classes": s.num_classes, "images": len(s.images), "groups": groups,
                     "source": s.source})
        names[split] = list(s.class_names)
        usable = int((s.counts() >= need).sum())
        if split == "meta-test" and 0 < usable < ways:
            problems.append(f"evaluation on held-out classes cannot run as {ways}-way: meta-test has "
                            f"{images.plural(usable, 'class', 'classes')} with at least {need} images")
    return {"report": report, "rows": rows, "class_names": names, "problems": problems}


# the Data page's field names, for the plan's messages (engine.data.plan.Words)
FIELD_WORDS = Words({"ways": "Ways (N)", "shots": "Shots (K)", "queries": "Queries (Q)", "validation": "Validate on",
                     "val_split": "Validation", "test_split": "Test", "external_split": "External (auto)",
                     "external": "External set", "lam": "λ", "train_limit": "Train limit"})


def fit_data_plan(spec: str, image_size: int | None = None, chosen: Mapping | None = None, explicit=(),
                  words: Words = FIELD_WORDS) -> tuple[dict, Plan]:
    """The plan for SPEC on the Train page's starting point (engine.config.train_page_start): `chosen` TrainConfig
    fields on top, those in `explicit` kept as chosen. Returns (the fields to store for training:
    dataset, image_size, external, N/K/Q, split; the Plan). UserError, in `words`, when nothing trains."""
    from engine.config import train_page_start

    base = train_page_start().with_overrides(dataset=spec, image_size=image_size, **dict(chosen or {}))
    cfg, plan = plan_config(base, frozenset(explicit), words)
    keep = ("dataset", "external", "ways", "shots", "queries", "lam", "validation", "val_split", "test_split",
            "external_split", "train_limit", "rotations")
    fields = {k: getattr(cfg, k) for k in keep}
    if image_size is not None:
        fields["image_size"] = image_size
    return fields, plan


CHOICE_ID = re.compile(r"[0-9a-f]{16}")


def save_choice(overrides: Mapping) -> str:
    """Keep the data chosen for training under uploads_root()/choices/ID.json; its ID (16 hex
    digits, from the content) goes in the page's link (?data=ID), so a refresh finds the choice."""
    text = json.dumps(dict(overrides), sort_keys=True)
    choice_id = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    folder = uploads_root() / "choices"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{choice_id}.json"
    if not path.exists():
        tmp = folder / f".{choice_id}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return choice_id


def load_choice(choice_id: str) -> dict | None:
    """The choice save_choice kept under ID, or None (an ID of another form, none kept, unreadable)."""
    if not isinstance(choice_id, str) or not CHOICE_ID.fullmatch(choice_id):
        return None
    try:
        value = json.loads((uploads_root() / "choices" / f"{choice_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def spec_kind(spec: str | None) -> str:
    """How the Data page offers SPEC: 'glyphs', 'digits', 'zip' (a zip saved by save_zip), 'browser'
    (a folder saved by save_browser_classes) or 'path' (anything else on the server)."""
    spec = (spec or "glyphs").strip()
    word = spec.partition(":")[0]
    if word in ("glyphs", "digits"):
        return word
    path = Path(spec)
    try:
        inside = path.resolve().parent == uploads_root().resolve()
    except OSError:
        inside = False
    if inside and path.suffix.lower() == ".zip":
        return "zip"
    if inside and re.search(r"-browser(-\d+)?$", path.name):
        return "browser"
    return "path"
