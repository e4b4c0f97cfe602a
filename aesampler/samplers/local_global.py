"""``local_global``: global (i-SIR) and local (MALA) MCMC on the ratio-corrected mixture.

The target is the mixture q(z) fitted to the training encodings (``ex_post_gmm``), corrected by a
classifier's density ratio as ``ratio_corrected`` does:

    π(z) ∝ q(z) · exp(β · logit(z)),

where logit(z) is the calibrated logit of a classifier of training encodings against mixture
draws, so that exp(logit(z)) estimates p̂(z)/q(z), and β (``power``) in [0, 1] tempers the
correction. Each of N chains (one per draw) starts at a mixture draw and, for ``burn_in`` +
``iterations`` iterations, makes

* a global move, iterated sampling-importance-resampling (i-SIR): the current state and
  K − 1 fresh mixture draws are weighted by π/q = exp(β · logit) and one of the K is resampled;
* ``mala_steps`` local moves, Metropolis-adjusted Langevin steps on log π (gradients by autograd),
  in the whitened coordinates of the encodings (preconditioned by their covariance), with a step
  size adapted during the burn-in towards ``target_acceptance`` and fixed afterwards.

Both moves leave π invariant, so after the burn-in the chains are a valid MCMC. Reference:
Samsonov, Lagutin, Gabrié, Durmus, Naumov and Moulines, "Local-global MCMC kernels: the best of
both worlds", NeurIPS 2022.

The classifier, its calibration and the mixture are fitted by :class:`RatioCorrected` (this class
is one, with the mixture as its proposal); only the chains are new here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_int, check_number
from .base import SamplerError, orthonormal_problems, positive_problems
from .gmm import check_covariance, mixture_log_prob, sample_mixture
from .ratio import EVAL_BATCH, RatioCorrected

#: The statistics of the last ``sample`` call (the others are the fit's).
_SAMPLE_STATS = (
    "mala_acceptance_rate",
    "mala_acceptance_rate_burn_in",
    "isir_move_rate",
    "isir_move_rate_burn_in",
    "step_size",
    "distinct_fraction",
)


class LocalGlobal(RatioCorrected):
    """Local-global MCMC (i-SIR + MALA) on a Gaussian mixture corrected by a classifier's ratio.

    Args:
        components, covariance, reg_covar, max_iter: the mixture q, as for ``ex_post_gmm``.
        power: β, the exponent on the ratio: 0 samples the mixture, 1 the full correction.
        proposals: K, the states i-SIR resamples from (the current one and K − 1 fresh mixture
            draws); 1 turns the global move off.
        mala_steps: L, MALA steps after each global move; 0 turns the local moves off.
        iterations: global-local iterations after the burn-in.
        burn_in: iterations before, during which the MALA step size is adapted.
        step_size: the initial MALA step size h (a variance, in whitened coordinates when
            ``precondition``).
        target_acceptance: the MALA acceptance rate the burn-in adapts h towards (0.574 is
            optimal for MALA in high dimensions, Roberts and Rosenthal, 1998).
        precondition: run MALA in the whitened principal coordinates of the encodings (its
            proposal covariance is then h times their covariance); false: h times the identity.
        calibrate, pca_dims, hidden, layers, dropout, weight_decay, lr, epochs, batch_size,
            patience, proposal_draws: the classifier, as for ``ratio_corrected``.
        split, valid_split: the encodings fitted, and those for early stopping and calibration.
    """

    describes = "local-global MCMC (i-SIR + MALA) on a mixture corrected by a classifier's ratio"
    registered_name = "local_global"

    def __init__(
        self,
        components: int = 10,
        covariance: str = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 200,
        power: float = 1.0,
        proposals: int = 10,
        mala_steps: int = 3,
        iterations: int = 10,
        burn_in: int = 10,
        step_size: float = 0.1,
        target_acceptance: float = 0.574,
        precondition: bool = True,
        calibrate: bool = True,
        pca_dims: int | None = 32,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        weight_decay: float = 0.0,
        lr: float = 1e-3,
        epochs: int = 200,
        batch_size: int = 256,
        patience: int = 20,
        proposal_draws: int = 4,
        split: str = "train",
        valid_split: str = "valid",
    ):
        self.components = check_int("components", components)
        self.covariance = check_covariance(covariance)
        self.proposals = check_int("proposals", proposals)
        self.mala_steps = check_int("mala_steps", mala_steps, low=0)
        if self.proposals == 1 and self.mala_steps == 0:
            raise ValueError(
                "proposals=1 and mala_steps=0 leave the chains where they start: allow i-SIR "
                "(proposals >= 2) or MALA (mala_steps >= 1)"
            )
        self.iterations = check_int("iterations", iterations)
        self.burn_in = check_int("burn_in", burn_in, low=0)
        self.step_size = check_number("step_size", step_size, open_low=True)
        self.target_acceptance = check_number(
            "target_acceptance", target_acceptance, 0.0, 1.0, open_low=True
        )
        if self.target_acceptance == 1.0:
            raise ValueError("target_acceptance must be a number in (0, 1), got 1.0")
        self.precondition = bool(precondition)
        super().__init__(
            proposal={
                "name": "ex_post_gmm",
                "components": components,
                "covariance": covariance,
                "reg_covar": reg_covar,
                "max_iter": max_iter,
                "split": split,
            },
            method="sir",  # unused: sample() runs the chains below
            power=power,
            calibrate=calibrate,
            pca_dims=pca_dims,
            hidden=hidden,
            layers=layers,
            dropout=dropout,
            weight_decay=weight_decay,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            patience=patience,
            proposal_draws=proposal_draws,
            oversample=proposals,
            split=split,
            valid_split=valid_split,
        )
        self.axes: Tensor | None = None  # (D, D): the encodings' principal axes, as columns
        self.scales: Tensor | None = None  # (D,): their standard deviations along them

    # -- fitted state ---------------------------------------------------------------------

    def _set_features(self, mean, axes, scales, k):
        super()._set_features(mean, axes, scales, k)
        self.axes, self.scales = axes, scales

    def state_dict(self):
        state = super().state_dict()
        if state:
            state.update(mala_axes=self.axes, mala_scales=self.scales)
        return state

    def check_state(self, state):
        problems = super().check_state(state)
        problems += positive_problems(state, ["mala_scales"])
        return problems + orthonormal_problems("mala_axes", state.get("mala_axes"))

    def load_state_dict(self, state):
        try:
            axes, scales = state["mala_axes"].double(), state["mala_scales"].double()
        except KeyError as error:
            raise SamplerError(f"the saved state of 'local_global' lacks {error}") from None
        super().load_state_dict(state)
        d = self.mean.shape[0]
        if axes.shape != (d, d) or scales.shape != (d,):
            raise SamplerError(
                f"the saved state of 'local_global' holds principal axes {tuple(axes.shape)} and "
                f"scales {tuple(scales.shape)} for latents of {d} dimensions"
            )
        self.axes, self.scales = axes, scales

    # -- the target -----------------------------------------------------------------------

    def _log_ratio_grad(self, z: Tensor) -> Tensor:
        """The calibrated log-ratio, differentiable in z (float64, (N,))."""
        return self.scale * self.raw_log_ratio(z).double()

    def _target(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log π(z) up to a constant, β·logit(z) and ∇ log π(z) for float64 latents (N, D)."""
        weights, means, tril = self.proposal.weights, self.proposal.means, self.proposal.scale_tril
        log_pi, log_w, grads = [], [], []
        with torch.inference_mode(False), torch.enable_grad():
            for chunk in z.split(EVAL_BATCH):
                x = chunk.detach().clone().requires_grad_(True)
                log_q = mixture_log_prob(weights, means, tril, x)
                if self.power > 0:
                    weight = self.power * self._log_ratio_grad(x)
                else:  # the classifier is not needed: the chain targets the mixture
                    weight = torch.zeros_like(log_q)
                total = log_q + weight
                (grad,) = torch.autograd.grad(total.sum(), x)
                log_pi.append(total.detach())
                log_w.append(weight.detach())
                grads.append(grad)
        return torch.cat(log_pi), torch.cat(log_w), torch.cat(grads)

    def _global_weight(self, z: Tensor) -> Tensor:
        """β·logit(z), the i-SIR log-weight log π(z)/q(z) up to a constant (float64, (N,))."""
        if self.power == 0:
            return torch.zeros(len(z), dtype=torch.float64)
        return self.power * self.log_ratio(z)

    # -- the chains -----------------------------------------------------------------------

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.proposal is None or self.axes is None:
            raise SamplerError("LocalGlobal is not fitted: call fit(context) first")
        shape = self._shape()
        for key in _SAMPLE_STATS:
            self.stats.pop(key, None)
        if n == 0:
            return torch.zeros(0, *shape)
        weights, means, tril = self.proposal.weights, self.proposal.means, self.proposal.scale_tril
        d = means.shape[1]
        if self.precondition:  # z = mean + C u with C = axes · diag(scales): u is whitened
            axes, scales = self.axes, self.scales
        else:
            axes = torch.eye(d, dtype=torch.float64)
            scales = torch.ones(d, dtype=torch.float64)

        z = sample_mixture(weights, means, tril, n, generator)
        log_pi, log_w, grad = self._target(z)
        log_h = math.log(self.step_size)
        k = self.proposals
        moves = {True: [0, 0], False: [0, 0]}  # burn-in?: [moved, tried]
        accepts = {True: [0, 0], False: [0, 0]}  # burn-in?: [accepted, tried]
        adapted = 0
        for iteration in range(self.burn_in + self.iterations):
            burning = iteration < self.burn_in
            if k > 1:  # global: i-SIR over the current state and K - 1 mixture draws
                fresh = sample_mixture(weights, means, tril, n * (k - 1), generator)
                fresh_w = self._global_weight(fresh).reshape(n, k - 1)
                logits = torch.cat([log_w[:, None], fresh_w], dim=1)
                logits = torch.nan_to_num(logits, nan=-math.inf)
                pick = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator)[:, 0]
                moved = pick > 0
                if moved.any():  # only the chains that moved need the target again
                    z, log_pi, log_w, grad = z.clone(), log_pi.clone(), log_w.clone(), grad.clone()
                    z[moved] = fresh.reshape(n, k - 1, d)[moved, pick[moved] - 1]
                    log_pi[moved], log_w[moved], grad[moved] = self._target(z[moved])
                moves[burning][0] += int(moved.sum())
                moves[burning][1] += n
            for _ in range(self.mala_steps):  # local: MALA in whitened coordinates
                h = math.exp(log_h)
                grad_u = (grad @ axes) * scales
                noise = torch.randn(n, d, generator=generator, dtype=torch.float64)
                step_u = 0.5 * h * grad_u + math.sqrt(h) * noise
                candidate = z + (step_u * scales) @ axes.T
                cand_pi, cand_w, cand_grad = self._target(candidate)
                cand_grad_u = (cand_grad @ axes) * scales
                # log q(z | z') - log q(z' | z) for the Gaussian proposals in u
                back = -step_u - 0.5 * h * cand_grad_u
                log_q_ratio = (noise.square().sum(1) * h - back.square().sum(1)) / (2 * h)
                log_alpha = torch.nan_to_num(cand_pi - log_pi + log_q_ratio, nan=-math.inf)
                u = torch.rand(n, generator=generator, dtype=torch.float64)
                accept = u.log() < log_alpha
                z = torch.where(accept[:, None], candidate, z)
                log_pi = torch.where(accept, cand_pi, log_pi)
                log_w = torch.where(accept, cand_w, log_w)
                grad = torch.where(accept[:, None], cand_grad, grad)
                accepts[burning][0] += int(accept.sum())
                accepts[burning][1] += n
                if burning:  # Robbins-Monro on log h towards the target acceptance
                    mean_alpha = float(log_alpha.clamp(max=0).exp().mean())
                    adapted += 1
                    log_h += (mean_alpha - self.target_acceptance) / adapted**0.6
        if self.mala_steps:
            self.stats["mala_acceptance_rate"] = accepts[False][0] / accepts[False][1]
            if self.burn_in:
                self.stats["mala_acceptance_rate_burn_in"] = accepts[True][0] / accepts[True][1]
            self.stats["step_size"] = math.exp(log_h)
        if k > 1:
            self.stats["isir_move_rate"] = moves[False][0] / moves[False][1]
            if self.burn_in:
                self.stats["isir_move_rate_burn_in"] = moves[True][0] / moves[True][1]
        self.stats["distinct_fraction"] = len(torch.unique(z, dim=0)) / n
        return z.float().reshape(n, *shape)
