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
out in concept space for engine.viz.charts.episode_view (engine.viz.episode.episode_detail for sampled
tasks); `compare_held_out` puts the run next to its lambda = 0 twin on the very same held-out
episodes: accuracy with 95% CIs, the paired difference, and both adaptation curves.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from sklearn.decomposition import PCA
from torch.func import vmap

from engine.config import TrainConfig
from engine.data.episodes import EpisodeIndex, EpisodeSampler, channels_first, take
from engine.data.imageset import ImageSet, is_gray, normalise_polarity, to_pixels
from engine.errors import UserError
from engine.viz.episode import task_regions
from engine.eval.evaluate import TASK_CHUNK, mean_ci95
from engine.eval.checkpoints import CURVE_SHOTS, evaluation_classes, load_trained
from engine.learners.base import per_task_cross_entropy
from engine.learners.head import head_logits
from engine.learners.protonet import prototypes
from engine.models.deml import DEMLModel
from engine.runs import RunDir

UNKNOWN = -1  # query label of an image whose class the person did not say


# ----------------------------------------------------------------------------------------------
# Upload limits
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadLimits:
    min_classes: int = 2
    max_classes: int = 10
    max_support: int = 5  # support images per class (at least 1)
    max_queries: int = 40  # query images in all (labelled, unlabelled and camera together)
    max_file_bytes: int = 8 * 2**20
    max_total_bytes: int = 40 * 2**20
    min_side: int = 8  # px
    max_side: int = 4096  # px, checked from the header before decoding
    max_name: int = 40  # characters of a class name


LIMITS = UploadLimits()
IMAGE_TYPES = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff")


def limits_text(limits: UploadLimits = LIMITS) -> str:
    """The limits, as the page states them."""
    return (f"{limits.min_classes}-{limits.max_classes} classes, 1-{limits.max_support} support images per class, "
            f"up to {limits.max_queries} query images; {', '.join(t.upper() for t in IMAGE_TYPES if t != 'jpeg')}; "
            f"at most {limits.max_file_bytes // 2**20} MB per image and {limits.max_total_bytes // 2**20} MB in all; "
            f"{limits.min_side}-{limits.max_side} px per side")


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


@lru_cache(maxsize=4)
def held_out_classes(cfg: TrainConfig) -> ImageSet:
    """The run's meta-test classes, prepared as its training data (cached: splitting takes a moment)."""
    return evaluation_classes(cfg, None, "test")


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
        support=np.asarray(data.images[s_idx]), support_labels=np.repeat(np.arange(n), k),
        query=np.asarray(data.images[q_idx]), query_labels=np.repeat(np.arange(n), q),
        class_names=[data.class_names[c] for c in index.classes[0]],
        support_names=[f"image {i}" for i in s_idx], query_names=[f"image {i}" for i in q_idx],
        source=f"held-out classes of {cfg.dataset}", inverted=data.inverted, sampler=sampler, index=index)


# ----------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------
def _decode(up: Upload, limits: UploadLimits, problems: list[str]) -> Image.Image | None:
    """Bytes -> a loaded PIL image, or None with a problem line naming the file and the reason."""
    from engine.data.sources import _decode as decode_bytes
    from engine.data.sources import _Problems

    where = up.name or "unnamed file"
    if not up.data:
        problems.append(f"{where}: empty file, left out")
        return None
    if len(up.data) > limits.max_file_bytes:
        problems.append(f"{where}: {len(up.data) / 2**20:.1f} MB is over the {limits.max_file_bytes // 2**20} MB "
                        "limit per image, left out")
        return None
    try:
        with Image.open(io.BytesIO(up.data)) as probe:
            w, h = probe.size
    except Exception:  # noqa: BLE001 - reported below by the decoder with its reason
        w = h = None
    if w is not None:
        if max(w, h) > limits.max_side:
            problems.append(f"{where}: {w}x{h} px is over the {limits.max_side} px limit per side, left out")
            return None
        if min(w, h) < limits.min_side:
            problems.append(f"{where}: {w}x{h} px is under the {limits.min_side} px minimum per side, left out")
            return None
    found = _Problems()
    img = decode_bytes(up.data, where, found, reduce_to=256)
    problems.extend(line if line.endswith("left out") or img is not None else f"{line}; left out"
                    for line in found.lines())
    return img


def _class_names(classes: list[NewClass], limits: UploadLimits) -> list[str]:
    names = []
    for i, c in enumerate(classes):
        name = " ".join(str(c.name or "").split())[: limits.max_name] or f"class {i + 1}"
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
    if total > limits.max_total_bytes:
        raise UserError(f"the uploaded images add up to {total / 2**20:.1f} MB, over the "
                        f"{limits.max_total_bytes // 2**20} MB limit; use fewer or smaller images")
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
# Models
# ----------------------------------------------------------------------------------------------
_models: OrderedDict = OrderedDict()
_models_lock = threading.Lock()
MODEL_CACHE = 4


def checkpoint_stamp(run_dir: str) -> tuple:
    """What identifies the weights a run would load now (its newest checkpoint's name and time)."""
    ckpts = RunDir(run_dir).checkpoints()
    if not ckpts:
        return ()
    st = ckpts[-1].stat()
    return ckpts[-1].name, st.st_mtime_ns, st.st_size


def load_model(run_dir: str, device: str = "auto") -> tuple[TrainConfig, DEMLModel, torch.device]:
    """engine.eval.checkpoints.load_trained, cached per run and checkpoint (a newer checkpoint reloads).
    The models are shared between sessions: only ever used in eval mode, never changed."""
    RunDir.open(run_dir)
    key = (os.path.realpath(run_dir), checkpoint_stamp(run_dir), device)
    with _models_lock:
        hit = _models.get(key)
        if hit is not None:
            _models.move_to_end(key)
            return hit
    loaded = load_trained(run_dir, device)
    with _models_lock:
        _models[key] = loaded
        while len(_models) > MODEL_CACHE:
            _models.popitem(last=False)
    return loaded


# ----------------------------------------------------------------------------------------------
# Classifying the queries
# ----------------------------------------------------------------------------------------------
def _tensors(task: Task, device) -> tuple[torch.Tensor, torch.Tensor]:
    def prep(images):
        return channels_first(images).float().div_(255.0).to(device)
    return prep(task.support), prep(task.query)


def _concepts(model: DEMLModel, task: Task, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query concepts from one pass, as engine.eval.evaluate computes them."""
    xs, xq = _tensors(task, device)
    z = model.concepts(torch.cat([xs, xq]))
    return z[: len(xs)], z[len(xs):]


def classify(model: DEMLModel, task: Task, device, steps: int | None = None) -> dict:
    """Each query's predicted class and confidence. pred (M,), confidence (M,), probs (M, N);
    correct (M,) bool (False where the label is unknown); accuracy over the labelled queries (None
    when none is labelled)."""
    was_training = model.training
    model.eval()
    try:
        zs, zq = _concepts(model, task, device)
        labels = torch.as_tensor(task.support_labels, device=device)[None]
        logits = model.learner.logits(zs[None], labels, zq[None], task.ways, steps=steps, training=False)
        probs = torch.softmax(logits.detach()[0].float(), -1).cpu().numpy()
    finally:
        model.train(was_training)
    pred = probs.argmax(-1)
    known = task.labelled
    correct = (pred == task.query_labels) & known
    return {"pred": pred, "confidence": probs.max(-1), "probs": probs, "correct": correct,
            "labelled": int(known.sum()),
            "accuracy": float(correct[known].mean()) if known.any() else None}


def task_detail(model: DEMLModel, task: Task, device, steps: int | None = None, grid: int = 50) -> dict:
    """The task laid out in concept space, for engine.viz.charts.episode_view. Sampled tasks go
    through engine.viz.episode.episode_detail; uploaded ones through the same computation here, on
    tensors instead of a sampler (support shots may differ per class). Queries without a label
    are given the learner's answer as their label, and `query_known` says which are real."""
    if task.sampler is not None and task.index is not None:
        from engine.viz.episode import episode_detail
        detail = episode_detail(model, task.sampler, task.index, device, 0, steps, grid)
        detail["query_known"] = np.ones(len(task.query), bool)
        detail["support_names"], detail["query_names"] = task.support_names, task.query_names
        return detail
    learner, ways = model.learner, task.ways
    was_training = model.training
    model.eval()
    try:
        xs, xq = _tensors(task, device)
        zs = model.concepts(xs)[None]  # (1, S, D)
        zq = model.concepts(xq)[None]  # (1, M, D)
        labels = torch.as_tensor(task.support_labels, device=device)[None]

        def answer(queries):
            return learner.logits(zs, labels, queries, ways, steps=steps, training=False).detach()[0]

        query_pred = answer(zq).argmax(-1).cpu().numpy()
        known = task.labelled
        pca = PCA(n_components=2, random_state=0).fit(torch.cat([zs[0], zq[0]]).cpu().numpy())
        detail = {
            "support_xy": pca.transform(zs[0].cpu().numpy()),
            "support_labels": np.asarray(task.support_labels),
            "query_xy": pca.transform(zq[0].cpu().numpy()),
            "query_labels": np.where(known, task.query_labels, query_pred),
            "query_pred": query_pred,
            "query_known": known,
            "class_names": list(task.class_names),
            "support_images": np.asarray(task.support_names, dtype=object),
            "query_images": np.asarray(task.query_names, dtype=object),
            "support_names": task.support_names, "query_names": task.query_names,
            "learner": learner.name,
        }
        if learner.adapts_by_steps:
            path = learner.adapt(zs, labels, ways, steps, training=False)
            steps_pred = np.stack([
                vmap(head_logits)({k: v.detach() for k, v in params.items()}, zq)[0].argmax(-1).cpu().numpy()
                for params in path])  # (S+1, M)
            if known.all():  # the slider rings queries right/wrong at each step: only with every label known
                detail["steps_pred"] = steps_pred
            detail["steps_pred_all"] = steps_pred
        else:
            protos = prototypes(zs, labels, ways)[0]
            detail["prototypes_xy"] = pca.transform(protos.cpu().numpy())
        detail["regions"] = task_regions(pca, detail, answer, grid, device)
    finally:
        model.train(was_training)
    return detail




NO_LABEL_RING = "#9AA1AC"


def episode_figure(detail: dict, title: str | None = None) -> go.Figure:
    """engine.viz.charts.episode_view, with queries whose class is unknown drawn with a grey ring and
    left out of the accuracy line (the chart itself assumes every query is labelled)."""
    from engine.viz.charts import episode_view

    fig = episode_view(detail, title=title)
    known = np.asarray(detail.get("query_known", np.ones(len(detail["query_xy"]), bool)), bool)
    if known.all():
        return fig
    for trace in fig.data:
        if not str(trace.name or "").startswith("query, answered") or trace.customdata is None:
            continue
        rows = np.asarray([int(r[0]) for r in trace.customdata])
        if not len(rows):
            continue
        unknown = ~known[rows]
        if not unknown.any():
            continue
        base = trace.marker.line.color
        trace.marker.line.color = [NO_LABEL_RING if u else base for u in unknown]
        custom = np.asarray(trace.customdata, dtype=object).copy()
        custom[unknown, 1] = "(no label)"
        trace.customdata = custom
        trace.hovertemplate = ("query: <b>%{customdata[1]}</b><br>answered: %{customdata[2]}"
                               "<br>image %{customdata[3]}<extra></extra>")
        if unknown.all():
            trace.name = "query without a label (fill = the answer)"
    for trace in fig.data:  # an empty right/wrong trace would only clutter the legend
        if str(trace.name or "").startswith("query, answered") and not len(trace.x if trace.x is not None else []):
            trace.showlegend = False
    right = int(((np.asarray(detail["query_pred"]) == np.asarray(detail["query_labels"])) & known).sum())
    line = (f"{right}/{int(known.sum())} labelled queries right" if known.any() else "no query is labelled") + \
        f" · {int((~known).sum())} without a label: grey ring, filled with the learner's answer"
    for a in fig.layout.annotations:
        if a.name == "subtitle":
            a.text = a.text.rsplit("<br>", 1)[0] + "<br>" + line
    return fig


# ----------------------------------------------------------------------------------------------
# The run next to its lambda = 0 twin, on the same held-out episodes
# ----------------------------------------------------------------------------------------------
def run_label(cfg: TrainConfig) -> str:
    return f"{cfg.learner} " + ("vanilla (λ = 0)" if cfg.lam == 0 else f"DEML (λ = {cfg.lam:g})")


def index_digest(index: EpisodeIndex) -> str:
    """A fingerprint of a set of episodes (which images, in which roles)."""
    h = hashlib.sha256()
    for a in (index.support, index.query, index.classes):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def curve_sampler(model: DEMLModel, data: ImageSet, sampler: EpisodeSampler) -> EpisodeSampler:
    """Gradient learners: the task sampler itself (curve over inner steps). Metric learners: one
    with up to CURVE_SHOTS shots, as engine.eval.checkpoints.run_evaluation draws its shot curves."""
    if model.learner.adapts_by_steps:
        return sampler
    w, q = sampler.ways, sampler.queries
    room = int(np.sort(data.counts())[-w]) - q if data.num_classes >= w else sampler.shots
    shots = max(sampler.shots, min(CURVE_SHOTS, room))
    return sampler if shots == sampler.shots else EpisodeSampler(data, w, shots, q)


SCORE_CHUNK = 512  # images per forward pass of the generator


def held_out_scores(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device,
                    max_steps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode query accuracy and loss along the adaptation axis, two (points, E) arrays:
    gradient learners after 0..max_steps inner steps; metric learners with the first 1..K shots of
    each class. The same numbers as engine.eval.evaluate.adaptation_curve, but every image the episodes
    use goes through the generator once (episodes share images, and the shot curve reuses them),
    which makes a comparison of two runs several times cheaper."""
    was_training = model.training
    model.eval()
    try:
        used = np.unique(np.concatenate([index.support.ravel(), index.query.ravel()]))
        z = torch.cat([model.concepts(sampler.images[torch.from_numpy(used[i:i + SCORE_CHUNK])].to(device)
                                      .float().div_(255.0)) for i in range(0, len(used), SCORE_CHUNK)])

        def rows(idx: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.searchsorted(used, idx)).to(device)

        n, k_max, q = sampler.ways, sampler.shots, sampler.queries
        labels = torch.arange(n, device=device)
        accs, losses = [], []
        for start in range(0, len(index.classes), TASK_CHUNK):
            part = take(index, start, start + TASK_CHUNK)
            t = len(part.classes)
            zs, zq = z[rows(part.support)], z[rows(part.query)]  # (t, N*K, D), (t, N*Q, D)
            ql = labels.repeat_interleave(q).expand(t, -1)
            if model.learner.adapts_by_steps:
                sl = labels.repeat_interleave(k_max).expand(t, -1)
                loss, acc = model.learner.trace(zs, sl, zq, ql, n, max_steps)  # (S+1, t) each
            else:
                per_k = []
                for k in range(1, k_max + 1):
                    zk = zs.reshape(t, n, k_max, -1)[:, :, :k].reshape(t, n * k, -1)
                    logits = model.learner.logits(zk, labels.repeat_interleave(k).expand(t, -1), zq, n, training=False)
                    per_k.append((per_task_cross_entropy(logits, ql), (logits.argmax(-1) == ql).float().mean(-1)))
                loss, acc = torch.stack([p[0] for p in per_k]), torch.stack([p[1] for p in per_k])
            accs.append(acc.detach().cpu())
            losses.append(loss.detach().cpu())
    finally:
        model.train(was_training)
    return torch.cat(accs, 1).numpy(), torch.cat(losses, 1).numpy()


def _curve(model: DEMLModel, sampler: EpisodeSampler, acc: np.ndarray, loss: np.ndarray, episodes: int,
           seed: int) -> dict:
    """The scores as engine.eval.evaluate.adaptation_curve reports them (what the charts read)."""
    by_steps = model.learner.adapts_by_steps
    points = list(range(len(acc))) if by_steps else list(range(1, len(acc) + 1))
    a = [mean_ci95(v) for v in acc]
    lo = [mean_ci95(v) for v in loss]
    return {"episodes": episodes, "ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries,
            "seed": seed, "learner": model.learner.name, "axis": "steps" if by_steps else "shots", "steps": points,
            "accuracy": [m for m, _ in a], "accuracy_ci95": [c for _, c in a],
            "loss": [m for m, _ in lo], "loss_ci95": [c for _, c in lo]}


def compare_held_out(run_dir: str, twin_dir: str | None = None, ways: int | None = None, shots: int | None = None,
                     queries: int | None = None, episodes: int = 100, seed: int = 0, steps: int | None = None,
                     curve_steps: int = 10, device: str = "auto", progress=None) -> dict:
    """Accuracy (95% CI) and the adaptation curve of the run, and of its twin when given, on the
    SAME held-out episodes: one sampler over the run's meta-test classes, one fixed set of
    episodes (`curve_sampler(...).fixed(episodes, seed)`) scored by both models.

    The accuracy is the N-way K-shot one (K = `shots`): for gradient learners after `steps` inner
    steps (default: the run's) of those episodes; for metric learners on the first K shots of
    each class of the curve's episodes (which hold up to CURVE_SHOTS shots). `per_episode` keeps
    each episode's accuracy, and `difference` is DEML minus its twin, paired episode by episode.
    progress(fraction, text) is called along the way."""
    say = progress or (lambda fraction, text: None)
    cfg, model, dev = load_model(run_dir, device)
    data = held_out_classes(cfg)
    sampler = EpisodeSampler(data, ways or cfg.ways, shots or cfg.shots, queries or cfg.queries)
    entries = [(run_dir, cfg, model)]
    if twin_dir:
        tcfg, tmodel, _ = load_model(twin_dir, device)
        mine = {k: v for k, v in cfg.to_dict().items() if k not in ("lam",)}
        theirs = {k: v for k, v in tcfg.to_dict().items() if k not in ("lam",)}
        if mine != theirs:
            differ = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise UserError(f"{twin_dir} is not a λ = 0 twin of {run_dir}: they differ in {', '.join(differ)}")
        twin_data = held_out_classes(tcfg)
        if (twin_data.class_names != data.class_names or len(twin_data.images) != len(data.images)
                or not np.array_equal(twin_data.labels, data.labels)):
            raise UserError(f"{twin_dir} holds out other classes than {run_dir}; they cannot be compared")
        entries.append((twin_dir, tcfg, tmodel))
    c_sampler = curve_sampler(model, data, sampler)
    index = c_sampler.fixed(episodes, seed)
    steps = cfg.inner_steps if steps is None else steps
    results = []
    for i, (path, c, m) in enumerate(entries):
        say(i / len(entries), f"{run_label(c)}: {episodes} held-out episodes")
        acc, loss = held_out_scores(m, c_sampler, index, dev, max(curve_steps, steps))
        curve = _curve(m, c_sampler, acc, loss, episodes, seed)
        if m.learner.adapts_by_steps:
            curve = {**curve, **{k: curve[k][: curve_steps + 1] for k in
                                 ("steps", "accuracy", "accuracy_ci95", "loss", "loss_ci95")}}
        at = steps if m.learner.adapts_by_steps else sampler.shots - 1
        mean, ci = mean_ci95(acc[at])
        results.append({"run_dir": str(path), "label": run_label(c), "lam": c.lam, "learner": c.learner,
                        "accuracy": mean, "ci95": ci, "per_episode": acc[at].tolist(), "curve": curve,
                        "episodes_digest": index_digest(index)})
    say(1.0, "done")
    out = {"ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries, "episodes": episodes,
           "seed": seed, "steps": steps if model.learner.adapts_by_steps else None, "classes": data.num_classes,
           "runs": results, "difference": None, "warnings": c_sampler.warnings()}
    if len(results) == 2:  # DEML minus its lambda = 0 twin, episode by episode
        deml, vanilla = sorted(results, key=lambda r: r["lam"] == 0)
        diff = np.asarray(deml["per_episode"]) - np.asarray(vanilla["per_episode"])
        mean, ci = mean_ci95(diff)
        out["difference"] = {"accuracy": mean, "ci95": ci, "deml": deml["run_dir"], "vanilla": vanilla["run_dir"],
                             "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "ties": int((diff == 0).sum())}
    return out
