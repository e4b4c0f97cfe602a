from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import aesampler
from aesampler import Chain, ChainInputError, GaussianCorruption
from aesampler.chain import (
    _chunk_bounds,
    block_generator,
    chunk_bounds,
    seed_from_generator,
    start_generator,
)
from aesampler.samplers import PriorSampler

from .conftest import tiny_chain_parts


def _state(*modules: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v.detach().clone()) for m in modules for k, v in m.state_dict().items()]


def _manual_chain(encoder, decoder, corruption, z0, steps, seed, groups=None, batchnorm="batch"):
    """The paper's chain written out by hand on copies of the modules.

    ``groups`` lists the (noise index, start, stop) chain ranges run together, each with its own
    generator ``block_generator(seed, index)``: the chunks with batch BN, the noise blocks with
    running BN. Default: all chains in one group, index 0.
    """
    enc, dec = copy.deepcopy(encoder), copy.deepcopy(decoder)
    for module in (enc, dec):
        module.eval()
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d) and batchnorm == "batch":
                m.train()  # minibatch statistics (this copy's buffers may change: it is a copy)
    zs, xs = [[] for _ in range(steps + 1)], [[] for _ in range(steps + 1)]
    with torch.no_grad():
        for index, start, stop in groups or [(0, 0, len(z0))]:
            generator = block_generator(seed, index)
            z = z0[start:stop]
            zs[0].append(z)
            for t in range(steps):
                x = dec(z)
                xs[t].append(x)
                x_tilde = corruption(x, generator=generator) if corruption is not None else x
                z = enc(x_tilde).sample(generator)
                zs[t + 1].append(z)
            xs[steps].append(dec(z))
    return [torch.cat(z) for z in zs], [torch.cat(x) for x in xs]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 7),
    latent=st.integers(1, 6),
    image=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
    steps=st.integers(0, 6),
    chunk=st.integers(2, 8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    stochastic=st.booleans(),
    batchnorm=st.sampled_from(["batch", "running"]),
    block=st.integers(1, 4),
)
def test_recorded_shapes_and_dtypes(
    n, latent, image, steps, chunk, dtype, stochastic, batchnorm, block
):
    encoder, decoder = tiny_chain_parts(latent, image, stochastic, dtype)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    if batchnorm == "batch":  # batch-mode BN needs 2 chains per chunk
        assume(min(b - a for a, b in _chunk_bounds(n, chunk)) >= 2)
    result = chain.run(
        n=n,
        steps=steps,
        record="all",
        chunk_size=chunk,
        block_size=block,
        batchnorm=batchnorm,
        seed=1,
    )
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
@pytest.mark.parametrize(
    ("batchnorm", "sizes", "groups"),
    [
        # One chunk, one generator: block_generator(seed, 0).
        ("batch", {}, None),
        # Batch BN: chunk c draws its noise from block_generator(seed, c).
        ("batch", {"chunk_size": 3}, [(0, 0, 3), (1, 3, 6)]),
        # Running BN: block b (4 chains here) from block_generator(seed, b), whatever the chunks.
        ("running", {"block_size": 4}, [(0, 0, 4), (1, 4, 6)]),
        ("running", {"block_size": 4, "chunk_size": 1}, [(0, 0, 4), (1, 4, 6)]),
    ],
)
def test_step_m_is_m_transitions_from_z0(stochastic, sigma, batchnorm, sizes, groups):
    encoder, decoder = tiny_chain_parts(latent=3, image=(2, 3, 3), stochastic=stochastic)
    corruption = GaussianCorruption(sigma)
    z0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    steps = 6
    result = Chain(encoder, decoder, corruption).run(
        z0, steps=steps, record="all", seed=11, batchnorm=batchnorm, **sizes
    )
    zs, xs = _manual_chain(encoder, decoder, corruption, z0, steps, 11, groups, batchnorm)
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
        n=9, steps=5, chunk_size=4, block_size=2, batchnorm=batchnorm, seed=0
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


def test_a_generator_gives_the_base_seed_by_one_draw():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    drawn = torch.randint(2**63 - 1, (), generator=torch.Generator().manual_seed(123)).item()
    assert seed_from_generator(torch.Generator().manual_seed(123)) == drawn
    generator = torch.Generator().manual_seed(123)
    g = chain.run(n=6, steps=5, record="all", generator=generator)
    s = chain.run(n=6, steps=5, record="all", seed=drawn)
    for t in g.steps:
        assert torch.equal(g.z[t], s.z[t]) and torch.equal(g.x[t], s.x[t])
    # The generator advanced by exactly that one draw: a second run gets the next seed.
    after = torch.Generator().manual_seed(123)
    torch.randint(2**63 - 1, (), generator=after)
    assert torch.equal(generator.get_state(), after.get_state())
    # With neither seed nor generator, the draw is from PyTorch's default CPU generator.
    torch.manual_seed(5)
    u = chain.run(n=6, steps=2, record="all")
    torch.manual_seed(5)
    v = chain.run(n=6, steps=2, seed=seed_from_generator())
    assert torch.equal(u.z[2], v.z[2])


def test_seed_derivation_is_documented_and_stable():
    def derived(seed, *key):
        return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0])

    assert start_generator(5).initial_seed() == derived(5, 0) == 15658875773272509128
    for seed, index in [(0, 0), (5, 0), (5, 1), (2**64 - 1, 123456)]:
        g = block_generator(seed, index)
        assert g.initial_seed() == derived(seed, 1, index)
        assert g.device.type == "cpu"
    # Every stream is its own: the starts, each block, each seed.
    seeds = {start_generator(5).initial_seed(), start_generator(6).initial_seed()}
    seeds |= {block_generator(s, b).initial_seed() for s in (5, 6) for b in range(50)}
    assert len(seeds) == 102
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(ChainInputError, match="seed must be an integer"):
            block_generator(bad, 0)
    with pytest.raises(ChainInputError, match="index must be an integer >= 0"):
        block_generator(0, -1)


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


@pytest.mark.parametrize("block_size", [3, 256])
def test_chunking_does_not_change_running_mode_results(block_size):
    # Issue #9: z0 is drawn once for all chains, and each noise block has its own generator, so
    # every recorded step is bit-identical whatever the chunk size.
    encoder, decoder = tiny_chain_parts(stochastic=True)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    runs = {
        chunk_size: chain.run(
            n=10,
            steps=6,
            record="all",
            chunk_size=chunk_size,
            block_size=block_size,
            batchnorm="running",
            seed=7,
        )
        for chunk_size in (None, 1, 7, 50)
    }
    whole = runs[None]
    prior = torch.randn(10, 4, generator=start_generator(7))
    assert torch.equal(whole.z[0], prior)
    assert not torch.equal(whole.z[6], whole.z[5])
    for chunk_size, run in runs.items():
        for t in whole.steps:
            assert torch.equal(whole.z[t], run.z[t]), (chunk_size, t)
            assert torch.equal(whole.x[t], run.x[t]), (chunk_size, t)
    # The block size does change the noise (the blocks' generators), not z0.
    other = chain.run(n=10, steps=6, record="all", block_size=5, batchnorm="running", seed=7)
    assert torch.equal(other.z[0], prior) and not torch.equal(other.z[6], whole.z[6])


def test_batch_mode_z0_does_not_depend_on_chunking():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    runs = [
        chain.run(n=10, steps=3, chunk_size=chunk_size, batchnorm="batch", seed=7)
        for chunk_size in (None, 2, 7, 50)
    ]
    prior = torch.randn(10, 4, generator=start_generator(7))
    for run in runs:
        assert torch.equal(run.z[0], prior)
    # Later steps do depend on the chunks: they are the batches of the BN statistics.
    assert not torch.equal(runs[0].z[3], runs[1].z[3])
    # One chunk of all chains is noise group 0, as in running mode with one block.
    assert torch.equal(runs[0].z[3], runs[3].z[3])


def test_chunk_plan():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 7), (7, 10)]  # batch BN: balanced
    assert chunk_bounds(10) == [(0, 10)]
    assert chunk_bounds(10, 4, batchnorm="running", block_size=3) == [
        (0, 3),
        (3, 6),
        (6, 9),
        (9, 10),
    ]
    assert chunk_bounds(10, 7, batchnorm="running", block_size=3) == [(0, 6), (6, 10)]
    assert chunk_bounds(10, 1, batchnorm="running", block_size=3) == chunk_bounds(
        10, 3, batchnorm="running", block_size=3
    )
    assert chunk_bounds(10, batchnorm="running", block_size=3) == [(0, 10)]
    assert chunk_bounds(600, 300, batchnorm="running") == [(0, 256), (256, 512), (512, 600)]
    with pytest.raises(ChainInputError, match="block_size must be an integer >= 1"):
        chunk_bounds(10, batchnorm="running", block_size=0)


def test_callback_joins_the_blocks_of_a_chunk():
    encoder, decoder = tiny_chain_parts(stochastic=True)
    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    events, calls = [], []
    chain.transition.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    result = chain.run(
        n=10,
        steps=3,
        record="all",
        chunk_size=7,
        block_size=3,
        batchnorm="running",
        seed=0,
        callback=lambda step: events.append((step.chunk, step.start, step.step, step.z, step.x)),
    )
    # One transition call per block and step: blocks 3, 3 | 3, 1.
    assert calls == [3, 3] * 3 + [3, 1] * 3
    assert [e[:3] for e in events] == [(c, 6 * c, t) for c in range(2) for t in range(4)]
    for chunk, start, t, z, x in events:
        stop = (6, 10)[chunk]
        assert torch.equal(z, result.z[t][start:stop]) and torch.equal(x, result.x[t][start:stop])


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
        ({"n": 4, "seed": -1}, r"seed must be an integer in \[0, 2\*\*64 - 1\]"),
        ({"n": 4, "seed": 2**64}, "seed must be an integer in"),
        ({"n": 4, "block_size": 0}, "block_size must be an integer >= 1"),
        ({"n": 4, "batchnorm": "running", "block_size": 1.5}, "block_size must be an integer"),
        ({"z0": torch.randn(4, 4), "start": PriorSampler()}, "either z0 .* or start"),
        ({"n": 4, "start": torch.randn(4, 4)}, "start must have a sample"),
        ({"start": PriorSampler()}, r"or n \(the number of chains, drawn from start\)"),
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
        chain.run(torch.zeros(6, 2), steps=3, chunk_size=3, block_size=3, batchnorm="running")


def test_non_finite_in_a_later_block_of_a_chunk():
    decoder = aesampler.ModuleDecoder(nn.Identity(), latent_shape=2)
    # One chunk of three blocks of 2: call 3 * t + b is block b's step t; poison block 1, step 1.
    chain = Chain.from_transition(_Drift({4: [1]}), decoder)
    with pytest.raises(
        aesampler.NonFiniteChainError,
        match=r"at step 2: 1 of 6 chains in chunk 0 \(chains 3\)",
    ):
        chain.run(torch.zeros(6, 2), steps=3, block_size=2, batchnorm="running")


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
    zs, xs = _manual_chain(encoder, decoder, GaussianCorruption(0.5), z0, 4, 3)
    for t in range(5):
        torch.testing.assert_close(result.z[t], zs[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.x[t], xs[t], rtol=1e-5, atol=1e-6)


# --- Issue #9: start samplers --------------------------------------------------------------------


class _Fixed:
    """A start sampler that returns given latents and notes how it was called."""

    def __init__(self, latents):
        self.latents, self.calls = latents, []

    def sample(self, n, generator=None):
        self.calls.append((n, generator))
        return self.latents[:n].clone()


@pytest.mark.parametrize("batchnorm", ["batch", "running"])
def test_a_start_sampler_gives_z0(parts, batchnorm):
    latents = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    start = _Fixed(latents)
    chain = Chain(*parts, GaussianCorruption(0.5))
    result = chain.run(n=9, start=start, steps=2, chunk_size=4, batchnorm=batchnorm, seed=3)
    assert torch.equal(result.z[0], latents)
    # Drawn once, for all chains, from the run's start generator.
    [(n, generator)] = start.calls
    assert n == 9 and generator.device.type == "cpu"
    assert generator.initial_seed() == start_generator(3).initial_seed()
    # The noise is what it would be from the same latents given as z0.
    given = chain.run(latents, steps=2, chunk_size=4, batchnorm=batchnorm, seed=3)
    assert torch.equal(result.z[2], given.z[2]) and torch.equal(result.x[2], given.x[2])


def test_the_prior_sampler_is_the_default_start(parts):
    chain = Chain(*parts)
    prior = PriorSampler()
    prior.latent_shape = (4,)
    a = chain.run(n=12, start=prior, steps=1, seed=4)
    b = chain.run(n=12, steps=1, seed=4)
    assert torch.equal(a.z[0], b.z[0]) and torch.equal(a.x[1], b.x[1])


def test_start_draws_take_the_models_dtype_and_a_decoder_needs_no_latent_shape():
    encoder, decoder = tiny_chain_parts(dtype=torch.float64)
    latents = torch.randn(5, 4)  # float32, as samplers draw
    result = Chain(encoder, decoder).run(n=5, start=_Fixed(latents), steps=1, seed=0)
    assert result.z[0].dtype == torch.float64 and torch.equal(result.z[0], latents.double())
    plain = aesampler.ModuleDecoder(nn.Identity())  # no latent_shape: the draws decide it
    shrink = aesampler.DeterministicEncoder(lambda_module(lambda x: x / 2))
    result = Chain(shrink, plain).run(n=3, start=_Fixed(torch.ones(3, 2)), steps=2, seed=0)
    assert torch.equal(result.z[2], torch.full((3, 2), 0.25))


@pytest.mark.parametrize(
    ("latents", "message"),
    [
        ([[0.0] * 4] * 4, r"returned list, not a torch.Tensor"),
        (torch.zeros(3, 4), r"asked for 4 latents and returned shape \(3, 4\)"),
        (torch.zeros(4, 5), r"draws latents of shape \(5,\) but the decoder expects \(4,\)"),
        (torch.zeros(4, 4, dtype=torch.int64), "latents must be floating"),
        (torch.tensor([[0.0] * 4, [float("nan")] * 4] * 2), r"NaN or inf in 2 of 4 chains"),
    ],
)
def test_bad_start_draws_give_one_clear_error(parts, latents, message):
    class Returns:
        def sample(self, n, generator=None):
            return latents

    with pytest.raises(ChainInputError, match=r"the start sampler \(Returns\).*" + message):
        Chain(*parts).run(n=4, start=Returns(), steps=1, seed=0)


@pytest.mark.parametrize("batchnorm", ["batch", "running"])
def test_bf16_precision_keeps_the_dtype_and_lands_within_bf16_rounding(batchnorm):
    """precision="bf16": the transitions run under autocast, the state and outputs keep fp32, the
    modules are unchanged, and one step lands within bf16 rounding of the exact run."""
    from aesampler.models import AAE

    torch.manual_seed(0)
    model = AAE(image_size=16, channels=1, latent_dim=8, width=8)
    before = _state(model.encoder, model.decoder)
    chain = Chain(model.encoder, model.decoder, GaussianCorruption(0.3))
    runs = {
        p: chain.run(n=32, steps=1, record=[0, 1], batchnorm=batchnorm, seed=3, precision=p)
        for p in ("fp32", "bf16")
    }
    exact, fast = runs["fp32"], runs["bf16"]
    assert torch.equal(exact.z[0], fast.z[0])  # the same starting draws
    for t in (0, 1):
        assert fast.z[t].dtype == fast.x[t].dtype == torch.float32
    # bf16 keeps 8 significant bits: relative errors of about 2**-8 per operation.
    assert (fast.x[0] - exact.x[0]).abs().max() < 0.03
    relative = (fast.z[1] - exact.z[1]).norm() / exact.z[1].norm()
    assert 0 < relative < 0.03, relative  # rounded, and only rounded
    after = _state(model.encoder, model.decoder)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(before, after))
    again = chain.run(n=32, steps=1, record=[0, 1], batchnorm=batchnorm, seed=3, precision="bf16")
    assert torch.equal(again.z[1], fast.z[1])  # deterministic
    with pytest.raises(ChainInputError, match="precision must be one of"):
        chain.run(n=4, steps=1, seed=0, precision="fp16")


def test_step_tensors_are_the_samples_files_layout():
    from aesampler.chain import step_key

    encoder, decoder = tiny_chain_parts()
    result = Chain(encoder, decoder).run(n=6, steps=2, record="all", seed=3)
    tensors = result.step_tensors()
    assert list(tensors) == [f"{v}/step-{t:03d}" for t in range(3) for v in "zx"]
    assert torch.equal(tensors[step_key("x", 1)], result.x[1].float())
    assert list(result.step_tensors([2])) == ["z/step-002", "x/step-002"]
