"""Metrics against closed-form and constructed cases, feature extractors, and the evaluate CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torchvision.utils import save_image

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
        "data_copying",
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


# ---------------------------------------------------------------------------------------------
# evaluate_samples: samples from anywhere


def _images(n, seed, shape=(1, 8, 8)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_evaluate_samples_without_latents_skips_the_latent_metrics_with_a_note():
    from aesampler.evaluation import evaluate_samples, format_table

    samples, reference = _images(30, 1), _images(40, 2)
    logs = []
    report = evaluate_samples(samples, reference, bootstrap=20, log=logs.append)
    assert report["steps"] == [0]
    assert set(report["metrics"]) == {"frechet", "precision", "recall"}
    assert report["skipped"] == {
        "mmd_learned": "needs latents and reference_latents",
        "mmd_prior": "needs latents",
        "step_size": "needs latents",
        "novelty": "needs train",
    }
    assert any("skipped metric mmd_learned" in line for line in logs)
    assert report["lower_is_better"] == {"frechet": True, "precision": False, "recall": False}
    assert report["diagnostics"] == {"note": "no latents given"}
    assert report["feature_extractor"] == {"name": "pixels"}
    assert report["reference"]["images"] == 40
    # The numbers are the metric's own on pixel features (8 x 8 images: not pooled).
    fake, real = samples.flatten(1).double().numpy(), reference.flatten(1).double().numpy()
    expected = frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))
    assert report["metrics"]["frechet"]["0"]["value"] == pytest.approx(expected)
    assert "(value [95% bootstrap interval])" in format_table(report)
    json.dumps(report)  # what evaluate writes, evaluate_samples returns: plain JSON values
    # NumPy arrays are accepted too and give the same numbers.
    again = evaluate_samples(samples.numpy(), reference.numpy(), bootstrap=20, log=logs.append)
    assert again["metrics"] == report["metrics"]


def test_evaluate_samples_with_latents_and_train_computes_every_metric_by_step():
    from aesampler.evaluation import evaluate_samples

    generator = torch.Generator().manual_seed(3)
    latents = {t: torch.randn(30, 4, generator=generator) for t in range(8)}
    samples = {0: _images(30, 1), 5: _images(30, 4)}
    report = evaluate_samples(
        samples,
        _images(40, 2),
        train=_images(50, 5),
        latents=latents,
        reference_latents=torch.randn(40, 4, generator=generator),
        bootstrap=10,
        log=lambda line: None,
    )
    assert report["steps"] == [0, 5] and report["skipped"] == {}
    assert set(report["metrics"]) == {
        "mmd_learned",
        "mmd_prior",
        "step_size",
        "frechet",
        "precision",
        "recall",
        "novelty",
    }
    for cells in report["metrics"].values():
        assert set(cells) == {"0", "5"}  # step_size at 5 uses the latents of step 6
    moves = (latents[6] - latents[5]).norm(dim=1).double().mean().item()
    assert report["metrics"]["step_size"]["5"]["value"] == pytest.approx(moves)
    assert report["diagnostics"]["window"] == [4, 7] and report["diagnostics"]["chains"] == 30
    assert report["reference"]["train_images"] == 50
    assert report["reference"]["novelty_of_held_out_images"] > 0


def test_evaluate_samples_takes_metric_and_feature_objects():
    from aesampler.evaluation import Frechet, Metric, evaluate_samples

    class MeanPixel(Metric):
        space = "image"
        lower_is_better = None

        def compute(self, data, step):
            means = data.images[step].mean(axis=1)
            return {"mean_pixel": data.boot(lambda i: float(means[i].mean()), len(means))}

    class LatentNorm(Metric):  # a latent-space metric: needs latents
        def compute(self, data, step):
            raise AssertionError("not called without latents")

    samples = torch.full((20, 1, 8, 8), 0.25)
    report = evaluate_samples(
        samples,
        _images(20, 2),
        metrics=[MeanPixel(), Frechet(), {"name": "precision_recall", "k": 5}],
        features=PixelFeatures(size=2),
        bootstrap=0,
        log=lambda line: None,
    )
    assert report["metrics"]["mean_pixel"]["0"] == {"value": 0.25, "low": 0.25, "high": 0.25}
    cell = report["metrics"]["frechet"]["0"]  # bootstrap=0: no interval, low = high = value
    assert cell["low"] == cell["value"] == cell["high"]
    assert report["settings"]["metrics"] == ["MeanPixel", "Frechet", "precision_recall"]
    from aesampler import AesamplerError

    with pytest.raises(AesamplerError, match="metric 'LatentNorm' needs latents"):
        evaluate_samples(samples, _images(20, 2), metrics=[LatentNorm()])


X, REF = _images(20, 1), _images(20, 2)
NAN = X.clone()
NAN[3, 0, 2, 2] = float("nan")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": X[0]}, r"samples must be images \(N, C, H, W\), got shape \(1, 8, 8\)"),
        ({"samples": [X]}, "samples must be a torch.Tensor"),
        ({"samples": X[:0]}, "samples is empty"),
        ({"samples": (X * 255).to(torch.uint8)}, r"floating-point .* x.float\(\) / 255"),
        ({"samples": X * 2}, r"samples must have pixel values in \[0, 1\]"),
        ({"samples": NAN}, "samples: 1 of 1280 values are NaN or infinite"),
        ({"samples": {0: X, 3: NAN}}, r"samples\[3\]: 1 of 1280 values are NaN"),
        ({"samples": {-1: X}}, "keys must be chain steps"),
        ({"samples": {}}, "samples is an empty dict"),
        ({"reference": _images(20, 2, (3, 8, 8))}, r"reference has images of shape \(3, 8, 8\)"),
        ({"train": (X, torch.zeros(5, dtype=torch.long))}, "one integer per training image"),
        ({"train": (X, torch.zeros(20))}, "train labels must be integers"),
        ({"train": (X, X, X)}, "a pair"),
        ({"latents": torch.randn(19, 4)}, "latents has 19 rows but samples has 20"),
        ({"latents": torch.randn(20)}, r"latents must have one row per sample"),
        (
            {"latents": torch.full((20, 4), float("inf"))},
            "latents: 80 of 80 values are NaN or infinite",
        ),
        ({"samples": {0: X, 1: X}, "latents": torch.randn(20, 4)}, "latents must be a dict"),
        ({"samples": {0: X, 1: X}, "latents": {0: torch.randn(20, 4)}}, "latents has no step 1"),
        ({"reference_latents": torch.randn(5, 4)}, "reference_latents was given without latents"),
        (
            {"latents": torch.randn(20, 4), "reference_latents": torch.randn(20, 3)},
            r"reference_latents rows have shape \(3,\)",
        ),
        ({"metrics": ["mmd_learned"]}, "needs latents and reference_latents, which were not"),
        ({"metrics": ["novelty"]}, r"metric 'novelty' needs train.*pass train=\.\.\."),
        ({"metrics": ["frechett"]}, "Did you mean 'frechet'"),
        ({"metrics": [3]}, "metrics entries must be"),
        ({"metrics": []}, "metrics is empty"),
        (
            {"metrics": [{"name": "precision_recall", "k": 20}]},
            r"k=20 needs k \+ 1\), got 20 in samples",
        ),
        (
            {"reference": REF[:1], "metrics": ["frechet"]},
            "at least 2 samples .* got 1 in reference",
        ),
        ({"bootstrap": -1}, "bootstrap must be an integer >= 0"),
        ({"bootstrap": 2.5}, "bootstrap must be an integer >= 0"),
        ({"confidence": 1.0}, "confidence must be a number between 0 and 1"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"features": 3}, "features must be a feature extractor name"),
        ({"features": "classifier"}, "needs labels .* pass train=\\(images, labels\\)"),
        ({"features": "classifier", "train": X}, "needs labels"),
        ({"device": "gpu9"}, "device 'gpu9' is not a torch device"),
    ],
)
def test_evaluate_samples_rejects_bad_input_with_one_clear_error(kwargs, match):
    from aesampler import AesamplerError
    from aesampler.evaluation import evaluate_samples

    arguments = {"samples": X, "reference": REF, "bootstrap": 5, "log": lambda line: None}
    arguments.update(kwargs)
    with pytest.raises(AesamplerError, match=match):
        evaluate_samples(arguments.pop("samples"), arguments.pop("reference"), **arguments)


def test_evaluate_samples_trains_the_classifier_on_labelled_train_images(tmp_path):
    from aesampler.evaluation import evaluate_samples

    train = digits("train", image_size=8)
    images = torch.stack([train[i][0] for i in range(300)])
    labels = torch.tensor([train[i][1] for i in range(300)])
    logs = []
    options = dict(
        features={"name": "classifier", "epochs": 1},
        metrics=["frechet"],
        bootstrap=5,
        log=logs.append,
    )
    report = evaluate_samples(images[:40], images[40:80], train=(images, labels), **options)
    assert report["feature_extractor"]["name"] == "classifier"
    assert "cache" not in report["feature_extractor"]  # no cache_dir: trained, not kept
    assert any("trained on" in line for line in logs)
    kept = evaluate_samples(
        images[:40], images[40:80], train=(images, labels), cache_dir=tmp_path, **options
    )
    assert kept["feature_extractor"]["cache"].startswith(str(tmp_path))
    assert kept["metrics"] == report["metrics"]  # same seed: the same classifier
    evaluate_samples(
        images[:40], images[40:80], train=(images, labels), cache_dir=tmp_path, **options
    )
    assert "cached" in logs[-1]


def test_evaluate_computes_its_numbers_by_the_same_code_as_evaluate_samples(
    tiny_run, tmp_path, monkeypatch
):
    import importlib

    from aesampler import AesamplerError
    from aesampler.evaluation import evaluate_samples
    from aesampler.recipe.loader import load_recipe
    from aesampler.recipe.schema import ComponentSpec
    from aesampler.workflow import build_components

    module = importlib.import_module("aesampler.evaluation.evaluate")  # not the function
    _, run, _ = tiny_run
    parts = build_components(load_recipe(run / "recipe.yaml"), checkpoint=run)
    seen = {}

    def spy(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return measure(*args, **kwargs)

    measure = module.measure
    monkeypatch.setattr(module, "measure", spy)
    report = module.evaluate(parts, tmp_path, progress=False, log=lambda line: None)
    assert report["metrics"] == json.loads((run / "metrics.json").read_text())["metrics"]
    samples, reference, _, _ = seen["args"]
    given = seen["kwargs"]
    again = evaluate_samples(
        samples,
        reference,
        train=given["train"],
        latents=given["latents"],
        reference_latents=given["reference_latents"],
        bootstrap=given["bootstrap"],
        confidence=given["confidence"],
        seed=given["seed"],
        log=lambda line: None,
    )
    assert again["metrics"] == report["metrics"]
    # The same diagnostics; the note's advice is in each caller's words
    note, python_note = report["diagnostics"].pop("ess_note"), again["diagnostics"].pop("ess_note")
    assert again["diagnostics"] == report["diagnostics"]
    assert note.endswith("record more steps (max(evaluate.steps) >= 39)")
    assert python_note == note.replace("max(evaluate.steps) >= 39", "latents at 39 steps or more")

    # A metric that needs more chains than the recipe runs stops before any chain is run.
    parts.recipe.evaluate.metrics = [ComponentSpec(name="precision_recall", k=40)]
    monkeypatch.setattr(parts.chain, "run", lambda **kw: pytest.fail("chains were run"))
    chains = r"got 40 in the images x_t of the evaluation chains at step 0 \(evaluate.num_chains=40"
    with pytest.raises(AesamplerError, match=chains):
        module.evaluate(parts, tmp_path, progress=False, log=lambda line: None)
    # So does a held-out split smaller than the metric needs (and than evaluate.reference_size).
    parts.recipe.evaluate.metrics = [ComponentSpec(name="precision_recall", k=5)]
    dataset = parts.dataset

    class Few:
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return 5

        def __getitem__(self, index):
            return self.data[index]

    monkeypatch.setattr(
        parts, "dataset", lambda split: Few(dataset(split)) if split == "test" else dataset(split)
    )
    held_out = (
        r"got 5 in the held-out images \(5 from the 'test' split; evaluate.reference_size=40\)"
    )
    with pytest.raises(AesamplerError, match=held_out):
        module.evaluate(parts, tmp_path, progress=False, log=lambda line: None)


# ---------------------------------------------------------------------------------------------
# A damaged classifier cache, and degenerate data


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _wrong_shapes(file):
    from safetensors.torch import load_file, save_file

    state = load_file(str(file))
    state["head.weight"] = torch.zeros(3, 3)
    save_file(state, str(file))


def _broken_json(file):
    file.with_suffix(".json").write_text('{"accuracy": 0.9')


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """A classifier cache trained once: (its folder, its features of 10 digits)."""
    folder = tmp_path_factory.mktemp("classifier")
    train = digits("train", image_size=8)
    classifier = ClassifierFeatures(epochs=1)
    classifier.prepare(train, folder, torch.device("cpu"), print)
    return folder, classifier(torch.stack([train[i][0] for i in range(10)]))


@pytest.mark.parametrize("damage", [_truncate, _wrong_shapes, _broken_json])
def test_an_unreadable_classifier_cache_is_retrained_and_replaced(
    tmp_path, damage, trained_classifier
):
    import shutil

    folder, features = trained_classifier
    for file in folder.iterdir():
        shutil.copy(file, tmp_path / file.name)
    (cache,) = tmp_path.glob("classifier-*.safetensors")
    damage(cache)
    train = digits("train", image_size=8)
    cpu, logs = torch.device("cpu"), []
    again = ClassifierFeatures(epochs=1)
    info = again.prepare(train, tmp_path, cpu, logs.append)
    assert re.search(rf"cache {re.escape(str(cache))} is unreadable \(\w+", logs[0])
    assert "retraining" in logs[0] and "trained on" in logs[1]
    assert logs[-1] == f"feature classifier: replaced the unreadable cache {cache}"
    assert info["cache"] == str(cache) and info["accuracy"] > 0.3
    # Seeded: the same network again; written whole, with no temporary file left behind.
    assert torch.equal(again(torch.stack([train[i][0] for i in range(10)])), features)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in folder.iterdir())
    logs.clear()
    ClassifierFeatures(epochs=1).prepare(train, tmp_path, cpu, logs.append)
    assert logs[0].startswith("feature classifier: cached")  # the replacement is readable


def test_degenerate_data_gives_defined_numbers():
    from aesampler.evaluation.stats import median_bandwidth

    same = np.ones((6, 3))
    assert median_bandwidth(same, same) == 1.0  # not 0, which would divide by zero
    assert mmd2_unbiased(same, same) == pytest.approx(0.0)
    # Two points per sample: half the resamples repeat one point; no 0 / 0 in the interval.
    data = _data(z={0: RNG.normal(size=(2, 3))}, reference_z=RNG.normal(size=(2, 3)), resamples=50)
    registry = load_registry()
    estimate = registry.create("metric", "mmd_learned").compute(data, 0)["mmd_learned"]
    assert all(math.isfinite(v) for v in (estimate.value, estimate.low, estimate.high))
    # Constant (zero-variance) features: the Fréchet distance is the squared mean difference.
    constant = _data(
        features=lambda step: np.full((30, 4), 0.5),
        reference_features=np.full((40, 4), 1.5),
        resamples=20,
    )
    cell = registry.create("metric", "frechet").compute(constant, 0)["frechet"]
    assert (cell.value, cell.low, cell.high) == pytest.approx((4.0, 4.0, 4.0))
    # A statistic of a single point has no interval: the value itself, not a SciPy error.
    assert bootstrap(lambda i: 7.0, (1,), resamples=20, confidence=0.9, seed=0).low == 7.0


def test_diagnostics_of_chains_that_do_not_move_are_a_note_not_nan():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0 / 0 either
        still = diagnostics({t: np.ones((4, 3)) for t in range(10)})
        assert "rhat_median" not in still and "varies within the chains" in still["note"]
        # Chains that stopped at different places: R-hat is infinite (they never mix).
        apart = diagnostics({t: np.arange(12.0).reshape(4, 3) for t in range(10)})
        assert apart["rhat_median"] == math.inf
        one = diagnostics({t: RNG.normal(size=(1, 3)) for t in range(10)})
        assert one == {"note": "needs at least 2 chains for diagnostics, got 1"}
    # Some constant coordinates: summarised over the others.
    z = {t: np.column_stack([RNG.normal(size=50), np.zeros(50)]) for t in range(10)}
    assert math.isfinite(diagnostics(z)["rhat_max"])


def test_feature_extractors_on_unusual_images():
    assert PixelFeatures(size=4)(torch.rand(2, 1, 8, 32)).shape == (2, 16)  # pooled to 4 x 4
    assert PixelFeatures(size=4)(torch.rand(2, 1, 2, 32)).shape == (2, 8)  # 2 rows stay 2
    inception = InceptionFeatures()
    inception.net = torch.nn.Identity()  # never reached: the channels are checked first
    with pytest.raises(FeatureError, match="1- or 3-channel images, got 2"):
        inception(torch.rand(1, 2, 8, 8))


# Errors in the caller's words (issue 19, item 4) ------------------------------------------------

#: A recipe key path in a message: what a Python caller must not be told to set.
RECIPE_KEY = re.compile(r"\b(?:evaluate|sampling|samplers|train|data|model|tune|output)\.[a-z_]")


def _python_error(**kwargs) -> str:
    from aesampler import AesamplerError
    from aesampler.evaluation import evaluate_samples

    with pytest.raises(AesamplerError) as caught:
        evaluate_samples(X, REF, bootstrap=5, log=lambda line: None, **kwargs)
    return str(caught.value)


def _in_python_words(message: str, *arguments: str) -> None:
    assert not RECIPE_KEY.search(message), message
    for argument in arguments:
        assert argument in message, message


def test_feature_errors_name_evaluate_samples_arguments():
    unlabelled = _python_error(features="classifier", train=X)
    assert "dataset 'tensors'" not in unlabelled
    _in_python_words(
        unlabelled,
        "and train has none",
        "train=(images, labels)",
        "features='pixels'",
        "features={'name': 'inception', 'weights': 'PATH'}",
    )
    none = _python_error(features="classifier")
    _in_python_words(none, "pass train=(images, labels), or use features='pixels'")
    inception = _python_error(features="inception")
    _in_python_words(inception, "set features={'name': 'inception', 'weights': 'PATH'}")


def test_feature_errors_name_recipe_keys_on_the_command_line(tmp_path):
    from .conftest import TINY_RECIPE

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = ["--out", str(tmp_path / "run"), "--quiet"]
    done = cli("run", str(recipe), "evaluate.feature_extractor=inception", *out)
    assert done.returncode == 2
    assert "set evaluate.feature_extractor.weights=PATH; aesampler never" in done.stderr
    folder = tmp_path / "unlabelled"
    for split in ("train", "valid", "test"):
        (folder / split).mkdir(parents=True)
        for i in range(4):
            torch.manual_seed(i)
            save_image(torch.rand(3, 8, 8), folder / split / f"{i}.png")
    data = f"data={{name: image_folder, root: {folder}, image_size: 8}}"
    done = cli("run", str(recipe), data, "evaluate.feature_extractor=classifier", *out)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "aesampler: error: the classifier feature extractor needs labels, and dataset "
        "'image_folder' has none; use evaluate.feature_extractor.name=pixels, or inception with "
        "a local weights file (evaluate.feature_extractor.weights=PATH)"
    )


def test_an_unwritable_classifier_cache_names_the_callers_setting(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    labelled = (X, torch.arange(20) % 2)
    message = _python_error(
        features={"name": "classifier", "epochs": 1}, train=labelled, cache_dir=blocked
    )
    _in_python_words(message, "point cache_dir at a writable directory")
    train = digits("train", image_size=8)  # as `evaluate` prepares it: the recipe's words
    with pytest.raises(FeatureError, match="point evaluate.cache_dir at a writable directory"):
        ClassifierFeatures(epochs=1).prepare(train, blocked, torch.device("cpu"), print)


def test_advice_of_metrics_and_diagnostics_is_in_the_callers_words():
    from aesampler.errors import speaking
    from aesampler.evaluation import evaluate_samples
    from aesampler.evaluation.copying import DataCopying
    from aesampler.evaluation.samples import VOICE

    latents = {t: torch.randn(20, 3, generator=torch.Generator().manual_seed(t)) for t in range(10)}
    report = evaluate_samples(
        {0: X}, REF, latents=latents, metrics=["mmd_prior"], bootstrap=0, log=lambda line: None
    )
    note = report["diagnostics"]["ess_note"]
    _in_python_words(note, "record more steps (latents at 39 steps or more)")
    note = diagnostics({t: v.numpy() for t, v in latents.items()})["ess_note"]
    assert note.endswith("record more steps (max(evaluate.steps) >= 39)")

    data = _data(resamples=0)
    few = _data(features=lambda step: np.zeros((3, 2)), resamples=0)
    metric = load_registry().create("metric", "precision_recall", k=5)
    with pytest.raises(Exception, match="raise evaluate.num_chains and evaluate.reference_size"):
        metric.compute(few, 0)
    with speaking(VOICE), pytest.raises(Exception) as caught:
        metric.compute(few, 0)
    _in_python_words(str(caught.value), "raise the number of samples and the number of reference")
    with pytest.raises(Exception, match="give training images$"):
        DataCopying().compute(data, 0)
    with speaking(VOICE), pytest.raises(Exception, match=r"give training images \(train=\.\.\.\)"):
        DataCopying().compute(data, 0)


def test_evaluate_samples_phrases_every_setting_the_evaluation_advises():
    """Every key the evaluation code asks ``named`` about has words in evaluate_samples' voice."""
    from pathlib import Path

    import aesampler
    from aesampler.evaluation.samples import VOICE

    package = Path(aesampler.__file__).parent
    asked = {
        key
        for source in package.rglob("*.py")
        for key in re.findall(r"\bnamed\(\s*[\"']([^\"']+)[\"']", source.read_text())
    }
    assert asked >= {"evaluate.feature_extractor.name", "evaluate.cache_dir", "labels"}
    assert asked <= set(VOICE.phrases), sorted(asked - set(VOICE.phrases))
