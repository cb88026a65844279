"""python -m engine {train, evaluate, curve, inspect, report, bench}.

Progress goes to stderr; the last stdout line is one JSON object others can script against.
Bad input exits with status 2 and one stderr line starting with "error:".

`torchrun --nproc_per_node=N -m engine train ...` trains data-parallel over N processes (see
engine/train/distributed.py); only rank 0 prints, the others exit 0 silently.
"""
from __future__ import annotations

import argparse
import json
import math
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


def _add_eval_args(p, what: str):
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--dataset", metavar="SPEC", help="another dataset, prepared like the run's training data")
    p.add_argument("--classes", choices=["test", "all"], default="test",
                   help="test: the held-out meta-test classes; all: every class of the dataset")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m engine", description="Conceptscape engine: DEML in concept space")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_eval_args(sub.add_parser("evaluate", help="accuracy with a 95%% CI over many episodes"),
                   "inner steps for gradient learners (default: the run's)")
    _add_eval_args(sub.add_parser("curve", help="adaptation curve: accuracy after 0..S inner steps, or vs shots"),
                   "largest number of inner steps on the curve (default 10)")
    rep = sub.add_parser("report", help="a self-contained HTML report of a run, to open offline or send")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("-o", "--out", required=True, metavar="FILE.html")
    rep.add_argument("--twin", default="auto", metavar="RUN_DIR",
                     help="the lambda = 0 twin to compare with: a run directory, 'auto' (look beside it) or 'none'")
    rep.add_argument("--method", choices=["umap", "pca", "tsne"], default="umap", help="layout of the replay")
    rep.add_argument("--episodes", type=int, default=300, help="test episodes when no evaluation was recorded")
    bench = sub.add_parser("bench", help="benchmarks, measured as ratios within one run")
    bench.add_argument("name", choices=["throughput", "projection", "live", "omniglot", "deml", "cost", "summary"])
    bench.add_argument("--preset", default="demo")
    bench.add_argument("--out", metavar="DIR", help="omniglot: the run directory to create "
                       "(default runs/bench/omniglot-LEARNER-lamLAM-sSEED)")
    bench.add_argument("--minutes", type=float, help="omniglot: training budget, turned into steps")
    bench.add_argument("--steps", type=int, help="omniglot: training steps (repeats a run exactly)")
    bench.add_argument("--episodes", type=int, default=1000, help="omniglot: test episodes per setting")
    bench.add_argument("--inner-lr", type=float, help="omniglot: the gradient learners' inner step size")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--results", nargs="+", metavar="JSON", help="summary: outputs of bench omniglot / deml")
    bench.add_argument("--svg", metavar="FILE.svg", help="summary: write the accuracy-against-time plot here")
    bench.add_argument("--parts", default="settings,vmap,scaling,memory", help="cost: which parts to run")
    bench.add_argument("--seeds", default="0,1,2", help="deml: training seeds, comma-separated")
    bench.add_argument("--train-alphabets", type=int, default=4, help="deml: meta-train alphabets (scarce data)")
    bench.add_argument("--sweep", default="0.3,3", help="deml: other lambda values to try, comma-separated")
    bench.add_argument("--no-controls", action="store_true",
                       help="deml: only the lambda > 0 runs (extends a sweep; bench summary merges the results)")
    bench.add_argument("--cross-domain", default="glyphs", metavar="SPEC",
                       help="deml: an external set from another domain ('' to skip)")
    bench.add_argument("--run", metavar="RUN_DIR", help="projection: take concepts from this run's snapshots")
    bench.add_argument("--learner")
    bench.add_argument("--lam", type=float)
    bench.add_argument("--rounds", type=int, default=6)
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ins = sub.add_parser("inspect", help="summarise a dataset and the problems found in it")
    ins.add_argument("spec", metavar="SPEC")
    ins.add_argument("--image-size", type=int)
    return parser


# --- train ------------------------------------------------------------------------------------
class Progress:
    """Throttled progress lines on stderr (every 2 s, and every validation)."""

    def __init__(self, total: int):
        self.total, self.last, self.started = total, 0.0, time.monotonic()
        self.val = ""

    def __call__(self, kind: str, rec: dict):
        if kind == "warning":
            print(f"warning: {rec['message']}", file=sys.stderr)
        elif kind == "val":
            self.val = f"  val {rec['val_acc']:.3f}±{rec['val_ci95']:.3f}"
            self._line(rec["step"], force=True)
        elif kind == "train" and time.monotonic() - self.last > 2.0:
            disc = f" disc {rec['disc_acc']:.2f}" if rec["disc_acc"] is not None else ""
            self._line(rec["step"], f"  loss {rec['meta_loss']:.3f} acc {rec['meta_acc']:.2f}{disc}")

    def _line(self, step: int, extra: str = "", force: bool = False):
        self.last = time.monotonic()
        elapsed = self.last - self.started
        eta = elapsed / max(step, 1) * (self.total - step)
        print(f"step {step}/{self.total}{extra}{self.val}  {elapsed:.0f}s  eta {eta:.0f}s", file=sys.stderr, flush=True)


def cmd_train(args) -> dict | None:
    from engine.train import distributed
    from engine.config import TrainConfig, preset
    from engine.train.trainer import Control, resume_run, start_run

    if args.resume:
        changed = [f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)
                   if f.name not in TRAIN_FIELDS_HIDDEN | {"steps"} and getattr(args, f.name) is not None]
        if changed or args.preset or args.out:
            raise UserError(f"--resume continues a run with its own settings; only --steps may change "
                            f"(to train longer), not {', '.join(changed + ['--preset'] * bool(args.preset) + ['--out'] * bool(args.out))}")
    else:
        overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in TRAIN_FIELDS_HIDDEN}
        cfg = preset(args.preset).with_overrides(**overrides)
        out = args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{cfg.learner}-lam{cfg.lam:g}-s{cfg.seed}"
    joined = distributed.setup()  # under torchrun: join the other processes
    try:
        main = distributed.is_main()  # only rank 0 talks (and only its `out` is written)
        if args.resume:
            trainer, run = resume_run(args.resume, steps=args.steps)
            message = f"resuming {run.path} at step {trainer.step} of {trainer.cfg.steps}"
        else:
            trainer, run = start_run(cfg, out)
            message = f"training {cfg.learner} (lam {cfg.lam:g}) on {trainer.device}; run dir {run.path}"
        if distributed.world_size() > 1:
            message += (f"; data-parallel over {distributed.world_size()} processes, "
                        f"{trainer.cfg.meta_batch // distributed.world_size()} of {trainer.cfg.meta_batch} tasks each")
        if main:
            print(message, file=sys.stderr)
        control = Control()
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(control, "stop", True))  # Ctrl-C: checkpoint, stop
        try:
            summary = trainer.run(run, control, Progress(trainer.cfg.steps) if main else None)
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


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, like 0,1,2 (got {text!r})") from None


def cmd_bench(args) -> dict | None:
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1 (got {args.rounds})")
    if args.name == "projection":
        from engine.bench.projection import projection_benchmark
        return projection_benchmark(args.run)
    if args.name == "live":
        from engine.bench.live import live_benchmark
        return live_benchmark(args.preset, rounds=args.rounds)
    if args.name == "summary":
        from engine.bench.summary import summary
        if not args.results:
            raise UserError("bench summary needs --results FILE.json ... (outputs of bench omniglot or bench deml)")
        print("\n\n".join(summary(args.results, args.svg)["tables"]))  # markdown, to paste into BENCHMARKS.md
        return None
    if args.name == "cost":
        from engine.bench.cost import PARTS, cost_benchmark
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        if unknown := set(parts) - set(PARTS):
            raise UserError(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
        return cost_benchmark(parts, rounds=args.rounds)
    if args.name == "deml":
        from engine.bench.deml import deml_benchmark
        return deml_benchmark(args.train_alphabets, args.steps or 300, _numbers(args.seeds, int, "--seeds"),
                              1.0 if args.lam is None else args.lam, _numbers(args.sweep, float, "--sweep"),
                              args.cross_domain, args.episodes, controls=not args.no_controls)
    if args.name == "omniglot":
        from engine.bench.omniglot import omniglot_benchmark
        from engine.config import runs_root
        learner, lam = args.learner or "protonet", 1.0 if args.lam is None else args.lam
        out = args.out or str(runs_root() / "bench" / f"omniglot-{learner}-lam{lam:g}-s{args.seed}")
        overrides = {k: v for k, v in (("device", args.device), ("inner_lr", args.inner_lr)) if v is not None}
        return omniglot_benchmark(out, learner, lam, args.minutes, args.steps, args.episodes, args.seed, overrides)
    from engine.bench.throughput import throughput
    from engine.config import preset

    cfg = preset(args.preset).with_overrides(learner=args.learner, lam=args.lam, device=args.device)
    return throughput(cfg, rounds=args.rounds)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "curve": cmd_curve, "inspect": cmd_inspect,
            "bench": cmd_bench, "report": cmd_report}


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
