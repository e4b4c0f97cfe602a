"""Loading plugins from the ``aesampler`` entry-point group into a :class:`Registry`.

Built-in components are declared under the same group in aesampler's own ``pyproject.toml``, so
they load by the same path as third-party ones. A plugin whose import fails, whose hooks do not
match the specifications (a misspelled hook name, wrong arguments), or whose registration raises
is recorded as a :class:`~aesampler.registry.PluginFailure` naming its distribution, announced
with a :class:`~aesampler.errors.PluginLoadWarning`, and unregistered; the others still load.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import warnings
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import ComponentError, PluginLoadWarning
from .registry import PluginFailure, Registry

ENTRY_POINT_GROUP = "aesampler"
OWN_DISTRIBUTION = "aesampler"


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.metadata["Name"] if dist is not None and dist.metadata["Name"] else "unknown"


def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points, deduplicated, aesampler's own first so built-ins win clashes."""
    unique: dict[tuple[str, str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        unique.setdefault((_distribution_name(ep), ep.name, ep.value), ep)
    return sorted(
        unique.values(),
        key=lambda ep: (
            _distribution_name(ep) != OWN_DISTRIBUTION,
            _distribution_name(ep),
            ep.name,
        ),
    )


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, Any]] = (),
) -> Registry:
    """Load every plugin and return a registry of their components.

    Args:
        entry_points: the entry points to load; default: the ``aesampler`` group of every
            installed distribution.
        extra_plugins: ``(name, plugin)`` pairs registered directly, for plugins defined in a
            script or a test rather than in an installed distribution.
    """
    pm = make_plugin_manager()
    registry = Registry(hookspecs.KIND_HOOKS)
    distributions: dict[str, str] = {}

    def fail(name: str, distribution: str, message: str) -> None:
        failure = PluginFailure(plugin=name, distribution=distribution, message=message)
        registry.failures.append(failure)
        warnings.warn(f"aesampler: {failure}", PluginLoadWarning, stacklevel=3)
        if pm.has_plugin(name):
            pm.unregister(name=name)

    candidates: list[tuple[str, str, Any]] = []
    for ep in _entry_points() if entry_points is None else entry_points:
        distribution = _distribution_name(ep)
        try:
            plugin = ep.load()
        except Exception as error:  # a broken plugin must not take the others down
            fail(
                ep.name,
                distribution,
                f"import of {ep.value!r} failed: {type(error).__name__}: {error}",
            )
            continue
        candidates.append((ep.name, distribution, plugin))
    candidates += [(name, "<direct>", plugin) for name, plugin in extra_plugins]

    for name, distribution, plugin in candidates:
        if pm.has_plugin(name):
            fail(name, distribution, f"another plugin is already registered as {name!r}")
            continue
        try:
            pm.register(plugin, name=name)
        except Exception as error:  # pluggy validates hook signatures here
            fail(name, distribution, f"{type(error).__name__}: {error}")
            continue
        distributions[name] = distribution

    # Hooks no specification knows (a misspelled hook name) are errors, reported per plugin.
    for hook_name, caller in vars(pm.hook).items():
        if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
            for impl in caller.get_hookimpls():
                fail(
                    impl.plugin_name,
                    distributions.pop(impl.plugin_name, "unknown"),
                    f"implements unknown hook {hook_name!r}; "
                    f"hooks: {', '.join(hookspecs.KIND_HOOKS.values())}",
                )
    pm.check_pending()

    for kind, hook_name in hookspecs.KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            if plugin_name not in distributions:
                continue  # unregistered after an earlier failure
            register = functools.partial(
                _register,
                registry,
                kind,
                distribution=distributions[plugin_name],
                plugin=plugin_name,
            )
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except ComponentError as error:
                fail(plugin_name, distributions[plugin_name], str(error))
            except Exception as error:
                fail(
                    plugin_name,
                    distributions[plugin_name],
                    f"{hook_name} raised {type(error).__name__}: {error}",
                )
    return registry


def _register(
    registry: Registry,
    kind: str,
    name: str,
    factory: Any,
    description: str | None = None,
    *,
    distribution: str,
    plugin: str,
) -> None:
    registry.add(
        kind, name, factory, distribution=distribution, plugin=plugin, description=description
    )


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of every installed plugin, loaded once per process."""
    return load_registry()


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin in a running process)."""
    get_registry.cache_clear()
