"""The compare-samplers stage: every sampler of ``samplers.compare``, fitted, run and measured
(:func:`aesampler.comparison.compare_samplers` writes ``samplers/``)."""

from __future__ import annotations

from ..comparison import check_size, compare_samplers
from .base import Stage, StageContext
from .evaluate import check_features


def _run(ctx: StageContext) -> dict:
    """What ``samplers/comparison.json`` holds."""
    return compare_samplers(
        ctx.parts, ctx.path, overwrite=ctx.remake, progress=ctx.progress, log=ctx.log
    )


STAGE = Stage(
    "compare-samplers",
    _run,
    entry="samplers",
    enabled=lambda recipe: recipe.samplers.enabled,
    test_data=True,
    check=check_features,
    prepare=check_size,
)
