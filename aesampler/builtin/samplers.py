"""Built-in start samplers (docs/samplers.md gives their maths and references)."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.samplers import (
    AAEDiscriminator,
    EncodingsSampler,
    ExPostGMM,
    LatentFlow,
    LocalGlobal,
    PosteriorMixture,
    PriorSampler,
    RatioCorrected,
)


@hookimpl
def register_samplers(register):
    register("prior", PriorSampler)
    register("encodings", EncodingsSampler)
    register("ex_post_gmm", ExPostGMM)
    register("latent_flow", LatentFlow)
    register("ratio_corrected", RatioCorrected)
    register("aae_discriminator", AAEDiscriminator)
    register("local_global", LocalGlobal)
    register("posterior_mixture", PosteriorMixture)
