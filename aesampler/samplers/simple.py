"""The simplest samplers: the prior, and encodings of held-out images."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler, SamplerError


class PriorSampler(Sampler):
    """The prior N(0, I): the paper's step 0."""

    describes = "decoded prior draws"

    def sample(self, n, generator=None):
        return torch.randn(self._check_n(n), *self._shape(), generator=generator)


class EncodingsSampler(Sampler):
    """Encodings of held-out images, drawn from Q(z|x) (the paper's "Approach 1").

    Args:
        split: the split whose images are encoded ("test" by default: held out from training).
        replace: draw with replacement; without it, asking for more draws than there are images
            is an error.
    """

    fits = True
    describes = "encodings of held-out images"
    copies_data = True

    def __init__(self, split: str = "test", replace: bool = True):
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        self.split = split
        self.replace = bool(replace)
        self.pool: Tensor | None = None

    def fit(self, context):
        super().fit(context)
        self.pool = context.encodings(self.split)
        if len(self.pool) == 0:
            raise SamplerError(f"the {self.split!r} split has no images to encode")

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.pool is None:
            raise SamplerError("EncodingsSampler is not fitted: call fit(context) first")
        if self.replace:
            index = torch.randint(len(self.pool), (n,), generator=generator)
        else:
            if n > len(self.pool):
                raise SamplerError(
                    f"{n} draws without replacement from {len(self.pool)} encodings of the "
                    f"{self.split!r} split; set replace: true or draw fewer"
                )
            index = torch.randperm(len(self.pool), generator=generator)[:n]
        return self.pool[index].clone()

    def state_dict(self):
        return {} if self.pool is None else {"pool": self.pool}

    def check_state(self, state):
        problems = super().check_state(state)
        pool = state.get("pool")
        if isinstance(pool, Tensor) and (pool.dim() < 2 or len(pool) == 0):
            problems.append(f"pool {tuple(pool.shape)} holds no encodings")
        return problems

    def load_state_dict(self, state):
        if "pool" not in state or state["pool"].dim() < 2:
            raise SamplerError("the saved state of 'encodings' holds no pool of encodings")
        self.pool = state["pool"].float()
        self.latent_shape = tuple(self.pool.shape[1:])
