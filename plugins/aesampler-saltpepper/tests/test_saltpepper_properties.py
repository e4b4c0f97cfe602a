"""Hypothesis properties of the salt-and-pepper corruption over shapes, dtypes and parameters.

Fractions are checked against a bound of Z = 6 binomial standard errors (a correct corruption
fails one check by chance with probability about 2e-9), plus the shift that precision can cause.
The uniform draw is made in float32 for half-precision inputs and in the input's dtype otherwise;
``torch.rand`` in a dtype draws from a grid of step about U (its unit roundoff), so ``P(u < p)``
can differ from p by up to about U. The bound allows 2U of the dtype the draw is made in.
"""

from __future__ import annotations

import math

import torch
from aesampler_saltpepper import SaltPepperCorruption
from hypothesis import given, settings
from hypothesis import strategies as st

Z = 6.0
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def _supported(dtype: torch.dtype) -> bool:
    try:
        draws = torch.rand(2, dtype=dtype, generator=torch.Generator())
        return draws.lt(0.5).numel() == 2
    except (RuntimeError, TypeError):
        return False


dtypes = st.sampled_from([d for d in UNIT_ROUNDOFF if _supported(d)])
seeds = st.integers(0, 2**63 - 1)
probabilities = st.floats(0.0, 1.0)
small_shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@st.composite
def large_shapes(draw) -> tuple[int, ...]:
    leading = draw(st.lists(st.integers(1, 8), min_size=0, max_size=3))
    target = draw(st.integers(20_000, 50_000))
    return (*leading, math.ceil(target / math.prod(leading)))


def _bound(p: float, n: int, dtype: torch.dtype) -> float:
    drawn_in = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return Z * math.sqrt(p * (1 - p) / n) + 2 * UNIT_ROUNDOFF[drawn_in] + 1e-12


@settings(max_examples=50, deadline=None)
@given(shape=large_shapes(), dtype=dtypes, p=probabilities, salt=probabilities, seed=seeds)
def test_hit_and_salt_fractions(shape, dtype, p, salt, seed):
    x = torch.full(shape, 0.5, dtype=dtype)  # neither salt nor pepper, exact in every dtype
    x_tilde = SaltPepperCorruption(p, salt)(x, generator=torch.Generator().manual_seed(seed))
    assert set(x_tilde.unique().tolist()) <= {0.0, 0.5, 1.0}
    n = x.numel()
    hit = x_tilde != 0.5
    salted = x_tilde == 1
    # A pixel becomes salt with probability p * salt and is hit at all with probability p.
    assert abs(hit.double().mean().item() - p) <= _bound(p, n, dtype)
    assert abs(salted.double().mean().item() - p * salt) <= _bound(p * salt, n, dtype)


@settings(max_examples=50, deadline=None)
@given(
    shape=small_shapes,
    dtype=dtypes,
    p=probabilities,
    salt=probabilities,
    seed=seeds,
    contiguous=st.booleans(),
)
def test_input_untouched_seeded_and_no_global_rng(shape, dtype, p, salt, seed, contiguous):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    if not contiguous and x.dim() >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other layout
    original = x.clone()
    corrupt = SaltPepperCorruption(p, salt)
    global_state = torch.get_rng_state()
    a = corrupt(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(seed ^ 1)
    b = corrupt(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(x, original)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    # Every pixel is kept, or set to 0 or 1.
    assert bool(((a == x) | (a == 0) | (a == 1)).all())
    if p == 0.0:
        assert torch.equal(a, x)
