"""``local_global``: i-SIR + MALA on the ratio-corrected mixture, on a 2-D ring.

The 'encodings' lie on a ring of radius 2 (radial standard deviation 0.15), which a 3-component
Gaussian mixture fits poorly (radial spread about 0.45): the classifier's ratio must correct it.
Everything is 2-D and small, so the file runs in seconds on one thread.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from aesampler.evaluation.stats import mmd2_unbiased
from aesampler.plugins import load_registry
from aesampler.samplers import (
    ExPostGMM,
    LocalGlobal,
    SamplerContext,
    SamplerError,
    mixture_log_prob,
)

#: A small classifier that learns the ring in about a second.
SETTINGS = dict(components=3, pca_dims=None, hidden=64, epochs=200, patience=10)
#: Kernel bandwidth for the MMD: the ring's width scale (the median heuristic, about 2.8, is
#: blind to a ring against a blob of the same mean and spread).
BANDWIDTH = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ring(n: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 2 + 0.15 * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1)


def ring_context() -> SamplerContext:
    return SamplerContext.from_encodings(
        {"train": ring(2000, 0), "valid": ring(500, 1)}, log=lambda message: None
    )


@pytest.fixture(scope="module")
def fitted() -> LocalGlobal:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sampler = LocalGlobal(**SETTINGS)
    sampler.fit(ring_context())
    torch.set_num_threads(threads)
    return sampler


def reloaded(fitted: LocalGlobal, **changes) -> LocalGlobal:
    sampler = LocalGlobal(**{**SETTINGS, **changes})
    sampler.load_state_dict({k: v.clone() for k, v in fitted.state_dict().items()})
    return sampler


def mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    return mmd2_unbiased(x.double().numpy(), y.double().numpy(), BANDWIDTH)


def radial_spread(z: torch.Tensor) -> float:
    return float(z.double().norm(dim=1).std())


def test_mixture_log_prob_is_the_mixtures_density_and_gradient():
    g = gen(0)
    k, d = 3, 4
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    tril = torch.linalg.cholesky(a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64))
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=weights),
        torch.distributions.MultivariateNormal(means, scale_tril=tril),
    )
    z = torch.randn(50, d, generator=g, dtype=torch.float64).requires_grad_(True)
    ours = mixture_log_prob(weights, means, tril, z)
    theirs = reference.log_prob(z)
    assert torch.allclose(ours, theirs, atol=1e-10)
    (grad_ours,) = torch.autograd.grad(ours.sum(), z)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), z)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-10)
    gmm = ExPostGMM(components=k)
    gmm.load_state_dict({"weights": weights, "means": means, "scale_tril": tril})
    assert torch.allclose(gmm.log_prob(z.detach()), theirs.detach(), atol=1e-10)


def test_it_corrects_a_ring_the_mixture_misses(fitted):
    truth = ring(1500, 7)
    mixture = fitted.proposal.sample(1500, gen(3))
    draws = fitted.sample(1500, gen(3))
    assert draws.shape == (1500, 2) and draws.dtype == torch.float32
    # Measured: MMD² 0.019 for the mixture, 0.002-0.006 for local_global; radial spread 0.45
    # for the mixture, 0.16 for local_global, 0.15 for the ring.
    assert mmd(draws, truth) < mmd(mixture, truth) / 2.5
    assert radial_spread(mixture) > 0.35
    assert radial_spread(draws) < 0.22
    assert abs(float(draws.double().norm(dim=1).mean()) - 2.0) < 0.1
    stats = fitted.stats
    assert stats["valid_cross_entropy"] < math.log(2) - 0.1  # the classifier learned the ring
    # The step size was adapted towards 0.574 during the burn-in and then fixed.
    assert 0.4 < stats["mala_acceptance_rate"] < 0.75
    assert 0.2 < stats["mala_acceptance_rate_burn_in"] < 0.9
    assert stats["step_size"] > 0 and stats["step_size"] != fitted.step_size
    assert 0.2 < stats["isir_move_rate"] < 1  # weights vary: some moves keep the current state
    assert 0 < stats["isir_move_rate_burn_in"] <= 1
    assert stats["distinct_fraction"] == 1.0


@pytest.mark.parametrize(
    "moves", [dict(), dict(proposals=1, mala_steps=5), dict(proposals=5, mala_steps=0)]
)
def test_at_power_zero_the_chain_leaves_the_mixture_invariant(fitted, moves):
    sampler = reloaded(fitted, power=0.0, **moves)

    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("the classifier was used at power 0")

    sampler.classifier = Refuses()  # power 0: the classifier is ignored altogether
    draws = sampler.sample(3000, gen(4)).double()
    fresh = sampler.proposal.sample(3000, gen(5)).double()
    other = sampler.proposal.sample(3000, gen(6)).double()
    # Two independent mixture samples differ by sampling noise alone (MMD² about ±0.001 here,
    # against 0.019 between the mixture and the ring).
    noise = abs(mmd(other, fresh))
    assert abs(mmd(draws, fresh)) < max(3 * noise, 0.003)
    assert (draws.mean(0) - fresh.mean(0)).abs().max() < 0.1  # means' s.e. about 0.03
    cov_draws, cov_fresh = torch.cov(draws.T), torch.cov(fresh.T)
    assert (cov_draws - cov_fresh).abs().max() < 0.15 * cov_fresh.diagonal().max()
    assert radial_spread(draws) == pytest.approx(radial_spread(fresh), rel=0.1)
    if sampler.mala_steps:
        assert 0.4 < sampler.stats["mala_acceptance_rate"] < 0.75
    if sampler.proposals > 1:  # uniform weights: a fresh draw is taken (K-1)/K of the time
        rate = (sampler.proposals - 1) / sampler.proposals
        assert sampler.stats["isir_move_rate"] == pytest.approx(rate, abs=0.03)
    else:
        assert "isir_move_rate" not in sampler.stats


def test_draws_are_seeded_and_survive_a_state_round_trip(fitted):
    settings = dict(iterations=3, burn_in=2)
    sampler = reloaded(fitted, **settings)
    first = sampler.sample(40, gen(8))
    stats = dict(sampler.stats)
    assert torch.equal(first, sampler.sample(40, gen(8)))
    assert not torch.equal(first, sampler.sample(40, gen(9)))
    again = reloaded(sampler, **settings)
    assert set(again.state_dict()) == set(fitted.state_dict())
    assert {"mala_axes", "mala_scales", "mean", "projection", "proposal.means"} <= set(
        again.state_dict()
    )
    assert torch.equal(again.sample(40, gen(8)), first)
    assert {k: again.stats[k] for k in stats} == stats
    assert sampler.sample(0, gen(8)).shape == (0, 2)
    # The chains start and run under no_grad and inference mode too (the chain draws z0 so).
    with torch.no_grad():
        assert torch.equal(sampler.sample(40, gen(8)), first)
    with torch.inference_mode():
        assert torch.equal(sampler.sample(40, gen(8)), first)
    # Without the preconditioner the chains differ but still run.
    plain = reloaded(fitted, precondition=False, **settings)
    assert plain.sample(40, gen(8)).shape == (40, 2)


def test_it_is_registered_and_its_settings_are_checked(fitted):
    registry = load_registry()
    sampler = registry.create("sampler", "local_global", components=2, proposals=4)
    assert isinstance(sampler, LocalGlobal) and sampler.proposals == 4
    assert sampler.proposal_spec == (
        "ex_post_gmm",
        {
            "components": 2,
            "covariance": "full",
            "reg_covar": 1e-6,
            "max_iter": 200,
            "split": "train",
        },
    )
    bad = {
        "power": (1.5, r"power must be a number in \[0, 1\]"),
        "proposals": (0, "proposals must be a positive integer"),
        "mala_steps": (-1, "mala_steps must be a non-negative integer"),
        "iterations": (0, "iterations must be a positive integer"),
        "burn_in": (2.5, "burn_in must be a non-negative integer"),
        "step_size": (0.0, "step_size must be a positive number"),
        "target_acceptance": (1.0, r"target_acceptance must be a number in \(0, 1\)"),
        "components": (0, "components must be a positive integer"),
        "covariance": ("banded", "covariance must be one of"),
        "pca_dims": (0, "pca_dims must be a positive integer"),
        "reg_covar": (0.0, "reg_covar must be a positive number"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            LocalGlobal(**{name: value})
    with pytest.raises(ValueError, match="proposals=1 and mala_steps=0 leave the chains"):
        LocalGlobal(proposals=1, mala_steps=0)
    with pytest.raises(SamplerError, match="not fitted"):
        LocalGlobal().sample(3, gen(0))
    state = fitted.state_dict()
    with pytest.raises(SamplerError, match="lacks 'mala_axes'"):
        LocalGlobal(**SETTINGS).load_state_dict(
            {k: v for k, v in state.items() if k != "mala_axes"}
        )
    with pytest.raises(SamplerError, match="principal axes"):
        LocalGlobal(**SETTINGS).load_state_dict({**state, "mala_axes": torch.eye(3)})
    with pytest.raises(SamplerError, match="not the 4 asked for"):
        LocalGlobal(**{**SETTINGS, "components": 4}).load_state_dict(state)
    assert LocalGlobal().state_dict() == {}


def test_the_draws_are_not_a_copy_of_the_encodings(fitted):
    draws = fitted.sample(200, gen(11)).numpy()
    train = ring(2000, 0).numpy()
    nearest = np.sqrt(((draws[:, None] - train[None]) ** 2).sum(-1)).min(1)
    assert (nearest > 1e-4).all()
