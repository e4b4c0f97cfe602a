"""The vectorised bootstrap equals the straightforward one it replaced.

The references live here, not in the package: SciPy's ``stats.bootstrap`` calling the statistic
once per resample (the implementation before issue #10), and the Fréchet distance and MMD of each
resample computed from the gathered rows. The fast paths must give the same resample indices, the
same numbers per resample within rounding, and so the same interval ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
    rbf_kernel_blocks,
    resample_counts,
    resample_indices,
)
from aesampler.plugins import load_registry

RNG = np.random.default_rng(0)


def scipy_bootstrap(statistic, sizes, *, resamples, confidence, seed) -> Estimate:
    """The bootstrap before #10: SciPy's, one Python call of the statistic per resample."""
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
    interval = result.confidence_interval
    return Estimate(value, float(interval.low), float(interval.high))


def slow_frechet(x, y, ix, iy) -> np.ndarray:
    """The Fréchet distance of each resample from its gathered rows."""
    return np.array(
        [frechet_distance(*gaussian_stats(x[i]), *gaussian_stats(y[j])) for i, j in zip(ix, iy)]
    )


def scale(x, y) -> float:
    """The size of the terms the Fréchet distance subtracts: rounding is relative to it."""
    gap = x.mean(axis=0) - y.mean(axis=0)
    return float(x.var(axis=0).sum() + y.var(axis=0).sum() + gap @ gap) or 1.0


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
    data = EvaluationData(
        z={},
        images={0: fake},
        features=lambda step: fake,
        reference_z=None,
        prior_z=None,
        reference_features=real,
        train_images=None,
        resamples=80,
        seed=5,
    )
    got = load_registry().create("metric", "frechet").compute(data, 0)["frechet"]

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
