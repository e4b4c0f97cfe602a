"""The tune stage: the search behind ``sampling.start: auto`` (:mod:`aesampler.tuning`).

``aesampler tune`` searches again; any other command that samples with ``start: auto`` uses the
choice ``tuning/`` holds for this model and these settings, and searches only when it holds none.
"""

from __future__ import annotations

from ..rundir import TUNING, TUNING_FILE, read_json
from ..tuning import resolve_start, tune
from .base import Stage, StageContext


def _run(ctx: StageContext) -> dict | None:
    """What ``tuning/tuning.json`` holds (on rank 0; None elsewhere)."""
    searched = None
    if ctx.command == "tune":  # the tune command: search again
        searched = tune(
            ctx.parts, ctx.path, overwrite=ctx.overwrite, progress=ctx.progress, log=ctx.log
        )
    else:
        resolve_start(ctx.parts, overwrite=ctx.remake, progress=ctx.progress, log=ctx.log)
    if ctx.main and searched is None and (ctx.run_dir / TUNING / TUNING_FILE).is_file():
        searched = read_json(ctx.run_dir / TUNING / TUNING_FILE, "the search's record")
    return searched


def _never_alone(recipe) -> bool:
    """``run`` tunes only for a stage that samples from ``sampling.start: auto``
    (:func:`aesampler.stages.stages_for`): the search is not an output of its own there."""
    return False


STAGE = Stage("tune", _run, entry="tune", enabled=_never_alone, every_rank=True)
