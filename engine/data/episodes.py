"""N-way K-shot Q-query tasks, stacked along a leading task axis."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.data.imageset import ImageSet
from engine.errors import UserError


@dataclass
class EpisodeIndex:
    """Which images make up T tasks; cheap to keep for fixed validation/test sets."""

    support: np.ndarray  # (T, N*K) image indices, class-major: class 0's K shots, then class 1's...
    query: np.ndarray  # (T, N*Q) image indices, class-major
    classes: np.ndarray  # (T, N) class ids in the sampler's ImageSet


@dataclass
class Episode:
    support: torch.Tensor  # (T, N*K, C, H, W) float in [0, 1]
    support_labels: torch.Tensor  # (T, N*K) int64 in 0..N-1
    query: torch.Tensor  # (T, N*Q, C, H, W)
    query_labels: torch.Tensor  # (T, N*Q)
    classes: torch.Tensor  # (T, N) class ids in the sampler's ImageSet

    @property
    def tasks(self) -> int:
        return self.support.shape[0]

    def to(self, device) -> Episode:
        nb = device.type == "cuda"  # pinned host memory lets the copy overlap compute
        return Episode(*(t.to(device, non_blocking=nb) for t in
                         (self.support, self.support_labels, self.query, self.query_labels, self.classes)))


class EpisodeSampler:
    """Draws tasks from the classes of one split that have at least K+Q images.

    Classes with fewer images are left out and named in `skipped` (a warning for people).
    """

    def __init__(self, data: ImageSet, ways: int, shots: int, queries: int):
        if ways < 2 or shots < 1 or queries < 1:
            raise UserError(f"a task needs ways >= 2, shots >= 1 and queries >= 1 (got {ways}, {shots}, {queries})")
        self.data, self.ways, self.shots, self.queries = data, ways, shots, queries
        per_class = data.class_indices()
        need = shots + queries
        self.eligible = [c for c, idx in enumerate(per_class) if len(idx) >= need]
        self.skipped = [data.class_names[c] for c, idx in enumerate(per_class) if len(idx) < need]
        if len(self.eligible) < ways:
            skipped = f" ({len(self.skipped)} left out for having fewer than {need} images)" if self.skipped else ""
            raise UserError(
                f"{data.source}: {len(self.eligible)} classes have at least {need} images (shots + queries)"
                f"{skipped}, but a {ways}-way task needs {ways}; lower --ways, --shots or --queries, or add classes"
            )
        self._per_class = per_class
        self.images = channels_first(data.images)  # uint8 (M, C, H, W)

    def warnings(self) -> list[str]:
        if not self.skipped:
            return []
        names = ", ".join(repr(n) for n in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return [f"{self.data.source}: {len(self.skipped)} classes have fewer than "
                f"{self.shots + self.queries} images (shots + queries) and are left out: {names}"]

    def draw(self, tasks: int, rng: np.random.Generator) -> EpisodeIndex:
        n, k, q = self.ways, self.shots, self.queries
        classes = np.stack([rng.choice(self.eligible, n, replace=False) for _ in range(tasks)])  # (T, N)
        picks = np.stack([
            np.stack([rng.choice(self._per_class[c], k + q, replace=False) for c in row]) for row in classes
        ])  # (T, N, K+Q)
        return EpisodeIndex(
            support=picks[:, :, :k].reshape(tasks, n * k),
            query=picks[:, :, k:].reshape(tasks, n * q),
            classes=classes,
        )

    def fixed(self, count: int, seed: int) -> EpisodeIndex:
        """A reproducible set of tasks (validation/test): same seed, same tasks."""
        return self.draw(count, np.random.default_rng([seed, 0xE7A1]))

    def support_shots(self, support: np.ndarray, shots: int | None) -> np.ndarray:
        """(T, N*K) support indices -> (T, N*shots): the first `shots` of each class (shot curves)."""
        n, k = self.ways, self.shots
        if shots is None or shots == k:
            return support
        if not 1 <= shots <= k:  # more would label shots that are not there
            raise ValueError(f"shots must be 1..{k} for these episodes, not {shots}")
        return support.reshape(len(support), n, k)[:, :, :shots].reshape(len(support), -1)

    def materialize(self, index: EpisodeIndex, shots: int | None = None) -> Episode:
        """Index -> tensors. `shots` < K keeps only the first shots of each class (shot curves)."""
        n, support = self.ways, self.support_shots(index.support, shots)
        k, t, q = support.shape[1] // n, len(support), self.queries
        return Episode(
            support=self._pixels(support),
            support_labels=class_major_labels(n, k, t),
            query=self._pixels(index.query),
            query_labels=class_major_labels(n, q, t),
            classes=torch.from_numpy(index.classes),
        )

    def sample(self, tasks: int, rng: np.random.Generator) -> Episode:
        return self.materialize(self.draw(tasks, rng))

    def _pixels(self, idx: np.ndarray) -> torch.Tensor:
        flat = torch.from_numpy(idx.reshape(-1))
        x = self.images[flat].float().div_(255.0)  # (T*n, C, H, W)
        return x.view(*idx.shape, *x.shape[1:])


class HeldOutSampler(EpisodeSampler):
    """Validation on held-out images of the training classes: each task's queries are held-out
    images (held_out True), its support the class's training images (held_out False)."""

    def __init__(self, data: ImageSet, held_out: np.ndarray, ways: int, shots: int, queries: int):
        per_class = data.class_indices()
        self.split = [(idx[~held_out[idx]], idx[held_out[idx]]) for idx in per_class]
        ok = [c for c, (s, q) in enumerate(self.split) if len(s) >= shots and len(q) >= queries]
        if len(ok) < ways:
            raise UserError(f"{data.source}: {len(ok)} classes have {shots} training images (shots) and "
                            f"{queries} held-out images (queries), but a {ways}-way task needs {ways}")
        super().__init__(data, ways, 1, 1)
        self.shots, self.queries, self.eligible, self.skipped = shots, queries, ok, []

    def draw(self, tasks: int, rng: np.random.Generator) -> EpisodeIndex:
        n, k, q = self.ways, self.shots, self.queries
        classes = np.stack([rng.choice(self.eligible, n, replace=False) for _ in range(tasks)])  # (T, N)
        support = np.stack([np.concatenate([rng.choice(self.split[c][0], k, replace=False) for c in row])
                            for row in classes])
        query = np.stack([np.concatenate([rng.choice(self.split[c][1], q, replace=False) for c in row])
                          for row in classes])
        return EpisodeIndex(support=support, query=query, classes=classes)


def class_major_labels(ways: int, per_class: int, tasks: int = 1, device=None) -> torch.Tensor:
    """Task labels of T tasks' rows, class-major (class 0's rows, then class 1's...): (T, N*per_class).
    The one place the layout of an episode's labels is written (support: per_class = K, query: Q)."""
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(tasks, -1).contiguous()


def channels_first(images: np.ndarray) -> torch.Tensor:
    """uint8 (M, H, W, C) numpy (possibly read-only, shared) -> uint8 (M, C, H, W) tensor of our own."""
    # always a copy: with one channel the transpose is already contiguous, and ascontiguousarray
    # would hand back a view of the (read-only, shared) array
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy(order="C"))


def take(index: EpisodeIndex, start: int, stop: int) -> EpisodeIndex:
    """Tasks start..stop-1 of a fixed set (to evaluate in chunks)."""
    return EpisodeIndex(index.support[start:stop], index.query[start:stop], index.classes[start:stop])
