"""The training configuration: one dataclass whose every field the command line can set, plus
named presets. config.json in a run directory is `asdict(TrainConfig)`: enough to rebuild it."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from engine.data.imageset import Preprocess
from engine.data.splits import SplitConfig
from engine.errors import UserError
from engine.learners import LearnerConfig

REPO = Path(__file__).resolve().parents[1]
MIN_IMAGE_SIZE = 16  # four 2x2 poolings need at least 16 px
SEED_MAX = 2**32 - 1  # numpy's legacy seeding range (np.random.seed); SeedSequence takes more, nothing needs it

# Upper bounds on the settings, far above any useful value: each keeps one request (a typo, a
# visitor) from allocating or computing without end before the first step. The settings that set
# a training step's size together (ways, shots, queries, meta_batch, ext_batch, image_size, width)
# are checked against the machine's memory as well, by engine.train.budget.
LIMITS = {
    "seed": SEED_MAX, "split_seed": SEED_MAX,
    "steps": 10_000_000, "val_every": 10_000_000, "snapshot_every": 10_000_000, "checkpoint_every": 10_000_000,
    "ways": 1_000, "shots": 1_000, "queries": 1_000, "meta_batch": 1_024, "ext_batch": 4_096,
    "val_episodes": 10_000, "probe_per_class": 100, "probe_classes": 200, "train_limit": 1_000_000,
    "width": 512, "concept_dim": 2_048, "disc_hidden": 4_096, "head_hidden": 4_096, "inner_steps": 100,
    "image_size": 512, "minutes": 7 * 24 * 60,
}


def shared_dir() -> Path:
    """Where the team's shared data lives: $CONCEPTSCAPE_SHARED, else ../shared beside the repo."""
    return Path(os.environ.get("CONCEPTSCAPE_SHARED", REPO.parent / "shared"))


def runs_root() -> Path:
    """Where the app keeps runs: $CONCEPTSCAPE_RUNS, else runs/ in the working directory."""
    return Path(os.environ.get("CONCEPTSCAPE_RUNS", "runs"))


def uploads_root() -> Path:
    """Where the app keeps uploaded image sets: $CONCEPTSCAPE_UPLOADS, else uploads/ here."""
    return Path(os.environ.get("CONCEPTSCAPE_UPLOADS", "uploads"))


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "glyphs"  # SPEC: glyphs[:opts], digits, or a folder / .zip / .npz path
    external: str = "auto"  # SPEC of the discriminator's classes; "auto": a class-disjoint part of dataset
    image_size: int | None = None  # None: 28 px gray, 64 px RGB (filled in once the data is read)
    channels: int | None = None  # None: from the data (filled in once the data is read)
    polarity: str = "auto"  # gray sets are flipped to bright ink on dark paper
    val_split: float = 0.1  # <1: fraction of groups/classes, >=1: a count (see SplitConfig)
    test_split: float = 0.2
    external_split: float = 0.2  # used when external is "auto"
    train_limit: int = 0  # >0: at most this many meta-train groups/classes (scarce-data studies)
    rotations: bool = False  # each 90-degree turn of a meta-train class is a new class (Omniglot)
    # training task images distorted at random, each on its own: none | shift (by whole pixels, up to
    # 1/14 of the side: 2 px of 28) | affine (shifted up to 2 px of 28, turned up to 10 degrees, scaled
    # up to 10%, sheared up to 0.1, resampled bilinearly); engine/data/augment.py
    augment: str = "none"
    pool_external: bool = False  # control for DEML: external classes join meta-train episodes instead
    split_seed: int = 0  # separate from seed so runs with different seeds share test classes
    exclude_groups: str = ""  # comma-separated groups (alphabets) left out of the data before it is split
    # meta-validation on "classes" (held-out classes), "images" (Q held-out images of each meta-train
    # class: for data with too few classes to hold any out) or "train" (the meta-train images: too
    # few images to hold any out); engine.data.plan chooses it for small data
    validation: str = "classes"
    # tasks
    ways: int = 5
    shots: int = 1
    queries: int = 5  # per class, in training and validation episodes
    meta_batch: int = 4  # tasks per step
    ext_batch: int = 64  # external images per step (the paper's 64)
    lam: float = 1.0  # weight of the discrimination loss; 0 = the vanilla meta-learner
    # models
    backbone: str = "conv4"
    concept_dim: int = 64
    width: int = 64  # channels of the generator's hidden layers
    norm: str = "batch"
    disc_hidden: int = 0  # 0: linear discriminator (exact decision regions on a PCA map)
    # start the generator from the built-in one (assets/head_start_gray28.pt, engine/models/head_start.py).
    # auto: on for 1-channel folders and zips (what people upload) whose generator fits it; off for the
    # built-in data and .npz arrays. A run records what auto chose ("on" or "off") in config.json
    head_start: str = "auto"  # auto | on | off (off: from scratch)
    # meta-learner
    learner: str = "protonet"
    inner_steps: int = 5
    # gradient learners' inner step size: the inner loss sums over classes, so a class row moves by
    # this step at any number of ways (the old 0.5 over a mean loss was 0.1 per row at 5 ways)
    inner_lr: float = 0.1
    first_order: bool = False
    head_hidden: int = 0
    batched: bool = True
    # optimisation
    steps: int = 2000  # with --minutes, an upper bound (the command line lifts it when --steps is not given)
    # >0: train for this many minutes (the training loop's wall time, validation and snapshots included,
    # summed over resumes); the learning-rate schedule runs over the time, and config.json's steps
    # becomes the steps done. Not repeatable to the bit: the steps done depend on the machine's pace
    minutes: float = 0.0
    lr: float = 1e-3  # Adam, shared by G, D and M
    lr_schedule: str = "cosine"  # "cosine" decays to 5% of lr by the last step; "constant"
    weight_decay: float = 0.0
    # bookkeeping
    val_every: int = 200  # steps between validations on fixed episodes
    val_episodes: int = 100
    snapshot_every: int = 50  # steps between concept-space snapshots (plus 1, 2, 4, 8... early on)
    # also a snapshot when this many seconds of wall time passed since the last one (0: by step only), so a
    # live map moves every couple of seconds however slow a step is; on long runs the gap grows to 1/400 of
    # the time trained so far. A snapshot of the demo's 150 probe images took ~50 ms on 2 CPU cores
    # (measured: Trainer.snapshot(), demo preset). Changes when snapshots are taken, never the training.
    snapshot_seconds: float = 1.5
    probe_per_class: int = 5  # probe images per class in snapshots
    probe_classes: int = 10  # classes per split (meta-train, meta-test, external) in snapshots
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA

    def __post_init__(self):
        def flags(names):
            return ", ".join(f"--{n.replace('_', '-')} {getattr(self, n)}" for n in names)

        positive = ["ways", "shots", "queries", "meta_batch", "steps", "val_every", "val_episodes", "snapshot_every",
                    "checkpoint_every", "concept_dim", "width", "probe_per_class", "probe_classes"]
        non_negative = ["ext_batch", "train_limit", "seed", "split_seed", "val_split", "test_split", "snapshot_seconds",
                        "external_split", "head_hidden", "disc_hidden", "inner_steps", "weight_decay", "lam", "minutes"]
        finite = ["lr", "inner_lr", "lam", "weight_decay", "val_split", "test_split", "external_split",
                  "snapshot_seconds", "minutes"]
        if bad := [n for n in finite if not math.isfinite(getattr(self, n))]:
            raise UserError(f"these settings must be finite numbers: {flags(bad)}")
        if bad := [n for n in positive if getattr(self, n) < 1]:
            raise UserError(f"these settings must be at least 1: {flags(bad)}")
        if bad := [n for n in non_negative if getattr(self, n) < 0]:
            raise UserError(f"these settings must be 0 or more: {flags(bad)}")
        if self.ways < 2:
            raise UserError(f"--ways must be at least 2 (got {self.ways})")
        self._check_limits()
        if self.lam > 0 and self.ext_batch < 1:
            raise UserError("--ext-batch must be at least 1 when --lam > 0")
        if self.lr <= 0 or self.inner_lr <= 0:
            raise UserError(f"learning rates must be positive (got --lr {self.lr}, --inner-lr {self.inner_lr})")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise UserError(f"--image-size {self.image_size} is too small: the generators pool four times by 2, "
                            f"so use at least {MIN_IMAGE_SIZE} px")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UserError(f"--lr-schedule must be cosine or constant, not {self.lr_schedule!r}")
        if self.augment not in _known_names("augment"):
            raise UserError(f"--augment must be one of {', '.join(_known_names('augment'))}, not {self.augment!r}")
        if self.head_start not in ("auto", "on", "off"):
            raise UserError(f"--head-start must be auto, on or off, not {self.head_start!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        self.preprocess()  # validates size/channels/polarity

    def _check_limits(self) -> None:
        """Every setting in LIMITS at most its bound; one message naming each flag over it."""
        over = [f"--{n.replace('_', '-')} must be at most {bound:,} (got {getattr(self, n)})"
                for n, bound in LIMITS.items() if getattr(self, n) is not None and getattr(self, n) > bound]
        if over:
            raise UserError("; ".join(over))

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.channels, self.polarity)

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.val_split, self.test_split, self.external_split, self.train_limit,
                           self.rotations, self.pool_external, self.split_seed, self.validation, self.queries)

    def learner_config(self) -> LearnerConfig:
        return LearnerConfig(self.inner_steps, self.inner_lr, self.first_order, self.head_hidden, self.batched)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "the settings") -> TrainConfig:
        """The config a run recorded (config.json's "config"), every field type-checked first: a
        wrong type, a number that is not finite or a name this version does not know is a UserError
        naming `source`, the field and the value. Fields missing (runs written before a setting
        existed) take their defaults; keys this version does not know are ignored."""
        if not isinstance(d, dict):
            raise UserError(f"{source} is not a settings object (got {type(d).__name__}); the run cannot be rebuilt")
        known = {f.name: f for f in fields(cls)}
        values = {**RECORDED_DEFAULTS, **{k: v for k, v in d.items() if k in known}}
        for name, value in values.items():
            problem = _field_problem(name, value)
            if problem:
                text = repr(value)
                text = text if len(text) <= 60 else text[:57] + "..."
                raise UserError(f"{source}: setting {name!r} is {text}, {problem}; fix or remove it "
                                f"(removed, it takes the default {known[name].default!r})")
        return cls(**values)

    def with_overrides(self, **changes) -> TrainConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# a recorded run missing a setting ran without it: where that differs from a new run's default
RECORDED_DEFAULTS = {"head_start": "off"}  # runs made before the head start trained from scratch

_NAMES = {  # settings whose value is one of a known set of names (None: looked up when checked)
    "polarity": ("auto", "keep"), "validation": ("classes", "images", "train"), "norm": ("batch", "group", "none"),
    "lr_schedule": ("cosine", "constant"), "device": ("auto", "cpu", "cuda"), "head_start": ("auto", "on", "off"),
    "learner": None, "backbone": None, "augment": None,
}


def _known_names(name: str) -> tuple[str, ...]:
    if name == "learner":
        from engine.learners import LEARNERS

        return tuple(LEARNERS)
    if name == "backbone":
        from engine.models.backbones import BACKBONES

        return tuple(BACKBONES)
    if name == "augment":
        from engine.data.augment import AUGMENTS

        return tuple(AUGMENTS)
    return _NAMES[name]


def _field_problem(name: str, value) -> str | None:
    """Why `value` cannot be TrainConfig's field `name` (None: it can). Integers are ints (not bool,
    not 5.0, not "5"), numbers finite ints or floats, flags bools, text str, names known."""
    hint = _FIELD_TYPES[name]
    optional = "None" in hint
    if value is None:
        return None if optional else "which is not allowed (it needs a value)"
    if hint.startswith("int"):
        return None if type(value) is int else "which is not a whole number" + (" (or null)" if optional else "")
    if hint.startswith("float"):
        if type(value) not in (int, float):
            return "which is not a number"
        return None if math.isfinite(value) else "which is not a finite number"
    if hint.startswith("bool"):
        return None if type(value) is bool else "which is not true or false"
    if hint.startswith("str"):
        if type(value) is not str:
            return "which is not text"
        if name in _NAMES and value not in (choices := _known_names(name)):
            return f"which is not one of {', '.join(choices)}"
        return None
    return None


def _omniglot_npz() -> str:
    return str(shared_dir() / "data" / "omniglot" / "images_background.npz")


_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}  # "int", "int | None", "float", "str"...

# the alphabets of Omniglot's images_background_small1.zip and small2.zip (their member paths'
# <Alphabet>/ folders; tests/test_head_start.py reads them back): the head-start generator never sees them
HEAD_START_UNSEEN = ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin",
                     "Japanese_(katakana)", "Sanskrit", "Tagalog")

# Each preset is a set of overrides on the defaults; the command line's flags override it again.
PRESETS = {
    # finishes in well under 30 s on 2 CPU cores and clearly beats chance
    "smoke": dict(dataset="glyphs:classes=120,drawings=12,seed=0", steps=150, meta_batch=2, queries=4,
                  ext_batch=32, width=32, val_every=50, val_episodes=60, snapshot_every=50,
                  checkpoint_every=150, probe_per_class=3, probe_classes=6),
    # the app's one-click demo (DEML and its lambda = 0 twin): a few minutes; clusters form in the first seconds.
    # Scarce meta-training (2 glyph alphabets; the discriminator learns 4 others), lambda 3 at a constant
    # learning rate for 300 steps: the setting `bench deml --recipe demo` measured (BENCHMARKS.md §2, 5 seeds,
    # lambda chosen on meta-validation), where DEML beat vanilla by +5.8 +- 1.7 points (5-way 1-shot, meta-test)
    "demo": dict(dataset="glyphs:classes=400,drawings=20,seed=0", train_limit=2, lam=3.0, lr_schedule="constant",
                 steps=300, meta_batch=4, val_every=50, val_episodes=100, snapshot_every=25, checkpoint_every=100),
    # Omniglot background set, alphabets split into meta-train/val/test/external groups; each 90-degree
    # turn of a meta-train character is a new class (the usual Omniglot recipe, 4x the classes;
    # chosen on the validation alphabets, BENCHMARKS.md §1). Every learner trains this recipe
    # (`--preset omniglot --learner maml`): their training times differ by under 8% (BENCHMARKS.md §1)
    "omniglot": dict(dataset="@omniglot", rotations=True, steps=6000, ways=20, shots=1, queries=5, meta_batch=2,
                     val_every=500, val_episodes=200, snapshot_every=100, checkpoint_every=500),
    # the built-in generator behind --head-start (assets/README.md): Omniglot background alphabets except
    # the 8 of images_background_small1/2.zip, kept unseen so the head start can be measured on them
    "head-start": dict(dataset="@omniglot", exclude_groups=",".join(HEAD_START_UNSEEN), head_start="off",
                       rotations=True, steps=500, ways=10, shots=1, queries=3, meta_batch=2, ext_batch=32,
                       val_split=2, test_split=2, external_split=4, val_every=250, val_episodes=50,
                       snapshot_every=500, checkpoint_every=250, probe_classes=4, probe_per_class=3),
}


def train_page_start() -> TrainConfig:
    """Where the app's Train page (and the Data page's plan) starts: the demo preset's recipe on all of
    the data. The demo itself keeps only 2 glyph alphabets for meta-training (its measured story);
    a person's own data trains on every class it has."""
    return preset("demo").with_overrides(train_limit=0)


def preset(name: str | None) -> TrainConfig:
    if name is None:
        return TrainConfig()
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    overrides = dict(PRESETS[name])
    if overrides.get("dataset") == "@omniglot":
        path = _omniglot_npz()
        if not Path(path).exists():
            raise UserError(f"the omniglot preset reads {path}, which is not there; set CONCEPTSCAPE_SHARED "
                            "to the folder holding data/omniglot/, or pass --dataset PATH")
        overrides["dataset"] = path
    return TrainConfig(**overrides)
