"""Corruption processes C(x̃|x).

The paper's denoising models (DVAE, DAAE; §2.2 and §4.3) use additive Gaussian noise
C(x̃|x) = N(x, 0.25 I), i.e. ``GaussianCorruption(sigma=0.5)``. The plain VAE and AAE chains
(Eq. 1) use no corruption, i.e. ``IdentityCorruption()``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .interfaces import Corruption


class IdentityCorruption(Corruption):
    """C(x̃|x) = δ(x̃ - x): the chain of Eq. 1, for models trained without a denoising criterion."""

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return x

    def __repr__(self) -> str:
        return "IdentityCorruption()"


class GaussianCorruption(Corruption):
    """Additive isotropic Gaussian noise: x̃ = x + sigma * eps, eps ~ N(0, I).

    Args:
        sigma: the noise's standard deviation. The paper's N(x, 0.25 I) is ``sigma=0.5``;
            ``sigma=0`` is the identity. The result is not clipped to [0, 1], as in the paper.
    """

    def __init__(self, sigma: float = 0.5):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise ValueError(f"GaussianCorruption: sigma must be a number, got {sigma!r}")
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"GaussianCorruption: sigma must be finite and >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        if self.sigma == 0.0:
            return x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.sigma * noise  # a new tensor: x is never modified

    def __repr__(self) -> str:
        return f"GaussianCorruption(sigma={self.sigma})"
