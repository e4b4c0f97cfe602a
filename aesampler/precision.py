"""Which precision the networks compute in, chosen by the hardware.

``precision`` (``Chain.run``, ``sampling.precision``, ``train.precision``, ``aesampler bench``)
is one of :data:`PRECISIONS`:

* ``"fp32"``: the modules as they are, exact;
* ``"bf16"``: forward passes under bfloat16 autocast (float16 on a CUDA device without
  bfloat16), with the convolutions' weights in channels-last layout while sampling;
* ``"auto"`` (the default): ``"bf16"`` where the device computes it fast, ``"fp32"`` elsewhere.

"Fast" is read from PyTorch's own queries, never assumed: a CPU is fast in bfloat16 when it has
AVX512-BF16 or AMX tiles (``torch.cpu._is_avx512_bf16_supported``,
``torch.cpu._is_amx_tile_supported``) AND PyTorch dispatches AVX512 kernels on it
(``torch.backends.cpu.get_cpu_capability()``: ``ATEN_CPU_CAPABILITY=avx2`` turns them off); a
CUDA device is fast when it has tensor cores (compute capability 7.0 or later). On a CPU without
those units bfloat16 is emulated: on an AMD EPYC with AVX2 only, the paper's 64 × 64 chain ran
at 0.06× fp32 in bf16 (docs/performance.md). An explicit ``"bf16"`` there still runs, and warns
once per process (:class:`SlowPrecisionWarning`) with the reason.

:func:`resolve_precision` makes the choice and says why (:class:`PrecisionChoice`, recorded in
the run's settings); :func:`autocast_for` and :func:`fast_layout` are what a precision means for
the modules. This module owns the concept: the chain, the models, training and the bench ask it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16"]
#: What ``precision`` may be set to.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: What a precision resolves to (what the networks compute in).
COMPUTED: tuple[str, ...] = ("fp32", "bf16")
#: The CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) under which PyTorch runs
#: AVX512 kernels: fast bfloat16 needs them as well as the units.
_AVX512_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX")


class SlowPrecisionWarning(UserWarning):
    """``precision="bf16"`` was asked for on a device that computes it slowly."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision`` resolved to on a device, and why.

    Attributes:
        requested: what was asked for (``"auto"``, ``"fp32"`` or ``"bf16"``).
        precision: what the networks compute in (``"fp32"`` or ``"bf16"``).
        fast_bf16: whether the device computes bfloat16 fast.
        reason: one sentence naming what was found (the CPU capability, the CUDA device).
    """

    requested: str
    precision: str
    fast_bf16: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log: ``precision auto -> fp32 (…)``."""
        return f"precision {self.requested} -> {self.precision} ({self.reason})"


def cpu_capability() -> str:
    """PyTorch's CPU capability here (``AVX2``, ``AVX512``, ``DEFAULT``, …)."""
    return str(torch.backends.cpu.get_cpu_capability())


def _cpu_units() -> dict[str, bool]:
    """Which bfloat16 units this CPU has, from PyTorch's own queries (False where absent)."""
    found = {}
    for name, query in (
        ("avx512_bf16", "_is_avx512_bf16_supported"),
        ("amx", "_is_amx_tile_supported"),
    ):
        probe = getattr(torch.cpu, query, None)
        try:
            found[name] = bool(probe()) if callable(probe) else False
        except Exception:  # a query this build cannot answer
            found[name] = False
    return found


def fast_bf16(device: torch.device | str | None) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 (float16 on old CUDA devices) fast, and why."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 7:
            kind = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            return True, f"{name} (compute capability {major}.{minor}) has {kind} tensor cores"
        return False, f"{name} (compute capability {major}.{minor}) has no tensor cores"
    if device.type != "cpu":
        return False, f"autocast is not used on {device.type} devices"
    capability = cpu_capability()
    units = _cpu_units()
    have = [name.upper().replace("_", "-") for name, present in units.items() if present]
    if not have:
        return False, (
            f"the CPU (capability {capability}) has no AVX512-BF16 or AMX units: bfloat16 "
            "would be emulated"
        )
    if capability not in _AVX512_CAPABILITIES:
        return False, (
            f"the CPU has {' and '.join(have)} but PyTorch dispatches {capability} kernels here "
            "(ATEN_CPU_CAPABILITY?): bfloat16 would be emulated"
        )
    return True, f"the CPU (capability {capability}) has {' and '.join(have)}"


_WARNED: set[tuple[str, str]] = set()


def resolve_precision(
    device: torch.device | str | None, requested: str, *, warn: bool = True
) -> PrecisionChoice:
    """What ``requested`` means on ``device``: ``auto`` picks; an explicit choice is kept.

    An explicit ``"bf16"`` on a device without fast bfloat16 warns once per process and device
    kind (:class:`SlowPrecisionWarning`), unless ``warn`` is False.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    fast, why = fast_bf16(device)
    if requested == "auto":
        chosen = "bf16" if fast else "fp32"
        return PrecisionChoice(requested, chosen, fast, why)
    if requested == "bf16" and not fast and warn:
        key = (torch.device("cpu" if device is None else device).type, why)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(
                f"precision 'bf16' on this device will likely be slower than fp32: {why} "
                "(on an AVX2-only CPU the paper's networks ran at 0.06x fp32 in bf16; "
                "docs/performance.md). Use precision 'auto' or 'fp32'.",
                SlowPrecisionWarning,
                stacklevel=3,
            )
    return PrecisionChoice(requested, requested, fast, why)


def autocast_dtype(device: torch.device | None) -> torch.dtype:
    """The dtype ``"bf16"`` computes in on ``device``: bfloat16, or float16 on a CUDA device
    without bfloat16."""
    if device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast_for(device: torch.device | None, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved ``precision`` on ``device`` (a no-op for ``"fp32"``).

    Devices without autocast (meta) run as they are.
    """
    if precision not in COMPUTED:
        raise ValueError(f"precision must be one of {COMPUTED} here, got {precision!r}")
    if precision == "fp32" or device is None or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype(device))


@contextlib.contextmanager
def fast_layout(roots: Iterable[nn.Module], precision: str) -> Iterator[None]:
    """Hold the modules' 4-D weights in channels-last layout while ``precision`` is ``"bf16"``.

    With bfloat16 autocast the convolutions run fastest in channels-last layout (the CLI's
    speed, ``aesampler bench``). On exit every parameter and buffer is given back its own tensor
    (the same storage, values and memory format), so a user's modules are left exactly as they
    were. A no-op for ``"fp32"``.
    """
    if precision != "bf16":
        yield
        return
    seen: dict[int, torch.Tensor] = {}
    for root in roots:
        for tensor in [*root.parameters(), *root.buffers()]:
            if tensor.dim() == 4 and id(tensor) not in seen:
                seen[id(tensor)] = tensor
    originals = [(tensor, tensor.data) for tensor in seen.values()]
    try:
        with torch.no_grad():
            for tensor, data in originals:
                tensor.data = data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for tensor, data in originals:
            tensor.data = data
