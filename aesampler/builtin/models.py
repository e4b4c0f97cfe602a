"""Built-in model kinds: the paper's ``vae`` and ``aae`` (DCGAN-style networks)."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.models import AAE, VAE


@hookimpl
def register_models(register):
    register("vae", VAE)
    register("aae", AAE)
