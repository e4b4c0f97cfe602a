"""``latent_flow``: a normalising flow (zuko) fitted to the training encodings.

A flow fitted plainly to a few thousand encodings in 200 dimensions overfits and loses to a
Gaussian mixture. This sampler therefore offers the two kinds of help that make a flow work on
such data, both on by default:

* **a lower-dimensional space**: the encodings are rotated onto their principal axes; the flow
  models the leading ``pca_dims`` coordinates (whitened), and the remaining coordinates are drawn
  from independent Gaussians with their training variances (they are uncorrelated with the
  leading ones and with each other by construction of the rotation);
* **a mixture base**: the flow's base distribution is a Gaussian mixture fitted by EM to the
  (whitened) leading coordinates, and the flow starts as the identity, so fitting starts from
  the mixture's likelihood and the flow learns only the corrections that improve the likelihood
  of the validation encodings (early stopping keeps the best epoch, which may be epoch 0: the
  mixture alone).

The flow itself comes from zuko (masked autoregressive transforms with affine or spline
univariate maps). Draws are made from the generator: base noise is drawn here and pushed through
the flow's inverse, so no global random state is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_int, check_number, check_split
from .base import (
    Sampler,
    SamplerError,
    orthonormal_problems,
    positive_problems,
    principal_axes,
    train_early_stopped,
    training_and_validation,
)
from .gmm import check_covariance, fit_mixture, mixture_problems, sample_mixture

FLOWS = ("nsf", "maf")
BASES = ("gaussian", "gmm")
_MAX_ROUNDS = 100  # rounds of redrawing draws outside the support box


def _import_zuko():
    try:
        import zuko
    except ImportError as error:  # pragma: no cover - zuko is a declared dependency
        raise SamplerError(
            "latent_flow needs the zuko package (pip install zuko): " + str(error)
        ) from None
    return zuko


class _MixtureBase(nn.Module):
    """A fixed Gaussian mixture as a zuko lazy distribution (the flow's base)."""

    def __init__(self, weights: Tensor, means: Tensor, scale_tril: Tensor):
        super().__init__()
        self.register_buffer("weights", weights.double())
        self.register_buffer("means", means.double())
        self.register_buffer("scale_tril", scale_tril.double())

    def forward(self, c=None):
        from torch.distributions import MultivariateNormal

        zuko = _import_zuko()
        return zuko.distributions.Mixture(
            MultivariateNormal(self.means.float(), scale_tril=self.scale_tril.float()),
            self.weights.float().log(),
        )

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return sample_mixture(self.weights, self.means, self.scale_tril, n, generator)


class _GaussianBase(nn.Module):
    """N(0, I) as a zuko lazy distribution."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def forward(self, c=None):
        zuko = _import_zuko()
        zeros = torch.zeros(self.features)
        return zuko.distributions.DiagNormal(zeros, torch.ones(self.features))

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.features, generator=generator, dtype=torch.float64)


class LatentFlow(Sampler):
    """A normalising flow fitted to the training encodings, early-stopped on validation ones.

    The encodings are rotated onto their principal axes and whitened; a zuko flow (``nsf``:
    neural spline flow, ``maf``: masked autoregressive flow with affine maps) models the leading
    ``pca_dims`` coordinates over a ``base`` distribution (``gmm``: a Gaussian mixture fitted
    by EM, kept fixed; ``gaussian``: N(0, I)); the other coordinates are independent Gaussians.
    The flow starts as the identity and is trained by maximum likelihood with Adam; after each
    epoch the negative log-likelihood of the validation encodings decides whether the epoch is
    kept, and training stops after ``patience`` epochs without improvement.

    Args:
        flow: "nsf" or "maf".
        transforms: autoregressive transforms in the flow.
        hidden: widths of each transform's hidden layers (an int: two layers of that width).
        bins: spline bins (``nsf`` only).
        passes: sequential passes of each transform's inverse: None is fully autoregressive,
            2 is a coupling transform (faster to sample, less expressive).
        pca_dims: principal coordinates the flow models; None: all of them.
        base: "gmm" or "gaussian".
        components: mixture components of the ``gmm`` base.
        covariance: covariance type of the ``gmm`` base ("full", "diag", "spherical", "tied").
        reg_covar: added to the ``gmm`` base's covariance diagonals (in whitened units).
        epochs: training epochs at most.
        batch_size: encodings per Adam step.
        lr: Adam's learning rate.
        weight_decay: Adam's weight decay (L2 on the flow's weights).
        patience: epochs without a better validation likelihood before stopping.
        support: draws whose whitened flow coordinates leave the box of ``support`` times the
            largest absolute training coordinate (per coordinate) are drawn again; None keeps
            every draw. A flow's inverse can throw a rare base draw far away (a fully
            autoregressive affine flow in 200-D sends about 1% of draws beyond 10⁸), and in
            batch-statistics decoding one such latent spoils the images of the whole batch.
        split: the split the flow is fitted to.
        valid_split: the split that decides early stopping; when the context has none, a tenth
            of ``split`` is held out instead.
    """

    fits = True
    describes = "draws from a normalising flow fitted to the training encodings"

    def __init__(
        self,
        flow: str = "nsf",
        transforms: int = 3,
        hidden: int | Sequence[int] = (256, 256),
        bins: int = 8,
        passes: int | None = None,
        pca_dims: int | None = 32,
        base: str = "gmm",
        components: int = 10,
        covariance: str = "full",
        reg_covar: float = 1e-6,
        epochs: int = 200,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 10,
        support: float | None = 1.5,
        split: str = "train",
        valid_split: str = "valid",
    ):
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = (hidden, hidden)
        if not isinstance(hidden, (list, tuple)) or not hidden:
            raise ValueError(f"hidden must be a width or a list of widths, got {hidden!r}")
        hidden = tuple(check_int("each hidden width", width) for width in hidden)
        self.flow = flow
        self.transforms = check_int("transforms", transforms)
        self.hidden = hidden
        self.bins = check_int("bins", bins)
        self.passes = check_int("passes", passes, allow_none=True)
        self.pca_dims = check_int("pca_dims", pca_dims, allow_none=True)
        self.base = base
        self.components = check_int("components", components)
        self.covariance = check_covariance(covariance)
        self.reg_covar = check_number("reg_covar", reg_covar, open_low=True)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.lr = check_number("lr", lr, open_low=True)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.patience = check_int("patience", patience)
        self.support = None if support is None else check_number("support", support, open_low=True)
        self.split = check_split("split", split)
        self.valid_split = check_split("valid_split", valid_split)
        self.mean: Tensor | None = None  # (D,)
        self.axes: Tensor | None = None  # (D, D): principal axes as columns
        self.scales: Tensor | None = None  # (D,): standard deviations along the axes
        self.model: nn.Module | None = None  # the zuko flow over the leading coordinates
        self.bound: Tensor | None = None  # (k,): draws beyond it (whitened) are drawn again
        #: What fitting found: epochs run, best epoch, validation NLL per dimension, ...
        self.stats: dict[str, float] = {}

    # -- construction ---------------------------------------------------------------------

    def _build(self, features: int, base: nn.Module) -> nn.Module:
        zuko = _import_zuko()
        kwargs = dict(transforms=self.transforms, hidden_features=self.hidden, passes=self.passes)
        if self.flow == "nsf":
            flow = zuko.flows.NSF(features, bins=self.bins, **kwargs)
        else:
            flow = zuko.flows.MAF(features, **kwargs)
        flow.base = base
        return flow

    @staticmethod
    def _start_as_identity(flow: nn.Module) -> None:
        """Zero each transform's output layer: zero shifts, unit scales, identity splines."""
        with torch.no_grad():
            for transform in flow.transform.transforms:
                last = [m for m in transform.hyper.modules() if isinstance(m, nn.Linear)][-1]
                last.weight.zero_()
                last.bias.zero_()

    def _whiten(self, z: Tensor, k: int) -> Tensor:
        return ((z.double() - self.mean) @ self.axes[:, :k] / self.scales[:k]).float()

    # -- fitting --------------------------------------------------------------------------

    def fit(self, context):
        super().fit(context)
        self.stats = {}
        train, valid = training_and_validation(context, self.split, self.valid_split)
        d = train.shape[1]
        k = min(self.pca_dims or d, d)
        if k > len(train) - 1:  # axes beyond the rank carry no variance of the data
            k = len(train) - 1
            context.log(
                f"latent_flow: {len(train)} encodings span at most {k} principal axes; the flow "
                f"models {k} coordinates (pca_dims={self.pca_dims})"
            )
        self.mean, self.axes, self.scales = principal_axes(train)
        x_train, x_valid = self._whiten(train, k), self._whiten(valid, k)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            base = self._fit_base(x_train, k, context)
            flow = self._build(k, base)
            self._start_as_identity(flow)
            self.model = self._train(flow, x_train, x_valid, context)
        self.model.eval().requires_grad_(False)
        self.bound = None if self.support is None else self.support * x_train.abs().amax(0).double()
        variance = self.scales.square()
        self.stats["explained_variance"] = float(variance[:k].sum() / variance.sum())
        self.stats["pca_dims"] = k

    def _fit_base(self, x: Tensor, k: int, context) -> nn.Module:
        if self.base == "gaussian":
            return _GaussianBase(k)
        return _MixtureBase(
            *fit_mixture(
                x,
                self.components,
                self.covariance,
                reg_covar=self.reg_covar,
                seed=context.seed,
                log=context.log,
                name="latent_flow",
            )
        )

    def _train(self, flow: nn.Module, x_train: Tensor, x_valid: Tensor, context) -> nn.Module:
        params = [p for p in flow.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        order_rng = torch.Generator().manual_seed(context.seed)
        k = x_train.shape[1]

        def valid_nll() -> float:
            with torch.no_grad():
                total = sum(
                    float(-flow().log_prob(x_valid[i : i + 1024]).sum())
                    for i in range(0, len(x_valid), 1024)
                )
            return total / (len(x_valid) * k)

        def one_epoch() -> None:
            for index in torch.randperm(len(x_train), generator=order_rng).split(self.batch_size):
                loss = -flow().log_prob(x_train[index]).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()

        done = train_early_stopped(
            flow, one_epoch, valid_nll, epochs=self.epochs, patience=self.patience
        )
        epoch, best_epoch, first, best = done.epochs_run, done.best_epoch, done.first, done.best
        self.stats.update(
            epochs_run=epoch,
            best_epoch=best_epoch,
            valid_nll_start=first,
            valid_nll=best,
        )
        context.log(
            f"latent_flow: {epoch} epochs, kept epoch {best_epoch}; validation NLL per "
            f"coordinate {first:.4f} at the start, {best:.4f} kept"
        )
        return flow

    # -- sampling -------------------------------------------------------------------------

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.model is None:
            raise SamplerError("LatentFlow is not fitted: call fit(context) first")
        d, k = self.mean.shape[0], self._dims()
        x = self._flow_draws(n, generator)
        rest = torch.randn(n, d - k, generator=generator, dtype=torch.float64)
        coords = torch.cat([x, rest], dim=1) * self.scales
        z = self.mean + coords @ self.axes.T
        return z.float().reshape(n, *self._shape())

    def _flow_draws(self, n: int, generator) -> Tensor:
        """n draws of the leading (whitened) coordinates, inside the support box if there is one."""
        kept: list[Tensor] = []
        count = drawn = 0
        transform = self.model.transform()
        for _ in range(_MAX_ROUNDS):
            if count >= n:
                break
            want = n - count
            eps = self.model.base.sample(want, generator)
            with torch.no_grad():
                x = transform.inv(eps.float()).double()
            good = torch.isfinite(x).all(1)
            if self.bound is not None:
                good &= (x.abs() <= self.bound).all(1)
            kept.append(x[good])
            count += int(good.sum())
            drawn += want
        if count < n:
            raise SamplerError(
                f"latent_flow: only {count} of {drawn} draws fell inside the support box; the "
                "flow is broken (refit it with fewer epochs or transforms) or set support: null"
            )
        self.stats["redrawn_fraction"] = (drawn - n) / max(drawn, 1)
        return torch.cat(kept) if kept else torch.zeros(0, self._dims(), dtype=torch.float64)

    def log_prob(self, z: Tensor) -> Tensor:
        """The flow's log-density of latents (N, *latent_shape), in the latents' units."""
        if self.model is None:
            raise SamplerError("LatentFlow is not fitted: call fit(context) first")
        k = self._dims()
        coords = (z.flatten(1).double() - self.mean) @ self.axes / self.scales
        with torch.no_grad():
            lead = self.model().log_prob(coords[:, :k].float()).double()
        rest = torch.distributions.Normal(0.0, 1.0).log_prob(coords[:, k:]).sum(1)
        return lead + rest - self.scales.log().sum()

    def _dims(self) -> int:
        return int(self.model.transform.transforms[0].order.shape[0])

    # -- state ----------------------------------------------------------------------------

    def state_dict(self):
        if self.model is None:
            return {}
        state = {
            "mean": self.mean,
            "axes": self.axes,
            "scales": self.scales,
            "latent_shape": torch.tensor(self._shape(), dtype=torch.int64),
        }
        if self.bound is not None:
            state["bound"] = self.bound
        state.update(
            {f"flow.{key}": v.detach().cpu() for key, v in self.model.state_dict().items()}
        )
        return state

    def check_state(self, state):
        problems = super().check_state(state)
        problems += positive_problems(state, ["scales", "bound"])
        problems += orthonormal_problems("axes", state.get("axes"))
        return problems + mixture_problems(state, prefix="flow.base.")

    def load_state_dict(self, state):
        try:
            mean, axes, scales = state["mean"], state["axes"], state["scales"]
        except KeyError as error:
            raise SamplerError(f"the saved state of 'latent_flow' lacks {error}") from None
        flow_state = {key[5:]: v for key, v in state.items() if key.startswith("flow.")}
        d = mean.shape[0]
        order = [v for key, v in flow_state.items() if key.endswith(".order")]
        if axes.shape != (d, d) or scales.shape != (d,) or not order:
            raise SamplerError(
                "the saved state of 'latent_flow' is inconsistent: mean "
                f"{tuple(mean.shape)}, axes {tuple(axes.shape)}, scales {tuple(scales.shape)}"
            )
        k = order[0].shape[0]
        if self.base == "gmm":
            try:
                base = _MixtureBase(
                    flow_state["base.weights"],
                    flow_state["base.means"],
                    flow_state["base.scale_tril"],
                )
            except KeyError:
                raise SamplerError(
                    "the saved state of 'latent_flow' has no mixture base, but base='gmm'"
                ) from None
        else:
            base = _GaussianBase(k)
        flow = self._build(k, base)
        try:
            flow.load_state_dict(flow_state)
        except RuntimeError as error:
            raise SamplerError(
                f"the saved state of 'latent_flow' does not fit the flow asked for: {error}"
            ) from None
        self.mean, self.axes, self.scales = mean.double(), axes.double(), scales.double()
        bound = state.get("bound")
        self.bound = None if bound is None or self.support is None else bound.double()
        self.model = flow.eval().requires_grad_(False)
        shape = state.get("latent_shape")
        self.latent_shape = tuple(int(s) for s in shape) if shape is not None else (d,)
