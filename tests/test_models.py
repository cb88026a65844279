"""Concept generators (conv4, resnet12), the concept discriminator and the DEML model wrapper."""
from __future__ import annotations

import pytest
import torch

from engine.config import TrainConfig
from engine.errors import UserError
from engine.models import BACKBONES, ConceptDiscriminator, build_generator
from engine.models.deml import DEMLModel


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_generator_output_shape(backbone, channels, size):
    torch.manual_seed(0)
    g = build_generator(backbone, channels, concept_dim=10, hidden=8, norm="batch")
    x = torch.rand(3, channels, size, size)
    out = g(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # different images, different concepts
    g.eval()
    with torch.no_grad():
        assert g(x[:1]).shape == (1, 10)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_group_norm_is_batch_independent_and_batch_norm_is_not(backbone):
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    grouped = build_generator(backbone, 1, concept_dim=16, hidden=16, norm="group").train()
    alone = torch.cat([grouped(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(grouped(x), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped(x[[4, 0, 2]]), alone[[4, 0, 2]], rtol=1e-5, atol=1e-5)
    batch = build_generator(backbone, 1, concept_dim=16, hidden=16, norm="batch").train()
    with torch.no_grad():
        assert not torch.allclose(batch(x)[:2], batch(x[:2]), atol=1e-4)  # train-mode statistics are the batch's


@pytest.mark.parametrize("concept_dim,width", [(12, 10), (2, 3), (5, 8), (64, 64)])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_group_norm_accepts_any_width(backbone, concept_dim, width):
    """Regression: GroupNorm(min(8, C), C) failed whenever 8 did not divide C (e.g. concept_dim 12)."""
    g = build_generator(backbone, 3, concept_dim=concept_dim, hidden=width, norm="group")
    norms = [m for m in g.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in norms)
    for m in norms:  # where min(8, C) already divided C, nothing changed
        if m.num_channels <= 8 or m.num_channels % 8 == 0:
            assert m.num_groups == min(8, m.num_channels)
    assert g(torch.rand(2, 3, 28, 28)).shape == (2, concept_dim)


def test_norm_none_has_no_normalisation_layers():
    g = build_generator("conv4", 1, 8, 8, "none")
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in g.modules())
    assert g(torch.rand(2, 1, 28, 28)).shape == (2, 8)


def test_bad_generator_settings():
    with pytest.raises(UserError) as err:
        build_generator("vgg", 1, 8, 8, "batch")
    assert "'vgg'" in str(err.value) and all(n in str(err.value) for n in BACKBONES)
    with pytest.raises(UserError, match="norm"):
        build_generator("conv4", 1, 8, 8, "layer")
    with pytest.raises(UserError, match="at least 2"):
        build_generator("conv4", 1, 1, 8, "batch")
    with pytest.raises(UserError, match="width at least 1"):
        build_generator("resnet12", 1, 8, 0, "batch")


def test_conv4_at_28_px_is_the_classic_flattened_output():
    g = build_generator("conv4", 1, concept_dim=6, hidden=4, norm="none")
    x = torch.rand(2, 1, 28, 28)
    fmap = g.blocks(x)
    assert fmap.shape == (2, 6, 1, 1)
    torch.testing.assert_close(g(x), fmap.flatten(1))


@pytest.mark.parametrize("hidden", [0, 7])
def test_discriminator(hidden):
    d = ConceptDiscriminator(concept_dim=5, num_classes=9, hidden=hidden)
    assert d(torch.rand(4, 5)).shape == (4, 9)
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (2 if hidden else 1)
    assert linears[-1].out_features == 9 and linears[0].in_features == 5


def test_deml_model_parts_and_concepts():
    torch.manual_seed(0)
    # Meta-SGD: its learned step sizes are learner parameters (MAML's linear head has none of its own)
    cfg = TrainConfig(concept_dim=8, width=8, learner="metasgd", inner_steps=1, norm="group")
    model = DEMLModel(cfg, channels=1, external_classes=6)
    assert model.discriminator is not None and model.learner.name == "metasgd" and model.external_classes == 6
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"generator", "discriminator", "learner"}
    x = torch.rand(7, 1, 28, 28)
    z = model.concepts(x, chunk=3)  # chunked, without gradients
    assert z.shape == (7, 8) and not z.requires_grad
    torch.testing.assert_close(z, model.generator(x).detach(), rtol=1e-5, atol=1e-6)
    none = DEMLModel(TrainConfig(concept_dim=8, width=8, lam=0.0), channels=3, external_classes=0)
    assert none.discriminator is None
    assert not any(n.startswith("discriminator") for n, _ in none.named_parameters())


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_channels_last_layout_computes_what_nchw_computes(backbone, norm):
    """The generators run in channels_last for speed; the numbers are those of the default layout."""
    import copy

    torch.manual_seed(0)
    g = build_generator(backbone, 3, 16, 8, norm)
    assert g.blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last) if backbone == "conv4" else True
    nchw = copy.deepcopy(g).to(memory_format=torch.contiguous_format)
    nchw.memory_format = torch.contiguous_format
    x = torch.rand(6, 3, 32, 32)
    out, ref = g(x), nchw(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    ref.square().sum().backward()
    # float rounding, relative to the gradients' scale (a conv bias before batch norm has a true
    # gradient of 0, so its own scale is rounding noise)
    scale = max(q.grad.abs().max() for q in nchw.parameters())
    for (name, p), q in zip(g.named_parameters(), nchw.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-4 * scale, name
