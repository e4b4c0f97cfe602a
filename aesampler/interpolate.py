"""Interpolation between batches of latents.

The paper (§1, Figure 2) interpolates spherically between encodings (White, 2016, "Sampling
generative networks") and then applies chain steps to the interpolated latents. ``slerp`` moves
the direction along the great circle from a to b at constant angular speed and the norm linearly
from ‖a‖ to ‖b‖:

    slerp(a, b; t) = ((1 - t) ‖a‖ + t ‖b‖) · (sin((1 - t) Ω) â + sin(t Ω) b̂) / sin Ω,

with â = a / ‖a‖, b̂ = b / ‖b‖ and Ω = ∠(a, b). For endpoints of equal norm (the usual case for
high-dimensional Gaussian latents) this is exactly White's formula; for unequal norms White's
formula neither keeps the angle linear in t nor the norm between ‖a‖ and ‖b‖, and this does.
It is computed per pair in float64, with fallbacks where the great circle is not defined:

* parallel endpoints (Ω ≈ 0) or a zero endpoint: linear interpolation, which then follows the
  same path;
* antiparallel endpoints (Ω ≈ π): every great half-circle joins them, so the path turns through
  a fixed perpendicular direction (the coordinate axis least aligned with a, orthogonalised).
  For one-dimensional latents no perpendicular exists and the path is linear.

Endpoints are returned exactly: t = 0 gives a and t = 1 gives b, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ChainInputError

_ANGLE_EPS = 1e-6


def _prepare(
    a: Tensor, b: Tensor, t: float | Sequence[float] | Tensor, fn: str
) -> tuple[Tensor, Tensor, Tensor, bool]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ChainInputError(f"{fn}: a and b must be tensors")
    if a.shape != b.shape or a.dim() < 2:
        raise ChainInputError(
            f"{fn}: a and b must have the same shape (B, *latent_shape), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if not a.is_floating_point() or a.dtype != b.dtype or a.device != b.device:
        raise ChainInputError(
            f"{fn}: a and b must be floating-point tensors of one dtype on one device, got "
            f"{a.dtype} on {a.device} and {b.dtype} on {b.device}"
        )
    scalar = isinstance(t, (int, float)) or (isinstance(t, Tensor) and t.dim() == 0)
    weights = torch.as_tensor(t, dtype=torch.float64, device=a.device).reshape(-1)
    if weights.numel() == 0 or not torch.isfinite(weights).all():
        raise ChainInputError(f"{fn}: t must hold at least one finite number, got {t!r}")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), weights, scalar


def _finish(out: Tensor, a: Tensor, b: Tensor, weights: Tensor, scalar: bool) -> Tensor:
    """(B, T, F) float64 -> (B, T, *latent) or (B, *latent) in a's dtype, endpoints exact."""
    out = out.to(a.dtype)
    flat_a = a.reshape(a.shape[0], 1, -1)
    flat_b = b.reshape(b.shape[0], 1, -1)
    at_start = (weights == 0).view(1, -1, 1)
    at_end = (weights == 1).view(1, -1, 1)
    out = torch.where(at_start, flat_a, torch.where(at_end, flat_b, out))
    out = out.reshape(a.shape[0], weights.numel(), *a.shape[1:])
    return out[:, 0] if scalar else out


def lerp(a: Tensor, b: Tensor, t: float | Sequence[float] | Tensor) -> Tensor:
    """Linear interpolation (1 - t) a + t b between two batches of latents.

    Args:
        a, b: latents of shape (B, *latent_shape).
        t: a fraction, or a sequence of T fractions (0 is a, 1 is b).

    Returns:
        (B, *latent_shape) for a single t, else (B, T, *latent_shape).
    """
    fa, fb, w, scalar = _prepare(a, b, t, "lerp")
    fa, fb = fa.double()[:, None], fb.double()[:, None]
    out = (1 - w)[None, :, None] * fa + w[None, :, None] * fb
    return _finish(out, a, b, w, scalar)


def slerp(a: Tensor, b: Tensor, t: float | Sequence[float] | Tensor) -> Tensor:
    """Spherical interpolation between two batches of latents (see the module docstring).

    Args:
        a, b: latents of shape (B, *latent_shape); each row of a is joined to the same row of b.
        t: a fraction, or a sequence of T fractions (0 is a, 1 is b).

    Returns:
        (B, *latent_shape) for a single t, else (B, T, *latent_shape).
    """
    fa, fb, w, scalar = _prepare(a, b, t, "slerp")
    fa, fb = fa.double(), fb.double()  # (B, F)
    na = fa.norm(dim=1, keepdim=True)  # (B, 1)
    nb = fb.norm(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float64).tiny
    ua = fa / na.clamp_min(tiny)
    ub = fb / nb.clamp_min(tiny)
    # Ω from the chord lengths: accurate at every angle, unlike acos of a dot product.
    omega = 2 * torch.atan2(
        (ua - ub).norm(dim=1, keepdim=True), (ua + ub).norm(dim=1, keepdim=True)
    )
    tw = w[None, :]  # (1, T)

    radius = ((1 - tw) * na + tw * nb)[..., None]  # (B, T, 1): the norm moves linearly
    sin_omega = torch.sin(omega).clamp_min(tiny)  # the clamp only matters where masked out below
    w0 = torch.sin((1 - tw) * omega) / sin_omega  # (B, T)
    w1 = torch.sin(tw * omega) / sin_omega
    out = radius * (w0[..., None] * ua[:, None] + w1[..., None] * ub[:, None])  # (B, T, F)

    linear = (1 - tw)[..., None] * fa[:, None] + tw[..., None] * fb[:, None]
    zero = (na == 0) | (nb == 0)
    parallel = (omega < _ANGLE_EPS) | zero  # (B, 1)
    antiparallel = (math.pi - omega < _ANGLE_EPS) & ~zero

    if fa.shape[1] > 1 and bool(antiparallel.any()):
        axis = ua.abs().argmin(dim=1)  # the axis least aligned with a
        perp = torch.nn.functional.one_hot(axis, fa.shape[1]).to(fa.dtype)
        perp = perp - (perp * ua).sum(dim=1, keepdim=True) * ua
        perp = perp / perp.norm(dim=1, keepdim=True)
        angle = math.pi * tw[..., None]  # (1, T, 1)
        half_circle = radius * (torch.cos(angle) * ua[:, None] + torch.sin(angle) * perp[:, None])
        out = torch.where(antiparallel[..., None], half_circle, out)
    elif fa.shape[1] == 1:
        parallel = parallel | antiparallel
    out = torch.where(parallel[..., None], linear, out)
    return _finish(out, a, b, w, scalar)
