"""``sampling.steps: auto``: how many chain steps to take, chosen without labels.

The chain moves its latents towards the encoder's learned distribution P̂(Z) for a step or
two and can then drift away from it. The squared MMD between the chains' latents z_t and
encodings of held-out images (draws from P̂(Z)) measures that distance at every step without
labels or a feature network. :func:`choose_steps` runs pilot chains up to a cap, measures that
curve with one kernel bandwidth for all steps (so the values are comparable), and stops at the
first step after which the distance no longer falls (:func:`first_minimum`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .stats import median_bandwidth, mmd2_from_kernels, rbf_kernel


def _rows(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy().reshape(len(x), -1)


#: At most this many reference latents (a seeded random subset): the kernel matrices grow with
#: the square of their number, and a validation split can hold tens of thousands.
MAX_REFERENCE = 2000


def mmd_curve(
    latents: Mapping[int, Tensor], reference: Tensor, *, max_reference: int = MAX_REFERENCE
) -> dict[int, float]:
    """Unbiased MMD² (RBF kernel) from the latents at each step to ``reference`` latents.

    The bandwidth is the median heuristic on step 0's latents pooled with the reference, and
    the same for every step: a per-step bandwidth would rescale each value differently. A
    reference of more than ``max_reference`` rows is subsampled (seeded, so the curve is
    reproducible); its own kernel block is computed once for all steps.
    """
    steps = sorted(latents)
    if len(reference) > max_reference:
        keep = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))
        reference = reference[keep[:max_reference]]
    y = _rows(reference)
    bandwidth = median_bandwidth(_rows(latents[steps[0]]), y)
    kyy = rbf_kernel(y, y, bandwidth)
    curve = {}
    for t in steps:
        x = _rows(latents[t])
        curve[t] = mmd2_from_kernels(rbf_kernel(x, x, bandwidth), kyy, rbf_kernel(x, y, bandwidth))
    return curve


def first_minimum(curve: Mapping[int, float]) -> int:
    """The first step whose value the next step does not improve on (the last step if all do)."""
    steps = sorted(curve)
    for here, after in itertools.pairwise(steps):
        if curve[after] >= curve[here]:
            return here
    return steps[-1]


@dataclass(frozen=True)
class AutoSteps:
    """What :func:`choose_steps` chose, and the curve it chose from."""

    steps: int
    max_steps: int
    chains: int
    curve: dict[int, float]

    def as_dict(self) -> dict:
        return {
            "chosen": self.steps,
            "max_steps": self.max_steps,
            "pilot_chains": self.chains,
            "mmd_learned": {str(t): v for t, v in self.curve.items()},
        }


def choose_steps(
    chain,
    start,
    reference: Tensor,
    *,
    max_steps: int,
    chains: int,
    seed: int,
    batchnorm: str = "batch",
    chunk_size: int | None = None,
    precision: str = "fp32",
) -> AutoSteps:
    """Run ``chains`` pilot chains from ``start`` for ``max_steps`` steps and pick the step.

    The pilot chains are seeded from ``seed`` like any run; the caller passes a seed different
    from the run it chooses for, so the choice is not fitted to the very chains it is used on.
    """
    latents: dict[int, list[Tensor]] = {}

    def keep(step) -> None:
        latents.setdefault(step.step, []).append(step.z.float())  # to the host at the end

    chain.run(
        n=chains,
        start=start,
        steps=max_steps,
        record=[0],
        chunk_size=chunk_size,
        batchnorm=batchnorm,
        seed=seed,
        out_device="cpu",
        callback=keep,
        precision=precision,
    )
    curve = mmd_curve({t: torch.cat(v).cpu() for t, v in latents.items()}, reference)
    return AutoSteps(first_minimum(curve), max_steps, chains, curve)
