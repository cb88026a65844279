"""Concept generators G: image (B, C, H, W) -> concept vector (B, concept_dim)."""
from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserError


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # batch-independent: same concepts for an image whatever else is in the batch
        # min(8, C) as before wherever it divides C; otherwise the most groups (<= 8) that do
        return nn.GroupNorm(max(g for g in range(1, 9) if channels % g == 0), channels)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown norm {kind!r}: use batch, group or none")


class Generator(nn.Module):
    # channels_last (NHWC) weights and activations: a training step takes about 0.75x the time of
    # the default NCHW layout on this 2-core CPU (python -m engine bench cost --parts settings)
    memory_format = torch.channels_last


class Conv4(Generator):
    """The standard few-shot backbone: 4 x [3x3 conv, norm, ReLU, 2x2 max-pool].

    The last block has concept_dim channels; what is left of the spatial map is averaged
    (at 28 px it is already 1x1, so this is exactly the classic flattened conv4 output).
    """

    def __init__(self, in_channels: int, concept_dim: int = 64, hidden: int = 64, norm: str = "batch"):
        super().__init__()
        widths = [in_channels, hidden, hidden, hidden, concept_dim]
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), _norm(norm, b), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            for a, b in zip(widths[:-1], widths[1:])
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return self.blocks(x).mean(dim=(2, 3))  # (B, concept_dim, h, w) -> (B, concept_dim)


class ResidualBlock(nn.Module):
    """ResNet-12 stage: three 3x3 convs with a 1x1 shortcut, then 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _norm(norm, cout))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x):
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(Generator):
    """A deeper residual generator for RGB images: 4 stages of widths (w, 2w, 4w, concept_dim)."""

    def __init__(self, in_channels: int, concept_dim: int = 64, hidden: int = 64, norm: str = "batch"):
        super().__init__()
        widths = [in_channels, hidden, 2 * hidden, 4 * hidden, concept_dim]
        self.stages = nn.Sequential(*[ResidualBlock(a, b, norm) for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return self.stages(x).mean(dim=(2, 3))  # (B, concept_dim)


BACKBONES = {"conv4": Conv4, "resnet12": ResNet12}


def build_generator(name: str, in_channels: int, concept_dim: int, hidden: int, norm: str) -> nn.Module:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    if concept_dim < 2 or hidden < 1:
        raise UserError(f"concept dimension must be at least 2 and width at least 1 (got {concept_dim}, {hidden})")
    model = BACKBONES[name](in_channels, concept_dim=concept_dim, hidden=hidden, norm=norm)
    return model.to(memory_format=model.memory_format)
