from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aesampler import ChainInputError, lerp, slerp

T = torch.linspace(0, 1, 41)


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, v = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    return 2 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


pairs = st.integers(1, 8).flatmap(
    lambda d: st.tuples(
        arrays("float64", (3, d), elements=st.floats(-10, 10, allow_subnormal=False)),
        arrays("float64", (3, d), elements=st.floats(-10, 10, allow_subnormal=False)),
    )
)


@settings(max_examples=60, deadline=None)
@given(pairs, st.sampled_from([torch.float32, torch.float64]))
def test_endpoints_exact_and_everything_finite(pair, dtype):
    a, b = (torch.from_numpy(p).to(dtype) for p in pair)
    for fn in (slerp, lerp):
        out = fn(a, b, T)
        assert out.shape == (3, len(T), a.shape[1]) and out.dtype == dtype
        assert torch.equal(out[:, 0], a) and torch.equal(out[:, -1], b)
        assert torch.isfinite(out).all()


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_slerp_moves_along_the_great_circle(pair):
    a, b = (torch.from_numpy(p) for p in pair)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    assume(bool((na > 1e-3).all() and (nb > 1e-3).all()))
    omega = _angle(a, b)
    assume(bool(((omega > 1e-3) & (omega < math.pi - 1e-3)).all()))
    out = slerp(a, b, T.double())
    # The angle to a grows linearly: t * Ω.
    torch.testing.assert_close(
        _angle(out, a[:, None]), T.double()[None] * omega[:, None], atol=1e-6, rtol=1e-6
    )
    # The norm moves linearly from |a| to |b|.
    expected = (1 - T.double())[None] * na[:, None] + T.double()[None] * nb[:, None]
    torch.testing.assert_close(out.norm(dim=-1), expected)


def test_equal_norms_match_whites_formula():
    g = torch.Generator().manual_seed(1)
    a, b = (
        torch.randn(4, 50, generator=g, dtype=torch.float64),
        torch.randn(4, 50, generator=g, dtype=torch.float64),
    )
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    omega = _angle(a, b)[:, None, None]
    t = T.double()[None, :, None]
    white = (
        torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]
    ) / torch.sin(omega)
    torch.testing.assert_close(slerp(a, b, T.double()), white)


def test_equal_norms_stay_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 200, generator=g), torch.randn(16, 200, generator=g)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    norms = slerp(a, b, T).norm(dim=-1)
    torch.testing.assert_close(norms, a.norm(dim=1, keepdim=True).expand_as(norms))


def test_parallel_endpoints_fall_back_to_the_line():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    for b in (a.clone(), 2.5 * a):
        torch.testing.assert_close(slerp(a, b, T), lerp(a, b, T))


def test_antiparallel_endpoints_turn_through_a_perpendicular():
    a = torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    b = -2 * a
    out = slerp(a, b, T)
    assert torch.isfinite(out).all()
    # Norms move linearly from |a| to |b| and the midpoint is perpendicular to a.
    expected = (1 - T)[None] * a.norm(dim=1, keepdim=True) + T[None] * b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.norm(dim=-1), expected)
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close((mid * a).sum(dim=1), torch.zeros(2), atol=1e-5, rtol=0)
    # One-dimensional latents have no perpendicular: a straight line, still finite.
    one = slerp(torch.tensor([[2.0]]), torch.tensor([[-1.0]]), T)
    torch.testing.assert_close(one, lerp(torch.tensor([[2.0]]), torch.tensor([[-1.0]]), T))


def test_zero_and_nearly_antiparallel_endpoints_are_finite():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1e-7, 0.0]])
    b = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 0.0, 0.0]])
    out = slerp(a, b, T)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], lerp(a, b, T)[0])


def test_scalar_t_and_image_shaped_latents():
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert slerp(a, b, 0.3).shape == (2, 4, 3, 3)
    assert slerp(a, b, [0.0, 0.5, 1.0]).shape == (2, 3, 4, 3, 3)
    assert torch.equal(slerp(a, b, [0.0, 1.0])[:, 1], b)


@pytest.mark.parametrize(
    ("a", "b", "t", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 0.5, "same shape"),
        (torch.zeros(3), torch.zeros(3), 0.5, "same shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), 0.5, "one dtype"),
        (torch.zeros(2, 3), torch.zeros(2, 3), [], "at least one finite"),
        (torch.zeros(2, 3), torch.zeros(2, 3), float("nan"), "at least one finite"),
    ],
)
def test_bad_interpolation_input(a, b, t, message):
    with pytest.raises(ChainInputError, match=message):
        slerp(a, b, t)
