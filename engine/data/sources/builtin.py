"""The built-in data sets: synthetic glyphs and scikit-learn's 8x8 digits."""
from __future__ import annotations

import numpy as np

from engine.data.imageset import ImageSet, Preprocess, from_arrays
from engine.data.sources import diskcache

GLYPH_OPTIONS = ("classes", "drawings", "alphabets", "seed")


def load_glyphs(options: dict, prep: Preprocess) -> ImageSet:
    """The glyph set `options` asks for: from the disk cache (milliseconds) when it holds this
    exact request drawn by this version of the generator, else drawn now and kept there."""
    key = diskcache.glyph_key(options, prep)
    cached = diskcache.read(key)
    if cached is not None:
        return cached
    # lazy: written separately, and not always needed
    from engine.data.glyphs import generate_glyphs

    data = generate_glyphs(**options, prep=prep)
    diskcache.write(key, data)
    return data


def load_digits(prep: Preprocess, spec: str) -> ImageSet:
    # lazy: importing scikit-learn takes a while
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    return from_arrays(images, labels, [str(d) for d in range(10)], prep, spec)
