from __future__ import annotations

import copy

import pytest
import torch

from aesampler import GaussianCorruption
from aesampler.models import AAE, VAE


def _blobs(n: int = 64, size: int = 8) -> torch.Tensor:
    """Images of one bright square at a random place: easy to learn, generated on the fly."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, size, size)
    corners = torch.randint(0, size - 3, (n, 2), generator=g)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, 0, r : r + 3, c : c + 3] = 1.0
    return x


def _train(model, steps: int, corruption=None):
    torch.manual_seed(0)
    optimizers = {
        name: torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.999))
        for name, params in model.optimizer_groups().items()
    }
    g = torch.Generator().manual_seed(1)
    x = _blobs()
    history = []
    for _ in range(steps):
        x_in = corruption(x, generator=g) if corruption is not None else x
        model.train()
        history.append(model.training_step(x, x_in, optimizers, g))
    return history


@pytest.mark.parametrize("cls", [VAE, AAE])
@pytest.mark.parametrize("sigma", [None, 0.5])
def test_a_few_steps_reduce_the_reconstruction_loss(cls, sigma):
    torch.manual_seed(0)
    model = cls(image_size=8, channels=1, latent_dim=4, width=8)
    corruption = GaussianCorruption(sigma) if sigma is not None else None
    history = _train(model, 40, corruption)
    first = sum(h["reconstruction"] for h in history[:5]) / 5
    last = sum(h["reconstruction"] for h in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(torch.isfinite(v) for h in history for v in h.values())


def test_vae_losses_add_up_and_kl_is_non_negative():
    torch.manual_seed(0)
    history = _train(VAE(image_size=8, channels=1, latent_dim=4, width=8), 3)
    for h in history:
        assert h["kl"] >= 0
        torch.testing.assert_close(h["loss"], h["reconstruction"] + h["kl"])


def test_aae_updates_the_adversary_and_the_encoder_against_it():
    torch.manual_seed(0)
    model = AAE(image_size=8, channels=1, latent_dim=4, width=8, adversary_hidden=16)
    before = copy.deepcopy(model.state_dict())
    history = _train(model, 2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("adversary.") for k in changed)
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
    assert {"reconstruction", "adversary", "generator"} <= set(history[0])
    # The generator phase moves the encoder: compare with a step that skips it.
    torch.manual_seed(0)
    base = AAE(image_size=8, channels=1, latent_dim=4, width=8, adversary_hidden=16)
    opts = {
        n: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999))
        for n, p in base.optimizer_groups().items()
    }
    frozen = copy.deepcopy(base)
    x = _blobs()
    base.training_step(x, x, opts, torch.Generator().manual_seed(1))
    frozen_opts = {
        n: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999))
        for n, p in frozen.optimizer_groups().items()
    }
    frozen_opts["generator"].step = lambda *a, **k: None
    frozen.training_step(x, x, frozen_opts, torch.Generator().manual_seed(1))
    enc_base = base.encoder.state_dict()
    enc_frozen = frozen.encoder.state_dict()
    assert any(not torch.equal(enc_base[k], enc_frozen[k]) for k in enc_base)
    # The adversary's parameters are trainable again after the generator phase.
    assert all(p.requires_grad for p in model.adversary.parameters())


def test_models_record_their_architecture():
    model = AAE(image_size=16, channels=3, latent_dim=6, width=4, adversary_hidden=8)
    rebuilt = AAE(**model.architecture)
    assert rebuilt.architecture == model.architecture
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert VAE(image_size=8, channels=1).architecture["latent_dim"] == 200  # the paper's default
