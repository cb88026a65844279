"""python -m engine bench omniglot: the standard few-shot benchmark on alphabets never seen in
training, with accuracy against training time.

One model per (learner, lambda) is trained on the Omniglot background set exactly as `python -m
engine train --preset omniglot --learner L --lam X` trains it (28 px, conv4, whole-alphabet
splits: 15 meta-train, 3 validation, 6 external and 6 test alphabets; `--set NAME=VALUE` changes
one setting, a recipe lever), then scored on the 6 test alphabets in the four standard settings
at several points of training: the accuracy-against-time curve, its earlier points on fewer
episodes (--curve-episodes). Unlike `train --minutes`, `--minutes` here turns a time budget into a
step count from a measured step time; the result records the steps, so `--steps N` repeats the
run exactly (same seed, same numbers). The run directory is a normal run: `python -m engine evaluate RUN --dataset FILE.npz
--classes all` scores it on other data, e.g. the 20 evaluation alphabets.
"""
from __future__ import annotations

import sys
import tempfile
import time

from engine.bench import SMOKE_MODEL, add_sets, parse_sets, with_sets
from engine.bench.machine import machine
from engine.config import TrainConfig, preset, runs_root
from engine.data.episodes import EpisodeSampler
from engine.data.imageset import ImageSet
from engine.errors import UserError
from engine.eval.evaluate import evaluate
from engine.runs import RunDir
from engine.train.trainer import Trainer, load_data

SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))  # (ways, shots): 5w1s, 5w5s, 20w1s, 20w5s
TEST_QUERIES = 15  # per class: 5 shots + 15 queries use all 20 drawings of a character
MARKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # fractions of training at which the test set is scored
CALIBRATION_STEPS = 8  # timed (after 2 warm-up steps) to turn --minutes into steps
SMOKE = dict(minutes=None, steps=2, episodes=3, curve_episodes=2)  # with SMOKE_MODEL: two steps, each setting scored on 3 episodes


def setting_name(ways: int, shots: int) -> str:
    return f"{ways}w{shots}s"


def score(trainer: Trainer, test: ImageSet, episodes: int, settings=SETTINGS, queries: int = TEST_QUERIES,
          seed: int = 0) -> dict:
    """Test accuracy and its 95% CI in each (ways, shots) setting, on fixed episodes (same seed,
    same tasks): {"5w1s": {"accuracy": ..., "ci95": ...}, ...}."""
    out = {}
    for ways, shots in settings:
        sampler = EpisodeSampler(test, ways, shots, queries)
        r = evaluate(trainer.model, sampler, episodes, seed, trainer.device)
        out[setting_name(ways, shots)] = {"accuracy": round(r["accuracy"], 5), "ci95": round(r["ci95"], 5)}
    return out


def seconds_per_step(cfg: TrainConfig, splits) -> float:
    """A throwaway trainer's mean time per step after a warm-up."""
    probe = Trainer(cfg, splits)
    for _ in range(2):
        probe.train_step()
    t0 = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        probe.train_step()
    return (time.perf_counter() - t0) / CALIBRATION_STEPS


def omniglot_benchmark(out: str, learner: str = "protonet", lam: float = 1.0, minutes: float | None = None,
                       steps: int | None = None, episodes: int = 1000, seed: int = 0,
                       curve_episodes: int = 250, overrides: dict | None = None, log=sys.stderr) -> dict:
    if minutes is not None and steps is not None:
        raise UserError("give the training budget as --minutes or --steps, not both")
    if episodes < 2:
        raise UserError(f"--episodes must be at least 2 for a confidence interval (got {episodes})")
    if curve_episodes < 2:
        raise UserError(f"--curve-episodes must be at least 2 for a confidence interval (got {curve_episodes})")
    cfg = with_sets(preset("omniglot").with_overrides(learner=learner, lam=lam, seed=seed), overrides or {})
    cfg, splits = load_data(cfg)
    if minutes is not None:
        per_step = seconds_per_step(cfg, splits)
        steps = max(1, int(minutes * 60 / per_step))
        print(f"{per_step * 1e3:.0f} ms/step: {minutes} min is {steps} steps", file=log, flush=True)
    cfg = cfg.with_overrides(steps=steps)  # neither given: the preset's own steps
    steps = cfg.steps
    trainer = Trainer(cfg, splits)
    run = RunDir.create(out, cfg.to_dict())
    run.write_json("splits.json", splits.report)
    marks = sorted({max(1, round(f * steps)) for f in MARKS})
    curve = []

    def on_event(kind: str, rec: dict):
        if kind == "train" and rec["step"] in marks:
            t0 = time.perf_counter()
            point = {"step": rec["step"], "train_seconds": round(rec["seconds"], 2),
                     **score(trainer, splits.test, episodes if rec["step"] == steps else curve_episodes)}
            curve.append(point)
            accs = "  ".join(f"{k} {v['accuracy']:.3f}" for k, v in point.items() if isinstance(v, dict))
            print(f"step {rec['step']}/{steps}  {rec['seconds']:.0f}s  {accs}  "
                  f"(scored in {time.perf_counter() - t0:.0f}s)", file=log, flush=True)

    trainer.run(run, on_event=on_event)
    final = curve[-1]
    result = {
        "benchmark": "omniglot", "learner": learner, "lam": lam, "seed": seed, "steps": steps,
        "train_seconds": final["train_seconds"], "episodes": episodes, "curve_episodes": curve_episodes,
        "test_queries": TEST_QUERIES,
        "split": "meta-test",  # every accuracy below (final and curve): the test alphabets
        "test_alphabets": splits.report["units"]["meta-test"], "run_dir": str(run.path),
        "final": {setting_name(w, k): final[setting_name(w, k)] for w, k in SETTINGS}, "curve": curve,
        # where recipes are chosen: the validation alphabets' accuracy at the end (the run's own episodes)
        "val": {"accuracy": trainer.last_val["val_acc"], "ci95": trainer.last_val["val_ci95"]},
        "config": {k: v for k, v in cfg.to_dict().items() if k in ("ways", "shots", "queries", "meta_batch", "lr",
                                                                  "rotations", "ext_batch", "inner_steps", "inner_lr")},
        "set": overrides or {},  # the settings changed from the preset's
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    }
    run.write_json("bench.json", result)
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--learner", default="protonet")
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, help="training budget, turned into steps")
    parser.add_argument("--steps", type=int, help="training steps (repeats a run exactly; default: the preset's)")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per setting, at the end")
    parser.add_argument("--curve-episodes", type=int, default=250,
                        help="test episodes per setting at the curve's earlier points (default 250)")
    parser.add_argument("--inner-lr", type=float, help="the gradient learners' inner step size")
    parser.add_argument("--seed", type=int, default=0)
    add_sets(parser)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", metavar="DIR", help="the run directory to create (default "
                        "runs/bench/omniglot-LEARNER-lamLAM-sSEED; with --smoke a temporary one)")


def run(args) -> dict:
    overrides = {k: v for k, v in (("device", args.device), ("inner_lr", args.inner_lr)) if v is not None}
    overrides.update(parse_sets(args.sets))
    if not args.smoke:
        out = args.out or str(runs_root() / "bench" / f"omniglot-{args.learner}-lam{args.lam:g}-s{args.seed}")
        return omniglot_benchmark(out, args.learner, args.lam, args.minutes, args.steps, args.episodes, args.seed,
                                  args.curve_episodes, overrides)
    with tempfile.TemporaryDirectory(prefix="bench-omniglot-") as tmp:  # a smoke run leaves no run behind
        return omniglot_benchmark(args.out or f"{tmp}/run", args.learner, args.lam, seed=args.seed,
                                  overrides={**overrides, **SMOKE_MODEL}, **SMOKE)
