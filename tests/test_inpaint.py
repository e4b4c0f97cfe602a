"""Inpainting (issue #9 §5): masks, the conditional chain, `aesampler inpaint` and its outputs."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from safetensors.torch import load_file

import aesampler
from aesampler.chain import sampling_mode
from aesampler.inpaint import (
    MASK_KINDS,
    InpaintTransition,
    KeepObserved,
    KeepObservedCorruption,
    inpaint,
    make_mask,
)
from aesampler.recipe.loader import RecipeError, validate
from aesampler.recipe.schema import MaskSection

from .conftest import cli, tiny_chain_parts

IMAGE = (1, 4, 4)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *IMAGE, generator=torch.Generator().manual_seed(seed))


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "hidden"),
    [
        ("left", (slice(None), slice(0, 3))),
        ("right", (slice(None), slice(7, 10))),
        ("top", (slice(0, 2), slice(None))),
        ("bottom", (slice(4, 6), slice(None))),
    ],
)
def test_a_side_mask_hides_that_side(missing, hidden):
    observed = make_mask(missing, (6, 10), count=3, fraction=0.3)
    assert observed.shape == (3, 1, 6, 10) and observed.dtype == torch.bool
    expected = torch.ones(6, 10, dtype=torch.bool)
    expected[hidden] = False  # 0.3 of 10 columns is 3, 0.3 of 6 rows rounds to 2
    assert all(torch.equal(mask[0], expected) for mask in observed)
    half = make_mask(missing, (8, 8))
    assert int((~half).sum()) == 32  # the default hides a half


def test_a_centre_mask_hides_a_centred_box():
    observed = make_mask("centre", (8, 8), count=2, fraction=0.5)
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = False
    assert observed.shape == (2, 1, 8, 8)
    assert torch.equal(observed[0, 0], expected) and torch.equal(observed[1, 0], expected)


def test_a_random_mask_hides_that_share_of_each_image_and_follows_its_seed():
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    observed = make_mask("random", (8, 8), count=5, fraction=0.25, generator=seeded(1))
    assert observed.shape == (5, 1, 8, 8)
    assert ((~observed).flatten(1).sum(1) == 16).all()  # exactly 0.25 of 64 in every image
    assert not torch.equal(observed[0], observed[1])  # each image its own pixels
    again = make_mask("random", (8, 8), count=5, fraction=0.25, generator=seeded(1))
    other = make_mask("random", (8, 8), count=5, fraction=0.25, generator=seeded(2))
    assert torch.equal(observed, again) and not torch.equal(observed, other)


@pytest.mark.parametrize(
    ("missing", "fraction", "message"),
    [
        ("middle", 0.5, "inpaint.mask.missing must be one of left, right, top, bottom, centre"),
        ("left", 1.0, r"inpaint.mask.fraction must be in \(0, 1\), got 1.0"),
        ("left", "half", r"inpaint.mask.fraction must be a number in \(0, 1\)"),
        ("centre", 0.05, "inpaint.mask.fraction=0.05 hides no pixel of a 8 x 8 image"),
        ("random", 0.999, "inpaint.mask.fraction=0.999 hides every pixel"),
    ],
)
def test_a_bad_mask_is_one_error_naming_the_key(missing, fraction, message):
    with pytest.raises(aesampler.ChainInputError, match=message):
        make_mask(missing, (8, 8), fraction=fraction, where="inpaint.mask")


def test_the_recipe_offers_every_mask_kind():
    assert typing.get_args(MaskSection.model_fields["missing"].annotation) == MASK_KINDS


def test_a_bad_mask_in_a_recipe_names_its_key():
    recipe = {
        "model": {"name": "aae"},
        "data": {"name": "digits"},
        "inpaint": {"mask": {"missing": "middle", "fraction": 1.5, "size": 3}},
        "output": {"dir": "unused"},
    }
    with pytest.raises(RecipeError) as caught:
        validate(recipe)
    assert str(caught.value).splitlines()[1:] == [
        "  <recipe>: inpaint.mask.fraction: Input should be less than 1 (got 1.5)",
        "  <recipe>: inpaint.mask.missing: Input should be 'left', 'right', 'top', 'bottom', "
        "'centre' or 'random' (got 'middle')",
        "  <recipe>: inpaint.mask.size: unknown key. Keys here: missing, fraction, seed",
    ]


# --- the conditional chain -----------------------------------------------------------------------


@pytest.mark.parametrize("corrupt_observed", [False, True])
def test_observed_pixels_are_the_images_own_at_every_step(corrupt_observed):
    encoder, decoder = tiny_chain_parts(stochastic=True)
    images = _images()
    observed = make_mask("random", IMAGE[1:], count=6, fraction=0.5, generator=None)
    done = inpaint(
        encoder,
        decoder,
        images,
        observed,
        corruption=aesampler.GaussianCorruption(0.5),
        corrupt_observed=corrupt_observed,
        chains=2,
        steps=4,
        record="all",
        seed=0,
    )
    truth = images.repeat_interleave(2, dim=0)
    kept = observed.repeat_interleave(2, dim=0).expand_as(truth)
    assert done.chains.steps == (0, 1, 2, 3, 4)
    for t in done.chains.steps:
        x = done.chains.x[t]
        assert torch.equal(x[kept], truth[kept]), t  # bit for bit
        assert not torch.equal(x[~kept], truth[~kept])  # the hidden pixels are the model's
    assert not torch.equal(done.chains.x[1], done.chains.x[4])  # and they move


def test_step_0_encodes_the_masked_image_and_each_step_is_one_sweep():
    encoder, decoder = tiny_chain_parts()  # deterministic, so one step can be recomputed
    images = _images()
    observed = make_mask("left", IMAGE[1:], count=6)
    done = inpaint(encoder, decoder, images, observed, steps=1, fill=0.25, seed=0)
    start = torch.where(observed, images, torch.tensor(0.25))
    assert torch.equal(done.start, start)
    with sampling_mode([encoder, decoder], "batch"), torch.no_grad():
        z0 = encoder(start).mean
        x0 = torch.where(observed, images, decoder(z0))
        z1 = encoder(x0).mean  # identity corruption: the sweep is decode, re-impose, encode
    assert torch.equal(done.chains.z[0], z0) and torch.equal(done.chains.x[0], x0)
    torch.testing.assert_close(done.chains.z[1], z1)
    # The error is the mean squared error over the hidden pixels, per chain.
    hidden = (~observed).expand_as(images)
    manual = ((x0 - images) ** 2 * hidden).flatten(1).sum(1) / hidden.flatten(1).sum(1)
    torch.testing.assert_close(done.error[0].float(), manual)
    assert done.mean_error[0] == pytest.approx(float(manual.double().mean()), rel=1e-6)


def test_the_same_seed_gives_the_same_fill():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    images, observed = _images(), make_mask("bottom", IMAGE[1:])
    noise = aesampler.GaussianCorruption(0.5)
    run = lambda seed: inpaint(  # noqa: E731
        encoder, decoder, images, observed, corruption=noise, steps=3, record="all", seed=seed
    )
    first, again, other = run(7), run(7), run(8)
    for t in first.chains.steps:
        assert torch.equal(first.chains.x[t], again.chains.x[t])
        assert torch.equal(first.chains.z[t], again.chains.z[t])
    assert not torch.equal(first.chains.x[3], other.chains.x[3])


def test_the_corruption_leaves_observed_pixels_alone():
    x = torch.rand(3, *IMAGE)
    observed = make_mask("top", IMAGE[1:])
    noisy = KeepObservedCorruption(aesampler.GaussianCorruption(0.5), observed)
    out = noisy(x, generator=torch.Generator().manual_seed(0))
    kept = observed.expand_as(x)
    assert torch.equal(out[kept], x[kept]) and not torch.equal(out[~kept], x[~kept])


def test_the_transition_decodes_reimposes_corrupts_and_encodes():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    images, observed = _images(), make_mask("right", IMAGE[1:])
    noise = aesampler.GaussianCorruption(0.3)
    transition = InpaintTransition(encoder, decoder, images, observed, noise)
    assert isinstance(transition.decoder, KeepObserved)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with sampling_mode([transition], "running"), torch.no_grad():
        out = transition(z, generator=torch.Generator().manual_seed(1))
        x = torch.where(observed, images, decoder(z))
        g = torch.Generator().manual_seed(1)
        x_tilde = torch.where(observed, x, noise(x, generator=g))
        z_next = encoder(x_tilde).sample(g)
    assert torch.equal(out.x, x) and torch.equal(out.z, z_next)


def test_a_transition_that_ignores_its_decoder_is_refused():
    encoder, decoder = tiny_chain_parts()

    def careless(encoder_, keep, corruption):  # renders x with the raw decoder
        return aesampler.DecodeCorruptEncode(encoder_, decoder, corruption)

    with pytest.raises(aesampler.ChainInputError, match="changed observed pixels at step 0"):
        inpaint(encoder, decoder, _images(), make_mask("left", IMAGE[1:]), transition=careless)


def test_bad_arguments_are_clear_errors():
    encoder, decoder = tiny_chain_parts()
    images = _images()
    with pytest.raises(aesampler.ChainInputError, match="observed must be a bool tensor"):
        inpaint(encoder, decoder, images, torch.ones(6, 1, 4, 4))
    with pytest.raises(aesampler.ChainInputError, match="observed is 3 x 3 pixels"):
        inpaint(encoder, decoder, images, make_mask("left", (3, 3)))
    with pytest.raises(aesampler.ChainInputError, match="there is 1 .1 image, 1 chain"):
        inpaint(encoder, decoder, images[:1], make_mask("left", IMAGE[1:]))


# --- the command ---------------------------------------------------------------------------------

RECIPE = """\
model: {name: aae, latent_dim: 4, width: 4, adversary_hidden: 16}
data: {name: digits, image_size: 8}
corruption: {name: gaussian, sigma: 0.5}
train: {epochs: 1, max_steps: 2, grid_size: 4}
inpaint: {images: 3, chains_per_image: 2, steps: 3, mask: {missing: centre}}
output: {dir: unused}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint")
    recipe = folder / "tiny.yaml"
    recipe.write_text(RECIPE)
    done = cli("train", str(recipe), "--out", str(folder / "run"), "--quiet")
    assert done.returncode == 0, done.stderr
    return recipe, folder / "run"


def test_the_command_writes_grids_tensors_and_settings(trained, tmp_path):
    recipe, run = trained
    out = tmp_path / "out"
    args = ["inpaint", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "mean squared error of the missing pixels by step: 0: " in done.stdout
    folder = out / "inpainting"
    grids = sorted(p.name for p in folder.glob("step-*.png"))
    assert grids == ["step-000.png", "step-001.png", "step-003.png"]
    assert (folder / "inpainting.png").is_file()
    tensors = load_file(str(folder / "inpainting.safetensors"))
    images, observed = tensors["images"], tensors["observed"]
    assert images.shape == (3, 1, 8, 8) and observed.dtype == torch.bool
    truth = images.repeat_interleave(2, dim=0)
    kept = observed.repeat_interleave(2, dim=0).expand_as(truth)
    for t in (0, 1, 3):
        assert tensors[f"x/step-{t:03d}"].shape == (6, 1, 8, 8)
        assert torch.equal(tensors[f"x/step-{t:03d}"][kept], truth[kept])
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["mask"] == {"missing": "centre", "fraction": 0.5, "seed": 0}
    assert settings["missing_share"] == 0.25  # a 4 x 4 box of 8 x 8
    assert set(settings["masked_mse"]) == {"0", "1", "3"}
    mean = tensors["error/step-003"].double().mean().item()
    assert settings["masked_mse"]["3"] == pytest.approx(mean)
    assert "<h2>Inpainting</h2>" in (out / "report.html").read_text()

    # Again: refused without --overwrite, nothing touched; replaced with it.
    before = (folder / "inpainting.safetensors").read_bytes()
    again = cli(*args, "inpaint.seed=1")
    assert again.returncode == 2 and "inpainting' already exists" in again.stderr
    assert (folder / "inpainting.safetensors").read_bytes() == before
    replaced = cli(*args, "inpaint.seed=1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (folder / "inpainting.safetensors").read_bytes() != before

    # The report reads the settings it shows, and a damaged file is one clear error.
    settings["masked_mse"]["1"] = "low"
    (folder / "settings.json").write_text(json.dumps(settings))
    damaged = cli("report", str(out))
    assert damaged.returncode == 2 and "'masked_mse' is not an object of numbers" in damaged.stderr


def test_the_command_refuses_a_bad_mask_before_any_work(trained, tmp_path):
    recipe, run = trained
    out = tmp_path / "out"
    base = ["inpaint", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet"]
    done = cli(*base, "inpaint.mask.missing=middle")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "inpaint.mask.missing: Input should be 'left', 'right'" in done.stderr
    done = cli(*base, "inpaint.mask.fraction=0.01")
    assert done.returncode == 2
    assert "inpaint.mask.fraction=0.01 hides no pixel of a 8 x 8 image" in done.stderr
    assert not out.exists()


def test_run_inpaints_only_when_the_section_is_enabled(trained, tmp_path):
    recipe, run = trained
    common = [f"model.checkpoint={run}", "--quiet", "evaluate.enabled=false"]
    off = cli("run", str(recipe), "--out", str(tmp_path / "off"), *common)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "off" / "inpainting").exists()
    on = cli("run", str(recipe), "--out", str(tmp_path / "on"), *common, "inpaint.enabled=true")
    assert on.returncode == 0, on.stderr
    assert (tmp_path / "on" / "inpainting" / "step-003.png").is_file()
