"""The data-copying test (Meehan, Chaudhuri and Dasgupta, 2020): C_T and the metric data_copying."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import aesampler
from aesampler.evaluation.copying import (
    COPYING_THRESHOLD,
    data_copying,
    default_cells,
    mann_whitney_z,
)
from aesampler.plugins import load_registry

CENTRES = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])


def draw(n: int, rng: np.random.Generator) -> np.ndarray:
    """A mixture of four Gaussians in the first two coordinates, noise in three more."""
    centre = CENTRES[rng.integers(0, len(CENTRES), size=n)]
    return np.hstack([centre + rng.normal(size=(n, 2)), rng.normal(size=(n, 3))])


@pytest.fixture
def sets():
    """Training set T (400), held-out P_n (400), and a generator for more draws."""
    rng = np.random.default_rng(0)
    return draw(400, rng), draw(400, rng), rng


def test_mann_whitney_z_is_scipys_asymptotic_test_with_ties():
    from scipy.stats import mannwhitneyu, norm

    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=30), 1)  # rounded: many ties
    y = np.round(rng.normal(size=45) + 0.4, 1)
    z = mann_whitney_z(x, y)
    scipy = mannwhitneyu(x, y, use_continuity=False, method="asymptotic")
    assert z < 0  # x tends to be smaller
    assert 2 * norm.sf(abs(z)) == pytest.approx(scipy.pvalue, rel=1e-9)
    assert mann_whitney_z(y, x) == pytest.approx(-z)
    assert mann_whitney_z(np.ones(5), np.ones(7)) == 0.0  # all tied: no evidence


def test_copies_of_training_points_are_flagged(sets):
    train, held_out, rng = sets
    copies = train[rng.choice(len(train), 200, replace=False)]
    copies = copies + 1e-3 * rng.normal(size=copies.shape)
    result = data_copying(train, held_out, copies)
    assert result.ct < COPYING_THRESHOLD == -3.0
    assert result.copying and result.threshold == -3.0
    assert all(result.z[cell] < -3 for cell in result.kept)


def test_fresh_draws_are_not_flagged(sets):
    train, held_out, rng = sets
    result = data_copying(train, held_out, draw(200, rng))
    assert abs(result.ct) < 1.0
    assert not result.copying


def test_samples_further_than_the_data_give_positive_ct(sets):
    train, held_out, rng = sets
    blurred = draw(200, rng) + rng.normal(size=(200, 5))  # underfitting: off the data
    assert data_copying(train, held_out, blurred).ct > 2
    far = data_copying(train, held_out, draw(200, rng) + 10.0)
    assert far.ct > 5 and not far.copying
    assert len(far.kept) == 1  # every sample falls in the cell nearest to them


def test_result_holds_the_cells_and_their_weighted_mean(sets):
    train, held_out, rng = sets
    samples = draw(200, rng)
    result = data_copying(train, held_out, samples, seed=3)
    assert result.cells == default_cells(400, 400, 200) == 5  # 200 // (2 * 20)
    assert len(result.z) == len(result.held_out_fraction) == len(result.sample_fraction) == 5
    assert sum(result.held_out_fraction) == pytest.approx(1.0)
    for cell in range(result.cells):
        counted = cell in result.kept
        assert counted == (result.sample_fraction[cell] * 200 >= 20)
        assert math.isnan(result.z[cell]) != counted
    weights = np.array([result.held_out_fraction[c] for c in result.kept])
    zs = np.array([result.z[c] for c in result.kept])
    assert result.ct == pytest.approx(float((weights * zs).sum() / weights.sum()))
    again = data_copying(train, held_out, samples, seed=3)  # seeded: the same cells
    assert (again.ct, again.kept) == (result.ct, result.kept)
    np.testing.assert_array_equal(again.z, result.z)  # NaN where a cell is not kept
    explicit = data_copying(train, held_out, samples, cells=2, min_per_cell=10)
    assert explicit.cells == 2 and explicit.min_per_cell == 10


def test_no_cell_with_enough_samples_gives_nan_not_a_flag(sets):
    train, held_out, rng = sets
    result = data_copying(train, held_out, draw(40, rng), cells=8, min_per_cell=40)
    assert math.isnan(result.ct) and result.kept == () and not result.copying


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"train": np.zeros(10)}, r"train must be a 2-D array \(N, F\)"),
        ({"samples": np.zeros((50, 4))}, "samples has 4 features per row but train has 5"),
        ({"held_out": np.zeros((19, 5))}, "at least 20 held-out points, got 19 in held_out"),
        ({"samples": np.zeros((19, 5))}, "min_per_cell=20 samples .*got 19 in samples"),
        ({"train": np.zeros((3, 5)), "cells": 4}, "at least 4 training points .*got 3 in train"),
        ({"held_out": np.full((30, 5), np.nan)}, "held_out: 150 of 150 values are NaN"),
        ({"cells": 0}, "cells must be a positive integer, got 0"),
        ({"min_per_cell": True}, "min_per_cell must be a positive integer, got True"),
        ({"samples": [["a"]]}, "samples must be a numeric array"),
    ],
)
def test_bad_inputs_name_what_is_wrong(change, match):
    rng = np.random.default_rng(0)
    arguments = {
        "train": rng.normal(size=(100, 5)),
        "held_out": rng.normal(size=(60, 5)),
        "samples": rng.normal(size=(60, 5)),
    }
    arguments.update(change)
    options = {k: arguments.pop(k) for k in ("cells", "min_per_cell") if k in arguments}
    with pytest.raises(aesampler.AesamplerError, match=match):
        data_copying(arguments["train"], arguments["held_out"], arguments["samples"], **options)


# ---------------------------------------------------------------------------------------------
# The metric data_copying


def _images(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=generator)


def test_metric_through_evaluate_samples():
    generator = torch.Generator().manual_seed(0)
    train, reference = _images(300, generator), _images(200, generator)
    copies = (train[:120] + 1e-3 * torch.randn(120, 1, 8, 8, generator=generator)).clamp(0, 1)
    fresh = _images(120, generator)
    report = aesampler.evaluate_samples(
        {0: copies, 3: fresh},
        reference,
        train=train,
        metrics=["data_copying"],
        log=lambda line: None,
    )
    cells = report["metrics"]["data_copying"]
    assert cells["0"]["value"] < COPYING_THRESHOLD
    assert abs(cells["3"]["value"]) < 1.0
    for cell in cells.values():
        assert cell["low"] == cell["value"] == cell["high"]  # a test statistic, no interval
    assert report["lower_is_better"] == {"data_copying": None}
    # The same numbers as the function on the pixel features (8 x 8 images: the pixels).
    rows = lambda x: x.flatten(1).double().numpy()  # noqa: E731
    direct = data_copying(rows(train), rows(reference), rows(fresh), seed=0)
    assert cells["3"]["value"] == pytest.approx(direct.ct, rel=1e-9)


def test_metric_needs_training_images_and_is_not_a_default():
    generator = torch.Generator().manual_seed(0)
    samples, reference = _images(60, generator), _images(60, generator)
    with pytest.raises(aesampler.AesamplerError, match="'data_copying' needs train"):
        aesampler.evaluate_samples(samples, reference, metrics=["data_copying"], log=print)
    with pytest.raises(aesampler.AesamplerError, match="needs at least 20 samples .*got 19"):
        aesampler.evaluate_samples(
            samples[:19], reference, train=samples, metrics=["data_copying"], log=print
        )
    report = aesampler.evaluate_samples(
        samples, reference, train=_images(60, generator), bootstrap=0, log=lambda line: None
    )
    assert "data_copying" not in report["metrics"] and "data_copying" not in report["skipped"]


def test_metric_parameters_are_checked():
    registry = load_registry()
    metric = registry.create("metric", "data_copying", cells=4, min_per_cell=10)
    assert (metric.cells, metric.min_per_cell, metric.min_samples) == (4, 10, 20)
    with pytest.raises(aesampler.ComponentError, match="cells must be a positive integer"):
        registry.create("metric", "data_copying", cells=0)
    with pytest.raises(aesampler.ComponentError, match="min_per_cell must be a positive integer"):
        registry.create("metric", "data_copying", min_per_cell=2.5)
