"""YAML recipes: configuration (never code) that wires registered components together.

``load_recipe(path, overrides)`` reads a YAML file, applies ``key.path=value`` overrides,
validates everything (reporting every problem at once, each with its key path and file line)
and returns a :class:`Recipe`. ``build_*`` functions turn its sections into components.
"""

from .build import (
    build_component,
    build_corruption,
    build_dataset,
    build_model,
    build_sampler,
    check_model_size,
)
from .loader import RecipeError, RecipeIssue, apply_overrides, load_recipe, parse_override
from .schema import ComponentSpec, OutputSection, Recipe, TrainSection

__all__ = [
    "ComponentSpec",
    "OutputSection",
    "Recipe",
    "RecipeError",
    "RecipeIssue",
    "TrainSection",
    "apply_overrides",
    "build_component",
    "build_corruption",
    "build_dataset",
    "build_model",
    "build_sampler",
    "check_model_size",
    "load_recipe",
    "parse_override",
]
