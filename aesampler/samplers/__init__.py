"""Samplers: where chains start (see :mod:`aesampler.samplers.base` and docs/samplers.md).

* ``prior``: N(0, I), the paper's step 0.
* ``encodings``: encodings of held-out images, drawn from Q(z|x) (the paper's "Approach 1").
* ``ex_post_gmm``: a Gaussian mixture fitted to the training encodings (Ghosh et al., 2020).
* ``latent_flow``: a normalising flow (zuko) fitted to the training encodings.
* ``ratio_corrected``: any proposal corrected by a classifier's density ratio.
* ``aae_discriminator``: prior draws corrected by an AAE's adversary.
* ``local_global``: local-global MCMC (i-SIR + MALA) on the ratio-corrected mixture.
* ``posterior_mixture``: a smoothed mixture over the training images' posteriors.
"""

from .base import (
    Sampler,
    SamplerContext,
    SamplerError,
    encode_images,
    encode_posteriors,
    encoder_of,
    hold_out,
    principal_axes,
    training_and_validation,
)
from .flow import LatentFlow
from .gmm import ExPostGMM, fit_mixture, mixture_log_prob, sample_mixture
from .local_global import LocalGlobal
from .posterior import PosteriorMixture, mixture_log_likelihood, scale_grid
from .ratio import AAEDiscriminator, DensityRatioSampler, RatioCorrected
from .simple import EncodingsSampler, PriorSampler

__all__ = [
    "AAEDiscriminator",
    "DensityRatioSampler",
    "EncodingsSampler",
    "ExPostGMM",
    "LatentFlow",
    "LocalGlobal",
    "PosteriorMixture",
    "PriorSampler",
    "RatioCorrected",
    "Sampler",
    "SamplerContext",
    "SamplerError",
    "encode_images",
    "encode_posteriors",
    "encoder_of",
    "fit_mixture",
    "hold_out",
    "mixture_log_likelihood",
    "mixture_log_prob",
    "principal_axes",
    "sample_mixture",
    "scale_grid",
    "training_and_validation",
]
