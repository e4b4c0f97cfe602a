"""aesampler-flip: a corruption that flips pixels, x -> 1 - x."""

import torch

import aesampler


class FlipCorruption(aesampler.Corruption):
    """Flips every pixel x to 1 - x with probability p."""

    def __init__(self, p: float = 0.1):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x, *, generator=None):
        flip = torch.rand(x.shape, generator=generator, device=x.device) < self.p
        return torch.where(flip, 1 - x, x)  # a new tensor; x is untouched


@aesampler.hookimpl
def register_corruptions(register):
    register("flip", FlipCorruption)
