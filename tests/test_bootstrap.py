"""The vectorised bootstrap equals the straightforward one it replaced; its intervals contain
their estimates.

The references live here, not in the package: SciPy's ``stats.bootstrap`` calling the statistic
once per resample (the implementation before issue #10), and the Fréchet distance and MMD of each
resample computed from the gathered rows. The fast paths must give the same resample indices, the
same numbers per resample within rounding, and so the same interval ends. Since issue 19 the
interval is SciPy's percentile interval moved from the resamples' median to the value
(``placed_at``), so the reference moves SciPy's ends by SciPy's resamples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aesampler.evaluation import EvaluationData, FeatureExtractor, evaluate_samples
from aesampler.evaluation.stats import (
    Estimate,
    bootstrap,
    frechet_distance,
    frechet_resampled,
    gaussian_stats,
    mean_resampled,
    mmd2_from_kernels,
    mmd2_resampled,
    placed_at,
    rbf_kernel_blocks,
    resample_counts,
    resample_indices,
)
from aesampler.plugins import load_registry

RNG = np.random.default_rng(0)


def scipy_percentile(statistic, sizes, *, resamples, confidence, seed):
    """The bootstrap before #10: SciPy's, one Python call of the statistic per resample.

    Returns the value on all data and SciPy's result (percentile interval, resampled numbers).
    """
    full = [np.arange(n) for n in sizes]
    value = float(statistic(*full))
    result = stats.bootstrap(
        tuple(full),
        lambda *indices: statistic(*(i.astype(np.int64) for i in indices)),
        n_resamples=resamples,
        vectorized=False,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return value, result


def scipy_bootstrap(statistic, sizes, *, resamples, confidence, seed) -> Estimate:
    """SciPy's percentile interval, moved from the median of SciPy's resamples to the value."""
    value, result = scipy_percentile(
        statistic, sizes, resamples=resamples, confidence=confidence, seed=seed
    )
    resampled = result.bootstrap_distribution
    return placed_at(
        value,
        float(result.confidence_interval.low),
        float(np.median(resampled)),
        float(result.confidence_interval.high),
        positive=value > 0 and bool((resampled > 0).all()),
    )


def slow_frechet(x, y, ix, iy) -> np.ndarray:
    """The Fréchet distance of each resample from its gathered rows."""
    return np.array(
        [frechet_distance(*gaussian_stats(x[i]), *gaussian_stats(y[j])) for i, j in zip(ix, iy)]
    )


def scale(x, y) -> float:
    """The size of the terms the Fréchet distance subtracts: rounding is relative to it."""
    gap = x.mean(axis=0) - y.mean(axis=0)
    return float(x.var(axis=0).sum() + y.var(axis=0).sum() + gap @ gap) or 1.0


def frechet_metric(fake: np.ndarray, real: np.ndarray, *, resamples: int, seed: int) -> Estimate:
    """The registered Fréchet metric's Estimate at step 0 for sample and reference features."""
    data = EvaluationData(
        z={},
        images={0: fake},
        features=lambda step: fake,
        reference_z=None,
        prior_z=None,
        reference_features=real,
        train_images=None,
        resamples=resamples,
        seed=seed,
    )
    return load_registry().create("metric", "frechet").compute(data, 0)["frechet"]


def test_resample_indices_are_scipys_draws_and_the_intervals_are_scipys():
    x, y = RNG.normal(size=70), RNG.normal(1.0, 2.0, size=50)

    def gap(i, j):
        return float(x[i].mean() - y[j].mean())

    def gaps(i, j):
        return x[i].mean(axis=1) - y[j].mean(axis=1)

    for confidence, seed in [(0.95, 0), (0.9, 7), (0.5, 3)]:
        settings = dict(resamples=150, confidence=confidence, seed=seed)
        expected = scipy_bootstrap(gap, (70, 50), **settings)
        # the same draws and the same quantiles, but for the last bits of the interpolation
        for got in (
            bootstrap(gap, (70, 50), **settings),
            bootstrap(gap, (70, 50), batched=gaps, **settings),
        ):
            assert got.value == expected.value
            assert got.low == pytest.approx(expected.low, rel=1e-12)
            assert got.high == pytest.approx(expected.high, rel=1e-12)


def test_resample_counts_and_means():
    ix = resample_indices((9,), 40, seed=2)[0]
    counts = resample_counts(ix, 9)
    assert counts.shape == (40, 9)
    for row, draws in zip(counts, ix):
        np.testing.assert_array_equal(row, np.bincount(draws, minlength=9))
    values = RNG.normal(size=9)
    np.testing.assert_allclose(mean_resampled(values, ix), [values[i].mean() for i in ix])


@pytest.mark.parametrize(
    ("n1", "n2", "dim"),
    [
        (300, 200, 16),  # features outnumbered by rows: the feature-space form
        (120, 100, 300),  # more features than rows: the row-space form
        (8, 11, 40),  # n < dim, and resamples with few distinct rows
        (3, 2, 5),  # tiny samples: many resamples are copies of one or two rows
    ],
)
def test_frechet_resampled_equals_the_distance_of_each_resample(n1, n2, dim):
    x = RNG.normal(size=(n1, dim)) @ RNG.normal(size=(dim, dim)) + 3.0
    y = RNG.normal(size=(n2, dim)) * 2.0 + 1.0
    x[:, 0] = 0.5  # a dead feature: singular covariances
    ix, iy = resample_indices((n1, n2), 60, seed=1)
    fast, slow = frechet_resampled(x, y, ix, iy), slow_frechet(x, y, ix, iy)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-9 * scale(x, y))


def test_frechet_resampled_of_identical_samples_is_zero():
    x = np.repeat(RNG.normal(size=(1, 6)), 30, axis=0)  # every row the same point
    ix, iy = resample_indices((30, 30), 20, seed=0)
    np.testing.assert_allclose(frechet_resampled(x, x, ix, iy), 0.0, atol=1e-12)
    y = RNG.normal(size=(40, 6))  # the same rows resampled alike: distance 0
    same = resample_indices((40,), 20, seed=0)[0]
    np.testing.assert_allclose(frechet_resampled(y, y, same, same), 0.0, atol=1e-9)


def test_frechet_resampled_rejects_unmatched_resamples():
    x = RNG.normal(size=(10, 3))
    with pytest.raises(ValueError, match="as many resamples"):
        frechet_resampled(x, x, np.zeros((4, 10), int), np.zeros((5, 10), int))


@pytest.mark.parametrize(("n1", "n2"), [(50, 40), (2, 3)])
def test_mmd2_resampled_equals_the_gathered_blocks(n1, n2):
    x, y = RNG.normal(size=(n1, 3)), RNG.normal(0.5, 1.0, size=(n2, 3))
    blocks = rbf_kernel_blocks(x, y, 1.3)
    ix, iy = resample_indices((n1, n2), 50, seed=4)
    ix[0] = 0  # a resample made of copies of one point: no pair of distinct draws
    slow = [mmd2_from_kernels(*blocks, i, j) for i, j in zip(ix, iy)]
    np.testing.assert_allclose(mmd2_resampled(*blocks, ix, iy), slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dim", [8, 64])
def test_the_frechet_metric_keeps_its_value_and_intervals(dim):
    """The metric's numbers before and after #10, on the same resample indices."""
    fake = RNG.normal(size=(40, dim)) + 0.3
    real = RNG.normal(size=(50, dim)) * 1.5
    got = frechet_metric(fake, real, resamples=80, seed=5)

    def distance(i, j):
        return frechet_distance(*gaussian_stats(fake[i]), *gaussian_stats(real[j]))

    before = scipy_bootstrap(distance, (40, 50), resamples=80, confidence=0.95, seed=5)
    assert got.value == before.value
    assert got.low == pytest.approx(before.low, rel=1e-6)
    assert got.high == pytest.approx(before.high, rel=1e-6)


def test_a_batched_statistic_of_the_wrong_shape_is_one_clear_error():
    values = RNG.normal(size=20)
    with pytest.raises(ValueError, match=r"one number per resample, shape \(30,\)"):
        bootstrap(
            lambda i: values[i].mean(),
            (20,),
            resamples=30,
            confidence=0.95,
            seed=0,
            batched=lambda i: values[i].mean(),
        )


class Untouchable(FeatureExtractor):
    """A feature extractor that fails if anything prepares or runs it."""

    name = "untouchable"

    def prepare(self, *args, **kwargs):
        raise AssertionError("prepared although every metric is latent-space")

    def features(self, x):
        raise AssertionError("features computed although every metric is latent-space")


def test_latent_only_metrics_prepare_no_feature_extractor():
    generator = torch.Generator().manual_seed(0)
    samples = torch.rand(30, 1, 4, 4, generator=generator)
    latents = torch.randn(30, 5, generator=generator)
    report = evaluate_samples(
        samples,
        torch.rand(40, 1, 4, 4, generator=generator),
        metrics=["mmd_learned", "mmd_prior"],
        features=Untouchable(),
        latents=latents,
        reference_latents=torch.randn(40, 5, generator=generator),
        bootstrap=10,
        log=lambda line: None,
    )
    assert set(report["metrics"]) == {"mmd_learned", "mmd_prior"}
    assert report["feature_extractor"] == {
        "name": "untouchable",
        "note": "not prepared: every metric is latent-space",
    }


# Intervals contain their estimates (issue 19, item 5) -------------------------------------------


def _frechet_of_two_draws(rows: int, dim: int, seed: int):
    """Two samples of one Gaussian and the Fréchet metric's Estimate for them."""
    rng = np.random.default_rng(seed)
    fake, real = rng.normal(size=(rows, dim)), rng.normal(size=(rows, dim))
    return fake, real, frechet_metric(fake, real, resamples=200, seed=0)


def test_the_frechet_distance_of_one_gaussian_lies_inside_its_interval():
    """The plug-in Fréchet distance is biased upward, its resamples more so: SciPy's percentile
    interval misses the value, which the interval placed at the value contains."""
    fake, real, got = _frechet_of_two_draws(60, 4, seed=0)

    def distance(i, j):
        return frechet_distance(*gaussian_stats(fake[i]), *gaussian_stats(real[j]))

    value, before = scipy_percentile(distance, (60, 60), resamples=200, confidence=0.95, seed=0)
    assert got.value == value
    low, high = before.confidence_interval.low, before.confidence_interval.high
    assert value < low  # the percentile interval misses it
    assert 0 < got.low <= value <= got.high  # this one holds it, and stays positive
    # The same spread relative to the median, placed at the value.
    middle = np.median(before.bootstrap_distribution)
    assert (got.low / value, got.high / value) == pytest.approx((low / middle, high / middle))
    width = high - low
    # BCa is no remedy: its bias correction pushes both ends onto the lowest resamples.
    bca = stats.bootstrap(
        (np.arange(60), np.arange(60)),
        lambda i, j, axis=-1: frechet_resampled(fake, real, i.astype(int), j.astype(int)),
        vectorized=True,
        paired=False,
        n_resamples=200,
        method="BCa",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert float(np.squeeze(bca.high) - np.squeeze(bca.low)) < width / 100


@pytest.mark.parametrize("seed", range(5))
def test_the_frechet_value_is_inside_at_every_draw(seed):
    *_, got = _frechet_of_two_draws(40, 8, seed)
    assert got.low <= got.value <= got.high


@pytest.mark.parametrize("seed", range(3))
def test_the_interval_of_a_mean_stays_the_percentile_interval(seed):
    values = np.random.default_rng(seed).exponential(size=300)  # skewed, but the mean unbiased

    def mean(i):
        return float(values[i].mean())

    settings = dict(resamples=400, confidence=0.95, seed=seed)
    got = bootstrap(mean, (300,), batched=lambda i: mean_resampled(values, i), **settings)
    _, before = scipy_percentile(mean, (300,), **settings)
    low, high = before.confidence_interval.low, before.confidence_interval.high
    # moved by the resamples' median's distance from the mean: a few percent of the width
    assert abs(got.low - low) < 0.05 * (high - low)
    assert abs(got.high - high) < 0.05 * (high - low)
    assert got.low <= got.value <= got.high


def test_an_interval_keeps_ratios_for_positive_numbers_and_differences_otherwise():
    assert placed_at(2.0, 3.0, 4.0, 6.0, positive=True) == Estimate(2.0, 1.5, 3.0)
    assert placed_at(2.0, 3.0, 4.0, 6.0, positive=False) == Estimate(2.0, 1.0, 4.0)
    values = np.array([-2.0, -1.0, 1.0, 2.5])  # resampled means of both signs: differences
    got = bootstrap(lambda i: float(values[i].mean()), (4,), resamples=50, confidence=0.9, seed=0)
    _, result = scipy_percentile(
        lambda i: float(values[i].mean()), (4,), resamples=50, confidence=0.9, seed=0
    )
    assert (result.bootstrap_distribution < 0).any() and got.value > 0
    shift = got.value - np.median(result.bootstrap_distribution)
    assert (got.low, got.high) == pytest.approx(
        (result.confidence_interval.low + shift, result.confidence_interval.high + shift)
    )


@given(
    values=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=2, max_size=30
    ),
    reduce=st.sampled_from([np.mean, np.max, np.min, np.var, np.median]),
    resamples=st.integers(2, 40),
    confidence=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_every_interval_contains_its_value(values, reduce, resamples, confidence, seed):
    values = np.asarray(values)
    got = bootstrap(
        lambda i: float(reduce(values[i])),
        (len(values),),
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    assert got.low <= got.value <= got.high
    again = bootstrap(
        lambda i: float(reduce(values[i])),
        (len(values),),
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    assert again == got  # the same seed, the same interval
