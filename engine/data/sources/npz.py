"""A .npz of arrays on the server: images and labels (optional class_names and groups)."""
from __future__ import annotations

import numpy as np

from engine.data import images as imgs
from engine.data.imageset import ImageSet, Preprocess, from_arrays
from engine.errors import UserError

NPZ_LAYOUTS = (
    "images (N, H, W) or (N, H, W, C) with labels (N,), "
    "or images (classes, drawings, H, W[, C]) with labels (classes, drawings); C is 1, 3 or 4"
)


def load_npz(path: str, prep: Preprocess, spec: str) -> ImageSet:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - anything np.load cannot read is the user's file
        raise UserError(f"{spec} is not a readable .npz archive ({imgs.reason(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{spec} holds a single array, not an .npz with 'images' and 'labels' arrays")
    with npz:
        keys = list(npz.files)
        missing = [k for k in ("images", "labels") if k not in keys]
        if missing:
            found = ", ".join(repr(k) for k in keys) or "no arrays"
            raise UserError(
                f"{spec} needs arrays 'images' and 'labels' (optional: 'class_names', 'groups'); found {found}"
            )
        archive = getattr(npz, "zip", None)
        total = sum(i.file_size for i in archive.infolist()) if archive is not None else 0
        if total > imgs.READ.max_npz_bytes:
            raise UserError(f"{spec} declares {total / imgs.GiB:.1f} GiB uncompressed; the limit is {imgs.READ.max_npz_bytes // imgs.GiB} GiB")
        images = _npz_array(npz, "images", spec)
        labels = _npz_array(npz, "labels", spec)
        class_names = _npz_strings(npz, "class_names", spec) if "class_names" in keys else None
        groups = _npz_strings(npz, "groups", spec) if "groups" in keys else None
    return _from_npz_arrays(images, labels, class_names, groups, prep, spec)


def _npz_array(npz, key: str, spec: str) -> np.ndarray:
    try:
        arr = npz[key]
        if not isinstance(arr, np.ndarray):  # NpzFile hands back the raw bytes of a non-.npy member
            raise UserError(f"{spec}: {key!r} is not a NumPy array (.npy) member, so it is not read; "
                            "save the arrays with numpy.savez")
        return arr
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(
                f"{spec}: array {key!r} holds Python objects, which are not loaded (they could run code); "
                "save plain numeric or string arrays"
            ) from None
        raise UserError(f"{spec}: array {key!r} cannot be read ({imgs.reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged member
        raise UserError(f"{spec}: array {key!r} cannot be read ({imgs.reason(e)})") from None


def _npz_strings(npz, key: str, spec: str) -> list[str]:
    arr = _npz_array(npz, key, spec)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise UserError(f"{spec}: {key!r} must be a 1-D array of strings, found {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in arr.tolist()]
    return [str(s) for s in arr.tolist()]


def _from_npz_arrays(images, labels, class_names, groups, prep: Preprocess, spec: str) -> ImageSet:
    shapes = f"found images {images.dtype} {images.shape} and labels {labels.dtype} {labels.shape}"
    layout_a = labels.ndim == 2 and images.ndim in (4, 5) and images.shape[:2] == labels.shape
    layout_b = labels.ndim == 1 and images.ndim in (3, 4) and images.shape[0] == labels.shape[0]
    channels_ok = (images.ndim - labels.ndim == 2) or (images.ndim > 0 and images.shape[-1] in (1, 3, 4))
    if not (layout_a or layout_b) or not channels_ok:
        raise UserError(f"{spec}: {shapes}; accepted: {NPZ_LAYOUTS}")
    if images.dtype.kind not in "buif":
        raise UserError(f"{spec}: {shapes}; images must be bool, integer or float")
    if labels.dtype.kind not in "iu":
        raise UserError(f"{spec}: {shapes}; labels must be integers (e.g. labels.astype(int))")
    if images.size == 0:
        raise UserError(f"{spec}: {shapes}; there are no images")

    omniglot = (
        layout_a
        and images.shape == (964, 20, 105, 105)
        and bool((labels == np.arange(964)[:, None]).all())
    )
    flat_images = images.reshape((-1,) + images.shape[labels.ndim:])
    flat_labels = labels.reshape(-1)
    problems: list[str] = []
    pixels = _npz_pixels(flat_images, spec, shapes, problems)

    present, new_labels = np.unique(flat_labels, return_inverse=True)
    new_labels = new_labels.reshape(-1).astype(np.int64)
    names = [str(v) for v in present.tolist()]
    class_groups = None
    if omniglot and class_names is None and groups is None:
        from engine.data.omniglot import background_alphabets, background_class_names

        names, class_groups = background_class_names(), background_alphabets()
    if class_names is not None:
        names = _by_label(class_names, present, "class_names", spec)
    if groups is not None:
        class_groups = _by_label(groups, present, "groups", spec)

    result = from_arrays(pixels, new_labels, names, prep, spec, groups=class_groups)
    result.problems = problems
    return result


def _by_label(values: list[str], present: np.ndarray, key: str, spec: str) -> list[str]:
    """`values[i]` names original label i; pick those of the labels present."""
    lo, hi = int(present.min()), int(present.max())
    if lo < 0 or hi >= len(values):
        raise UserError(
            f"{spec}: {key!r} has {len(values)} entries but labels run from {lo} to {hi}; "
            f"{key}[i] must describe label i"
        )
    return [values[i] for i in present.tolist()]


def _npz_pixels(images: np.ndarray, spec: str, shapes: str, problems: list[str]) -> np.ndarray:
    """Any accepted dtype -> uint8 0..255 (bool: 0/255), checking the value range."""
    kind = images.dtype.kind
    if kind == "b":
        # astype, not view: a stored True need not be the byte 1 (the shared Omniglot file has 0xFF)
        pixels = images.astype(np.uint8)
        pixels *= 255
        return pixels
    if images.dtype == np.uint8:
        return images
    lo, hi = images.min(), images.max()
    if kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"{spec}: {shapes}; images contain NaN or infinite values")
        if lo >= 0 and hi <= 1:
            problems.append("float images in 0..1 scaled to 0..255")
            return np.round(images * 255.0).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.round(images).astype(np.uint8)
        raise UserError(f"{spec}: {shapes}; float images run from {lo:g} to {hi:g}, expected 0..1 or 0..255")
    if lo < 0 or hi > 255:
        raise UserError(f"{spec}: {shapes}; integer images run from {lo} to {hi}, expected 0..255")
    return images.astype(np.uint8)
