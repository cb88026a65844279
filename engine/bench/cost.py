"""python -m engine bench cost: what a training step costs and how that grows, on built-in data.

- settings: the fastest correct CPU settings for the generator's forward + backward (threads,
  channels_last memory format, torch.compile), each against the default as a ratio in one run;
- vmap: MAML and Meta-SGD steps with the inner loop vmapped over tasks against the per-task
  loop, at meta-batch 1, 4 and 16 (whole trainer steps, and the meta-learner alone);
- scaling: time per step against ways, shots, meta-batch and image size;
- memory: peak resident memory (RSS) of `train --preset demo` and `--preset omniglot`, each in
  its own process.
Times are medians of interleaved rounds, so a change in machine load hits both sides of a ratio.
"""
from __future__ import annotations

import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from engine.bench import add_rounds, check_rounds
from engine.bench.machine import machine
from engine.config import PRESETS, REPO, TrainConfig, preset
from engine.errors import UserError
from engine.train.trainer import Trainer

# built-in data with enough classes and drawings for 20-way 5-shot tasks at any image size
DATA = "glyphs:classes=200,drawings=12,seed=0"
BASE = dict(dataset=DATA, learner="protonet", lam=1.0, ways=5, shots=1, queries=5, meta_batch=4, ext_batch=64)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each fn, measured in alternating rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def _trainer(**changes) -> Trainer:
    return Trainer(TrainConfig(**{**BASE, **changes}))


def settings_benchmark(rounds: int, reps: int, log, compile_too: bool = True) -> list[dict]:
    """Generator forward + backward on one demo-sized step's images under each CPU setting, each
    on its own copy of the generator. torch.compile takes most of a minute to compile on 2 cores."""
    trainer = _trainer()
    x = Trainer.step_images(trainer.sample_batch(0))  # (B, C, H, W): task and external images
    g = trainer.model.generator
    threads = torch.get_num_threads()

    def step(model, inp, num_threads=threads):
        def run():
            torch.set_num_threads(num_threads)
            try:
                model.zero_grad(set_to_none=True)
                model(inp).square().mean().backward()
            finally:
                torch.set_num_threads(threads)
        return run

    nchw = copy.deepcopy(g).to(memory_format=torch.contiguous_format)
    nchw.memory_format = torch.contiguous_format  # the default layout, which the generator no longer uses
    variants = {f"channels_last, the trainer's ({threads} threads)": step(g, x), "NCHW (torch's default)": step(nchw, x)}
    if threads > 1:
        variants["1 thread"] = step(g, x, 1)

    def pass_per_task():  # what the trainer avoids: G called once per task and once for the external batch
        g.zero_grad(set_to_none=True)
        sum(g(part).square().mean() for part in x.chunk(BASE["meta_batch"] + 1)).backward()

    variants["one G pass per task"] = pass_per_task
    notes = {}
    if compile_too:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(copy.deepcopy(g))
            step(compiled, x)()  # compiles now, so the rounds time the compiled code only
            variants["torch.compile"] = step(compiled, x)
            notes["torch.compile"] = {"compile_seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - e.g. no C compiler: reported, not fatal
            notes["torch.compile (failed)"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    med = interleaved(variants, rounds, reps)
    default = next(iter(med.values()))
    rows = [{"setting": k, "ms": round(v * 1e3, 2), "ratio_to_default": round(v / default, 3), **notes.get(k, {})}
            for k, v in med.items()]
    rows += [{"setting": k, **v} for k, v in notes.items() if k not in med]
    for r in rows:
        print(f"settings: {r}", file=log, flush=True)
    return rows


def vmap_benchmark(rounds: int, reps: int, log, meta_batches=(1, 4, 16)) -> list[dict]:
    rows = []
    for learner in ("maml", "metasgd"):
        for mb in meta_batches:
            pair = {b: _trainer(learner=learner, meta_batch=mb, batched=b) for b in (True, False)}  # same seed
            steps = {f"step_{b}": t.train_step for b, t in pair.items()}
            # the meta-learner alone (forward + backward in concept space), on fixed concepts
            zs = torch.randn(mb, 5, 64, requires_grad=True)  # (T, N*K, D), as from G: the linear head has
            zq = torch.randn(mb, 25, 64, requires_grad=True)  # (T, N*Q, D)  no weights of its own
            ys, yq = torch.arange(5).expand(mb, -1), torch.arange(5).repeat_interleave(5).expand(mb, -1)

            def learner_only(t):
                def run():
                    t.model.zero_grad(set_to_none=True)
                    t.model.learner.meta_loss(zs, ys, zq, yq, 5).loss.backward()
                return run

            med = interleaved({**steps, **{f"learner_{b}": learner_only(t) for b, t in pair.items()}}, rounds, reps)
            row = {"learner": learner, "meta_batch": mb,
                   "step_ms_vmap": round(med["step_True"] * 1e3, 2), "step_ms_loop": round(med["step_False"] * 1e3, 2),
                   "step_ratio_vmap_to_loop": round(med["step_True"] / med["step_False"], 3),
                   "learner_ms_vmap": round(med["learner_True"] * 1e3, 3),
                   "learner_ms_loop": round(med["learner_False"] * 1e3, 3),
                   "learner_ratio_vmap_to_loop": round(med["learner_True"] / med["learner_False"], 3)}
            print(f"vmap: {row}", file=log, flush=True)
            rows.append(row)
    return rows


SCALING = {"ways": (5, 10, 20), "shots": (1, 5), "meta_batch": (1, 4, 16), "image_size": (28, 56, 84)}


def scaling_benchmark(rounds: int, reps: int, log, grid: dict = SCALING) -> list[dict]:
    """One setting varied at a time from BASE; ms per trainer step and per image."""
    rows = []
    for name, values in grid.items():
        trainers = {v: _trainer(**{name: v}) for v in values}
        med = interleaved({v: t.train_step for v, t in trainers.items()}, rounds, reps)
        for v, t in trainers.items():
            images = len(Trainer.step_images(t.sample_batch(0)))
            row = {"vary": name, "value": v, "images_per_step": images, "ms_per_step": round(med[v] * 1e3, 2),
                   "us_per_image": round(med[v] * 1e6 / images, 1)}
            print(f"scaling: {row}", file=log, flush=True)
            rows.append(row)
    return rows


# Runs the command line, then reports its own VmHWM (peak resident memory of this process image).
# Not ru_maxrss: on Linux a child's ru_maxrss keeps the parent's peak from before exec, so every
# child of a 2 GiB benchmark process would report at least 2 GiB.
_PEAK = ("import sys; from engine.cli import main; rc = main(sys.argv[1:]); "
         "print(*[l.strip() for l in open('/proc/self/status') if l.startswith('VmHWM:')], file=sys.stderr); "
         "sys.exit(rc)")


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """Run `python -m engine ARGS` in its own process: (peak RSS in MiB, wall seconds). Linux only."""
    if not os.path.exists("/proc/self/status"):
        raise UserError("bench cost --parts memory reads /proc/self/status, which only Linux has")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=REPO)
    peak = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM:")]
    if proc.returncode != 0 or not peak:
        raise RuntimeError(f"python -m engine {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return int(peak[-1]) / 1024, time.perf_counter() - t0  # VmHWM is in kB


def memory_benchmark(presets=("demo", "omniglot"), steps: int = 100, log=sys.stderr) -> list[dict]:
    rows = []
    for name in presets:
        if name == "omniglot":
            preset(name)  # a clear error now if the Omniglot file is not there
        with tempfile.TemporaryDirectory() as tmp:
            rss, wall = peak_rss_mib(["train", "--preset", name, "--steps", str(steps), "--out", f"{tmp}/run"])
        row = {"preset": name, "steps": steps, "peak_rss_mib": round(rss, 1), "wall_seconds": round(wall, 1),
               "ways": PRESETS[name].get("ways", 5), "meta_batch": PRESETS[name].get("meta_batch")}
        print(f"memory: {row}", file=log, flush=True)
        rows.append(row)
    return rows


PARTS = ("settings", "vmap", "scaling", "memory")
# one round of one call each; no torch.compile (a minute on 2 cores); the smoke preset trained 3 steps
SMOKE = dict(rounds=1, reps=1, compile_too=False, meta_batches=(2,), grid={"ways": (2, 3)}, presets=("smoke",),
             memory_steps=3)


def cost_benchmark(parts=PARTS, rounds: int = 5, reps: int = 3, memory_steps: int = 100, log=sys.stderr,
                   compile_too: bool = True, meta_batches=(1, 4, 16), grid: dict = SCALING,
                   presets=("demo", "omniglot")) -> dict:
    out = {"benchmark": "cost", "rounds": rounds, "reps": reps, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    if "settings" in parts:
        out["settings"] = settings_benchmark(rounds, reps, log, compile_too)
    if "vmap" in parts:
        out["vmap"] = vmap_benchmark(rounds, reps, log, meta_batches)
    if "scaling" in parts:
        out["scaling"] = scaling_benchmark(rounds, reps, log, grid)
    if "memory" in parts:
        out["memory"] = memory_benchmark(presets, steps=memory_steps, log=log)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run, comma-separated")
    add_rounds(parser)


def run(args) -> dict:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        raise UserError(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    sizes = {"rounds": check_rounds(args.rounds), **(SMOKE if args.smoke else {})}
    return cost_benchmark(parts, **sizes)
