"""Built-in model kinds: the paper's ``vae`` and ``aae`` (DCGAN-style networks), and the
checkpoint format ``aesampler`` that trained models of every kind are saved in."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.checkpoint import AesamplerCheckpoints
from aesampler.models import AAE, VAE


@hookimpl
def register_models(register):
    register("vae", VAE)
    register("aae", AAE)


@hookimpl
def register_checkpoint_formats(register):
    register("aesampler", AesamplerCheckpoints)
