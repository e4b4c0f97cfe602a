"""From a recipe to pictures: ``aesampler run`` and every command that works with a model.

:func:`run` is the sequence of stages (:mod:`aesampler.stages`) the command and the recipe
enable: train (unless a checkpoint is given) or load the model, then tune, sample, interpolate,
inpaint, evaluate, compare samplers and write the report, each stage writing its own outputs
into the run directory (:mod:`aesampler.rundir` says where). What the stages share, the trained
model and its chain, comes from :func:`aesampler.components.build_components`::

    recipe = aesampler.recipe.load_recipe("recipes/quickstart.yaml", ["output.dir=runs/q"])
    parts = aesampler.workflow.build_components(recipe)
    result = parts.chain.run(n=16, steps=10, seed=0)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import distributed
from .components import (  # noqa: F401 (the names aesampler.workflow has always offered)
    STATE_CHECKSUM,
    Components,
    WorkflowError,
    build_components,
    check_sizes,
    checkpoint_for,
    fit_sampler,
    sample_bytes,
    state_digest,
)
from .plugins import get_registry
from .recipe import Recipe
from .registry import Registry
from .rundir import REPORT, RunDir, save_tensors, with_recipe, write_recipe  # noqa: F401
from .stages import TRAIN, Stage, StageContext, stages_for
from .stages.interpolate import interpolate  # noqa: F401
from .stages.sample import SampleResult, chain_steps, sample  # noqa: F401


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report: Path
    trained_steps: int | None
    seconds: float
    metrics: dict | None = None
    inpainting: dict[int, float] | None = None
    comparison: dict | None = None
    tuning: dict | None = None


def run(
    recipe: Recipe,
    *,
    command: str = "run",
    resume: bool = False,
    overwrite: bool = False,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    checkpoint: str | Path | None = None,
) -> RunResult:
    """Run the stages of ``aesampler COMMAND`` (:func:`aesampler.stages.stages_for`): ``run``
    trains (unless given a checkpoint) and runs the stages the recipe enables; another command
    its own stage; each rewrites the report.

    With a checkpoint (``checkpoint`` or ``model.checkpoint``) nothing is trained, and only the
    outputs of the stages that run are written (``overwrite`` replaces those, and only those);
    a run that trains (or resumes) remakes its pictures and metrics. Under torchrun every rank
    trains, samples and runs evaluation chains, each its share; rank 0 alone does the rest.
    Everything that can be checked (the recipe, the checkpoint and its fit, the data's geometry,
    the feature extractor, the sizes, the outputs' places) is checked before anything is written.
    """
    started = time.perf_counter()
    progress, log = distributed.voice(progress, log)
    stages = stages_for(command, recipe)
    ctx = StageContext(
        recipe,
        registry or get_registry(),
        RunDir(recipe.output.dir),
        command,
        overwrite,
        resume,
        progress,
        log,
    )
    if ctx.main:  # fail before training, not after it (a check two stages share runs once)
        for check in dict.fromkeys(stage.check for stage in stages if stage.check):
            check(recipe, ctx.registry)
    trained = _model(ctx, stages, checkpoint)
    _prepare(ctx, stages)
    for stage in stages:
        if ctx.main or stage.every_rank:
            ctx.results[stage.name] = stage.run(ctx)
    done, report = ctx.results, ctx.run_dir / REPORT
    seconds = time.perf_counter() - started
    found = [done.get(name) for name in ("evaluate", "inpaint", "compare-samplers", "tune")]
    return RunResult(ctx.path, done.get("report", report), trained, seconds, *found)


def _model(ctx: StageContext, stages: list[Stage], checkpoint: str | Path | None) -> int | None:
    """Train (the train stage) and load what it saved, or load ``checkpoint``; set
    ``ctx.parts`` and ``ctx.remake``. Gives the steps trained (None when nothing was)."""
    recipe = ctx.recipe
    if checkpoint is None and recipe.model.checkpoint is None:
        trained = TRAIN.run(ctx).steps
        ctx.remake = True  # a new run, or one the user asked to continue: its pictures are remade
        ctx.parts = build_components(recipe, registry=ctx.registry)
        return trained
    if ctx.resume:
        raise WorkflowError(
            "--resume continues a training run; with a checkpoint to load "
            "(--checkpoint or model.checkpoint) nothing is trained"
        )
    ctx.parts = build_components(recipe, checkpoint=checkpoint, registry=ctx.registry)
    ctx.remake = ctx.overwrite
    outputs = [entry for stage in stages for entry in stage.writes]
    distributed.main_first(ctx.run_dir.check_replaceable, "run", outputs, ctx.overwrite)
    return None


def _prepare(ctx: StageContext, stages: list[Stage]) -> None:
    """Before any chain runs: the test data fits the model, and every stage's sizes fit."""
    if any(stage.test_data for stage in stages):
        ctx.parts.dataset("test")
    for stage in stages:
        if stage.prepare is not None:
            stage.prepare(ctx.parts)
