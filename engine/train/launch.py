"""A trainer with its run folder: a new run (config.json and splits.json written) or an existing one
resumed at its last good checkpoint. Rank 0's RunDir holds the run's lock (engine.run_lock)."""
from __future__ import annotations

from engine.config import TrainConfig
from engine.data.plan import Plan
from engine.errors import UserError
from engine.eval.checkpoints import refuse_old_head
from engine.runs import RunDir
from engine.train import distributed
from engine.train.trainer import Trainer


def start_run(cfg: TrainConfig, out: str, plan: Plan | None = None, name: str | None = None) -> tuple[Trainer, RunDir]:
    """A new trainer and its run directory (config.json and splits.json written, by rank 0 only;
    splits.json holds the data's plan (engine.data.plan) when given, name.json the run's `name`).
    Rank 0's RunDir holds the run's lock (Trainer.run lets it go at the end; release_lock() it if
    the run is never trained)."""
    trainer = Trainer(cfg)

    def create() -> RunDir:
        run = RunDir.create(out, trainer.cfg.to_dict(), lock=True)
        try:
            report = dict(trainer.splits.report)
            if plan is not None:
                report["plan"] = plan.to_dict()
            run.write_json("splits.json", report)
            if name:
                run.set_run_name(name)
        except BaseException:
            run.release_lock()
            raise
        return run

    return trainer, distributed.on_main(create) or RunDir(out)


def resume_run(path: str, steps: int | None = None) -> tuple[Trainer, RunDir]:
    """The trainer of an existing run at its last good checkpoint; later records are dropped.
    `steps` trains the run longer than it was set up for (config.json is updated). Rank 0's RunDir
    holds the run's lock, taken before anything is read or changed: a run another process trains
    is refused (UserError naming it). Trainer.run lets the lock go at the end."""
    run = RunDir.open(path)
    distributed.on_main(run.acquire_lock)
    try:
        return _resume(run, steps)
    except BaseException:
        run.release_lock()
        raise


def _resume(run: RunDir, steps: int | None) -> tuple[Trainer, RunDir]:
    cfg = run.train_config()
    if steps is not None:
        # every rank takes part whatever config.json says now: rank 0 may already have rewritten it,
        # and a rank skipping the collective would meet the others' next one (a gloo mismatch)
        # a run bounded by --minutes, given steps, goes on by steps (its time budget is spent)
        longer, cfg = steps != cfg.steps or cfg.minutes > 0, cfg.with_overrides(steps=steps, minutes=0.0)
        distributed.on_main(lambda: run.update_config(cfg.to_dict()) if longer else None)
    # every rank reads the same checkpoint (nothing in it depends on the number of processes), and
    # before Trainer() meets the others, so rank 0 cannot have written a newer one meanwhile
    if run.checkpoints():
        state, warnings = run.load_checkpoint()
    else:  # killed before its first checkpoint: it starts over (the model is seeded by the config)
        state, warnings = None, [f"{run.path} has no checkpoint yet; training starts again from step 0"]
    if state is not None:
        refuse_old_head(run, cfg, state)
    trainer = Trainer(cfg)
    if state is not None:
        try:
            trainer.load_state(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # weights of other shapes, a bad optimizer state
            raise UserError(f"the newest checkpoint of {run.path} does not fit its settings "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); the run cannot be resumed") from e
    trainer.warnings += warnings

    def drop_later():
        run.truncate_metrics(trainer.step)
        run.drop_snapshots_after(trainer.step)

    distributed.on_main(drop_later)
    return trainer, run
