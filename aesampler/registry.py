"""Named components by kind, with provenance and did-you-mean lookup."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import kinds as _kinds
from .errors import ComponentError, UnknownComponentError, did_you_mean

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")
#: The distribution recorded for plugins passed to ``load_registry(extra_plugins=...)``.
DIRECT = "<direct>"


@dataclass(frozen=True)
class Component:
    """A registered component: what it is, how to build it, and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    distribution: str
    plugin: str
    description: str
    #: the distribution's version (``importlib.metadata``); None for a plugin passed directly.
    version: str | None = None

    def provenance(self) -> dict[str, str | None]:
        """Who provided this component, as plain data: distribution, version and plugin."""
        return {"distribution": self.distribution, "version": self.version, "plugin": self.plugin}

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword parameters the factory accepts (``self`` and ``*args`` excluded)."""
        try:
            signature = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return {}
        return {
            name: p
            for name, p in signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
        }


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to load or to register; the others still load."""

    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from distribution {self.distribution!r}: {self.message}"


@dataclass(frozen=True)
class DisabledPlugin:
    """A plugin that was switched off and therefore never imported."""

    plugin: str
    distribution: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from distribution {self.distribution!r}: {self.reason}"


def normalize_distribution(name: str) -> str:
    """A distribution name compared as packaging tools compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: ``{kind: {name: {"distribution": ..., "version": ..., "plugin": ...}}}``
Provenance = Mapping[str, Mapping[str, Mapping[str, Any]]]


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Components by kind and name.

    Args:
        kinds: the component kinds this registry accepts, in the order it lists them; default:
            every kind of :data:`aesampler.kinds.KINDS`, in table order.

    Attributes:
        failures: plugins that failed to load or to register; none of their components is here.
        disabled: plugins that were switched off and never imported.
        distributions: every distribution whose plugins were considered (loaded, failed or
            switched off), with its version; used to explain a component that is missing now.
    """

    def __init__(self, kinds: Iterable[str] | None = None):
        if kinds is None:
            kinds = _kinds.names()
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in kinds}
        self.failures: list[PluginFailure] = []
        self.disabled: list[DisabledPlugin] = []
        self.distributions: dict[str, str | None] = {}

    @property
    def kinds(self) -> list[str]:
        return list(self._components)

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        distribution: str,
        plugin: str,
        description: str | None = None,
        version: str | None = None,
    ) -> Component:
        """Add a component; raises ComponentError on a bad or duplicate name."""
        if kind not in self._components:
            raise ComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(self.kinds)}")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ComponentError(
                f"{kind} name {name!r} is not valid: use lower-case letters, digits and '_', "
                "starting with a letter"
            )
        if not callable(factory):
            raise ComponentError(f"{kind} {name!r}: factory {factory!r} is not callable")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise ComponentError(
                f"{kind} {name!r} is registered twice: by {existing.distribution!r} "
                f"(plugin {existing.plugin!r}) and by {distribution!r} (plugin {plugin!r}); "
                "the first registration is kept"
            )
        component = Component(
            kind=kind,
            name=name,
            factory=factory,
            distribution=distribution,
            plugin=plugin,
            description=description if description is not None else _first_doc_line(factory),
            version=version,
        )
        self._components[kind][name] = component
        return component

    def remove(self, kind: str, name: str) -> Component:
        """Take a component out again (the loader rolls back a plugin that failed this way)."""
        components = self._of_kind(kind)
        if name not in components:
            raise UnknownComponentError(f"no {kind} {name!r} is registered")
        return components.pop(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._of_kind(kind))

    def __iter__(self) -> Iterator[Component]:
        for kind in self._components:
            for name in sorted(self._components[kind]):
                yield self._components[kind][name]

    def get(self, kind: str, name: str, *, provided_before: Provenance | None = None) -> Component:
        """The component ``name`` of ``kind``, or an error listing what that kind offers.

        Args:
            provided_before: what provided each component last time, as returned by
                :meth:`provenance` (read back from a run directory). When ``name`` is missing
                now, the error says which distribution provided it then and why it is not here:
                not installed, failed to load, switched off, or no longer providing it.
        """
        components = self._of_kind(kind)
        if name in components:
            return components[name]
        offered = ", ".join(
            f"{c.name} ({c.distribution})"
            for c in sorted(components.values(), key=lambda c: c.name)
        )
        message = (
            f"unknown {kind} {name!r}.{self._provided_before(kind, name, provided_before)}"
            f"{did_you_mean(str(name), components)} "
            f"Registered {kind}s: {offered or 'none'}"
        )
        if self.failures:
            message += "; plugins that failed to load: " + "; ".join(map(str, self.failures))
        if self.disabled:
            message += "; plugins switched off: " + "; ".join(map(str, self.disabled))
        raise UnknownComponentError(message)

    def provenance(
        self, used: Iterable[tuple[str, str]] | None = None
    ) -> dict[str, dict[str, dict[str, str | None]]]:
        """Who provided each component, as plain data for a run directory's settings.

        Args:
            used: ``(kind, name)`` pairs, the components a run used; default: every component.
                A pair that is not registered raises :class:`UnknownComponentError`.

        Returns:
            ``{kind: {name: {"distribution": ..., "version": ..., "plugin": ...}}}``, with
            ``version`` None for plugins passed directly rather than installed.
        """
        pairs = [(c.kind, c.name) for c in self] if used is None else list(used)
        result: dict[str, dict[str, dict[str, str | None]]] = {}
        for kind, name in pairs:
            result.setdefault(kind, {})[name] = self.get(kind, name).provenance()
        return result

    def _provided_before(self, kind: str, name: str, provided_before: Provenance | None) -> str:
        """`` It was provided last time by ..., which ...`` for a component missing now."""
        try:
            entry = (provided_before or {}).get(kind, {}).get(name)
            distribution, version = entry.get("distribution"), entry.get("version")
            plugin = entry.get("plugin")
        except AttributeError:  # no entry, or not the shape provenance() writes
            return ""
        if not distribution:
            return ""
        if distribution == DIRECT:
            return (
                f" It was provided last time by plugin {plugin!r}, passed directly rather than "
                "installed; pass it again (load_registry(extra_plugins=...))."
            )
        who = f"{distribution} {version}" if version else str(distribution)
        wanted = normalize_distribution(str(distribution))
        failed = [f for f in self.failures if f.plugin == plugin] or [
            f for f in self.failures if normalize_distribution(f.distribution) == wanted
        ]
        disabled = [d for d in self.disabled if normalize_distribution(d.distribution) == wanted]
        installed = {normalize_distribution(d): v for d, v in self.distributions.items()}
        if failed:
            state = "which failed to load now: " + "; ".join(f.message for f in failed)
        elif disabled:
            state = f"which is switched off now ({disabled[0].reason})"
        elif wanted in installed:
            now = f" (version {installed[wanted]})" if installed[wanted] else ""
            state = f"which is installed now{now} but no longer provides it"
        else:
            state = "which is not installed now"
        return f" It was provided last time by {who}, {state}."

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Build component ``name`` of ``kind`` with ``params``, checked against its signature."""
        component = self.get(kind, name)
        check_params(component, params)
        try:
            return component.factory(**params)
        except (TypeError, ValueError) as error:
            raise ComponentError(
                f"{kind} {name!r} ({component.distribution}) rejected its parameters "
                f"{params!r}: {error}"
            ) from error

    def _of_kind(self, kind: str) -> dict[str, Component]:
        try:
            return self._components[kind]
        except KeyError:
            raise ComponentError(
                f"unknown component kind {kind!r}.{did_you_mean(str(kind), self._components)} "
                f"Kinds: {', '.join(self.kinds)}"
            ) from None


def param_problems(
    component: Component, params: Mapping[str, Any], *, provided: tuple[str, ...] = ()
) -> list[tuple[str | None, str]]:
    """What is wrong with ``params`` for this factory: ``(parameter or None, message)`` pairs.

    ``provided`` names parameters the host passes itself (a model's image size and channels),
    which are neither required from nor accepted from the user.
    """
    accepted = component.parameters()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    named = {k: p for k, p in accepted.items() if p.kind is not p.VAR_KEYWORD and k not in provided}
    where = f"{component.kind} {component.name!r} ({component.distribution})"
    problems: list[tuple[str | None, str]] = []
    for key in params:
        if key in provided:
            problems.append((key, f"{where} sets {key!r} itself; remove it"))
        elif key not in named and not takes_any:
            problems.append(
                (
                    key,
                    f"{where} has no parameter {key!r}.{did_you_mean(key, named)} "
                    f"Parameters: {', '.join(named) or 'none'}",
                )
            )
    missing = [k for k, p in named.items() if p.default is p.empty and k not in params]
    if missing:
        problems.append((None, f"{where} needs parameter {', '.join(map(repr, missing))}"))
    return problems


def check_params(
    component: Component, params: Mapping[str, Any], *, provided: tuple[str, ...] = ()
) -> None:
    """Raise ComponentError if ``params`` do not fit the factory's signature."""
    problems = param_problems(component, params, provided=provided)
    if problems:
        raise ComponentError("; ".join(message for _, message in problems))
