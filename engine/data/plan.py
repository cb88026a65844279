"""The plan fitted to the data: the one place that decides how a dataset can train.

Given how many images each class holds, `fit_plan` keeps the settings asked for when they train as
they are (so presets and built-in data behave as before), and otherwise fits them: ways at most
the classes available, shots and queries fitted to the smallest usable class, classes held out
for testing and validation when there are enough (else validation on held-out images of the
training classes, or on the training images themselves), and the discriminator's external set:
other classes of the data when enough are left, else the built-in glyphs (grayscale data), else
none with λ = 0. Settings given explicitly are kept; when one cannot fit, the UserError says what
would fit, in the words of where it was typed (`Words`: flags on the command line, field names in
the app).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from engine.errors import UserError

EXTERNAL_MIN = 5  # the data lends classes to the external set only when this many are left over
GLYPHS_EXTERNAL = "glyphs:classes=400,drawings=20,seed=0"  # the demo's glyphs (cached on disk)
FITTED = ("ways", "shots", "queries", "val_split", "test_split", "external_split", "external", "lam",
          "validation")  # the TrainConfig fields a plan sets


@dataclass(frozen=True)
class Words:
    """How settings are named where the person is: flags (labels None) or the app's field labels."""

    labels: Mapping[str, str] | None = None

    def setting(self, name: str, value) -> str:
        if self.labels is None:
            return f"--{name.replace('_', '-')} {value}"
        return f"{self.labels.get(name, name)} = {value}"


FLAGS = Words()


@dataclass(frozen=True)
class Plan:
    classes: int  # classes in the data
    smallest: int  # images in the smallest class with at least 2
    ways: int
    shots: int
    queries: int
    train_classes: int
    val_classes: int  # 0 unless validation is "classes"
    test_classes: int
    external_classes: int  # classes of the data lent to the discriminator (external "auto")
    validation: str  # "classes", "images" (held-out images of the training classes) or "train"
    external: str  # "auto" (classes of this data), a SPEC (the built-in glyphs), or "none"
    lam: float
    fitted: bool  # False: the settings asked for train as they are
    note: str = ""  # why the discriminator has nothing to learn, when it has not

    def overrides(self) -> dict:
        """TrainConfig fields to apply ({} when the settings asked for already fit)."""
        if not self.fitted:
            return {}
        return {"ways": self.ways, "shots": self.shots, "queries": self.queries,
                "val_split": float(self.val_classes), "test_split": float(self.test_classes),
                "external_split": float(self.external_classes), "external": self.external, "lam": self.lam,
                "validation": self.validation}

    def describe(self) -> str:
        """One sentence in plain words, e.g. "6 classes: trains as 3-way 1-shot on 3 classes, ..."."""
        parts = [f"trains as {self.ways}-way {self.shots}-shot ({self.queries} "
                 f"{'query' if self.queries == 1 else 'queries'} per class) on {_n(self.train_classes)}"]
        parts.append(f"tests on {self.test_classes}" if self.test_classes else "no classes left to test on")
        if self.validation == "classes":
            parts[-1] += f", validates on {self.val_classes}"
        elif self.validation == "images":
            parts.append(f"validation on {self.queries} held-out {'image' if self.queries == 1 else 'images'} "
                         "of each training class")
        else:
            parts.append("validation on the training images themselves (too few images to hold any out)")
        if self.external == "none" or self.lam == 0:
            parts.append("no discriminator (λ = 0)" + (f": {self.note}" if self.note else ""))
        elif self.external == "auto":
            parts.append(f"the discriminator learns {_n(self.external_classes, 'other class', 'other classes')} "
                         "of this data")
        elif self.external.startswith("glyphs"):
            parts.append("the discriminator learns the built-in glyphs")
        else:
            parts.append(f"the discriminator learns {self.external}")
        return f"{_n(self.classes)}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


def _n(count: int, one: str = "class", many: str = "classes") -> str:
    return f"{count} {one if count == 1 else many}"


def _count(value: float, units: int) -> int:  # as engine.data.splits counts a split
    if value <= 0:
        return 0
    return int(value) if value >= 1 else max(1, int(round(value * units)))


def counts_fit(counts: Sequence[int], cfg) -> bool:
    """Would `cfg` train on classes of these sizes (split by class, every split of the smallest)?
    The arithmetic default of fit_plan's check; the engine checks real splits (plan_config)."""
    units, smallest = len(counts), min(counts, default=0)
    val = _count(cfg.val_split, units) if cfg.validation == "classes" else 0
    ext = _count(cfg.external_split, units) if cfg.external == "auto" else 0
    train = units - val - _count(cfg.test_split, units) - ext
    if cfg.train_limit > 0:
        train = min(train, cfg.train_limit)
    need = cfg.shots + cfg.queries * (2 if cfg.validation == "images" else 1)
    if cfg.lam > 0 and cfg.external == "none" or cfg.lam > 0 and cfg.external == "auto" and ext < 1:
        return False
    return train >= cfg.ways and smallest >= need and (cfg.validation != "classes" or val >= cfg.ways)


def fit_plan(counts: Sequence[int], gray: bool, base, explicit=frozenset(), words: Words = FLAGS,
             check: Callable | None = None) -> Plan:
    """The plan for classes holding `counts` images: `base` (a TrainConfig) as it is when it trains,
    else the first candidate `check(cfg)` accepts (default: counts_fit). Fields in `explicit` stay
    as asked; UserError (in `words`) when no plan trains, saying what would fit."""
    check = check or (lambda cfg: counts_fit(counts, cfg))
    usable = sorted(c for c in counts if c >= 2)
    if len(usable) < 2:
        raise UserError(f"this data has {_n(len(usable))} with at least 2 images; training needs at least "
                        "2 classes of 2 or more images each: add classes or images")
    explicit = frozenset(explicit)
    plan = _search(counts, usable, gray, base, explicit, check)
    if plan is None:
        raise UserError(_why_not(counts, gray, base, explicit, words, check))
    return plan


def _search(counts, usable, gray, base, explicit, check) -> Plan | None:
    """The first plan that trains (base as it is, then the candidates), or None."""
    if check(base):
        return _as_plan(base, len(counts), usable[0], fitted=False)
    for cfg in _candidates(len(usable), usable[0], gray, base, explicit):
        if check(cfg):
            return _as_plan(cfg, len(counts), usable[0], fitted=True)
    return None


def _as_plan(cfg, classes: int, smallest: int, fitted: bool) -> Plan:
    val = _count(cfg.val_split, classes) if cfg.validation == "classes" else 0
    test = _count(cfg.test_split, classes)
    ext = _count(cfg.external_split, classes) if cfg.external == "auto" else 0
    note = ""
    if cfg.external == "none" and not fitted:
        note = "no external set chosen"
    elif cfg.external == "none":
        note = "too few classes to lend any to it, and the built-in glyphs are line drawings, unlike colour images"
    return Plan(classes, smallest, cfg.ways, cfg.shots, cfg.queries, classes - val - test - ext, val, test, ext,
                cfg.validation, cfg.external, float(cfg.lam), fitted, note)


def _shots_queries(smallest: int, mode: str, base, explicit) -> tuple[int, int] | None:
    """The most shots (up to base's), then the most queries, that the smallest class holds."""
    per_query = 2 if mode == "images" else 1  # held-out images are queries too
    for k in ([base.shots] if "shots" in explicit else range(base.shots, 0, -1)):
        qs = [base.queries] if "queries" in explicit else range(base.queries, 0, -1)
        for q in qs:
            if k + per_query * q <= smallest:
                return k, q
    return None


def _candidates(units: int, smallest: int, gray: bool, base, explicit):
    """TrainConfigs to try, best first: held-out test classes, then more ways, then validation on
    classes before held-out images before the training images."""
    modes = [base.validation] if "validation" in explicit else ["classes", "images", "train"]
    ways = [base.ways] if "ways" in explicit else range(min(base.ways, units), 1, -1)
    for with_test in (True, False):
        for n in ways:
            test = _count(base.test_split, units) if "test_split" in explicit else n if with_test else 0
            if "test_split" in explicit and not with_test:
                continue
            for mode in modes:
                val = (_count(base.val_split, units) if "val_split" in explicit else n) if mode == "classes" else 0
                train = units - test - val
                kq = _shots_queries(smallest, mode, base, explicit)
                if train < n or kq is None:
                    continue
                external, lam, ext = _external(train - n, gray, base, explicit, units)
                if ext > train - n or (lam > 0 and external == "none"):
                    continue
                yield replace(base, ways=n, shots=kq[0], queries=kq[1], validation=mode, val_split=float(val),
                              test_split=float(test), external_split=float(ext), external=external, lam=lam)


def _external(room: int, gray: bool, base, explicit, units: int) -> tuple[str, float, int]:
    """(external, λ, classes lent) for `room` classes beyond what meta-training needs."""
    lam = base.lam
    if "external" in explicit:
        ext = _count(base.external_split, units) if base.external == "auto" else 0
        return base.external, lam, ext
    if "lam" in explicit and lam == 0:
        return "none", 0.0, 0
    if room >= EXTERNAL_MIN:
        return "auto", lam, max(EXTERNAL_MIN, min(room, round(0.2 * units)))
    if gray:
        return GLYPHS_EXTERNAL, lam, 0
    return "none", 0.0 if "lam" not in explicit else lam, 0


def _why_not(counts, gray, base, explicit, words: Words, check) -> str:
    """One message: which explicit setting cannot fit, and what would."""
    usable = sorted(c for c in counts if c >= 2)
    data = f"this data has {_n(len(usable))} of 2 or more images, the smallest with {usable[0]}"
    for name in ("ways", "shots", "queries"):
        if name not in explicit:
            continue
        asked = getattr(base, name)
        lower = next((v for v in range(asked - 1, 1 if name == "ways" else 0, -1)
                      if _fits(counts, gray, replace(base, **{name: v}), explicit, check)), None)
        if lower is None:
            continue
        if name == "ways":
            return (f"{words.setting('ways', asked)} needs {asked} classes in meta-train; "
                    f"{data}; it fits at most {words.setting('ways', lower)}")
        return (f"{words.setting(name, asked)} needs more images per class than this data holds (its smallest "
                f"class has {usable[0]}); it fits at most {words.setting(name, lower)}")
    for name in ("validation", "val_split", "test_split", "external_split", "external", "lam", "ways", "shots",
                 "queries"):
        if name in explicit and _fits(counts, gray, base, explicit - {name}, check):
            return (f"{words.setting(name, getattr(base, name))} cannot fit this data ({data}); "
                    f"leave it to the plan, which fits one")
    return f"no plan trains on this data ({data}): add classes or images"


def _fits(counts, gray, base, explicit, check) -> bool:
    """Does some plan train with these explicit settings? (Never explains: no search within a search.)"""
    usable = sorted(c for c in counts if c >= 2)
    return _search(counts, usable, gray, base, frozenset(explicit), check) is not None


def plan_config(cfg, explicit=frozenset(), words: Words = FLAGS, data=None):
    """(the config to train, its Plan) for cfg's dataset, read here unless `data` (an ImageSet) is
    given. The plan's check makes the real class split and episode samplers (engine.data.splits)."""
    from engine.data.episodes import EpisodeSampler, HeldOutSampler
    from engine.data.sources import load_imageset
    from engine.data.splits import make_splits

    if data is None:
        data = load_imageset(cfg.dataset, cfg.preprocess())

    def trains(c) -> bool:
        try:
            splits = make_splits(data, c.split_config(), "auto" if c.external == "auto" else None)
            EpisodeSampler(splits.train, c.ways, c.shots, c.queries)
            if splits.val_held_out is not None:
                HeldOutSampler(splits.val, splits.val_held_out, c.ways, c.shots, c.queries)
            else:
                EpisodeSampler(splits.val, c.ways, c.shots, c.queries)
        except UserError:
            return False
        return not (c.lam > 0 and c.external == "none") and not (c.lam > 0 and c.external == "auto"
                                                              and splits.external is None)

    plan = fit_plan([int(n) for n in data.counts()], data.channels == 1, cfg, explicit, words, trains)
    return cfg.with_overrides(**plan.overrides()), plan
