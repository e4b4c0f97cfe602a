"""The chain runner: the one sampling loop.

``Chain(encoder, decoder, corruption).run(z0)`` iterates the paper's transition (Eq. 1 / Eq. 2)
and records z_t and x_t = d(z_t) at chosen steps. Step 0 is ordinary prior sampling; step m is m
transitions from z0 (the chain really chains). The corruption is applied only inside the
transition, never to the returned samples.

Batch normalisation (paper §4.3): with ``batchnorm="batch"`` (the default, the paper's choice)
every BatchNorm layer normalises with the statistics of the current chunk of chains; with
``"running"`` it uses the population statistics learned in training. In both modes the modules'
parameters, buffers and train/eval flags are exactly what they were before the run.

Non-finite numbers stop the run: a z0 with NaN or inf is refused before anything runs, and NaN or
inf appearing in z_t or x_t raises :class:`NonFiniteChainError` naming the first such step. The
check costs no host-device synchronisation per step: per-chain flags accumulate on the device and
are read once at the end of each chunk.

No file I/O and no logging here: callers do that, through the ``callback``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ChainInputError, NonFiniteChainError
from .interfaces import Corruption, Decoder, Encoder, ModuleDecoder, Transition
from .transitions import DecodeCorruptEncode

BatchNormMode = Literal["batch", "running"]
BATCHNORM_MODES: tuple[str, ...] = ("batch", "running")
PAPER_STEPS: tuple[int, ...] = (0, 1, 5, 10)
_SHOWN_CHAINS = 5  # how many chain indices an error message lists


def default_record(steps: int) -> tuple[int, ...]:
    """The paper's steps 0, 1, 5, 10 that fit in ``steps``, plus ``steps`` itself."""
    return tuple(sorted({s for s in PAPER_STEPS if s <= steps} | {steps}))


@dataclass(frozen=True)
class ChainStep:
    """What the per-step callback receives.

    Attributes:
        chunk: index of the chunk of chains being run.
        start: index of the chunk's first chain among all chains.
        step: t, the chain step; 0 is the prior draw.
        z: z_t for the chunk, on the modules' device (do not modify it).
        x: d(z_t) for the chunk if it was computed at this step, else None.
    """

    chunk: int
    start: int
    step: int
    z: Tensor
    x: Tensor | None


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
    """

    z: StepTensors
    x: StepTensors
    steps: tuple[int, ...]

    @property
    def num_chains(self) -> int:
        return next(iter(self.z.values())).shape[0]


def _unique_modules(roots: Iterable[nn.Module]) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for root in roots:
        for module in root.modules():
            seen.setdefault(id(module), module)
    return list(seen.values())


@contextlib.contextmanager
def sampling_mode(roots: Iterable[nn.Module], batchnorm: BatchNormMode) -> Iterator[None]:
    """Put modules in sampling mode and leave them exactly as they were afterwards.

    Every module is put in eval mode (dropout off). With ``batchnorm="batch"`` each BatchNorm
    layer is switched to training mode with ``track_running_stats`` off, so it normalises with
    minibatch statistics without touching its running buffers. On exit the train/eval flags and
    ``track_running_stats`` are restored, and every buffer is restored from a snapshot as a last
    guard, so even a custom layer that updates a buffer while sampling leaves no trace.
    """
    modules = _unique_modules(roots)
    flags = [(m, m.training) for m in modules]
    norms = [m for m in modules if isinstance(m, _BatchNorm)]
    tracking = [(m, m.track_running_stats) for m in norms]
    with torch.no_grad():
        snapshot = [(b, b.detach().clone()) for m in modules for b in m.buffers(recurse=False)]
    try:
        for m in modules:
            m.training = False
        if batchnorm == "batch":
            for m in norms:
                m.training = True
                m.track_running_stats = False
        yield
    finally:
        for m, training in flags:
            m.training = training
        for m, track in tracking:
            m.track_running_stats = track
        with torch.no_grad():
            for buffer, saved in snapshot:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)


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
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ChainInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


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
        steps: int = 10,
        record: Iterable[int] | Literal["all"] | None = None,
        chunk_size: int | None = None,
        batchnorm: BatchNormMode = "batch",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        out_device: torch.device | str | None = None,
        callback: Callable[[ChainStep], None] | None = None,
    ) -> ChainResult:
        """Run chains from z0 and record z_t and d(z_t) at the chosen steps.

        Args:
            z0: starting latents, shape (N, *latent_shape), on the modules' device and in their
                dtype. If None, ``n`` chains start from prior draws z0 ~ N(0, I) (this needs the
                decoder's ``latent_shape``).
            n: the number of chains when z0 is None.
            steps: the number of transitions to run.
            record: steps to record, each in [0, steps], or ``"all"``. Default: 0, 1, 5, 10 (those
                not above ``steps``) and ``steps``.
            chunk_size: run the chains in chunks of at most this many (balanced sizes); memory
                then grows with N only through what is recorded. With ``batchnorm="batch"`` a
                chunk is the batch whose statistics BatchNorm uses. Default: all at once.
            batchnorm: ``"batch"`` (minibatch statistics, the paper's choice) or ``"running"``
                (population statistics).
            seed: seed for a fresh generator on the modules' device: equal seeds give
                bit-identical runs on the same device. Mutually exclusive with ``generator``.
            generator: a generator on the modules' device to draw all noise from.
            out_device: where the recorded tensors go; default the modules' device.
            callback: called after every step of every chunk with a :class:`ChainStep`.

        Returns:
            A :class:`ChainResult`; ``result.z[t]`` and ``result.x[t]`` hold step t.

        Raises:
            ChainInputError: an argument is invalid, e.g. z0 holds NaN or inf.
            NonFiniteChainError: NaN or inf appeared in z_t, or in x_t where x_t was computed
                (every step but the last unless it is recorded). Checked at the end of each
                chunk; the message names the first bad step and its chains.
        """
        steps = _check_int("steps", steps, 0)
        record_steps = self._check_record(record, steps)
        if batchnorm not in BATCHNORM_MODES:
            raise ChainInputError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        if seed is not None and generator is not None:
            raise ChainInputError("pass either seed or generator, not both")

        device, dtype = _module_device_dtype(self._roots)
        z0, n, latent_shape, device, dtype = self._check_start(z0, n, device, dtype)
        chunk_size = n if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
        bounds = _chunk_bounds(n, chunk_size)
        if batchnorm == "batch" and min(b - a for a, b in bounds) < 2 and self._has_batchnorm():
            raise ChainInputError(
                "batchnorm='batch' normalises over the chains of a chunk, and a chunk here holds "
                f"1 chain (n={n}, chunk_size={chunk_size}): run at least 2 chains per chunk, or "
                "use batchnorm='running'"
            )
        out_device = device if out_device is None else torch.device(out_device)

        if seed is not None:
            seed = _check_int("seed", seed, 0)
            generator = torch.Generator(device=device).manual_seed(seed)
        elif generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ChainInputError(f"generator must be a torch.Generator, got {generator!r}")
            if torch.device(generator.device).type != device.type:
                raise ChainInputError(
                    f"generator is on {generator.device} but the chain runs on {device}; "
                    f"create it with torch.Generator(device={str(device)!r})"
                )

        z_out: dict[int, Tensor] = {}
        x_out: dict[int, Tensor] = {}
        record_set = set(record_steps)
        check_finite = device.type != "meta"  # meta tensors hold no values to check
        with sampling_mode(self._roots, batchnorm), torch.inference_mode():
            for chunk, (start, stop) in enumerate(bounds):
                first_bad = _FirstNonFinite(stop - start, device)
                if z0 is None:
                    z = torch.randn(
                        (stop - start, *latent_shape),
                        generator=generator,
                        device=device,
                        dtype=dtype,
                    )
                else:
                    z = z0[start:stop]
                for t in range(steps + 1):
                    out = self.transition(z, generator=generator) if t < steps else None
                    x = out.x if out is not None else None
                    if t in record_set:
                        if x is None:
                            x = self.decoder(z)
                        _store(z_out, t, z, start, stop, n, out_device)
                        _store(x_out, t, x, start, stop, n, out_device)
                    if check_finite:
                        first_bad.update(t, z, x)
                    if callback is not None:
                        callback(ChainStep(chunk=chunk, start=start, step=t, z=z, x=x))
                    if out is not None:
                        _check_next(out.z, z, t)
                        z = out.z
                if check_finite:
                    self._raise_if_non_finite(first_bad, chunk, start, batchnorm)
        return ChainResult(z=StepTensors("z", z_out), x=StepTensors("x", x_out), steps=record_steps)

    def _has_batchnorm(self) -> bool:
        return any(isinstance(m, _BatchNorm) for m in _unique_modules(self._roots))

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

    @staticmethod
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
            raise ChainInputError(
                f"record must be 'all' or a list of steps, got {record!r}"
            ) from None
        bad = [
            v
            for v in values
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= steps
        ]
        if bad or not values:
            raise ChainInputError(
                f"record must hold integer steps in [0, {steps}] (steps={steps}); "
                f"got {values!r}" + (f", invalid: {bad!r}" if bad else "")
            )
        return tuple(sorted(set(values)))

    def _check_start(
        self,
        z0: Tensor | None,
        n: int | None,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ) -> tuple[Tensor | None, int, tuple[int, ...], torch.device, torch.dtype]:
        if z0 is None:
            if n is None:
                raise ChainInputError("pass z0 (the starting latents) or n (the number of chains)")
            n = _check_int("n", n, 1)
            latent_shape = self.decoder.latent_shape
            if latent_shape is None:
                raise ChainInputError(
                    "cannot draw z0 from the prior: the decoder has no latent_shape; pass z0, or "
                    "build the decoder as ModuleDecoder(net, latent_shape=...)"
                )
            return (
                None,
                n,
                tuple(latent_shape),
                device or torch.device("cpu"),
                dtype or torch.float32,
            )
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
            bad = (~torch.isfinite(z0).flatten(1).all(dim=1)).nonzero().flatten().tolist()
            if bad:
                raise ChainInputError(
                    f"z0 holds NaN or inf in {len(bad)} of {z0.shape[0]} chains "
                    f"({_chain_list(bad)}): every starting latent must be finite"
                )
        return z0, z0.shape[0], tuple(z0.shape[1:]), z0.device, z0.dtype


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

    def update(self, t: int, *values: Tensor | None) -> None:
        peak = None
        for value in values:
            if value is None or not value.is_floating_point() or value.numel() == 0:
                continue  # only floating-point values can be NaN or inf
            if value.dim() >= 2 and value.shape[0] == self.chains:
                row_peak = value.flatten(1).abs().amax(dim=1)
            elif value.dim() == 1 and value.shape[0] == self.chains:
                row_peak = value.abs()
            else:  # not one row per chain: a bad value counts against every chain
                row_peak = value.abs().amax().expand(self.chains)
            peak = row_peak if peak is None else torch.maximum(peak, row_peak)
        if peak is not None:
            step = torch.where(torch.isfinite(peak), math.inf, float(t))
            torch.minimum(self.first, step, out=self.first)

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


def _check_next(z_next: Tensor, z: Tensor, t: int) -> None:
    if z_next.shape != z.shape or z_next.dtype != z.dtype:
        raise ChainInputError(
            f"the transition at step {t} returned z of shape {tuple(z_next.shape)} and dtype "
            f"{z_next.dtype}, but the chain's z has shape {tuple(z.shape)} and dtype {z.dtype}: "
            "the encoder's output must match the decoder's input"
        )
