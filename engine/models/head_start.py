"""The built-in generator a run can start from (--head-start): a conv4 for 28 px grayscale images,
trained by `python -m engine train --preset head-start` on Omniglot alphabets (assets/README.md says
which, with the command, the license and its sha256). Few images train far better from it than from
random weights (python -m engine bench headstart; BENCHMARKS.md).

`resolve` turns the setting "auto" into "on" or "off" once the data is known, so config.json says how
a run started; `apply` loads the asset into a run's generator when the setting is "on"."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError

ASSET = Path(__file__).resolve().parents[2] / "assets" / "head_start_gray28.pt"


@dataclass(frozen=True)
class Fit:
    """The generator settings the asset was trained with; a run must match them to start from it."""

    backbone: str = "conv4"
    channels: int = 1
    image_size: int = 28
    width: int = 64
    concept_dim: int = 64
    norm: str = "batch"

    def problems(self, cfg, channels: int) -> list[str]:
        """What in this run differs from the asset, as 'flag value (the asset's: value)' phrases."""
        run = {"backbone": cfg.backbone, "channels": channels, "image_size": cfg.image_size or self.image_size,
               "width": cfg.width, "concept_dim": cfg.concept_dim, "norm": cfg.norm}
        return [f"--{name.replace('_', '-')} {run[name]} (the built-in generator's: {getattr(self, name)})"
                for name in run if run[name] != getattr(self, name)]


FIT = Fit()
UPLOAD_KINDS = ("folder", "zip")  # what people bring; glyphs, digits and .npz arrays train from scratch under auto


def offered(dataset: str) -> bool:
    """Whether the Train page offers the head start for `dataset`: the kinds auto may start from."""
    from engine.data.sources import parse_spec

    try:
        return parse_spec(dataset)[0] in UPLOAD_KINDS
    except UserError:
        return False


def resolve(cfg, channels: int):
    """cfg with head_start "on" or "off" (never "auto"): auto is on for a 1-channel folder or zip whose
    generator fits the asset, off otherwise; "on" for a run that does not fit is a UserError."""
    if cfg.head_start == "off":
        return cfg
    problems = FIT.problems(cfg, channels)
    if cfg.head_start == "on":
        if problems:
            raise UserError(_misfit(problems))
        if not ASSET.is_file():
            raise UserError(f"--head-start on: the built-in generator {ASSET} is missing; restore it from the "
                            "repository (git checkout assets/) or use --head-start off")
        return cfg
    on = offered(cfg.dataset) and not problems and ASSET.is_file()
    return cfg.with_overrides(head_start="on" if on else "off")


def _misfit(problems: list[str]) -> str:
    extra = ("; it was trained on grayscale images, so color sets train from scratch"
             if any(p.startswith("--channels") for p in problems) else "")
    return (f"--head-start on: this run's generator does not fit the built-in one: {'; '.join(problems)}{extra}. "
            "Use those settings, or --head-start off to train from scratch")


def load_state() -> dict[str, torch.Tensor]:
    """The asset's state_dict (tensors only: torch.load with weights_only=True)."""
    try:
        state = torch.load(ASSET, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"the built-in generator {ASSET} is missing; restore it (git checkout assets/) "
                        "or use --head-start off") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{ASSET} is not a generator's state_dict; restore it (git checkout assets/)")
    return state


def apply(generator: nn.Module, cfg) -> bool:
    """Load the asset into `generator` when cfg.head_start is "on" (True), else leave it (False).
    Keys and shapes must match exactly: a generator of other settings is a UserError."""
    if cfg.head_start != "on":
        return False
    state, own = load_state(), generator.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise UserError(_misfit([f"--backbone {cfg.backbone}, --width {cfg.width}, --concept-dim {cfg.concept_dim}, "
                                 f"--norm {cfg.norm} (the built-in generator's: {FIT.backbone}, {FIT.width}, "
                                 f"{FIT.concept_dim}, {FIT.norm}, {FIT.channels} channel)"]))
    generator.load_state_dict(state)
    return True


def save_from_run(run_dir: str, out: str | Path = ASSET) -> Path:
    """The generator of a trained run's newest checkpoint, alone, as the asset (how assets/ got it)."""
    from engine.runs import RunDir

    state, _ = RunDir.open(run_dir).load_checkpoint()
    generator = {k.removeprefix("generator."): v.contiguous() for k, v in state["model"].items()
                 if k.startswith("generator.")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(generator, out)
    return out


if __name__ == "__main__":  # python -m engine.models.head_start RUN_DIR [OUT.pt]
    import sys

    if not 2 <= len(sys.argv) <= 3:
        sys.exit("usage: python -m engine.models.head_start RUN_DIR [OUT.pt]")
    print(save_from_run(*sys.argv[1:3]))
