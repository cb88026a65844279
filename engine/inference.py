"""A trained run, loaded back for evaluation, adaptation and the live views."""
from __future__ import annotations

import torch

from engine.config import TrainConfig
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import make_splits
from engine.model import DEMLModel, resolve_device
from engine.runs import RunDir


def load_trained(run_dir: str, device: str = "auto") -> tuple[TrainConfig, DEMLModel, torch.device]:
    """The run's config and its model at the last good checkpoint (weights only, no code)."""
    run = RunDir.open(run_dir)
    cfg = TrainConfig.from_dict(run.config())
    state, _ = run.load_checkpoint()
    dev = resolve_device(device)
    model = DEMLModel(cfg, cfg.channels, state["external_classes"])
    model.load_state_dict(state["model"])
    return cfg, model.to(dev).eval(), dev


def evaluation_classes(cfg: TrainConfig, dataset: str | None, classes: str) -> ImageSet:
    """The images to evaluate on, prepared exactly as the run's training data (size, channels,
    polarity). classes="test": the meta-test part under the run's split; "all": every class."""
    data = load_imageset(dataset or cfg.dataset, Preprocess(cfg.image_size, cfg.channels, cfg.polarity))
    if classes == "all":
        return data
    external = "auto" if cfg.external == "auto" else None
    return make_splits(data, cfg.split_config(), external).test
