"""python -m engine bench profile: where one training step's time goes, and how close it runs to the machine.

One trainer of the preset (default omniglot) is built on its data; then, interleaved in rounds so every
part sees the same machine load, each part of its step is timed on that step's own tensors:
- sample: the episode batch (task images and external images, gathered and turned to tensors);
- generator: G forward on the task images, its own pass on the external images, and backward through G;
- learner: the meta-learner's loss on the step's concepts (detached from G), forward and backward;
- discriminator: D on the external concepts and its cross-entropy, forward and backward;
- optimizer: Adam over every parameter;
- step: a whole Trainer.train_step; other = step minus the parts (Python, the learning-rate schedule, the
  step's one host sync, what the parts do not share when run apart).
FLOPs per image are counted by torch's FlopCounterMode on G's forward and backward (what dominates). The
step's achieved FLOP/s is set against the machine's measured FP32 peak: a large float32 matmul (torch.mm,
N x N, the best case of the same cores and threads), so fraction_of_peak says how much of what this
machine can do the step uses.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from engine.bench import SMOKE_DATA_SET, SMOKE_MODEL, add_rounds, add_sets, check_rounds, parse_sets, with_sets
from engine.bench.machine import machine
from engine.config import TrainConfig, preset
from engine.models.deml import external_pass
from engine.train.trainer import Trainer

PARTS = ("sample", "generator", "learner", "discriminator", "optimizer")
MATMUL_N = 2048  # the peak's matmul size: large enough to run at the cores' best rate
SMOKE = dict(rounds=1, steps_per_round=1, matmul_n=64)


def matmul_gflops(n: int, repeats: int = 5) -> float:
    """The best FP32 rate of an n x n matmul here, GFLOP/s (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def step_parts(trainer: Trainer):
    """{part: a function that does that part of one step once}, on one sampled batch's tensors."""
    model, cfg = trainer.model, trainer.cfg
    b = trainer.sample_batch(0)
    x, t, nk, nq = b["x"], b["tasks"], b["nk"], b["nq"]
    model.train()
    with torch.no_grad():
        z = model.generator(x)  # (T*N*K + T*N*Q, D)
        z_ext = external_pass(model.generator, b["x_ext"]) if "x_ext" in b else None  # (B, D)

    def generator():
        model.generator.zero_grad(set_to_none=True)
        loss = model.generator(x).square().mean()
        if z_ext is not None:
            loss = loss + external_pass(model.generator, b["x_ext"]).square().mean()
        loss.backward()

    def learner():
        zd = z.detach().requires_grad_()
        zs, zq = zd[: t * nk].view(t, nk, -1), zd[t * nk: t * (nk + nq)].view(t, nq, -1)
        model.learner.meta_loss(zs, b["support_labels"], zq, b["query_labels"], cfg.ways).loss.backward()

    def discriminator():
        if z_ext is not None:
            F.cross_entropy(model.discriminator(z_ext.detach().requires_grad_()), b["ext_labels"]).backward()

    return {"sample": lambda: trainer.sample_batch(0), "generator": generator, "learner": learner,
            "discriminator": discriminator, "optimizer": trainer.optimizer.step}


def counted_flops(fn) -> int:
    """The FLOPs of one call of `fn` (torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def profile(cfg: TrainConfig, rounds: int = 5, steps_per_round: int = 10, matmul_n: int = MATMUL_N,
            log=sys.stderr) -> dict:
    trainer = Trainer(cfg)
    parts = {**step_parts(trainer), "step": trainer.train_step}
    for fn in parts.values():  # warm-up: allocator, kernels, first-call overheads
        fn(), fn()
    times = {name: [] for name in parts}
    peaks = []
    for r in range(rounds):
        peaks.append(matmul_gflops(matmul_n))
        for name, fn in parts.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            times[name].append((time.perf_counter() - t0) / steps_per_round)
        print(f"round {r + 1}/{rounds}: " + "  ".join(f"{n} {v[-1] * 1e3:.1f} ms" for n, v in times.items())
              + f"  matmul {peaks[-1]:.0f} GFLOP/s", file=log, flush=True)
    ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    ms["other"] = ms["step"] - sum(ms[p] for p in PARTS)  # below 0: the parts cost more apart than together
    flops = counted_flops(parts["generator"])  # G forward + backward over the step's images
    images = len(Trainer.step_images(trainer.sample_batch(0)))
    achieved = flops / (ms["step"] / 1e3) / 1e9
    peak = statistics.median(peaks)
    return {
        "benchmark": "profile", "learner": cfg.learner, "lam": cfg.lam, "ways": cfg.ways, "shots": cfg.shots,
        "queries": cfg.queries, "meta_batch": cfg.meta_batch, "ext_batch": cfg.ext_batch, "images_per_step": images,
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
        "share_of_step": {k: round(ms[k] / ms["step"], 3) for k in (*PARTS, "other")},
        "images_per_s": round(images / (ms["step"] / 1e3), 1),
        "generator_mflops_per_image": round(flops / images / 1e6, 2),  # forward + backward
        "achieved_gflops": round(achieved, 2), "matmul_peak_gflops": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3), "device": str(trainer.device), "machine": machine(),
    }


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="omniglot", help="the training configuration to profile (default omniglot)")
    parser.add_argument("--learner")
    parser.add_argument("--lam", type=float)
    add_rounds(parser, default=5)
    add_sets(parser)


def run(args) -> dict:
    sizes = dict(rounds=check_rounds(args.rounds))
    name = "smoke" if args.smoke else args.preset  # the omniglot preset's 20-way tasks need Omniglot's classes
    cfg = preset(name).with_overrides(learner=args.learner, lam=args.lam)
    if args.smoke:
        cfg, sizes = cfg.with_overrides(**SMOKE_DATA_SET, **SMOKE_MODEL), SMOKE
    sets = parse_sets(args.sets)
    return {**profile(with_sets(cfg, sets), **sizes), "set": sets}
