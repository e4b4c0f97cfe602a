from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import aesampler
from aesampler import Chain, ChainInputError, GaussianCorruption
from aesampler.chain import _chunk_bounds

from .conftest import tiny_chain_parts


def _state(*modules: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v.detach().clone()) for m in modules for k, v in m.state_dict().items()]


def _manual_chain(encoder, decoder, corruption, z0, steps, generator):
    """The paper's chain written out by hand on copies of the modules, BN in batch mode."""
    enc, dec = copy.deepcopy(encoder), copy.deepcopy(decoder)
    for module in (enc, dec):
        module.eval()
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.train()  # minibatch statistics (this copy's buffers may change: it is a copy)
    zs, xs = [z0], []
    z = z0
    with torch.no_grad():
        for _ in range(steps):
            x = dec(z)
            xs.append(x)
            x_tilde = corruption(x, generator=generator) if corruption is not None else x
            z = enc(x_tilde).sample(generator)
            zs.append(z)
        xs.append(dec(z))
    return zs, xs


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 7),
    latent=st.integers(1, 6),
    image=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
    steps=st.integers(0, 6),
    chunk=st.integers(2, 8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    stochastic=st.booleans(),
)
def test_recorded_shapes_and_dtypes(n, latent, image, steps, chunk, dtype, stochastic):
    encoder, decoder = tiny_chain_parts(latent, image, stochastic, dtype)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    assume(min(b - a for a, b in _chunk_bounds(n, chunk)) >= 2)  # batch-mode BN needs 2 per chunk
    result = chain.run(n=n, steps=steps, record="all", chunk_size=chunk, seed=1)
    assert result.steps == tuple(range(steps + 1))
    assert set(result.z) == set(result.x) == set(range(steps + 1))
    for t in result.steps:
        assert result.z[t].shape == (n, latent) and result.z[t].dtype == dtype
        assert result.x[t].shape == (n, *image) and result.x[t].dtype == dtype
    assert result.num_chains == n


def test_default_record_is_the_papers_steps(parts):
    chain = Chain(*parts)
    assert chain.run(n=4, seed=0).steps == (0, 1, 5, 10)
    assert chain.run(n=4, steps=20, seed=0).steps == (0, 1, 5, 10, 20)
    assert chain.run(n=4, steps=3, seed=0).steps == (0, 1, 3)
    assert chain.run(n=4, steps=0, seed=0).steps == (0,)
    assert chain.run(n=4, steps=7, record=[7, 2, 2], seed=0).steps == (2, 7)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_step_m_is_m_transitions_from_z0(stochastic, sigma):
    encoder, decoder = tiny_chain_parts(latent=3, image=(2, 3, 3), stochastic=stochastic)
    corruption = GaussianCorruption(sigma)
    z0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    steps = 6
    result = Chain(encoder, decoder, corruption).run(z0, steps=steps, record="all", seed=11)
    zs, xs = _manual_chain(
        encoder, decoder, corruption, z0, steps, torch.Generator().manual_seed(11)
    )
    for t in range(steps + 1):
        torch.testing.assert_close(result.z[t], zs[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.x[t], xs[t], rtol=1e-5, atol=1e-6)
    # Step 0 is the prior draw itself, and the chain moves.
    assert torch.equal(result.z[0], z0)
    assert not torch.allclose(result.z[2], result.z[1])


def test_returned_samples_are_not_corrupted(parts):
    encoder, decoder = parts
    result = Chain(encoder, decoder, GaussianCorruption(3.0)).run(
        n=8, steps=4, record="all", seed=0
    )
    for t in result.steps:
        x = result.x[t]
        assert x.min() >= 0 and x.max() <= 1  # sigmoid outputs; sigma = 3 noise would leave [0, 1]
        # x_t is d(z_t) with the same batch statistics.
        with aesampler.sampling_mode([decoder], "batch"), torch.no_grad():
            torch.testing.assert_close(decoder(result.z[t]), x)


@pytest.mark.parametrize("batchnorm", ["batch", "running"])
@pytest.mark.parametrize("was_training", [False, True])
def test_parameters_buffers_and_flags_unchanged(batchnorm, was_training):
    encoder, decoder = tiny_chain_parts(stochastic=True)
    encoder.train(was_training)
    decoder.train(was_training)
    flags = [m.training for m in [*encoder.modules(), *decoder.modules()]]
    before = _state(encoder, decoder)
    Chain(encoder, decoder, GaussianCorruption(0.5)).run(
        n=9, steps=5, chunk_size=4, batchnorm=batchnorm, seed=0
    )
    after = _state(encoder, decoder)
    assert [k for k, _ in before] == [k for k, _ in after]
    assert any("running_mean" in k for k, _ in before)
    for (key, old), (_, new) in zip(before, after):
        assert torch.equal(old, new), key
    assert flags == [m.training for m in [*encoder.modules(), *decoder.modules()]]
    bns = [m for m in [*encoder.modules(), *decoder.modules()] if isinstance(m, nn.BatchNorm1d)]
    assert all(m.track_running_stats for m in bns)


def test_batchnorm_modes_differ_and_running_matches_eval(parts):
    encoder, decoder = parts
    z0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    chain = Chain(encoder, decoder)
    batch = chain.run(z0, steps=1, batchnorm="batch")
    running = chain.run(z0, steps=1, batchnorm="running")
    assert not torch.allclose(batch.x[0], running.x[0])
    decoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(running.x[0], decoder(z0))
    # Running statistics make each chain independent of the others in its chunk.
    alone = chain.run(z0[:1], steps=1, batchnorm="running")
    torch.testing.assert_close(alone.x[1], running.x[1][:1])


class _CountingLayer(nn.Module):
    """A custom layer that (wrongly) updates a buffer in forward."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


def test_buffers_restored_even_for_custom_layers_and_on_error(parts):
    encoder, decoder = parts
    counter = _CountingLayer()
    decoder.net.append(counter)
    chain = Chain(encoder, decoder)
    chain.run(n=4, steps=3, seed=0)
    assert counter.calls.item() == 0

    def explode(step):
        if step.step == 2:
            raise RuntimeError("boom")

    decoder.train()
    with pytest.raises(RuntimeError, match="boom"):
        chain.run(n=4, steps=3, seed=0, callback=explode)
    assert counter.calls.item() == 0
    assert decoder.training and all(m.training for m in decoder.modules())


def test_seeded_runs_are_identical_and_seeds_differ():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    a = chain.run(n=6, steps=5, record="all", seed=123)
    b = chain.run(n=6, steps=5, record="all", seed=123)
    c = chain.run(n=6, steps=5, record="all", seed=124)
    for t in a.steps:
        assert torch.equal(a.z[t], b.z[t]) and torch.equal(a.x[t], b.x[t])
    assert not torch.equal(a.z[0], c.z[0])
    assert not torch.equal(a.z[5], c.z[5])
    g = chain.run(n=6, steps=5, record="all", generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.z[5], g.z[5])


def test_chunks_are_balanced_and_bound_the_batch(parts):
    assert _chunk_bounds(10, 4) == [(0, 4), (4, 7), (7, 10)]
    assert _chunk_bounds(33, 32) == [(0, 17), (17, 33)]
    assert _chunk_bounds(5, 100) == [(0, 5)]
    encoder, decoder = parts
    sizes = []
    decoder.net.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    result = Chain(encoder, decoder).run(n=10, steps=3, chunk_size=4, seed=0)
    assert max(sizes) <= 4 and sorted(set(sizes)) == [3, 4]
    assert result.x[3].shape[0] == 10


def test_chunking_does_not_change_running_mode_results(parts):
    encoder, decoder = parts
    z0 = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    chain = Chain(encoder, decoder)
    whole = chain.run(z0, steps=5, batchnorm="running")
    chunked = chain.run(z0, steps=5, batchnorm="running", chunk_size=3)
    for t in whole.steps:
        torch.testing.assert_close(whole.z[t], chunked.z[t])


def test_callback_sees_every_step_of_every_chunk(parts):
    events = []
    Chain(*parts).run(n=6, steps=3, chunk_size=3, seed=0, callback=events.append)
    assert [(e.chunk, e.start, e.step) for e in events] == [
        (c, 3 * c, t) for c in range(2) for t in range(4)
    ]
    assert all(e.z.shape == (3, 4) for e in events)
    assert all(e.x is not None for e in events if e.step < 3)


def test_recorded_tensors_go_to_the_chosen_device_and_are_writable(parts):
    result = Chain(*parts).run(n=4, steps=1, seed=0, out_device="meta")
    assert result.x[1].device.type == "meta"
    result = Chain(*parts).run(n=4, steps=1, seed=0)
    result.x[1].mul_(2)  # not an inference tensor


def test_unrecorded_step_names_the_recorded_ones(parts):
    result = Chain(*parts).run(n=4, steps=10, seed=0)
    with pytest.raises(KeyError, match=r"step 3 was not recorded; recorded steps: 0, 1, 5, 10"):
        result.x[3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z0": torch.randn(4, 5)}, r"latent shape \(5,\) but the decoder expects \(4,\)"),
        ({"z0": torch.randn(4)}, r"z0 must have shape \(N, \*latent_shape\)"),
        ({"z0": torch.zeros(4, 4, dtype=torch.int64)}, "floating-point"),
        ({"z0": torch.randn(4, 4, dtype=torch.float64)}, "dtype torch.float64 but the models"),
        (
            {"z0": torch.randn(4, 4, device="meta")},
            "z0 is on meta but the encoder and decoder are on cpu",
        ),
        ({"z0": [[0.0] * 4]}, "z0 must be a torch.Tensor"),
        ({"z0": torch.randn(4, 4), "n": 5}, "n=5 disagrees with z0"),
        ({}, "pass z0"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n": 4, "steps": -1}, "steps must be an integer >= 0"),
        ({"n": 4, "steps": 2, "record": [3]}, r"in \[0, 2\].*invalid: \[3\]"),
        ({"n": 4, "record": "every"}, "record must be 'all' or a list"),
        ({"n": 4, "batchnorm": "train"}, "batchnorm must be one of"),
        ({"n": 4, "seed": 1, "generator": torch.Generator()}, "either seed or generator"),
        ({"n": 4, "chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"n": 5, "chunk_size": 4}, None),
        ({"n": 1}, "at least 2 chains per chunk"),
        ({"n": 4, "generator": 5}, "generator must be a torch.Generator"),
    ],
)
def test_bad_run_arguments_give_one_clear_error(parts, kwargs, message):
    chain = Chain(*parts)
    if message is None:
        chain.run(**kwargs)  # 5 chains in chunks of 4 -> 3 + 2: fine
        return
    with pytest.raises(ChainInputError, match=message):
        chain.run(**kwargs)


def test_single_chain_works_with_running_statistics(parts):
    result = Chain(*parts).run(n=1, steps=2, batchnorm="running", seed=0)
    assert result.x[2].shape == (1, 1, 4, 4)


def test_encoder_decoder_mismatch_is_reported():
    encoder, _ = tiny_chain_parts(latent=3)
    _, decoder = tiny_chain_parts(latent=4)
    with pytest.raises(ChainInputError, match=r"transition at step 0 returned z of shape \(4, 3\)"):
        Chain(encoder, decoder).run(n=4, steps=2, seed=0)


def test_plain_modules_are_rejected_or_wrapped():
    enc, dec = nn.Linear(4, 4), nn.Linear(4, 4)
    with pytest.raises(ChainInputError, match="DeterministicEncoder"):
        Chain(enc, dec)
    chain = Chain(aesampler.DeterministicEncoder(enc), dec)  # a plain decoder is wrapped
    assert chain.run(torch.randn(3, 4), steps=2).x[2].shape == (3, 4)
    with pytest.raises(ChainInputError, match="corruption must be"):
        Chain(aesampler.DeterministicEncoder(enc), dec, corruption=0.5)


def test_custom_transition():
    class Shrink(aesampler.Transition):
        def forward(self, z, *, generator=None):
            return aesampler.TransitionOutput(z=z / 2)

    dec = aesampler.ModuleDecoder(nn.Identity(), latent_shape=2)
    result = Chain.from_transition(Shrink(), dec).run(torch.ones(3, 2), steps=3, record="all")
    assert torch.equal(result.x[3], torch.full((3, 2), 0.125))


def test_gaussian_encoder_scales_and_posterior_sampling():
    mean, raw = torch.zeros(5, 3), torch.full((5, 3), 2.0)
    both = torch.cat([mean, raw], dim=1)
    for scale, std in [("std", 2.0), ("logvar", torch.e), ("log_std", torch.e**2)]:
        post = aesampler.GaussianEncoder(nn.Identity(), scale=scale)(both)
        torch.testing.assert_close(post.std, torch.full((5, 3), float(std)))
        assert not post.is_deterministic
    post = aesampler.GaussianEncoder(lambda_module(lambda x: (x, x)), scale="softplus")(raw)
    torch.testing.assert_close(post.std, nn.functional.softplus(raw))
    with pytest.raises(ValueError, match="odd size"):
        aesampler.GaussianEncoder(nn.Identity())(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scale must be one of"):
        aesampler.GaussianEncoder(nn.Identity(), scale="var")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    p = aesampler.Posterior(mean=torch.zeros(2000), std=torch.full((2000,), 3.0))
    assert torch.equal(p.sample(g1), p.sample(g2))
    assert abs(p.sample(g1).std().item() - 3.0) < 6 * 3.0 / (2 * 2000) ** 0.5
    det = aesampler.Posterior(mean=torch.ones(2))
    assert det.is_deterministic and det.sample() is det.mean


class lambda_module(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --- Issue #8: non-finite latents and samples ------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_starting_latents_are_rejected(parts, bad):
    z0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    z0[1, 0] = bad
    z0[5, 3] = bad
    with pytest.raises(
        ChainInputError,
        match=r"z0 holds NaN or inf in 2 of 8 chains \(chains 1, 5\)",
    ):
        Chain(*parts).run(z0, steps=2)


def test_many_non_finite_starting_latents_list_the_first_few(parts):
    z0 = torch.full((40, 4), float("nan"))
    z0[::2] = 0.0  # the odd chains are bad
    with pytest.raises(ChainInputError, match=r"20 of 40 chains \(chains 1, 3, 5, 7, 9, \.\.\.\)"):
        Chain(*parts).run(z0, steps=1)


class _Drift(aesampler.Transition):
    """z -> z + 1, with the given chains of the given calls set to NaN."""

    def __init__(self, poison=()):
        super().__init__()
        self.poison, self.calls = dict(poison), 0

    def forward(self, z, *, generator=None):
        z_next = z + 1
        for chain in self.poison.get(self.calls, ()):
            z_next[chain] = float("nan")
        self.calls += 1
        return aesampler.TransitionOutput(z=z_next)


class _InfAbove(nn.Module):
    """x = z, except chains whose first latent is >= limit become inf."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def forward(self, z):
        return torch.where(z[:, :1] >= self.limit, float("inf"), z)


def test_non_finite_latents_name_the_first_bad_step_and_the_chains():
    decoder = aesampler.ModuleDecoder(nn.Identity(), latent_shape=2)
    chain = Chain.from_transition(_Drift({2: [1, 3], 4: [0]}), decoder)
    seen = []
    with pytest.raises(
        aesampler.NonFiniteChainError,
        match=r"non-finite values \(NaN or inf\) at step 3: 2 of 4 chains in chunk 0 "
        r"\(chains 1, 3\)",
    ):
        chain.run(torch.zeros(4, 2), steps=6, callback=lambda s: seen.append(s.step))
    # Checked once per chunk, at its end: the chunk ran to the last step before the error.
    assert seen == list(range(7))


def test_non_finite_in_a_later_chunk_gives_global_chain_indices():
    decoder = aesampler.ModuleDecoder(nn.Identity(), latent_shape=2)
    # Chunks of 3: calls 0-2 are chunk 0's steps, calls 3-5 chunk 1's; poison chunk 1, step 2.
    chain = Chain.from_transition(_Drift({4: [2]}), decoder)
    with pytest.raises(
        aesampler.NonFiniteChainError,
        match=r"at step 2: 1 of 3 chains in chunk 1 \(chains 5\)",
    ):
        chain.run(torch.zeros(6, 2), steps=3, chunk_size=3, batchnorm="running")


def test_non_finite_samples_are_caught_too():
    decoder = aesampler.ModuleDecoder(_InfAbove(3.0), latent_shape=2)
    chain = Chain.from_transition(_Drift(), decoder)
    z0 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-5.0, 0.0]])
    # x_t = inf once z_t[0] = z0[0] + t reaches 3: chains 1 and 2 at step 2, chain 0 at step 3.
    with pytest.raises(aesampler.NonFiniteChainError, match=r"at step 2: 2 of 4 chains"):
        chain.run(z0, steps=4, record="all")
    # Samples are checked where they are computed (no extra decoder pass): here only at step 4.
    with pytest.raises(aesampler.NonFiniteChainError, match=r"at step 4: 3 of 4 chains"):
        chain.run(z0, steps=4, record=[0, 4])


def test_one_bad_chain_poisons_its_batch_norm_chunk_and_the_error_says_so():
    encoder, decoder = tiny_chain_parts()

    class Poison(nn.Module):
        def forward(self, x):
            x = x.clone()
            x[0] = float("nan")
            return x

    encoder.net.insert(0, Poison())
    with pytest.raises(
        aesampler.NonFiniteChainError,
        match=r"at step 1: 6 of 6 chains in chunk 0 .*batchnorm='batch'",
    ):
        Chain(encoder, decoder).run(n=6, steps=3, seed=0)


def test_finite_chains_run_unchanged(parts):
    # The checks add no randomness and change no values.
    encoder, decoder = parts
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    z0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    result = chain.run(z0, steps=4, record="all", seed=3)
    zs, xs = _manual_chain(
        encoder, decoder, GaussianCorruption(0.5), z0, 4, torch.Generator().manual_seed(3)
    )
    for t in range(5):
        torch.testing.assert_close(result.z[t], zs[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.x[t], xs[t], rtol=1e-5, atol=1e-6)
