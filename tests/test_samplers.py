"""Start samplers: the interface, the built-ins on cases with known answers, and a run."""

from __future__ import annotations

import math

import pytest
import torch

from aesampler.samplers import (
    EncodingsSampler,
    ExPostGMM,
    PriorSampler,
    SamplerContext,
    SamplerError,
    encode_images,
)

from .conftest import tiny_nets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def known_mixture(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws from 0.2 N((0,0), 0.25 I) + 0.3 N((6,6), diag(1, 0.25)) + 0.5 N((-6,6), I)."""
    weights = torch.tensor([0.2, 0.3, 0.5])
    means = torch.tensor([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0]])
    stds = torch.tensor([[0.5, 0.5], [1.0, 0.5], [1.0, 1.0]])
    which = torch.multinomial(weights, n, replacement=True, generator=gen(seed))
    return means[which] + stds[which] * torch.randn(n, 2, generator=gen(seed + 1)), means


def test_the_gmm_recovers_a_known_mixture():
    z, means = known_mixture()
    sampler = ExPostGMM(components=3)
    sampler.fit(SamplerContext.from_encodings({"train": z}))
    order = sampler.means[:, 0].argsort()  # (-6, 6), (0, 0), (6, 6)
    assert torch.allclose(sampler.weights[order], torch.tensor([0.5, 0.2, 0.3]).double(), atol=0.03)
    assert torch.allclose(sampler.means[order].float(), means[[2, 0, 1]], atol=0.1)
    covariances = sampler.scale_tril @ sampler.scale_tril.transpose(1, 2)
    assert torch.allclose(
        covariances[order[2]].float(), torch.diag(torch.tensor([1.0, 0.25])), atol=0.1
    )
    draws = sampler.sample(20000, gen(3))
    # The mixture's mean and covariance, within about 5 standard errors of 20,000 draws.
    assert torch.allclose(draws.mean(0), z.mean(0), atol=5 * z.std(0).max() / math.sqrt(20000))
    assert torch.allclose(draws.std(0), z.std(0), rtol=0.03)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical", "tied"])
def test_every_covariance_type_samples_with_its_shape(covariance):
    z, _ = known_mixture(600)
    sampler = ExPostGMM(components=3, covariance=covariance)
    sampler.fit(SamplerContext.from_encodings({"train": z}))
    assert sampler.sample(7, gen(0)).shape == (7, 2)
    assert sampler.scale_tril.shape == (3, 2, 2)


def test_draws_come_from_the_generator_only():
    z, _ = known_mixture(600)
    context = SamplerContext.from_encodings({"train": z, "test": z[:50]})
    samplers = [PriorSampler(), EncodingsSampler(), ExPostGMM(components=2)]
    for sampler in samplers:
        sampler.fit(context)
        before = torch.get_rng_state()
        a, b = sampler.sample(9, gen(1)), sampler.sample(9, gen(1))
        assert torch.equal(a, b) and a.shape == (9, 2) and a.dtype == torch.float32
        assert not torch.equal(a, sampler.sample(9, gen(2)))
        assert torch.equal(torch.get_rng_state(), before)


def test_a_saved_state_gives_the_same_draws():
    z, _ = known_mixture(600)
    context = SamplerContext.from_encodings({"train": z, "test": z[:50]})
    for make in (lambda: ExPostGMM(components=3), EncodingsSampler):
        fitted = make()
        fitted.fit(context)
        state = {k: v.clone() for k, v in fitted.state_dict().items()}
        loaded = make()
        loaded.load_state_dict(state)
        assert torch.equal(fitted.sample(11, gen(5)), loaded.sample(11, gen(5)))
    with pytest.raises(SamplerError, match="holds 3 components"):
        ExPostGMM(components=4).load_state_dict(state_of_three(context))
    with pytest.raises(SamplerError, match="lacks"):
        ExPostGMM().load_state_dict({})


def state_of_three(context):
    sampler = ExPostGMM(components=3)
    sampler.fit(context)
    return sampler.state_dict()


def test_encodings_are_drawn_from_the_held_out_split():
    z = torch.arange(20.0).reshape(10, 2)
    sampler = EncodingsSampler(replace=False)
    sampler.fit(SamplerContext.from_encodings({"test": z, "train": -z}))
    draws = sampler.sample(10, gen(0))
    assert sorted(draws[:, 0].tolist()) == z[:, 0].tolist()  # every encoding once
    with pytest.raises(SamplerError, match="11 draws without replacement from 10"):
        sampler.sample(11, gen(0))


def test_bad_parameters_and_unfitted_samplers_are_clear_errors():
    for make, message in (
        (lambda: ExPostGMM(components=0), "components must be a positive integer"),
        (lambda: ExPostGMM(covariance="banana"), "covariance must be one of"),
        (lambda: ExPostGMM(reg_covar=-1.0), "reg_covar must be a positive number"),
        (lambda: EncodingsSampler(split="holdout"), "split must be"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(SamplerError, match="not fitted"):
        ExPostGMM().sample(3, gen(0))
    with pytest.raises(SamplerError, match="not fitted"):
        PriorSampler().sample(3, gen(0))
    z, _ = known_mixture(5)
    with pytest.raises(SamplerError, match="10 components need at least as many encodings"):
        ExPostGMM().fit(SamplerContext.from_encodings({"train": z}))


def test_encode_images_leaves_the_model_unchanged_and_is_seeded():
    enc_net, _ = tiny_nets(latent=3, image=(1, 4, 4), stochastic=True)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from aesampler import GaussianEncoder

            self.encoder = GaussianEncoder(enc_net)

    model = Model()
    images = torch.rand(10, 1, 4, 4, generator=gen(0))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    a = encode_images(model, images, seed=3, batch=4)
    b = encode_images(model, [images[:4], images[4:8], images[8:]], seed=3)
    assert a.shape == (10, 3) and torch.equal(a, b)
    assert not torch.equal(a, encode_images(model, images, seed=4, batch=4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())


def test_a_run_starts_its_chains_from_the_recipes_sampler_and_keeps_what_it_fitted(
    tiny_run, tmp_path
):
    import shutil

    from safetensors.torch import load_file

    from aesampler.chain import start_generator
    from aesampler.rundir import RunDir

    from .conftest import cli

    _, run, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    start = ["sampling.start.name=ex_post_gmm", "sampling.start.components=2"]
    done = cli("sample", str(copy), "--overwrite", *start)
    assert done.returncode == 0, done.stderr
    assert "sampler 'ex_post_gmm': fitted" in done.stdout
    [folder] = (copy / "fitted").iterdir()
    assert folder.name.startswith("ex_post_gmm-") and "fitted" in RunDir(copy).owned()
    sampler = ExPostGMM(components=2)
    sampler.load_state_dict(load_file(str(folder / "state.safetensors")))
    sampler.latent_shape = (4,)
    saved = load_file(str(copy / "samples" / "samples.safetensors"))
    assert torch.equal(saved["z/step-000"], sampler.sample(12, start_generator(5)))
    report = (copy / "report.html").read_text()
    assert "step 0: draws from a Gaussian mixture fitted to the training encodings" in report

    again = cli("sample", str(copy), "--overwrite", *start)
    assert "loaded what it fitted" in again.stdout and "fitted in" not in again.stdout
    assert torch.equal(
        load_file(str(copy / "samples" / "samples.safetensors"))["z/step-000"], saved["z/step-000"]
    )
    # Another setting is another fit, kept beside the first.
    other = cli("sample", str(copy), "--overwrite", *start[:1], "sampling.start.components=3")
    assert other.returncode == 0, other.stderr
    assert len(list((copy / "fitted").iterdir())) == 2
    # A new model makes the fitted states stale: training over the run replaces them.
    assert cli("train", str(copy), "--overwrite", "--quiet").returncode == 0
    assert not (copy / "fitted").exists()
