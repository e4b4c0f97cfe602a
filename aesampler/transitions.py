"""Transition operators T(z_{t+1} | z_t).

:class:`DecodeCorruptEncode` is the paper's operator: Eq. 1 with the identity corruption and
Eq. 2 with a corruption C(x̃|x) (§3.1, §3.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .corruptions import IdentityCorruption
from .interfaces import Corruption, Decoder, Encoder, Transition, TransitionOutput


class DecodeCorruptEncode(Transition):
    """z_{t+1} ~ Q(z | x̃),  x̃ ~ C(x̃ | d(z_t)).

    Args:
        encoder: Q(z|x).
        decoder: d(z).
        corruption: C(x̃|x); None means the identity (Eq. 1).
        sample: draw z_{t+1} from Q(z|x̃) (the paper's chain). With False the chain moves to the
            posterior mean instead, a deterministic map for stochastic encoders.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        corruption: Corruption | None = None,
        *,
        sample: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.corruption = corruption if corruption is not None else IdentityCorruption()
        self.sample = sample

    def forward(self, z: Tensor, *, generator: torch.Generator | None = None) -> TransitionOutput:
        x = self.decoder(z)  # d(z_t): the sample at step t
        x_tilde = self.corruption(x, generator=generator)  # only here, never in what is returned
        posterior = self.encoder(x_tilde)
        z_next = posterior.sample(generator) if self.sample else posterior.mean
        return TransitionOutput(z=z_next, x=x)
