"""`aesampler run`, `sample`, `interpolate`, `validate` and the report, end to end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aesampler
from aesampler.recipe import load_recipe
from aesampler.workflow import build_components

from .conftest import TINY_RECIPE, cli

ROOT = Path(__file__).resolve().parent.parent


def test_run_writes_samples_interpolation_and_report(tiny_run):
    _, run, done = tiny_run
    assert f"report: {run / 'report.html'}" in done.stdout
    assert "trained 3 steps" in done.stdout
    for name in ("recipe.yaml", "metrics.jsonl", "report.html", "samples/steps.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").glob("step-*.png")) == [
        "step-000.png",
        "step-001.png",
        "step-006.png",
    ]
    tensors = load_file(str(run / "samples" / "samples.safetensors"))
    assert sorted(tensors) == [f"{v}/step-{t:03d}" for v in "xz" for t in (0, 1, 6)]
    assert tensors["z/step-006"].shape == (12, 4) and tensors["x/step-000"].shape == (12, 1, 8, 8)
    # Step 0 is the prior draw from the sampling seed: the chains start from N(0, I).
    prior = torch.randn(12, 4, generator=aesampler.chain.start_generator(5))
    assert torch.equal(tensors["z/step-000"], prior)
    inter = load_file(str(run / "interpolation" / "interpolation.safetensors"))
    assert inter["z_path"].shape == (3, 5, 4) and inter["x_chain"].shape == (3, 5, 1, 8, 8)
    assert inter["images"].shape == (6, 1, 8, 8)
    assert not torch.equal(inter["x_plain"], inter["x_chain"])


def test_python_api_builds_the_same_chain_as_the_cli(tiny_run):
    recipe_path, run, _ = tiny_run
    recipe = load_recipe(recipe_path, [f"output.dir={run}"])
    parts = build_components(recipe)
    assert parts.checkpoint.name == "step-00000003"
    cfg = recipe.sampling
    result = parts.chain.run(
        n=cfg.num_chains,
        steps=cfg.steps,
        record=cfg.record,
        chunk_size=cfg.chunk_size,
        batchnorm=cfg.batchnorm,
        seed=cfg.seed,
    )
    saved = load_file(str(run / "samples" / "samples.safetensors"))
    for t in (0, 1, 6):
        assert torch.equal(result.z[t], saved[f"z/step-{t:03d}"])
        assert torch.equal(result.x[t], saved[f"x/step-{t:03d}"])


def test_an_existing_run_is_not_overwritten_without_the_flag(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "report.html").stat().st_mtime_ns
    again = cli("run", str(recipe), "--out", str(copy), "--quiet")
    assert again.returncode == 2
    assert "already exists; pass --resume" in again.stderr and "Traceback" not in again.stderr
    assert (copy / "report.html").stat().st_mtime_ns == before
    fresh = cli("run", str(recipe), "--out", str(copy), "--quiet", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr


def test_sample_and_interpolate_from_a_checkpoint(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    out = tmp_path / "sampled"
    done = cli(
        "sample",
        str(recipe),
        "--checkpoint",
        str(run),
        "--out",
        str(out),
        "--quiet",
        "sampling.steps=3",
        "sampling.record=[0,3]",
    )
    assert done.returncode == 0, done.stderr
    assert "sample finished" in done.stdout and "trained" not in done.stdout
    assert sorted(p.name for p in (out / "samples").glob("step-*.png")) == [
        "step-000.png",
        "step-003.png",
    ]
    assert not (out / "interpolation").exists() and not (out / "checkpoints").exists()
    assert (out / "report.html").is_file()
    # Another command's outputs are added beside the earlier ones, which stay as they were.
    samples = (out / "samples" / "samples.safetensors").read_bytes()
    done = cli("interpolate", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (out / "interpolation" / "interpolation.png").is_file()
    assert (out / "samples" / "samples.safetensors").read_bytes() == samples
    done = cli("interpolate", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet")
    assert done.returncode == 2 and "interpolation' already exists" in done.stderr
    # Into the model's own run directory: only the pictures are added or, with the flag, replaced.
    done = cli("sample", str(recipe), "--out", str(run), "--quiet")
    assert done.returncode == 2 and "samples' already exists; pass --overwrite" in done.stderr
    done = cli(
        "interpolate",
        str(recipe),
        "--out",
        str(run),
        "--quiet",
        "--overwrite",
        "interpolation.method=lerp",
    )
    assert done.returncode == 0, done.stderr
    assert "lerp between encodings" in (run / "report.html").read_text()
    assert (run / "checkpoints").is_dir()


def test_sampling_without_a_model_explains_what_to_do(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    done = cli("sample", str(recipe), "--out", str(tmp_path / "nothing"), "--quiet")
    assert done.returncode == 2
    assert "no trained model" in done.stderr and "model.checkpoint" in done.stderr


def test_validate_exit_codes(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    ok = cli("validate", str(recipe))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = cli("validate", str(recipe), "sampling.batchnorm=train", "sampling.transition.name=dce")
    assert bad.returncode == 2
    assert "sampling.batchnorm: Input should be 'batch' or 'running' (got 'train')" in bad.stderr
    assert (
        "unknown transition 'dce'" in bad.stderr
        and "decode_corrupt_encode (aesampler)" in bad.stderr
    )


def test_the_saltpepper_plugin_recipe_runs_end_to_end(tmp_path):
    recipe = ROOT / "recipes" / "saltpepper_mnist5k.yaml"
    tiny = [
        "model.width=4",
        "model.latent_dim=8",
        "train.max_steps=2",
        "train.grid_size=4",
        "sampling.num_chains=8",
        "interpolation.pairs=2",
        # Overrides apply on top of the defaults: a small evaluation in pixel space.
        "evaluate.feature_extractor.name=pixels",
        "evaluate.num_chains=40",
        "evaluate.reference_size=40",
        "evaluate.train_size=200",
        "evaluate.bootstrap=10",
    ]
    done = cli("run", str(recipe), *tiny, "--out", str(tmp_path / "run"), "--quiet")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "run" / "report.html").read_text()
    assert "chain corruption name=salt_pepper, p=0.2, salt=0.5" in report


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_report_renders_in_headless_chromium_with_every_image(tiny_run):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail(
                "CI must have Debian's chromium and chromium-driver (.ci/run installs them)"
            )
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    _, run, _ = tiny_run
    driver = _chrome()
    try:
        driver.get((run / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        headings = driver.execute_script(
            "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
        )
    finally:
        driver.quit()
    sources = [src for src, _, _ in images]
    assert sources == [
        "samples/step-000.png",
        "samples/step-001.png",
        "samples/step-006.png",
        "interpolation/interpolation.png",
        "report/metrics.png",
        "report/losses.png",
        "images/epoch-001-reconstructions.png",
    ]
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == []
    assert headings == [
        "Run",
        "Samples along the chain",
        "Interpolation",
        "Sample quality by chain step",
        "Training",
        "Recipe",
    ]


def test_data_that_does_not_fit_the_checkpoint_is_refused(tiny_run):
    recipe, run, _ = tiny_run
    done = cli(
        "interpolate",
        str(recipe),
        "--checkpoint",
        str(run),
        "--out",
        str(run.parent / "wrong"),
        "--quiet",
        "data.image_size=16",
    )
    assert done.returncode == 2
    assert "gives 1-channel images of 16 x 16, but the model" in done.stderr
    assert "trained on 1-channel images of 8 x 8" in done.stderr


def test_an_evaluation_that_cannot_work_stops_before_training(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(images / f"{i}.png")
    recipe = tmp_path / "unlabelled.yaml"
    recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        f"data: {{name: image_folder, root: {images}, image_size: 8}}\n"
        "train: {epochs: 1, batch_size: 4, grid_size: 4}\n"
        "output: {dir: unused}\n"
    )
    done = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert done.returncode == 2
    assert "classifier feature extractor needs labels" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing was trained or written
