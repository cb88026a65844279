"""python -m engine bench smalldata: the engine's small-data check, measured over seeds.

A ProtoNet is trained for 400 steps on Omniglot's images_background_small1.zip (5 alphabets, 136
characters) exactly as `python -m engine train --dataset images_background_small1.zip --steps 400`
would train it (the plan fitted to the data, engine.data.plan), then scored 5-way 1-shot on 600 fixed
episodes of the characters of images_background_small2.zip whose alphabets small1 does not have
(Japanese (katakana), Sanskrit, Tagalog: 106 characters the run never saw, nor any of their alphabets).
The engine's first acceptance asked >= 0.85 of this. Each seed is one run (its own weights and
batches; the episodes are the same for every seed); the result is the mean over seeds with its
Student-t 95% interval. `--set NAME=VALUE` (repeatable) trains with a setting changed, as its
`--name value` flag would: what a recipe change does to small data, on the same episodes.
"""
from __future__ import annotations

import sys
import time

from engine.bench import SMOKE_MODEL, add_sets, parse_sets, with_sets
from engine.bench.machine import machine
from engine.config import TrainConfig, shared_dir
from engine.data.episodes import EpisodeSampler
from engine.data.imageset import ImageSet
from engine.data.plan import plan_config
from engine.data.sources import load_imageset
from engine.errors import UserError
from engine.eval.evaluate import evaluate, mean_ci95
from engine.train.trainer import Trainer

TRAIN_ZIP, SCORE_ZIP = "images_background_small1.zip", "images_background_small2.zip"
STEPS, EPISODES, WAYS, SHOTS, QUERIES = 400, 600, 5, 1, 15
SMOKE = dict(seeds=(0,), steps=2, episodes=4, overrides=SMOKE_MODEL)


def omniglot_zip(name: str) -> str:
    path = shared_dir() / "data" / "omniglot" / name
    if not path.is_file():
        raise UserError(f"bench smalldata reads {path}, which is not there; set CONCEPTSCAPE_SHARED "
                        "to the folder holding data/omniglot/")
    return str(path)


def unseen_alphabets(scored: ImageSet, trained: ImageSet) -> ImageSet:
    """The classes of `scored` whose alphabet (group) `trained` has none of."""
    seen = set(trained.groups or [])
    keep = [c for c, g in enumerate(scored.groups or []) if g not in seen]
    if len(keep) < WAYS:
        raise UserError(f"{SCORE_ZIP} has {len(keep)} characters in alphabets {TRAIN_ZIP} lacks; {WAYS} are needed")
    return scored.subset(keep)


def smalldata_benchmark(seeds=(0, 1, 2, 3, 4), steps: int = STEPS, episodes: int = EPISODES,
                        overrides: dict | None = None, log=sys.stderr) -> dict:
    if not seeds or steps < 1 or episodes < 2:
        raise UserError("bench smalldata needs at least one seed, --steps >= 1 and --episodes >= 2")
    overrides = dict(overrides or {})
    rows = []
    for seed in seeds:
        base = TrainConfig(dataset=omniglot_zip(TRAIN_ZIP), steps=steps, seed=seed)
        cfg, plan = plan_config(with_sets(base, overrides), explicit=set(overrides))
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        while trainer.step < steps:
            trainer.train_step()
        seconds = time.perf_counter() - t0
        prep = trainer.cfg.preprocess()
        test = unseen_alphabets(load_imageset(omniglot_zip(SCORE_ZIP), prep), load_imageset(omniglot_zip(TRAIN_ZIP), prep))
        r = evaluate(trainer.model, EpisodeSampler(test, WAYS, SHOTS, QUERIES), episodes, 0, trainer.device)
        rows.append({"seed": seed, "accuracy": round(r["accuracy"], 5), "ci95": round(r["ci95"], 5),
                     "train_seconds": round(seconds, 1), "head_start": trainer.cfg.head_start})
        print(f"seed {seed}: {r['accuracy']:.4f} ± {r['ci95']:.4f} ({seconds:.0f} s, head start "
              f"{trainer.cfg.head_start}; plan: {plan.describe()})", file=log, flush=True)
    mean, ci = mean_ci95([r["accuracy"] for r in rows])
    return {"benchmark": "smalldata", "trained_on": TRAIN_ZIP, "steps": steps, "overrides": overrides,
            "scored_on": f"{SCORE_ZIP}, the {test.num_classes} characters of alphabets {TRAIN_ZIP} lacks "
                         f"({', '.join(sorted(set(test.groups or [])))})",
            "setting": f"{WAYS}-way {SHOTS}-shot, {QUERIES} queries a class, {episodes} fixed episodes",
            "accuracy": round(mean, 4), "ci95_over_seeds": round(ci, 4), "target": 0.85, "runs": rows,
            "machine": machine(), "date": time.strftime("%Y-%m-%d")}


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, one run each")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--episodes", type=int, default=EPISODES, help="5-way 1-shot test episodes")
    add_sets(parser)


def run(args) -> dict:
    overrides = parse_sets(args.sets)
    if args.smoke:
        return smalldata_benchmark(**{**SMOKE, "overrides": {**SMOKE["overrides"], **overrides}})
    return smalldata_benchmark(seeds=tuple(range(args.seeds)), steps=args.steps, episodes=args.episodes,
                               overrides=overrides)
