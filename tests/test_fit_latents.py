"""Fitting samplers from Python: ``fit_latents`` for every sampler that fits, and
``encode_images`` from an Encoder, a model or a Chain (issue 19, item 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aesampler
from aesampler.models import AAE
from aesampler.plugins import get_registry
from aesampler.samplers import (
    ExPostGMM,
    LatentFlow,
    SamplerContext,
    SamplerError,
    encode_images,
    encode_posteriors,
)

D = 6
QUICK = {  # small enough to fit in a second or two on 6-D latents
    "latent_flow": {"transforms": 1, "hidden": [16], "epochs": 3, "pca_dims": None},
    "ratio_corrected": {"epochs": 3, "hidden": 16, "pca_dims": None},
    "local_global": {
        "components": 2,
        "epochs": 3,
        "hidden": 16,
        "pca_dims": None,
        "iterations": 2,
        "burn_in": 1,
    },
    "ex_post_gmm": {"components": 3},
    "posterior_mixture": {"grid": 4},
    "aae_discriminator": {},
    "encodings": {},
}


def latents(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0] * D, [-2.0] * D])
    return centres[torch.arange(n) % 2] + 0.3 * torch.randn(n, D, generator=generator)


def quiet(line: str) -> None:
    pass


def fitted_names() -> list[str]:
    registry = get_registry()
    return [n for n in registry.names("sampler") if registry.get("sampler", n).factory.fits]


def test_every_fitted_sampler_is_covered():
    assert set(fitted_names()) <= set(QUICK), "a new fitted sampler needs its QUICK settings"


@pytest.mark.parametrize("name", sorted(QUICK))
def test_fit_latents_fits_every_sampler(name):
    if name not in fitted_names():
        pytest.skip(f"{name} is not registered as a fitted sampler")
    sampler = get_registry().create("sampler", name, **QUICK[name])
    train, valid = latents(200, 0), latents(60, 1)
    stds = torch.full_like(train, 0.3)
    model = (
        AAE(image_size=8, channels=1, latent_dim=D, width=4)
        if name == "aae_discriminator"
        else None
    )
    returned = sampler.fit_latents(
        train, valid, posteriors=(train, stds), model=model, seed=0, log=quiet
    )
    assert returned is sampler  # chainable: Sampler(...).fit_latents(z)
    draws = sampler.sample(7, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (7, D) and torch.isfinite(draws).all()
    assert sampler.check_state(sampler.state_dict()) == []
    again = sampler.sample(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_fit_latents_is_fit_on_a_context_of_those_latents():
    z = latents(300, 2)
    by_latents = ExPostGMM(components=2).fit_latents(z, log=quiet)
    by_context = ExPostGMM(components=2)
    by_context.fit(SamplerContext.from_encodings({"train": z}, log=quiet))
    for key, value in by_context.state_dict().items():
        assert torch.equal(by_latents.state_dict()[key], value), key


def test_valid_latents_are_used_and_their_absence_is_said():
    said: list[str] = []
    LatentFlow(**QUICK["latent_flow"]).fit_latents(latents(200, 0), log=said.append)
    assert any("holding out 20 of the 'train' split" in line for line in said), said
    said.clear()
    LatentFlow(**QUICK["latent_flow"]).fit_latents(latents(200, 0), latents(40, 1), log=said.append)
    assert not any("holding out" in line for line in said), said


def test_encodings_sampler_draws_the_given_latents():
    z = latents(10, 3)
    sampler = get_registry().create("sampler", "encodings").fit_latents(z, log=quiet)
    draws = sampler.sample(50, generator=torch.Generator().manual_seed(0))
    assert all(any(torch.equal(row, pool_row) for pool_row in z) for row in draws)


@pytest.mark.parametrize(
    ("latents_given", "message"),
    [
        (
            [[0.0, 1.0]],
            "latents must be a floating-point tensor (N, *latent_shape), one latent "
            "per row; got list",
        ),
        (torch.zeros(5, dtype=torch.long).reshape(5, 1), "got a tensor of shape (5, 1)"),
        (torch.zeros(4), "got a tensor of shape (4,)"),
        (torch.zeros(0, 3), "latents holds no latents (0 rows)"),
    ],
)
def test_bad_latents_get_one_clear_error(latents_given, message):
    with pytest.raises(SamplerError) as caught:
        ExPostGMM(components=2).fit_latents(latents_given, log=quiet)
    assert message in str(caught.value)


def test_valid_latents_of_another_shape_are_refused():
    with pytest.raises(
        SamplerError, match=r"valid has latents of shape \(4,\), but latents has \(6,\)"
    ):
        LatentFlow(**QUICK["latent_flow"]).fit_latents(latents(50, 0), torch.zeros(9, 4), log=quiet)


def test_a_sampler_that_needs_the_model_says_so():
    sampler = get_registry().create("sampler", "aae_discriminator")
    with pytest.raises(SamplerError, match="no model was given to fit on"):
        sampler.fit_latents(latents(50, 0), log=quiet)


# --- encode_images: an Encoder, a model or a Chain ------------------------------------------------


def tiny_vae_parts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 2 * D))
    encoder = aesampler.GaussianEncoder(net, scale="logvar")
    decoder = aesampler.ModuleDecoder(
        nn.Sequential(nn.Linear(D, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))), latent_shape=D
    )
    return encoder, decoder


def test_encode_images_takes_an_encoder_a_model_or_a_chain():
    encoder, decoder = tiny_vae_parts()
    images = torch.rand(70, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    buffers = [b.clone() for b in encoder.buffers()]
    holder = nn.Module()
    holder.encoder, holder.decoder = encoder, decoder  # a model: anything with an encoder
    chain = aesampler.Chain(encoder, decoder, aesampler.GaussianCorruption(0.5))
    by_encoder = encode_images(encoder, images, batchnorm="running", seed=3, batch=32)
    assert by_encoder.shape == (70, D)
    for source in (holder, chain):
        assert torch.equal(
            encode_images(source, images, batchnorm="running", seed=3, batch=32), by_encoder
        )
    # Batch statistics while encoding, and the running buffers left as they were.
    by_batch = encode_images(chain, images, batchnorm="batch", seed=3, batch=32)
    assert not torch.equal(by_batch, by_encoder)
    assert all(torch.equal(a, b) for a, b in zip(buffers, encoder.buffers()))
    means, stds = encode_posteriors(chain, images, batchnorm="running")
    assert means.shape == stds.shape == (70, D)


def test_encode_images_names_what_it_cannot_encode_with():
    _, decoder = tiny_vae_parts()
    transition_only = aesampler.Chain.from_transition(IdentityStep(), decoder)
    for source, kind in ((decoder, "ModuleDecoder"), (transition_only, "Chain"), (3, "int")):
        with pytest.raises(SamplerError) as caught:
            encode_images(source, torch.rand(4, 1, 4, 4))
        assert str(caught.value).startswith(f"cannot encode images with a {kind}: pass an")


class IdentityStep(aesampler.Transition):
    def forward(self, z, *, generator=None):
        return aesampler.TransitionOutput(z=z)
