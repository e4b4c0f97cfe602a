"""The stages: one per command, each in its own module, all with one shape (:class:`Stage`).

:func:`aesampler.workflow.run` is the sequence of the stages a command enables
(:func:`stages_for`), in the order of :data:`STAGES`. A new command is a new stage module,
listed here, and one entry in :mod:`aesampler.cli` (see ``docs/architecture.md``).
"""

from __future__ import annotations

from ..recipe import Recipe
from . import compare, evaluate, inpaint, interpolate, report, sample, train, tune
from .base import Stage, StageContext

#: The model's stage: ``aesampler run`` trains unless it is given a checkpoint.
TRAIN = train.STAGE

#: Every stage that works with a trained model, in the order they run: the tuned start before
#: the chains that sample from it, the samples first, the report last.
STAGES: tuple[Stage, ...] = (
    tune.STAGE,
    sample.STAGE,
    interpolate.STAGE,
    inpaint.STAGE,
    evaluate.STAGE,
    compare.STAGE,
    report.STAGE,
)

BY_NAME = {stage.name: stage for stage in STAGES}


def stages_for(command: str, recipe: Recipe) -> list[Stage]:
    """The stages ``aesampler COMMAND`` runs with ``recipe``, in order.

    ``run``: those the recipe enables. Another command: its own stage (when the recipe enables
    it, or whatever the recipe says when it is ``forced``). Either way the tune stage when a
    chosen stage samples from ``sampling.start: auto``, and the report last.
    """
    if command != "run" and command not in BY_NAME:
        raise ValueError(f"no stage for the command {command!r}; stages: {', '.join(BY_NAME)}")

    def wanted(stage: Stage) -> bool:
        if command == "run":
            return stage.enabled(recipe)
        return stage.name == command and (stage.forced or stage.enabled(recipe))

    names = {stage.name for stage in STAGES if wanted(stage)}
    if recipe.sampling.tuned and any(BY_NAME[name].tuned_start for name in names):
        names.add(tune.STAGE.name)
    names.add(report.STAGE.name)
    return [stage for stage in STAGES if stage.name in names]


__all__ = ["BY_NAME", "STAGES", "TRAIN", "Stage", "StageContext", "stages_for"]
