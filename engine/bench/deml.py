"""python -m engine bench deml: what the concept discriminator adds, where it should show.

Scarce meta-training (a few Omniglot background alphabets), tested on 6 other alphabets. Per seed:
- deml: lambda > 0, the discriminator on 6 other background alphabets (the "auto" external set);
- vanilla: lambda = 0, everything else identical;
- pooled: lambda = 0 with those 6 external alphabets added to the meta-train episodes instead
  (is the discriminator better than simply more data?);
- cross-domain: lambda > 0 with an external set from another domain (generated glyphs by default);
- a lambda sweep.
The meta-train alphabets are the same in every variant (engine/data/splits.py keeps them fixed).
Every variant trains the same steps with a constant learning rate, so the vanilla and pooled runs,
which go on until they have used the DEML run's wall time, are scored both at equal steps and at
equal time from one run. Numbers at equal steps repeat exactly with the seed; equal-time ones
depend on the machine's speed, as wall time does.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from engine.bench import SMOKE_MODEL
from engine.bench.machine import machine
from engine.bench.omniglot import TEST_QUERIES, score
from engine.config import preset
from engine.errors import UserError
from engine.train.trainer import Trainer, load_data

SETTINGS = ((5, 1), (20, 1))  # the scarce-data story is told in 1-shot
# one seed, every variant (and one sweep value) trained 2 steps, scored on 3 episodes; digits are the
# smallest external set from another domain
SMOKE = dict(train_alphabets=2, steps=2, seeds=(0,), sweep=(0.5,), cross_domain="digits", episodes=3, queries=2,
             overrides=SMOKE_MODEL)
# two-sided 95% Student t quantiles by degrees of freedom: with 3 seeds the normal 1.96 is far too narrow
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci95_seeds(values) -> tuple[float, float]:
    """Mean over seeds and the half-width of its Student-t 95% interval (nan for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v)))


def _score(trainer: Trainer, episodes: int, queries: int) -> dict:
    """{"5w1s": accuracy, "20w1s": accuracy} on the test alphabets."""
    return {k: v["accuracy"] for k, v in score(trainer, trainer.splits.test, episodes, SETTINGS, queries).items()}


def train_variant(cfg, splits, steps: int, episodes: int, until_seconds: float | None = None,
                  queries: int = TEST_QUERIES) -> dict:
    """Train `steps` steps and score; with until_seconds, go on to that much training time and score again."""
    trainer = Trainer(cfg.with_overrides(steps=steps), splits)
    while trainer.step < steps:
        trainer.train_step()
    out = {"equal_steps": _score(trainer, episodes, queries), "steps": steps, "seconds": round(trainer.seconds, 2)}
    if until_seconds is not None:
        while trainer.seconds < until_seconds:
            trainer.train_step()
        out.update(equal_time=_score(trainer, episodes, queries), equal_time_steps=trainer.step,
                   equal_time_seconds=round(trainer.seconds, 2))
    return out


def deml_benchmark(train_alphabets: int = 4, steps: int = 300, seeds=(0, 1, 2), lam: float = 1.0,
                   sweep=(0.3, 3.0), cross_domain: str = "glyphs", episodes: int = 1000,
                   dataset: str | None = None, queries: int = TEST_QUERIES, overrides: dict | None = None,
                   controls: bool = True, log=sys.stderr) -> dict:
    """controls=False trains only the lambda > 0 runs (to extend a sweep); `bench summary` merges
    such a result with a full one of the same settings."""
    if train_alphabets < 1 or steps < 1 or not seeds or episodes < 2:
        raise UserError("bench deml needs --train-alphabets, --steps >= 1, at least one seed and --episodes >= 2")
    base = preset("omniglot").with_overrides(train_limit=train_alphabets, lr_schedule="constant", dataset=dataset,
                                             **(overrides or {}))
    data = {}  # variant name -> (config, splits), loaded once and shared by the seeds

    def variant(name: str, **changes):
        if name not in data:
            data[name] = load_data(base.with_overrides(**changes))
        return data[name]

    runs: dict[str, list[dict]] = {}

    def record(name: str, seed: int, cfg, splits, until=None):
        t0 = time.perf_counter()
        res = train_variant(cfg.with_overrides(seed=seed), splits, steps, episodes, until, queries)
        runs.setdefault(name, []).append({"seed": seed, **res})
        print(f"seed {seed} {name}: {res['equal_steps']}"
              + (f"  equal time ({res['equal_time_steps']} steps): {res['equal_time']}" if until else "")
              + f"  [{time.perf_counter() - t0:.0f}s]", file=log, flush=True)
        return res

    for seed in seeds:
        deml = record("deml", seed, *variant("deml", lam=lam))
        if controls:
            record("vanilla", seed, *variant("vanilla", lam=0.0), until=deml["seconds"])
            record("pooled", seed, *variant("pooled", lam=0.0, pool_external=True), until=deml["seconds"])
        if cross_domain:
            record(f"deml-{cross_domain}", seed, *variant("cross", lam=lam, external=cross_domain))
        for value in sweep:
            record(f"deml-lam{value:g}", seed, *variant(f"lam{value:g}", lam=value))

    splits = data["deml"][1]
    return {
        "benchmark": "deml", "train_alphabets": splits.report["units"]["meta-train"],
        "external_alphabets": splits.report["units"]["external"], "test_alphabets": splits.report["units"]["meta-test"],
        "meta_train_classes": splits.train.num_classes, "steps": steps, "lam": lam, "seeds": list(seeds),
        "episodes": episodes, "test_queries": queries, "summary": summarise(runs), "runs": runs,
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    }


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per variant and setting: mean and t-CI over seeds at equal steps and at equal time, and the
    paired (same seed) gain over vanilla with its CI."""
    vanilla = {r["seed"]: r for r in runs.get("vanilla", [])}
    out = {}
    for name, rows in runs.items():
        entry = {}
        for setting in rows[0]["equal_steps"]:
            at_steps = [r["equal_steps"][setting] for r in rows]
            # a lambda > 0 run has no separate equal-time score: its steps set the time budget
            at_time = [r.get("equal_time", r["equal_steps"])[setting] for r in rows]
            entry[setting] = {"equal_steps": mean_ci95_seeds(at_steps), "equal_time": mean_ci95_seeds(at_time)}
            if name != "vanilla" and all(r["seed"] in vanilla for r in rows):
                base = [vanilla[r["seed"]] for r in rows]
                entry[setting]["gain_equal_steps"] = mean_ci95_seeds(
                    [a - b["equal_steps"][setting] for a, b in zip(at_steps, base)])
                entry[setting]["gain_equal_time"] = mean_ci95_seeds(
                    [a - b["equal_time"][setting] for a, b in zip(at_time, base)])
        out[name] = entry
    return out


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, like 0,1,2 (got {text!r})") from None


def add_arguments(parser) -> None:
    parser.add_argument("--train-alphabets", type=int, default=4, help="meta-train alphabets (scarce data)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every run")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--lam", type=float, default=1.0, help="lambda of the DEML runs")
    parser.add_argument("--sweep", default="0.3,3", help="other lambda values to try, comma-separated")
    parser.add_argument("--cross-domain", default="glyphs", metavar="SPEC",
                        help="an external set from another domain ('' to skip)")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per setting")
    parser.add_argument("--no-controls", action="store_true",
                        help="only the lambda > 0 runs (extends a sweep; bench summary merges the results)")


def run(args) -> dict:
    study = dict(train_alphabets=args.train_alphabets, steps=args.steps, seeds=_numbers(args.seeds, int, "--seeds"),
                 sweep=_numbers(args.sweep, float, "--sweep"), cross_domain=args.cross_domain, episodes=args.episodes)
    return deml_benchmark(lam=args.lam, controls=not args.no_controls, **{**study, **(SMOKE if args.smoke else {})})
