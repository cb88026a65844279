"""python -m engine bench throughput: trainer steps against the raw generator forward + backward."""
from __future__ import annotations

import statistics
import sys
import time

from engine.bench import SMOKE_DATA_SET, SMOKE_MODEL, add_rounds, check_rounds
from engine.bench.machine import machine
from engine.config import TrainConfig, preset
from engine.train.trainer import Trainer

SMOKE = dict(rounds=2, steps_per_round=2)  # on a tiny model and tiny data (SMOKE_MODEL, SMOKE_DATA)


def throughput(cfg: TrainConfig, rounds: int = 6, steps_per_round: int = 10, log=sys.stderr) -> dict:
    """Trainer steps against the raw forward + backward of the generator on the same number of
    images, interleaved in rounds so both see the same machine load. ratio = trainer / raw."""
    trainer = Trainer(cfg)
    x = Trainer.step_images(trainer.sample_batch(0))  # (B, C, H, W): the very images of a training step, in one pass
    images = len(x)
    generator = trainer.model.generator

    def raw_step():
        generator.zero_grad(set_to_none=True)
        generator(x).square().mean().backward()

    for _ in range(3):  # warm-up: allocator, kernels, first-call overheads
        trainer.train_step()
        raw_step()
    trainer_times, raw_times = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            raw_step()
        raw_times.append((time.perf_counter() - t0) / steps_per_round)
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            trainer.train_step()
        trainer_times.append((time.perf_counter() - t0) / steps_per_round)
        print(f"round {r + 1}/{rounds}: trainer {trainer_times[-1] * 1e3:.1f} ms/step, "
              f"raw G fwd+bwd {raw_times[-1] * 1e3:.1f} ms", file=log, flush=True)
    ratios = [t / r for t, r in zip(trainer_times, raw_times)]
    return {
        "benchmark": "throughput", "learner": cfg.learner, "lam": cfg.lam, "images_per_step": images,
        "trainer_ms_per_step": round(1e3 * statistics.median(trainer_times), 2),
        "raw_ms_per_step": round(1e3 * statistics.median(raw_times), 2),
        "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3), "trainer_images_per_s": round(images / statistics.median(trainer_times), 1),
        "device": str(trainer.device), "machine": machine(),
    }


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="demo", help="the training configuration to time (default demo)")
    parser.add_argument("--learner")
    parser.add_argument("--lam", type=float)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    add_rounds(parser)


def run(args) -> dict:
    sizes = dict(rounds=check_rounds(args.rounds))
    cfg = preset(args.preset).with_overrides(learner=args.learner, lam=args.lam, device=args.device)
    if args.smoke:
        cfg, sizes = cfg.with_overrides(**SMOKE_DATA_SET, **SMOKE_MODEL), SMOKE
    return throughput(cfg, **sizes)
