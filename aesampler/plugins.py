"""Loading plugins from the ``aesampler`` entry-point group into a :class:`Registry`.

Built-in components are declared under the same group in aesampler's own ``pyproject.toml``, so
they load by the same path as third-party ones.

A plugin that fails (its import raises, even ``SystemExit``; its hooks do not match the
specifications, such as a misspelled hook name or wrong arguments; or one of its hooks raises or
registers something invalid) is recorded as a :class:`~aesampler.registry.PluginFailure` naming
its distribution, announced with a :class:`~aesampler.errors.PluginLoadWarning`, and unregistered
together with every component it had registered: a plugin registers all of its components or
none. The other plugins still load. Only ``KeyboardInterrupt`` goes through.

Plugins can be switched off before they are imported: by entry-point or distribution name in the
``AESAMPLER_DISABLE_PLUGINS`` environment variable, or all third-party ones at once with
``builtins_only`` (``aesampler --no-plugins``).
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import os
import warnings
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import ComponentError, PluginLoadWarning, PluginSettingWarning
from .registry import DIRECT, DisabledPlugin, PluginFailure, Registry, normalize_distribution

ENTRY_POINT_GROUP = "aesampler"
OWN_DISTRIBUTION = "aesampler"
#: Comma-separated entry-point names and/or distribution names of plugins not to load.
DISABLE_ENV = "AESAMPLER_DISABLE_PLUGINS"

DISABLED_THIRD_PARTY = "third-party plugins switched off (aesampler --no-plugins, builtins_only)"


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.metadata["Name"] if dist is not None and dist.metadata["Name"] else "unknown"


def _distribution_version(entry_point: metadata.EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return dist.version if dist is not None else None


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


def disabled_from_environment() -> list[str]:
    """The names in ``AESAMPLER_DISABLE_PLUGINS``: comma-separated, blanks ignored."""
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if not isinstance(error, Exception):  # SystemExit and other BaseExceptions
        text += " (a plugin must not stop the process)"
    return text


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, Any]] = (),
    *,
    disable: Iterable[str] | None = None,
    builtins_only: bool = False,
) -> Registry:
    """Load every plugin and return a registry of their components.

    Args:
        entry_points: the entry points to load; default: the ``aesampler`` group of every
            installed distribution.
        extra_plugins: ``(name, plugin)`` pairs registered directly, for plugins defined in a
            script or a test rather than in an installed distribution. They are always loaded.
        disable: entry-point names and/or distribution names of plugins to skip without
            importing them; default: those in the ``AESAMPLER_DISABLE_PLUGINS`` environment
            variable. A name that matches nothing is reported with a
            :class:`PluginSettingWarning`.
        builtins_only: skip the entry points of every distribution but aesampler itself.
    """
    return _Loader(disable, builtins_only).load(entry_points, extra_plugins)


class _Loader:
    """One run of :func:`load_registry`."""

    def __init__(self, disable: Iterable[str] | None, builtins_only: bool):
        self.disable = list(disabled_from_environment() if disable is None else disable)
        self.disabled_by = DISABLE_ENV if disable is None else "load_registry(disable=...)"
        self.builtins_only = builtins_only
        self.pm = make_plugin_manager()
        self.registry = Registry()  # every kind of aesampler.kinds.KINDS
        # plugin name -> (distribution, version) of every plugin registered with pluggy
        self.origin: dict[str, tuple[str, str | None]] = {}

    def fail(self, name: str, distribution: str, message: str, *, registered: bool = True) -> None:
        """Report a failed plugin and unregister it (``registered``: pluggy holds it by name)."""
        failure = PluginFailure(plugin=name, distribution=distribution, message=message)
        self.registry.failures.append(failure)
        # stacklevel 5: fail <- a loading step <- load <- load_registry <- its caller
        warnings.warn(f"aesampler: {failure}", PluginLoadWarning, stacklevel=5)
        if registered:
            self.origin.pop(name, None)
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)

    def load(
        self,
        entry_points: Iterable[metadata.EntryPoint] | None,
        extra_plugins: Iterable[tuple[str, Any]],
    ) -> Registry:
        candidates = self._import(_entry_points() if entry_points is None else entry_points)
        candidates += [(name, DIRECT, None, plugin) for name, plugin in extra_plugins]
        for name, distribution, version, plugin in candidates:
            self._register_with_pluggy(name, distribution, version, plugin)
        self._reject_unknown_hooks()
        for name in list(self.origin):  # load order: aesampler's own plugins first
            self._register_components(name)
        return self.registry

    def _import(
        self, entry_points: Iterable[metadata.EntryPoint]
    ) -> list[tuple[str, str, str | None, Any]]:
        """Import every entry point that is not switched off; switched-off ones never are."""
        entry_points = list(entry_points)
        wanted = set(self.disable)
        known = {ep.name for ep in entry_points}
        known |= {normalize_distribution(_distribution_name(ep)) for ep in entry_points}
        unknown = [
            n for n in self.disable if n not in known and normalize_distribution(n) not in known
        ]
        if unknown:
            warnings.warn(
                f"aesampler: {self.disabled_by} names no installed plugin or distribution: "
                f"{', '.join(map(repr, unknown))}; installed plugins: "
                f"{', '.join(sorted({ep.name for ep in entry_points})) or 'none'} (distributions: "
                f"{', '.join(sorted({_distribution_name(ep) for ep in entry_points})) or 'none'})",
                PluginSettingWarning,
                stacklevel=4,  # _import <- load <- load_registry <- its caller
            )
        wanted_distributions = {normalize_distribution(n) for n in wanted}
        candidates = []
        for ep in entry_points:
            distribution = _distribution_name(ep)
            version = _distribution_version(ep)
            self.registry.distributions.setdefault(distribution, version)
            reason = None
            if ep.name in wanted or normalize_distribution(distribution) in wanted_distributions:
                reason = f"switched off by {self.disabled_by}"
            elif self.builtins_only and distribution != OWN_DISTRIBUTION:
                reason = DISABLED_THIRD_PARTY
            if reason is not None:
                self.registry.disabled.append(DisabledPlugin(ep.name, distribution, reason))
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # a broken plugin must not take the others down
                self.fail(
                    ep.name, distribution, f"import of {ep.value!r} failed: {_describe(error)}"
                )
                continue
            candidates.append((ep.name, distribution, version, plugin))
        return candidates

    def _register_with_pluggy(
        self, name: str, distribution: str, version: str | None, plugin: Any
    ) -> None:
        if self.pm.has_plugin(name):  # the plugin already registered under that name stays
            first = self.origin.get(name, ("unknown", None))[0]
            self.fail(
                name,
                distribution,
                f"another plugin is already registered as {name!r} (from {first!r})",
                registered=False,
            )
            return
        try:
            hash(plugin)  # pluggy keeps plugins in sets (subset_hook_caller)
            self.pm.register(plugin, name=name)  # validates hook signatures
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            self.fail(name, distribution, _describe(error), registered=False)
            if self.pm.is_registered(plugin) and self.pm.get_name(plugin) == name:
                self.pm.unregister(plugin)  # registered before the error: undo it
            return
        self.origin[name] = (distribution, version)

    def _reject_unknown_hooks(self) -> None:
        """A hook no specification knows (a misspelled hook name) fails its plugin.

        An implementation marked ``optionalhook=True`` is left alone: it is meant for a hook
        that a later aesampler may add.
        """
        for hook_name, caller in vars(self.pm.hook).items():
            if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
                for impl in caller.get_hookimpls():
                    if impl.optionalhook or impl.plugin_name not in self.origin:
                        continue
                    self.fail(
                        impl.plugin_name,
                        self.origin[impl.plugin_name][0],
                        f"implements unknown hook {hook_name!r}; "
                        f"hooks: {', '.join(hookspecs.KIND_HOOKS.values())}",
                    )
        self.pm.check_pending()

    def _register_components(self, plugin_name: str) -> None:
        """Call the plugin's hooks through pluggy, keeping all its components or none.

        Each hook is called through ``pm.subset_hook_caller`` restricted to this one plugin, so
        a failure is this plugin's: its hookwrappers and tryfirst/trylast order its own
        implementations, and other plugins' implementations are not part of the call.
        """
        distribution, version = self.origin[plugin_name]
        plugin = self.pm.get_plugin(plugin_name)
        others = [p for n, p in self.pm.list_name_plugin() if n != plugin_name]
        added: list[tuple[str, str]] = []

        def register(kind: str, name: str, factory: Any, description: str | None = None) -> None:
            self.registry.add(
                kind,
                name,
                factory,
                distribution=distribution,
                plugin=plugin_name,
                description=description,
                version=version,
            )
            added.append((kind, name))

        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            if not any(impl.plugin is plugin for impl in impls):
                continue
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(register=functools.partial(register, kind))
            except KeyboardInterrupt:
                raise
            except BaseException as error:
                for done in reversed(added):
                    self.registry.remove(*done)
                if isinstance(error, ComponentError):
                    message = str(error)
                else:
                    message = f"{hook_name} raised {_describe(error)}"
                if added:
                    dropped = ", ".join(f"{k} {n!r}" for k, n in added)
                    message += f"; none of its components is kept (also dropped: {dropped})"
                self.fail(plugin_name, distribution, message)
                return


@functools.lru_cache(maxsize=4)
def _load_cached(builtins_only: bool, disable: tuple[str, ...]) -> Registry:
    # ``disable`` is the cache key only: load_registry reads the same names from the environment.
    return load_registry(builtins_only=builtins_only)


_builtins_only = False


def set_builtins_only(flag: bool = True) -> None:
    """Make :func:`get_registry` load only aesampler's own built-ins, or everything again.

    ``aesampler --no-plugins`` sets it for the command it runs.
    """
    global _builtins_only
    _builtins_only = bool(flag)


def get_registry() -> Registry:
    """The registry of every installed plugin, loaded once per process.

    It is loaded again when ``AESAMPLER_DISABLE_PLUGINS`` or :func:`set_builtins_only` changed.
    """
    return _load_cached(_builtins_only, tuple(disabled_from_environment()))


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin in a running process)."""
    _load_cached.cache_clear()
