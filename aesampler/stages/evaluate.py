"""The evaluate stage: sample quality at every evaluated chain step, written to ``metrics.json``
(:func:`aesampler.evaluation.evaluate.evaluate` measures; this stage writes, like every stage)."""

from __future__ import annotations

from ..components import Components, check_sizes
from ..documents import Metrics
from ..evaluation.evaluate import evaluate, uses_features
from ..recipe import Recipe, build_dataset
from ..registry import Registry
from ..rundir import METRICS, with_recipe, write_json, write_recipe
from ..tuning import resolve_start
from .base import Stage, StageContext


def check_features(recipe: Recipe, registry: Registry) -> None:
    """The feature extractor works on the recipe's data, checked before any training (once,
    for the evaluate and compare-samplers stages alike)."""
    wanted = [
        (m.name, registry.create("metric", m.name, **m.params)) for m in recipe.evaluate.metrics
    ]
    if uses_features(wanted):  # latent-space metrics alone never run the extractor
        spec = recipe.evaluate.feature_extractor
        registry.create("feature_extractor", spec.name, **spec.params).check(
            build_dataset(recipe, "train", registry)
        )


def _run(ctx: StageContext) -> dict | None:
    """``metrics.json`` in one transaction (rank 0); the other ranks run their chains only."""
    parts, registry = ctx.parts, ctx.registry
    if parts.recipe.sampling.tuned:  # the configuration that sampling.start: auto chose
        resolve_start(parts, progress=ctx.progress, log=ctx.log)
    if not ctx.main:  # the other ranks' share of the evaluation chains
        evaluate(parts, ctx.path, registry=registry, progress=ctx.progress, log=ctx.log)
        return None
    run_dir = ctx.run_dir
    run_dir.check_replaceable("evaluate", [METRICS], ctx.remake)
    used = [("metric", spec.name) for spec in parts.recipe.evaluate.metrics]
    used.append(("feature_extractor", parts.recipe.evaluate.feature_extractor.name))
    with run_dir.transaction("evaluate", with_recipe(run_dir, METRICS)) as txn:
        metrics = evaluate(parts, ctx.path, registry=registry, progress=ctx.progress, log=ctx.log)
        metrics["components"] = registry.provenance(used)
        write_json(txn.path(METRICS), Metrics.build(metrics))
        write_recipe(parts.recipe, txn)
    run_dir.record_components(metrics["components"])
    return metrics


def _prepare(parts: Components) -> None:
    check_sizes(parts, sample=False, evaluate=True)


STAGE = Stage(
    "evaluate",
    _run,
    entry="evaluate",
    enabled=lambda recipe: recipe.evaluate.enabled,
    forced=False,
    tuned_start=True,
    every_rank=True,
    test_data=True,
    check=check_features,
    prepare=_prepare,
)
