from __future__ import annotations

import math

import pytest
import torch

from aesampler import GaussianCorruption, IdentityCorruption

N = 400_000
Z = 6.0  # a 6-standard-error bound: fails by chance about once in 5e8 runs


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_gaussian_noise_has_mean_zero_and_std_sigma(sigma):
    x = torch.rand(400, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = GaussianCorruption(sigma)(x, generator=torch.Generator().manual_seed(1)) - x
    n = noise.numel()
    assert n == N
    # Standard errors of the sample mean and the sample standard deviation of n normal draws.
    assert abs(noise.mean().item()) < Z * sigma / math.sqrt(n)
    assert abs(noise.std().item() - sigma) < Z * sigma / math.sqrt(2 * (n - 1))


def test_papers_corruption_has_variance_quarter():
    x = torch.zeros(N, dtype=torch.float64)
    noise = GaussianCorruption(0.5)(x, generator=torch.Generator().manual_seed(2))
    # Var of the sample variance of n normals is 2 sigma^4 / (n - 1).
    assert abs(noise.var().item() - 0.25) < Z * math.sqrt(2 * 0.25**2 / (N - 1))


def test_sigma_zero_and_identity_are_the_identity():
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(GaussianCorruption(0.0)(x, generator=torch.Generator()), x)
    assert torch.equal(IdentityCorruption()(x, generator=torch.Generator()), x)


def test_same_seed_same_noise_and_input_untouched():
    x = torch.rand(8, 3, 5, 5)
    original = x.clone()
    corrupt = GaussianCorruption(0.5)
    a = corrupt(x, generator=torch.Generator().manual_seed(7))
    b = corrupt(x, generator=torch.Generator().manual_seed(7))
    c = corrupt(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, original)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_noise_comes_only_from_the_generator():
    x = torch.rand(4, 4)
    torch.manual_seed(0)
    a = GaussianCorruption(1.0)(x, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(99)  # the global RNG must not matter
    b = GaussianCorruption(1.0)(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), "0.5", True])
def test_bad_sigma_is_rejected(sigma):
    with pytest.raises(ValueError, match="sigma must be"):
        GaussianCorruption(sigma)
