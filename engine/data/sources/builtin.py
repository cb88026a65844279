"""The built-in data sets: synthetic glyphs and scikit-learn's 8x8 digits."""
from __future__ import annotations

import numpy as np

from engine.data.imageset import ImageSet, Preprocess, from_arrays

GLYPH_OPTIONS = ("classes", "drawings", "alphabets", "seed")


def load_glyphs(options: dict, prep: Preprocess) -> ImageSet:
    # lazy: written separately, and not always needed
    from engine.data.glyphs import generate_glyphs

    return generate_glyphs(**options, prep=prep)


def load_digits(prep: Preprocess, spec: str) -> ImageSet:
    # lazy: importing scikit-learn takes a while
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    return from_arrays(images, labels, [str(d) for d in range(10)], prep, spec)
