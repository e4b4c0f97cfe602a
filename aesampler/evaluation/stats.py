"""The statistics behind the metrics, on NumPy arrays.

* :func:`mmd2_unbiased`: squared maximum mean discrepancy with an RBF kernel (Gretton et al.,
  2012, unbiased estimator), its bandwidth set by the median heuristic;
* :func:`frechet_distance`: ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the square root through
  symmetric eigenvalues;
* :func:`knn_radii` and :func:`within_radii`: the k-nearest-neighbour balls of Kynkäänniemi et
  al. (2019) for precision and recall, by scikit-learn;
* :func:`bootstrap`: confidence intervals over resampled sample indices, drawn as SciPy's
  ``stats.bootstrap`` draws them: the spread of the resampled numbers around their median,
  placed at the estimate (so a statistic whose resamples are biased, as the plug-in Fréchet
  distance's are, still has its estimate inside its interval); a statistic may give every
  resample's value at once (:func:`mmd2_resampled`, :func:`frechet_resampled`,
  :func:`mean_resampled`), which is what makes 200 resamples of a 768-D Fréchet distance take
  seconds rather than minutes;
* chain diagnostics (R-hat, ESS) come from arviz-stats.

SciPy and scikit-learn are imported inside the functions that use them, so that importing the
metrics (as ``aesampler plugins`` and ``aesampler validate`` do) does not import them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class Estimate:
    """A number with a bootstrap confidence interval (``low <= value <= high``)."""

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


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """K(a, b) for k(u, v) = exp(−‖u − v‖² / (2 h²)), h the bandwidth."""
    from scipy.spatial.distance import cdist

    return np.exp(-cdist(a, b, "sqeuclidean") / (2.0 * bandwidth**2))


def rbf_kernel_blocks(
    x: np.ndarray, y: np.ndarray, bandwidth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K(x, x), K(y, y), K(x, y) for k(a, b) = exp(−‖a − b‖² / (2 h²))."""
    return rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)


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


def mmd2_resampled(
    kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, ix: np.ndarray, iy: np.ndarray
) -> np.ndarray:
    """:func:`mmd2_from_kernels` of every resample at once, from (resamples, n) index arrays.

    A resample is a vector of counts c, so the sums over its pairs are quadratic forms of the
    full blocks: Σ over pairs of distinct points c_a c_b k_ab = cᵀKc − Σ c_a² k_aa, over
    n² − Σ c_a² pairs; the cross term is c_xᵀ K_xy c_y / (n m). One matrix product per block
    replaces a gather of an n × n block per resample.
    """
    cx, cy = resample_counts(ix, len(kxx)), resample_counts(iy, len(kyy))

    def within(k: np.ndarray, c: np.ndarray) -> np.ndarray:
        n = c.shape[1]
        total = ((c @ k) * c).sum(axis=1)
        pairs = n * n - (c * c).sum(axis=1)
        distinct = total - (c * c) @ np.diag(k)
        # a resample of copies of one point has no pair of distinct draws: a point mass
        return np.where(pairs > 0, distinct / np.maximum(pairs, 1), total / (n * n))

    cross = ((cx @ kxy) * cy).sum(axis=1) / (cx.shape[1] * cy.shape[1])
    return within(kxx, cx) + within(kyy, cy) - 2 * cross


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
    with threadpool_limits(limits=1):  # small matrices: see _over_batches
        w, v = linalg.eigh(cov1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ1^½
        middle = root1 @ cov2 @ root1
        trace_root = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


#: Working memory (bytes) of one batch of resamples in :func:`frechet_resampled`.
FRECHET_BATCH_BYTES = 64 * 2**20


def frechet_resampled(x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """The Fréchet distance between Gaussians fitted to resamples of x and of y, one per row.

    ``ix`` and ``iy`` are (resamples, n) index arrays; row b gives the same number as
    ``frechet_distance(*gaussian_stats(x[ix[b]]), *gaussian_stats(y[iy[b]]))`` up to rounding.
    A resample is a vector of counts c: its mean is cᵀx / n and its covariance comes from
    weighted second moments, so nothing is gathered. The trace Tr (Σ1 Σ2)^½ is Σ √λ of a
    symmetric matrix with the eigenvalues of Σ1 Σ2, taken in the smaller of two spaces:

    * features (F × F), when F is at most the number of distinct rows of a resample:
      Σ1^½ Σ2 Σ1^½, as :func:`frechet_distance` computes it;
    * rows (m × m), when the features outnumber them (768 pixel features, 1000 samples, of
      which a resample holds about 632 distinct ones): with A1, A2 the centred rows weighted by
      √c, Σ1 Σ2 ∝ A1ᵀ A1 A2ᵀ A2 has the nonzero eigenvalues of Mᵀ M for M = A2 A1ᵀ, whose
      entries come from the cross Gram matrix y xᵀ computed once for all resamples.

    Resamples are processed in batches of about ``FRECHET_BATCH_BYTES`` of working memory.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ix, iy = np.atleast_2d(ix), np.atleast_2d(iy)
    if len(ix) != len(iy):
        raise ValueError(f"ix and iy must hold as many resamples, got {len(ix)} and {len(iy)}")
    shift = x.mean(axis=0) - y.mean(axis=0)
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)  # centred: the moments below lose no digits
    cx, cy = resample_counts(ix, len(x)), resample_counts(iy, len(y))
    nx, ny = ix.shape[1], iy.shape[1]
    mx, my = cx @ x / nx, cy @ y / ny  # resample means of the centred rows
    diff = mx - my + shift
    trace_x = (cx @ (x * x).sum(axis=1) - nx * (mx * mx).sum(axis=1)) / (nx - 1)
    trace_y = (cy @ (y * y).sum(axis=1) - ny * (my * my).sum(axis=1)) / (ny - 1)
    distinct = min(int((cx > 0).sum(axis=1).max()), int((cy > 0).sum(axis=1).max()))
    if x.shape[1] <= distinct:
        root = _trace_root_features(x, y, cx, cy, mx, my)
    else:
        root = _trace_root_rows(x, y, cx, cy)
    return (diff * diff).sum(axis=1) + trace_x + trace_y - 2 * root


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _over_batches(work: Callable[[slice], np.ndarray], total: int, item_bytes: int) -> np.ndarray:
    """``work`` on consecutive batches of ``total`` resamples, one batch per core at a time.

    Each batch takes about ``FRECHET_BATCH_BYTES`` (``item_bytes`` per resample). The batches
    run in threads with BLAS and LAPACK held to one thread each: the matrices are small, and a
    multi-threaded eigensolver on a 128 × 128 matrix spends its time waiting for its own
    threads (ten times slower than one thread when other processes load the cores).
    """
    cores = _cores()
    size = max(1, min(FRECHET_BATCH_BYTES // max(1, item_bytes), -(-total // cores)))
    parts = [slice(start, start + size) for start in range(0, total, size)]
    with threadpool_limits(limits=1), ThreadPoolExecutor(min(cores, len(parts))) as pool:
        return np.concatenate(list(pool.map(work, parts)))


def _weighted_cov(rows: np.ndarray, counts: np.ndarray, means: np.ndarray, n: int) -> np.ndarray:
    """np.cov of each resample (counts (B, rows), n draws) of ``rows``, by second moments."""
    moments = np.matmul(rows.T, counts[:, :, None] * rows)
    return (moments - n * means[:, :, None] * means[:, None, :]) / (n - 1)


def _root_sum(matrices: np.ndarray) -> np.ndarray:
    """Σ √λ over the eigenvalues of each symmetric positive semi-definite matrix (negatives: 0)."""
    symmetric = (matrices + matrices.transpose(0, 2, 1)) / 2
    return np.sqrt(np.clip(np.linalg.eigvalsh(symmetric), 0, None)).sum(axis=1)


def _trace_root_features(x, y, cx, cy, mx, my) -> np.ndarray:
    f, nx, ny = x.shape[1], int(cx[0].sum()), int(cy[0].sum())

    def work(part: slice) -> np.ndarray:
        cov1 = _weighted_cov(x, cx[part], mx[part], nx)
        cov2 = _weighted_cov(y, cy[part], my[part], ny)
        w, v = np.linalg.eigh(cov1)
        root1 = np.matmul(v * np.sqrt(np.clip(w, 0, None))[:, None, :], v.transpose(0, 2, 1))
        return _root_sum(root1 @ cov2 @ root1)

    return _over_batches(work, len(cx), 8 * (len(x) + len(y) + 6 * f) * f)


def _trace_root_rows(x, y, cx, cy) -> np.ndarray:
    nx, ny = int(cx[0].sum()), int(cy[0].sum())
    gram = y @ x.T  # (len(y), len(x)), once for all resamples
    present_x, weight_x = _present(cx)
    present_y, weight_y = _present(cy)
    small = min(present_x.shape[1], present_y.shape[1])

    def work(part: slice) -> np.ndarray:
        c1, c2 = cx[part], cy[part]
        # entries of (y_j − μ2) · (x_i − μ1) from the Gram matrix: double centring by weights
        to_mean_x = c1 @ gram.T / nx  # (B, len(y)): y_j · μ1
        to_mean_y = c2 @ gram / ny  # (B, len(x)): μ2 · x_i
        between = (to_mean_y * c1).sum(axis=1) / nx  # μ2 · μ1
        rows, cols = present_y[part], present_x[part]
        centred = (
            gram[rows[:, :, None], cols[:, None, :]]
            - np.take_along_axis(to_mean_x, rows, axis=1)[:, :, None]
            - np.take_along_axis(to_mean_y, cols, axis=1)[:, None, :]
            + between[:, None, None]
        )
        m = np.sqrt(weight_y[part])[:, :, None] * centred * np.sqrt(weight_x[part])[:, None, :]
        mtm = m.transpose(0, 2, 1) @ m if m.shape[2] <= m.shape[1] else m @ m.transpose(0, 2, 1)
        return _root_sum(mtm)

    item_bytes = 8 * (3 * present_x.shape[1] * present_y.shape[1] + small**2)
    return _over_batches(work, len(cx), item_bytes) / np.sqrt((nx - 1) * (ny - 1))


def _present(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows each resample holds and their counts, padded with weight 0 to a common width."""
    width = int((counts > 0).sum(axis=1).max())
    order = np.argsort(counts == 0, axis=1, kind="stable")[:, :width]  # present rows first
    return order, np.take_along_axis(counts, order, axis=1)


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


def resample_indices(sizes: tuple[int, ...], resamples: int, seed: int) -> list[np.ndarray]:
    """The bootstrap's resamples: one (resamples, n) array of indices drawn with replacement
    for each sample size, each sample drawn independently of the others.

    Drawn as SciPy's ``stats.bootstrap`` (unpaired, in one batch) draws them from
    ``np.random.default_rng(seed)``, one ``integers(0, n, (resamples, n))`` per sample in order,
    so intervals made from them equal SciPy's for the same statistic and seed.
    """
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, (resamples, n)) for n in sizes]


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of n rows appears in each resample: (resamples, n) floats from indices."""
    indices = np.atleast_2d(indices)
    flat = (indices + n * np.arange(len(indices))[:, None]).ravel()
    return np.bincount(flat, minlength=n * len(indices)).reshape(len(indices), n).astype(float)


def mean_resampled(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The mean of ``values`` over each resample (a row of ``indices``)."""
    return values[indices].mean(axis=1)


def bootstrap(
    statistic: Callable[..., float],
    sizes: tuple[int, ...],
    *,
    resamples: int,
    confidence: float,
    seed: int,
    batched: Callable[..., np.ndarray] | None = None,
) -> Estimate:
    """The statistic on all data, with a bootstrap interval that contains it.

    ``statistic(*index_arrays)`` computes the number from the given indices into each sample;
    each sample is resampled with replacement independently of the others
    (:func:`resample_indices`, SciPy's draws). ``batched``, when given, computes every
    resample's number in one call from (resamples, n) index arrays, row b being resample b; it
    must equal ``statistic`` on each row, and saves a Python call (and, for the Fréchet
    distance, two eigendecompositions) per resample.

    The interval is SciPy's percentile interval (the ``(1 ± confidence) / 2`` quantiles of the
    resampled numbers, linearly interpolated, as ``method="percentile"`` takes them) moved from
    the resamples' median to the value (:func:`placed_at`): the bootstrap's estimate of the
    statistic's median bias is taken out. For an unbiased statistic (a mean) the median is the
    value up to resampling noise and the interval barely moves; for one whose resamples run
    high (the plug-in Fréchet distance, which every resample can exceed) the percentile interval
    would miss the value, and this one gives where the value would fall on new samples of the
    same sizes. BCa (``method="BCa"``) is no remedy there: with the value below (nearly) every
    resample its bias correction is infinite (SciPy returns NaN) or collapses the interval onto
    the lowest resamples (docs/evaluation.md). With fewer than 2 resamples, or a sample of a
    single point (whose every resample is itself), the interval is the value itself.
    """
    full = [np.arange(n) for n in sizes]
    value = float(statistic(*full))
    if resamples < 2 or min(sizes) < 2:
        return Estimate(value, value, value)
    indices = resample_indices(sizes, resamples, seed)
    if batched is None:
        distribution = np.array([statistic(*(i[b] for i in indices)) for b in range(resamples)])
    else:
        distribution = np.asarray(batched(*indices), dtype=float)
        if distribution.shape != (resamples,):
            raise ValueError(
                f"a batched bootstrap statistic must return one number per resample, shape "
                f"({resamples},), got shape {distribution.shape}"
            )
    alpha = (1 - confidence) / 2
    low, middle, high = np.quantile(distribution, [alpha, 0.5, 1 - alpha])
    return placed_at(
        value,
        float(low),
        float(middle),
        float(high),
        positive=value > 0 and bool((distribution > 0).all()),
    )


def placed_at(value: float, low: float, middle: float, high: float, *, positive: bool) -> Estimate:
    """The interval [low, high] of resampled numbers with median ``middle``, moved to ``value``.

    Its ends keep their ratios to the median when the value and every resampled number are
    positive (``positive``: a distance or a rate, whose spread grows with its size; the interval
    stays positive), else their differences from it. Either way low <= value <= high, also after
    rounding: the ratios are at most and at least 1, the differences at least 0.
    """
    if positive:
        return Estimate(value, value * min(low / middle, 1.0), value * max(high / middle, 1.0))
    return Estimate(value, value - (middle - low), value + (high - middle))
