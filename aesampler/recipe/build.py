"""Recipe sections -> components, through the registry."""

from __future__ import annotations

from ..data import ImageDataset
from ..errors import AesamplerError, ComponentError
from ..interfaces import Corruption
from ..models import GenerativeAutoencoder
from ..plugins import get_registry
from ..registry import Registry
from .schema import Recipe


def build_dataset(recipe: Recipe, split: str, registry: Registry | None = None) -> ImageDataset:
    registry = registry or get_registry()
    dataset = registry.create("dataset", recipe.data.name, split=split, **recipe.data.params)
    if not isinstance(dataset, ImageDataset):
        raise ComponentError(
            f"dataset {recipe.data.name!r} returned {type(dataset).__name__}, "
            "not an aesampler.data.ImageDataset"
        )
    return dataset


def build_model(
    recipe: Recipe, dataset: ImageDataset, registry: Registry | None = None
) -> GenerativeAutoencoder:
    registry = registry or get_registry()
    try:
        model = registry.create(
            "model",
            recipe.model.name,
            image_size=dataset.image_size,
            channels=dataset.channels,
            **recipe.model.params,
        )
    except ComponentError as error:
        raise AesamplerError(f"model: {error}") from error
    if not isinstance(model, GenerativeAutoencoder):
        raise ComponentError(
            f"model {recipe.model.name!r} returned {type(model).__name__}, "
            "not an aesampler.models.GenerativeAutoencoder"
        )
    return model


def build_corruption(recipe: Recipe, registry: Registry | None = None) -> Corruption | None:
    if recipe.corruption is None:
        return None
    registry = registry or get_registry()
    return registry.create("corruption", recipe.corruption.name, **recipe.corruption.params)
