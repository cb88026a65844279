"""Meta-learners in concept space: the shared protocol, inner loops, meta-gradients into G, D
and M, MAML's second-order gradient, and the batched (vmap) inner loop against the per-task one."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from engine.config import TrainConfig
from engine.data.imageset import ImageSet
from engine.data.splits import SplitConfig, make_splits
from engine.errors import UserError
from engine.learners import LEARNERS, LearnerConfig, build_learner
from engine.learners.base import cross_entropy
from engine.learners.head import head_logits, support_loss
from engine.learners.protonet import prototypes
from engine.models.deml import DEMLModel, external_pass

ALL = sorted(LEARNERS)
STEP_LEARNERS = ["maml", "metasgd", "reptile"]  # the gradient learners sharing MAML's inner loop
SOFT = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------------------------ helpers


def labels(tasks: int, ways: int, per_class: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1).contiguous()


def make_tasks(tasks, ways, shots, queries, dim, seed=0, spread=1.0, noise=0.1, dtype=torch.float32):
    """Separable random concepts: each class a random centre plus a little noise (class-major)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, ways, 1, dim, generator=g, dtype=dtype) * spread

    def draw(per):
        x = centres + noise * torch.randn(tasks, ways, per, dim, generator=g, dtype=dtype)
        return x.reshape(tasks, ways * per, dim)

    return draw(shots), labels(tasks, ways, shots), draw(queries), labels(tasks, ways, queries)


def make(name: str, dim: int, **cfg):
    return build_learner(name, dim, LearnerConfig(**cfg))


def randomise_head(learner, seed=0):
    """Give the shared hidden layer random values of a larger scale (a linear head has none)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.head.shared.values():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def per_task_support_loss(path_params, support, support_labels, ways):
    return vmap(lambda p, x, y: support_loss(p, x, y, ways))(path_params, support, support_labels)  # (T,)


def nonzero(t: torch.Tensor | None) -> bool:
    return t is not None and bool(t.abs().max() > 0)


# --------------------------------------------------------------------------------- protocol


def test_registry_names_and_kinds():
    assert set(LEARNERS) == {"protonet", "matching", "maml", "metasgd", "reptile"}
    for name, cls in LEARNERS.items():
        assert cls.name == name
        assert cls.adapts_by_steps == (name in STEP_LEARNERS)


@pytest.mark.parametrize("name", ALL)
def test_logits_shape_for_any_ways(name):
    """One learner serves any number of ways, including ones it was never trained on."""
    torch.manual_seed(0)
    learner = make(name, 8, inner_steps=2)
    # one meta-training step at 5 ways first (the head must not have become 5-way)
    s, sl, q, ql = make_tasks(2, 5, 1, 2, 8)
    params = list(learner.parameters())
    result = learner.meta_loss(s, sl, q, ql, 5)
    if params:
        opt = torch.optim.SGD(params, lr=0.1)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
    for tasks, ways, shots, queries in [(1, 2, 1, 1), (3, 3, 2, 4), (4, 5, 1, 3), (2, 20, 1, 2), (2, 7, 3, 1)]:
        s, sl, q, ql = make_tasks(tasks, ways, shots, queries, 8, seed=ways)
        for training in (True, False):
            out = learner.logits(s, sl, q, ways, training=training)
            assert out.shape == (tasks, ways * queries, ways)
            assert torch.isfinite(out).all()
        r = learner.meta_loss(s, sl, q, ql, ways)
        assert r.loss.ndim == 0 and r.loss.requires_grad == bool(params)  # concepts here need no grad
        assert r.logits.shape == (tasks, ways * queries, ways) and not r.logits.requires_grad
        assert not r.query_loss.requires_grad and not r.accuracy.requires_grad
        assert 0.0 <= float(r.accuracy) <= 1.0
        assert float(r.query_loss) == pytest.approx(float(cross_entropy(r.logits, ql)), rel=1e-5)
        assert float(r.accuracy) == pytest.approx(float((r.logits.argmax(-1) == ql).float().mean()))


@pytest.mark.parametrize("name", ALL)
def test_well_separated_tasks_are_solved(name):
    s, sl, q, ql = make_tasks(4, 5, 2, 3, 16, seed=3, spread=1.0, noise=0.05)
    learner = make(name, 16, inner_steps=5)
    assert float(learner.meta_loss(s, sl, q, ql, 5).accuracy) >= 0.95


@pytest.mark.parametrize("name", STEP_LEARNERS)
def test_steps_argument_overrides_inner_steps(name):
    s, sl, q, _ = make_tasks(2, 3, 2, 2, 6)
    learner = make(name, 6, inner_steps=3)
    default = learner.logits(s, sl, q, 3, training=False)
    assert torch.allclose(default, learner.logits(s, sl, q, 3, steps=3, training=False))
    assert not torch.allclose(default, learner.logits(s, sl, q, 3, steps=1, training=False))
    assert len(learner.adapt(s, sl, 3, steps=4)) == 5


# ----------------------------------------------------------------------------- inner loops


@pytest.mark.parametrize("name", STEP_LEARNERS)
@pytest.mark.parametrize("hidden", [0, 6])
@pytest.mark.parametrize("batched", [True, False])
def test_one_inner_step_lowers_support_loss(name, hidden, batched):
    torch.manual_seed(1)
    s, sl, _, _ = make_tasks(5, 4, 3, 1, 8, seed=2)
    learner = make(name, 8, inner_steps=1, inner_lr=0.05, head_hidden=hidden, batched=batched)  # a small step
    path = learner.adapt(s, sl, 4, steps=1, training=False)
    assert len(path) == 2
    before, after = (per_task_support_loss(p, s, sl, 4) for p in path)
    assert before.shape == (5,)
    assert (after < before).all(), (before, after)


@pytest.mark.parametrize("name", STEP_LEARNERS)
@pytest.mark.parametrize("batched", [True, False])
def test_trace_shapes_protonet_at_step_zero_and_agreement_with_logits(name, batched):
    tasks, ways, steps = 3, 4, 6
    s, sl, q, ql = make_tasks(tasks, ways, 2, 3, 8, seed=4, noise=0.8, dtype=torch.float64)
    learner = make(name, 8, inner_steps=2, batched=batched).double()
    losses, accs = learner.trace(s, sl, q, ql, ways, steps)
    assert losses.shape == (steps + 1, tasks) and accs.shape == (steps + 1, tasks)
    assert not losses.requires_grad and not accs.requires_grad
    # step 0 is the prototype classifier: ProtoNet's loss and accuracy exactly (a per-query constant
    # added to every logit changes neither)
    proto = make("protonet", 8).logits(s, sl, q, ways)
    expect = torch.stack([F.cross_entropy(lg, y) for lg, y in zip(proto, ql)])
    torch.testing.assert_close(losses[0], expect, rtol=1e-10, atol=1e-10)
    assert torch.equal(accs[0], (proto.argmax(-1) == ql).to(accs.dtype).mean(-1))
    for k in (1, steps):
        logits = learner.logits(s, sl, q, ways, steps=k, training=False)
        expect = torch.stack([F.cross_entropy(lg, y) for lg, y in zip(logits, ql)])
        torch.testing.assert_close(losses[k], expect)
        torch.testing.assert_close(accs[k], (logits.argmax(-1) == ql).to(accs.dtype).mean(-1))
    assert not torch.allclose(losses[steps], losses[0])  # the inner loop moves the head


@given(seed=st.integers(0, 2**31 - 1), ways=st.integers(2, 8), shots=st.integers(1, 4), dim=st.integers(2, 9))
@SOFT
def test_step_zero_logits_are_protonet_up_to_a_per_query_constant(seed, ways, shots, dim):
    """Proto-MAML's head before any inner step: W_k = 2 c_k, b_k = -|c_k|^2, so its logits are
    ProtoNet's -|q - c_k|^2 plus |q|^2, the same for every class of a query."""
    s, sl, q, _ = make_tasks(2, ways, shots, 3, dim, seed=seed, noise=0.7, dtype=torch.float64)
    proto = make("protonet", dim).logits(s, sl, q, ways)  # (T, M, N)
    for name in STEP_LEARNERS:
        step0 = make(name, dim, inner_steps=1).double().step_logits(s, sl, q, ways, steps=0)[0]
        torch.testing.assert_close(step0 - proto, q.pow(2).sum(-1, keepdim=True).expand_as(proto),
                                   rtol=1e-9, atol=1e-9)


def test_support_loss_is_the_sum_over_classes_of_each_class_mean():
    s, sl, _, _ = make_tasks(1, 5, 3, 1, 6, seed=2, noise=0.5)
    params = make("maml", 6).head.task_params({}, s[0], sl[0], 5)
    ce = F.cross_entropy(head_logits(params, s[0]), sl[0], reduction="none").view(5, 3)
    torch.testing.assert_close(support_loss(params, s[0], sl[0], 5), ce.mean(1).sum())
    # unequal classes: each class still weighs the same (its own mean)
    keep = torch.tensor([0, 1, 2, 3, 6, 9, 12])  # class 0: 3 images, the others 1
    ce_k = F.cross_entropy(head_logits(params, s[0, keep]), sl[0, keep], reduction="none")
    torch.testing.assert_close(support_loss(params, s[0, keep], sl[0, keep], 5), ce_k[:3].mean() + ce_k[3:].sum())


@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile"])
def test_first_inner_update_does_not_shrink_with_the_number_of_ways(name):
    """The same 5 classes alone, and with 15 more that are far from them (another subspace, 100x
    the scale, so that they take no part in the 5's softmax): the 5 rows move exactly alike in the
    first inner step. With the support loss a mean over all N*K images they would move 4x less."""
    g = torch.Generator().manual_seed(0)
    near = torch.randn(5, 1, 8, generator=g, dtype=torch.float64) * 0.5 + 0.6 * torch.randn(5, 3, 8, generator=g,
                                                                                            dtype=torch.float64)
    far = 100 * F.normalize(torch.randn(15, 1, 8, generator=g, dtype=torch.float64), dim=-1) \
        + 0.1 * torch.randn(15, 3, 8, generator=g, dtype=torch.float64)
    five = F.pad(near, (0, 8)).reshape(1, 15, 16)  # dims 0..7
    twenty = torch.cat([five, F.pad(far, (8, 0)).reshape(1, 45, 16)], 1)  # the far classes in dims 8..15
    moves = {}
    for ways, s in ((5, five), (20, twenty)):
        path = make(name, 16, inner_steps=1, inner_lr=0.1).double().adapt(s, labels(1, ways, 3), ways, steps=1,
                                                                           training=False)
        moves[ways] = (path[1]["row_weight"] - path[0]["row_weight"])[0, :5]  # (5, 16): the near classes' rows
    assert float(moves[5].detach().abs().max()) > 1e-3  # they do move
    torch.testing.assert_close(moves[20], moves[5], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ metric learners


@given(seed=st.integers(0, 2**31 - 1), ways=st.integers(2, 6), shots=st.integers(1, 4),
       queries=st.integers(1, 4), scale=st.floats(0.1, 30.0))
@SOFT
def test_matching_logits_are_log_probabilities(seed, ways, shots, queries, scale):
    torch.manual_seed(seed)
    s, sl, q, _ = make_tasks(2, ways, shots, queries, 5, seed=seed, spread=1.0, noise=0.5)
    learner = make("matching", 5, matching_scale=scale)
    assert learner.log_scale.item() == pytest.approx(math.log(scale))
    logits = learner.logits(s, sl, q, ways)
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(logits.shape[:2]), rtol=0, atol=1e-5)
    assert (logits <= 1e-6).all()


def test_matching_attends_to_the_nearest_support():
    s, sl, q, _ = make_tasks(3, 5, 1, 1, 16, seed=5, noise=0.0)
    s = s + 0.01 * torch.randn_like(s)  # shots are unique points
    learner = make("matching", 16, matching_scale=50.0)
    logits = learner.logits(s, sl, s, 5)  # query = support itself
    assert torch.equal(logits.argmax(-1), sl)
    # with a lower temperature the attention spreads: the correct class is less certain
    flat = make("matching", 16, matching_scale=1.0).logits(s, sl, s, 5)
    assert (flat.gather(-1, sl[..., None]) < logits.gather(-1, sl[..., None])).all()


@given(seed=st.integers(0, 2**31 - 1), ways=st.integers(2, 7), shots=st.integers(1, 4), dim=st.integers(2, 8))
@SOFT
def test_protonet_query_at_a_prototype_is_classified_to_it(seed, ways, shots, dim):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, ways * shots, dim, generator=g, dtype=torch.float64)
    sl = labels(2, ways, shots)
    protos = s.view(2, ways, shots, dim).mean(2)  # the class means, computed here independently
    torch.testing.assert_close(prototypes(s, sl, ways), protos)
    learner = make("protonet", dim)
    logits = learner.logits(s, sl, protos, ways)  # (2, N, N): query n is prototype n
    assert torch.equal(logits.argmax(-1), labels(2, ways, 1))
    torch.testing.assert_close(logits.diagonal(dim1=1, dim2=2), torch.zeros(2, ways, dtype=s.dtype),
                               rtol=0, atol=1e-9)
    q = torch.randn(2, 5, dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(learner.logits(s, sl, q, ways), -torch.cdist(q, protos) ** 2)


def test_protonet_has_no_parameters_and_prototypes_ignore_label_order():
    learner = make("protonet", 4)
    assert list(learner.parameters()) == []
    s, sl, q, _ = make_tasks(1, 3, 2, 2, 4)
    perm = torch.randperm(6)
    torch.testing.assert_close(learner.logits(s, sl, q, 3), learner.logits(s[:, perm], sl[:, perm], q, 3))


# ------------------------------------------------------------------------- build_learner


def test_unknown_learner_names_the_choices():
    with pytest.raises(UserError) as err:
        build_learner("maml2", 8, LearnerConfig())
    msg = str(err.value)
    assert "maml2" in msg and all(n in msg for n in LEARNERS)


@pytest.mark.parametrize("name", STEP_LEARNERS)
def test_gradient_learners_need_an_inner_step(name):
    with pytest.raises(UserError, match="--inner-steps of at least 1"):
        build_learner(name, 8, LearnerConfig(inner_steps=0))
    assert build_learner(name, 8, LearnerConfig(inner_steps=1)).cfg.inner_steps == 1


@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_metric_learners_ignore_inner_steps_but_not_negative_ones(name):
    assert build_learner(name, 8, LearnerConfig(inner_steps=0)).name == name
    with pytest.raises(UserError):
        build_learner(name, 8, LearnerConfig(inner_steps=-1))


# ------------------------------------------------------------- meta-gradients into G, D, M


def deml_backward(model: DEMLModel, cfg: TrainConfig, lam: float, seed: int = 0):
    """One DEML loss as engine/train/trainer.py forms it: a G pass over support and query images,
    another over the external images; meta loss + lam * CE(D(G(x_ext))); the D term is left out
    entirely when lam == 0."""
    g = torch.Generator().manual_seed(seed)
    t, n, k, q, b = 2, cfg.ways, cfg.shots, cfg.queries, 6
    x = torch.rand(t * n * (k + q), 1, 28, 28, generator=g)
    x_ext = torch.rand(b, 1, 28, 28, generator=g)
    ext_labels = torch.randint(0, model.external_classes, (b,), generator=g)
    model.zero_grad(set_to_none=True)
    z = model.generator(x)
    zs, zq = z[: t * n * k].view(t, n * k, -1), z[t * n * k:].view(t, n * q, -1)
    loss = model.learner.meta_loss(zs, labels(t, n, k), zq, labels(t, n, q), n).loss
    if lam > 0:
        loss = loss + lam * F.cross_entropy(model.discriminator(external_pass(model.generator, x_ext)), ext_labels)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("name,hidden", [("protonet", 0), ("matching", 0), ("maml", 0), ("maml", 5),
                                         ("metasgd", 0), ("metasgd", 5), ("reptile", 0), ("reptile", 5)])
def test_meta_gradients_reach_generator_discriminator_and_learner(name, hidden):
    torch.manual_seed(0)
    # group norm with two channels per group: a conv bias is not normalised away
    cfg = TrainConfig(learner=name, concept_dim=16, width=16, norm="group", inner_steps=2,
                      head_hidden=hidden, ways=3, shots=2, queries=2, lam=0.5)
    model = DEMLModel(cfg, channels=1, external_classes=4)
    grads = deml_backward(model, cfg, lam=cfg.lam)
    gen = [n for n in grads if n.startswith("generator.")]
    disc = [n for n in grads if n.startswith("discriminator.")]
    learner = [n for n in grads if n.startswith("learner.")]
    assert gen and disc
    assert all(nonzero(grads[n]) for n in gen), [n for n in gen if not nonzero(grads[n])]
    assert all(nonzero(grads[n]) for n in disc)
    # every learner parameter learns: the head has no output-layer weights of its own (they come
    # from the support prototypes), only the optional hidden layer and Meta-SGD's step sizes
    assert all(nonzero(grads[n]) for n in learner), [n for n in learner if not nonzero(grads[n])]
    expected = {"protonet": 0, "matching": 1, "maml": 2 * (hidden > 0),
                "metasgd": 2 * (hidden > 0) + (4 if hidden else 2), "reptile": 2 * (hidden > 0)}[name]
    assert len(learner) == expected


@pytest.mark.parametrize("name", ["protonet", "maml", "reptile"])
def test_lambda_zero_gives_the_discriminator_nothing(name):
    torch.manual_seed(0)
    cfg = TrainConfig(learner=name, concept_dim=8, width=16, norm="group", inner_steps=2, head_hidden=3,
                      ways=3, shots=1, queries=2, lam=0.0)
    model = DEMLModel(cfg, channels=1, external_classes=4)
    meta_only = deml_backward(model, cfg, lam=0.0)
    assert all(meta_only[n] is None for n in meta_only if n.startswith("discriminator."))
    # D's term does reach G when it is on, so equal G gradients (checked through the real training
    # step in test_trainer_step_gradients) do show that lambda = 0 leaves D out
    with_disc = deml_backward(model, cfg, lam=1.0)
    changed = [n for n in meta_only if n.startswith("generator.")
               and not torch.allclose(meta_only[n], with_disc[n])]
    assert changed
    assert all(nonzero(with_disc[n]) for n in with_disc if n.startswith("discriminator."))


def _toy_splits(classes=24, per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (classes * per_class, 28, 28, 1), dtype=np.uint8)
    data = ImageSet(images, np.repeat(np.arange(classes), per_class), [f"c{i:02d}" for i in range(classes)],
                    source="toy")
    return make_splits(data, SplitConfig(val=4, test=4, external=6, seed=seed), "auto")


@pytest.fixture(scope="module")
def toy_splits():
    return _toy_splits()


@pytest.mark.parametrize("name", ["protonet", "maml", "reptile"])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_trainer_step_gradients(name, lam, toy_splits, monkeypatch):
    """Through the real training step: with lambda = 0 the generator's gradient is the meta loss's
    alone and D gets none (and does not move); with lambda > 0 every G and D parameter learns."""
    from engine.train.trainer import Trainer

    cfg = TrainConfig(learner=name, lam=lam, ways=3, shots=1, queries=2, meta_batch=2, ext_batch=8,
                      concept_dim=16, width=16, norm="group", inner_steps=2, head_hidden=3, steps=5,
                      val_episodes=2, probe_classes=2, probe_per_class=1, device="cpu")
    trainer = Trainer(cfg, toy_splits)
    model = trainer.model
    gen = list(model.generator.parameters())
    captured = {}
    meta_loss = model.learner.meta_loss

    def spy(*args, **kwargs):
        result = meta_loss(*args, **kwargs)
        captured["meta"] = torch.autograd.grad(result.loss, gen, retain_graph=True)
        return result

    monkeypatch.setattr(model.learner, "meta_loss", spy)
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer.train_step()
    assert len(captured["meta"]) == len(gen)
    disc_grads = [p.grad for p in model.discriminator.parameters()]
    if lam == 0:
        assert all(g is None for g in disc_grads)
        assert all(torch.equal(a, p) for a, p in zip(disc_before, model.discriminator.parameters()))
        for p, g in zip(gen, captured["meta"]):
            assert torch.equal(p.grad, g)
    else:
        assert all(nonzero(g) for g in disc_grads)
        assert all(nonzero(p.grad) for p in gen)
        assert any(not torch.allclose(p.grad, g) for p, g in zip(gen, captured["meta"]))


def test_metasgd_step_sizes_start_at_inner_lr_and_learn():
    learner = make("metasgd", 6, inner_steps=2, inner_lr=0.3, head_hidden=4)
    assert set(learner.step_sizes) == set(learner.head.shared) | {"row_weight", "row_bias"}
    shapes = {**{k: p.shape for k, p in learner.head.shared.items()}, "row_weight": (4,), "row_bias": ()}
    for k, a in learner.step_sizes.items():
        assert a.shape == shapes[k] and torch.all(a == 0.3)
    s, sl, q, ql = make_tasks(3, 4, 2, 2, 6)
    learner.meta_loss(s, sl, q, ql, 4).loss.backward()
    assert all(nonzero(a.grad) for a in learner.step_sizes.values())
    # the same config without learned step sizes is exactly MAML before any meta-update
    maml = make("maml", 6, inner_steps=2, inner_lr=0.3, head_hidden=4)
    maml.head.load_state_dict(learner.head.state_dict())
    torch.testing.assert_close(maml.logits(s, sl, q, 4), learner.logits(s, sl, q, 4))


@pytest.mark.parametrize("batched", [True, False])
def test_reptile_pulls_the_init_toward_the_adapted_heads(batched):
    tasks, ways, steps, lr = 3, 4, 3, 0.5
    torch.manual_seed(0)
    learner = make("reptile", 6, inner_steps=steps, inner_lr=lr, head_hidden=5, batched=batched).double()
    s, sl, q, ql = make_tasks(tasks, ways, 2, 2, 6, seed=6, dtype=torch.float64)
    s.requires_grad_(True)
    q.requires_grad_(True)
    adapted = {k: v.detach() for k, v in learner.adapt(s, sl, ways)[-1].items()}  # (T, ...)
    result = learner.meta_loss(s, sl, q, ql, ways)
    result.loss.backward()
    assert nonzero(s.grad)  # the pull moves G's support concepts: the prototype rows start closer
    assert nonzero(q.grad)  # and the query loss of the adapted head
    # the meta-gradient of the head is the pull 1/2 |init - adapted|^2 / (inner_lr * steps * T) alone,
    # over the hidden layer and the prototype rows (which depend on the hidden layer too)
    shared = dict(learner.head.shared)
    pull = 0.0
    for t in range(tasks):
        init = learner.head.task_params(shared, s[t].detach(), sl[t], ways)
        pull = pull + sum(0.5 * (init[k] - adapted[k][t]).pow(2).sum() for k in init)
    expect = torch.autograd.grad(pull / (lr * steps * tasks), list(shared.values()))
    for k, e in zip(shared, expect):
        torch.testing.assert_close(shared[k].grad, e)
    # its hidden-layer part: theta - mean adapted theta', so a step moves theta toward the adapted ones
    mean = adapted["hidden_weight"].mean(0)
    assert not torch.allclose(mean, shared["hidden_weight"].detach())


@pytest.mark.parametrize("batched", [True, False])
def test_reptile_is_not_first_order_maml_with_the_linear_head(batched):
    """The app's setting (a linear head): Reptile's support gradient is the pull of the prototype rows
    toward the adapted rows, (init - adapted) / (inner_lr * steps * T) through the prototypes;
    first-order MAML's is the query loss's gradient at the adapted head through the same prototypes."""
    tasks, ways, steps, lr = 2, 3, 2, 0.3
    s, sl, q, ql = make_tasks(tasks, ways, 2, 2, 5, seed=9, noise=0.6, dtype=torch.float64)
    s.requires_grad_(True)
    reptile = make("reptile", 5, inner_steps=steps, inner_lr=lr, batched=batched).double()
    fomaml = make("maml", 5, inner_steps=steps, inner_lr=lr, first_order=True, batched=batched).double()
    g_rep, = torch.autograd.grad(reptile.meta_loss(s, sl, q, ql, ways).loss, [s])
    g_fo, = torch.autograd.grad(fomaml.meta_loss(s, sl, q, ql, ways).loss, [s])
    assert not torch.allclose(g_rep, g_fo, rtol=1e-3, atol=1e-6)
    # the pull, written out: prototype rows of s, adapted rows as constants
    adapted = {k: v.detach() for k, v in reptile.adapt(s, sl, ways)[-1].items()}
    pull = 0.0
    for t in range(tasks):
        init = reptile.head.task_params({}, s[t], sl[t], ways)
        pull = pull + sum(0.5 * (init[k] - adapted[k][t]).pow(2).sum() for k in init)
    expect, = torch.autograd.grad(pull / (lr * steps * tasks), [s])
    torch.testing.assert_close(g_rep, expect)


# --------------------------------------------------------- MAML second order, finite differences


def central_difference(f, x: torch.Tensor, direction: torch.Tensor | None = None, eps: float = 1e-6):
    """d f / d x entry by entry, or along one direction, by central differences (x moved in place)."""
    if direction is not None:
        keep = x.data.clone()
        x.data.add_(eps * direction)
        hi = float(f())
        x.data.copy_(keep - eps * direction)
        lo = float(f())
        x.data.copy_(keep)
        return (hi - lo) / (2 * eps)
    out = torch.zeros_like(x)
    flat, grad = x.data.view(-1), out.view(-1)
    for i in range(flat.numel()):
        keep = flat[i].item()
        flat[i] = keep + eps
        hi = float(f())
        flat[i] = keep - eps
        lo = float(f())
        flat[i] = keep
        grad[i] = (hi - lo) / (2 * eps)
    return out


def _small_problem(seed=0):
    s, sl, q, ql = make_tasks(2, 3, 2, 2, 4, seed=seed, spread=1.0, noise=0.3, dtype=torch.float64)
    return s.requires_grad_(True), sl, q.requires_grad_(True), ql


@pytest.mark.parametrize("name,hidden,batched", [("maml", 0, True), ("maml", 3, True), ("metasgd", 3, True),
                                                 ("maml", 3, False), ("metasgd", 0, False)])
def test_second_order_meta_gradient_matches_finite_differences(name, hidden, batched):
    torch.manual_seed(3)
    learner = make(name, 4, inner_steps=2, inner_lr=0.7, head_hidden=hidden, batched=batched).double()
    randomise_head(learner, 3)
    s, sl, q, ql = _small_problem()

    def loss():
        return learner.meta_loss(s, sl, q, ql, 3).loss

    named = {"support": s, "query": q, **dict(learner.named_parameters())}
    analytic = dict(zip(named, torch.autograd.grad(loss(), list(named.values()))))
    assert nonzero(analytic["support"])  # the support concepts are reached only through the inner steps
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # entry by entry where second-order terms live: the support concepts and the hidden layer
        for key in ("support", "head.shared.hidden_weight"):
            if key in named:
                torch.testing.assert_close(analytic[key], central_difference(loss, named[key]),
                                           rtol=1e-6, atol=1e-8)
        for key, x in named.items():  # every other tensor along random directions
            for _ in range(3):
                v = torch.randn(x.shape, generator=g, dtype=x.dtype)
                fd = central_difference(loss, x, v)
                assert float((analytic[key] * v).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-8), key


@pytest.mark.parametrize("batched", [True, False])
def test_first_order_maml_drops_second_order_terms(batched):
    torch.manual_seed(4)
    ways, steps, lr = 3, 2, 0.7
    second = make("maml", 4, inner_steps=steps, inner_lr=lr, head_hidden=3, batched=batched).double()
    randomise_head(second, 4)
    first = make("maml", 4, inner_steps=steps, inner_lr=lr, head_hidden=3, first_order=True,
                 batched=batched).double()
    first.load_state_dict(second.state_dict())
    s, sl, q, ql = _small_problem(1)
    shared = list(first.head.shared)

    def grads(learner):
        out = torch.autograd.grad(learner.meta_loss(s, sl, q, ql, ways).loss,
                                  [s, q] + [learner.head.shared[k] for k in shared], allow_unused=True)
        return out[0], out[1], dict(zip(shared, out[2:]))

    s_fo, q_fo, p_fo = grads(first)
    s_so, q_so, p_so = grads(second)
    assert not torch.allclose(s_fo, s_so, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(p_fo["hidden_weight"], p_so["hidden_weight"], rtol=1e-3, atol=1e-6)

    # the first-order reference, written out: each task's head starts from its prototypes (a graph
    # to the support concepts and the hidden layer), takes SGD steps whose gradients are constants,
    # and the query loss at the adapted head is differentiated back through that start
    hidden = {k: first.head.shared[k] for k in shared}
    total = 0.0
    for t in range(len(s)):
        h = torch.relu(s[t] @ hidden["hidden_weight"].T + hidden["hidden_bias"])
        centres = torch.stack([h[sl[t] == k].mean(0) for k in range(ways)])
        p = {**hidden, "row_weight": 2 * centres, "row_bias": -centres.pow(2).sum(-1)}
        for _ in range(steps):
            leaf = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            hs = torch.relu(s[t].detach() @ leaf["hidden_weight"].T + leaf["hidden_bias"])
            inner = F.cross_entropy(hs @ leaf["row_weight"].T + leaf["row_bias"], sl[t]) * ways  # sum of class means
            g = torch.autograd.grad(inner, list(leaf.values()))
            p = {k: v - lr * gk for (k, v), gk in zip(p.items(), g)}
        hq = torch.relu(q[t] @ p["hidden_weight"].T + p["hidden_bias"])
        total = total + F.cross_entropy(hq @ p["row_weight"].T + p["row_bias"], ql[t], reduction="sum") / ql.numel()
    ref = torch.autograd.grad(total, [s, q] + [hidden[k] for k in shared])
    torch.testing.assert_close(s_fo, ref[0])
    torch.testing.assert_close(q_fo, ref[1])
    for k, r in zip(shared, ref[2:]):
        torch.testing.assert_close(p_fo[k], r)


# ------------------------------------------------------------------- batched versus looped


def _run(name, batched, training, tasks, hidden, seed):
    torch.manual_seed(seed)
    learner = make(name, 5, inner_steps=3, inner_lr=0.4, head_hidden=hidden, batched=batched).double()
    randomise_head(learner, seed)
    s, sl, q, ql = make_tasks(tasks, 4, 2, 3, 5, seed=seed, noise=0.4, dtype=torch.float64)
    s.requires_grad_(True)
    q.requires_grad_(True)
    if training:
        r = learner.meta_loss(s, sl, q, ql, 4)
        loss, logits, extra = r.loss, r.logits, (r.query_loss, r.accuracy)
    else:
        logits = learner.logits(s, sl, q, 4, training=False)
        loss = cross_entropy(logits, ql) + 0.1 * logits[..., 0].pow(2).mean()
        extra = ()
    wrt = [s, q] + list(learner.parameters())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    with torch.no_grad():
        traced = learner.trace(s, sl, q, ql, 4, 3)
        eval_logits = learner.logits(s, sl, q, 4, training=False)
    return logits.detach(), loss.detach(), extra, grads, traced, eval_logits


@pytest.mark.parametrize("name", STEP_LEARNERS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("tasks,hidden", [(1, 0), (3, 0), (2, 4), (4, 4)])
def test_batched_inner_loop_equals_the_looped_reference(name, training, tasks, hidden):
    a = _run(name, True, training, tasks, hidden, seed=tasks + hidden)
    b = _run(name, False, training, tasks, hidden, seed=tasks + hidden)
    tight = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a[0], b[0], **tight)
    torch.testing.assert_close(a[1], b[1], **tight)
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, **tight)
    assert len(a[3]) == len(b[3])
    for x, y in zip(a[3], b[3]):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, **tight)
    assert a[3][1] is not None  # the query concepts always get a gradient
    for x, y in zip(a[4], b[4]):
        torch.testing.assert_close(x, y, **tight)
    torch.testing.assert_close(a[5], b[5], **tight)


def test_evaluation_under_no_grad_still_adapts():
    """Evaluation calls logits under torch.no_grad(); the inner loop must still take its steps."""
    s, sl, q, ql = make_tasks(2, 3, 2, 2, 6, seed=8)
    for name in STEP_LEARNERS:
        for batched in (True, False):
            learner = make(name, 6, inner_steps=3, batched=batched)
            with torch.no_grad():
                logits = learner.logits(s, sl, q, 3, training=False)
            assert not logits.requires_grad
            assert float((logits.argmax(-1) == ql).float().mean()) > 0.9
