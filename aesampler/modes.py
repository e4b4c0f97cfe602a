"""The modules' state while sampling: eval mode, with BatchNorm on minibatch statistics or not.

Paper §4.3: while sampling, batch normalisation uses the statistics of the current minibatch
(``batchnorm="batch"``, the default) or, with ``"running"``, the population statistics learned in
training. :func:`sampling_mode` sets either up and leaves the modules exactly as they were.

A leaf module (it imports no other part of aesampler): the chain, the samplers (which encode
data with the same BatchNorm behaviour) and the evaluation all ask it, and none of them has to
import another to get it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BatchNormMode = Literal["batch", "running"]
BATCHNORM_MODES: tuple[str, ...] = ("batch", "running")


def unique_modules(roots: Iterable[nn.Module]) -> list[nn.Module]:
    """Every module under ``roots``, each once (roots may share submodules)."""
    seen: dict[int, nn.Module] = {}
    for root in roots:
        for module in root.modules():
            seen.setdefault(id(module), module)
    return list(seen.values())


def has_batchnorm(roots: Iterable[nn.Module]) -> bool:
    """Whether any module under ``roots`` is a BatchNorm layer."""
    return any(isinstance(m, _BatchNorm) for m in unique_modules(roots))


@contextlib.contextmanager
def sampling_mode(roots: Iterable[nn.Module], batchnorm: BatchNormMode) -> Iterator[None]:
    """Put modules in sampling mode and leave them exactly as they were afterwards.

    Every module is put in eval mode (dropout off). With ``batchnorm="batch"`` each BatchNorm
    layer is switched to training mode with ``track_running_stats`` off, so it normalises with
    minibatch statistics without touching its running buffers. On exit the train/eval flags and
    ``track_running_stats`` are restored, and every buffer is restored from a snapshot as a last
    guard, so even a custom layer that updates a buffer while sampling leaves no trace.
    """
    modules = unique_modules(roots)
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
