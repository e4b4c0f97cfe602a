"""Named components by kind, with provenance and did-you-mean lookup."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ComponentError, UnknownComponentError, did_you_mean

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Component:
    """A registered component: what it is, how to build it, and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    distribution: str
    plugin: str
    description: str

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


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Components by kind and name.

    Args:
        kinds: the component kinds this registry accepts.
    """

    def __init__(self, kinds: Mapping[str, str] | list[str]):
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in kinds}
        self.failures: list[PluginFailure] = []

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
        )
        self._components[kind][name] = component
        return component

    def names(self, kind: str) -> list[str]:
        return sorted(self._of_kind(kind))

    def __iter__(self) -> Iterator[Component]:
        for kind in self._components:
            for name in sorted(self._components[kind]):
                yield self._components[kind][name]

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``, or an error listing what that kind offers."""
        components = self._of_kind(kind)
        if name in components:
            return components[name]
        offered = ", ".join(
            f"{c.name} ({c.distribution})"
            for c in sorted(components.values(), key=lambda c: c.name)
        )
        message = (
            f"unknown {kind} {name!r}.{did_you_mean(str(name), components)} "
            f"Registered {kind}s: {offered or 'none'}"
        )
        if self.failures:
            message += "; plugins that failed to load: " + "; ".join(map(str, self.failures))
        raise UnknownComponentError(message)

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
