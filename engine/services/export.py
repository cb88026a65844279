"""A trained run and a support set in one TorchScript file, usable with torch alone.

    m = torch.jit.load("model.pt")
    probs = m(images)       # uint8 (N, H, W) or (N, H, W, C), any size -> (N, len(m.classes)) probabilities
    answer = m.predict(images)  # (N,) class index, -1 where the score is below m.unknown_below ("none of these")

The file holds
- the run's preprocessing, as the Adapt page prepares uploads: images over 2 x 256 px a side box-reduced
  by an integer factor (engine.data.images.decode's reduce_to), RGBA composited on white paper,
  gray as Pillow's "L" conversion (or gray repeated to RGB), a Lanczos resize to the run's square size
  written out as Pillow's (separable, horizontal pass first, each pass rounded to 8 bits), and the
  support task's polarity flip (bright ink on dark paper) applied to every image;
- the concept generator (traced at that size, in eval mode);
- the support set's class representation, asked of the learner through its protocol
  (engine.learners.base): its class centres (`centres`, scored by minus the squared distance), for
  gradient learners the head it adapted to the support set (`adapt`, scored by
  engine.learners.head.head_logits), or for matching networks the support concepts themselves
  (`attention_scale`: each query attends over them). Before anything is written, the file's scores
  are checked against the learner's own `logits` on the support set; a learner whose answers are none
  of these is refused with a message;
- the run's calibration (engine.eval.calibration): `temperature` divides the scores before the
  softmax, `unknown_below` is the threshold on `m.score(images)` (the largest score).
"""

import copy
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import nn

from engine.data.episodes import channels_first
from engine.errors import UserError
from engine.eval.calibration import Calibration, run_calibration
from engine.eval.checkpoints import load_model
from engine.learners.head import head_logits
from engine.models.deml import DEMLModel, eval_mode
from engine.runs import RunDir
from engine.services.adapt import REDUCE_TO, Task, Upload, prepare_upload
from engine.services.task_files import read_task_classes

CENTRES, HEAD, ATTENTION = 0, 1, 2  # how the file scores a query's concept
KIND_NAMES = {CENTRES: "class centres", HEAD: "adapted head", ATTENTION: "support concepts (attention)"}


def lanczos_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) resampling matrix of Pillow's LANCZOS filter (support 3, widened when shrinking)."""
    scale = float(n_in) / float(n_out)
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    j = torch.arange(n_in, dtype=torch.float64)
    lo = torch.clamp(torch.floor(centre - support + 0.5), min=0.0)
    hi = torch.clamp(torch.floor(centre + support + 0.5), max=float(n_in))
    x = (j[None, :] - centre[:, None] + 0.5) / fscale
    w = torch.sinc(x) * torch.sinc(x / 3.0)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None]) & (x.abs() < 3.0)
    w = torch.where(inside, w, torch.zeros_like(w))
    return w / w.sum(1, keepdim=True)


class Exported(nn.Module):
    classes: List[str]
    head: Dict[str, torch.Tensor]

    def __init__(self, generator: nn.Module, size: int, channels: int, invert: bool, kind: int,
                 params: dict, classes: List[str], temperature: float, unknown_below: float):
        super().__init__()
        self.generator = generator
        self.image_size, self.channels, self.invert, self.kind = size, channels, invert, kind
        self.reduce_to = REDUCE_TO
        self.classes = list(classes)
        self.temperature, self.unknown_below = float(temperature), float(unknown_below)
        self.centres = params.get("centres", torch.zeros(0))
        self.support = params.get("support", torch.zeros(0))  # ATTENTION: unit support concepts (M, D)
        self.onehot = params.get("onehot", torch.zeros(0))  # ... and their labels, one-hot (M, classes)
        self.scale = params.get("scale", torch.ones(1))  # ... and the learner's similarity scale (1,)
        self.head = {k: v for k, v in params.items() if k not in ("centres", "support", "onehot", "scale")}

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Images much larger than needed shrunk by an integer box filter to at least REDUCE_TO px a side,
        as engine.data.images.decode does for the app (Pillow's Image.reduce, rounded to 8 bits)."""
        kx, ky = max(1, x.shape[2] // self.reduce_to), max(1, x.shape[1] // self.reduce_to)
        if kx == 1 and ky == 1:
            return x
        y = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), [ky, kx], [ky, kx], ceil_mode=True)
        return torch.floor(y + 0.5).permute(0, 2, 3, 1)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W) or (N, H, W, C) -> float (N, channels, size, size) in [0, 1], as the app prepares images."""
        x = images.to(torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        if x.dim() != 4 or x.shape[-1] not in (1, 3, 4):
            raise ValueError("images must be uint8 (N, H, W) or (N, H, W, C) with C = 1, 3 or 4")
        x = self.reduce(x)
        if x.shape[-1] == 4:  # transparent pixels become white paper
            alpha = x[..., 3:] / 255.0
            x = torch.round(x[..., :3] * alpha + 255.0 * (1.0 - alpha))
        if self.channels == 1 and x.shape[-1] == 3:  # Pillow's "L": ITU-R 601-2 luma, rounded
            x = torch.floor((x[..., 0] * 19595.0 + x[..., 1] * 38470.0 + x[..., 2] * 7471.0 + 32768.0) / 65536.0)
            x = x.unsqueeze(-1)
        if self.channels == 3 and x.shape[-1] == 1:
            x = x.expand(-1, -1, -1, 3)
        x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        h, w = x.shape[2], x.shape[3]
        if w != self.image_size:
            x = torch.clamp(torch.round(x @ lanczos_weights(w, self.image_size).to(x.dtype).t()), 0.0, 255.0)
        if h != self.image_size:
            x = torch.clamp(torch.round(lanczos_weights(h, self.image_size).to(x.dtype) @ x), 0.0, 255.0)
        if self.invert:
            x = 255.0 - x
        return x.contiguous() / 255.0

    def concept_scores(self, z: torch.Tensor) -> torch.Tensor:
        """Concepts (N, D) -> the learner's scores (N, classes)."""
        if self.kind == 0:
            c = self.centres
            return -(z.pow(2).sum(-1, keepdim=True) - 2.0 * z @ c.t() + c.pow(2).sum(-1).unsqueeze(0))
        if self.kind == 2:  # matching networks: attention over every support concept
            unit = z / torch.linalg.vector_norm(z, 2.0, [-1], True).clamp_min(1e-12)
            attention = torch.softmax(unit @ self.support.t() * self.scale, -1)  # (N, M)
            return torch.clamp(attention @ self.onehot, min=1e-8).log()  # (N, classes)
        return head_logits(self.head, z)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The learner's raw scores (N, classes) (before the temperature)."""
        with torch.no_grad():
            return self.concept_scores(self.generator(self.prepare(images)))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """The largest score of each image (N,): below unknown_below, the answer is "none of these"."""
        return self.scores(images).max(-1)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(images) / self.temperature, -1)

    @torch.jit.export
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) index into classes, or -1 where the score is below unknown_below."""
        s = self.scores(images)
        best = s.max(-1)
        return torch.where(best[0] < self.unknown_below, torch.full_like(best[1], -1), best[1])


@dataclass
class ExportFile:
    """What `export_task` made: the file's bytes and what it holds."""

    data: bytes
    classes: list[str]
    kind: str  # KIND_NAMES: "class centres", "adapted head" or "support concepts (attention)"
    temperature: float
    unknown_below: float
    problems: list[str] = field(default_factory=list)
    calibration: Calibration | None = None  # what the temperature and threshold came from


def representation(model: DEMLModel, task: Task, device, steps: int | None) -> tuple[int, dict, torch.Tensor]:
    """(kind, params, support concepts) of the task's support set, asked of the learner's protocol."""
    xs = channels_first(task.support).float().div_(255.0).to(device)
    labels = torch.as_tensor(task.support_labels, device=device)[None]
    with eval_mode(model):
        zs = model.concepts(xs)
        centres = model.learner.centres(zs[None], labels, task.ways)
        if centres is not None:
            return CENTRES, {"centres": centres[0].detach().cpu().float()}, zs
        scale = model.learner.attention_scale()
        if scale is not None:
            unit = torch.nn.functional.normalize(zs, dim=-1)
            onehot = torch.nn.functional.one_hot(labels[0], task.ways)
            return ATTENTION, {"support": unit.detach().cpu().float(), "onehot": onehot.cpu().float(),
                               "scale": torch.tensor([scale], dtype=torch.float32)}, zs
        if model.learner.adapts_by_steps:
            adapted = model.learner.adapt(zs[None], labels, task.ways, steps, training=False)[-1]
            return HEAD, {k: v[0].detach().cpu().float().contiguous() for k, v in adapted.items()}, zs
    raise UserError(f"{model.learner.display_name} has no class centres, task head or support attention to "
                    "export; export a run of another learner")


def export_task(model: DEMLModel, task: Task, size: int, channels: int, device, steps: int | None = None,
                calibration: Calibration | None = None) -> ExportFile:
    """The TorchScript file (as bytes) for this model and the support set of `task`."""
    kind, params, zs = representation(model, task, device, steps)
    gen = copy.deepcopy(model.generator).cpu().float().eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    example = torch.zeros(2, channels, size, size)
    t = calibration.temperature if calibration else 1.0
    below = calibration.unknown_below if calibration else -math.inf
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what torch-only users can load
        traced = torch.jit.trace(gen, example, check_trace=False)
        module = torch.jit.script(Exported(traced, size, channels, bool(task.inverted), kind, params,
                                           list(task.class_names), t, below))
    with torch.no_grad(), eval_mode(model):  # the file must answer as the learner does
        labels = torch.as_tensor(task.support_labels, device=device)[None]
        want = model.learner.logits(zs[None], labels, zs[None], task.ways, steps=steps, training=False)[0].cpu()
        got = module.concept_scores(zs.cpu().float())
    if not torch.allclose(got, want.float(), rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
        raise UserError(f"{model.learner.display_name}'s answers are not a function of its class centres or adapted "
                        "head alone; this run cannot be exported")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, buf)
    return ExportFile(buf.getvalue(), list(task.class_names), KIND_NAMES[kind],
                     t, below, list(task.problems), calibration)


def export_run(run_dir: str, support: str, out: str, steps: int | None = None, device: str = "auto") -> ExportFile:
    """The command line's export: a run and a folder or zip of class folders -> `out` (written atomically)."""
    cfg, model, dev = load_model(RunDir.open(run_dir), device)
    classes = [c.__class__(c.name, c.support, []) for c in read_task_classes(support)]
    anchor = Upload(classes[0].support[0].name, classes[0].support[0].data) if classes[0].support else None
    task = prepare_upload(cfg, classes, [anchor] if anchor else [])  # one support image as a stand-in query
    try:
        cal = run_calibration(run_dir, steps, device)
    except UserError as e:
        cal = None
        task.problems.append(f"not calibrated ({e}): confidences are the raw softmax and nothing is 'unknown'")
    size = int(task.support.shape[1])
    made = export_task(model, task, size, int(task.support.shape[-1]), dev, steps, cal)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(made.data)
    os.replace(tmp, out)
    return made
