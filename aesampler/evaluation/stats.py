"""The statistics behind the metrics, on NumPy arrays.

* :func:`mmd2_unbiased`: squared maximum mean discrepancy with an RBF kernel (Gretton et al.,
  2012, unbiased estimator), its bandwidth set by the median heuristic;
* :func:`frechet_distance`: ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the square root by SciPy;
* :func:`knn_radii` and :func:`within_radii`: the k-nearest-neighbour balls of Kynkäänniemi et
  al. (2019) for precision and recall, by scikit-learn;
* :func:`bootstrap`: percentile confidence intervals by SciPy's bootstrap over sample indices;
* chain diagnostics (R-hat, ESS) come from arviz-stats.

SciPy and scikit-learn are imported inside the functions that use them, so that importing the
metrics (as ``aesampler plugins`` and ``aesampler validate`` do) does not import them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A number with a bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def median_bandwidth(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> float:
    """The median pairwise Euclidean distance in the pooled sample (the median heuristic).

    When that median is 0 (more than half of the pooled points coincide, for example samples
    that are all identical) the bandwidth is 1 instead, so the kernel stays defined.
    """
    from scipy.spatial.distance import cdist

    pooled = np.concatenate([x, y])[:max_points]
    distances = cdist(pooled, pooled)
    upper = distances[np.triu_indices(len(pooled), k=1)]
    return float(np.median(upper)) or 1.0


def rbf_kernel_blocks(
    x: np.ndarray, y: np.ndarray, bandwidth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K(x, x), K(y, y), K(x, y) for k(a, b) = exp(−‖a − b‖² / (2 h²))."""
    from scipy.spatial.distance import cdist

    gamma = 1.0 / (2.0 * bandwidth**2)
    return (
        np.exp(-gamma * cdist(x, x, "sqeuclidean")),
        np.exp(-gamma * cdist(y, y, "sqeuclidean")),
        np.exp(-gamma * cdist(x, y, "sqeuclidean")),
    )


def mmd2_from_kernels(
    kxx: np.ndarray,
    kyy: np.ndarray,
    kxy: np.ndarray,
    ix: np.ndarray | None = None,
    iy: np.ndarray | None = None,
) -> float:
    """Unbiased MMD² from kernel blocks, optionally of a resample given by indices.

    The within-sample means leave out pairs of a point with itself. In a bootstrap resample a
    point can appear twice; pairs of copies are left out too (``ix``, ``iy`` index the full
    blocks), or every duplicate would add k(x, x) = 1 and bias the resampled values upwards.
    A resample made of copies of a single point has no pair of distinct draws; its within-sample
    mean is then that of a point mass, k(x, x) = 1, rather than 0 / 0.
    """
    ix = np.arange(len(kxx)) if ix is None else ix
    iy = np.arange(len(kyy)) if iy is None else iy

    def within(k: np.ndarray, index: np.ndarray) -> float:
        block = k[np.ix_(index, index)]
        distinct = index[:, None] != index[None, :]
        pairs = distinct.sum()
        return float((block * distinct).sum() / pairs) if pairs else float(block.mean())

    return within(kxx, ix) + within(kyy, iy) - 2 * float(kxy[np.ix_(ix, iy)].mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between samples x and y with an RBF kernel (median heuristic by default)."""
    bandwidth = bandwidth or median_bandwidth(x, y)
    return mmd2_from_kernels(*rbf_kernel_blocks(x, y, bandwidth))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    Tr (Σ1 Σ2)^½ is computed as Σ √λ of the symmetric Σ1^½ Σ2 Σ1^½ (symmetric eigensolvers),
    which stays real and stable when a covariance is singular, as features with dead ReLU
    units make it.
    """
    from scipy import linalg

    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    w, v = linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ1^½
    middle = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour among the others."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(points)
    distances, _ = nn.kneighbors(points)
    return distances[:, k]  # column 0 is the point itself


def within_radii(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each query, whether it lies in any centre's ball (Kynkäänniemi et al., 2019)."""
    from scipy.spatial.distance import cdist

    return (cdist(queries, centres) <= radii[None, :]).any(axis=1)


def bootstrap(
    statistic: Callable[..., float],
    sizes: tuple[int, ...],
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> Estimate:
    """The statistic on all data, with a percentile bootstrap interval.

    ``statistic(*index_arrays)`` computes the number from the given indices into each sample;
    each sample is resampled with replacement independently of the others. With fewer than 2
    resamples, or a sample of a single point (whose every resample is itself), the interval is
    the value itself.
    """
    full = [np.arange(n) for n in sizes]
    value = float(statistic(*full))
    if resamples < 2 or min(sizes) < 2:
        return Estimate(value, value, value)

    def on_indices(*indices: np.ndarray) -> float:
        return statistic(*(i.astype(np.int64) for i in indices))

    from scipy import stats

    result = stats.bootstrap(
        tuple(full),
        on_indices,
        n_resamples=resamples,
        vectorized=False,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return Estimate(
        value, float(result.confidence_interval.low), float(result.confidence_interval.high)
    )
