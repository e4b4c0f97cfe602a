"""Where a run's randomness comes from: one integer base seed, and the streams derived from it.

A run has one base seed. The starting latents of all chains are drawn at once from a CPU
generator derived from (seed, "start") (:func:`start_generator`); the noise of the transitions
is drawn group by group, each group with its own generator derived from (seed, group index)
(:func:`block_generator`); many chains run as shards, each with its own base seed
(:func:`shard_seed`). docs/concepts.md tabulates the streams.

A leaf module: the chain, the samplers and the workflow ask it, and it asks only the checks.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_int
from .errors import ChainInputError

MAX_SEED = 2**64 - 1  # the largest seed a torch.Generator accepts
_SEED_DRAW_HIGH = 2**63 - 1  # a seed drawn from a generator is in [0, 2**63 - 1)
# The spawn keys of numpy.random.SeedSequence(seed, spawn_key=...) that separate the streams.
_START_KEY = (0,)
_NOISE_KEY = 1
_SHARD_KEY = 2


def derived_seed(seed: int, key: tuple[int, ...]) -> int:
    """A 64-bit seed for the stream ``key`` of the run seeded with ``seed``.

    ``numpy.random.SeedSequence`` keeps its algorithm stable across numpy versions, hashes the
    seed (padded to 128 bits) and the spawn key separately, so distinct (seed, key) pairs give
    unrelated seeds, and the result depends on nothing else.
    """
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, dtype=np.uint64)
    return int(state[0])


def check_seed(seed: object) -> int:
    """``seed`` if it is an integer a ``torch.Generator`` accepts, else ChainInputError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ChainInputError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    return seed


def _check_index(index: object) -> int:
    return check_int("index", index, 0, error=ChainInputError, bound=True)


def start_generator(seed: int) -> torch.Generator:
    """The CPU generator from which a run with ``seed`` draws the starting latents of all chains.

    Seeded with ``SeedSequence(seed, spawn_key=(0,)).generate_state(1, uint64)[0]``. Without a
    ``start`` sampler, z0 is ``torch.randn(n, *latent_shape, generator=start_generator(seed))``
    (float32), then converted to the modules' dtype and moved to their device chunk by chunk.
    """
    return torch.Generator().manual_seed(derived_seed(check_seed(seed), _START_KEY))


def block_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator on ``device`` of noise group ``index`` in a run with ``seed``.

    Seeded with ``SeedSequence(seed, spawn_key=(1, index)).generate_state(1, uint64)[0]``: it
    depends on (seed, index) alone. With ``batchnorm="running"`` group ``index`` is the block of
    chains ``[index * block_size, (index + 1) * block_size)``; with ``batchnorm="batch"`` it is
    chunk ``index``. The group's transition at every step draws all its noise from it.
    """
    key = (_NOISE_KEY, _check_index(index))
    return torch.Generator(device=device).manual_seed(derived_seed(check_seed(seed), key))


def shard_seed(seed: int, index: int) -> int:
    """The base seed of shard ``index`` of a sampling run with ``seed`` (see
    :func:`aesampler.chain.shard_bounds`).

    Shard 0 runs with ``seed`` itself, so a run of one shard is the run ``Chain.run(seed=seed)``
    would make; shard i > 0 with ``SeedSequence(seed, spawn_key=(2, i)).generate_state(1,
    uint64)[0]``. A shard's chains depend on (seed, index, its size) alone: not on which process
    runs it, nor on which shards ran before.
    """
    seed = check_seed(seed)
    index = _check_index(index)
    return seed if index == 0 else derived_seed(seed, (_SHARD_KEY, index))


def seed_from_generator(generator: torch.Generator | None = None) -> int:
    """The base seed of a run given ``generator=``: one draw from it, which advances it.

    ``torch.randint(2**63 - 1, (), generator=generator, device=generator.device)``; with None,
    from PyTorch's default CPU generator (so ``torch.manual_seed`` makes unseeded runs repeat).
    """
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(_SEED_DRAW_HIGH, (), generator=generator, device=device))
