"""The data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020): the statistic C_T.

"A non-parametric test to detect data-copying in generative models" compares three sets in one
feature space: the training set T, held-out data P_n from the same distribution that the model
never saw, and generated samples Q_m. A model that copies puts its samples closer to the
training points than fresh data from the distribution lies; a model that underfits puts them
further away. The test measures this locally:

1. the space is cut into k cells by k-means fitted on T (scikit-learn's ``KMeans``);
2. every held-out point and every sample gets its distance to the nearest training point
   (scikit-learn's ``NearestNeighbors``, Euclidean);
3. in each cell π, the Mann-Whitney U statistic compares the samples' distances with the
   held-out points' distances and is turned into its Z-score Z_U(π) (normal approximation,
   with the correction for ties, without continuity correction): negative when the samples lie
   closer to T than held-out data does;
4. C_T = Σ P_n(π) Z_U(π) / Σ P_n(π) over the cells π that hold at least ``min_per_cell``
   samples (Q_m(π) ≥ τ with τ = min_per_cell / m, 20 / m by default as in the paper), where
   P_n(π) is the fraction of held-out points in π. A cell with no held-out point has no Z and
   weight 0: it is left out as well.

Reading it: C_T ≈ 0 when the samples are as far from the training set as fresh data is; C_T ≪ 0
means copying (``copying`` is C_T < :data:`COPYING_THRESHOLD`, −3, as aesampler's issue 16 flags
it); C_T > 0 means samples further from the training set than held-out data (underfitting, or
samples off the data). Under the null hypothesis every Z_U(π) is about N(0, 1), so C_T, their
weighted mean, scatters less than one unit around 0.

:func:`data_copying` computes it on NumPy arrays; :class:`DataCopying` is the registered metric
``data_copying``, the same statistic at every evaluated chain step in the evaluation's feature
space. SciPy and scikit-learn are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..checks import check_int
from ..errors import AesamplerError, named
from .metrics import EvaluationData, Metric
from .stats import Estimate

#: C_T below this flags a configuration as copying (issue 16).
COPYING_THRESHOLD = -3.0
#: At most this many k-means cells when ``cells`` is not given.
MAX_CELLS = 20
#: Held-out points per cell, on average, when ``cells`` is not given; also the fewest held-out
#: points :func:`data_copying` accepts.
HELD_OUT_PER_CELL = 20
#: The default fewest samples a cell must hold to count (τ = MIN_PER_CELL / m).
MIN_PER_CELL = 20
#: k-means runs from different k-means++ starts (the best, by inertia, is kept). One is enough:
#: the test is valid for any partition fixed by T alone, the best clustering is not needed, and
#: each run costs seconds on 10 000 training rows of 128 features.
KMEANS_RESTARTS = 1


@dataclass(frozen=True)
class CopyingResult:
    """The data-copying test's outcome.

    Attributes:
        ct: the statistic C_T (NaN when no cell holds enough samples and a held-out point).
        copying: whether C_T < ``threshold``.
        threshold: the threshold used (default :data:`COPYING_THRESHOLD`).
        cells: k, the number of k-means cells.
        kept: the cells that count towards C_T, in increasing order.
        z: Z_U of every cell, by cell (NaN for the cells not kept).
        held_out_fraction: P_n(π), the fraction of held-out points in each cell.
        sample_fraction: Q_m(π), the fraction of samples in each cell.
        min_per_cell: the fewest samples a kept cell holds (τ = min_per_cell / m).
    """

    ct: float
    copying: bool
    threshold: float
    cells: int
    kept: tuple[int, ...]
    z: tuple[float, ...]
    held_out_fraction: tuple[float, ...]
    sample_fraction: tuple[float, ...]
    min_per_cell: int


def mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """The Z-score of the Mann-Whitney U statistic of ``x`` against ``y``.

    U counts the pairs (x_i, y_j) with x_i > y_j, ties counting one half (SciPy's
    ``mannwhitneyu(x, y).statistic``); Z = (U − m n / 2) / σ, with the tie-corrected variance
    σ² = m n / 12 · ((N + 1) − Σ (t³ − t) / (N (N − 1))), N = m + n, t the sizes of the groups
    of tied values, and no continuity correction. Negative when x tends to be smaller than y.
    When every value is tied σ is 0 and Z is 0 (no evidence either way).
    """
    from scipy.stats import rankdata

    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise AesamplerError(f"mann_whitney_z needs values in both sets, got {m} and {n}")
    pooled = np.concatenate([x, y])
    u = float(rankdata(pooled)[:m].sum()) - m * (m + 1) / 2
    total = m + n
    _, ties = np.unique(pooled, return_counts=True)
    tied = float((ties.astype(float) ** 3 - ties).sum()) / (total * (total - 1))
    variance = m * n / 12 * ((total + 1) - tied)
    if variance <= 0:
        return 0.0
    return (u - m * n / 2) / math.sqrt(variance)


def default_cells(train: int, held_out: int, samples: int, min_per_cell: int = MIN_PER_CELL) -> int:
    """k when it is not given: min(20, n // 20, m // (2 min_per_cell), N), at least 1.

    n held-out points, m samples, N training points. Each cell then holds on average at least 20
    held-out points (so that its Z has data on both sides) and twice ``min_per_cell`` samples
    (so that most cells count towards C_T: with only ``min_per_cell`` on average, about half of
    them would fall short), and there are no more cells than training points. With aesampler's
    default evaluation (1000 chains, 1000 held-out images) k is 20.
    """
    per_cell = 2 * min_per_cell
    return max(1, min(MAX_CELLS, held_out // HELD_OUT_PER_CELL, samples // per_cell, train))


def _rows(value, argument: str) -> np.ndarray:
    try:
        x = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise AesamplerError(f"{argument} must be a numeric array (N, F): {error}") from None
    if x.ndim != 2:
        raise AesamplerError(
            f"{argument} must be a 2-D array (N, F) of feature rows, got shape {x.shape}"
        )
    if x.shape[1] == 0:
        raise AesamplerError(f"{argument} has no feature columns (shape {x.shape})")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AesamplerError(f"{argument}: {bad} of {x.size} values are NaN or infinite")
    return x


def _positive_int(value, argument: str) -> int:
    return int(check_int(argument, value, error=AesamplerError, types=(int, np.integer)))


def check_inputs(
    train, held_out, samples, *, cells: int | None, min_per_cell: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The three sets as float64 rows and k, or an AesamplerError naming what is wrong or short."""
    min_per_cell = _positive_int(min_per_cell, "min_per_cell")
    if cells is not None:
        cells = _positive_int(cells, "cells")
    train = _rows(train, "train")
    held_out = _rows(held_out, "held_out")
    samples = _rows(samples, "samples")
    width = train.shape[1]
    for argument, x in (("held_out", held_out), ("samples", samples)):
        if x.shape[1] != width:
            raise AesamplerError(
                f"{argument} has {x.shape[1]} features per row but train has {width}: the three "
                "sets must be in the same feature space"
            )
    if len(held_out) < HELD_OUT_PER_CELL:
        raise AesamplerError(
            f"data_copying needs at least {HELD_OUT_PER_CELL} held-out points, got "
            f"{len(held_out)} in held_out"
        )
    if len(samples) < min_per_cell:
        raise AesamplerError(
            f"data_copying needs at least min_per_cell={min_per_cell} samples (no cell could "
            f"count otherwise), got {len(samples)} in samples"
        )
    k = (
        cells
        if cells is not None
        else default_cells(len(train), len(held_out), len(samples), min_per_cell)
    )
    if len(train) < max(k, 2):
        raise AesamplerError(
            f"data_copying needs at least {max(k, 2)} training points for {k} k-means cells, got "
            f"{len(train)} in train"
        )
    return train, held_out, samples, k


class TrainingPartition:
    """The k-means cells of the training set and its nearest-neighbour index, fitted once."""

    def __init__(self, train: np.ndarray, cells: int, seed: int = 0):
        from sklearn.cluster import KMeans
        from sklearn.neighbors import NearestNeighbors

        self.cells = cells
        self.kmeans = KMeans(n_clusters=cells, n_init=KMEANS_RESTARTS, random_state=seed)
        self.kmeans.fit(train)
        self.neighbours = NearestNeighbors(n_neighbors=1).fit(train)

    def locate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's cell and its Euclidean distance to the nearest training point."""
        distances, _ = self.neighbours.kneighbors(x)
        return self.kmeans.predict(x), distances[:, 0]


def copying_statistic(
    held_out: tuple[np.ndarray, np.ndarray],
    samples: tuple[np.ndarray, np.ndarray],
    cells: int,
    *,
    min_per_cell: int = MIN_PER_CELL,
    threshold: float = COPYING_THRESHOLD,
) -> CopyingResult:
    """C_T from located points: ``(cell, distance to T)`` arrays of the held-out points and of
    the samples (:meth:`TrainingPartition.locate`), in ``cells`` cells."""
    held_cells, held_distances = held_out
    sample_cells, sample_distances = samples
    held_fraction = np.bincount(held_cells, minlength=cells) / len(held_cells)
    sample_counts = np.bincount(sample_cells, minlength=cells)
    z = np.full(cells, np.nan)
    kept = []
    for cell in range(cells):
        if sample_counts[cell] < min_per_cell or held_fraction[cell] == 0:
            continue
        z[cell] = mann_whitney_z(
            sample_distances[sample_cells == cell], held_distances[held_cells == cell]
        )
        kept.append(cell)
    if kept:
        weights = held_fraction[kept]
        ct = float((weights * z[kept]).sum() / weights.sum())
    else:
        ct = math.nan
    return CopyingResult(
        ct=ct,
        copying=bool(ct < threshold),  # False for NaN
        threshold=float(threshold),
        cells=cells,
        kept=tuple(kept),
        z=tuple(float(v) for v in z),
        held_out_fraction=tuple(float(v) for v in held_fraction),
        sample_fraction=tuple(float(v) for v in sample_counts / len(sample_cells)),
        min_per_cell=min_per_cell,
    )


def data_copying(
    train,
    held_out,
    samples,
    *,
    cells: int | None = None,
    min_per_cell: int = MIN_PER_CELL,
    threshold: float = COPYING_THRESHOLD,
    seed: int = 0,
) -> CopyingResult:
    """The data-copying statistic C_T of Meehan, Chaudhuri and Dasgupta (AISTATS 2020).

    Args:
        train: the training set T, rows of features (N, F).
        held_out: data from the same distribution, not trained on, P_n (n, F); at least 20 rows.
        samples: the generated samples Q_m (m, F); at least ``min_per_cell`` rows.
        cells: k, the number of k-means cells fitted on ``train``. Default:
            min(20, n // 20, m // (2 min_per_cell), N), at least 1 (:func:`default_cells`), so
            that each cell holds on average 20 held-out points and twice ``min_per_cell``
            samples.
        min_per_cell: a cell counts towards C_T only if it holds at least this many samples
            (the paper's Q_m(π) ≥ τ with τ = min_per_cell / m; default 20) and a held-out point.
        threshold: C_T below it sets ``copying`` (default :data:`COPYING_THRESHOLD`, −3).
        seed: the k-means seed.

    Returns:
        A :class:`CopyingResult`: C_T (≈ 0 for samples as far from T as fresh data; ≪ 0 for
        copies of T; > 0 for samples further away than fresh data), Z_U by cell, the cells
        kept and their fractions. C_T is NaN, and ``copying`` False, when no cell qualifies.

    Raises:
        AesamplerError: an input that is not a finite 2-D array, sets of different feature
        counts, fewer than 20 held-out points, fewer samples than ``min_per_cell``, or fewer
        training points than cells (the message names the input that is short).
    """
    train, held_out, samples, k = check_inputs(
        train, held_out, samples, cells=cells, min_per_cell=min_per_cell
    )
    partition = TrainingPartition(train, k, seed)
    return copying_statistic(
        partition.locate(held_out),
        partition.locate(samples),
        k,
        min_per_cell=min_per_cell,
        threshold=threshold,
    )


class DataCopying(Metric):
    """C_T of the data-copying test in feature space: training, held-out and sample features.

    The value is the test statistic itself, without a bootstrap interval (low = high = value):
    near 0 is good, strongly negative (below −3) means the samples copy training images,
    positive means they lie further from the training images than held-out images do. Neither
    direction is better, so ``lower_is_better`` is None. Undefined ({}) at a step where no cell
    holds enough samples.

    Args:
        cells: k-means cells (default: chosen from the sizes, see :func:`data_copying`).
        min_per_cell: the fewest samples a cell needs to count (default 20).
    """

    space = "image"
    lower_is_better = None
    requires = ("train_images",)

    def __init__(self, cells: int | None = None, min_per_cell: int = MIN_PER_CELL):
        check_int("cells", cells, allow_none=True)
        check_int("min_per_cell", min_per_cell)
        self.cells, self.min_per_cell = cells, min_per_cell
        self.min_samples = max(min_per_cell, HELD_OUT_PER_CELL)

    def compute(self, data: EvaluationData, step: int) -> dict[str, Estimate]:
        if data.train_features is None:
            train = named("train_images", recipe=None)  # a recipe always has them
            raise AesamplerError(
                "data_copying needs the training images' features: give training images"
                + (f" ({train})" if train else "")
            )
        train = data.train_features()
        train, held_out, samples, k = check_inputs(
            train,
            data.reference_features,
            data.features(step),
            cells=self.cells,
            min_per_cell=self.min_per_cell,
        )
        key = ("data_copying", k, data.seed)
        if key not in data.cache:  # the cells and the held-out distances serve every step
            partition = TrainingPartition(train, k, data.seed)
            data.cache[key] = (partition, partition.locate(held_out))
        partition, located = data.cache[key]
        result = copying_statistic(
            located, partition.locate(samples), k, min_per_cell=self.min_per_cell
        )
        if math.isnan(result.ct):
            return {}
        return {"data_copying": Estimate(result.ct, result.ct, result.ct)}
