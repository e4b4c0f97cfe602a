"""Metrics against closed-form and constructed cases, feature extractors, and the evaluate CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from aesampler.data import digits
from aesampler.evaluation import (
    ClassifierFeatures,
    FeatureError,
    InceptionFeatures,
    PixelFeatures,
    diagnostics,
)
from aesampler.evaluation.stats import (
    bootstrap,
    frechet_distance,
    gaussian_stats,
    knn_radii,
    mmd2_from_kernels,
    mmd2_unbiased,
    rbf_kernel_blocks,
    within_radii,
)
from aesampler.plugins import load_registry

from .conftest import cli

RNG = np.random.default_rng(0)


def test_mmd_of_identical_distributions_is_near_zero_and_matches_the_closed_form():
    d, s, h, n = 2, 1.0, 1.0, 3000
    x = RNG.normal(0, s, (n, d))
    y = RNG.normal(0, s, (n, d))
    # For N(μ1, s²I) and N(μ2, s²I) with k = exp(-|a-b|²/2h²):
    # MMD² = 2 c (1 - exp(-|Δ|² / (2 (h² + 2 s²)))),  c = (h² / (h² + 2 s²))^(d/2).
    c = (h**2 / (h**2 + 2 * s**2)) ** (d / 2)
    same = mmd2_unbiased(x, y, bandwidth=h)
    shift = np.array([1.0, 0.0])
    shifted = mmd2_unbiased(x, y + shift, bandwidth=h)
    expected = 2 * c * (1 - math.exp(-(shift @ shift) / (2 * (h**2 + 2 * s**2))))
    # Standard error of the unbiased estimator is O(1/n) under the null and O(1/sqrt(n)) otherwise.
    assert abs(same) < 5 / n
    assert abs(shifted - expected) < 5 / math.sqrt(n) * c
    assert mmd2_unbiased(x, y + 2 * shift, bandwidth=h) > shifted


def test_mmd_resampling_leaves_out_pairs_of_copies():
    x, y = RNG.normal(size=(50, 3)), RNG.normal(size=(40, 3)) + 0.5
    blocks = rbf_kernel_blocks(x, y, 1.0)
    doubled = np.concatenate([np.arange(50), np.arange(50)])  # every x twice
    # Pairs of copies are not pairs of independent draws: doubling a sample changes nothing.
    assert mmd2_from_kernels(*blocks, doubled, np.arange(40)) == pytest.approx(
        mmd2_from_kernels(*blocks)
    )
    # Counting them (as a plain resample would) inflates the within-sample mean.
    kxx = blocks[0][np.ix_(doubled, doubled)]
    naive = (kxx.sum() - np.trace(kxx)) / (100 * 99)
    assert naive > (blocks[0].sum() - 50) / (50 * 49)


def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    # Diagonal covariances: |Δμ|² + Σ (σ1 − σ2)².
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-10)
    # A rotated full covariance against itself is distance 0; a singular one stays finite.
    q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    cov = q @ np.diag([4.0, 1.0, 0.0]) @ q.T
    assert frechet_distance(mu1, cov, mu1, cov) == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(frechet_distance(mu1, cov, mu2, np.eye(3)))
    # Sampled Gaussians converge to the closed form.
    a = RNG.normal(mu1, s1, (20000, 3))
    b = RNG.normal(mu2, s2, (20000, 3))
    assert frechet_distance(*gaussian_stats(a), *gaussian_stats(b)) == pytest.approx(
        expected, rel=0.05
    )


def test_precision_and_recall_on_nested_supports():
    real = RNG.uniform(0, 1, (800, 2))
    inner = RNG.uniform(0, 0.5, (800, 2))  # a quarter of the real support
    real_radii, inner_radii = knn_radii(real, 3), knn_radii(inner, 3)
    precision = within_radii(inner, real, real_radii).mean()
    recall = within_radii(real, inner, inner_radii).mean()
    assert precision > 0.95  # every inner sample is realistic
    assert 0.15 < recall < 0.45  # but they cover only about a quarter of the data
    # Identical sets have precision and recall 1.
    assert within_radii(real, real, real_radii).all()


def test_bootstrap_is_seeded_and_covers_the_mean():
    values = RNG.normal(3.0, 1.0, 400)
    one = bootstrap(lambda i: values[i].mean(), (400,), resamples=300, confidence=0.95, seed=1)
    two = bootstrap(lambda i: values[i].mean(), (400,), resamples=300, confidence=0.95, seed=1)
    assert one == two
    assert one.low < one.value < one.high
    # The interval's half-width is close to 1.96 standard errors.
    assert (one.high - one.low) / 2 == pytest.approx(1.96 / math.sqrt(400), rel=0.25)
    assert (
        bootstrap(lambda i: values[i].mean(), (400,), resamples=0, confidence=0.95, seed=1).low
        == one.value
    )


def test_chain_diagnostics_detect_chains_that_disagree():
    mixed = {t: RNG.normal(size=(200, 3)) for t in range(10)}
    result = diagnostics(mixed)
    assert result["window"] == [5, 9] and result["rhat_max"] < 1.05
    assert "ess_median" not in result and "at least 20 draws" in result["ess_note"]
    # Independent draws: the effective sample size is close to the number of draws.
    long = diagnostics({t: RNG.normal(size=(50, 2)) for t in range(40)})
    assert 0.7 * 1000 < long["ess_median"] < 1.3 * 1000  # 50 chains x 20 draws
    stuck_offsets = RNG.normal(0, 3, (200, 3))  # each chain sits at its own place
    stuck = {t: stuck_offsets + 0.1 * RNG.normal(size=(200, 3)) for t in range(10)}
    assert diagnostics(stuck)["rhat_median"] > 1.5
    assert "needs at least" in diagnostics({0: mixed[0], 1: mixed[1]})["note"]


def test_feature_extractors(tmp_path):
    train = digits("train", image_size=8)
    x = torch.stack([train[i][0] for i in range(10)])
    assert PixelFeatures(size=4)(torch.rand(3, 3, 16, 16)).shape == (3, 48)
    assert PixelFeatures()(x).shape == (10, 64)

    logs = []
    classifier = ClassifierFeatures(epochs=2)
    info = classifier.prepare(train, tmp_path, torch.device("cpu"), logs.append)
    assert info["accuracy"] > 0.5 and "trained on" in logs[0]
    features = classifier(x)
    assert features.shape == (10, 128)
    again = ClassifierFeatures(epochs=2)
    again.prepare(train, tmp_path, torch.device("cpu"), logs.append)
    assert "cached" in logs[1]
    assert torch.equal(again(x), features)

    from aesampler.data import image_folder

    unlabelled = tmp_path / "images"
    unlabelled.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(unlabelled / f"{i}.png")
    with pytest.raises(FeatureError, match="needs labels"):
        ClassifierFeatures().prepare(
            image_folder("train", root=str(unlabelled), image_size=8),
            tmp_path,
            torch.device("cpu"),
            print,
        )
    with pytest.raises(FeatureError, match="never downloads"):
        InceptionFeatures().prepare(train, tmp_path, torch.device("cpu"), print)


def test_inception_features_from_a_local_weights_file(tmp_path):
    from torchvision.models import inception_v3

    weights = tmp_path / "inception.pt"
    torch.manual_seed(0)
    torch.save(
        inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights
    )
    extractor = InceptionFeatures(weights=str(weights))
    assert extractor.prepare(None, tmp_path, torch.device("cpu"), print)["weights"] == str(weights)
    assert extractor(torch.rand(2, 1, 16, 16)).shape == (2, 2048)
    with pytest.raises(FeatureError, match="does not exist"):
        InceptionFeatures(weights=str(tmp_path / "missing.pt")).prepare(
            None, tmp_path, torch.device("cpu"), print
        )


def test_metric_and_feature_plugins_are_registered():
    registry = load_registry()
    assert registry.names("metric") == [
        "frechet",
        "mmd_learned",
        "mmd_prior",
        "novelty",
        "precision_recall",
        "step_size",
    ]
    assert registry.names("feature_extractor") == ["classifier", "inception", "pixels"]
    assert all(
        c.distribution == "aesampler" for c in registry if c.kind in ("metric", "feature_extractor")
    )


def test_metrics_json_from_the_cli_is_seeded(tiny_run, tmp_path):
    _, run, done = tiny_run
    report = json.loads((run / "metrics.json").read_text())
    assert report["steps"] == [0, 1, 6]
    assert set(report["metrics"]) == {
        "mmd_learned",
        "mmd_prior",
        "step_size",
        "frechet",
        "precision",
        "recall",
        "novelty",
    }
    assert set(report["metrics"]["step_size"]) == {"0", "1"}  # undefined at the last step
    for key, cells in report["metrics"].items():
        for cell in cells.values():
            assert cell["low"] <= cell["high"], key
    # Step 0 latents are prior draws: no distance to the prior beyond noise.
    assert (
        abs(report["metrics"]["mmd_prior"]["0"]["value"])
        < report["metrics"]["mmd_prior"]["6"]["high"] + 0.05
    )
    assert report["feature_extractor"]["name"] == "pixels"
    assert re.search(r"^\s*step\s+mmd_learned\s+mmd_prior\s+step_size\s+frechet", done.stdout, re.M)
    assert "(value [95% bootstrap interval])" in done.stdout
    again = cli("evaluate", str(run), "--quiet", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "metrics.json").read_text())["metrics"] == report["metrics"]
    twice = cli("evaluate", str(run), "--quiet")
    assert twice.returncode == 2 and "metrics.json' already exists" in twice.stderr
    compared = cli("compare", str(run), str(run), "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert (
        "**frechet**" in compared.stdout
        and (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    )


def _data(**overrides):
    from aesampler.evaluation import EvaluationData

    z0 = RNG.normal(size=(60, 3))
    train = RNG.uniform(size=(80, 16))
    fields = dict(
        z={0: z0, 1: z0 + np.array([0.0, 2.0, 0.0])},  # every chain moves by exactly 2
        images={0: train[:60], 1: RNG.uniform(size=(60, 16))},
        features=lambda step: {0: train[:60], 1: train[:60] + 5.0}[step],
        reference_z=z0.copy(),
        prior_z=RNG.normal(size=(60, 3)) + 3.0,
        reference_features=train[:60],
        train_images=train,
        resamples=30,
        seed=0,
    )
    fields.update(overrides)
    return EvaluationData(**fields)


def test_each_builtin_metric_on_constructed_data():
    registry = load_registry()
    data = _data()

    def metric(name, step, **params):
        return registry.create("metric", name, **params).compute(data, step)

    assert metric("step_size", 0)["step_size"].value == pytest.approx(2.0)
    assert metric("step_size", 1) == {}  # no step after the last one
    # Samples equal to the reference: MMD² about 0; against shifted prior draws: clearly positive.
    assert abs(metric("mmd_learned", 0)["mmd_learned"].value) < 0.05
    assert metric("mmd_prior", 0)["mmd_prior"].value > 0.5
    # Copies of training images have novelty 0; fresh images do not.
    assert metric("novelty", 0)["novelty"].value == pytest.approx(0.0, abs=1e-6)
    assert metric("novelty", 1)["novelty"].value > 0.1
    # Identical features: Fréchet 0, precision and recall 1; features shifted far away: 0 and 0.
    assert metric("frechet", 0)["frechet"].value == pytest.approx(0.0, abs=1e-6)
    assert metric("frechet", 1)["frechet"].value == pytest.approx(25.0 * 16, rel=1e-6)
    same, far = metric("precision_recall", 0, k=3), metric("precision_recall", 1, k=3)
    assert (same["precision"].value, same["recall"].value) == (1.0, 1.0)
    assert (far["precision"].value, far["recall"].value) == (0.0, 0.0)
    with pytest.raises(Exception, match="k must be a positive integer"):
        registry.create("metric", "precision_recall", k=0)
    with pytest.raises(Exception, match="k=60 needs more than 60 samples"):
        metric("precision_recall", 0, k=60)
