"""python -m engine bench deml: what the concept discriminator adds, where it should show.

Scarce meta-training (a few Omniglot background alphabets), tested on 6 other alphabets. Per seed:
- deml: lambda > 0, the discriminator on 6 other background alphabets (the "auto" external set);
- vanilla: lambda = 0, everything else identical;
- deml-eps: lambda = 1e-9, the external images drawn and passed through G (in a pass of their own,
  engine/models/deml.py external_pass) and D trained, but D's gradient negligible: what the
  external batch itself does, apart from D (it should be nothing: tested, tests/test_isolation.py);
- pooled: lambda = 0 with those 6 external alphabets added to the meta-train episodes instead
  (is the discriminator better than simply more data?);
- cross-domain: lambda > 0 with an external set from another domain (generated glyphs by default);
- a lambda sweep.
The meta-train alphabets are the same in every variant (engine/data/splits.py keeps them fixed).
Every variant trains the same steps with a constant learning rate, so the vanilla and pooled runs,
which go on until they have used the DEML run's wall time, are scored both at equal steps and at
equal time from one run. Numbers at equal steps repeat exactly with the seed; equal-time ones
depend on the machine's speed, as wall time does.

Splits: every run is scored once on the meta-test alphabets (the reported numbers) and once on the
meta-validation alphabets (at equal steps); lambda is chosen on meta-validation ("selection": the
variant with the best mean validation accuracy among vanilla, deml-eps and the lambda > 0 runs that
use the same external set), and the chosen variant's test number is the one to report as "DEML with
a chosen lambda". Each number in the output says its split.
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
from engine.eval.evaluate import mean_ci95
from engine.train.trainer import Trainer, load_data

SETTINGS = ((5, 1), (20, 1))  # the scarce-data story is told in 1-shot
EPSILON = 1e-9  # the lambda of the deml-eps control: D trains, its gradient into G is negligible
SEEDS = "0,1,2,3,4"  # at least 5 seeds per cell
VAL_EPISODES = 500  # meta-validation episodes per setting (for choosing lambda)
# one seed, every variant (and one sweep value) trained 2 steps, scored on 3 episodes; digits are the
# smallest external set from another domain
SMOKE = dict(train_alphabets=2, steps=2, seeds=(0,), sweep=(0.5,), cross_domain="digits", episodes=3, queries=2,
             val_episodes=3, overrides=SMOKE_MODEL)
def _score(trainer: Trainer, episodes: int, queries: int, split: str = "meta-test") -> dict:
    """{"5w1s": accuracy, "20w1s": accuracy} on the test (or validation) alphabets."""
    data = trainer.splits.test if split == "meta-test" else trainer.splits.val
    return {k: v["accuracy"] for k, v in score(trainer, data, episodes, SETTINGS, queries).items()}


def train_variant(cfg, splits, steps: int, episodes: int, until_seconds: float | None = None,
                  queries: int = TEST_QUERIES, val_episodes: int = VAL_EPISODES) -> dict:
    """Train `steps` steps and score on meta-test and meta-validation; with until_seconds, go on to
    that much training time and score on meta-test again."""
    trainer = Trainer(cfg.with_overrides(steps=steps), splits)
    while trainer.step < steps:
        trainer.train_step()
    out = {"lam": cfg.lam, "split": "meta-test", "equal_steps": _score(trainer, episodes, queries),
           "val_split": "meta-validation", "val_equal_steps": _score(trainer, val_episodes, queries, "meta-validation"),
           "steps": steps, "seconds": round(trainer.seconds, 2)}
    if until_seconds is not None:
        while trainer.seconds < until_seconds:
            trainer.train_step()
        out.update(equal_time=_score(trainer, episodes, queries), equal_time_steps=trainer.step,
                   equal_time_seconds=round(trainer.seconds, 2))
    return out


def deml_benchmark(train_alphabets: int = 4, steps: int = 300, seeds=(0, 1, 2, 3, 4), lam: float = 1.0,
                   sweep=(0.3, 3.0), cross_domain: str = "glyphs", episodes: int = 1000,
                   dataset: str | None = None, recipe: str = "omniglot", queries: int = TEST_QUERIES, overrides: dict | None = None,
                   controls: bool = True, val_episodes: int = VAL_EPISODES, log=sys.stderr) -> dict:
    """controls=False trains only the lambda > 0 runs (to extend a sweep); `bench summary` merges
    such a result with a full one of the same settings. `recipe` is the preset whose settings (and
    data, unless `dataset` is given) every variant trains with: "demo" studies the app's demo on its
    built-in glyphs."""
    if train_alphabets < 1 or steps < 1 or not seeds or episodes < 2 or val_episodes < 2:
        raise UserError("bench deml needs --train-alphabets, --steps >= 1, at least one seed, and --episodes "
                        "and --val-episodes >= 2")
    base = preset(recipe).with_overrides(train_limit=train_alphabets, lr_schedule="constant", **(overrides or {}))
    if dataset:
        base = base.with_overrides(dataset=dataset)
    data = {}  # variant name -> (config, splits), loaded once and shared by the seeds

    def variant(name: str, **changes):
        if name not in data:
            data[name] = load_data(base.with_overrides(**changes))
        return data[name]

    runs: dict[str, list[dict]] = {}

    def record(name: str, seed: int, cfg, splits, until=None):
        t0 = time.perf_counter()
        res = train_variant(cfg.with_overrides(seed=seed), splits, steps, episodes, until, queries, val_episodes)
        runs.setdefault(name, []).append({"seed": seed, **res})
        print(f"seed {seed} {name}: test {res['equal_steps']}  val {res['val_equal_steps']}"
              + (f"  equal time ({res['equal_time_steps']} steps): {res['equal_time']}" if until else "")
              + f"  [{time.perf_counter() - t0:.0f}s]", file=log, flush=True)
        return res

    for seed in seeds:
        deml = record("deml", seed, *variant("deml", lam=lam))
        if controls:
            record("vanilla", seed, *variant("vanilla", lam=0.0), until=deml["seconds"])
            record("pooled", seed, *variant("pooled", lam=0.0, pool_external=True), until=deml["seconds"])
            deml_cfg, deml_splits = variant("deml", lam=lam)  # the same data and external set as deml
            record("deml-eps", seed, deml_cfg.with_overrides(lam=EPSILON), deml_splits)
        if cross_domain:
            record(f"deml-{cross_domain}", seed, *variant("cross", lam=lam, external=cross_domain))
        for value in sweep:
            record(f"deml-lam{value:g}", seed, *variant(f"lam{value:g}", lam=value))

    splits = data["deml"][1]
    return {
        "benchmark": "deml", "recipe": recipe, "dataset": base.dataset, "train_alphabets": splits.report["units"]["meta-train"],
        "external_alphabets": splits.report["units"]["external"], "test_alphabets": splits.report["units"]["meta-test"],
        "meta_train_classes": splits.train.num_classes, "steps": steps, "lam": lam, "seeds": list(seeds),
        "episodes": episodes, "val_episodes": val_episodes, "test_queries": queries,
        "splits": {"equal_steps": "meta-test", "equal_time": "meta-test", "val_equal_steps": "meta-validation",
                   "selection": "lambda chosen on meta-validation, its meta-test number reported"},
        "summary": summarise(runs), "selection": choose_lambda(runs), "runs": runs,
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    }


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per variant and setting: mean and t-CI over seeds at equal steps and at equal time (meta-test),
    the paired (same seed) gain over vanilla with its CI, and the meta-validation mean at equal steps
    (where the runs recorded one)."""
    vanilla = {r["seed"]: r for r in runs.get("vanilla", [])}
    out = {}
    for name, rows in runs.items():
        entry = {}
        for setting in rows[0]["equal_steps"]:
            at_steps = [r["equal_steps"][setting] for r in rows]
            # a lambda > 0 run has no separate equal-time score: its steps set the time budget
            at_time = [r.get("equal_time", r["equal_steps"])[setting] for r in rows]
            entry[setting] = {"split": "meta-test", "equal_steps": mean_ci95(at_steps), "equal_time": mean_ci95(at_time)}
            if all("val_equal_steps" in r for r in rows):
                entry[setting]["validation"] = {"split": "meta-validation", "equal_steps": mean_ci95(
                    [r["val_equal_steps"][setting] for r in rows])}
            if name != "vanilla" and all(r["seed"] in vanilla for r in rows):
                base = [vanilla[r["seed"]] for r in rows]
                entry[setting]["gain_equal_steps"] = mean_ci95(
                    [a - b["equal_steps"][setting] for a, b in zip(at_steps, base)])
                entry[setting]["gain_equal_time"] = mean_ci95(
                    [a - b["equal_time"][setting] for a, b in zip(at_time, base)])
        out[name] = entry
    return out


def choose_lambda(runs: dict[str, list[dict]]) -> dict:
    """Per setting, lambda chosen on meta-validation: among vanilla (lambda = 0), deml-eps, deml and the
    sweep (every run with the study's own external set and meta-train classes: not pooled, not the
    cross-domain one), the variant with the best mean validation accuracy at equal steps; with its
    meta-test mean +- t-CI over seeds (scored once, with every run) and how many were compared."""
    names = [n for n in runs if (n in ("vanilla", "deml", "deml-eps") or n.startswith("deml-lam"))
             and all("val_equal_steps" in r for r in runs[n])]
    if not names:
        return {}
    out = {}
    for setting in runs[names[0]][0]["equal_steps"]:
        val = {n: float(np.mean([r["val_equal_steps"][setting] for r in runs[n]])) for n in names}
        best = max(names, key=lambda n: val[n])
        out[setting] = {"chosen_on": "meta-validation", "variant": best, "lam": runs[best][0].get("lam"),
                        "val_accuracy": val[best], "compared": len(names),
                        "test": {"split": "meta-test", "equal_steps": mean_ci95(
                            [r["equal_steps"][setting] for r in runs[best]])}}
    return out


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, like 0,1,2 (got {text!r})") from None


def add_arguments(parser) -> None:
    parser.add_argument("--train-alphabets", type=int, default=4, help="meta-train alphabets (scarce data)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every run")
    parser.add_argument("--seeds", default=SEEDS, help="training seeds, comma-separated (at least 5 for the study)")
    parser.add_argument("--lam", type=float, default=1.0, help="lambda of the DEML runs")
    parser.add_argument("--sweep", default="0.3,3", help="other lambda values to try, comma-separated")
    parser.add_argument("--cross-domain", default="glyphs", metavar="SPEC",
                        help="an external set from another domain ('' to skip)")
    parser.add_argument("--episodes", type=int, default=1000, help="meta-test episodes per setting")
    parser.add_argument("--val-episodes", type=int, default=VAL_EPISODES,
                        help="meta-validation episodes per setting (lambda is chosen on these)")
    parser.add_argument("--recipe", default="omniglot", choices=("omniglot", "demo"),
                        help="the preset every variant trains with: omniglot (its data) or demo (the app's built-in glyphs)")
    parser.add_argument("--no-controls", action="store_true",
                        help="only the lambda > 0 runs (extends a sweep; bench summary merges the results)")


def run(args) -> dict:
    study = dict(train_alphabets=args.train_alphabets, steps=args.steps, seeds=_numbers(args.seeds, int, "--seeds"),
                 sweep=_numbers(args.sweep, float, "--sweep"), cross_domain=args.cross_domain, episodes=args.episodes,
                 val_episodes=args.val_episodes)
    return deml_benchmark(lam=args.lam, recipe=args.recipe, controls=not args.no_controls, **{**study, **(SMOKE if args.smoke else {})})
