"""Samplers: where chains start (see :mod:`aesampler.samplers.base` and docs/samplers.md).

* ``prior``: N(0, I), the paper's step 0.
* ``encodings``: encodings of held-out images, drawn from Q(z|x) (the paper's "Approach 1").
* ``ex_post_gmm``: a Gaussian mixture fitted to the training encodings (Ghosh et al., 2020).
"""

from .base import Sampler, SamplerContext, SamplerError, encode_images
from .gmm import ExPostGMM
from .simple import EncodingsSampler, PriorSampler

__all__ = [
    "EncodingsSampler",
    "ExPostGMM",
    "PriorSampler",
    "Sampler",
    "SamplerContext",
    "SamplerError",
    "encode_images",
]
