"""A run and its lambda = 0 twin (DEML against the vanilla meta-learner): how they are named,
paired, labelled and compared. Every rule about twins lives here."""
from __future__ import annotations

import hashlib

import numpy as np

from engine.config import TrainConfig
from engine.data.episodes import EpisodeIndex, EpisodeSampler
from engine.errors import UserError
from engine.eval.checkpoints import held_out_classes, load_model
from engine.eval.evaluate import curve_sampler, curve_scores, curve_summary, mean_ci95
from engine.runs import RunDir, as_run

TWIN_SUFFIX = "-lam0"  # the lambda = 0 twin of run R trains in the sibling folder R-lam0


def method_label(lam: float) -> str:
    """What a run is, in the words every page, chart and report uses."""
    return "vanilla (λ = 0)" if lam == 0 else f"DEML (λ = {lam:g})"


def partner_label(partner_lam: float) -> str:
    """The other run of a pair, named by what IT is, whichever of the two is selected."""
    return "its λ = 0 twin" if partner_lam == 0 else f"its DEML twin (λ = {partner_lam:g})"


def run_label(learner: str, lam: float) -> str:
    """A run in one line: its learner and what it is ("protonet DEML (λ = 1)")."""
    return f"{learner} {method_label(lam)}"


def twin_dir_for(run_dir: str) -> str:
    """Where the lambda = 0 twin of `run_dir` trains when the app starts it: a sibling folder, so
    find_twin pairs the two."""
    return str(run_dir).rstrip("/\\") + TWIN_SUFFIX


def twin_candidates(run_dir: str) -> list[str]:
    """The folders the app would have started this run's partner in (either side of the pair)."""
    bare = str(run_dir).rstrip("/\\")
    return [twin_dir_for(run_dir)] + ([bare[: -len(TWIN_SUFFIX)]] if bare.endswith(TWIN_SUFFIX) else [])


def differences_but_lam(mine: TrainConfig, theirs: TrainConfig) -> list[str]:
    """The settings (other than lambda) in which two runs differ; [] for a twin pair's configs.
    Compared after filling defaults, so runs written before a setting existed still match."""
    a, b = mine.to_dict(), theirs.to_dict()
    return sorted(k for k in a.keys() | b.keys() if k != "lam" and a.get(k) != b.get(k))


def are_twins(mine: TrainConfig, theirs: TrainConfig) -> bool:
    """Same settings except lambda, one side at lambda = 0 and the other not."""
    return not differences_but_lam(mine, theirs) and (mine.lam == 0) != (theirs.lam == 0)


def find_twin(run: RunDir | str) -> str | None:
    """The run beside this one with the same settings but the other side of lambda = 0 (DEML vs
    vanilla), or None."""
    run = as_run(run)
    mine = run.train_config()
    for other in sorted(run.path.parent.iterdir()):
        if other == run.path or not (other / "config.json").is_file():
            continue
        try:
            theirs = RunDir(other).train_config()
        except UserError:
            continue
        if are_twins(mine, theirs):
            return str(other)
    return None


def check_twins(run_dir: str, cfg: TrainConfig, twin_dir: str, twin_cfg: TrainConfig) -> None:
    """UserError unless `twin_dir` is a lambda = 0 twin of `run_dir` (same settings but lambda)."""
    differ = differences_but_lam(cfg, twin_cfg)
    if differ:
        raise UserError(f"{twin_dir} is not a λ = 0 twin of {run_dir}: they differ in {', '.join(differ)}")


def index_digest(index: EpisodeIndex) -> str:
    """A fingerprint of a set of episodes (which images, in which roles)."""
    h = hashlib.sha256()
    for a in (index.support, index.query, index.classes):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def compare_held_out(run_dir: str, twin_dir: str | None = None, ways: int | None = None, shots: int | None = None,
                     queries: int | None = None, episodes: int = 100, seed: int = 0, steps: int | None = None,
                     curve_steps: int = 10, device: str = "auto", progress=None) -> dict:
    """Accuracy (95% CI) and the adaptation curve of the run, and of its twin when given, on the
    SAME held-out episodes: one sampler over the run's meta-test classes, one fixed set of
    episodes (`curve_sampler(...).fixed(episodes, seed)`) scored by both models.

    The accuracy is the N-way K-shot one (K = `shots`): for gradient learners after `steps` inner
    steps (default: the run's) of those episodes; for metric learners on the first K shots of
    each class of the curve's episodes (which hold MetaLearner.curve_shots shots). `per_episode` keeps
    each episode's accuracy, and `difference` is DEML minus its twin, paired episode by episode.
    progress(fraction, text) is called along the way."""
    say = progress or (lambda fraction, text: None)
    cfg, model, dev = load_model(run_dir, device)
    data = held_out_classes(cfg)
    sampler = EpisodeSampler(data, ways or cfg.ways, shots or cfg.shots, queries or cfg.queries)
    entries = [(run_dir, cfg, model)]
    if twin_dir:
        tcfg, tmodel, _ = load_model(twin_dir, device)
        check_twins(run_dir, cfg, twin_dir, tcfg)
        twin_data = held_out_classes(tcfg)
        if (twin_data.class_names != data.class_names or len(twin_data.images) != len(data.images)
                or not np.array_equal(twin_data.labels, data.labels)):
            raise UserError(f"{twin_dir} holds out other classes than {run_dir}; they cannot be compared")
        entries.append((twin_dir, tcfg, tmodel))
    c_sampler = curve_sampler(model, data, sampler)
    index = c_sampler.fixed(episodes, seed)
    steps = cfg.inner_steps if steps is None else steps
    results = []
    for i, (path, c, m) in enumerate(entries):
        say(i / len(entries), f"{run_label(c.learner, c.lam)}: {episodes} held-out episodes")
        acc, loss = curve_scores(m, c_sampler, index, dev, max(curve_steps, steps))
        curve = curve_summary(m, c_sampler, acc, loss, episodes, seed, curve_steps)
        at = m.learner.curve_index(sampler.shots, steps)
        mean, ci = mean_ci95(acc[at])
        results.append({"run_dir": str(path), "label": run_label(c.learner, c.lam), "lam": c.lam, "learner": c.learner,
                        "accuracy": mean, "ci95": ci, "per_episode": acc[at].tolist(), "curve": curve,
                        "episodes_digest": index_digest(index)})
    say(1.0, "done")
    out = {"ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries, "episodes": episodes,
           "seed": seed, "steps": steps if model.learner.adapts_by_steps else None, "classes": data.num_classes,
           "runs": results, "difference": None, "warnings": c_sampler.warnings()}
    if len(results) == 2:  # DEML minus its lambda = 0 twin, episode by episode
        deml, vanilla = sorted(results, key=lambda r: r["lam"] == 0)
        diff = np.asarray(deml["per_episode"]) - np.asarray(vanilla["per_episode"])
        mean, ci = mean_ci95(diff)
        out["difference"] = {"accuracy": mean, "ci95": ci, "deml": deml["run_dir"], "vanilla": vanilla["run_dir"],
                             "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "ties": int((diff == 0).sum())}
    return out
