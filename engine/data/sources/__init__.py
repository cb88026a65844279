"""Turn a dataset SPEC string (what the command line and the app pass) into an ImageSet.

SPEC forms:
- ``glyphs`` or ``glyphs:classes=400,seed=3,drawings=20,alphabets=20``: synthetic glyphs.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).
- a path to a folder of class folders, a ``.zip`` with the same layout, or a ``.npz``.
The words ``glyphs`` and ``digits`` win over a file or folder of that name; write ``./digits``
to mean the folder.

Loads are cached in-process (the app and the trainer ask for the same data again and again).
The ImageSet you get back shares its arrays with the cache: ``images`` and ``labels`` are set
read-only, so treat the set as read-only (``subset`` and fancy indexing give fresh arrays; call
``.copy()`` before changing pixels in place). Its lists are your own copies. ``prefetch`` fills
that cache on a background thread (the app does it for the demo's data at server start), and
generated glyph sets are also kept on disk (engine.data.sources.diskcache).

Zips are read in memory, member by member, and never extracted. Files that cannot be used are
skipped and named in ``ImageSet.problems``; a source with nothing usable raises UserError.
Images are decoded, and checked against the limits (engine.data.images.READ), by
engine.data.images. One module per reader: folders, zips, npz, builtin (glyphs and digits).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from typing import Callable

from engine.data.images import IMAGE_EXTENSIONS
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources.builtin import GLYPH_OPTIONS, load_digits, load_glyphs
from engine.data.sources.classes import EXPECTED_LAYOUT
from engine.data.sources.folders import load_folder, scan_folder
from engine.data.sources.npz import NPZ_LAYOUTS, load_npz
from engine.data.sources.zips import load_zip, read_member
from engine.errors import UserError

__all__ = ["ACCEPTED_FORMS", "EXPECTED_LAYOUT", "IMAGE_EXTENSIONS", "NPZ_LAYOUTS", "CACHE_SIZE", "clear_cache",
           "load_imageset", "parse_spec", "prefetch", "read_member"]

CACHE_SIZE = 8

ACCEPTED_FORMS = (
    "'glyphs' (or 'glyphs:classes=400,seed=3,drawings=20,alphabets=20'), 'digits', "
    "a folder with one sub-folder of images per class, a .zip with the same layout, "
    "or a .npz with 'images' and 'labels' arrays"
)


# ----------------------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """SPEC -> (kind, target, options).

    kind is "glyphs", "digits", "folder", "zip" or "npz"; target is the keyword or the path as
    given (``~`` expanded); options holds glyph settings as ints (empty for the other kinds).
    Raises UserError for a malformed spec, a missing path or an unknown kind of file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"no dataset given; pass {ACCEPTED_FORMS}")
    spec = spec.strip()
    word, sep, rest = spec.partition(":")
    if word == "glyphs":
        return "glyphs", "glyphs", _parse_glyph_options(rest) if sep else {}
    if word == "digits":
        if rest.strip():
            raise UserError(f"'digits' takes no options (got {rest.strip()!r}); pass just 'digits'")
        return "digits", "digits", {}
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise UserError(
            f"{spec} does not exist; pass a folder of class folders, a .zip or a .npz, or 'glyphs'/'digits'"
        )
    if os.path.isdir(path):
        return "folder", path, {}
    lower = path.lower()
    if os.path.isfile(path):
        if lower.endswith(".zip"):
            return "zip", path, {}
        if lower.endswith(".npz"):
            return "npz", path, {}
    raise UserError(f"{spec} is not a kind of dataset this program reads; pass {ACCEPTED_FORMS}")


def _parse_glyph_options(text: str) -> dict:
    allowed = ", ".join(GLYPH_OPTIONS)
    options: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise UserError(f"glyphs option {item!r} is not key=value; use e.g. 'glyphs:classes=400,seed=3' ({allowed})")
        if key not in GLYPH_OPTIONS:
            raise UserError(f"unknown glyphs option {key!r}; the options are {allowed}")
        if key in options:
            raise UserError(f"glyphs option {key!r} is given twice")
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"glyphs option {key}={value!r} is not a whole number") from None
        if key != "seed" and number < 1:
            raise UserError(f"glyphs {key} must be at least 1, not {number}")
        options[key] = number
    return options


# ----------------------------------------------------------------------------------------- cache

_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()
_loading: dict = {}  # key -> a lock held while that key loads: a second asker waits for the first


def clear_cache() -> None:
    """Forget every cached load (tests; or to free memory)."""
    with _cache_lock:
        _cache.clear()


def _cached(key, load: Callable[[], ImageSet]) -> ImageSet:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        loading = _loading.setdefault(key, threading.Lock())
    # outside the cache lock: a slow load must not block other sources; the same source loads once
    # (a click while prefetch() is still drawing the demo's data waits for it instead of drawing again)
    with loading:
        with _cache_lock:
            hit = _cache.get(key)
        if hit is None:
            try:
                hit = load()
                hit.images.flags.writeable = False
                hit.labels.flags.writeable = False
                with _cache_lock:
                    _cache[key] = hit
                    _cache.move_to_end(key)
                    while len(_cache) > CACHE_SIZE:
                        _cache.popitem(last=False)
            finally:
                with _cache_lock:
                    if _loading.get(key) is loading:  # never another load's lock
                        del _loading[key]
    return hit


def prefetch(spec: str, prep: Preprocess = Preprocess()) -> threading.Thread:
    """Load SPEC into the in-process cache on a daemon thread and return the thread. Errors are left for
    the load that needs the data to report."""
    def work():
        try:
            load_imageset(spec, prep)
        except Exception:  # noqa: BLE001 - the real load says what is wrong, in its own words
            pass

    thread = threading.Thread(target=work, name=f"prefetch {spec}", daemon=True)
    thread.start()
    return thread


def _handout(cached: ImageSet, spec: str) -> ImageSet:
    """A shallow copy for the caller: shared read-only arrays, own lists, source = spec."""
    return dataclasses.replace(
        cached,
        class_names=list(cached.class_names),
        groups=None if cached.groups is None else list(cached.groups),
        problems=list(cached.problems),
        source=spec,
    )


# ------------------------------------------------------------------------------------------ load


def load_imageset(spec: str, prep: Preprocess = Preprocess()) -> ImageSet:
    """Load SPEC (see the module doc) prepared by `prep`. Cached; treat the result as read-only."""
    kind, target, options = parse_spec(spec)
    spec = spec.strip()
    if kind == "glyphs":
        key = ("glyphs", tuple(sorted(options.items())), prep)
        result = _cached(key, lambda: load_glyphs(options, prep))
    elif kind == "digits":
        result = _cached(("digits", prep), lambda: load_digits(prep, spec))
    elif kind == "folder":
        root = os.path.realpath(target)
        scan = scan_folder(root)
        key = ("folder", root, scan.fingerprint(), prep)
        result = _cached(key, lambda: load_folder(root, scan, prep, spec))
    else:
        path = os.path.realpath(target)
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"{spec} cannot be read ({e.strerror})") from None
        key = (kind, path, st.st_mtime_ns, st.st_size, prep)
        loader = load_zip if kind == "zip" else load_npz
        result = _cached(key, lambda: loader(path, prep, spec))
    return _handout(result, spec)
