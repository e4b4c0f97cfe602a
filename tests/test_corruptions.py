"""Properties of the built-in corruptions, checked by Hypothesis over shapes, dtypes and sigmas.

The statistical properties use a bound of Z = 6 standard errors: a correct corruption fails one
check by chance with probability about 2e-9, so all the examples of a run together fail less
than once in a million runs. For low-precision dtypes the bound adds the largest error that
rounding to the dtype can introduce (see ``_rounding_slack``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aesampler import GaussianCorruption, IdentityCorruption

Z = 6.0
# Unit roundoff (half an ulp, relative) of each dtype: rounding a value v changes it by <= U|v|.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def _supported(dtype: torch.dtype) -> bool:
    try:
        draws = torch.randn(2, dtype=dtype, generator=torch.Generator())
        return (draws + 1.0).dtype == dtype
    except (RuntimeError, TypeError):
        return False


DTYPES = [d for d in UNIT_ROUNDOFF if _supported(d)]
assert {torch.float32, torch.float64} <= set(DTYPES)

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**63 - 1)
sigmas = st.floats(0.01, 10.0, allow_nan=False)
# Small tensors of any rank for the exact properties ...
small_shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


# ... and shapes of 20,000 to 50,000 elements, of rank 1 to 4, for the statistical ones.
@st.composite
def large_shapes(draw) -> tuple[int, ...]:
    leading = draw(st.lists(st.integers(1, 8), min_size=0, max_size=3))
    target = draw(st.integers(20_000, 50_000))
    return (*leading, math.ceil(target / math.prod(leading)))


def _input(shape: tuple[int, ...], dtype: torch.dtype, seed: int, contiguous: bool = True):
    """Values in [0, 1] like images; optionally a non-contiguous view of the same shape."""
    g = torch.Generator().manual_seed(seed)
    if contiguous or len(shape) < 2:
        return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    flipped = (*shape[:-2], shape[-1], shape[-2])
    return torch.rand(flipped, generator=g, dtype=torch.float64).to(dtype).transpose(-1, -2)


def _rounding_slack(dtype: torch.dtype, *tensors: torch.Tensor, mean: bool) -> float:
    """An upper bound on what rounding to ``dtype`` can add to the mean or the std of the noise.

    x̃ = fl(x + fl(sigma * eps)) differs from x + sigma * eps by at most U (|sigma * eps| + |x̃|)
    per element (two roundings), and eps, drawn in ``dtype``, is itself rounded by at most U|eps|.
    So the measured noise x̃ - x is off by at most 2U (|noise| + |x̃|) per element, which moves its
    mean by at most the mean of that and its std by at most the root mean square of that.
    """
    size = sum(t.abs() for t in tensors)
    scale = size.mean() if mean else size.pow(2).mean().sqrt()
    return 2 * UNIT_ROUNDOFF[dtype] * scale.item()


@settings(max_examples=50, deadline=None)
@given(shape=large_shapes(), dtype=dtypes, sigma=sigmas, seed=seeds)
def test_gaussian_noise_has_mean_zero_and_std_sigma(shape, dtype, sigma, seed):
    x = _input(shape, dtype, seed)
    x_tilde = GaussianCorruption(sigma)(x, generator=torch.Generator().manual_seed(seed + 1))
    noise = x_tilde.double() - x.double()  # exact: both are values of a narrower dtype
    n = noise.numel()
    # Standard errors of the mean and of the standard deviation of n normal draws.
    mean_bound = Z * sigma / math.sqrt(n) + _rounding_slack(dtype, noise, x_tilde, mean=True)
    std_bound = Z * sigma / math.sqrt(2 * (n - 1)) + _rounding_slack(
        dtype, noise, x_tilde, mean=False
    )
    assert abs(noise.mean().item()) < mean_bound
    assert abs(noise.std().item() - sigma) < std_bound


def test_papers_corruption_has_variance_quarter():
    n = 400_000
    x = torch.zeros(n, dtype=torch.float64)
    noise = GaussianCorruption(0.5)(x, generator=torch.Generator().manual_seed(2))
    # Var of the sample variance of n normals is 2 sigma^4 / (n - 1).
    assert abs(noise.var().item() - 0.25) < Z * math.sqrt(2 * 0.25**2 / (n - 1))


CORRUPTIONS = st.one_of(
    st.builds(GaussianCorruption, st.one_of(st.just(0.0), sigmas)),
    st.just(IdentityCorruption()),
)


@settings(max_examples=50, deadline=None)
@given(
    corrupt=CORRUPTIONS,
    shape=small_shapes,
    dtype=dtypes,
    seed=seeds,
    contiguous=st.booleans(),
)
def test_input_untouched_same_seed_same_output_and_no_global_rng(
    corrupt, shape, dtype, seed, contiguous
):
    x = _input(shape, dtype, seed, contiguous)
    original = x.clone()
    global_state = torch.get_rng_state()
    a = corrupt(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never used
    torch.manual_seed(seed ^ 1)  # nor does its state matter
    b = corrupt(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(x, original)  # x is never modified
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b)  # the generator alone decides the noise
    # The noise depends on the shape, not on the memory layout.
    c = corrupt(x.contiguous(), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, c)


@settings(max_examples=50, deadline=None)
@given(shape=small_shapes, dtype=dtypes, seed=seeds)
def test_identity_and_sigma_zero_return_x_and_draw_nothing(shape, dtype, seed):
    x = _input(shape, dtype, seed)
    for corrupt in (IdentityCorruption(), GaussianCorruption(0.0)):
        g = torch.Generator().manual_seed(seed)
        state = g.get_state()
        assert torch.equal(corrupt(x, generator=g), x)
        assert torch.equal(g.get_state(), state)


@settings(max_examples=50, deadline=None)
@given(shape=small_shapes.filter(lambda s: math.prod(s) >= 8), sigma=sigmas, seed=seeds)
def test_different_seeds_give_different_noise(shape, sigma, seed):
    x = _input(shape, torch.float64, seed)
    corrupt = GaussianCorruption(sigma)
    a = corrupt(x, generator=torch.Generator().manual_seed(seed))
    b = corrupt(x, generator=torch.Generator().manual_seed(seed + 1))
    assert not torch.equal(a, b)


@settings(max_examples=50, deadline=None)
@given(
    sigma=st.one_of(
        st.floats(max_value=-1e-300),
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.text(max_size=3),
        st.booleans(),
        st.none(),
    )
)
def test_bad_sigma_is_rejected(sigma):
    with pytest.raises(ValueError, match="sigma must be"):
        GaussianCorruption(sigma)
