"""Choices made on meta-validation classes, never on meta-test: a gradient learner's test-time inner
steps and inner step size, and which of several runs (different lambda, learning rate or schedule)
to report. The meta-test classes are then scored once, for the chosen setting only (--test-episodes).

Every candidate is scored on the same fixed validation episodes (same seed): a run's concepts are
computed once, and each inner step size's curve gives every number of steps 0..S at once."""
from __future__ import annotations

from dataclasses import replace

from engine.data.episodes import EpisodeSampler
from engine.errors import UserError
from engine.eval.checkpoints import evaluation_classes, load_trained
from engine.eval.evaluate import curve_scores, episode_accuracies, evaluate, mean_ci95, shared_concepts

INNER_LRS = (0.02, 0.05, 0.1, 0.2, 0.5)  # the default grid of test-time inner step sizes


def _candidates(run_dir: str, model, cfg, sampler, index, dev, steps: int, inner_lrs) -> list[dict]:
    """Validation accuracy of every (inner step size, steps) of one run, or its one number (metric learners)."""
    table = shared_concepts(model, sampler, (index,), dev)  # each validation image through G once
    base = {"run_dir": run_dir, "learner": cfg.learner, "lam": cfg.lam}
    learner = model.learner
    if not learner.adapts_by_steps:
        mean, ci = mean_ci95(episode_accuracies(model, sampler, index, dev, table=table))
        return [{**base, "inner_lr": None, "steps": None, "accuracy": mean, "ci95": ci}]
    # Meta-SGD's step sizes are meta-learned tensors: only its number of steps is chosen
    lrs = ["learned"] if cfg.learner == "metasgd" else list(inner_lrs or INNER_LRS)
    rows, trained = [], learner.cfg
    try:
        for lr in lrs:
            if lr != "learned":
                learner.cfg = replace(trained, inner_lr=float(lr))
            acc, _ = curve_scores(model, sampler, index, dev, steps, table=table)  # (steps + 1, E)
            for s in range(steps + 1):
                mean, ci = mean_ci95(acc[s])
                rows.append({**base, "inner_lr": lr, "steps": s, "accuracy": mean, "ci95": ci})
    finally:
        learner.cfg = trained
    return rows


def select(runs: list[str], steps: int = 25, inner_lrs=None, episodes: int = 300, seed: int = 0,
           ways: int | None = None, shots: int | None = None, queries: int | None = None, device: str = "auto",
           test_episodes: int = 0, progress=None) -> dict:
    """The best setting on meta-validation over `runs` x inner step sizes x 0..steps inner steps (the
    first best in that order on ties), every candidate listed; with test_episodes, the chosen setting
    scored once on the chosen run's meta-test classes."""
    if not runs:
        raise UserError("select needs at least one RUN_DIR")
    if steps < 0 or episodes < 2 or test_episodes < 0:
        raise UserError(f"select needs --steps >= 0, --episodes >= 2 and --test-episodes >= 0 "
                        f"(got {steps}, {episodes}, {test_episodes})")
    if inner_lrs is not None and any(lr <= 0 for lr in inner_lrs):
        raise UserError(f"--inner-lrs must all be positive (got {','.join(f'{v:g}' for v in inner_lrs)})")
    say = progress or (lambda msg: None)
    rows, shapes = [], set()
    for run_dir in runs:
        cfg, model, dev = load_trained(run_dir, device)  # its own copy: the step size is changed on it
        n, k, q = ways or cfg.ways, shots or cfg.shots, queries or cfg.queries
        shapes.add((n, k, q))
        sampler = EpisodeSampler(evaluation_classes(cfg, None, "val"), n, k, q)
        say(f"{run_dir}: {episodes} meta-validation episodes ({n}-way {k}-shot, "
            f"{sampler.data.num_classes} classes)")
        rows += _candidates(str(run_dir), model, cfg, sampler, sampler.fixed(episodes, seed), dev, steps, inner_lrs)
    if len(shapes) > 1:
        raise UserError("these runs train different ways/shots/queries: give --ways, --shots and --queries so "
                        "that every run is scored on the same kind of episode")
    chosen = max(rows, key=lambda r: r["accuracy"])  # max keeps the first of equals
    n, k, q = shapes.pop()
    out = {"split": "meta-validation", "episodes": episodes, "seed": seed, "ways": n, "shots": k, "queries": q,
           "candidates": len(rows), "chosen": chosen, "table": rows}
    if test_episodes:
        cfg, model, dev = load_trained(chosen["run_dir"], device)
        if chosen["inner_lr"] not in (None, "learned"):
            model.learner.cfg = replace(model.learner.cfg, inner_lr=float(chosen["inner_lr"]))
        sampler = EpisodeSampler(evaluation_classes(cfg, None, "test"), n, k, q)
        say(f"{chosen['run_dir']}: the chosen setting, once on {test_episodes} meta-test episodes")
        r = evaluate(model, sampler, test_episodes, seed, dev, steps=chosen["steps"])
        out["test"] = {"split": "meta-test", "accuracy": r["accuracy"], "ci95": r["ci95"], "episodes": test_episodes}
    return out
