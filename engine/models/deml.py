"""The three DEML parts in one module, so one state_dict checkpoints them together."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.func
from torch import nn

from engine.errors import UserError
from engine.learners import MetaLearner, build_learner
from engine.models import ConceptDiscriminator, build_generator


class DEMLModel(nn.Module):
    """generator G: images -> concepts; discriminator D: concepts -> external classes (or None
    when the run has no external set); learner M: support/query concepts -> query logits."""

    def __init__(self, cfg, channels: int, external_classes: int):
        super().__init__()
        self.generator = build_generator(cfg.backbone, channels, cfg.concept_dim, cfg.width, cfg.norm)
        self.discriminator = (ConceptDiscriminator(cfg.concept_dim, external_classes, cfg.disc_hidden)
                              if external_classes > 0 else None)
        self.learner: MetaLearner = build_learner(cfg.learner, cfg.concept_dim, cfg.learner_config())
        self.external_classes = external_classes

    def concepts(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) in chunks, without gradients (for evaluation and snapshots)."""
        with torch.no_grad():
            return torch.cat([self.generator(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def external_pass(generator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Concepts of the external images (B, C, H, W) -> (B, D) for the discriminator's loss, in a pass of
    their own: in training mode BatchNorm normalises them by their own batch statistics (never the
    task images'), and the running statistics, which evaluation uses, stay exactly as the task pass
    left them: the pass runs on copies of the buffers (torch.func.functional_call), which BatchNorm
    updates in place and which are then dropped; the parameters are the module's own, so gradients
    reach G as in any pass. Why not momentum 0 for the pass: it leaves num_batches_tracked counting,
    does nothing for a layer with momentum None (a running average weighed by that count), and is one
    more setting SyncBatchNorm must honour; and why not restore the buffers in place afterwards:
    BatchNorm's backward keeps them, and autograd refuses tensors changed after they were saved.
    Copies are exact for every norm layer whatever its update rule."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (images,))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm on running statistics) for the block, then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# torch's generator is one per process: two threads building models at once would draw their initial
# weights from one stream in turn, and neither would get what its seed alone gives
_INIT_LOCK = threading.Lock()


def seeded_model(cfg, channels: int, external_classes: int, seed: int) -> DEMLModel:
    """A model whose initial weights depend on `seed` alone, whatever other threads are doing;
    the process's random state is left as it was."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DEMLModel(cfg, channels, external_classes)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device auto or cpu")
    return torch.device(name)
