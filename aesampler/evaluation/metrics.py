"""The built-in metrics: how far the chain's samples are from the data, step by step.

Every metric is computed at each evaluated step t from the chains' z_t and x_t = d(z_t), against
held-out data, and comes with a bootstrap interval that contains it (the samples and the reference
are resampled independently; :func:`~aesampler.evaluation.stats.bootstrap` says how).

| metric | what | better |
|---|---|---|
| ``mmd_learned`` | MMD² between z_t and encodings of held-out images: distance to P̂(Z) | lower |
| ``mmd_prior`` | MMD² between z_t and fresh draws from the prior N(0, I) | (context) |
| ``step_size`` | mean ‖z_{t+1} − z_t‖ over chains | (context) |
| ``frechet`` | Fréchet distance between features of x_t and of held-out images | lower |
| ``precision_recall`` | k-NN precision and recall in feature space (Kynkäänniemi et al.) | higher |
| ``novelty`` | RMS pixel distance from x_t to its nearest training image | (context) |
| ``data_copying`` | data-copying statistic C_T (Meehan et al.), no interval | near 0 |
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_int
from ..errors import AesamplerError, named
from .stats import (
    Estimate,
    bootstrap,
    frechet_distance,
    frechet_resampled,
    gaussian_stats,
    knn_radii,
    mean_resampled,
    median_bandwidth,
    mmd2_from_kernels,
    mmd2_resampled,
    rbf_kernel_blocks,
    within_radii,
)

#: The metrics an evaluation computes when none are named (``evaluate.metrics``'s default):
#: those above but ``data_copying``, whose statistic has no interval.
DEFAULT_METRICS: tuple[str, ...] = (
    "mmd_learned",
    "mmd_prior",
    "step_size",
    "frechet",
    "precision_recall",
    "novelty",
)


@dataclass
class EvaluationData:
    """Everything a metric may use, as float64 NumPy arrays (rows are samples).

    Attributes:
        z: latents of every chain at every recorded step, by step (empty without latents).
        images: flattened pixels of x_t at the evaluated steps, by step.
        features: a function giving the feature-space rows of x_t (computed once, cached).
        reference_z: encodings of held-out images (a sample of P̂(Z)), or None.
        prior_z: draws from the prior (N(0, I) unless given), or None without latents.
        reference_features: feature-space rows of the held-out images.
        train_images: flattened pixels of (up to) the training images, for novelty, or None.
        resamples, confidence, seed: the bootstrap's settings.
        cache: scratch space shared by the metrics of one evaluation (k-NN indexes, radii).
        train_features: a function giving the feature-space rows of the training images
            (computed once, cached), or None without training images or image metrics.
    """

    z: dict[int, np.ndarray]
    images: dict[int, np.ndarray]
    features: Callable[[int], np.ndarray]
    reference_z: np.ndarray | None
    prior_z: np.ndarray | None
    reference_features: np.ndarray
    train_images: np.ndarray | None
    resamples: int = 200
    confidence: float = 0.95
    seed: int = 0
    cache: dict = field(default_factory=dict)
    train_features: Callable[[], np.ndarray] | None = None

    def boot(
        self,
        statistic: Callable[..., float],
        *sizes: int,
        batched: Callable[..., np.ndarray] | None = None,
    ) -> Estimate:
        """``statistic`` on all rows, with a bootstrap interval (see :func:`~.stats.bootstrap`).

        ``statistic(*indices)`` gets one integer index array per entry of ``sizes`` (rows of the
        arrays it compares, in that order): ``arange(n)`` for the value, then ``resamples``
        draws of n indices with replacement, each array drawn independently of the others.
        ``batched(*indices)``, if given, gets every draw at once, (resamples, n) arrays, and
        returns one number per row, equal to ``statistic`` on that row: one call instead of
        ``resamples``, for statistics that vectorise over resamples.
        """
        return bootstrap(
            statistic,
            sizes,
            resamples=self.resamples,
            confidence=self.confidence,
            seed=self.seed,
            batched=batched,
        )

    def boot_mean(self, values: np.ndarray) -> Estimate:
        """The mean of ``values`` (one per sample row), with a bootstrap interval."""
        return self.boot(
            lambda i: float(values[i].mean()),
            len(values),
            batched=lambda i: mean_resampled(values, i),
        )


class Metric(abc.ABC):
    """One or more numbers per evaluated chain step.

    ``compute(data, step)`` reads an :class:`EvaluationData` and returns ``{key: Estimate}``; the
    class attributes below say what it reads and how to read its numbers (docs/evaluation.md).
    """

    #: "latent" metrics read z (and so need latents); "image" metrics read x or its features.
    space: str = "latent"
    #: whether lower values mean samples closer to the data (None: context, not a score).
    lower_is_better: bool | None = True
    #: optional inputs read beyond what ``space`` implies (a latent metric always reads ``z``):
    #: any of "z", "reference_z", "prior_z", "train_images".
    requires: tuple[str, ...] = ()
    #: the fewest rows it needs in the samples at each step and in every set it compares them with.
    min_samples: int = 2

    @abc.abstractmethod
    def compute(self, data: EvaluationData, step: int) -> dict[str, Estimate]:
        """The metric's numbers at ``step`` by name; an empty dict where it is undefined."""


def _mmd(samples: np.ndarray, reference: np.ndarray, data: EvaluationData) -> Estimate:
    bandwidth = median_bandwidth(samples, reference)
    kxx, kyy, kxy = rbf_kernel_blocks(samples, reference, bandwidth)
    return data.boot(
        lambda i, j: mmd2_from_kernels(kxx, kyy, kxy, i, j),
        len(samples),
        len(reference),
        batched=lambda i, j: mmd2_resampled(kxx, kyy, kxy, i, j),
    )


class MMDLearned(Metric):
    """MMD² (RBF kernel, median-heuristic bandwidth, unbiased) from z_t to encoded held-out data."""

    requires = ("reference_z",)

    def compute(self, data, step):
        return {"mmd_learned": _mmd(data.z[step], data.reference_z, data)}


class MMDPrior(Metric):
    """MMD² (RBF kernel, median-heuristic bandwidth, unbiased) from z_t to prior draws.

    It assumes the prior N(0, I), whatever sampler the chains start from: it shows how far the
    latents are from the prior, which is context, not a score.
    """

    lower_is_better = None
    requires = ("prior_z",)

    def compute(self, data, step):
        return {"mmd_prior": _mmd(data.z[step], data.prior_z, data)}


class StepSize(Metric):
    """Mean Euclidean length of the chain's next move, ‖z_{t+1} − z_t‖."""

    lower_is_better = None

    def compute(self, data, step):
        if step + 1 not in data.z:
            return {}
        lengths = np.linalg.norm(data.z[step + 1] - data.z[step], axis=1)
        return {"step_size": data.boot_mean(lengths)}


class Frechet(Metric):
    """Fréchet distance between Gaussians fitted to sample and held-out features."""

    space = "image"

    def compute(self, data, step):
        fake, real = data.features(step), data.reference_features

        def distance(i, j):
            return frechet_distance(*gaussian_stats(fake[i]), *gaussian_stats(real[j]))

        def distances(i, j):  # every resample at once, from weighted moments
            return frechet_resampled(fake, real, i, j)

        return {"frechet": data.boot(distance, len(fake), len(real), batched=distances)}


class PrecisionRecall(Metric):
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls.

    Precision: the fraction of samples inside some held-out image's ball (radius: distance to its
    k-th nearest held-out neighbour); recall: the fraction of held-out images inside some
    sample's ball. The interval resamples the samples' (precision) or the images' (recall)
    indicators with the balls fixed.

    Args:
        k: the neighbour whose distance sets each ball's radius.
    """

    space = "image"
    lower_is_better = False

    def __init__(self, k: int = 3):
        self.k = check_int("k", k)
        self.min_samples = k + 1  # a ball needs k neighbours besides its centre

    def compute(self, data, step):
        fake, real = data.features(step), data.reference_features
        if self.k >= min(len(fake), len(real)):
            raise AesamplerError(  # evaluate and evaluate_samples check min_samples first
                f"precision_recall: k={self.k} needs more than {self.k} samples and held-out "
                f"images, got {len(fake)} and {len(real)}; lower k or raise "
                f"{named('evaluate.num_chains')} and {named('evaluate.reference_size')}"
            )
        key = ("real_radii", self.k)
        if key not in data.cache:
            data.cache[key] = knn_radii(real, self.k)
        in_real = within_radii(fake, real, data.cache[key]).astype(float)
        in_fake = within_radii(real, fake, knn_radii(fake, self.k)).astype(float)
        return {
            "precision": data.boot_mean(in_real),
            "recall": data.boot_mean(in_fake),
        }


class Novelty(Metric):
    """RMS pixel distance from each sample to its nearest training image (copies score 0)."""

    space = "image"
    lower_is_better = None
    requires = ("train_images",)

    def compute(self, data, step):
        distances = nearest_rms_distance(data.images[step], data.train_images, data.cache)
        return {"novelty": data.boot_mean(distances)}


def nearest_rms_distance(queries: np.ndarray, train: np.ndarray, cache: dict) -> np.ndarray:
    """Root-mean-square pixel distance from each query to its nearest training image."""
    from sklearn.neighbors import NearestNeighbors

    if "train_nn" not in cache:
        cache["train_nn"] = NearestNeighbors(n_neighbors=1).fit(train)
    distances, _ = cache["train_nn"].kneighbors(queries)
    return distances[:, 0] / np.sqrt(train.shape[1])
