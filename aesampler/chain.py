"""The chain runner: the one sampling loop.

``Chain(encoder, decoder, corruption).run(z0)`` iterates the paper's transition (Eq. 1 / Eq. 2)
and records z_t and x_t = d(z_t) at chosen steps. Step 0 is ordinary prior sampling; step m is m
transitions from z0 (the chain really chains). The corruption is applied only inside the
transition, never to the returned samples.

Batch normalisation (paper §4.3): with ``batchnorm="batch"`` (the default, the paper's choice)
every BatchNorm layer normalises with the statistics of the current chunk of chains; with
``"running"`` it uses the population statistics learned in training. In both modes the modules'
parameters, buffers and train/eval flags are exactly what they were before the run.

Randomness (:mod:`aesampler.seeding`, re-exported here: :func:`start_generator`,
:func:`block_generator`, :func:`shard_seed`, :func:`seed_from_generator`): a run has one integer
base seed. The starting latents of all chains are drawn at once, before any chunking, from a CPU
generator derived from (seed, "start"). The noise of the transitions is drawn group by group,
each group with its own generator on the modules' device derived from (seed, group index): with
``batchnorm="running"`` a group is a fixed block of ``block_size`` consecutive chains, so every
chain's trajectory is independent of ``chunk_size``; with ``batchnorm="batch"`` a group is a
chunk, the batch whose statistics BatchNorm uses. Many chains are run as shards
(:func:`shard_bounds`), each one ``Chain.run`` with its own base seed (:func:`shard_seed`), so a
shard's chains do not depend on which process runs it or in what order.

Non-finite numbers stop the run: a z0 with NaN or inf is refused before anything runs, and NaN or
inf appearing in z_t or x_t raises :class:`NonFiniteChainError` naming the first such step. The
check costs no host-device synchronisation per step: per-chain flags accumulate on the device and
are read once at the end of each chunk.

The modules' sampling state (:func:`sampling_mode`) is :mod:`aesampler.modes`'s, re-exported here.

Precision (``Chain.run(precision=...)``): ``"auto"`` is ``"bf16"`` where the modules' device
computes bfloat16 fast (a CPU with AVX512-BF16 or AMX, a CUDA device with tensor cores) and
``"fp32"`` elsewhere (:func:`aesampler.precision.resolve_precision`). ``"fp32"`` runs the modules
as they are (exact). ``"bf16"`` runs the transitions and decodes under autocast in bfloat16
(float16 on a CUDA device without bfloat16), with the modules' 4-D weights in channels-last
layout for the run (given back as they were after it); on a device without fast bfloat16 it warns
once. The chain's state z_t and the recorded x_t are stored in the modules' dtype, but their
values carry bfloat16 precision: each transition's output (and the corruption inside it) is
computed in bfloat16.

No file I/O and no logging here: callers do that, through the ``callback``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from .checks import check_int, is_int
from .errors import ChainInputError, NonFiniteChainError
from .interfaces import (
    Corruption,
    Decoder,
    Encoder,
    ModuleDecoder,
    Transition,
    TransitionOutput,
)
from .modes import BATCHNORM_MODES, BatchNormMode, has_batchnorm, sampling_mode
from .precision import (
    PRECISIONS,
    Precision,
    PrecisionChoice,
    autocast_for,
    fast_layout,
    resolve_precision,
)
from .seeding import (
    block_generator,
    check_seed,
    seed_from_generator,
    shard_seed,
    start_generator,
)
from .transitions import DecodeCorruptEncode

__all__ = [
    "BATCHNORM_MODES",
    "DEFAULT_BLOCK_SIZE",
    "PAPER_STEPS",
    "BatchNormMode",
    "Chain",
    "ChainResult",
    "ChainStep",
    "StartSampler",
    "StepTensors",
    "block_generator",
    "chunk_bounds",
    "default_record",
    "sampling_mode",
    "seed_from_generator",
    "shard_bounds",
    "shard_seed",
    "start_generator",
    "step_key",
]

PAPER_STEPS: tuple[int, ...] = (0, 1, 5, 10)
#: Chains per noise block with ``batchnorm="running"`` (see :func:`block_generator`).
DEFAULT_BLOCK_SIZE = 256
_SHOWN_CHAINS = 5  # how many chain indices an error message lists


class StartSampler(Protocol):
    """What ``Chain.run(start=...)`` needs: :class:`aesampler.samplers.Sampler` is one."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latents (n, *latent_shape) on the CPU, all randomness from ``generator``."""
        ...


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """The (start, stop) chain ranges of ``n`` chains in shards of at most ``shard_size``.

    ``ceil(n / shard_size)`` shards of nearly equal size (like the chunks of batch-statistics BN,
    so the last shard is never a tiny remainder). Each shard is one ``Chain.run`` with
    :func:`shard_seed`: the unit that is streamed to disk, resumed, and shared out between
    processes.
    """
    return _chunk_bounds(_check_int("n", n, 1), _check_int("shard_size", shard_size, 1))


def step_key(name: str, t: int) -> str:
    """The key of step t's tensor ``name`` among flat named tensors: ``step_key("z", 5)`` is
    ``"z/step-005"``."""
    return f"{name}/step-{t:03d}"


def default_record(steps: int) -> tuple[int, ...]:
    """The paper's steps 0, 1, 5, 10 that fit in ``steps``, plus ``steps`` itself."""
    return tuple(sorted({s for s in PAPER_STEPS if s <= steps} | {steps}))


class ChainStep:
    """What the per-step callback receives.

    Attributes:
        chunk: index of the chunk of chains being run.
        start: index of the chunk's first chain among all chains.
        step: t, the chain step; 0 is the prior draw.
        z: z_t for the chunk, on the modules' device (do not modify it).
        x: d(z_t) for the chunk if it was computed at this step, else None.

    With ``batchnorm="running"`` a chunk may hold several noise blocks, each run by its own call
    of the transition; ``z`` and ``x`` then join the blocks on first access only, so a callback
    that does not look at them (a progress bar) costs no copy.
    """

    __slots__ = ("_x", "_z", "chunk", "start", "step")

    def __init__(
        self,
        chunk: int,
        start: int,
        step: int,
        z: Tensor | Sequence[Tensor],
        x: Tensor | Sequence[Tensor] | None,
    ):
        self.chunk, self.start, self.step = chunk, start, step
        self._z, self._x = z, x

    @property
    def z(self) -> Tensor:
        if not isinstance(self._z, Tensor):
            self._z = _joined(self._z)
        return self._z

    @property
    def x(self) -> Tensor | None:
        if self._x is not None and not isinstance(self._x, Tensor):
            self._x = _joined(self._x)
        return self._x

    def __repr__(self) -> str:
        shape = tuple(self.z.shape)
        return f"ChainStep(chunk={self.chunk}, start={self.start}, step={self.step}, z={shape})"


def _joined(parts: Sequence[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


class StepTensors(Mapping[int, Tensor]):
    """Recorded tensors by step number: ``result.x[5]`` is d(z_5) for every chain."""

    def __init__(self, name: str, tensors: dict[int, Tensor]):
        self._name = name
        self._tensors = tensors

    def __getitem__(self, step: int) -> Tensor:
        try:
            return self._tensors[step]
        except KeyError:
            recorded = ", ".join(map(str, self._tensors)) or "none"
            raise KeyError(
                f"{self._name} at step {step!r} was not recorded; recorded steps: {recorded}"
            ) from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        shapes = {t: tuple(v.shape) for t, v in self._tensors.items()}
        return f"StepTensors({self._name}: {shapes})"


@dataclass(frozen=True)
class ChainResult:
    """The recorded states of N chains.

    Attributes:
        z: latents by step, each of shape (N, *latent_shape).
        x: samples d(z_t) by step, each of shape (N, *image_shape).
        steps: the recorded step numbers, ascending.
        precision: what the run's ``precision`` resolved to, and why (None: not recorded).
    """

    z: StepTensors
    x: StepTensors
    steps: tuple[int, ...]
    precision: PrecisionChoice | None = None

    @property
    def num_chains(self) -> int:
        return next(iter(self.z.values())).shape[0]

    def step_tensors(self, steps: Iterable[int] | None = None) -> dict[str, Tensor]:
        """z_t and x_t of every chain at ``steps`` (default: every recorded step), float32 and
        contiguous, keyed :func:`step_key` (``z/step-005``): the layout of the run directory's
        ``samples.safetensors``, which other tools read."""
        tensors = {}
        for t in self.steps if steps is None else steps:
            tensors[step_key("z", t)] = self.z[t].float().contiguous()
            tensors[step_key("x", t)] = self.x[t].float().contiguous()
        return tensors

    @classmethod
    def concatenate(cls, results: Sequence[ChainResult]) -> ChainResult:
        """The chains of several runs (shards) recorded at the same steps, in order."""
        if not results:
            raise ChainInputError("concatenate needs at least one result")
        steps = results[0].steps
        if any(r.steps != steps for r in results):
            raise ChainInputError("results recorded at different steps cannot be concatenated")
        if len(results) == 1:
            return results[0]
        z = {t: torch.cat([r.z[t] for r in results]) for t in steps}
        x = {t: torch.cat([r.x[t] for r in results]) for t in steps}
        return cls(
            z=StepTensors("z", z),
            x=StepTensors("x", x),
            steps=steps,
            precision=results[0].precision,
        )


def _module_device_dtype(
    roots: Iterable[nn.Module],
) -> tuple[torch.device | None, torch.dtype | None]:
    device = dtype = None
    for root in roots:
        for tensor in [*root.parameters(), *root.buffers()]:
            if device is None:
                device = tensor.device
            if dtype is None and tensor.is_floating_point():
                dtype = tensor.dtype
            if device is not None and dtype is not None:
                return device, dtype
    return device, dtype


def _check_int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, minimum, error=ChainInputError, bound=True)


def _chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split n chains into ceil(n / chunk_size) chunks of nearly equal size.

    Balanced chunks keep batch-statistics BN from ever normalising over a tiny remainder chunk.
    """
    count = math.ceil(n / chunk_size)
    base, extra = divmod(n, count)
    bounds, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


#: A group of chains run by one call of the transition: (noise generator index, start, stop).
_Group = tuple[int, int, int]


def _plan(
    n: int, chunk_size: int | None, batchnorm: BatchNormMode, block_size: int
) -> list[list[_Group]]:
    """The chunks of a run, each a list of the groups its transition calls run.

    Batch BN: balanced chunks of at most ``chunk_size`` chains, one group each (index: the
    chunk's). Running BN: blocks of ``block_size`` chains (the last may be smaller), and chunks of
    ``max(1, chunk_size // block_size)`` whole blocks, so a chain's block never depends on
    ``chunk_size``.
    """
    if batchnorm == "batch":
        bounds = _chunk_bounds(n, n if chunk_size is None else chunk_size)
        return [[(i, start, stop)] for i, (start, stop) in enumerate(bounds)]
    blocks = [(i, a, min(a + block_size, n)) for i, a in enumerate(range(0, n, block_size))]
    per = len(blocks) if chunk_size is None else max(1, chunk_size // block_size)
    return [blocks[i : i + per] for i in range(0, len(blocks), per)]


def chunk_bounds(
    n: int,
    chunk_size: int | None = None,
    *,
    batchnorm: BatchNormMode = "batch",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[tuple[int, int]]:
    """The (start, stop) chain ranges of the chunks ``Chain.run`` uses with these arguments.

    ``len(chunk_bounds(...)) * (steps + 1)`` is how many times the run calls its callback.
    """
    n = _check_int("n", n, 1)
    chunk_size = None if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
    block_size = _check_int("block_size", block_size, 1)
    if batchnorm not in BATCHNORM_MODES:
        raise ChainInputError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    return [(g[0][1], g[-1][2]) for g in _plan(n, chunk_size, batchnorm, block_size)]


@dataclass(frozen=True)
class _Arguments:
    """``Chain.run``'s arguments that do not depend on z0 or the modules, checked."""

    steps: int
    record: tuple[int, ...]
    seed: int | None
    chunk_size: int | None
    block_size: int


def _check_arguments(
    z0: object,
    start: object,
    steps: object,
    record: object,
    chunk_size: object,
    block_size: object,
    batchnorm: object,
    seed: object,
    generator: object,
    precision: object,
) -> _Arguments:
    """Every check of ``Chain.run``'s plain arguments, in one place and a fixed order."""
    steps = _check_int("steps", steps, 0)
    record_steps = _check_record(record, steps)
    if batchnorm not in BATCHNORM_MODES:
        raise ChainInputError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    if seed is not None and generator is not None:
        raise ChainInputError("pass either seed or generator, not both")
    if z0 is not None and start is not None:
        raise ChainInputError(
            "pass either z0 (the starting latents) or start (a sampler to draw them), not both"
        )
    if start is not None and not callable(getattr(start, "sample", None)):
        raise ChainInputError(
            "start must have a sample(n, generator) method, such as an "
            f"aesampler.samplers.Sampler; got {type(start).__name__}"
        )
    if seed is not None:
        seed = check_seed(seed)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ChainInputError(f"generator must be a torch.Generator, got {generator!r}")
    chunk_size = None if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
    block_size = _check_int("block_size", block_size, 1)
    if precision not in PRECISIONS:
        raise ChainInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return _Arguments(steps, record_steps, seed, chunk_size, block_size)


def _check_record(record: Iterable[int] | Literal["all"] | None, steps: int) -> tuple[int, ...]:
    if record is None:
        return default_record(steps)
    if isinstance(record, str):
        if record != "all":
            raise ChainInputError(f"record must be 'all' or a list of steps, got {record!r}")
        return tuple(range(steps + 1))
    try:
        values = list(record)
    except TypeError:
        raise ChainInputError(f"record must be 'all' or a list of steps, got {record!r}") from None
    bad = [v for v in values if not is_int(v) or not 0 <= v <= steps]
    if bad or not values:
        raise ChainInputError(
            f"record must hold integer steps in [0, {steps}] (steps={steps}); "
            f"got {values!r}" + (f", invalid: {bad!r}" if bad else "")
        )
    return tuple(sorted(set(values)))


class _Loop:
    """The sampling loop of one ``Chain.run``: runs its chunks one by one, recording as it goes.

    Holds what every chunk shares (the run's seed, device, dtype and precision, the callback)
    and the recorded tensors, filled chunk by chunk in place (``z_out[t][start:stop]``).
    """

    def __init__(
        self,
        chain: Chain,
        arguments: _Arguments,
        seed: int,
        device: torch.device,
        dtype: torch.dtype | None,
        precision: str,
        callback: Callable[[ChainStep], None] | None,
        n: int,
        out_device: torch.device | None,
    ):
        self.transition, self.decoder = chain.transition, chain.decoder
        self.steps, self.record = arguments.steps, set(arguments.record)
        self.seed, self.device, self.dtype, self.precision = seed, device, dtype, precision
        self.autocast = autocast_for(device, precision)
        self.callback, self.n, self.out_device = callback, n, out_device
        self.check_finite = device.type != "meta"  # meta tensors hold no values to check
        self.z_out: dict[int, Tensor] = {}
        self.x_out: dict[int, Tensor] = {}

    def run_chunk(self, chunk: int, groups: list[_Group], z0: Tensor) -> _FirstNonFinite | None:
        """Run one chunk's groups for every step; its non-finite record (None: not checked)."""
        first, last = groups[0][1], groups[-1][2]
        first_bad = _FirstNonFinite(last - first, self.device)
        rows = [slice(a - first, b - first) for _, a, b in groups]
        z_chunk = z0[first:last].to(self.device)
        zs = [z_chunk[r] for r in rows] if len(groups) > 1 else [z_chunk]
        generators = [_noise_generator(self.seed, i, self.device) for i, _, _ in groups]
        for t in range(self.steps + 1):
            outs = self._transition(zs, generators) if t < self.steps else None
            xs = [out.x for out in outs] if outs is not None else [None] * len(zs)
            if t in self.record:
                self._record(t, groups, zs, xs)
            if self.check_finite:
                for r, z, x in zip(rows, zs, xs):
                    first_bad.update(t, z, x, rows=r)
            if self.callback is not None:
                x_parts = None if any(x is None for x in xs) else xs
                self.callback(ChainStep(chunk, first, t, zs, x_parts))
            if outs is not None:
                for out, z in zip(outs, zs):
                    _check_next(out.z, z, t)
                zs = [out.z for out in outs]
        return first_bad if self.check_finite else None

    def _transition(
        self, zs: list[Tensor], generators: list[torch.Generator | None]
    ) -> list[TransitionOutput]:
        with self.autocast:
            outs = [self.transition(z, generator=g) for z, g in zip(zs, generators)]
        if self.precision != "fp32":  # the state stays in the modules' dtype
            outs = [_in_dtype(out, self.dtype) for out in outs]
        return outs

    def _record(
        self, t: int, groups: list[_Group], zs: list[Tensor], xs: list[Tensor | None]
    ) -> None:
        """Store step t of every group, decoding x_t where the transition did not (in place)."""
        for i, (_, a, b) in enumerate(groups):
            if xs[i] is None:
                with self.autocast:
                    xs[i] = self.decoder(zs[i])
                xs[i] = xs[i].to(self.dtype) if self.dtype is not None else xs[i]
            _store(self.z_out, t, zs[i], a, b, self.n, self.out_device)
            _store(self.x_out, t, xs[i], a, b, self.n, self.out_device)


class Chain:
    """Markov-chain sampling from a generative autoencoder (Creswell et al., §3).

    Args:
        encoder: Q(z|x), an :class:`~aesampler.Encoder`.
        decoder: d(z), a :class:`~aesampler.Decoder` (a plain ``nn.Module`` is wrapped).
        corruption: C(x̃|x) for denoising models (Eq. 2); None for the identity (Eq. 1).

    Example:
        >>> encoder, decoder = DeterministicEncoder(enc_net), ModuleDecoder(dec_net)
        >>> chain = Chain(encoder, decoder, GaussianCorruption(0.5))
        >>> result = chain.run(torch.randn(64, 200), steps=10, seed=0)
        >>> result.x[5].shape  # samples after 5 transitions
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder | nn.Module,
        corruption: Corruption | None = None,
    ):
        if not isinstance(encoder, Encoder):
            raise ChainInputError(
                f"encoder must be an aesampler.Encoder, got {type(encoder).__name__}; wrap a "
                "network that outputs z in aesampler.DeterministicEncoder(net), or one that "
                "outputs a mean and a scale in aesampler.GaussianEncoder(net)"
            )
        decoder = _as_decoder(decoder)
        if corruption is not None and not isinstance(corruption, Corruption):
            raise ChainInputError(
                "corruption must be an aesampler.Corruption or None, "
                f"got {type(corruption).__name__}"
            )
        self._init(DecodeCorruptEncode(encoder, decoder, corruption), decoder)

    @classmethod
    def from_transition(cls, transition: Transition, decoder: Decoder | nn.Module) -> Chain:
        """A chain with any transition operator; ``decoder`` renders the recorded samples."""
        if not isinstance(transition, Transition):
            raise ChainInputError(
                f"transition must be an aesampler.Transition, got {type(transition).__name__}"
            )
        chain = cls.__new__(cls)
        chain._init(transition, _as_decoder(decoder))
        return chain

    def _init(self, transition: Transition, decoder: Decoder) -> None:
        self.transition = transition
        self.decoder = decoder

    def __repr__(self) -> str:
        transition, decoder = type(self.transition).__name__, type(self.decoder).__name__
        return f"Chain(transition={transition}, decoder={decoder})"

    @property
    def _roots(self) -> list[nn.Module]:
        return [self.transition, self.decoder]

    def run(
        self,
        z0: Tensor | None = None,
        *,
        n: int | None = None,
        start: StartSampler | None = None,
        steps: int = 10,
        record: Iterable[int] | Literal["all"] | None = None,
        chunk_size: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        batchnorm: BatchNormMode = "batch",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        out_device: torch.device | str | None = None,
        callback: Callable[[ChainStep], None] | None = None,
        precision: Precision = "auto",
    ) -> ChainResult:
        """Run chains from z0 and record z_t and d(z_t) at the chosen steps.

        Args:
            z0: starting latents, shape (N, *latent_shape), on the modules' device and in their
                dtype. If None, ``n`` chains start from draws of ``start``.
            n: the number of chains when z0 is None.
            start: where chains start when z0 is None: any object with ``sample(n, generator)``
                returning (n, *latent_shape) on the CPU, such as a fitted
                :class:`aesampler.samplers.Sampler`. Default: the prior N(0, I), which needs the
                decoder's ``latent_shape``. Drawn at once from :func:`start_generator` (seed), so
                z0 never depends on ``chunk_size``. Mutually exclusive with ``z0``.
            steps: the number of transitions to run.
            record: steps to record, each in [0, steps], or ``"all"``. Default: 0, 1, 5, 10 (those
                not above ``steps``) and ``steps``.
            chunk_size: run at most this many chains at a time; memory then grows with N only
                through what is recorded. With ``batchnorm="batch"`` chunks are balanced and a
                chunk is the batch whose statistics BatchNorm uses, so results depend on it. With
                ``batchnorm="running"`` a chunk is ``max(1, chunk_size // block_size)`` whole
                noise blocks and results are bit-identical for every ``chunk_size``. Default:
                all chains at once.
            block_size: with ``batchnorm="running"``, how many consecutive chains share a noise
                generator (:func:`block_generator`) and a call of the transition per step; it
                changes the results and is the least number of chains in flight.
            batchnorm: ``"batch"`` (minibatch statistics, the paper's choice) or ``"running"``
                (population statistics).
            seed: the run's base seed, an integer in [0, 2**64 - 1]: equal seeds give
                bit-identical runs on the same device. Mutually exclusive with ``generator``.
            generator: a generator (any device) the base seed is drawn from, once
                (:func:`seed_from_generator`); with neither, PyTorch's default CPU generator.
            out_device: where the recorded tensors go; default the modules' device.
            callback: called after every step of every chunk with a :class:`ChainStep`.
            precision: ``"auto"`` (default), ``"fp32"`` (exact) or ``"bf16"``: see "Precision"
                in the module's docstring; ``result.precision`` says what it resolved to and why.

        Returns:
            A :class:`ChainResult`; ``result.z[t]`` and ``result.x[t]`` hold step t.

        Raises:
            ChainInputError: an argument is invalid, e.g. z0 holds NaN or inf.
            NonFiniteChainError: NaN or inf appeared in z_t, or in x_t where x_t was computed
                (every step but the last unless it is recorded). Checked at the end of each
                chunk; the message names the first bad step and its chains.
        """
        a = _check_arguments(
            z0, start, steps, record, chunk_size, block_size, batchnorm, seed, generator, precision
        )
        z0, n, device, dtype = self._check_start(z0, n, start)
        plan = _plan(n, a.chunk_size, batchnorm, a.block_size)
        self._check_chunk_sizes(plan, n, a.chunk_size, batchnorm)
        out_device = device if out_device is None else torch.device(out_device)
        seed = seed_from_generator(generator) if a.seed is None else a.seed
        if z0 is None:
            z0, device, dtype = self._draw_start(start, n, seed, device, dtype)
        device = device or torch.device("cpu")
        choice = resolve_precision(device, precision)
        loop = _Loop(self, a, seed, device, dtype, choice.precision, callback, n, out_device)
        with self._sampling(batchnorm, choice.precision):
            for chunk, groups in enumerate(plan):
                first_bad = loop.run_chunk(chunk, groups, z0)
                if first_bad is not None:
                    self._raise_if_non_finite(first_bad, chunk, groups[0][1], batchnorm)
        z, x = StepTensors("z", loop.z_out), StepTensors("x", loop.x_out)
        return ChainResult(z=z, x=x, steps=a.record, precision=choice)

    @contextlib.contextmanager
    def _sampling(self, batchnorm: BatchNormMode, precision: str) -> Iterator[None]:
        with (
            sampling_mode(self._roots, batchnorm),
            fast_layout(self._roots, precision),
            torch.inference_mode(),
        ):
            yield

    def _check_start(
        self, z0: Tensor | None, n: int | None, start: StartSampler | None
    ) -> tuple[Tensor | None, int, torch.device | None, torch.dtype | None]:
        """z0 checked (or None), the number of chains, and the modules' device and dtype."""
        device, dtype = _module_device_dtype(self._roots)
        if z0 is not None:
            return self._check_z0(z0, n, device, dtype)
        return None, self._check_n(n, start), device, dtype

    def _check_chunk_sizes(
        self, plan: list[list[_Group]], n: int, chunk_size: int | None, batchnorm: BatchNormMode
    ) -> None:
        smallest = min(group[0][2] - group[0][1] for group in plan)
        if batchnorm == "batch" and smallest < 2 and self._has_batchnorm():
            raise ChainInputError(
                "batchnorm='batch' normalises over the chains of a chunk, and a chunk here holds "
                f"1 chain (n={n}, chunk_size={chunk_size}): run at least 2 chains per chunk, or "
                "use batchnorm='running'"
            )

    def _has_batchnorm(self) -> bool:
        return has_batchnorm(self._roots)

    def _raise_if_non_finite(
        self, first_bad: _FirstNonFinite, chunk: int, start: int, batchnorm: BatchNormMode
    ) -> None:
        found = first_bad.read()
        if found is None:
            return
        t, chains = found[0], [start + i for i in found[1]]
        size = first_bad.chains
        message = (
            f"the chains produced non-finite values (NaN or inf) at step {t}: {len(chains)} of "
            f"{size} chains in chunk {chunk} ({_chain_list(chains)}) have them in z_{t} or "
            f"x_{t} = d(z_{t}). The starting latents were finite, so the models made them "
            "(NaN in the weights, or values too large for the dtype)"
        )
        if batchnorm == "batch" and len(chains) == size > 1 and self._has_batchnorm():
            message += (
                "; with batchnorm='batch' a single bad chain spreads to every chain of its chunk "
                "through the batch statistics, and batchnorm='running' keeps chains apart"
            )
        raise NonFiniteChainError(message)

    def _check_n(self, n: int | None, start: object) -> int:
        if n is None:
            raise ChainInputError(
                "pass z0 (the starting latents) or n (the number of chains, drawn from "
                + ("start)" if start is not None else "the prior)")
            )
        n = _check_int("n", n, 1)
        if start is None and self.decoder.latent_shape is None:
            raise ChainInputError(
                "cannot draw z0 from the prior: the decoder has no latent_shape; pass z0 or a "
                "start sampler, or build the decoder as ModuleDecoder(net, latent_shape=...)"
            )
        return n

    def _draw_start(
        self,
        start: StartSampler | None,
        n: int,
        seed: int,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ) -> tuple[Tensor, torch.device, torch.dtype]:
        """z0 for all n chains on the CPU, in the modules' dtype, from ``start_generator(seed)``."""
        generator = start_generator(seed)
        if start is None:
            latent_shape = tuple(self.decoder.latent_shape)
            z0 = torch.randn((n, *latent_shape), generator=generator, dtype=torch.float32)
            dtype = dtype or torch.float32
            return z0.to(dtype), device or torch.device("cpu"), dtype
        with torch.no_grad():
            z0 = start.sample(n, generator)
        what = f"the start sampler ({type(start).__name__})"
        if not isinstance(z0, Tensor):
            raise ChainInputError(f"{what} returned {type(z0).__name__}, not a torch.Tensor")
        if z0.dim() < 2 or z0.shape[0] != n:
            raise ChainInputError(
                f"{what} was asked for {n} latents and returned shape {tuple(z0.shape)}; "
                f"expected ({n}, *latent_shape)"
            )
        if not z0.is_floating_point():
            raise ChainInputError(f"{what} returned dtype {z0.dtype}; latents must be floating")
        latent_shape = self.decoder.latent_shape
        if latent_shape is not None and tuple(z0.shape[1:]) != tuple(latent_shape):
            raise ChainInputError(
                f"{what} draws latents of shape {tuple(z0.shape[1:])} but the decoder expects "
                f"{tuple(latent_shape)}"
            )
        dtype = dtype or z0.dtype
        z0 = z0.detach().to(device="cpu" if z0.device.type != "meta" else z0.device, dtype=dtype)
        if z0.device.type != "meta":
            bad = _non_finite_rows(z0)
            if bad:
                raise ChainInputError(
                    f"{what} drew NaN or inf in {len(bad)} of {n} chains ({_chain_list(bad)}): "
                    "every starting latent must be finite"
                )
        return z0, device or torch.device("cpu"), dtype

    def _check_z0(
        self,
        z0: Tensor,
        n: int | None,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ) -> tuple[Tensor, int, torch.device, torch.dtype]:
        if not isinstance(z0, Tensor):
            raise ChainInputError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
        if z0.dim() < 2 or z0.shape[0] == 0:
            raise ChainInputError(
                f"z0 must have shape (N, *latent_shape) with N >= 1, got {tuple(z0.shape)}"
            )
        if not z0.is_floating_point():
            raise ChainInputError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
        if device is not None and z0.device != device:
            raise ChainInputError(
                f"z0 is on {z0.device} but the encoder and decoder are on {device}; "
                f"move it with z0.to({str(device)!r})"
            )
        if dtype is not None and z0.dtype != dtype:
            raise ChainInputError(
                f"z0 has dtype {z0.dtype} but the models' parameters are {dtype}; "
                f"convert it with z0.to({dtype})"
            )
        latent_shape = self.decoder.latent_shape
        if latent_shape is not None and tuple(z0.shape[1:]) != tuple(latent_shape):
            raise ChainInputError(
                f"z0 has latent shape {tuple(z0.shape[1:])} but the decoder expects "
                f"{tuple(latent_shape)} (z0 must be (N, {', '.join(map(str, latent_shape))}))"
            )
        if n is not None and n != z0.shape[0]:
            raise ChainInputError(f"n={n} disagrees with z0, which holds {z0.shape[0]} chains")
        if z0.device.type != "meta":
            bad = _non_finite_rows(z0)
            if bad:
                raise ChainInputError(
                    f"z0 holds NaN or inf in {len(bad)} of {z0.shape[0]} chains "
                    f"({_chain_list(bad)}): every starting latent must be finite"
                )
        return z0, z0.shape[0], z0.device, z0.dtype


def _non_finite_rows(z: Tensor) -> list[int]:
    """The chains of z holding NaN or inf (one host read: called once per run, before it)."""
    return (~torch.isfinite(z).flatten(1).all(dim=1)).nonzero().flatten().tolist()


def _noise_generator(seed: int, index: int, device: torch.device) -> torch.Generator | None:
    if device.type == "meta":
        return None  # meta tensors hold no values, and meta has no generators
    return block_generator(seed, index, device)


def _as_decoder(decoder: Decoder | nn.Module) -> Decoder:
    if isinstance(decoder, Decoder):
        return decoder
    if isinstance(decoder, nn.Module):
        return ModuleDecoder(decoder)
    raise ChainInputError(
        f"decoder must be an aesampler.Decoder or an nn.Module, got {type(decoder).__name__}"
    )


def _store(
    out: dict[int, Tensor],
    t: int,
    value: Tensor,
    start: int,
    stop: int,
    n: int,
    device: torch.device,
) -> None:
    if t not in out:
        # Allocated outside inference mode so the caller may modify what it gets back.
        with torch.inference_mode(False):
            out[t] = torch.empty((n, *value.shape[1:]), dtype=value.dtype, device=device)
    elif out[t].shape[1:] != value.shape[1:]:
        raise ChainInputError(
            f"step {t}: a chunk produced shape {tuple(value.shape[1:])} per chain, an earlier "
            f"one {tuple(out[t].shape[1:])}"
        )
    out[t][start:stop].copy_(value)


class _FirstNonFinite:
    """For each chain of a chunk, the first step at which z_t or x_t held NaN or inf.

    Updated on the device with no host synchronisation; :meth:`read` copies it to the host once.
    A chain's largest |value| is NaN or inf exactly when the chain holds NaN or inf (a maximum,
    unlike a sum, cannot overflow), and step numbers are exact in float32 up to 2**24.
    """

    def __init__(self, chains: int, device: torch.device):
        self.chains = chains
        self.first = torch.full((chains,), math.inf, device=device)

    def update(self, t: int, *values: Tensor | None, rows: slice | None = None) -> None:
        """Note step t for the chains ``rows`` of the chunk (default all), given their values."""
        first = self.first if rows is None else self.first[rows]
        chains = first.shape[0]
        peak = None
        for value in values:
            if value is None or not value.is_floating_point() or value.numel() == 0:
                continue  # only floating-point values can be NaN or inf
            if value.dim() >= 2 and value.shape[0] == chains:
                row_peak = value.flatten(1).abs().amax(dim=1)
            elif value.dim() == 1 and value.shape[0] == chains:
                row_peak = value.abs()
            else:  # not one row per chain: a bad value counts against every chain
                row_peak = value.abs().amax().expand(chains)
            peak = row_peak if peak is None else torch.maximum(peak, row_peak)
        if peak is not None:
            step = torch.where(torch.isfinite(peak), math.inf, float(t))
            torch.minimum(first, step, out=first)  # a view: writes into self.first

    def read(self) -> tuple[int, list[int]] | None:
        """(first bad step, the chunk's chains bad at that step), or None if all were finite."""
        first = self.first.cpu()
        step = float(first.min())
        if math.isinf(step):
            return None
        return int(step), (first == step).nonzero().flatten().tolist()


def _chain_list(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_SHOWN_CHAINS]))
    return f"chains {shown}" + (", ..." if len(indices) > _SHOWN_CHAINS else "")


def _in_dtype(out: TransitionOutput, dtype: torch.dtype | None) -> TransitionOutput:
    """A transition's output with z (and x) in ``dtype``: autocast leaves them in bf16."""
    if dtype is None:
        return out
    x = out.x.to(dtype) if out.x is not None else None
    return TransitionOutput(z=out.z.to(dtype), x=x)


def _check_next(z_next: Tensor, z: Tensor, t: int) -> None:
    if not isinstance(z_next, Tensor):
        raise ChainInputError(
            f"the transition at step {t} returned z that is a {type(z_next).__name__}, not a "
            "tensor: the encoder's posterior mean must be a tensor of latents (wrap a network "
            "that returns named outputs as DeterministicEncoder(net, output=...) or "
            "GaussianEncoder(net, mean_output=..., scale_output=...))"
        )
    if z_next.shape != z.shape or z_next.dtype != z.dtype:
        raise ChainInputError(
            f"the transition at step {t} returned z of shape {tuple(z_next.shape)} and dtype "
            f"{z_next.dtype}, but the chain's z has shape {tuple(z.shape)} and dtype {z.dtype}: "
            "the encoder's output must match the decoder's input: one latent of shape "
            f"{tuple(z.shape[1:])} per image, as in z0"
        )
