"""python -m engine {train, evaluate, curve, select, inspect, report, bench, export}.

Progress goes to stderr; the last stdout line is one JSON object others can script against.
Bad input exits with status 2 and one stderr line starting with "error:".

`torchrun --nproc_per_node=N -m engine train ...` trains data-parallel over N processes (see
engine/train/distributed.py); only rank 0 prints, the others exit 0 silently.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import types
import typing
from dataclasses import fields
from datetime import datetime

from engine.errors import UserError

TRAIN_FIELDS_HIDDEN = {"channels"}  # derived from the data; not a useful flag


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes our one-line error
        raise UserError(f"{message} (see {self.prog} --help)")  # "python -m engine [command]"


def _flag_type(hint):
    """int | None -> int; other field types as they are."""
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _add_train(sub):
    from engine.config import PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a DEML run (or resume one)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset; flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last good checkpoint")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<time>-<learner>)")
    p.add_argument("--name", help="a name for the run, shown by the app (the Runs page can change it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in TRAIN_FIELDS_HIDDEN:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(hints[f.name])
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper())


def _add_eval_args(p, what: str, classes: str = "test"):
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--dataset", metavar="SPEC", help="another dataset, prepared like the run's training data")
    p.add_argument("--classes", choices=["val", "test", "all"], default=classes,
                   help=f"val: the meta-validation classes (where choices are made); test: the held-out meta-test "
                   f"classes (score once, for a reported number); all: every class of the dataset (default {classes})")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, help=what)


class _LazyParser(Parser):
    """A subcommand's parser whose arguments are added when it is first used, so that building the
    command line (for --help, or any other command) does not import every benchmark."""

    def __init__(self, *args, add_arguments, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def parse_known_args(self, args=None, namespace=None):  # what argparse calls on a chosen subcommand
        if self._add_arguments is not None:
            self._add_arguments(self)
            self._add_arguments = None
        return super().parse_known_args(args, namespace)


def _add_bench(sub):
    from engine.bench import BENCHMARKS

    bench = sub.add_parser("bench", help="benchmarks, measured as ratios within one run",
                           description="Each benchmark prints one JSON line (summary: markdown tables). "
                           "`bench NAME --help` lists its flags; every one takes --smoke: the same code on "
                           "tiny sizes, in seconds.")
    names = bench.add_subparsers(dest="benchmark", required=True, metavar="NAME", parser_class=_LazyParser)
    for name, benchmark in BENCHMARKS.items():
        names.add_parser(name, help=benchmark.help, description=benchmark.help, add_arguments=benchmark.add_arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m engine", description="Conceptscape engine: DEML in concept space")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_eval_args(sub.add_parser("evaluate", help="accuracy with a 95%% CI over many episodes"),
                   "inner steps for gradient learners (default: the run's)")
    _add_eval_args(sub.add_parser("curve", help="adaptation curve: accuracy after 0..S inner steps, or vs shots"),
                   "largest number of inner steps on the curve (default 10)", classes="val")
    sel = sub.add_parser("select", help="choose test-time inner steps and step size, and among runs, on "
                         "meta-validation classes")
    sel.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run, or several to choose among (e.g. λ values)")
    sel.add_argument("--steps", type=int, default=25, help="inner steps tried: 0..STEPS (default 25)")
    sel.add_argument("--inner-lrs", metavar="A,B,...", help="test-time inner step sizes tried "
                     "(default 0.02,0.05,0.1,0.2,0.5; Meta-SGD keeps its learned ones)")
    sel.add_argument("--episodes", type=int, default=300, help="meta-validation episodes (default 300)")
    sel.add_argument("--test-episodes", type=int, default=0,
                     help="then score the chosen setting once on this many meta-test episodes (default 0: not)")
    for flag in ("--ways", "--shots", "--queries"):
        sel.add_argument(flag, type=int)
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rep = sub.add_parser("report", help="a self-contained HTML report of a run, to open offline or send")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("-o", "--out", required=True, metavar="FILE.html")
    rep.add_argument("--twin", default="auto", metavar="RUN_DIR",
                     help="the lambda = 0 twin to compare with: a run directory, 'auto' (look beside it) or 'none'")
    rep.add_argument("--method", choices=["umap", "pca", "tsne"], default="umap", help="layout of the replay")
    rep.add_argument("--episodes", type=int, default=300, help="test episodes when no evaluation was recorded")
    _add_bench(sub)
    ins = sub.add_parser("inspect", help="summarise a dataset and the problems found in it")
    ins.add_argument("spec", metavar="SPEC")
    ins.add_argument("--image-size", type=int)
    _add_export(sub)
    return parser


def _add_export(sub):
    exp = sub.add_parser("export", help="one TorchScript file: the run's generator and preprocessing and a support set")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--support", required=True, metavar="DIR_OR_ZIP",
                     help="a folder or .zip of class folders; each folder's name is a class (its first 5 images are used)")
    exp.add_argument("-o", "--out", required=True, metavar="FILE.pt")
    exp.add_argument("--steps", type=int, help="inner steps for gradient learners (default: the run's)")


# --- train ------------------------------------------------------------------------------------
class Progress:
    """Throttled progress lines on stderr (every 2 s, and every validation)."""

    def __init__(self, trainer):
        self.trainer, self.last, self.started = trainer, 0.0, time.monotonic()
        self.val = ""

    def __call__(self, kind: str, rec: dict):
        if kind == "warning":
            print(f"warning: {rec['message']}", file=sys.stderr)
        elif kind == "val":
            self.val = f"  val {rec['val_acc']:.3f}±{rec['val_ci95']:.3f}"
            self._line(rec["step"])
        elif kind == "train" and time.monotonic() - self.last > 2.0:
            disc = f" disc {rec['disc_acc']:.2f}" if rec["disc_acc"] is not None else ""
            self._line(rec["step"], f"  loss {rec['meta_loss']:.3f} acc {rec['meta_acc']:.2f}{disc}")

    def _line(self, step: int, extra: str = ""):
        self.last = time.monotonic()
        elapsed = self.last - self.started
        t = self.trainer
        if t.cfg.minutes > 0:  # bounded by time: how much of the budget is left
            budget = 60 * t.cfg.minutes
            where = f"step {step}{extra}{self.val}  {t.loop_seconds:.0f}s of {budget:.0f}s"
            eta = max(0.0, budget - t.loop_seconds)
        else:
            where = f"step {step}/{t.cfg.steps}{extra}{self.val}  {elapsed:.0f}s"
            eta = elapsed / max(step, 1) * (t.cfg.steps - step)
        print(f"{where}  eta {eta:.0f}s", file=sys.stderr, flush=True)


def cmd_train(args) -> dict | None:
    from engine.config import LIMITS, TrainConfig, preset
    from engine.data.plan import plan_config
    from engine.models.deml import resolve_device
    from engine.runs import clean_run_name
    from engine.train import distributed
    from engine.train.budget import check_step_memory
    from engine.train.launch import resume_run, start_run
    from engine.train.trainer import Control

    if args.resume:
        changed = [f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)
                   if f.name not in TRAIN_FIELDS_HIDDEN | {"steps"} and getattr(args, f.name) is not None]
        if changed or args.preset or args.out or args.name:
            raise UserError(f"--resume continues a run with its own settings; only --steps may change "
                            f"(to train longer), not {', '.join(changed + ['--preset'] * bool(args.preset) + ['--out'] * bool(args.out) + ['--name'] * bool(args.name))}")
    else:
        overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in TRAIN_FIELDS_HIDDEN}
        if args.minutes and args.steps is None:  # bounded by time alone, not by a preset's steps
            overrides["steps"] = LIMITS["steps"]
        cfg = preset(args.preset).with_overrides(**overrides)
        args.name = clean_run_name(args.name) if args.name else None
        # a step that cannot fit in memory is refused before the data is read (as the trainer does)
        check_step_memory(cfg, resolve_device(cfg.device), processes=int(os.environ.get("WORLD_SIZE", "1")))
        # the plan fitted to the data (engine.data.plan): flags given stay as typed
        cfg, plan = plan_config(cfg, explicit={k for k, v in overrides.items() if v is not None})
        out = args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{cfg.learner}-lam{cfg.lam:g}-s{cfg.seed}"
    joined = distributed.setup()  # under torchrun: join the other processes
    try:
        main = distributed.is_main()  # only rank 0 talks (and only its `out` is written)
        if args.resume:
            trainer, run = resume_run(args.resume, steps=args.steps)
            message = f"resuming {run.path} at step {trainer.step} of {trainer.cfg.steps}"
        else:
            trainer, run = start_run(cfg, out, plan=plan, name=args.name)
            if main:
                print(f"plan: {plan.describe()}" + ("" if plan.fitted else " (the settings as given)"), file=sys.stderr)
            message = f"training {cfg.learner} (lam {cfg.lam:g}) on {trainer.device}; run dir {run.path}"
        if distributed.world_size() > 1:
            message += (f"; data-parallel over {distributed.world_size()} processes, "
                        f"{trainer.cfg.meta_batch // distributed.world_size()} of {trainer.cfg.meta_batch} tasks each")
        if main:
            print(message, file=sys.stderr)
        control = Control()
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(control, "stop", True))  # Ctrl-C: checkpoint, stop
        try:
            summary = trainer.run(run, control, Progress(trainer) if main else None)
        finally:
            signal.signal(signal.SIGINT, previous)
        return summary if main else None  # None: nothing to print
    finally:
        if joined:
            distributed.teardown()


# --- evaluate / curve -------------------------------------------------------------------------
def _evaluation(args, kind: str) -> dict:
    from engine.eval.evaluate import run_evaluation

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {args.episodes})")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"--steps must be 0 or more (got {args.steps})")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more (got {args.seed})")

    label = "episodes" if kind == "evaluate" else "curve"

    def progress(done, total):
        print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    def warn(message):
        print(f"warning: {message}", file=sys.stderr)

    return run_evaluation(args.run_dir, kind, dataset=args.dataset, classes=args.classes, ways=args.ways,
                          shots=args.shots, queries=args.queries, episodes=args.episodes, seed=args.seed,
                          steps=args.steps, device=args.device, progress=progress, warn=warn)


def cmd_evaluate(args) -> dict:
    return _evaluation(args, "evaluate")


def cmd_curve(args) -> dict:
    return _evaluation(args, "curve")


def cmd_select(args) -> dict:
    from engine.eval.select import select

    try:
        lrs = [float(v) for v in args.inner_lrs.split(",") if v.strip()] if args.inner_lrs else None
    except ValueError:
        raise UserError(f"--inner-lrs takes comma-separated numbers, like 0.05,0.1,0.2 (got {args.inner_lrs!r})") from None
    result = select(args.run_dirs, steps=args.steps, inner_lrs=lrs, episodes=args.episodes, seed=args.seed,
                    ways=args.ways, shots=args.shots, queries=args.queries, device=args.device,
                    test_episodes=args.test_episodes, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    c = result["chosen"]
    print(f"chosen on {result['split']} ({result['candidates']} candidates): {c['run_dir']}"
          + (f", inner step size {c['inner_lr']}, {c['steps']} steps" if c["steps"] is not None else "")
          + f": {100 * c['accuracy']:.2f} ± {100 * c['ci95']:.2f} (meta-validation)"
          + (f"; meta-test once: {100 * result['test']['accuracy']:.2f} ± {100 * result['test']['ci95']:.2f}"
             if "test" in result else ""), file=sys.stderr)
    return result


# --- inspect ----------------------------------------------------------------------------------
def cmd_inspect(args) -> dict:
    from engine.data import Preprocess, load_imageset

    data = load_imageset(args.spec, Preprocess(image_size=args.image_size))
    summary = data.summary()
    counts = data.counts()
    usable = int((counts >= 2).sum())
    print(f"{data.source}: {summary['classes']} classes, {summary['images']} images, "
          f"{summary['image_size']} px, {summary['channels']} channel(s)"
          + (f", {summary['groups']} groups" if summary["groups"] else ""), file=sys.stderr)
    print(f"images per class: min {summary['images_per_class']['min']}, max {summary['images_per_class']['max']}",
          file=sys.stderr)
    for problem in data.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if usable < 2:
        raise UserError(f"{data.source}: only {usable} classes have 2 or more images; a task needs at least 2 "
                        "such classes (one image to learn from and one to test on, per class)")
    summary["usable_classes"] = usable
    return summary


def cmd_report(args) -> dict:
    from engine.viz.report import build_report

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {args.episodes})")
    if not args.out.endswith((".html", ".htm")):
        raise UserError(f"the report is an HTML file: give -o a name ending in .html (got {args.out})")
    twin = None if args.twin == "none" else args.twin
    return build_report(args.run_dir, args.out, twin=twin, method=args.method, episodes=args.episodes,
                        progress=lambda msg: print(msg, file=sys.stderr, flush=True))


def cmd_bench(args) -> dict | None:
    from engine.bench import BENCHMARKS

    return BENCHMARKS[args.benchmark].run(args)  # None: it printed something other than JSON (summary)


def cmd_export(args) -> dict:
    from engine.services.export import export_run

    if not args.out.endswith(".pt"):
        raise UserError(f"the export is a TorchScript file: give -o a name ending in .pt (got {args.out})")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"--steps must be 0 or more (got {args.steps})")
    made = export_run(args.run_dir, args.support, args.out, args.steps)
    for line in made.problems:
        print(f"warning: {line}", file=sys.stderr)
    return {"out": args.out, "classes": made.classes, "holds": made.kind, "temperature": made.temperature,
            "unknown_below": made.unknown_below, "bytes": len(made.data),
            "ece_before": made.calibration.ece_before if made.calibration else None,
            "ece_after": made.calibration.ece_after if made.calibration else None}


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "curve": cmd_curve, "select": cmd_select,
            "inspect": cmd_inspect,
            "bench": cmd_bench, "report": cmd_report, "export": cmd_export}


def _strict_json(value):
    """NaN and infinities (e.g. the CI of a single episode) become null: they are not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, unwritable folder...: still one clear line, no traceback
        print(f"error: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}", file=sys.stderr)
        return 2
    if result is not None:  # None: a training process other than rank 0
        print(json.dumps(_strict_json(result), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
