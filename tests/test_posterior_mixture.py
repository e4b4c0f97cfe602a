"""``posterior_mixture`` and the posteriors it is built on (SamplerContext, encode_posteriors).

Everything is small (a few hundred components in 2 or 3 dimensions, a 4 x 4 image model), so the
file stays fast on 2 cores. Statistical checks state their bound beside them.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from aesampler import DeterministicEncoder, GaussianCorruption, GaussianEncoder
from aesampler.plugins import load_registry
from aesampler.samplers import (
    PosteriorMixture,
    SamplerContext,
    SamplerError,
    encode_posteriors,
    hold_out,
    mixture_log_likelihood,
    scale_grid,
)

from .conftest import tiny_nets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(_line: str) -> None:
    pass


def components(n: int = 300, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means spread over a few units and stds between 0.2 and 0.6."""
    means = 3 * torch.randn(n, d, generator=gen(seed))
    stds = 0.2 + 0.4 * torch.rand(n, d, generator=gen(seed + 1))
    return means, stds


def mixture_draws(means, stds, scale, n, seed):
    which = torch.randint(len(means), (n,), generator=gen(seed))
    return means[which] + scale * stds[which] * torch.randn(
        n, means.shape[1], generator=gen(seed + 1)
    )


def brute_log_likelihood(z, means, stds, scale):
    """The mean log-density of rows of z under (1/N) Σ N(μᵢ, s² σᵢ²), term by term."""
    normal = torch.distributions.Normal(means.double(), scale * stds.double().expand_as(means))
    log_p = normal.log_prob(z.double()[:, None]).sum(-1)  # (M, N)
    return float((torch.logsumexp(log_p, dim=1) - math.log(len(means))).mean())


def test_the_log_likelihood_in_blocks_is_the_direct_one():
    means, stds = components(40, 3)
    z = mixture_draws(means, stds, 1.0, 25, seed=7)
    scales = [0.3, 1.0, 2.5]
    blocked = mixture_log_likelihood(z, means, stds, scales, block=6)  # 25 rows: 5 blocks
    shared = mixture_log_likelihood(z, means, stds[:1], scales, block=6)
    for k, s in enumerate(scales):
        assert blocked[k].item() == pytest.approx(
            brute_log_likelihood(z, means, stds, s), rel=1e-10
        )
        assert shared[k].item() == pytest.approx(
            brute_log_likelihood(z, means, stds[:1], s), rel=1e-10
        )


def test_the_grid_is_geometric_and_holds_one():
    grid = scale_grid(0.1, 3.0, 16)
    assert len(grid) == 17 and grid[0] == pytest.approx(0.1) and grid[-1] == 3.0 and 1.0 in grid
    ratios = [b / a for a, b in itertools.pairwise(grid) if 1.0 not in (a, b)]
    assert max(ratios) == pytest.approx(min(ratios)) == pytest.approx(30 ** (1 / 15))
    assert scale_grid(2.0, 3.0, 3) == [2.0, pytest.approx(math.sqrt(6)), 3.0]  # 1 not in range
    assert scale_grid(0.5, 0.5, 1) == [0.5]


def test_the_chosen_scale_maximises_the_validation_likelihood():
    means, stds = components()
    valid = mixture_draws(means, stds, 0.5, 2000, seed=3)  # drawn at s = 0.5
    lines = []
    context = SamplerContext.from_encodings(
        {"train": mixture_draws(means, stds, 1.0, 300, seed=5), "valid": valid},
        posteriors={"train": (means, stds)},
        log=lines.append,
    )
    sampler = PosteriorMixture()
    sampler.fit(context)
    stats = sampler.stats
    assert stats["form"] == "posterior" and stats["scale_source"] == "validation"
    assert stats["components"] == 300 and stats["valid_encodings"] == 2000
    by_scale = stats["valid_loglik_by_scale"]
    assert len(by_scale) == len(scale_grid(0.1, 3.0, 16)) == len(sampler.scales)
    for s, value in zip(sampler.scales, sampler.valid_loglik):
        assert value == pytest.approx(brute_log_likelihood(valid, means, stds, s), rel=1e-9)
        assert by_scale[f"{s:.6g}"] == value
    best = max(range(len(sampler.scales)), key=lambda k: sampler.valid_loglik[k])
    assert sampler.chosen_scale == stats["scale"] == sampler.scales[best]
    assert stats["valid_loglik"] == max(sampler.valid_loglik)
    # The grid point nearest the s the validation encodings were drawn at (0.489 and 0.613 are
    # its neighbours; 2,000 encodings pin the maximum-likelihood s far closer than that).
    assert sampler.chosen_scale == pytest.approx(0.489, abs=1e-3)
    assert any("s = 0.489 chosen on 2000 validation encodings" in line for line in lines)
    assert any("posterior std (posterior)" in line for line in lines)


def test_a_fixed_scale_is_used_as_given():
    means = torch.tensor([[1.0, -2.0]])
    stds = torch.tensor([[0.5, 2.0]])
    context = SamplerContext.from_encodings(
        {"train": means.clone(), "valid": torch.randn(50, 2, generator=gen(0))},
        posteriors={"train": (means, stds)},
        log=quiet,
    )
    sampler = PosteriorMixture(scale=0.5)
    sampler.fit(context)
    assert sampler.chosen_scale == 0.5 and sampler.scales == [0.5]
    assert sampler.stats["scale_source"] == "fixed" and "valid_loglik" in sampler.stats
    draws = sampler.sample(20000, gen(1))
    # One component: N((1, -2), diag(0.25², 1²)); within 5 standard errors of 20,000 draws.
    assert torch.allclose(draws.mean(0), means[0], atol=5 * 1.0 / math.sqrt(20000))
    assert torch.allclose(draws.std(0), torch.tensor([0.25, 1.0]), rtol=0.03)
    # With no validation split, a fixed scale needs none: every image is a component.
    train_only = SamplerContext.from_encodings(
        {"train": torch.zeros(10, 2)},
        posteriors={"train": (torch.zeros(10, 2), torch.ones(10, 2))},
        log=quiet,
    )
    fixed = PosteriorMixture(scale=2.0)
    fixed.fit(train_only)
    assert fixed.stats["components"] == 10 and "valid_loglik" not in fixed.stats


def test_draws_come_from_the_generator_only():
    means, stds = components(50)
    context = SamplerContext.from_encodings(
        {"train": means, "valid": mixture_draws(means, stds, 1.0, 100, 2)},
        posteriors={"train": (means, stds)},
        log=quiet,
    )
    sampler = PosteriorMixture()
    sampler.fit(context)
    before = torch.get_rng_state()
    a, b = sampler.sample(9, gen(1)), sampler.sample(9, gen(1))
    assert torch.equal(a, b) and a.shape == (9, 2) and a.dtype == torch.float32
    assert not torch.equal(a, sampler.sample(9, gen(2)))
    assert torch.equal(torch.get_rng_state(), before)
    assert sampler.sample(0, gen(1)).shape == (0, 2)
    # Draw by draw: a uniform component, then its mean plus s σ ε.
    g = gen(4)
    which = torch.randint(50, (9,), generator=g)
    eps = torch.randn(9, 2, generator=g)
    expected = means[which] + sampler.chosen_scale * stds[which] * eps
    assert torch.allclose(sampler.sample(9, gen(4)), expected)


def test_a_saved_state_gives_the_same_draws_and_records(tmp_path):
    from safetensors.torch import load_file, save_file

    g = gen(0)
    means = torch.randn(60, 2, 3, generator=g)
    stds = 0.1 + torch.rand(60, 2, 3, generator=g)
    context = SamplerContext.from_encodings(
        {"train": means, "valid": means[:20] + 0.1 * torch.randn(20, 2, 3, generator=g)},
        posteriors={"train": (means, stds)},
        log=quiet,
    )
    for make in (PosteriorMixture, lambda: PosteriorMixture(scale=0.7)):
        fitted = make()
        fitted.fit(context)
        save_file(fitted.state_dict(), str(tmp_path / "state.safetensors"))  # plain tensors
        state = load_file(str(tmp_path / "state.safetensors"))
        loaded = make()
        loaded.load_state_dict(state)
        assert loaded.latent_shape == (2, 3) and loaded.stats == fitted.stats
        assert torch.equal(loaded.sample(11, gen(5)), fitted.sample(11, gen(5)))
    with pytest.raises(SamplerError, match="has s = 0.7, not the 0.5 asked for"):
        PosteriorMixture(scale=0.5).load_state_dict(state)
    with pytest.raises(SamplerError, match="lacks"):
        PosteriorMixture().load_state_dict({})
    broken = {**state, "stds": state["stds"][:5]}
    with pytest.raises(SamplerError, match="does not hold together"):
        PosteriorMixture().load_state_dict(broken)
    assert PosteriorMixture().state_dict() == {}


def test_without_posteriors_one_shared_diagonal_is_used():
    z = torch.randn(400, 3, generator=gen(0)) * torch.tensor([1.0, 2.0, 0.5])
    valid = torch.randn(100, 3, generator=gen(1)) * torch.tensor([1.0, 2.0, 0.5])
    lines = []
    sampler = PosteriorMixture()
    sampler.fit(SamplerContext.from_encodings({"train": z, "valid": valid}, log=lines.append))
    factor = 400 ** (-1 / 7)  # Scott's rule in 3 dimensions
    assert sampler.stats["form"] == "shared_diagonal"
    assert sampler.stats["shared_factor"] == pytest.approx(factor)
    assert sampler.stds.shape == (1, 3) and torch.equal(sampler.means, z)
    assert torch.allclose(sampler.stds[0], factor * z.std(0), rtol=1e-5)
    assert any("no posteriors" in line and "shared_diagonal" in line for line in lines)
    assert sampler.sample(5, gen(2)).shape == (5, 3)
    # A deterministic encoder without a corruption gives means and no stds: the same form.
    for stds in (None, torch.zeros(400, 3)):
        lines.clear()
        context = SamplerContext.from_encodings(
            {"train": z, "valid": valid}, posteriors={"train": (z, stds)}, log=lines.append
        )
        other = PosteriorMixture()
        other.fit(context)
        assert other.stats["form"] == "shared_diagonal" and torch.equal(other.stds, sampler.stds)
        assert any("no posterior spread" in line for line in lines)


def test_validation_images_are_never_components():
    means, stds = components(100)
    far = means[:30] + 100.0  # validation encodings nowhere near the training posteriors
    context = SamplerContext.from_encodings(
        {"train": means, "valid": far}, posteriors={"train": (means, stds)}, log=quiet
    )
    sampler = PosteriorMixture()
    sampler.fit(context)
    assert torch.equal(sampler.means, means) and sampler.stats["components"] == 100
    # No validation split (or the fitted one): a tenth is held out and left out of the mixture.
    lines = []
    for valid_split in ("valid", "train"):
        context = SamplerContext.from_encodings(
            {"train": means}, posteriors={"train": (means, stds)}, seed=3, log=lines.append
        )
        held_sampler = PosteriorMixture(valid_split=valid_split)
        held_sampler.fit(context)
        kept, held = hold_out(100, 3)
        assert len(held) == 10 and held_sampler.stats["valid_encodings"] == 10
        assert torch.equal(held_sampler.means, means[kept])
        assert torch.equal(held_sampler.stds, stds[kept])
        held_rows = means[held]
        assert not (held_sampler.means[:, None] == held_rows[None]).all(-1).any()
    assert any("holding out 10 of the 'train' split" in line for line in lines)


def test_bad_parameters_and_unfitted_samplers_are_clear_errors():
    for make, message in (
        (lambda: PosteriorMixture(scale=0.0), "scale must be a positive number"),
        (lambda: PosteriorMixture(scale=-1.0), "scale must be a positive number"),
        (lambda: PosteriorMixture(scale=math.inf), "scale must be a positive number"),
        (lambda: PosteriorMixture(scale="1"), "scale must be a positive number"),
        (lambda: PosteriorMixture(min_scale=0), "min_scale must be a positive number"),
        (lambda: PosteriorMixture(max_scale=0.05), "max_scale must be at least min_scale"),
        (lambda: PosteriorMixture(grid=0), "grid must be a positive integer"),
        (lambda: PosteriorMixture(split="holdout"), "split must be"),
        (lambda: PosteriorMixture(valid_split="all"), "valid_split must be"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(SamplerError, match="not fitted"):
        PosteriorMixture().sample(3, gen(0))
    with pytest.raises(SamplerError, match="too few images"):
        PosteriorMixture().fit(SamplerContext.from_encodings({"train": torch.zeros(2, 2)}))
    one = SamplerContext.from_encodings({"train": torch.zeros(1, 2), "valid": torch.ones(3, 2)})
    with pytest.raises(SamplerError, match="one shared diagonal needs at least 2 encodings"):
        PosteriorMixture().fit(one)
    registry = load_registry()
    assert registry.create("sampler", "posterior_mixture", scale=0.5).scale == 0.5


def test_the_context_computes_posteriors_once_and_checks_them():
    calls = []

    def posterior(split):
        calls.append(split)
        return torch.zeros(4, 3), torch.ones(4, 3)

    context = SamplerContext((3,), posterior=posterior)
    means, stds = context.posteriors("train")
    assert means.shape == stds.shape == (4, 3)
    assert context.posteriors("train")[0] is means and calls == ["train"]
    with pytest.raises(SamplerError, match="no posteriors of the 'train' split"):
        SamplerContext((3,)).posteriors("train")
    with pytest.raises(SamplerError, match="no posteriors of the 'valid' split"):
        SamplerContext.from_encodings({"train": torch.zeros(4, 3)}).posteriors("valid")
    for wrong, message in (
        ((torch.zeros(4, 2), None), "means of the 'train' split have shape"),
        ((torch.zeros(4, 3), torch.ones(4, 2)), "stds of the 'train' split have shape"),
        ((torch.zeros(4, 3), -torch.ones(4, 3)), "finite and non-negative"),
    ):
        with pytest.raises(SamplerError, match=message):
            SamplerContext((3,), posterior=lambda _, w=wrong: w).posteriors("train")


class Model(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


def test_encode_posteriors_gives_the_encoders_spread_and_leaves_the_model_unchanged():
    images = torch.rand(10, 1, 4, 4, generator=gen(0))
    enc_net, _ = tiny_nets(latent=3, image=(1, 4, 4), stochastic=True)
    vae = Model(GaussianEncoder(enc_net))
    buffers = {k: v.clone() for k, v in vae.state_dict().items()}
    means, stds = encode_posteriors(vae, images, batch=4)  # minibatch statistics
    assert means.shape == stds.shape == (10, 3)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in buffers.items())
    # In the population-statistics mode, the posterior of the model in eval mode.
    running_means, running_stds = encode_posteriors(vae, images, batchnorm="running", batch=4)
    vae.eval()
    with torch.no_grad():
        posterior = vae.encoder(images)
    assert torch.allclose(running_means, posterior.mean) and torch.allclose(
        running_stds, posterior.std
    )
    assert (stds > 0).all() and not torch.allclose(stds, running_stds)  # the modes do differ

    det_net, _ = tiny_nets(latent=3, image=(1, 4, 4), stochastic=False, seed=1)
    aae = Model(DeterministicEncoder(det_net))
    buffers = {k: v.clone() for k, v in aae.state_dict().items()}
    plain_means, plain_stds = encode_posteriors(aae, images, batch=4)
    assert plain_means.shape == (10, 3) and plain_stds is None
    noisy = GaussianCorruption(0.5)
    a = encode_posteriors(aae, images, batch=4, corruption=noisy, copies=6, seed=1)
    b = encode_posteriors(
        aae, [images[:4], images[4:8], images[8:]], corruption=noisy, copies=6, seed=1
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded
    spread = a[0].std(0, correction=0)
    assert (a[1] > 0).all() and (a[1] >= 1e-3 * spread).all()
    # The noise moves the encodings: a spread well above the floor for most coordinates.
    assert (a[1] > 0.01 * spread).float().mean() > 0.5
    assert not torch.equal(
        a[1], encode_posteriors(aae, images, corruption=noisy, copies=6, seed=2)[1]
    )
    assert all(torch.equal(v, aae.state_dict()[k]) for k, v in buffers.items())
    # An identity corruption changes nothing: no spread is known.
    assert encode_posteriors(aae, images, corruption=GaussianCorruption(0.0))[1] is None
    with pytest.raises(ValueError, match="copies must be"):
        encode_posteriors(aae, images, corruption=noisy, copies=1)

    # The sampler fits on what encode_posteriors gives.
    context = SamplerContext.from_encodings(
        {"train": a[0], "valid": a[0][:3]}, posteriors={"train": a}, log=quiet
    )
    sampler = PosteriorMixture(grid=4)
    sampler.fit(context)
    assert sampler.stats["form"] == "posterior" and sampler.sample(4, gen(0)).shape == (4, 3)
