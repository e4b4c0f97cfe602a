"""The sampler interface: where chains start.

A chain's step 0 is a draw z0 from some distribution over latents; the paper draws it from the
prior N(0, I). The decoder, however, was trained on the encoder's learned latent distribution
P̂(Z) = ∫ Q(z|x) P(x) dx, and a sampler that targets P̂(Z) directly can beat the prior, and the
chain, at step 0. A :class:`Sampler` is fitted once (:meth:`Sampler.fit`, given a
:class:`SamplerContext`: the model, encodings of a data split computed once, a seed) and then
draws latents (:meth:`Sampler.sample`) from a generator. What a sampler fitted is plain tensors
(:meth:`Sampler.state_dict`), saved in the run directory so that later commands do not refit.

The built-in samplers are in the sibling modules; docs/samplers.md gives their maths.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..checks import check_int
from ..errors import AesamplerError
from ..interfaces import Encoder
from ..modes import sampling_mode
from ..registry import Registry


class SamplerError(AesamplerError):
    """A sampler cannot be fitted or used (no data to fit on, a state that does not fit)."""


# ----------------------------------------------------------------------------------------------
# Checks of fitted states: each returns problems, short phrases that name the tensor.


def finite_problems(state: Mapping[str, Tensor], skip: Iterable[str] = ()) -> list[str]:
    """A problem for each floating-point tensor of ``state`` (but those in ``skip``) that holds
    NaN or inf."""
    skipped = set(skip)
    problems = []
    for name, tensor in sorted(state.items()):
        if name in skipped or not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            problems.append(f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''}")
    return problems


def positive_problems(state: Mapping[str, Tensor], names: Iterable[str]) -> list[str]:
    """A problem for each tensor of ``names`` in ``state`` with a value that is not > 0 (NaN
    included)."""
    problems = []
    for name in names:
        tensor = state.get(name)
        if isinstance(tensor, Tensor) and tensor.numel():
            bad = int((~(tensor.double() > 0)).sum())
            if bad:
                problems.append(f"{name} has {bad} value{'s' if bad > 1 else ''} not above 0")
    return problems


def orthonormal_problems(name: str, axes: Tensor | None, *, tolerance: float = 1e-4) -> list[str]:
    """A problem when ``axes`` (D, D) is not square or its columns are not orthonormal."""
    if not isinstance(axes, Tensor):
        return []
    if axes.dim() != 2 or axes.shape[0] != axes.shape[1]:
        return [f"{name} has shape {tuple(axes.shape)}, not (D, D)"]
    a = axes.double()
    gap = (a.T @ a - torch.eye(len(a), dtype=torch.float64)).abs().max() if len(a) else 0.0
    if not float(gap) <= tolerance:  # NaN fails too
        return [f"{name} are not orthonormal axes (AᵀA differs from I by {float(gap):.3g})"]
    return []


def encoder_of(source: Any) -> Encoder:
    """The encoder Q(z|x) of ``source``: an :class:`~aesampler.Encoder` itself, a model with an
    ``encoder`` (a trained :class:`~aesampler.models.GenerativeAutoencoder`), or a
    :class:`~aesampler.Chain` whose transition encodes (decode-corrupt-encode does).

    Raises SamplerError naming what was given when none of these holds.
    """
    if isinstance(source, Encoder):
        return source
    for holder in (source, getattr(source, "transition", None)):
        encoder = getattr(holder, "encoder", None)
        if isinstance(encoder, Encoder):
            return encoder
    raise SamplerError(
        f"cannot encode images with a {type(source).__name__}: pass an aesampler.Encoder (e.g. "
        "GaussianEncoder(net) or DeterministicEncoder(net)), a model with an encoder, or a Chain "
        "built from an encoder"
    )


@torch.inference_mode()
def encode_images(
    model: Any,
    images: Tensor | Iterable[Tensor],
    *,
    batchnorm: str = "batch",
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch: int = 256,
) -> Tensor:
    """Draws from Q(z|x) for each image: a sample of P̂(Z) = ∫ Q(z|x) P(x) dx.

    ``model`` is whatever holds the encoder (see :func:`encoder_of`): an Encoder, a trained
    model or a Chain. ``images`` is a tensor (N, C, H, W), encoded ``batch`` images at a time,
    or an iterable of such batches (a data loader). Batch normalisation runs in the chain's mode
    (``"batch"``: minibatch statistics, the paper's choice); the encoder's buffers are left as
    they were. All draws come from one generator seeded with ``seed``. Returns float32 latents on
    the CPU.
    """
    encoder = encoder_of(model)
    if isinstance(images, Tensor):
        images = [images[i : i + batch] for i in range(0, len(images), batch)]
    generator = torch.Generator(device).manual_seed(seed)
    out = []
    with sampling_mode([encoder], batchnorm):
        for x in images:
            x = x.to(device, non_blocking=True)  # asynchronous from pinned memory
            out.append(encoder(x).sample(generator).float())
    if not out:
        raise SamplerError("there are no images to encode")
    return torch.cat(out).cpu()  # one synchronisation, not one per batch


_SPREAD_FLOOR = 1e-3  # of each coordinate's spread over the images: floors corrupted-copy stds


@torch.inference_mode()
def encode_posteriors(
    model: Any,
    images: Tensor | Iterable[Tensor],
    *,
    batchnorm: str = "batch",
    device: torch.device | str = "cpu",
    batch: int = 256,
    corruption: Callable[..., Tensor] | None = None,
    copies: int = 8,
    seed: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """The mean and standard deviation of Q(z|x) for each image: (N, *latent_shape) each.

    * A Gaussian (VAE) encoder gives its own mean and std for the clean image; ``corruption`` is
      not used.
    * A deterministic (AAE) encoder with a ``corruption`` (the model's training corruption, e.g.
      Gaussian noise for a DAAE) encodes ``copies`` corrupted copies of each image and gives their
      mean and standard deviation: the moments of Q(z|x) = ∫ q(z|x̃) C(x̃|x) dx̃. The std is
      floored, per coordinate, at 1e-3 of that coordinate's spread of the means over the images
      (when no copy differs from another at all, an identity corruption, the std is None).
    * A deterministic encoder without a corruption gives its encodings and None: no spread is
      known, and a sampler has to choose one.

    ``images`` is a tensor (N, C, H, W), encoded ``batch`` images at a time, or an iterable of
    batches. Batch normalisation runs in the chain's mode and the model's buffers are left as they
    were (as in :func:`encode_images`); each corrupted copy of a batch is encoded as one batch, so
    batch statistics come from batches like the clean ones. The corruption's noise comes from one
    generator seeded with ``seed``. Returns float32 tensors on the CPU.
    """
    encoder = encoder_of(model)
    check_int("copies", copies, low=2)
    if isinstance(images, Tensor):
        images = [images[i : i + batch] for i in range(0, len(images), batch)]
    generator = torch.Generator(device).manual_seed(seed)
    means, stds = [], []
    deterministic = None
    with sampling_mode([encoder], batchnorm):
        for x in images:
            x = x.to(device, non_blocking=True)
            if deterministic and corruption is not None:
                posterior = None  # the clean encoding is not needed
            else:
                posterior = encoder(x)
                if deterministic is None:
                    deterministic = posterior.std is None
                elif deterministic != (posterior.std is None):
                    raise SamplerError("the encoder gave a std for some batches, not for others")
            if not deterministic:
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
            elif corruption is None:
                means.append(posterior.mean.float())
            else:
                z = torch.stack(
                    [encoder(corruption(x, generator=generator)).mean for _ in range(copies)]
                ).double()
                means.append(z.mean(0).float())
                stds.append(z.std(0, correction=1).float())
    if not means:
        raise SamplerError("there are no images to encode")
    mean = torch.cat(means).cpu()
    if not stds:
        return mean, None
    std = torch.cat(stds).cpu()
    if deterministic and not bool((std > 0).any()):
        return mean, None  # the corruption changed nothing (an identity): no spread is known
    if deterministic:  # copies can agree exactly (a saturated unit): keep every kernel proper
        spread = mean.std(0, correction=0)  # zeros for a single image: the 1e-12 floor
        std = torch.maximum(std, (_SPREAD_FLOOR * spread).clamp_min(1e-12))
    return mean, std


_EIGEN_FLOOR = 1e-10  # of the largest variance: keeps whitening finite
_HOLD_OUT = 0.1  # of the fitted split, when no validation split is available


def principal_axes(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (D,), principal axes (D, D) as columns and standard deviations (D,) along them.

    scikit-learn's PCA on the rows of ``z`` (N, D), in float64; the axes are sorted by
    decreasing variance, and variances are floored at a tiny fraction of the largest so that
    whitening never divides by zero.
    """
    from sklearn.decomposition import PCA  # slow to import: only when fitting

    pca = PCA(svd_solver="full").fit(z.flatten(1).double().numpy())
    d = z.flatten(1).shape[1]
    variances = torch.zeros(d, dtype=torch.float64)  # N <= D leaves some axes without variance
    variances[: len(pca.explained_variance_)] = torch.as_tensor(pca.explained_variance_)
    axes = torch.as_tensor(pca.components_, dtype=torch.float64).T
    if axes.shape[1] < d:  # complete the basis: the remaining axes are orthogonal to the data
        q, _ = torch.linalg.qr(torch.cat([axes, torch.eye(d, dtype=torch.float64)], dim=1))
        axes = torch.cat([axes, q[:, axes.shape[1] : d]], dim=1)
    floor = _EIGEN_FLOOR * max(float(variances[0]), 1e-30)
    return torch.as_tensor(pca.mean_), axes, variances.clamp_min(floor).sqrt()


def hold_out(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of ``n`` rows to keep and to hold out (a tenth, at least one), chosen by ``seed``.

    The rows :func:`training_and_validation` holds out when there is no validation split.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(_HOLD_OUT * n))
    return order[held:], order[:held]


def training_and_validation(
    context: SamplerContext, split: str, valid_split: str
) -> tuple[Tensor, Tensor]:
    """Encodings to fit on (N, D) and to validate on (early stopping, calibration).

    When the context has no ``valid_split`` encodings (or it is ``split`` itself), a tenth of
    ``split``, chosen with the context's seed, is held out instead.
    """
    train = context.encodings(split).flatten(1)
    valid = None
    if valid_split != split:
        with contextlib.suppress(SamplerError):  # no such split: hold some out below
            valid = context.encodings(valid_split).flatten(1)
    if valid is None:
        kept, held_out = hold_out(len(train), context.seed)
        held = len(held_out)
        train, valid = train[kept], train[held_out]
        context.log(
            f"no {valid_split!r} encodings to validate on: holding out {held} of the {split!r} "
            "split instead"
        )
    if len(train) < 2 or len(valid) < 1:
        raise SamplerError(f"the {split!r} split has too few encodings to fit on ({len(train)})")
    return train, valid


@dataclass(frozen=True)
class EarlyStopped:
    """What :func:`train_early_stopped` did: epochs run, the kept epoch, first and kept scores."""

    epochs_run: int
    best_epoch: int
    first: float
    best: float


def train_early_stopped(
    module: nn.Module,
    epoch: Callable[[], None],
    score: Callable[[], float],
    *,
    epochs: int,
    patience: int,
    tolerance: float = 1e-6,
) -> EarlyStopped:
    """Train ``module`` epoch by epoch and keep the epoch with the lowest held-out ``score``.

    ``epoch()`` runs one epoch of training; ``score()`` evaluates on held-out data (lower is
    better). The score before any training counts as epoch 0, so an epoch is kept only if it
    beats where training started by more than ``tolerance``. Training stops after ``patience``
    epochs without such an improvement; the module is left with the kept epoch's weights.
    """
    module.eval()
    best = first = score()
    best_epoch, best_state = 0, copy.deepcopy(module.state_dict())
    waited = done = 0
    for done in range(1, epochs + 1):
        module.train()
        epoch()
        module.eval()
        current = score()
        if current < best - tolerance:
            best, best_epoch, waited = current, done, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return EarlyStopped(done, best_epoch, first, best)


def _checked_latents(name: str, latents: Any) -> Tensor:
    """``latents`` if it is a floating-point tensor (N, ...) with at least one row."""
    if not isinstance(latents, Tensor) or not latents.is_floating_point() or latents.dim() < 2:
        shape = tuple(latents.shape) if isinstance(latents, Tensor) else None
        got = f"a tensor of shape {shape}" if shape is not None else type(latents).__name__
        raise SamplerError(
            f"{name} must be a floating-point tensor (N, *latent_shape), one latent per row; "
            f"got {got}"
        )
    if not len(latents):
        raise SamplerError(f"{name} holds no latents (0 rows)")
    return latents


class SamplerContext:
    """What a sampler may use when it is fitted.

    Args:
        latent_shape: the shape of one latent.
        encode: ``encode(split) -> Tensor (N, *latent_shape)``: draws from Q(z|x) for the images
            of a data split ("train", "valid" or "test"); each split is encoded once and cached.
        seed: the seed of any randomness in fitting.
        device: where the model runs.
        model: the trained model (None when the sampler is fitted on latents alone).
        log: where to say what happens.
        posterior: ``posterior(split) -> (means, stds)``: the mean and standard deviation of
            Q(z|x) for the images of a split, each (N, *latent_shape) in the order of
            ``encode(split)``; stds may be None when the encoder gives no spread (a deterministic
            encoder without a corruption, see :func:`encode_posteriors`). Computed once per split.
        registry: where a sampler that builds other components by name (a proposal) looks
            them up: the run's registry; None: every installed plugin.
    """

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        encode: Callable[[str], Tensor] | None = None,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        model: Any = None,
        log: Callable[[str], None] = print,
        posterior: Callable[[str], tuple[Tensor, Tensor | None]] | None = None,
        registry: Registry | None = None,
    ):
        self.latent_shape = tuple(latent_shape)
        self._encode = encode
        self._cache: dict[str, Tensor] = {}
        self._posterior = posterior
        self._posteriors: dict[str, tuple[Tensor, Tensor | None]] = {}
        self.seed = seed
        self.device = torch.device(device)
        self.model = model
        self.log = log
        self.registry = registry

    @classmethod
    def from_encodings(
        cls,
        encodings: dict[str, Tensor],
        *,
        posteriors: dict[str, tuple[Tensor, Tensor | None]] | None = None,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ) -> SamplerContext:
        """A context over latents a user already has, by split (for tests and own models).

        ``posteriors``, when given, maps splits to the (means, stds) of Q(z|x) for their images,
        as :meth:`posteriors` returns them.
        """
        first = next(iter(encodings.values()))
        context = cls(tuple(first.shape[1:]), seed=seed, log=log)
        context._cache.update({k: v.detach().float().cpu() for k, v in encodings.items()})
        for split, (means, stds) in (posteriors or {}).items():
            context._posteriors[split] = context._checked_posteriors(split, means, stds)
        return context

    def encodings(self, split: str) -> Tensor:
        """Encodings of ``split`` on the CPU, (N, *latent_shape), computed once."""
        if split not in self._cache:
            if self._encode is None:
                raise SamplerError(f"no encodings of the {split!r} split are available")
            self._cache[split] = self._encode(split).detach().float().cpu()
        return self._cache[split]

    def posteriors(self, split: str) -> tuple[Tensor, Tensor | None]:
        """Means and stds of Q(z|x) for the images of ``split`` on the CPU, computed once.

        Each is (N, *latent_shape), rows in the order of :meth:`encodings`; the stds are None when
        the encoder gives no spread. Raises SamplerError when the context has no posteriors.
        """
        if split not in self._posteriors:
            if self._posterior is None:
                raise SamplerError(f"no posteriors of the {split!r} split are available")
            self._posteriors[split] = self._checked_posteriors(split, *self._posterior(split))
        return self._posteriors[split]

    def _checked_posteriors(
        self, split: str, means: Tensor, stds: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        means = means.detach().float().cpu()
        if tuple(means.shape[1:]) != self.latent_shape:
            raise SamplerError(
                f"the posterior means of the {split!r} split have shape {tuple(means.shape)}, "
                f"not (N, {', '.join(map(str, self.latent_shape))})"
            )
        if stds is not None:
            stds = stds.detach().float().cpu()
            if stds.shape != means.shape:
                raise SamplerError(
                    f"the posterior stds of the {split!r} split have shape {tuple(stds.shape)}, "
                    f"not that of the means {tuple(means.shape)}"
                )
            if not bool(torch.isfinite(stds).all()) or bool((stds < 0).any()):
                raise SamplerError(
                    f"the posterior stds of the {split!r} split must be finite and non-negative"
                )
        return means, stds


class Sampler(abc.ABC):
    """Draws starting latents z0.

    Subclasses implement :meth:`sample`; those that learn something implement :meth:`fit`,
    :meth:`state_dict` and :meth:`load_state_dict` (plain tensors, so the state can be saved as
    safetensors) and set ``fits = True``.
    """

    #: True when :meth:`fit` learns a state worth saving.
    fits: ClassVar[bool] = False
    #: A short description for captions: what step 0 shows.
    describes: ClassVar[str] = "latents"
    #: True when the draws are encodings of real images (the paper's "Approach 1"): such a
    #: sampler reproduces data rather than generating, so the search never chooses it.
    copies_data: ClassVar[bool] = False

    latent_shape: tuple[int, ...] | None = None
    #: The split whose encodings :meth:`fit` reads, and the split it validates on (early
    #: stopping, a scale) when it validates at all. Samplers with a ``split`` parameter set them.
    split: str = "train"
    valid_split: str = "valid"

    @property
    def stats(self) -> dict[str, Any]:
        """Numbers about the last fit or draws (explained variance, an acceptance rate) that a
        run records beside the sampler's settings: {} when there are none. Subclasses assign or
        update it."""
        if "_stats" not in self.__dict__:
            self._stats: dict[str, Any] = {}
        return self._stats

    @stats.setter
    def stats(self, value: dict[str, Any]) -> None:
        self._stats = value

    def fit_latents(
        self,
        latents: Tensor,
        valid: Tensor | None = None,
        *,
        posteriors: tuple[Tensor, Tensor | None] | None = None,
        valid_posteriors: tuple[Tensor, Tensor | None] | None = None,
        model: Any = None,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ) -> Sampler:
        """Fit on latents you already have, without a recipe; returns the sampler itself.

        Args:
            latents: encodings of your training images, (N, *latent_shape): for example
                ``encode_images(encoder, images)``.
            valid: encodings of held-out images, for the samplers that validate (a flow's early
                stopping, a mixture's scale). Without them such a sampler holds out a tenth of
                ``latents`` and says so through ``log``.
            posteriors: the (means, stds) of Q(z|x) for the images behind ``latents``, as
                :func:`encode_posteriors` gives them, for samplers that read posteriors
                (``posterior_mixture``); ``valid_posteriors`` likewise for ``valid``.
            model: the trained model, for samplers that read more of it than latents (the AAE's
                adversary).
            seed: the seed of any randomness in fitting.
            log: where to say what happens.

        Example:
            >>> gmm = ExPostGMM(components=10).fit_latents(encode_images(encoder, images))
            >>> chain.run(n=64, start=gmm, steps=5)
        """
        encodings = {self.split: _checked_latents("latents", latents)}
        found = {self.split: posteriors} if posteriors is not None else {}
        if valid is not None and self.valid_split != self.split:
            valid = _checked_latents("valid", valid)
            if valid.shape[1:] != encodings[self.split].shape[1:]:
                raise SamplerError(
                    f"valid has latents of shape {tuple(valid.shape[1:])}, but latents has "
                    f"{tuple(encodings[self.split].shape[1:])}"
                )
            encodings[self.valid_split] = valid
            if valid_posteriors is not None:
                found[self.valid_split] = valid_posteriors
        context = SamplerContext.from_encodings(encodings, posteriors=found, seed=seed, log=log)
        context.model = model
        self.fit(context)
        return self

    def check_model(self, model: Any) -> None:  # noqa: B027 (optional)
        """Raise SamplerError when this sampler cannot serve ``model``.

        Called when a recipe is validated (with the model built on the meta device, so only its
        structure is there, not its weights) and again before fitting. The default accepts any
        model.
        """

    def fit(self, context: SamplerContext) -> None:
        """Learn whatever the sampler needs (the default: the latent shape)."""
        self.latent_shape = context.latent_shape

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` latents (n, *latent_shape) on the CPU, all randomness from ``generator``."""

    def state_dict(self) -> dict[str, Tensor]:
        """What :meth:`fit` learned, as named CPU tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:  # noqa: B027 (optional)
        """Restore what :meth:`state_dict` returned; raise SamplerError when it does not fit."""

    def check_state(self, state: Mapping[str, Tensor]) -> list[str]:
        """What is wrong with a fitted state (as :meth:`state_dict` gives it): [] when nothing.

        aesampler calls it on each state a sampler fits, before saving it (a fit with problems
        is an error: nothing is saved), and on each saved state it loads, before
        :meth:`load_state_dict` (a state with problems is fitted again). Each problem is a short
        phrase that names the tensor (``"weights sum to 0.7, not 1"``). The default: every
        floating-point tensor is finite. Subclasses add their own invariants to
        ``super().check_state(state)``; a state that lacks tensors or has the wrong shapes may be
        left to :meth:`load_state_dict` to refuse.
        """
        return finite_problems(state)

    def _shape(self) -> tuple[int, ...]:
        if self.latent_shape is None:
            raise SamplerError(f"{type(self).__name__} is not fitted: call fit(context) first")
        return self.latent_shape

    def _check_n(self, n: int) -> int:
        return check_int("n", n, 0, error=SamplerError)
