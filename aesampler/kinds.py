"""The component kinds: one table holds everything the host knows about each kind.

A *kind* is a family of interchangeable components that plugins register by name (models,
datasets, corruptions, ...). For each kind, :data:`KINDS` says

* ``name``: the kind's name, as in ``Registry.get(kind, name)`` and ``aesampler plugins``;
* ``hook``: the hook through which plugins register components of this kind (its specification,
  with the contract, is the function of that name in :mod:`aesampler.hookspecs`);
* ``base``: the dotted path of the interface every component of the kind is an instance of
  (imported only when :meth:`Kind.base_class` is called, so that reading this table imports
  nothing heavy);
* ``sections``: the recipe locations holding one section of this kind (``("sampling",
  "transition")`` is ``sampling: {transition: {name: ..., ...}}``);
* ``lists``: the recipe locations holding a list of sections of this kind (``("evaluate",
  "metrics")``), each item a section or a bare name;
* ``provided``: the factory parameters the host passes itself (a model's ``image_size``), which a
  recipe must not set;
* ``reserved``: keys of this kind's sections that belong to the recipe rather than to the
  component (``model.checkpoint``);
* ``built_once``: whether ``aesampler validate`` builds the component once, so that its own value
  checks run before any work starts. (Models are built once on the meta device and transitions
  with the model's networks, by code of their own; datasets read files and are not built.)

The hook map (:data:`aesampler.hookspecs.KIND_HOOKS`), the registry's kinds, the recipe loader's
component sections, reserved keys and build-once set, and the listing of ``aesampler plugins``
are all derived from this table. Adding a kind means: an entry here, its hookspec, its interface,
its built-ins (a module under ``aesampler/builtin`` and its entry point) and a schema field at
each recipe location.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

#: A key path in a recipe: ``("sampling", "start")``.
KeyPath = tuple[str, ...]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Kind:
    """One component kind (see the module's docstring for each field)."""

    name: str
    hook: str
    base: str
    sections: tuple[KeyPath, ...] = ()
    lists: tuple[KeyPath, ...] = ()
    provided: tuple[str, ...] = ()
    reserved: tuple[str, ...] = ()
    built_once: bool = False

    @property
    def locations(self) -> tuple[KeyPath, ...]:
        """Every recipe location of this kind: single sections, then lists."""
        return self.sections + self.lists

    def base_class(self) -> type:
        """The interface, imported now (``aesampler.samplers.Sampler`` -> the class)."""
        module, _, attribute = self.base.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


KINDS: tuple[Kind, ...] = (
    Kind(
        "model",
        "register_models",
        "aesampler.models.GenerativeAutoencoder",
        sections=(("model",),),
        provided=("image_size", "channels"),
        reserved=("checkpoint",),
    ),
    Kind(
        "dataset",
        "register_datasets",
        "aesampler.data.ImageDataset",
        sections=(("data",),),
        provided=("split",),
    ),
    Kind(
        "corruption",
        "register_corruptions",
        "aesampler.Corruption",
        sections=(("corruption",), ("sampling", "corruption")),
        built_once=True,
    ),
    Kind(
        "transition",
        "register_transitions",
        "aesampler.Transition",
        sections=(("sampling", "transition"),),
        provided=("encoder", "decoder", "corruption"),
    ),
    Kind(
        "sampler",
        "register_samplers",
        "aesampler.samplers.Sampler",
        sections=(("sampling", "start"),),
        lists=(("samplers", "compare"), ("tune", "samplers")),
        reserved=("batchnorm", "corruption"),
        built_once=True,
    ),
    Kind(
        "metric",
        "register_metrics",
        "aesampler.evaluation.Metric",
        lists=(("evaluate", "metrics"),),
        built_once=True,
    ),
    Kind(
        "feature_extractor",
        "register_feature_extractors",
        "aesampler.evaluation.FeatureExtractor",
        sections=(("evaluate", "feature_extractor"),),
        built_once=True,
    ),
    # Not named in recipes: aesampler asks each format whether it recognises the folder given
    # as a checkpoint (aesampler.checkpoint.locate_checkpoint).
    Kind(
        "checkpoint_format",
        "register_checkpoint_formats",
        "aesampler.formats.CheckpointFormat",
    ),
)

#: The kinds by name, in table order.
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}


def get_kind(name: str) -> Kind:
    """The table entry of kind ``name``; KeyError naming the kinds when there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no component kind {name!r}; kinds: {', '.join(BY_NAME)}") from None


def names() -> list[str]:
    """The kinds' names, in table order (the order ``aesampler plugins`` lists them in)."""
    return list(BY_NAME)


def sections() -> Iterator[tuple[KeyPath, Kind]]:
    """``(location, kind)`` for every single-section location, in table order."""
    for kind in KINDS:
        for path in kind.sections:
            yield path, kind


def lists() -> Iterator[tuple[KeyPath, Kind]]:
    """``(location, kind)`` for every list location, in table order."""
    for kind in KINDS:
        for path in kind.lists:
            yield path, kind


def _check_table() -> None:
    """The table is consistent: valid unique names and hooks, each location used once."""
    seen_hooks: set[str] = set()
    seen_paths: set[KeyPath] = set()
    if len(BY_NAME) != len(KINDS):
        raise RuntimeError("aesampler.kinds: two kinds share a name")
    for kind in KINDS:
        if not _NAME.match(kind.name) or not kind.hook.startswith("register_"):
            raise RuntimeError(f"aesampler.kinds: bad name or hook in {kind}")
        if kind.hook in seen_hooks:
            raise RuntimeError(f"aesampler.kinds: hook {kind.hook!r} serves two kinds")
        seen_hooks.add(kind.hook)
        for path in kind.locations:
            if not path or path in seen_paths:
                raise RuntimeError(f"aesampler.kinds: location {path!r} is empty or taken twice")
            seen_paths.add(path)
        if kind.base.count(".") < 1:
            raise RuntimeError(f"aesampler.kinds: base of {kind.name!r} is not a dotted path")


_check_table()
