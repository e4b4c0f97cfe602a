"""The sampler comparison (``aesampler compare-samplers``) and ``sampling.steps: auto``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aesampler.comparison import labels
from aesampler.evaluation.stopping import first_minimum, mmd_curve
from aesampler.rundir import RunDir

from .conftest import cli

COMPARED = (
    "samplers.compare=[prior, {name: ex_post_gmm, components: 2}, "
    "{name: ex_post_gmm, components: 3, covariance: diag}, "
    "{name: ratio_corrected, proposal: prior, hidden: 8, epochs: 2, pca_dims: 2, method: sir}, "
    "{name: latent_flow, flow: maf, transforms: 1, hidden: 8, epochs: 2, pca_dims: 2, components: 2}, "
    "aae_discriminator]"
)


def test_first_minimum_stops_where_the_curve_stops_falling():
    assert first_minimum({0: 5.0, 1: 2.0, 2: 1.0, 3: 1.5, 4: 0.5}) == 2
    assert first_minimum({0: 5.0, 1: 5.0, 2: 1.0}) == 0  # no improvement after step 0
    assert first_minimum({0: 3.0, 1: 2.0, 2: 1.0}) == 2  # still falling at the cap
    assert first_minimum({4: 1.0}) == 4


def test_the_mmd_curve_is_smallest_where_the_latents_match_the_reference():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 3, generator=g)
    latents = {t: torch.randn(300, 3, generator=g) + 2.0 / (t + 1) * (t != 2) for t in range(4)}
    curve = mmd_curve(latents, reference)
    assert min(curve, key=curve.get) == 2  # step 2 is drawn from the reference's distribution
    assert curve[0] > curve[1] > curve[3] > curve[2]
    assert abs(curve[2]) < 0.02  # an unbiased estimate of 0


def test_labels_number_repeated_names():
    assert labels(["prior", "ex_post_gmm", "ex_post_gmm", "prior"]) == [
        "prior",
        "ex_post_gmm",
        "ex_post_gmm-2",
        "prior-2",
    ]


@pytest.fixture(scope="module")
def compared(tiny_run, tmp_path_factory):
    """The tiny run, with every built-in sampler compared on it."""
    _, run, _ = tiny_run
    copy = tmp_path_factory.mktemp("compared") / "run"
    shutil.copytree(run, copy)
    done = cli("compare-samplers", str(copy), "--quiet", COMPARED, "samplers.steps=[0, 1, 2]")
    assert done.returncode == 0, done.stderr
    return copy, done


def test_every_sampler_is_measured_at_every_step_and_its_chains_are_saved(compared):
    copy, done = compared
    comparison = json.loads((copy / "samplers" / "comparison.json").read_text())
    rows = {row["label"]: row for row in comparison["samplers"]}
    assert list(rows) == [
        "prior",
        "ex_post_gmm",
        "ex_post_gmm-2",
        "ratio_corrected",
        "latent_flow",
        "aae_discriminator",
    ]
    for label, row in rows.items():
        measured = {0, 1, 2, row["auto"]["chosen"]}
        assert set(row["steps"]) == measured, label
        assert set(row["metrics"]["mmd_learned"]) == {str(t) for t in measured}
        assert row["auto"]["chosen"] in range(3)
        assert set(row["auto"]["mmd_learned_valid"]) == {"0", "1", "2"}
        tensors = load_file(str(copy / "samplers" / label / "samples.safetensors"))
        assert set(tensors) == {f"{k}/step-{t:03d}" for k in "zx" for t in measured}
        assert tensors["z/step-000"].shape == (40, 4)
        assert (copy / "samplers" / label / "steps.png").is_file()
    # Step 0 is each sampler's own draws: the prior's are not the mixture's.
    prior = load_file(str(copy / "samplers" / "prior" / "samples.safetensors"))["z/step-000"]
    gmm = load_file(str(copy / "samplers" / "ex_post_gmm" / "samples.safetensors"))["z/step-000"]
    assert not torch.equal(prior, gmm)
    # The ratio samplers report what their correction cost.
    assert 0 < rows["ratio_corrected"]["sample_stats"]["ess_fraction"] <= 1
    assert "valid_cross_entropy" in rows["ratio_corrected"]["fit_stats"]
    for row in rows.values():  # the best step is the one with the smallest distance
        frechet = {int(t): c["value"] for t, c in row["metrics"]["frechet"].items()}
        assert row["best_step"] == {"frechet": min(frechet, key=frechet.get)}
    assert "samplers" in RunDir(copy).owned()
    table = done.stdout[done.stdout.index("frechet by sampler") :].splitlines()
    assert table[1].split() == ["sampler", "step", "0", "step", "1", "step", "2", "best", "auto"]
    assert [line.split()[0] for line in table[2:8]] == list(rows)


def test_the_report_shows_the_comparison(compared):
    copy, _ = compared
    page = (copy / "report.html").read_text()
    assert "<h2>Samplers compared</h2>" in page
    assert 'src="samplers/comparison.png"' in page
    assert 'src="samplers/latent_flow/steps.png"' in page


def test_a_comparison_is_replaced_only_with_overwrite(compared, tmp_path):
    copy, _ = compared
    again = tmp_path / "run"
    shutil.copytree(copy, again)
    refused = cli("compare-samplers", str(again), "--quiet", "samplers.compare=[prior]")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    done = cli("compare-samplers", str(again), "--quiet", "--overwrite", "samplers.compare=[prior]")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (again / "samplers").iterdir()) == [
        "comparison.json",
        "comparison.png",
        "prior",
    ]


def test_a_damaged_comparison_is_one_clear_error(compared, tmp_path):
    copy, _ = compared
    broken = tmp_path / "run"
    shutil.copytree(copy, broken)
    path = broken / "samplers" / "comparison.json"
    document = json.loads(path.read_text())
    document["samplers"][1]["label"] = "../../escape"
    path.write_text(json.dumps(document))
    done = cli("report", str(broken))
    assert done.returncode == 2
    assert "is not an aesampler sampler comparison: in 'samplers[1]': 'label'" in done.stderr


def test_aae_discriminator_on_a_vae_is_a_validation_error(tmp_path):
    from .conftest import TINY_RECIPE

    recipe = tmp_path / "vae.yaml"
    recipe.write_text(
        TINY_RECIPE.replace(
            "name: aae, latent_dim: 4, width: 4, adversary_hidden: 16",
            "name: vae, latent_dim: 4, width: 4",
        )
    )
    done = cli("validate", str(recipe), "samplers.compare=[prior, aae_discriminator]")
    assert done.returncode == 2
    assert "samplers.compare.1: aae_discriminator needs an adversarial autoencoder" in done.stderr
    assert "a VAE matches its prior through a KL term" in done.stderr


def test_steps_auto_runs_the_chains_to_the_chosen_step(tiny_run, tmp_path):
    _, run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    done = cli(
        "sample",
        str(copy),
        "--overwrite",
        "--quiet",
        "sampling.steps=auto",
        "sampling.max_steps=4",
        "sampling.auto_chains=30",
        "sampling.record=[0, 1, 3]",
    )
    assert done.returncode == 0, done.stderr
    settings = json.loads((copy / "samples" / "settings.json").read_text())
    auto = settings["steps_auto"]
    curve = {int(t): v for t, v in auto["mmd_learned"].items()}
    assert sorted(curve) == [0, 1, 2, 3, 4] and auto["pilot_chains"] == 30
    chosen = auto["chosen"]
    assert chosen == first_minimum(curve) and settings["steps"] == chosen
    assert settings["steps_recorded"] == sorted({t for t in (0, 1, 3) if t <= chosen} | {chosen})
    assert f"steps: auto chose {chosen} of at most 4" in done.stdout
    assert "(chosen by steps: auto, at most 4)" in (copy / "report.html").read_text()


def test_the_mmd_curve_subsamples_a_large_reference_reproducibly():
    g = torch.Generator().manual_seed(0)
    latents = {t: torch.randn(50, 3, generator=g) for t in range(3)}
    reference = torch.randn(500, 3, generator=g)
    keep = torch.randperm(500, generator=torch.Generator().manual_seed(0))[:100]
    assert mmd_curve(latents, reference, max_reference=100) == mmd_curve(latents, reference[keep])
    assert mmd_curve(latents, reference, max_reference=100) != mmd_curve(latents, reference)


def test_a_saved_state_that_does_not_fit_is_fitted_again(compared, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(compared[0], copy)
    # The 2-component mixture, given without a covariance (folder names are hashes: pick by
    # settings, not by the order of the listing).
    gmm = next(
        p
        for p in (copy / "fitted").iterdir()
        if p.name.startswith("ex_post_gmm-")
        and json.loads((p / "settings.json").read_text())["sampler"]["components"] == 2
    )
    flow = next(p for p in (copy / "fitted").iterdir() if p.name.startswith("latent_flow-"))
    shutil.copy(gmm / "state.safetensors", flow / "state.safetensors")  # not a flow's state
    settings = json.loads((gmm / "settings.json").read_text())
    assert settings["sampler"]["covariance"] == "full"  # defaults are part of the key
    assert "aesampler" in settings
    done = cli(
        "compare-samplers", str(copy), "--quiet", "--overwrite", COMPARED, "samplers.steps=[0, 1]"
    )
    assert done.returncode == 0, done.stderr
    assert "cannot be used" in done.stdout and "refitting" in done.stdout
    rows = json.loads((copy / "samplers" / "comparison.json").read_text())["samplers"]
    loaded = {row["label"]: row["fit_loaded"] for row in rows}
    assert loaded["latent_flow"] is False and loaded["ex_post_gmm"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
        (["--device", "foo"], "--device 'foo' is not a device"),
        (["--device", "meta"], "aesampler bench runs on cpu or cuda"),
    ],
)
def test_bad_bench_arguments_are_one_clear_error(args, message):
    done = cli("bench", "--network", "quickstart", *args)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr
