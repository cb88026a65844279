"""The memory one training step needs, estimated from the settings before anything is allocated,
and checked against the memory this machine (or its GPU) has available.

The estimate counts what the backward pass must keep of every image in the step: the input as
float32 and, per stage of the concept generator, the activations autograd saves (float32). A
3x3 conv + norm + ReLU + 2x2 max-pool stage (conv4) keeps its conv output, its norm output and
its pooled output with the pool's indices: about 3 maps of the stage's width at the stage's input
side. A ResNet-12 stage (three convs with norms and LeakyReLUs, a 1x1 shortcut with its norm,
the sum, a LeakyReLU and the pool) keeps about 12. The gradients of those activations, the
optimizer and the meta-learner's own tensors come on top, so this is a lower estimate: a step the
check refuses cannot fit, and one it lets through may still be tight.

    images = meta_batch * ways * (shots + queries) + ext_batch      (ext_batch only when lambda > 0)
    bytes  = images * 4 * (channels * side**2 + sum over stages of K * width_s * side_s**2)

with K the backbone's maps per stage (MAPS_PER_STAGE), side_s the stage's input side (halved
by each pool) and width_s its output channels. Refused when it exceeds MARGIN of the memory
available now: MemAvailable from /proc/meminfo (else the free physical pages) on a CPU, the
free memory torch.cuda.mem_get_info reports on a GPU. The message names the settings in the
words of where the person is: flags on the command line, field labels in the app (`words`).
"""
from __future__ import annotations

import os

from engine.config import TrainConfig
from engine.data.imageset import Preprocess
from engine.errors import UserError

MAPS_PER_STAGE = {"conv4": 3, "resnet12": 12}  # activations kept per image per stage (see the module doc)
MARGIN = 0.8  # at most this share of the memory available now; the rest for the data, model and the step's temporaries
SIZE_SETTINGS = ("meta_batch", "ways", "shots", "queries", "ext_batch")
FLAG_WORDS = {n: f"--{n.replace('_', '-')}" for n in SIZE_SETTINGS + ("image_size", "width")}


def step_images(cfg: TrainConfig) -> int:
    """Images through the concept generator in one step."""
    return cfg.meta_batch * cfg.ways * (cfg.shots + cfg.queries) + (cfg.ext_batch if cfg.lam > 0 else 0)


def stage_widths(cfg: TrainConfig) -> list[int]:
    w = cfg.width
    return [w, w, w, cfg.concept_dim] if cfg.backbone != "resnet12" else [w, 2 * w, 4 * w, cfg.concept_dim]


def image_shape(cfg: TrainConfig) -> tuple[int, int]:
    """(side, channels) of the step's images; before the data is read, the smallest it can be
    (channels unknown: gray, at its default size), so an early check never refuses too much."""
    channels = cfg.channels or 1
    return Preprocess(cfg.image_size, channels, cfg.polarity).resolved_size(channels), channels


def step_bytes(cfg: TrainConfig) -> int:
    """The lower estimate of one step's memory (module doc)."""
    side, channels = image_shape(cfg)
    per_image = channels * side * side
    k = MAPS_PER_STAGE.get(cfg.backbone, max(MAPS_PER_STAGE.values()))
    for width in stage_widths(cfg):
        per_image += k * width * side * side
        side = max(1, side // 2)
    return step_images(cfg) * 4 * per_image


def available_bytes(device: str = "cpu") -> int | None:
    """Memory available now on `device` ("cpu", "cuda", "cuda:1"...), or None when unknown."""
    if str(device).startswith("cuda"):
        import torch

        try:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"  # binary units, as every size the app states


def check_step_memory(cfg: TrainConfig, device: str = "cpu", runs: int = 1, processes: int = 1,
                      words: dict[str, str] | None = None) -> None:
    """Raise UserError, with the numbers, when `runs` runs of `cfg` cannot take a step in the
    memory available on `device`; with data parallelism each of `processes` takes its share.
    `words` names the settings (default: their command-line flags)."""
    words = {**FLAG_WORDS, **(words or {})}
    # several GPUs each hold their own share; CPU processes on one host share its memory
    need = step_bytes(cfg) * runs // (max(1, processes) if str(device).startswith("cuda") else 1)
    have = available_bytes(str(device))
    if have is None or need <= MARGIN * have:
        return
    side, channels = image_shape(cfg)
    ext = f" + {cfg.ext_batch} external" if cfg.lam > 0 else ""
    where = "the GPU has" if str(device).startswith("cuda") else "this machine has"
    both = f" for {runs} runs side by side" if runs > 1 else ""
    sizes = [words[n] for n in SIZE_SETTINGS[:-1]] + ([words["ext_batch"]] if cfg.lam > 0 else [])  # λ = 0: no external batch
    lower = ", ".join(sizes[:-1]) + f" or {sizes[-1]}"
    raise UserError(
        f"one training step needs about {_gib(need)} of memory{both} ({step_images(cfg):,} images of "
        f"{side}x{side}x{channels}: {cfg.meta_batch} tasks x {cfg.ways} ways x ({cfg.shots} shots + "
        f"{cfg.queries} queries){ext}, through {cfg.backbone} of width {cfg.width}), but {where} "
        f"{_gib(have)} available and a step may use at most {MARGIN:.0%} of it ({_gib(MARGIN * have)}); "
        f"lower {lower}")
