"""Generated glyph sets kept on disk, so a fresh process reads the demo's data in milliseconds
instead of drawing 8,000 images again.

Where: $CONCEPTSCAPE_CACHE, else .cache/conceptscape in the repository (git-ignored); "off" (or an
empty value) turns the cache off. What: one .npz per glyph request, named by a key that hashes the
options, the preprocessing and the generator's code version (the source of engine/data/glyphs.py
and engine/data/imageset.py, which decide every pixel), so changing the generator never serves an
old picture. Each file also stores its own key and is checked on read (the zip's CRCs, shapes,
dtypes, labels); anything that does not check out is treated as missing and regenerated.
Files are written to a temporary name and renamed into place, so a reader never sees half a file.
Only sets up to MAX_CACHED_BYTES are kept, and at most MAX_ENTRIES files (the oldest go).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.data.imageset import ImageSet, Preprocess

FORMAT = 1  # bump when the file layout below changes
MAX_CACHED_BYTES = 64 << 20  # pixels per cached set: the demo's is 6 MiB
MAX_ENTRIES = 16

_version: str | None = None


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is off."""
    value = os.environ.get("CONCEPTSCAPE_CACHE")
    if value is None:
        return Path(__file__).resolve().parents[3] / ".cache" / "conceptscape"
    if value.strip() in ("", "off"):
        return None
    return Path(value).expanduser()


def generator_version() -> str:
    """A hash of the code that draws glyph sets: any change to it is a new version."""
    global _version
    if _version is None:
        import numpy
        import PIL

        from engine.data import glyphs, imageset

        # the pixels also depend on the libraries that draw and resize them
        h = hashlib.sha256(f"format {FORMAT} numpy {numpy.__version__} Pillow {PIL.__version__}".encode())
        for module in (glyphs, imageset):
            h.update(Path(module.__file__).read_bytes())
        _version = h.hexdigest()[:16]
    return _version


def glyph_key(options: dict, prep: Preprocess) -> str:
    text = json.dumps({"options": dict(sorted(options.items())), "image_size": prep.image_size,
                       "channels": prep.channels, "polarity": prep.polarity,
                       "version": generator_version()}, sort_keys=True)
    return "glyphs-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def read(key: str) -> ImageSet | None:
    """The cached set under `key`, or None (missing, cache off, or damaged: then it is removed)."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:  # reading every member checks the zip's CRC
            if str(z["key"]) != key:
                raise ValueError("key mismatch")
            images, labels = z["images"], z["labels"]
            names, groups = [str(s) for s in z["class_names"]], [str(s) for s in z["groups"]]
            inverted = bool(z["inverted"])
        if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64:
            raise ValueError("wrong arrays")
        result = ImageSet(images=images, labels=labels, class_names=names,
                          groups=groups if groups else None, source="glyphs", inverted=inverted)
        if len(result.counts()) != len(names):
            raise ValueError("labels and classes disagree")
        return result
    except (OSError, ValueError, KeyError, AssertionError, EOFError, zipfile.BadZipFile):
        _remove(path)
        return None


def write(key: str, data: ImageSet) -> None:
    """Keep `data` under `key` (quietly does nothing when the cache is off, the set is large or
    the folder cannot be written: the cache only ever saves time)."""
    folder = cache_dir()
    if folder is None or data.images.nbytes > MAX_CACHED_BYTES:
        return
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.asarray(key), images=data.images, labels=data.labels,
                     class_names=np.asarray(data.class_names, dtype=str),
                     groups=np.asarray(data.groups or [], dtype=str), inverted=np.bool_(data.inverted))
        os.replace(tmp, folder / f"{key}.npz")
        tmp = None
        _prune(folder)
    except OSError:
        pass
    finally:
        if tmp is not None:
            _remove(Path(tmp))


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("glyphs-*.npz"), key=lambda p: p.stat().st_mtime)
    for path in entries[:-MAX_ENTRIES]:
        _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
