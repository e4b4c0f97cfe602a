"""Tiny networks built on the fly: small enough that the whole suite stays fast on 2 cores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aesampler


def tiny_nets(
    latent: int = 4,
    image: tuple[int, int, int] = (1, 4, 4),
    stochastic: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """An MLP encoder/decoder pair with BatchNorm layers, images in [0, 1]."""
    torch.manual_seed(seed)
    c, h, w = image
    pixels = c * h * w
    enc = nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, latent * (2 if stochastic else 1)),
    )
    dec = nn.Sequential(
        nn.Linear(latent, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, pixels),
        nn.Sigmoid(),
        nn.Unflatten(1, image),
    )
    for net in (enc, dec):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                # Non-trivial population statistics, so batch and running modes really differ.
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return enc.to(dtype), dec.to(dtype)


def tiny_chain_parts(
    latent: int = 4,
    image: tuple[int, int, int] = (1, 4, 4),
    stochastic: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[aesampler.Encoder, aesampler.Decoder]:
    enc, dec = tiny_nets(latent, image, stochastic, dtype, seed)
    encoder = aesampler.GaussianEncoder(enc) if stochastic else aesampler.DeterministicEncoder(enc)
    return encoder, aesampler.ModuleDecoder(dec, latent_shape=latent)


@pytest.fixture
def parts():
    return tiny_chain_parts()
