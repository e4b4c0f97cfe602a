"""Density-ratio correction of a proposal sampler: ``ratio_corrected`` and ``aae_discriminator``.

Given a proposal q(z) that we can sample and an estimate of the log-ratio log p̂(z)/q(z) to the
encoder's latent distribution p̂, draws from q are corrected towards p̂ by one of

* ``sir``: sampling-importance-resampling: ``oversample`` proposals per draw, resampled with
  probabilities proportional to the ratio;
* ``imh``: independence Metropolis-Hastings: one chain per draw, started at a proposal and run
  for ``steps`` proposals, each accepted with probability min(1, r(z')/r(z));
* ``rejection``: each proposal kept with probability min(1, r(z)/M), M a high quantile of r over
  proposals (as discriminator rejection sampling does): exact below the bound, clipped above it.

The ratio comes from a classifier (``ratio_corrected``): trained to tell the training encodings
(label 1) from proposal draws (label 0) with balanced classes, its logit estimates
log p̂(z)/q(z). In high dimensions such a classifier separates the two sets almost perfectly and
its ratios are far too extreme, so by default it sees only the leading principal coordinates of
the encodings, is regularised (dropout, weight decay, early stopping on the validation
encodings), its logit is calibrated on the validation encodings (temperature scaling: the
scale a that minimises the held-out cross-entropy of a·logit + b), and the correction is
tempered: the weights are r(z)^power, power in [0, 1] interpolating between the proposal (0) and
the full correction (1). ``aae_discriminator`` takes the ratio from an AAE's trained adversary
instead, with the prior N(0, I) as proposal.

What each draw cost is kept in ``stats`` (effective sample size for ``sir``, acceptance rate for
``imh`` and ``rejection``, distinct draws).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import check_int, check_number, check_split
from ..errors import AesamplerError
from ..nn import Adversary
from ..plugins import get_registry
from ..registry import Registry
from .base import (
    Sampler,
    SamplerContext,
    SamplerError,
    principal_axes,
    train_early_stopped,
    training_and_validation,
)
from .simple import PriorSampler

METHODS = ("sir", "imh", "rejection")
EVAL_BATCH = 4096
#: The statistics of the last ``sample`` call (the others are the fit's).
_SAMPLE_STATS = ("ess", "ess_fraction", "acceptance_rate", "proposals", "distinct_fraction")


class _Classifier(nn.Module):
    """An MLP from (whitened, possibly projected) latents to one logit."""

    def __init__(self, features: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        width = features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def _fit_temperature(logit_p: Tensor, logit_q: Tensor) -> tuple[float, float]:
    """Scale a >= 0 and shift b minimising the cross-entropy of a·logit + b (temperature scaling).

    ``logit_p`` are the logits of held-out target draws (label 1), ``logit_q`` of fresh
    proposal draws (label 0); the classes are weighted equally whatever their counts.
    """
    a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # a = softplus-free: exp(log_a)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lp, lq = logit_p.double(), logit_q.double()
    optimiser = torch.optim.LBFGS([a, b], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def loss_fn():
        optimiser.zero_grad()
        scale = a.exp()
        loss = 0.5 * (F.softplus(-(scale * lp + b)).mean() + F.softplus(scale * lq + b).mean())
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    scale, shift = float(a.detach().exp()), float(b.detach())
    if not (math.isfinite(scale) and math.isfinite(shift)):
        return 1.0, 0.0
    return scale, shift


def _balanced_ce(logit_p: Tensor, logit_q: Tensor) -> float:
    """Cross-entropy with both classes weighted equally (log 2 = chance)."""
    return float(0.5 * (F.softplus(-logit_p).mean() + F.softplus(logit_q).mean()))


class DensityRatioSampler(Sampler):
    """Corrects draws of a proposal with an estimated log-ratio log p̂(z)/q(z) (see the module).

    Subclasses set ``proposal`` (a fitted Sampler) in ``fit`` and implement
    :meth:`raw_log_ratio`, then call :meth:`finish_fit` with held-out target draws; the
    calibrated, tempered log-weight of a draw is ``power * scale * raw_log_ratio(z)``.

    Args: see :class:`RatioCorrected`.
    """

    fits = True

    def __init__(
        self,
        method: str,
        power: float,
        calibrate: bool,
        oversample: int,
        steps: int,
        quantile: float,
        max_proposals: int,
        split: str,
        valid_split: str,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.power = check_number("power", power, 0.0, 1.0)
        self.calibrate = bool(calibrate)
        self.oversample = check_int("oversample", oversample)
        self.steps = check_int("steps", steps)
        self.quantile = check_number("quantile", quantile, 0.0, 1.0, open_low=True)
        self.max_proposals = check_int("max_proposals", max_proposals)
        self.split = check_split("split", split)
        self.valid_split = check_split("valid_split", valid_split)
        self.proposal: Sampler | None = None
        self.scale: float = 1.0  # the calibration's temperature: log-ratio = scale * raw
        self.log_bound: float | None = None  # rejection's log M, at power 1 (scaled by power)
        #: Diagnostics: the ratio's fit (at fit) and the cost of the last draws (at sample).
        self.stats: dict[str, float] = {}

    def _new_proposal(self, registry: Registry | None = None) -> Sampler:
        """A new, unfitted proposal (here the prior N(0, I); ``ratio_corrected`` builds its own
        with ``registry``)."""
        return PriorSampler()

    # -- to implement ---------------------------------------------------------------------

    def raw_log_ratio(self, z: Tensor) -> Tensor:
        """Uncalibrated estimate of log p̂(z)/q(z) (up to a constant) for latents (N, D)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def log_ratio(self, z: Tensor) -> Tensor:
        """The calibrated log-ratio log p̂(z)/q(z), up to a constant, for latents (N, ...)."""
        if self.proposal is None:
            raise SamplerError(f"{type(self).__name__} is not fitted: call fit(context) first")
        z = z.flatten(1).float()
        with torch.no_grad():
            out = [self.raw_log_ratio(z[i : i + EVAL_BATCH]) for i in range(0, len(z), EVAL_BATCH)]
        return self.scale * torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)

    def _log_weight(self, z: Tensor) -> Tensor:
        return self.power * self.log_ratio(z)

    def finish_fit(self, context: SamplerContext, valid: Tensor) -> None:
        """Calibrate on held-out encodings vs fresh proposals and set the rejection bound."""
        generator = torch.Generator().manual_seed(context.seed + 2)
        fresh = self.proposal.sample(max(len(valid), 1000), generator).flatten(1)
        self.scale = 1.0
        raw_p, raw_q = self.log_ratio(valid).float(), self.log_ratio(fresh).float()
        self.stats["valid_cross_entropy"] = _balanced_ce(raw_p, raw_q)
        if self.calibrate:
            self.scale, _ = _fit_temperature(raw_p, raw_q)
            self.stats["calibration_scale"] = self.scale
            self.stats["valid_cross_entropy_calibrated"] = _balanced_ce(
                self.scale * raw_p, self.scale * raw_q
            )
        log_ratio = self.log_ratio(fresh)
        self.log_bound = float(torch.quantile(log_ratio, self.quantile))
        # The ESS per proposal that SIR would reach (a fit-time diagnostic for every method).
        w = torch.softmax(self.power * log_ratio, 0)
        self.stats["ess_per_proposal"] = float(1.0 / w.square().sum()) / len(w)
        context.log(
            f"{self._name()}: held-out cross-entropy {self.stats['valid_cross_entropy']:.4f} "
            f"(chance {math.log(2):.4f}), calibration scale {self.scale:.3g}, "
            f"ESS per proposal {self.stats['ess_per_proposal']:.3f} at power {self.power:g}"
        )

    def _name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.proposal is None:
            raise SamplerError(f"{type(self).__name__} is not fitted: call fit(context) first")
        shape = self._shape()
        for key in _SAMPLE_STATS:
            self.stats.pop(key, None)
        if n == 0:
            return torch.zeros(0, *shape)
        if self.method == "sir":
            z = self._sir(n, generator)
        elif self.method == "imh":
            z = self._imh(n, generator)
        else:
            z = self._rejection(n, generator)
        self.stats["distinct_fraction"] = len(torch.unique(z, dim=0)) / n
        return z.float().reshape(n, *shape)

    def _sir(self, n: int, generator) -> Tensor:
        pool = self.proposal.sample(n * self.oversample, generator).flatten(1)
        logw = self._log_weight(pool)
        probs = torch.softmax(logw, 0)
        pick = torch.multinomial(probs, n, replacement=True, generator=generator)
        ess = float(1.0 / probs.square().sum())
        self.stats.update(ess=ess, ess_fraction=ess / len(pool), proposals=len(pool))
        return pool[pick]

    def _imh(self, n: int, generator) -> Tensor:
        current = self.proposal.sample(n, generator).flatten(1)
        current_w = self._log_weight(current)
        accepted = 0
        for _ in range(self.steps):
            candidate = self.proposal.sample(n, generator).flatten(1)
            candidate_w = self._log_weight(candidate)
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            accept = u.log() < candidate_w - current_w
            current = torch.where(accept[:, None], candidate, current)
            current_w = torch.where(accept, candidate_w, current_w)
            accepted += int(accept.sum())
        self.stats.update(
            acceptance_rate=accepted / (n * self.steps), proposals=n * (1 + self.steps)
        )
        return current

    def _rejection(self, n: int, generator) -> Tensor:
        kept: list[Tensor] = []
        count = drawn = 0
        batch = max(2 * n, 256)
        while count < n:
            if drawn >= self.max_proposals:
                raise SamplerError(
                    f"{self._name()}: rejection kept {count} of {drawn} proposals, short of the "
                    f"{n} asked for (max_proposals={self.max_proposals}); lower the quantile or "
                    "the power, or use method 'sir'"
                )
            batch = min(batch, self.max_proposals - drawn)  # never more than the budget
            z = self.proposal.sample(batch, generator).flatten(1)
            u = torch.rand(batch, generator=generator, dtype=torch.float64)
            keep = u.log() < self._log_weight(z) - self.power * self.log_bound
            kept.append(z[keep])
            count += int(keep.sum())
            drawn += batch
        z = torch.cat(kept)[:n]
        self.stats.update(acceptance_rate=count / drawn, proposals=drawn)
        return z

    # -- state helpers --------------------------------------------------------------------

    def _common_state(self) -> dict[str, Tensor]:
        state = {
            "latent_shape": torch.tensor(self._shape(), dtype=torch.int64),
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "log_bound": torch.tensor(self.log_bound, dtype=torch.float64),
        }
        state.update({f"proposal.{k}": v for k, v in self.proposal.state_dict().items()})
        return state

    def check_state(self, state):
        problems = super().check_state(state)
        scale = state.get("scale")
        if isinstance(scale, Tensor) and not bool((scale.double() >= 0).all()):
            problems.append("scale (the calibration's temperature) is negative")
        proposal_state = {k[9:]: v for k, v in state.items() if k.startswith("proposal.")}
        if proposal_state:  # the proposal's own invariants, on its part of the state
            proposal = self.proposal or self._new_proposal()
            named = [f"proposal.{p}" for p in proposal.check_state(proposal_state)]
            problems += [p for p in named if p not in problems]  # its finite check is ours too
        return problems

    def _load_common(self, state: Mapping[str, Tensor], proposal: Sampler) -> None:
        try:
            shape = tuple(int(s) for s in state["latent_shape"])
            scale, bound = float(state["scale"]), float(state["log_bound"])
        except KeyError as error:
            raise SamplerError(f"the saved state of {self._name()!r} lacks {error}") from None
        proposal_state = {k[9:]: v for k, v in state.items() if k.startswith("proposal.")}
        if proposal_state:
            proposal.load_state_dict(proposal_state)
        proposal.latent_shape = shape
        self.proposal, self.scale, self.log_bound = proposal, scale, bound
        self.latent_shape = shape


def _proposal_spec(proposal: Any) -> tuple[str, dict] | Sampler:
    if isinstance(proposal, Sampler):
        return proposal
    if isinstance(proposal, str):
        return proposal, {}
    if isinstance(proposal, Mapping) and isinstance(proposal.get("name"), str):
        params = {k: v for k, v in proposal.items() if k != "name"}
        if isinstance(params.get("params"), Mapping) and len(params) == 1:
            params = dict(params["params"])
        return proposal["name"], params
    raise ValueError(
        "proposal must be a sampler name, a mapping {name: ..., **params} or a Sampler, "
        f"got {proposal!r}"
    )


class RatioCorrected(DensityRatioSampler):
    """A proposal sampler corrected towards the encodings by a classifier's density ratio.

    Args:
        proposal: the sampler corrected: a registered name, ``{name: ..., **params}`` or a
            Sampler object (fitted again here, on the same context).
        method: "sir", "imh" or "rejection".
        power: exponent on the ratio: 0 gives the proposal, 1 the full correction.
        calibrate: temperature-scale the classifier's logit on the validation encodings.
        pca_dims: leading principal coordinates of the encodings the classifier sees (whitened);
            None: all coordinates.
        hidden, layers, dropout: the classifier MLP.
        weight_decay, lr, epochs, batch_size, patience: its Adam training, early-stopped on the
            held-out cross-entropy of validation encodings against fresh proposals.
        proposal_draws: proposal draws in the classifier's training pool, as a multiple of the
            training encodings (each epoch sees as many of them as there are encodings).
        oversample: proposals per draw (``sir``).
        steps: proposals per chain (``imh``).
        quantile: the quantile of the weights over proposals used as the bound M
            (``rejection``).
        max_proposals: proposals at most per ``sample`` call (``rejection``).
        split, valid_split: the target's encodings, and those for early stopping and
            calibration.
    """

    describes = "proposal draws corrected by a classifier's density ratio"
    registered_name = "ratio_corrected"

    def __init__(
        self,
        proposal: Any = None,
        method: str = "imh",
        power: float = 1.0,
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
        oversample: int = 10,
        steps: int = 20,
        quantile: float = 0.95,
        max_proposals: int = 10_000_000,
        split: str = "train",
        valid_split: str = "valid",
    ):
        super().__init__(
            method=method,
            power=power,
            calibrate=calibrate,
            oversample=oversample,
            steps=steps,
            quantile=quantile,
            max_proposals=max_proposals,
            split=split,
            valid_split=valid_split,
        )
        if proposal is None:
            proposal = {"name": "ex_post_gmm", "components": 10}
        self.proposal_spec = _proposal_spec(proposal)
        self._new_proposal()  # a bad proposal is an error now, when the recipe is checked
        self.pca_dims = check_int("pca_dims", pca_dims, allow_none=True)
        self.hidden = check_int("hidden", hidden)
        self.layers = check_int("layers", layers)
        self.dropout = check_number("dropout", dropout, 0.0, 0.99)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.lr = check_number("lr", lr, open_low=True)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.patience = check_int("patience", patience)
        self.proposal_draws = check_int("proposal_draws", proposal_draws)
        self.classifier: _Classifier | None = None
        self.mean: Tensor | None = None  # (D,)
        self.projection: Tensor | None = None  # (D, k): whitening onto the leading axes

    def _new_proposal(self, registry: Registry | None = None) -> Sampler:
        """A new, unfitted proposal built from the spec (a Sampler object is used as it is).

        Built by ``registry``: the fitting context's, so that the run's own registry (a recipe's
        plugins, the built-ins only) decides; where there is none (a recipe being checked, a
        state being loaded), every installed plugin.
        """
        if isinstance(self.proposal_spec, Sampler):
            return self.proposal_spec
        name, params = self.proposal_spec
        if name in ("ratio_corrected", "aae_discriminator"):
            raise ValueError(f"proposal: ratio_corrected cannot use {name!r} as its proposal")
        try:
            proposal = (registry or get_registry()).create("sampler", name, **params)
        except AesamplerError as error:
            raise ValueError(f"proposal: {error}") from None
        if not isinstance(proposal, Sampler):
            raise ValueError(
                f"proposal: sampler {name!r} built a {type(proposal).__name__}, not a Sampler"
            )
        return proposal

    def check_model(self, model):
        self._new_proposal().check_model(model)

    def _set_features(self, mean: Tensor, axes: Tensor, scales: Tensor, k: int) -> None:
        """Keep what the classifier's features need of the encodings' principal axes.

        ``mean`` (D,), ``axes`` (D, D) and ``scales`` (D,) are :func:`principal_axes` of the
        training encodings; the features are the leading ``k`` whitened coordinates. Subclasses
        that need more of the axes (``local_global``'s preconditioner) extend this.
        """
        self.mean, self.projection = mean, axes[:, :k] / scales[:k]

    def _features(self, z: Tensor) -> Tensor:
        return ((z.double() - self.mean) @ self.projection).float()

    def raw_log_ratio(self, z):
        return self.classifier(self._features(z))

    def fit(self, context):
        super().fit(context)
        self.stats = {}
        proposal = self._new_proposal(context.registry)
        proposal.fit(context)
        train, valid = training_and_validation(context, self.split, self.valid_split)
        d = train.shape[1]
        k = min(self.pca_dims or d, d)
        self._set_features(*principal_axes(train), k)
        self.proposal = proposal  # needed by log_ratio below

        generator = torch.Generator().manual_seed(context.seed + 1)
        pool = proposal.sample(self.proposal_draws * len(train), generator).flatten(1)
        pool_valid = proposal.sample(len(valid), generator).flatten(1)
        x_p, x_q = self._features(train), self._features(pool)
        v_p, v_q = self._features(valid), self._features(pool_valid)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            classifier = _Classifier(k, self.hidden, self.layers, self.dropout)
            self.classifier = self._train(classifier, x_p, x_q, v_p, v_q, generator)
        self.classifier.eval().requires_grad_(False)
        self.stats["pca_dims"] = k
        self.finish_fit(context, valid)

    def _train(self, net, x_p, x_q, v_p, v_q, generator) -> _Classifier:
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def held_out() -> float:
            with torch.no_grad():
                return _balanced_ce(net(v_p), net(v_q))

        n = len(x_p)

        def one_epoch() -> None:
            q = x_q[torch.randperm(len(x_q), generator=generator)[:n]]
            x = torch.cat([x_p, q])
            y = torch.cat([torch.ones(n), torch.zeros(len(q))])
            for index in torch.randperm(len(x), generator=generator).split(self.batch_size):
                loss = F.binary_cross_entropy_with_logits(net(x[index]), y[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()

        done = train_early_stopped(
            net, one_epoch, held_out, epochs=self.epochs, patience=self.patience, tolerance=1e-5
        )
        epoch, best_epoch = done.epochs_run, done.best_epoch
        self.stats.update(classifier_epochs=epoch, classifier_best_epoch=best_epoch)
        return net

    def state_dict(self):
        if self.classifier is None:
            return {}
        state = self._common_state()
        state.update(mean=self.mean, projection=self.projection)
        state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        return state

    def load_state_dict(self, state):
        try:
            mean, projection = state["mean"].double(), state["projection"].double()
        except KeyError as error:
            raise SamplerError(f"the saved state of {self._name()!r} lacks {error}") from None
        k = projection.shape[1]
        weights = {k_[11:]: v for k_, v in state.items() if k_.startswith("classifier.")}
        classifier = _Classifier(k, self.hidden, self.layers, self.dropout)
        try:
            classifier.load_state_dict(weights)
        except RuntimeError as error:
            raise SamplerError(
                f"the saved classifier of {self._name()!r} does not fit the one asked for: {error}"
            ) from None
        self._load_common(state, self._new_proposal())
        self.mean, self.projection = mean, projection
        self.classifier = classifier.eval().requires_grad_(False)


class AAEDiscriminator(DensityRatioSampler):
    """Prior draws corrected by an AAE's trained adversary.

    The adversary D of :class:`aesampler.models.AAE` was trained to call prior draws real (1)
    and encodings fake (0); at its optimum D(z) = p(z) / (p(z) + p̂(z)), so its logit is
    log p(z)/p̂(z) and the ratio that corrects the prior towards the encodings is
    p̂(z)/p(z) = exp(-logit). The proposal is the prior N(0, I). Models without an adversary
    (a VAE) cannot be used: fitting raises :class:`SamplerError`.

    Args:
        method, power, oversample, steps, quantile, max_proposals: as for ``ratio_corrected``.
        calibrate: temperature-scale the adversary's logit on the validation encodings against
            fresh prior draws (the adversary of a trained AAE sits near its equilibrium, where
            its logit may be far from calibrated).
        valid_split: the encodings used for calibration and diagnostics.
    """

    describes = "prior draws corrected by the AAE's adversary"
    registered_name = "aae_discriminator"

    def __init__(
        self,
        method: str = "imh",
        power: float = 1.0,
        calibrate: bool = True,
        oversample: int = 10,
        steps: int = 20,
        quantile: float = 0.95,
        max_proposals: int = 10_000_000,
        valid_split: str = "valid",
    ):
        super().__init__(
            method=method,
            power=power,
            calibrate=calibrate,
            oversample=oversample,
            steps=steps,
            quantile=quantile,
            max_proposals=max_proposals,
            split="train",
            valid_split=valid_split,
        )
        self.adversary: nn.Module | None = None

    def raw_log_ratio(self, z):
        return -self.adversary(z).reshape(len(z))

    def check_model(self, model):
        if isinstance(getattr(model, "adversary", None), nn.Module):
            return
        if model is None:
            why = "no model was given to fit on"
        else:
            kind = getattr(model, "kind", None) or type(model).__name__
            why = (
                f"the model ({kind}) has none: a VAE matches its prior through a KL term, so no "
                "discriminator estimates the ratio of its encodings to the prior"
                if "vae" in str(kind).lower()
                else f"the model ({kind}) has no adversary"
            )
        raise SamplerError(
            "aae_discriminator needs an adversarial autoencoder's trained adversary, and "
            f"{why}; use ratio_corrected, which learns the ratio with a classifier"
        )

    def fit(self, context):
        self.check_model(context.model)
        adversary = context.model.adversary
        super().fit(context)
        self.stats = {}
        self.adversary = copy.deepcopy(adversary).float().cpu().eval().requires_grad_(False)
        proposal = PriorSampler()
        proposal.fit(context)
        self.proposal = proposal
        try:
            valid = context.encodings(self.valid_split).flatten(1)
        except SamplerError:
            valid = context.encodings(self.split).flatten(1)
            context.log(f"no {self.valid_split!r} encodings; calibrating on the training ones")
        self.finish_fit(context, valid)

    def state_dict(self):
        if self.adversary is None:
            return {}
        state = self._common_state()
        state.update({f"adversary.{k}": v for k, v in self.adversary.state_dict().items()})
        slopes = [m.negative_slope for m in self.adversary.modules() if isinstance(m, nn.LeakyReLU)]
        state["adversary_slope"] = torch.tensor(slopes[0] if slopes else 0.2)
        return state

    def load_state_dict(self, state):
        weights = {k[10:]: v for k, v in state.items() if k.startswith("adversary.")}
        linear = sorted(k for k in weights if k.endswith(".weight"))
        if not linear:
            raise SamplerError("the saved state of 'aae_discriminator' holds no adversary")
        first = weights[linear[0]]
        try:
            adversary = Adversary(
                first.shape[1],
                hidden=first.shape[0],
                layers=len(linear) - 1,
                negative_slope=float(state.get("adversary_slope", torch.tensor(0.2))),
            )
            adversary.load_state_dict(weights)
        except (RuntimeError, ValueError) as error:
            raise SamplerError(
                f"the saved adversary of 'aae_discriminator' cannot be rebuilt: {error}"
            ) from None
        self._load_common(state, PriorSampler())
        self.adversary = adversary.eval().requires_grad_(False)
