"""The demo's headline: DEML against its lambda = 0 twin on the SAME validation episodes, paired.

    h = paired_headline(deml_metrics, vanilla_metrics)   # the runs' metric records (metrics.jsonl / a job)
    h.text  # "DEML vs vanilla: +3.2 ± 1.9 points (validation accuracy, 100 episodes, paired)"

Both runs validate on the same fixed episodes (they depend on split_seed only: a twin shares them),
and each validation record keeps every episode's accuracy (`val_per_episode`). The difference is
taken episode by episode at the latest step both runs validated, and its 95% interval uses the t
quantile with n - 1 degrees of freedom. When the interval covers 0 the headline says there is no
difference yet instead of a sign. Records written before `val_per_episode` existed give no headline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from engine.records import MetricRecord, val_records

LEVEL = 0.95  # the interval's confidence


@dataclass(frozen=True)
class Headline:
    """DEML minus vanilla, in accuracy points (0-100), over `episodes` paired validation episodes."""

    step: int  # the training step both runs validated at
    episodes: int  # n, the paired episodes
    points: float  # mean of DEML minus vanilla, in points
    half_width: float  # the 95% interval's half-width, in points (t quantile, n - 1 degrees of freedom)
    deml: float  # DEML's mean validation accuracy there (0-1)
    vanilla: float  # the twin's (0-1)

    @property
    def covers_zero(self) -> bool:
        """The interval holds 0: the episodes do not tell DEML and vanilla apart (yet)."""
        return abs(self.points) <= self.half_width

    @property
    def text(self) -> str:
        what = f"validation accuracy, {self.episodes} episodes, paired"
        if self.covers_zero:
            return (f"DEML vs vanilla: no difference yet ({self.points:+.1f} ± {self.half_width:.1f} points, "
                    f"{what})")
        return f"DEML vs vanilla: {self.points:+.1f} ± {self.half_width:.1f} points ({what})"


def _per_episode(record: MetricRecord) -> np.ndarray | None:
    """A validation record's per-episode accuracies, or None (an older record, or damaged values)."""
    values = record.get("val_per_episode")
    if not isinstance(values, list) or not values:
        return None
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if a.ndim != 1 or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        return None
    return a


def paired_difference(deml: np.ndarray, vanilla: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width) of deml - vanilla, episode by episode, with the t quantile; NaN half-width
    for fewer than 2 episodes."""
    d = np.asarray(deml, dtype=np.float64) - np.asarray(vanilla, dtype=np.float64)
    if len(d) < 2:
        return (float(d.mean()) if len(d) else math.nan), math.nan
    q = float(stats.t.ppf(0.5 + level / 2, len(d) - 1))
    return float(d.mean()), q * float(d.std(ddof=1)) / math.sqrt(len(d))


def paired_headline(deml_metrics: list[MetricRecord] | None, vanilla_metrics: list[MetricRecord] | None
                    ) -> Headline | None:
    """The headline at the latest step at which both runs validated on as many episodes, or None
    (no common validation yet, or records without per-episode accuracies)."""
    mine = {int(r["step"]): a for r in val_records(deml_metrics or []) if (a := _per_episode(r)) is not None}
    theirs = {int(r["step"]): a for r in val_records(vanilla_metrics or []) if (a := _per_episode(r)) is not None}
    common = [s for s in sorted(mine.keys() & theirs.keys()) if len(mine[s]) == len(theirs[s]) >= 2]
    if not common:
        return None
    step = common[-1]
    a, b = mine[step], theirs[step]
    mean, half = paired_difference(a, b)
    return Headline(step=step, episodes=len(a), points=100 * mean, half_width=100 * half,
                    deml=float(a.mean()), vanilla=float(b.mean()))
