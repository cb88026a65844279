"""Adapting a trained run to a new few-shot task (the Adapt page's engine; no UI calls here).

A task is either
  (a) drawn, seeded, from the run's held-out (meta-test) classes: `sample_task`, or
  (b) uploaded: for each new class a name and 1-5 support images, plus query images (labelled
      with their class or not): `prepare_upload`. Uploads are decoded and checked against
      LIMITS (every rejected file is named with the reason), then prepared exactly like the
      run's training data: its image size, channels and polarity. Under polarity "auto" the
      training data always ends up bright-on-dark (a set whose borders are bright is flipped),
      so the uploaded task, support and queries together, is flipped the same way when its
      borders are bright; an image whose own background disagrees is named in `problems`.

Then `classify` runs concepts -> the run's learner -> each query's predicted class and its
confidence (softmax probability), exactly as engine.eval.evaluate does; `task_detail` lays the task
out in concept space for engine.viz.charts.episode_view (engine.viz.episode). The run next to its
lambda = 0 twin on the same held-out episodes is engine.eval.twins.compare_held_out.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from engine.config import TrainConfig
from engine.data.episodes import (
    EpisodeIndex,
    EpisodeSampler,
    channels_first,
    class_major_labels,
)
from engine.data.images import IMAGE_TYPES as IMAGE_TYPES
from engine.data.images import TASK_UPLOAD, Refused, UploadLimits, decode, size_text
from engine.data.images import limits_text as limits_text
from engine.data.imageset import is_gray, normalise_polarity, to_pixels
from engine.errors import UserError
from engine.eval.calibration import Calibration
from engine.eval.checkpoints import held_out_classes, load_model
from engine.models.deml import DEMLModel, eval_mode
from engine.runs import inside_runs_root
from engine.viz.episode import UNKNOWN, EpisodeDetail, episode_detail
from engine.viz.episode import task_detail as lay_out_task

# ----------------------------------------------------------------------------------------------
# Upload limits: engine.data.images' TASK_UPLOAD (with IMAGE_TYPES, limits_text), re-exported for the Adapt page
# ----------------------------------------------------------------------------------------------
LIMITS = TASK_UPLOAD
REDUCE_TO = 256  # px: larger uploads are box-reduced to at least this per side while decoding (decode's reduce_to)


@dataclass
class Upload:
    """One file the person gave: its name (for messages) and its bytes."""

    name: str
    data: bytes


@dataclass
class NewClass:
    name: str
    support: list[Upload]
    queries: list[Upload] = field(default_factory=list)  # query images known to show this class


# ----------------------------------------------------------------------------------------------
# A task, prepared for the run's model
# ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    """Images prepared like the run's training data: uint8 (M, H, W, C)."""

    support: np.ndarray
    support_labels: np.ndarray  # int64 (S,) in 0..N-1
    query: np.ndarray
    query_labels: np.ndarray  # int64 (M,) in 0..N-1, or UNKNOWN
    class_names: list[str]
    support_names: list[str]  # file names, or "image 123" (index in the held-out set)
    query_names: list[str]
    source: str
    problems: list[str] = field(default_factory=list)  # rejected or fixed files, each named
    inverted: bool = False  # flipped to bright-on-dark
    sampler: EpisodeSampler | None = None  # sampled tasks: where they came from
    index: EpisodeIndex | None = None

    @property
    def ways(self) -> int:
        return len(self.class_names)

    @property
    def labelled(self) -> np.ndarray:
        return self.query_labels != UNKNOWN

    def support_of(self, c: int) -> np.ndarray:
        return self.support[self.support_labels == c]


def load_run(run_dir: str, root=None) -> tuple[TrainConfig, DEMLModel, torch.device]:
    """The run's trained model (engine.eval.checkpoints.load_model), for a run strictly inside the
    runs root (`root`, default runs_root()) only; anything else is a UserError, never opened."""
    inside_runs_root(run_dir, root)
    return load_model(run_dir)


def sample_task(cfg: TrainConfig, ways: int | None = None, shots: int | None = None, queries: int | None = None,
                seed: int = 0) -> Task:
    """Task `seed` among the run's held-out classes: the first task of sampler.fixed(1, seed), so
    engine.eval.evaluate on that index sees exactly the same images."""
    data = held_out_classes(cfg)
    sampler = EpisodeSampler(data, ways or cfg.ways, shots or cfg.shots, queries or cfg.queries)
    index = sampler.fixed(1, seed)
    n, k, q = sampler.ways, sampler.shots, sampler.queries
    s_idx, q_idx = index.support[0], index.query[0]
    return Task(
        support=np.asarray(data.images[s_idx]), support_labels=class_major_labels(n, k)[0].numpy(),
        query=np.asarray(data.images[q_idx]), query_labels=class_major_labels(n, q)[0].numpy(),
        class_names=[data.class_names[c] for c in index.classes[0]],
        support_names=[f"image {i}" for i in s_idx], query_names=[f"image {i}" for i in q_idx],
        source=f"held-out classes of {cfg.dataset}", inverted=data.inverted, sampler=sampler, index=index)


# ----------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------
def _decode(up: Upload, limits: UploadLimits, problems: list[str]) -> Image.Image | None:
    """Bytes -> a loaded PIL image (engine.data.images.decode), or None with a problem line naming
    the file and the reason."""
    where = up.name or "unnamed file"
    notes: list[str] = []
    try:
        img = decode(up.data, limits, reduce_to=REDUCE_TO, notes=notes)
    except Refused as e:
        problems.append(f"{where}: {e}, left out")
        return None
    problems.extend(f"{where}: {note}" for note in notes)
    return img


def _class_names(classes: list[NewClass], limits: UploadLimits) -> list[str]:
    names = []
    for i, c in enumerate(classes):
        name = " ".join(str(c.name or "").split())[: limits.max_name_chars] or f"class {i + 1}"
        names.append(name)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name.lower() in seen:
            raise UserError(f"classes {seen[name.lower()] + 1} and {i + 1} are both named {name!r}; give each "
                            "class its own name")
        seen[name.lower()] = i
    return names


def prepare_upload(cfg: TrainConfig, classes: list[NewClass], queries: list[Upload] = (),
                   limits: UploadLimits = LIMITS) -> Task:
    """An uploaded task prepared like the run's training data. Files that cannot be used are left
    out and named in `problems`; a class left with no support image is dropped (named too). Raises
    UserError when what remains is no task (fewer than 2 classes, no queries, over the limits)."""
    if not limits.min_classes <= len(classes) <= limits.max_classes:
        raise UserError(f"a task needs {limits.min_classes} to {limits.max_classes} classes; got {len(classes)}")
    names = _class_names(classes, limits)
    everything = [u for c in classes for u in (*c.support, *c.queries)] + list(queries)
    total = sum(len(u.data) for u in everything)
    if total > limits.max_upload_bytes:
        raise UserError(f"the uploaded images add up to {size_text(total)}, over the "
                        f"{size_text(limits.max_upload_bytes)} limit; use fewer or smaller images")
    problems: list[str] = []
    support: list[tuple[int, str, Image.Image]] = []
    labelled: list[tuple[int, str, Image.Image]] = []
    for c, (name, cls) in enumerate(zip(names, classes)):
        for i, up in enumerate(cls.support):
            if i >= limits.max_support:
                problems.append(f"{up.name}: class {name!r} already has {limits.max_support} support images "
                                f"(the limit), left out")
                continue
            if (img := _decode(up, limits, problems)) is not None:
                support.append((c, up.name, img))
        for up in cls.queries:
            if (img := _decode(up, limits, problems)) is not None:
                labelled.append((c, up.name, img))
    unlabelled = [(UNKNOWN, up.name, img) for up in queries if (img := _decode(up, limits, problems)) is not None]
    found = labelled + unlabelled
    if len(found) > limits.max_queries:
        for _, fname, _ in found[limits.max_queries:]:
            problems.append(f"{fname}: over the {limits.max_queries} query images of a task, left out")
        found = found[: limits.max_queries]
    kept = [c for c in range(len(names)) if any(s[0] == c for s in support)]
    for c in range(len(names)):
        if c not in kept:
            problems.append(f"class {names[c]!r}: no usable support image, left out of the task"
                            + (" with its labelled queries" if any(q[0] == c for q in found) else ""))
    if len(kept) < limits.min_classes:
        shown = "; ".join(problems[:4])
        raise UserError(f"only {len(kept)} class(es) have a usable support image; a task needs at least "
                        f"{limits.min_classes}" + (f" ({shown})" if shown else ""))
    remap = {c: i for i, c in enumerate(kept)}
    support = [(remap[c], f, img) for c, f, img in support]
    found = [(remap.get(c, None) if c != UNKNOWN else UNKNOWN, f, img) for c, f, img in found]
    found = [q for q in found if q[0] is not None]
    if not found:
        raise UserError("add at least one query image: the images the adapted learner should classify"
                        + (f" ({'; '.join(problems[:4])})" if problems else ""))
    channels = cfg.channels
    if channels is None:
        channels = 1 if all(is_gray(img) for _, _, img in support + found) else 3
    size = cfg.image_size or cfg.preprocess().resolved_size(channels)
    pixels = np.stack([to_pixels(img, channels, size) for _, _, img in support + found])
    pixels, inverted = normalise_polarity(pixels, cfg.polarity)
    if cfg.polarity == "auto" and channels == 1:
        bright = _bright_borders(pixels if not inverted else 255 - pixels)
        files = [f for _, f, _ in support + found]
        odd = [f for f, b in zip(files, bright) if b != inverted]
        if odd:
            problems.append(f"{', '.join(odd[:6])}{' ...' if len(odd) > 6 else ''}: "
                            f"{'dark' if inverted else 'bright'} background unlike the rest of the task; "
                            f"the task was {'flipped to' if inverted else 'kept as'} bright ink on a dark background "
                            "as a whole, so these may be misread")
    s = len(support)
    return Task(
        support=np.ascontiguousarray(pixels[:s]), support_labels=np.asarray([c for c, _, _ in support], np.int64),
        query=np.ascontiguousarray(pixels[s:]), query_labels=np.asarray([c for c, _, _ in found], np.int64),
        class_names=[names[c] for c in kept], support_names=[f for _, f, _ in support],
        query_names=[f for _, f, _ in found], source="uploaded images", problems=problems, inverted=inverted)


def photo_task(task: Task, photo: Upload, limits: UploadLimits = LIMITS) -> Task:
    """The task with one photo (the webcam's) as its only query, prepared like the task's images: its
    size and channels, and flipped when the task was. UserError when the photo cannot be read."""
    problems: list[str] = []
    img = _decode(photo, limits, problems)
    if img is None:
        raise UserError("; ".join(problems) or f"{photo.name}: not a readable image")
    pixels = to_pixels(img, task.support.shape[-1], task.support.shape[1])
    pixels = 255 - pixels if task.inverted else pixels
    return Task(support=task.support, support_labels=task.support_labels, query=pixels[None],
                query_labels=np.asarray([UNKNOWN], np.int64), class_names=task.class_names,
                support_names=task.support_names, query_names=[photo.name], source=task.source,
                problems=problems, inverted=task.inverted)


def _bright_borders(images: np.ndarray) -> np.ndarray:
    """Per image: are its borders mostly bright (the test normalise_polarity applies to a set)?"""
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    return border.reshape(len(images), -1).mean(1) > 127


def image_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 (H, W, C) -> encoded image bytes (tests and downloads)."""
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Classifying the queries
# ----------------------------------------------------------------------------------------------
def _tensors(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Support (S, C, H, W) and query (M, C, H, W) images as floats in [0, 1]."""
    return channels_first(task.support).float().div_(255.0), channels_first(task.query).float().div_(255.0)


def classify(model: DEMLModel, task: Task, device, steps: int | None = None,
             calibration: Calibration | None = None) -> dict:
    """Each query's predicted class and confidence. pred (M,), confidence (M,), probs (M, N);
    score (M,) the learner's largest logit; correct (M,) bool (False where the label is unknown);
    accuracy over the labelled queries (None when none is labelled).
    With a `calibration` (engine.eval.calibration): probs are softmax(logits / its temperature), and
    unknown (M,) marks the queries scoring below its threshold: they are answered "none of these",
    so they count as not right. Without one, unknown is all False."""
    xs, xq = _tensors(task)
    with eval_mode(model):
        z = model.concepts(torch.cat([xs, xq]).to(device))  # one pass, as engine.eval.evaluate computes them
        zs, zq = z[: len(xs)], z[len(xs):]
        labels = torch.as_tensor(task.support_labels, device=device)[None]
        logits = model.learner.logits(zs[None], labels, zq[None], task.ways, steps=steps, training=False)
        raw = logits.detach()[0].float().cpu()
    t = calibration.temperature if calibration is not None else 1.0
    probs = torch.softmax(raw / t, -1).numpy()
    score = raw.max(-1).values.numpy()
    unknown = score < calibration.unknown_below if calibration is not None else np.zeros(len(score), bool)
    pred = probs.argmax(-1)
    known = task.labelled
    correct = (pred == task.query_labels) & known & ~unknown
    return {"pred": pred, "confidence": probs.max(-1), "probs": probs, "correct": correct, "score": score,
            "unknown": unknown,
            "labelled": int(known.sum()),
            "accuracy": float(correct[known].mean()) if known.any() else None}


def task_detail(model: DEMLModel, task: Task, device, steps: int | None = None, grid: int = 50) -> EpisodeDetail:
    """The task laid out in concept space, for engine.viz.charts.episode_view (queries without a
    label get the learner's answer as their label; `query_known` says which are real). Sampled
    tasks go through episode_detail, so the hover shows their index in the held-out set."""
    if task.sampler is not None and task.index is not None:
        detail = episode_detail(model, task.sampler, task.index, device, 0, steps, grid)
    else:
        xs, xq = _tensors(task)
        detail = lay_out_task(model, xs, task.support_labels, xq, task.query_labels, task.class_names, device,
                              steps, grid)
        detail["support_images"] = np.asarray(task.support_names, dtype=object)
        detail["query_images"] = np.asarray(task.query_names, dtype=object)
    return detail
