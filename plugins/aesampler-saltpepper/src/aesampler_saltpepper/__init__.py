"""Salt-and-pepper corruption for aesampler.

C(x̃|x): each pixel is hit independently with probability ``p``; a hit pixel becomes 1 (salt)
with probability ``salt`` and 0 (pepper) otherwise; all other pixels keep their value. For images
with several channels each channel value is hit independently.
"""

from __future__ import annotations

import math

import torch

import aesampler

__all__ = ["SaltPepperCorruption", "register_corruptions"]


def _probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


class SaltPepperCorruption(aesampler.Corruption):
    """Impulse noise: a fraction p of pixels set to 1 (salt) or 0 (pepper).

    Args:
        p: probability that a pixel is hit.
        salt: probability that a hit pixel becomes 1 rather than 0.
    """

    def __init__(self, p: float = 0.2, salt: float = 0.5):
        self.p = _probability("p", p)
        self.salt = _probability("salt", salt)

    def __call__(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if self.p == 0.0:
            return x
        # One uniform draw per pixel decides everything: u < p*salt -> salt, u < p -> pepper.
        # Half-precision uniforms sit on a grid of about 1/256: draw those in float32.
        precise = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=precise)
        salt = u < self.p * self.salt
        pepper = (u < self.p) & ~salt
        return torch.where(salt, torch.ones_like(x), torch.where(pepper, torch.zeros_like(x), x))

    def __repr__(self) -> str:
        return f"SaltPepperCorruption(p={self.p}, salt={self.salt})"


@aesampler.hookimpl
def register_corruptions(register):
    register("salt_pepper", SaltPepperCorruption)
