"""One in-memory form for every image source, and the preprocessing that produces it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.errors import UserError

DEFAULT_GRAY_SIZE = 28  # the few-shot standard for glyph-like data (Omniglot at 28x28)
DEFAULT_RGB_SIZE = 64  # small enough for CPU, large enough to tell photos apart


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input; stored in a run's config so evaluation on another
    dataset prepares it exactly as training data was prepared."""

    image_size: int | None = None  # None: 28 px for grayscale, 64 px for RGB
    channels: int | None = None  # 1 or 3; None: 1 if every image is gray, else 3
    # "auto": grayscale sets are flipped, when their borders are mostly bright, so that ink is
    # bright on a dark background (Omniglot is black-on-white, digits white-on-black);
    # "keep": never flip. RGB images are never flipped.
    polarity: str = "auto"

    def __post_init__(self):
        if self.image_size is not None and not 8 <= self.image_size <= 512:
            raise UserError(f"image size {self.image_size} px is out of range: use 8 to 512")
        if self.channels not in (None, 1, 3):
            raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if self.polarity not in ("auto", "keep"):
            raise UserError(f"polarity must be 'auto' or 'keep', not {self.polarity!r}")

    def resolved_size(self, channels: int) -> int:
        if self.image_size is not None:
            return self.image_size
        return DEFAULT_GRAY_SIZE if channels == 1 else DEFAULT_RGB_SIZE


@dataclass
class ImageSet:
    """Labelled images, all the same size and channel count.

    images: uint8 (N, H, W, C); labels: int64 (N,) indexing class_names.
    groups: one name per class (Omniglot's alphabet, a folder's parent), or None. Splits keep a
    group on one side so that, e.g., test alphabets are never seen in training.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: list[str] | None = None
    source: str = ""
    problems: list[str] = field(default_factory=list)  # what was skipped or fixed, for people
    inverted: bool = False  # polarity was flipped to bright-on-dark

    def __post_init__(self):
        n = len(self.images)
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels.shape == (n,), (self.labels.shape, n)
        if n:
            assert 0 <= self.labels.min() and self.labels.max() < len(self.class_names)
        if self.groups is not None:
            assert len(self.groups) == len(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def counts(self) -> np.ndarray:
        """Images per class, (num_classes,)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def class_indices(self) -> list[np.ndarray]:
        """For each class, the indices of its images (in image order)."""
        order = np.argsort(self.labels, kind="stable")
        return np.split(order, np.cumsum(self.counts())[:-1])

    def subset(self, classes, suffix: str = "") -> ImageSet:
        """The images of `classes` (class ids, in that order), relabelled 0..len(classes)-1."""
        classes = np.asarray(classes, dtype=np.int64)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        keep = np.flatnonzero(remap[self.labels] >= 0)
        return ImageSet(
            images=self.images[keep],
            labels=remap[self.labels[keep]],
            class_names=[self.class_names[c] for c in classes],
            groups=None if self.groups is None else [self.groups[c] for c in classes],
            source=self.source + suffix,
            problems=list(self.problems),
            inverted=self.inverted,
        )

    def without_groups(self, names: str, flag: str = "--exclude-groups") -> ImageSet:
        """This set less every class of the comma-separated groups `names` ("" keeps it whole)."""
        drop = {n.strip() for n in names.split(",") if n.strip()}
        if not drop:
            return self
        if self.groups is None:
            raise UserError(f"{flag}: {self.source} has no groups (alphabets) to leave out; remove {flag}")
        if unknown := sorted(drop - set(self.groups)):
            raise UserError(f"{flag}: {', '.join(unknown)} is not a group of {self.source}; "
                            f"its groups are {', '.join(sorted(set(self.groups)))}")
        return self.subset([c for c, g in enumerate(self.groups) if g not in drop])

    def summary(self) -> dict:
        counts = self.counts()
        return {
            "source": self.source,
            "classes": self.num_classes,
            "images": int(len(self.images)),
            "groups": None if self.groups is None else len(set(self.groups)),
            "images_per_class": {
                "min": int(counts.min()) if len(counts) else 0,
                "max": int(counts.max()) if len(counts) else 0,
                "mean": round(float(counts.mean()), 2) if len(counts) else 0.0,
            },
            "image_size": self.image_size,
            "channels": self.channels,
            "inverted": self.inverted,
            "problems": list(self.problems),
        }


def to_pixels(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A decoded PIL image -> uint8 (size, size, channels), squashed to a square (LANCZOS)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels become white paper
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, rgba)
    img = img.convert("L" if channels == 1 else "RGB")  # also turns 1-bit into 8-bit first
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def is_gray(img: Image.Image) -> bool:
    """True when an image carries no colour (gray modes, or RGB with R == G == B)."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def normalise_polarity(images: np.ndarray, polarity: str) -> tuple[np.ndarray, bool]:
    """Flip a grayscale set to bright ink on dark paper when its image borders are bright."""
    if polarity == "keep" or images.shape[-1] != 1 or len(images) == 0:
        return images, False
    border = np.concatenate(
        [images[:, 0].ravel(), images[:, -1].ravel(), images[:, :, 0].ravel(), images[:, :, -1].ravel()]
    )
    if border.mean() > 127:
        return 255 - images, True
    return images, False


def build_imageset(
    per_class: list[tuple[str, list[Image.Image]]],
    prep: Preprocess,
    source: str,
    groups: list[str] | None = None,
    problems: list[str] | None = None,
) -> ImageSet:
    """Decoded images grouped by class -> ImageSet, with size, channels and polarity applied.

    Classes with no images are dropped with a problem line; the caller's problems come first.
    """
    problems = list(problems or [])
    kept = [(i, name, imgs) for i, (name, imgs) in enumerate(per_class) if imgs]
    for name, imgs in per_class:
        if not imgs:
            problems.append(f"class {name!r}: no readable images, left out")
    if not kept:
        raise UserError(f"{source}: no readable images found")
    channels = prep.channels
    if channels is None:
        channels = 1 if all(is_gray(im) for _, _, imgs in kept for im in imgs) else 3
    size = prep.resolved_size(channels)
    images = np.stack([to_pixels(im, channels, size) for _, _, imgs in kept for im in imgs])
    labels = np.concatenate([np.full(len(imgs), c, dtype=np.int64) for c, (_, _, imgs) in enumerate(kept)])
    images, inverted = normalise_polarity(images, prep.polarity)
    return ImageSet(
        images=np.ascontiguousarray(images),
        labels=labels,
        class_names=[name for _, name, _ in kept],
        groups=None if groups is None else [groups[i] for i, _, _ in kept],
        source=source,
        problems=problems,
        inverted=inverted,
    )


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    prep: Preprocess,
    source: str,
    groups: list[str] | None = None,
) -> ImageSet:
    """Array data (N, H, W[, C]) of any numeric dtype in 0..255 (bool: 0/255) -> ImageSet.

    Fast path for npz/digits/glyphs: resizes with PIL only when the size differs.
    """
    if images.dtype == bool:
        images = images.astype(np.uint8)
        images *= 255  # in place: Omniglot's bool array is 212 MB as uint8
    elif images.dtype != np.uint8:
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{source}: pixel values run from {lo:g} to {hi:g}; expected 0..255 (or 0..1 floats)")
        if images.dtype.kind == "f" and hi <= 1.0:
            images = images * 255.0
        images = np.rint(images).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    src_channels = images.shape[-1]
    if src_channels not in (1, 3, 4):
        raise UserError(f"{source}: images have {src_channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    channels = prep.channels
    if channels is None:
        channels = 1 if src_channels == 1 else (1 if _arrays_gray(images) else 3)
    size = prep.resolved_size(channels)
    if images.shape[1:3] != (size, size) or src_channels != channels:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[src_channels]
        images = np.stack(
            [to_pixels(Image.fromarray(im[..., 0] if src_channels == 1 else im, mode), channels, size) for im in images]
        )
    images, inverted = normalise_polarity(images, prep.polarity)
    return ImageSet(
        images=np.ascontiguousarray(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=list(class_names),
        groups=groups,
        source=source,
        inverted=inverted,
    )


def _arrays_gray(images: np.ndarray) -> bool:
    rgb = images[..., :3]
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
