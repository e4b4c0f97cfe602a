"""Recipe sections -> components, through the registry.

Every component is built by :func:`build_component`, which checks what the factory returned
against its kind's interface (``base`` in :data:`aesampler.kinds.KINDS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from .. import kinds
from ..data import ImageDataset
from ..errors import AesamplerError, ComponentError
from ..formats import loaded_by
from ..interfaces import Corruption
from ..models import GenerativeAutoencoder
from ..plugins import get_registry
from ..registry import Component, Registry
from ..resources import format_bytes, model_memory_limit
from .schema import Recipe

if TYPE_CHECKING:
    from ..samplers import Sampler

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
    if loaded_by(registry, name) is not None:
        return None  # loaded from another library's folder, never built from a recipe
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


def wrong_type(kind: str, component: Component | str, built: Any) -> str | None:
    """What is wrong when ``built`` is not an instance of its kind's interface, else None."""
    entry = kinds.get_kind(kind)
    if isinstance(built, entry.base_class()):
        return None
    if isinstance(component, Component):
        where = f"{kind} {component.name!r} ({component.distribution})"
    else:
        where = f"{kind} {component!r}"
    return f"{where} returned {type(built).__name__}, not an {entry.base}"


def build_component(
    kind: str,
    name: str,
    params: Mapping[str, Any],
    registry: Registry | None = None,
    **provided: Any,
) -> Any:
    """Build component ``name`` of ``kind`` from a recipe section's parameters.

    ``provided`` are the parameters the host passes itself (``provided`` in the kind's table
    entry, such as a dataset's ``split``). Raises ComponentError when the parameters do not fit
    the factory, when it rejects them, and when it returns something that is not its kind's
    interface.
    """
    registry = registry or get_registry()
    built = registry.create(kind, name, **provided, **params)
    problem = wrong_type(kind, registry.get(kind, name), built)
    if problem:
        raise ComponentError(problem)
    return built


def build_dataset(recipe: Recipe, split: str, registry: Registry | None = None) -> ImageDataset:
    return build_component("dataset", recipe.data.name, recipe.data.params, registry, split=split)


def build_model(
    recipe: Recipe, dataset: ImageDataset, registry: Registry | None = None
) -> GenerativeAutoencoder:
    registry = registry or get_registry()
    name, params = recipe.model.name, recipe.model.params
    owner = loaded_by(registry, name)
    if owner is not None:
        model = registry.get("model", name)
        raise AesamplerError(
            f"model: {name!r} ({model.distribution}) is not trained by aesampler: its models are "
            f"loaded from folders in the checkpoint format {owner[0].name!r}, which another "
            "library writes. Train it there, then sample it: aesampler sample RECIPE "
            "--checkpoint FOLDER (or set model.checkpoint)"
        )
    provided = dict(image_size=dataset.image_size, channels=dataset.channels)
    try:
        check_model_size(name, {**provided, **params}, registry)  # before allocating anything
        return build_component("model", name, params, registry, **provided)
    except ComponentError as error:
        raise AesamplerError(f"model: {error}") from error


def build_corruption(recipe: Recipe, registry: Registry | None = None) -> Corruption | None:
    """The training corruption (``corruption``), or None when the recipe has none."""
    if recipe.corruption is None:
        return None
    return build_component("corruption", recipe.corruption.name, recipe.corruption.params, registry)


def build_sampler(recipe: Recipe, registry: Registry | None = None) -> Sampler:
    """The start sampler of ``sampling.start``, built but not fitted."""
    spec = recipe.sampling.start
    return build_component("sampler", spec.name, spec.params, registry)
