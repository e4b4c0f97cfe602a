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


def _old_aae_step(model, x, x_input, optimizers, generator):
    """AAE.training_step as it was before train.precision: the fp32 path must equal it."""

    def step(optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    bce_logits = torch.nn.functional.binary_cross_entropy_with_logits
    z = model.encoder(x_input).mean
    reconstruction = torch.nn.functional.binary_cross_entropy(
        model.decoder(z), x, reduction="sum"
    ) / len(x)
    step(optimizers["autoencoder"], reconstruction)
    z_prior = torch.randn(z.shape, generator=generator, dtype=z.dtype)
    real, fake = model.adversary(z_prior), model.adversary(z.detach())
    adversary = bce_logits(real, torch.ones_like(real)) + bce_logits(fake, torch.zeros_like(fake))
    step(optimizers["adversary"], adversary)
    model.adversary.requires_grad_(False)
    judged = model.adversary(model.encoder(x_input).mean)
    generator_loss = bce_logits(judged, torch.ones_like(judged))
    step(optimizers["generator"], generator_loss)
    model.adversary.requires_grad_(True)
    return [reconstruction, adversary, generator_loss]


def _old_vae_step(model, x, x_input, optimizers, generator):
    """VAE.training_step as it was before train.precision."""
    posterior = model.encoder(x_input)
    z = posterior.sample(generator)
    reconstruction = torch.nn.functional.binary_cross_entropy(
        model.decoder(z), x, reduction="sum"
    ) / len(x)
    mean, std = posterior.mean, posterior.std
    kl = 0.5 * (mean.square() + std.square() - 2 * std.log() - 1).sum() / len(x)
    loss = reconstruction + kl
    optimizers["autoencoder"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["autoencoder"].step()
    return [reconstruction, kl]


def _bare_loop(model, step, steps=4):
    """``steps`` denoising steps on fixed blobs; returns every step's losses as floats."""
    optimizers = {
        name: torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
        for name, params in model.optimizer_groups().items()
    }
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # the adversary's dropout
    x = _blobs()
    model.train()
    seen = []
    for _ in range(steps):
        x_input = GaussianCorruption(0.5)(x, generator=generator)
        seen.append([float(v.detach()) for v in step(model, x, x_input, optimizers, generator)])
    return seen


@pytest.mark.parametrize(("cls", "old"), [(AAE, _old_aae_step), (VAE, _old_vae_step)])
def test_fp32_training_is_bit_identical_to_the_step_before_precision_existed(cls, old):
    """train.precision: fp32 (the default) reproduces the loss sequence and the weights of the
    step as written before bf16 training was added, bit for bit."""
    torch.manual_seed(0)
    model = cls(image_size=8, channels=1, latent_dim=4, width=4)
    before = copy.deepcopy(model)
    names = {AAE: ["reconstruction", "adversary", "generator"], VAE: ["reconstruction", "kl"]}

    def new(model, x, x_input, optimizers, generator):
        losses = model.training_step(x, x_input, optimizers, generator)
        return [losses[name] for name in names[cls]]

    assert model.train_precision == "fp32"
    assert _bare_loop(model, new) == _bare_loop(before, old)
    for (name, a), b in zip(model.state_dict().items(), before.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("cls", [AAE, VAE])
def test_bf16_training_runs_the_networks_in_bf16_and_keeps_everything_else_fp32(cls):
    torch.manual_seed(0)
    model = cls(image_size=8, channels=1, latent_dim=4, width=4)
    model.train_precision = "bf16"
    dtypes = []
    model.decoder.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    losses = _bare_loop(model, lambda m, *args: m.training_step(*args).values(), steps=3)
    assert set(dtypes) == {torch.bfloat16}  # the forward passes ran under autocast
    assert all(torch.isfinite(torch.tensor(row)).all() for row in losses)
    assert losses[-1][0] < losses[0][0]  # it learns
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32}
    model.train_precision = "fp32"
    dtypes.clear()
    model.decoder(torch.zeros(2, 4))
    assert dtypes == [torch.float32]  # nothing of bf16 outlives the steps


def test_a_model_refuses_an_unknown_training_precision():
    model = AAE(image_size=8, channels=1, latent_dim=4, width=4)
    model.train_precision = "fp8"
    with pytest.raises(ValueError, match="train_precision must be one of"):
        model.autocast()
