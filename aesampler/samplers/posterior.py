"""``posterior_mixture``: a smoothed mixture over the training images' posteriors.

The encoder's learned distribution is P̂(Z) = (1/N) Σᵢ Q(z|xᵢ) over the training images. For a
Gaussian encoder each Q(z|xᵢ) is N(μᵢ, diag σᵢ²), so this sampler draws from

    p_s(z) = (1/N) Σᵢ N(z; μᵢ, s² diag σᵢ²),

which is P̂(Z) itself at s = 1 (Chadebec and Allassonnière, "A geometric perspective on
variational autoencoders", NeurIPS 2022, sample from a distribution built on the training
posteriors and report MNIST FID 8.5 against 13.1 for a Gaussian mixture). s trades novelty for
fidelity: small s reproduces the training images' own latents, large s blurs them together. It is
chosen on a geometric grid by the log-likelihood of validation encodings, which the components
never include, or fixed by the user.

σᵢ comes from :meth:`SamplerContext.posteriors`: the encoder's std (VAE), or the spread of the
encodings of corrupted copies (a deterministic encoder trained with a corruption, e.g. a DAAE).
Without it (no posteriors in the context, or a deterministic encoder without a corruption) every
component gets one shared diagonal: each coordinate's spread over the training encodings times
Scott's kernel-density factor N^(-1/(D+4)).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from ..checks import check_int, check_number, check_split
from .base import Sampler, SamplerError, finite_problems, hold_out, positive_problems

NAME = "posterior_mixture"
POSTERIOR = "posterior"  # the form: each component its own std
SHARED = "shared_diagonal"  # the form: one diagonal for all components
_FORMS = (POSTERIOR, SHARED)
_BLOCK = 256  # validation rows per block of the log-likelihood
_RELATIVE_FLOOR = 1e-6  # of the largest std: keeps every component's density finite


def scale_grid(min_scale: float, max_scale: float, points: int) -> list[float]:
    """``points`` scales spaced geometrically from ``min_scale`` to ``max_scale``, and 1.

    1 (the posteriors as they are, P̂(Z) itself) is added when it lies in the range.
    """
    if points == 1:
        values = {min_scale}
    else:
        ratio = (max_scale / min_scale) ** (1 / (points - 1))
        values = {min_scale * ratio**k for k in range(points - 1)} | {max_scale}
    if min_scale <= 1.0 <= max_scale:
        values.add(1.0)
    return sorted(values)


def mixture_log_likelihood(
    z: Tensor, means: Tensor, stds: Tensor, scales: list[float], *, block: int = _BLOCK
) -> Tensor:
    """Mean log-density of the rows of ``z`` (M, D) under (1/N) Σᵢ N(μᵢ, s² diag σᵢ²), per s.

    ``means`` is (N, D), ``stds`` (N, D) or (1, D) (one diagonal shared by every component).
    Returns float64 (len(scales),), nats per row. The squared Mahalanobis distances
    Σ_d (z_d − μ_id)² / σ_id² do not depend on s, so they are computed once per block of ``block``
    rows, in float64, and every s reuses them: memory is O(block × N), not O(M × N).
    """
    x = z.flatten(1).double()
    mu = means.flatten(1).double()
    sd = stds.flatten(1).double().expand_as(mu)
    n, d = mu.shape
    inv_var = sd.pow(-2)  # (N, D)
    weighted = mu * inv_var  # (N, D)
    offset = (mu * weighted).sum(1)  # (N,): Σ μ² / σ²
    log_det = sd.log().sum(1)  # (N,): Σ log σ
    s = torch.tensor(scales, dtype=torch.float64)
    total = torch.zeros(len(scales), dtype=torch.float64)
    for start in range(0, len(x), block):
        v = x[start : start + block]
        # Σ_d (v − μ)²/σ² expanded into matrix products; rounding can make it slightly negative.
        q = ((v * v) @ inv_var.T - 2 * (v @ weighted.T) + offset).clamp_min(0)  # (B, N)
        for k, scale in enumerate(scales):
            total[k] += torch.logsumexp(-0.5 * q / scale**2 - log_det, dim=1).sum()
    constant = -0.5 * d * math.log(2 * math.pi) - math.log(n)
    return total / len(x) - d * s.log() + constant


class PosteriorMixture(Sampler):
    """A smoothed mixture over the training posteriors: p_s(z) = (1/N) Σᵢ N(z; μᵢ, s² diag σᵢ²).

    Each draw picks a training image i uniformly, then z = μᵢ + s σᵢ ⊙ ε with ε ~ N(0, I), all
    from the generator. The components are the ``split`` images' posteriors; the validation
    encodings that choose s are those of ``valid_split`` (or, when there is none or it is
    ``split``, a tenth of ``split`` held out and left out of the components).

    Args:
        scale: s, fixed; None chooses it on the validation encodings from the grid.
        split: the split whose images' posteriors are the components.
        valid_split: the split whose encodings choose s.
        min_scale, max_scale, grid: the candidates: ``grid`` values spaced geometrically from
            ``min_scale`` to ``max_scale``, and 1 when it is between them.
    """

    fits = True
    describes = "draws from a smoothed mixture of the training images' posteriors"

    def __init__(
        self,
        scale: float | None = None,
        split: str = "train",
        valid_split: str = "valid",
        min_scale: float = 0.1,
        max_scale: float = 3.0,
        grid: int = 16,
    ):
        self.scale = None if scale is None else check_number("scale", scale, open_low=True)
        self.split = check_split("split", split)
        self.valid_split = check_split("valid_split", valid_split)
        self.min_scale = check_number("min_scale", min_scale, open_low=True)
        self.max_scale = check_number("max_scale", max_scale, open_low=True)
        if self.max_scale < self.min_scale:
            raise ValueError(
                f"max_scale must be at least min_scale ({self.min_scale:g}), got {max_scale!r}"
            )
        self.grid = check_int("grid", grid)
        self.means: Tensor | None = None  # (N, D)
        self.stds: Tensor | None = None  # (N, D), or (1, D) shared by every component
        self.chosen_scale: float | None = None
        self.form: str | None = None
        self.scales: list[float] = []  # the candidates (the fixed scale alone when given)
        self.valid_loglik: list[float] = []  # per candidate, nats per validation encoding
        self.stats: dict = {}

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, context):
        super().fit(context)
        means, stds = self._posteriors(context)
        valid = None
        if self.valid_split != self.split:
            with contextlib.suppress(SamplerError):  # no such split: hold some out below
                valid = context.encodings(self.valid_split).flatten(1)
        if valid is None and self.scale is None:
            encodings = context.encodings(self.split).flatten(1)
            if len(encodings) != len(means):
                raise SamplerError(
                    f"{NAME}: the {self.split!r} split has {len(encodings)} encodings but "
                    f"{len(means)} posteriors"
                )
            if len(means) < 3:
                raise SamplerError(
                    f"{NAME}: the {self.split!r} split has too few images ({len(means)}) to hold "
                    "some out for choosing the scale"
                )
            kept, held = hold_out(len(means), context.seed)
            means, valid = means[kept], encodings[held]
            stds = None if stds is None else stds[kept]
            context.log(
                f"{NAME}: no {self.valid_split!r} encodings to choose the scale on: holding out "
                f"{len(held)} of the {self.split!r} split (not among the components)"
            )
        if stds is None:
            stds, factor = self._shared_diagonal(means)
            self.form = SHARED
        else:
            floor = _RELATIVE_FLOOR * max(float(stds.max()), 1e-30)
            stds, factor = stds.clamp_min(floor), None
            self.form = POSTERIOR
        self.means, self.stds = means.float().contiguous(), stds.float().contiguous()
        self.scales = [self.scale] if self.scale is not None else self._grid()
        if valid is not None:
            loglik = mixture_log_likelihood(valid, self.means, self.stds, self.scales)
            self.valid_loglik = [float(v) for v in loglik]
        else:
            self.valid_loglik = [math.nan]
        if self.scale is not None:
            self.chosen_scale = self.scale
        else:
            self.chosen_scale = self.scales[int(torch.tensor(self.valid_loglik).argmax())]
        self._set_stats(n_valid=0 if valid is None else len(valid), factor=factor)
        self._report(context.log)

    def _posteriors(self, context) -> tuple[Tensor, Tensor | None]:
        try:
            means, stds = context.posteriors(self.split)
        except SamplerError:
            context.log(
                f"{NAME}: the context gives no posteriors: the components are the "
                f"{self.split!r} encodings with one shared diagonal ({SHARED})"
            )
            return context.encodings(self.split).flatten(1), None
        if stds is not None and not bool((stds > 0).any()):
            stds = None  # all zeros: the encoder gives no spread
        if stds is None:
            context.log(
                f"{NAME}: the encoder gives no posterior spread (a deterministic encoder without "
                f"a corruption): one shared diagonal for every component ({SHARED})"
            )
            return means.flatten(1), None
        context.log(f"{NAME}: each component has its image's posterior std ({POSTERIOR})")
        return means.flatten(1), stds.flatten(1)

    @staticmethod
    def _shared_diagonal(means: Tensor) -> tuple[Tensor, float]:
        n, d = means.shape
        if n < 2:
            raise SamplerError(f"{NAME}: one shared diagonal needs at least 2 encodings, got {n}")
        spread = means.double().std(0, correction=1)
        spread = spread.clamp_min(_RELATIVE_FLOOR * max(float(spread.max()), 1e-30))
        factor = n ** (-1 / (d + 4))  # Scott's rule for a product kernel in d dimensions
        return (factor * spread).unsqueeze(0), factor

    def _grid(self) -> list[float]:
        return scale_grid(self.min_scale, self.max_scale, self.grid)

    def _set_stats(self, *, n_valid: int, factor: float | None) -> None:
        stats = {
            "form": self.form,
            "scale": self.chosen_scale,
            "scale_source": "fixed" if self.scale is not None else "validation",
            "components": len(self.means),
            "std_mean": float(self.stds.double().mean()),
            "valid_encodings": n_valid,
        }
        if factor is not None:
            stats["shared_factor"] = factor
        measured = {f"{s:.6g}": v for s, v in zip(self.scales, self.valid_loglik) if v == v}
        if measured:
            stats["valid_loglik"] = self.valid_loglik[self.scales.index(self.chosen_scale)]
            stats["valid_loglik_by_scale"] = measured
        self.stats = stats

    def _report(self, log) -> None:
        measured = self.stats.get("valid_loglik_by_scale")
        if self.scale is not None:
            at = (
                f" (validation log-likelihood {self.stats['valid_loglik']:.4g})" if measured else ""
            )
            log(f"{NAME}: s = {self.scale:g}, fixed{at}")
            return
        curve = ", ".join(f"{s}: {v:.4g}" for s, v in measured.items())
        log(
            f"{NAME}: s = {self.chosen_scale:.4g} chosen on {self.stats['valid_encodings']} "
            f"validation encodings (log-likelihood per encoding by s: {curve})"
        )
        if self.chosen_scale in (self.scales[0], self.scales[-1]) and len(self.scales) > 1:
            log(
                f"{NAME}: the best s is at the edge of the grid [{self.scales[0]:g}, "
                f"{self.scales[-1]:g}]; the optimum may lie outside (set min_scale, max_scale)"
            )

    # -- drawing ---------------------------------------------------------------------------------

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.means is None:
            raise SamplerError("PosteriorMixture is not fitted: call fit(context) first")
        which = torch.randint(len(self.means), (n,), generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator)
        std = self.stds if len(self.stds) == 1 else self.stds[which]
        z = self.means[which] + self.chosen_scale * std * eps
        return z.reshape(n, *self._shape())

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self):
        if self.means is None:
            return {}
        return {
            "means": self.means,
            "stds": self.stds,
            "scale": torch.tensor(self.chosen_scale, dtype=torch.float64),
            "scales": torch.tensor(self.scales, dtype=torch.float64),
            "valid_loglik": torch.tensor(self.valid_loglik, dtype=torch.float64),
            "form": torch.tensor(_FORMS.index(self.form), dtype=torch.int64),
            "valid_encodings": torch.tensor(self.stats.get("valid_encodings", 0)),
            "latent_shape": torch.tensor(self._shape(), dtype=torch.int64),
        }

    def check_state(self, state):
        # Not super(): without validation encodings the log-likelihood is NaN by design.
        problems = finite_problems(state, skip=["valid_loglik"])
        problems += positive_problems(state, ["stds", "scale", "scales"])
        form = state.get("form")
        if isinstance(form, Tensor) and not (form.numel() == 1 and 0 <= int(form) < len(_FORMS)):
            problems.append(f"form is not one of 0 ({POSTERIOR}) and 1 ({SHARED})")
        return problems

    def load_state_dict(self, state):
        try:
            means, stds, scale = state["means"], state["stds"], float(state["scale"])
            scales = [float(s) for s in state["scales"]]
            loglik = [float(v) for v in state["valid_loglik"]]
            form = _FORMS[int(state["form"])]
        except KeyError as error:
            raise SamplerError(f"the saved state of {NAME!r} lacks {error}") from None
        except (IndexError, ValueError, RuntimeError) as error:
            raise SamplerError(f"the saved state of {NAME!r} cannot be read ({error})") from None
        if means.dim() != 2 or stds.dim() != 2 or stds.shape[1] != means.shape[1]:
            raise SamplerError(
                f"the saved state of {NAME!r} holds means {tuple(means.shape)} and stds "
                f"{tuple(stds.shape)}, not (N, D) and (N, D) or (1, D)"
            )
        if len(stds) not in (1, len(means)) or len(loglik) != len(scales) or scale not in scales:
            raise SamplerError(
                f"the saved state of {NAME!r} does not hold together ({len(means)} means, "
                f"{len(stds)} stds, {len(scales)} scales, {len(loglik)} log-likelihoods)"
            )
        if self.scale is not None and scale != self.scale:
            raise SamplerError(
                f"the saved state of {NAME!r} has s = {scale:g}, not the {self.scale:g} asked for"
            )
        shape = state.get("latent_shape")
        latent_shape = tuple(int(s) for s in shape) if shape is not None else (means.shape[1],)
        if math.prod(latent_shape) != means.shape[1]:
            raise SamplerError(
                f"the saved state of {NAME!r} holds {means.shape[1]}-dimensional means, not "
                f"latents of shape {latent_shape}"
            )
        self.means, self.stds = means.float(), stds.float()
        self.chosen_scale, self.scales, self.valid_loglik, self.form = scale, scales, loglik, form
        self.latent_shape = latent_shape
        n_valid = int(state["valid_encodings"]) if "valid_encodings" in state else 0
        factor = None
        if form == SHARED:  # as _shared_diagonal set it
            factor = len(means) ** (-1 / (means.shape[1] + 4))
        self._set_stats(n_valid=n_valid, factor=factor)
