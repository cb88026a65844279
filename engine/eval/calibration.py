"""How far a run's answers can be trusted, measured once per run on its meta-validation classes.

Two things, both fitted on fixed validation episodes (the run's N-way K-shot tasks, Q queries per
class, drawn from the meta-val classes, never from the held-out test classes):

- a temperature T for its confidences: probabilities are softmax(logits / T), with T chosen to
  minimise the negative log-likelihood on half of the episodes. The expected calibration error
  (ECE: |accuracy - confidence| averaged over 15 confidence bins, weighted by their share of the
  answers) is measured before and after on the OTHER half; T is kept only where it lowers it
  (else T = 1), so `ece_after <= ece_before` always holds, on episodes the fit never saw.
- an "unknown" threshold on the learner's score (its largest logit for the query: for a
  prototypical network minus the squared distance to the nearest class centre): the score that
  keeps `keep` (95 %) of the correct validation answers. A query scoring below it is answered
  "none of these".

`run_calibration(run_dir)` computes it once per checkpoint (and inner steps) and keeps it in the
run folder as calibration.json (written atomically); a damaged or stale file is recomputed.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from engine.config import TrainConfig
from engine.data.episodes import EpisodeSampler
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import make_splits
from engine.errors import UserError
from engine.eval.checkpoints import checkpoint_stamp, load_model
from engine.eval.evaluate import per_task
from engine.models.deml import DEMLModel
from engine.runs import RunDir, as_run

FILE = "calibration.json"
FORMAT = 1  # bump when the file's fields change: older files are recomputed
KEEP = 0.95  # share of correct validation answers the unknown threshold keeps
EPISODES = 200  # validation episodes: half fit the temperature, half measure it
BINS = 15  # confidence bins of the expected calibration error


@dataclass(frozen=True)
class Calibration:
    temperature: float  # probabilities are softmax(logits / temperature)
    unknown_below: float  # a query whose score (largest logit) is below this is answered "none of these"
    keep: float  # share of correct validation answers at or above unknown_below
    ece_before: float  # expected calibration error at T = 1, on the measuring half
    ece_after: float  # ... at the fitted temperature, same episodes
    wrong_flagged: float  # share of wrong validation answers below unknown_below
    accuracy: float  # validation accuracy over all episodes
    episodes: int
    ways: int
    shots: int
    queries: int
    steps: int | None  # inner steps it was measured at (gradient learners), else None

    def rule(self) -> str:
        """The unknown rule in one sentence, for pages."""
        return (f"a query whose score is below {self.unknown_below:.3g} is answered \"none of these\": that keeps "
                f"{self.keep:.0%} of the right answers on {self.episodes} validation tasks "
                f"({self.ways}-way {self.shots}-shot, meta-val classes) and catches {self.wrong_flagged:.0%} of the wrong ones")


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error of (M, N) probabilities against (M,) labels."""
    if len(labels) == 0:
        return float("nan")
    conf, pred = probs.max(-1)
    right = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # 0..bins-1
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += float(inside.float().mean() * (right[inside].mean() - conf[inside].mean()).abs())
    return total


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the NLL: a grid over log T in [-10, 10], then golden-section search
    around its best point (deterministic, no optimiser state)."""
    grid = np.linspace(-10.0, 10.0, 201)
    losses = [nll(logits, labels, math.exp(g)) for g in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(logits, labels, math.exp(a)) <= nll(logits, labels, math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def calibrate(logits: torch.Tensor, labels: torch.Tensor, keep: float = KEEP) -> dict:
    """logits (E, M, N) and labels (E, M) of validation episodes -> the fields of Calibration
    that come from them (see the module's docstring)."""
    logits, labels = logits.double(), labels.long()
    fit, meas = slice(0, None, 2), slice(1, None, 2)  # even episodes fit T, odd ones measure it
    flat = lambda x: x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.reshape(-1)  # noqa: E731
    t = fit_temperature(flat(logits[fit]), flat(labels[fit]))
    m_logits, m_labels = flat(logits[meas]), flat(labels[meas])
    before = ece(torch.softmax(m_logits, -1), m_labels)
    after = ece(torch.softmax(m_logits / t, -1), m_labels)
    if not after <= before:  # the fit did not help on episodes it never saw: keep the raw confidences
        t, after = 1.0, before
    all_logits, all_labels = flat(logits), flat(labels)
    score, pred = all_logits.max(-1)
    right = pred == all_labels
    good = score[right]
    below = float(torch.quantile(good, 1 - keep)) if len(good) else float("-inf")
    wrong = score[~right]
    return {"temperature": t, "unknown_below": below, "keep": keep, "ece_before": before, "ece_after": after,
            "wrong_flagged": float((wrong < below).float().mean()) if len(wrong) else 0.0,
            "accuracy": float(right.double().mean())}


@lru_cache(maxsize=4)
def validation_classes(cfg: TrainConfig) -> ImageSet:
    """The run's meta-val classes, prepared as its training data."""
    data = load_imageset(cfg.dataset, Preprocess(cfg.image_size, cfg.channels, cfg.polarity))
    return make_splits(data, cfg.split_config(), "auto" if cfg.external == "auto" else None).val


def validation_sampler(cfg: TrainConfig) -> EpisodeSampler:
    """The run's task shape on its meta-val classes (fewer ways when fewer classes are there)."""
    data = validation_classes(cfg)
    need = cfg.shots + cfg.queries
    eligible = sum(len(i) >= need for i in data.class_indices())
    if eligible < 2:
        raise UserError(f"{data.source} has {eligible} class(es) with {need} images (shots + queries); "
                        "calibration needs 2")
    return EpisodeSampler(data, min(cfg.ways, eligible), cfg.shots, cfg.queries)


def measure(model: DEMLModel, cfg: TrainConfig, device, steps: int | None = None, episodes: int = EPISODES,
            keep: float = KEEP) -> Calibration:
    """Calibration of a loaded model on its run's validation episodes (seeded by the split seed)."""
    sampler = validation_sampler(cfg)
    index = sampler.fixed(episodes, cfg.split_seed)

    def fn(zs, zq, labels):
        out = model.learner.logits(zs, labels["support"], zq, sampler.ways, steps=steps, training=False)
        return out.detach().cpu(), labels["query"].cpu()

    parts = per_task(model, sampler, index, device, fn)
    logits = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    fields = calibrate(logits, labels, keep)
    adapts = model.learner.adapts_by_steps
    return Calibration(**fields, episodes=episodes, ways=sampler.ways, shots=sampler.shots, queries=sampler.queries,
                       steps=(cfg.inner_steps if steps is None else steps) if adapts else None)


def _read(run: RunDir, stamp: list, key: str) -> Calibration | None:
    try:
        saved = json.loads((run.path / FILE).read_text())
        if saved.get("format") != FORMAT or saved.get("checkpoint") != stamp:
            return None
        return Calibration(**saved["entries"][key])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, damaged or stale: measured again


def run_calibration(run: RunDir | str, steps: int | None = None, device: str = "auto") -> Calibration:
    """The run's calibration at its newest checkpoint (and `steps` inner steps), from calibration.json
    when that file is for this checkpoint, else measured and saved there. UserError when the run's
    validation classes cannot hold a task."""
    run = as_run(run)
    stamp = list(checkpoint_stamp(run))
    cfg, model, dev = load_model(run, device)
    key = str(cfg.inner_steps if steps is None else steps) if model.learner.adapts_by_steps else "-"
    hit = _read(run, stamp, key)
    if hit is not None:
        return hit
    cal = measure(model, cfg, dev, steps)
    try:
        saved = json.loads((run.path / FILE).read_text())
        entries = saved["entries"] if saved.get("format") == FORMAT and saved.get("checkpoint") == stamp else {}
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}
    entries[key] = asdict(cal)
    try:
        run.write_json(FILE, {"format": FORMAT, "checkpoint": stamp, "entries": entries})
    except OSError:
        pass  # a run folder we may not write to: the numbers are still right, only not kept
    return cal
