"""The inpaint stage: held-out images with a hidden part filled in by a conditional chain
(:func:`aesampler.inpaint.inpaint_test_images` writes ``inpainting/``)."""

from __future__ import annotations

from ..inpaint import inpaint_test_images, recipe_mask
from ..recipe import Recipe, build_dataset
from ..registry import Registry
from .base import Stage, StageContext


def _check(recipe: Recipe, registry: Registry) -> None:
    """A mask that hides nothing (or everything) fails before any training."""
    size = build_dataset(recipe, "test", registry).image_size
    recipe_mask(recipe, 1, (size, size))


def _run(ctx: StageContext) -> dict[int, float]:
    """The mean squared error of the missing pixels by step."""
    done = inpaint_test_images(
        ctx.parts, ctx.path, overwrite=ctx.remake, progress=ctx.progress, log=ctx.log
    )
    return done.mean_error


STAGE = Stage(
    "inpaint",
    _run,
    entry="inpaint",
    enabled=lambda recipe: recipe.inpaint.enabled,
    test_data=True,
    check=_check,
)
