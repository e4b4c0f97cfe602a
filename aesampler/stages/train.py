"""The train stage: the recipe's model, trained (or resumed) into the run directory
(:func:`aesampler.training.train`). ``aesampler run`` trains unless it is given a checkpoint;
the other stages then load what it saved."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..training import train
from .base import Stage, StageContext

if TYPE_CHECKING:
    from ..training import TrainResult


def _run(ctx: StageContext) -> TrainResult:
    return train(
        ctx.recipe,
        resume=ctx.resume,
        overwrite=ctx.overwrite,
        registry=ctx.registry,
        progress=ctx.progress,
        log=ctx.log,
    )


STAGE = Stage("train", _run, entry="train", every_rank=True)
