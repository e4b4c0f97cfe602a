"""Recipe sections -> components, through the registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from ..data import ImageDataset
from ..errors import AesamplerError, ComponentError
from ..interfaces import Corruption
from ..models import GenerativeAutoencoder
from ..plugins import get_registry
from ..registry import Registry
from ..resources import format_bytes, model_memory_limit
from .schema import Recipe

# A model holding more tensors than this is not one a recipe means (the paper's AAE holds 58);
# building a far larger one, even on the meta device, can take minutes.
MAX_TENSORS = 5_000


class _TooLarge(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Budget:
    """Counts the bytes and tensors a model registers while it is built, and stops the build
    as soon as either exceeds its limit (a parameter registration hook)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.tensors: dict[int, torch.Tensor] = {}
        self.bytes = 0

    def __call__(self, module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or not tensor.is_meta or id(tensor) in self.tensors:
            return
        self.tensors[id(tensor)] = tensor
        self.bytes += tensor.numel() * tensor.element_size()
        if self.bytes > self.limit:
            raise _TooLarge(
                f"at least {format_bytes(self.bytes)} of parameters and buffers, more than the "
                f"{format_bytes(self.limit)} allowed (half of this machine's memory)"
            )
        if len(self.tensors) > MAX_TENSORS:
            raise _TooLarge(
                f"more than {MAX_TENSORS:,} parameter and buffer tensors; a model built from a "
                "recipe holds far fewer"
            )


def _describe(name: str, params: Mapping[str, Any]) -> str:
    keys = ", ".join(
        f"model.{k}={v!r}" for k, v in params.items() if k not in ("image_size", "channels")
    )
    size, channels = params.get("image_size"), params.get("channels")
    image = f"{size!r} x {size!r} images with {channels!r} channels"
    return f"model {name!r} ({keys + '; ' if keys else ''}{image})"


def meta_model(
    name: str,
    params: Mapping[str, Any],
    registry: Registry | None = None,
    *,
    limit: int | None = None,
) -> Any:
    """Build model ``name`` with ``params`` on the meta device, where nothing is allocated.

    Returns the meta model, or None when the factory cannot be built on the meta device (its
    size is then unknown). Raises ComponentError when the factory rejects ``params`` and when
    the model would hold more than ``limit`` bytes of parameters and buffers (default:
    :func:`aesampler.resources.model_memory_limit`), or more than ``MAX_TENSORS`` tensors.
    """
    registry = registry or get_registry()
    limit = model_memory_limit() if limit is None else limit
    budget = _Budget(limit)
    hooks = [
        register_module_parameter_registration_hook(budget),
        register_module_buffer_registration_hook(budget),
    ]
    too_large = f"{_describe(name, params)} is too large: it would hold "
    try:
        with torch.device("meta"):
            model = registry.create("model", name, **params)
    except _TooLarge as error:
        raise ComponentError(f"{too_large}{error.what}; lower the sizes") from None
    except ComponentError as error:
        if "overflow" in str(error.__cause__).lower():  # torch cannot even count its size
            raise ComponentError(f"{too_large}tensors whose sizes overflow") from error
        raise
    except AesamplerError:
        raise
    except Exception as error:
        if "overflow" in str(error).lower():
            raise ComponentError(f"{too_large}tensors whose sizes overflow") from error
        return None  # cannot be built on the meta device: the real build will tell
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(model, nn.Module):
        return None
    total = _tensor_bytes(model)
    if total > limit:
        raise ComponentError(
            f"{too_large}{format_bytes(total)} of parameters and buffers, more than the "
            f"{format_bytes(limit)} allowed (half of this machine's memory); lower the sizes"
        )
    return model


def _tensor_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_model_size(
    name: str,
    params: Mapping[str, Any],
    registry: Registry | None = None,
    *,
    limit: int | None = None,
) -> int | None:
    """Refuse a model too large for this machine before anything is allocated.

    ``params`` are every argument of the model factory (``image_size`` and ``channels``
    included), as a recipe or a checkpoint's ``model.json`` gives them. Returns the bytes of
    its parameters and buffers, or None when it cannot be built on the meta device. Raises
    ComponentError naming the ``model.*`` keys and the byte count when it would hold more than
    ``limit`` bytes (default: half of the physical memory), and when the factory rejects
    ``params``.
    """
    model = meta_model(name, params, registry, limit=limit)
    return None if model is None else _tensor_bytes(model)


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
    params = dict(image_size=dataset.image_size, channels=dataset.channels, **recipe.model.params)
    try:
        check_model_size(recipe.model.name, params, registry)  # before allocating anything
        model = registry.create("model", recipe.model.name, **params)
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
