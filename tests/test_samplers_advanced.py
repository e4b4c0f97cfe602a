"""The advanced samplers (latent_flow, ratio_corrected, aae_discriminator) on known cases.

Everything here is low-dimensional and small, so the file stays fast on 2 cores. The bounds are
stated beside each check: sampling error of the draws (a few standard errors), plus, for fitted
samplers, the error of fitting a few thousand encodings.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aesampler.models import AAE, VAE
from aesampler.samplers import PriorSampler, Sampler, SamplerContext, SamplerError
from aesampler.samplers.flow import LatentFlow
from aesampler.samplers.ratio import AAEDiscriminator, DensityRatioSampler, RatioCorrected


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks run faster on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Gaussian(Sampler):
    """A diagonal Gaussian with a known density: a proposal or target for the tests."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.latent_shape = tuple(self.mean.shape)

    def fit(self, context):
        self.latent_shape = tuple(self.mean.shape)

    def sample(self, n, generator=None):
        return self.mean + self.std * torch.randn(n, len(self.mean), generator=generator)

    def log_prob(self, z):
        normal = torch.distributions.Normal(self.mean.double(), self.std.double())
        return normal.log_prob(z.double()).sum(-1)


PROPOSAL = Gaussian([0.0, 0.0], [2.0, 2.0])
TARGET = Gaussian([1.0, -0.5], [0.7, 1.2])


class KnownRatio(DensityRatioSampler):
    """The proposal corrected by the exact ratio TARGET / PROPOSAL."""

    def __init__(self, method, quantile=1.0, steps=50):
        super().__init__(method, 1.0, False, 10, steps, quantile, 10**7, "train", "valid")

    def raw_log_ratio(self, z):
        return (TARGET.log_prob(z) - PROPOSAL.log_prob(z)).float()

    def fit(self, context):
        super().fit(context)
        self.proposal = PROPOSAL
        self.finish_fit(context, TARGET.sample(2000, gen(11)))


def target_context(n_train=1000, n_valid=500):
    return SamplerContext.from_encodings(
        {"train": TARGET.sample(n_train, gen(1)), "valid": TARGET.sample(n_valid, gen(2))},
        log=lambda _: None,
    )


@pytest.mark.parametrize("method", ["sir", "imh", "rejection"])
def test_an_exact_ratio_reproduces_the_target_moments(method):
    sampler = KnownRatio(method)
    sampler.fit(target_context())
    n = 20000
    z = sampler.sample(n, gen(0)).double()
    # Standard errors of n independent draws; SIR's draws repeat some proposals, and its pool
    # of 10 n proposals has an ESS of about a third of its size, which at most doubles the
    # variance of the resampled mean (1/n + 1/ESS <= 2/n), so its bound is sqrt(2) wider.
    widen = math.sqrt(2) if method == "sir" else 1.0
    se_mean = TARGET.std.double() / math.sqrt(n) * widen
    assert ((z.mean(0) - TARGET.mean.double()).abs() < 5 * se_mean).all(), z.mean(0)
    # The standard deviation's standard error is about std / sqrt(2 n); five of them, plus 1%
    # for the bias of SIR with a finite pool and of a bound taken from finitely many proposals.
    rel = 5 * widen / math.sqrt(2 * n) + 0.01
    assert torch.allclose(z.std(0), TARGET.std.double(), rtol=rel), z.std(0)
    if method == "sir":
        assert 0.2 < sampler.stats["ess_fraction"] < 0.5  # the exact ESS is about a third
    else:
        assert 0.1 < sampler.stats["acceptance_rate"] < 0.6


def test_power_zero_gives_the_proposal_and_the_weights_are_tempered():
    sampler = KnownRatio("sir")
    sampler.fit(target_context())
    sampler.power = 0.0
    z = sampler.sample(4000, gen(0))
    assert sampler.stats["ess_fraction"] == pytest.approx(1.0)
    assert torch.allclose(z.std(0), PROPOSAL.std, rtol=0.1)


def test_rejection_that_keeps_too_little_raises():
    sampler = KnownRatio("rejection")
    sampler.fit(target_context())
    sampler.max_proposals = 100
    with pytest.raises(SamplerError, match="max_proposals"):
        sampler.sample(1000, gen(0))


# ---------------------------------------------------------------------------------------------
# latent_flow


def correlated_gaussian(
    d: int, n: int, seed: int, draws: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws (seeded by ``draws``) from a Gaussian whose mean and covariance ``seed`` sets."""
    g = gen(seed)
    a = torch.randn(d, d, generator=g)
    cov = a @ a.T + 0.5 * torch.eye(d)
    mean = torch.randn(d, generator=g)
    return mean + torch.randn(n, d, generator=gen(draws)) @ torch.linalg.cholesky(cov).T, cov


@pytest.mark.parametrize(
    ("d", "flow", "base", "pca_dims"),
    [(2, "nsf", "gaussian", None), (3, "maf", "gmm", None), (5, "maf", "gaussian", 3)],
)
def test_the_flow_fits_a_known_gaussian(d, flow, base, pca_dims):
    train, cov = correlated_gaussian(d, 1000, seed=d)
    valid, _ = correlated_gaussian(d, 500, seed=d, draws=200)  # the same Gaussian, fresh draws
    context = SamplerContext.from_encodings({"train": train, "valid": valid}, log=lambda _: None)
    sampler = LatentFlow(
        flow=flow, base=base, pca_dims=pca_dims, hidden=32, epochs=3, components=2, patience=2
    )
    sampler.fit(context)
    draws = sampler.sample(20000, gen(0)).double()
    # Compare in the training data's whitened coordinates, where the target is N(0, I): the
    # sample mean of 1,000 encodings is off by ~1/sqrt(1000) = 0.03 per coordinate, a few
    # epochs of training move the flow by a few hundredths more, and 20,000 draws add 0.007.
    # Bounds: 0.15 on each whitened mean, 0.15 on each entry of the whitened covariance.
    mean, axes, scales = sampler.mean, sampler.axes, sampler.scales
    white = (draws - mean) @ axes / scales
    assert white.mean(0).abs().max() < 0.15, white.mean(0)
    assert (torch.cov(white.T) - torch.eye(d, dtype=torch.float64)).abs().max() < 0.15
    # And against the true moments, through the same whitening of the true covariance.
    true = axes.T @ cov.double() @ axes / torch.outer(scales, scales)
    assert (torch.cov(white.T) - true).abs().max() < 0.25
    assert sampler.stats["best_epoch"] <= sampler.stats["epochs_run"] <= 3


def two_blobs(n: int, seed: int) -> torch.Tensor:
    """A bimodal 2-D set: N((-2, 0), 0.3² I) and N((2, 0), 0.3² I) in equal parts."""
    side = torch.randint(0, 2, (n,), generator=gen(seed)).float() * 4 - 2
    z = 0.3 * torch.randn(n, 2, generator=gen(seed + 1))
    z[:, 0] += side
    return z


def test_the_flow_learns_a_bimodal_density_that_a_gaussian_misses():
    context = SamplerContext.from_encodings(
        {"train": two_blobs(2000, 0), "valid": two_blobs(500, 5)}, log=lambda _: None
    )
    sampler = LatentFlow(flow="nsf", base="gaussian", pca_dims=None, hidden=32, epochs=15)
    sampler.fit(context)
    # The whitened Gaussian start has an NLL of about 1.3 per coordinate; the two blobs' true
    # entropy is about 0.5 per coordinate, and the flow gets most of the way.
    assert sampler.stats["valid_nll"] < sampler.stats["valid_nll_start"] - 0.4
    draws = sampler.sample(4000, gen(0))
    # Half of the draws in each blob, few between them (a Gaussian would put ~30% in |x| < 1).
    assert abs(float((draws[:, 0] > 0).float().mean()) - 0.5) < 0.05
    assert float((draws[:, 0].abs() < 1).float().mean()) < 0.08
    assert torch.isfinite(sampler.log_prob(draws)).all()


def test_the_flow_is_seeded_and_its_state_reloads_to_identical_draws():
    z, _ = correlated_gaussian(4, 1000, seed=3)
    context = SamplerContext.from_encodings({"train": z}, log=lambda _: None)  # no valid split
    settings = dict(base="gmm", components=2, pca_dims=2, hidden=16, epochs=2)
    sampler = LatentFlow(**settings)
    sampler.fit(context)
    assert torch.equal(sampler.sample(50, gen(1)), sampler.sample(50, gen(1)))
    assert not torch.equal(sampler.sample(50, gen(1)), sampler.sample(50, gen(2)))
    again = LatentFlow(**settings)
    again.fit(context)  # the fit is seeded by the context: the same flow again
    assert torch.equal(again.sample(50, gen(1)), sampler.sample(50, gen(1)))
    loaded = LatentFlow(**settings)
    loaded.load_state_dict({k: v.clone() for k, v in sampler.state_dict().items()})
    assert loaded.latent_shape == (4,)
    assert torch.equal(loaded.sample(50, gen(1)), sampler.sample(50, gen(1)))
    with pytest.raises(SamplerError, match="does not fit"):
        LatentFlow(**{**settings, "hidden": 8}).load_state_dict(sampler.state_dict())
    with pytest.raises(SamplerError, match="lacks"):
        LatentFlow(**settings).load_state_dict({})


def test_flow_draws_stay_inside_the_support_box():
    z, _ = correlated_gaussian(3, 1000, seed=4)
    context = SamplerContext.from_encodings({"train": z}, log=lambda _: None)
    sampler = LatentFlow(flow="maf", base="gaussian", pca_dims=None, hidden=8, epochs=1)
    sampler.fit(context)
    # The box is 1.5 times the largest training coordinate: a Gaussian leaves it rarely.
    draws = sampler.sample(2000, gen(0)).double()
    white = (draws - sampler.mean) @ sampler.axes / sampler.scales
    assert (white.abs() <= sampler.bound).all()
    assert sampler.stats["redrawn_fraction"] < 0.01
    sampler.bound = torch.full((3,), 0.5, dtype=torch.float64)  # a box few draws fall in
    assert (sampler._flow_draws(100, gen(0)).abs() <= 0.5).all()
    sampler.bound = torch.full((3,), 1e-3, dtype=torch.float64)  # a box no draw falls in
    with pytest.raises(SamplerError, match="support box"):
        sampler.sample(100, gen(0))


def test_flow_settings_are_checked():
    with pytest.raises(ValueError, match="flow"):
        LatentFlow(flow="glow")
    with pytest.raises(ValueError, match="pca_dims"):
        LatentFlow(pca_dims=0)
    with pytest.raises(SamplerError, match="not fitted"):
        LatentFlow().sample(3)


# ---------------------------------------------------------------------------------------------
# ratio_corrected with a learned classifier


def test_a_learned_ratio_moves_the_proposal_towards_the_target():
    sampler = RatioCorrected(
        proposal=PROPOSAL, pca_dims=None, hidden=32, epochs=30, patience=5, oversample=20
    )
    sampler.fit(target_context(n_train=1500))
    assert sampler.stats["valid_cross_entropy"] < math.log(2) - 0.1  # it learned something
    target_mean, target_std = TARGET.mean.double(), TARGET.std.double()
    for method, cost in (("imh", "acceptance_rate"), ("sir", "ess_fraction")):
        sampler.method = method
        z = sampler.sample(4000, gen(0)).double()
        # The proposal is 1.1 away in mean and 1.7-2.9 times as wide; the corrected draws must
        # close at least two thirds of each gap (the classifier sees 1,500 draws for <= 30
        # epochs; 4,000 draws add standard errors of about 0.02 to each moment).
        gap = (PROPOSAL.mean.double() - target_mean).norm()
        assert (z.mean(0) - target_mean).norm() < gap / 3, (method, z.mean(0))
        std_gap = (PROPOSAL.std.double() - target_std).abs()
        assert ((z.std(0) - target_std).abs() < std_gap / 3).all(), (method, z.std(0))
        assert 0 < sampler.stats[cost] <= 1


def test_ratio_corrected_builds_its_proposal_by_name_seeds_and_reloads():
    settings = dict(
        proposal={"name": "ex_post_gmm", "components": 2},
        pca_dims=1,
        hidden=8,
        epochs=3,
        method="imh",
        steps=3,
    )
    sampler = RatioCorrected(**settings)
    sampler.fit(target_context(n_train=400, n_valid=100))
    assert type(sampler.proposal).__name__ == "ExPostGMM"
    first = sampler.sample(30, gen(4))
    assert first.shape == (30, 2)
    assert torch.equal(first, sampler.sample(30, gen(4)))
    assert not torch.equal(first, sampler.sample(30, gen(5)))
    assert 0 <= sampler.stats["acceptance_rate"] <= 1
    loaded = RatioCorrected(**settings)
    loaded.load_state_dict({k: v.clone() for k, v in sampler.state_dict().items()})
    assert torch.equal(loaded.sample(30, gen(4)), first)
    for method in ("sir", "rejection"):
        loaded.method = sampler.method = method
        assert torch.equal(loaded.sample(30, gen(6)), sampler.sample(30, gen(6)))


def test_ratio_corrected_settings_are_checked():
    with pytest.raises(ValueError, match="method"):
        RatioCorrected(method="importance")
    with pytest.raises(ValueError, match="power"):
        RatioCorrected(power=-1)
    with pytest.raises(ValueError, match="proposal"):
        RatioCorrected(proposal=3)
    with pytest.raises(ValueError, match="cannot use 'ratio_corrected' as its proposal"):
        RatioCorrected(proposal="ratio_corrected")
    with pytest.raises(ValueError, match="proposal: unknown sampler 'gmm'"):
        RatioCorrected(proposal="gmm")
    with pytest.raises(ValueError, match="proposal: .*components"):
        RatioCorrected(proposal={"name": "ex_post_gmm", "components": 0})
    with pytest.raises(ValueError, match=r"power must be a number in \[0, 1\]"):
        RatioCorrected(power=1.5)


# ---------------------------------------------------------------------------------------------
# aae_discriminator


class ExactAdversary(nn.Module):
    """The optimal adversary between the prior N(0, I) (real) and TARGET (fake): its logit is
    log p(z) / p̂(z)."""

    def forward(self, z):
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z.double()).sum(-1)
        return (prior - TARGET.log_prob(z)).float()


def test_the_adversary_convention_corrects_the_prior_towards_the_encodings():
    context = target_context()
    context.model = nn.Module()
    context.model.adversary = ExactAdversary()
    sampler = AAEDiscriminator(method="rejection", calibrate=False, quantile=1.0)
    sampler.fit(context)
    z = sampler.sample(10000, gen(0)).double()
    # TARGET is wider than the prior in one coordinate, so the bound from 1,000 prior draws
    # clips the far tail there: 5 standard errors plus 3% on the spreads.
    se = TARGET.std.double() / math.sqrt(10000)
    assert ((z.mean(0) - TARGET.mean.double()).abs() < 5 * se + 0.03).all(), z.mean(0)
    assert torch.allclose(z.std(0), TARGET.std.double(), rtol=0.08), z.std(0)


def test_aae_discriminator_uses_a_trained_aae_and_reloads():
    torch.manual_seed(0)
    model = AAE(image_size=8, channels=1, latent_dim=2, width=4, adversary_hidden=16)
    context = target_context(n_train=200, n_valid=100)
    context.model = model
    sampler = AAEDiscriminator(method="sir")
    sampler.fit(context)
    first = sampler.sample(20, gen(1))
    assert first.shape == (20, 2)
    assert torch.equal(first, sampler.sample(20, gen(1)))
    loaded = AAEDiscriminator(method="sir")
    loaded.load_state_dict({k: v.clone() for k, v in sampler.state_dict().items()})
    assert torch.equal(loaded.sample(20, gen(1)), first)
    assert "calibration_scale" in sampler.stats


def test_aae_discriminator_on_a_vae_says_why_it_cannot():
    model = VAE(image_size=8, channels=1, latent_dim=2, width=4)
    context = target_context(n_train=50, n_valid=20)
    context.model = model
    with pytest.raises(SamplerError, match="VAE.*no discriminator"):
        AAEDiscriminator().fit(context)
    with pytest.raises(SamplerError, match="no model"):
        AAEDiscriminator().fit(target_context(n_train=50, n_valid=20))


def test_the_prior_proposal_is_a_plain_prior_sampler():
    context = target_context(n_train=50, n_valid=20)
    context.model = nn.Module()
    context.model.adversary = ExactAdversary()
    sampler = AAEDiscriminator(power=0.0)
    sampler.fit(context)
    assert isinstance(sampler.proposal, PriorSampler)


# ---------------------------------------------------------------------------------------------
# Edge cases found in review


def test_a_flow_on_fewer_encodings_than_pca_dims_models_only_the_axes_they_span():
    g = gen(0)
    context = SamplerContext.from_encodings(
        {"train": torch.randn(30, 64, generator=g), "valid": torch.randn(10, 64, generator=g)},
        log=lambda _: None,
    )
    sampler = LatentFlow(flow="maf", transforms=1, hidden=8, epochs=2, components=2)
    sampler.fit(context)
    assert sampler.stats["pca_dims"] == 29  # 30 encodings span 29 axes, not the 32 asked for
    z = sampler.sample(50, gen(1))
    assert z.shape == (50, 64) and torch.isfinite(z).all()


def test_saved_states_keep_a_latent_shape_of_several_dimensions():
    from aesampler.samplers import ExPostGMM

    g = gen(0)
    context = SamplerContext.from_encodings(
        {"train": torch.randn(200, 2, 3, 3, generator=g), "valid": torch.randn(50, 2, 3, 3)},
        log=lambda _: None,
    )
    for make in (
        lambda: ExPostGMM(components=2),
        lambda: LatentFlow(flow="maf", transforms=1, hidden=8, epochs=1, pca_dims=4, components=2),
    ):
        fitted = make()
        fitted.fit(context)
        loaded = make()
        loaded.load_state_dict({k: v.clone() for k, v in fitted.state_dict().items()})
        assert loaded.latent_shape == (2, 3, 3)
        assert torch.equal(loaded.sample(5, gen(2)), fitted.sample(5, gen(2)))
        assert fitted.sample(0, gen(2)).shape == (0, 2, 3, 3)


def test_rejection_never_draws_more_than_max_proposals():
    sampler = KnownRatio("rejection", quantile=0.5)
    sampler.max_proposals = 300
    sampler.fit(target_context())
    with pytest.raises(SamplerError, match="max_proposals=300"):
        sampler.sample(10_000, gen(0))
    sampler.sample(20, gen(0))
    assert sampler.stats["proposals"] <= 300


def test_ratio_corrected_builds_its_proposal_with_the_contexts_registry():
    from aesampler import get_registry

    asked = []

    class Spy:
        def create(self, kind, name, **params):
            asked.append((kind, name))
            return get_registry().create(kind, name, **params)

    sampler = RatioCorrected(
        proposal={"name": "ex_post_gmm", "components": 2}, pca_dims=1, hidden=8, epochs=1
    )
    context = target_context(n_train=200, n_valid=50)
    context.registry = Spy()
    sampler.fit(context)
    assert asked == [("sampler", "ex_post_gmm")]
    assert type(sampler.proposal).__name__ == "ExPostGMM"


def test_every_sampler_has_stats():
    prior = PriorSampler()
    assert prior.stats == {}
    prior.stats["x"] = 1.0
    assert prior.stats == {"x": 1.0} and PriorSampler().stats == {}
