"""A start-sampler plugin: a Gaussian with the mean and per-dimension spread of the encodings."""

import torch

import aesampler
from aesampler.samplers import Sampler, SamplerContext, SamplerError


class DiagonalGaussian(Sampler):
    """N(mean, diag(std²)) fitted to a split's encodings, its spread multiplied by `scale`."""

    fits = True  # fit() learns a state worth saving in the run directory
    describes = "draws from a diagonal Gaussian fitted to the training encodings"

    def __init__(self, split: str = "train", scale: float = 1.0):
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.split = split
        self.scale = scale
        self.mean = self.std = None

    def fit(self, context: SamplerContext) -> None:
        super().fit(context)  # keeps context.latent_shape
        z = context.encodings(self.split)  # (N, *latent_shape) on the CPU, encoded once
        if len(z) < 2:
            raise SamplerError(f"diagonal_gaussian needs 2 or more encodings of {self.split!r}")
        self.mean, self.std = z.mean(dim=0), z.std(dim=0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mean is None:
            raise SamplerError("DiagonalGaussian is not fitted: call fit(context) first")
        eps = torch.randn(n, *self.mean.shape, generator=generator)  # all noise from generator
        return self.mean + self.scale * self.std * eps

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"mean", "std"}:
            raise SamplerError(f"a diagonal_gaussian state holds mean and std, not {sorted(state)}")
        self.mean, self.std = state["mean"].float(), state["std"].float()
        self.latent_shape = tuple(self.mean.shape)

    def check_state(self, state: dict[str, torch.Tensor]) -> list[str]:
        problems = super().check_state(state)  # every floating-point tensor is finite
        if "std" in state and bool((state["std"] < 0).any()):
            problems.append("std has negative values")
        return problems


@aesampler.hookimpl
def register_samplers(register):
    register("diagonal_gaussian", DiagonalGaussian)
