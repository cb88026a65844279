"""Data-parallel training over 2 gloo processes launched by torchrun, against one process.

This file is also the workers' program: the test starts
`python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_distributed.py OUT`,
and each rank trains the tiny runs below and saves what it ended with under OUT.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engine import cli
from engine.config import TrainConfig, preset
from engine.runs import RunDir
from engine.train import distributed
from engine.train.launch import resume_run, start_run
from engine.train.trainer import Control, Trainer

REPO = Path(__file__).resolve().parents[1]

LEARNERS = ("protonet", "maml")
STOP_AFTER = 3  # the 2-process runs stop here (asked on rank 1 only), then one process finishes them
REL = 1e-5  # float rounding: the processes sum the same numbers in another order
# the learner's log-probabilities come after its inner loop, which amplifies that rounding (seen: 1.04e-5
# of the scale on one Xeon, after 1 then 2 processes against 2)
LEARNER_REL = 1e-4
# Gradients are sums over ~10^5 pixels that largely cancel: the first conv bias's gradient carries
# ~1e-4 relative rounding error in one float32 process already (measured against float64).
GRAD_REL = 1e-3
# Adam scales every coordinate's step to about lr, however small its gradient. Where a gradient is
# at float-noise level, the noise decides the step, so after a few steps a rare coordinate differs
# by up to lr between any two summation orders; the gradients themselves agree to GRAD_REL.
NOISY_FRACTION = 1e-3
# Parameters whose gradient is pure noise, held to the scale of the whole gradient instead: none
# since the gradient learners' head starts from the support prototypes (the old shared class row,
# which no loss depended on, is gone).
NO_SIGNAL: tuple[str, ...] = ()


def tiny(learner: str):
    # group norm: batch-independent, so half a batch per process computes what the whole one does
    return preset("smoke").with_overrides(
        dataset="glyphs:classes=60,drawings=8,seed=1", norm="group", width=16, concept_dim=16, meta_batch=4,
        ext_batch=8, inner_steps=2, learner=learner, steps=4, val_every=2, val_episodes=8, snapshot_every=2,
        checkpoint_every=2)


def train(trainer: Trainer, run=None, stop_after: int | None = None) -> list[dict]:
    """The records `trainer.run` hands out; with stop_after, a stop request after that step on the
    last rank only (as a Ctrl-C reaching one process): every rank must stop at the same step."""
    records, control = [], Control()
    step = trainer.train_step

    def train_step():
        rec = step()
        if rec["step"] == stop_after and distributed.rank() == distributed.world_size() - 1:
            control.stop = True
        return rec

    trainer.train_step = train_step
    trainer.run(run, control, lambda kind, rec: records.append(rec) if kind in ("train", "val") else None)
    del trainer.train_step
    return records


# --- the workers ------------------------------------------------------------------------------
def worker(out: Path) -> None:
    assert distributed.setup(), "torchrun should have started 2 processes"
    torch.set_num_threads(1)
    rank, writes = distributed.rank(), []
    if rank != 0:  # any write to a run directory from this rank is recorded as a failure
        import engine.runs

        def refuse(name):
            def note(*args, **kwargs):
                writes.append(f"{name}{args[:1]}")
            return note

        engine.runs.atomic_write = refuse("atomic_write")
        for name in ("create", "append_metrics", "truncate_metrics", "drop_snapshots_after", "save_checkpoint",
                     "save_snapshot", "save_probe", "update_config", "write_json"):
            setattr(engine.runs.RunDir, name, refuse(name))
    for learner in LEARNERS:
        first = Trainer(tiny(learner))
        first.train_step()  # the averaged gradient of step 1
        trainer, run = start_run(tiny(learner), out / learner)
        records = train(trainer, run, stop_after=STOP_AFTER)
        torch.save({"step": trainer.step, "model": trainer.model.state_dict(),
                    "grads": {k: p.grad for k, p in first.model.named_parameters()},
                    "optimizer": trainer.optimizer.state_dict()["state"], "records": records, "writes": writes,
                    "device": str(trainer.device), "world": distributed.world_size()},
                   out / f"{learner}-rank{rank}.pt")
    distributed.teardown()


def torchrun(*argv, timeout=240, fresh: Path | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGV` from the repository root (a free port of its own).

    A failed launch is tried once more, and the first failure is reported as a pytest warning so it
    stays visible in CI's output: a rare, still unexplained 2-process failure was seen once in ~20
    runs after the resume race was fixed (see the session notes). `fresh` is a run folder the
    command creates, removed before the second try. What the test asserts is unchanged."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, argv)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        warnings.warn(f"torchrun failed once, trying again; what the ranks said:\n{failure(done)}")
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    return done


def failure(done: subprocess.CompletedProcess) -> str:
    """What the ranks said, for a failed torchrun: every non-rank-0 line (a crash there is the usual
    cause; rank 0's traceback and torchrun's summary follow it), then the tail."""
    others = [line for line in done.stderr.splitlines() if not line.startswith("[rank0]")]
    return "\n".join(others[:80]) + "\n...\n" + done.stderr[-2000:]


# --- comparisons ------------------------------------------------------------------------------
def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, floor=1e-3, rel=REL):
    """Equal up to float rounding: relative to the tensor's own scale (at least `floor`)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), floor)
    diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    assert diff <= rel * scale, f"{what}: differs by {diff:.3g} (scale {scale:.3g})"


def assert_grads_match(got: dict, want: dict, what: str):
    top = max(float(g.abs().max()) for g in want.values())
    for k, g in want.items():  # NO_SIGNAL: noise around 0, held to the scale of the whole gradient
        assert_close(got[k], g, f"{what}: gradient of {k}", floor=top if k in NO_SIGNAL else 1e-3 * top, rel=GRAD_REL)


def assert_same_function(trainer: Trainer, state_a: dict, state_b: dict, what: str):
    """Same concepts, discriminator and query log-probabilities on the trainer's validation episodes."""
    ep = trainer.val_sampler.materialize(trainer.val_index)
    x = torch.cat([ep.support.flatten(0, 1), ep.query.flatten(0, 1)])
    t, nk = ep.tasks, ep.support.shape[1]
    outs = []
    for state in (state_a, state_b):
        trainer.model.load_state_dict(state)
        trainer.model.eval()
        z = trainer.model.concepts(x)
        zs, zq = z[: t * nk].view(t, nk, -1), z[t * nk:].view(t, -1, z.shape[-1])
        logits = trainer.model.learner.logits(zs, ep.support_labels, zq, trainer.cfg.ways, training=False)
        outs.append((z, torch.log_softmax(trainer.model.discriminator(z), -1).detach(),
                     torch.log_softmax(logits, -1).detach()))
    for name, u, v in zip(("concepts", "discriminator", "learner"), *outs):
        assert_close(u, v, f"{what}: {name} outputs", rel=LEARNER_REL if name == "learner" else REL)


def assert_params_match(state_a: dict, state_b: dict, what: str):
    """Every coordinate within REL of its tensor's scale, but for a NOISY_FRACTION at most."""
    assert state_a.keys() == state_b.keys()
    keys = [k for k in state_a if k not in NO_SIGNAL]
    off = {k: int(((state_a[k] - state_b[k]).abs() > REL * max(float(state_b[k].abs().max()), 1e-3)).sum())
           for k in keys}
    total = sum(state_a[k].numel() for k in keys)
    assert sum(off.values()) <= NOISY_FRACTION * total, f"{what}: coordinates off by more than {REL}: {off}"


def assert_records_match(got: list[dict], want: list[dict], what: str):
    keys = ("kind", "step", "meta_loss", "meta_acc", "disc_loss", "disc_acc", "val_acc")
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want], what
    for g, w in zip(got, want):
        for k in keys:
            if isinstance(w.get(k), float):
                assert g[k] == pytest.approx(w[k], rel=REL, abs=REL), f"{what}: {k} at step {w['step']}"


# --- the tests --------------------------------------------------------------------------------
def as_rank(monkeypatch, rank: int, world: int):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: rank)


@pytest.mark.parametrize("augment", ["none", "affine"])
def test_the_shares_of_the_ranks_make_up_one_process_batch(monkeypatch, augment):
    """Each rank's tasks and external images are its contiguous slice of the very batch one process
    draws, distorted (--augment) as that process distorts them."""
    cfg = tiny("protonet").with_overrides(augment=augment)
    whole = Trainer(cfg).sample_batch(5)
    shares = []
    for rank in (0, 1):
        as_rank(monkeypatch, rank, 2)
        shares.append(Trainer(cfg).sample_batch(5))
    t, nk, nq = whole["tasks"], whole["nk"], whole["nq"]
    assert [s["tasks"] for s in shares] == [t // 2, t // 2]

    def parts(b):
        n = b["tasks"]
        return b["x"][: n * nk], b["x"][n * nk: n * (nk + nq)], b["x_ext"]
    for i, name in enumerate(("support", "query", "external")):
        assert torch.equal(torch.cat([parts(s)[i] for s in shares]), parts(whole)[i]), name
    for key in ("support_labels", "query_labels", "ext_labels"):
        assert torch.equal(torch.cat([s[key] for s in shares]), whole[key]), key


@pytest.mark.parametrize("changes, flag", [({"meta_batch": 3}, "--meta-batch 3"), ({"ext_batch": 7}, "--ext-batch 7")])
def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch, changes, flag):
    from engine.errors import UserError

    as_rank(monkeypatch, 0, 2)
    with pytest.raises(UserError, match=f"{flag} does not split evenly over 2 processes"):
        Trainer(tiny("protonet").with_overrides(**changes))


def test_amp_needs_cuda():
    from engine.errors import UserError

    with pytest.raises(UserError, match="--amp"):
        Trainer(tiny("protonet").with_overrides(amp=True, device="cpu"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The 2-process runs of every learner in LEARNERS, stopped after STOP_AFTER steps."""
    assert dist.is_available() and dist.is_gloo_available(), "this PyTorch has no gloo backend"  # fail, not skip
    out = tmp_path_factory.mktemp("two")
    done = torchrun(Path(__file__).relative_to(REPO), out, fresh=out)
    assert done.returncode == 0, failure(done)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("learner", LEARNERS)
def test_two_processes_train_like_one_and_resume_with_one(two_processes, learner):
    ranks = [torch.load(two_processes / f"{learner}-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["device"] == "cpu"
    assert ranks[0]["step"] == ranks[1]["step"] == STOP_AFTER  # rank 1 asked to stop; both did, together

    # (a) identical parameters and optimizer state on every rank, bit for bit
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
    for i, moments in ranks[0]["optimizer"].items():
        for k, v in moments.items():
            assert torch.equal(v, ranks[1]["optimizer"][i][k]), (i, k)

    # (b) one process on the same global meta-batch and seed: the same gradient, then the same steps
    first = Trainer(tiny(learner))
    first.train_step()
    assert_grads_match(ranks[0]["grads"], {k: p.grad for k, p in first.model.named_parameters()}, "step 1")
    one = Trainer(tiny(learner))
    one_records = train(one, stop_after=STOP_AFTER)
    assert one.step == STOP_AFTER
    assert_params_match(ranks[0]["model"], one.model.state_dict(), "2 processes vs 1")
    assert_same_function(Trainer(tiny(learner)), one.model.state_dict(), ranks[0]["model"], "2 processes vs 1")
    assert_records_match(ranks[0]["records"], one_records, "2 processes vs 1")  # whole-batch metrics on rank 0

    # (c) only rank 0 wrote the run directory (and recorded anything)
    assert ranks[1]["writes"] == [] and ranks[1]["records"] == []
    run_dir = two_processes / learner
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in metrics if r["kind"] in ("train", "val")] == [(r["kind"], r["step"]) for r in ranks[0]["records"]]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000003.pt"]

    # (d) one process resumes the 2-process checkpoint and ends where one uninterrupted process ends
    one_records += train(one)  # the single-process run, on to the last step
    resumed, run = resume_run(str(run_dir))
    assert resumed.step == STOP_AFTER
    train(resumed, run)
    assert resumed.step == one.step == tiny(learner).steps
    assert_params_match(resumed.model.state_dict(), one.model.state_dict(), "resumed with 1 process vs 1")
    assert_same_function(Trainer(tiny(learner)), one.model.state_dict(), resumed.model.state_dict(),
                         "resumed with 1 process vs 1")
    assert_records_match([r for r in run.read_metrics() if r["kind"] == "train"],
                         [r for r in one_records if r["kind"] == "train"], "resumed with 1 process vs 1")


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    """The real command: 2 processes exit 0 and print one JSON line in all; a 1-process run
    resumed by 2 processes ends where the 2-process run ends."""
    args = ["--dataset", "glyphs:classes=60,drawings=8,seed=1", "--norm", "group", "--width", "16", "--concept-dim",
            "16", "--meta-batch", "2", "--ext-batch", "8", "--val-every", "2", "--val-episodes", "8",
            "--checkpoint-every", "2", "--snapshot-every", "2", "--inner-steps", "2", "--learner", "maml",
            "--lr-schedule", "constant"]  # so that 2 steps, then 2 more, follow the 4-step schedule
    done = torchrun("-m", "engine", "train", "--steps", "4", *args, "--out", tmp_path / "two", fresh=tmp_path / "two")
    assert done.returncode == 0, failure(done)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    summary = json.loads(lines[0])
    assert summary["steps"] == 4 and summary["run_dir"] == str(tmp_path / "two")
    assert "data-parallel over 2 processes, 1 of 2 tasks each" in done.stderr
    assert sum("training maml" in line for line in done.stderr.splitlines()) == 1  # rank 0 alone talks

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["train", "--steps", "2", *args, "--out", str(tmp_path / "one")]) == 0
    resumed = torchrun("-m", "engine", "train", "--resume", tmp_path / "one", "--steps", "4")
    assert resumed.returncode == 0, failure(resumed)
    assert len(resumed.stdout.strip().splitlines()) == 1 and json.loads(resumed.stdout)["steps"] == 4
    runs = [RunDir(tmp_path / name) for name in ("two", "one")]
    assert [r["step"] for r in runs[1].read_metrics() if r["kind"] == "train"] == [1, 2, 3, 4]
    two, one = (run.load_checkpoint()[0]["model"] for run in runs)
    assert_params_match(one, two, "1 then 2 processes vs 2")
    assert_same_function(Trainer(TrainConfig.from_dict(runs[0].config())), two, one, "1 then 2 processes vs 2")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
