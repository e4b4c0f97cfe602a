"""Reading, overriding and validating recipes.

Every problem is collected before anything is reported, so a user fixes a recipe in one pass.
Each problem names its key path and, when the key is in the file, its line.
"""

from __future__ import annotations

import copy
import inspect
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError, create_model

from ..errors import AesamplerError, ComponentError, did_you_mean
from ..plugins import get_registry
from ..registry import Component, Registry, param_problems
from .schema import Recipe

# Component sections by key path: their kind, and the parameters the host passes itself (users
# do not set those in a recipe).
COMPONENT_SECTIONS: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("model",): ("model", ("image_size", "channels")),
    ("data",): ("dataset", ("split",)),
    ("corruption",): ("corruption", ()),
    ("sampling", "transition"): ("transition", ("encoder", "decoder", "corruption")),
    ("sampling", "corruption"): ("corruption", ()),
    ("evaluate", "feature_extractor"): ("feature_extractor", ()),
}
# Lists of component sections: key path -> kind.
COMPONENT_LISTS: dict[tuple[str, ...], str] = {("evaluate", "metrics"): "metric"}
# Keys of a component section that are the recipe's, not the component's parameters.
RESERVED = {("model",): ("checkpoint",)}


COMMAND_LINE = "command line"


@dataclass(frozen=True)
class RecipeIssue:
    """One problem: the key path, the message, and the file line (or ``"command line"``)."""

    path: tuple[str | int, ...]
    message: str
    line: int | str | None = None

    def render(self, source: str) -> str:
        if isinstance(self.line, int):
            where = f"{source}:{self.line}: "
        elif self.line:
            where = f"{source} ({self.line}): "
        else:
            where = f"{source}: "
        key = ".".join(map(str, self.path))
        return f"{where}{key + ': ' if key else ''}{self.message}"


class RecipeError(AesamplerError):
    """A recipe is not valid; ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: Sequence[RecipeIssue]):
        self.source = source
        self.issues = list(issues)
        count = len(self.issues)
        lines = "\n".join("  " + issue.render(source) for issue in self.issues)
        super().__init__(f"{source}: {count} problem{'s' * (count != 1)}:\n{lines}")


# ----------------------------------------------------------------------------------------------
# YAML with line numbers


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict:
    """Key path -> 1-based line of the key (or item) in the YAML file."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _line_map(item, (*path, i), lines)
    return lines


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """The recipe's data and its line map; YAML errors become a RecipeError with the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        issue = RecipeIssue((), f"cannot read the recipe: {error.strerror}")
        raise RecipeError(str(path), [issue]) from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(str(path), [RecipeIssue((), f"invalid YAML: {problem}", line)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [RecipeIssue((), "a recipe must be a mapping of sections")])
    return data, _line_map(node) if node is not None else {}


# ----------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"train.epochs=2"`` -> ``(("train", "epochs"), 2)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        raise RecipeError(
            "overrides", [RecipeIssue((), f"{text!r} is not an override: write key.path=value")]
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``data`` with each ``key.path=value`` set (missing sections are created)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise RecipeError(
                    "overrides",
                    [RecipeIssue((), f"{text!r}: {where} is {child!r}, not a section")],
                )
            node = child
        node[path[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------
# Validation


def _pydantic_issues(error: ValidationError, lines: dict) -> list[RecipeIssue]:
    issues = []
    for item in error.errors():
        path = tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key." + did_you_mean(str(path[-1]), _fields_at(path[:-1]))
            message += f" Keys here: {', '.join(_fields_at(path[:-1]))}"
        elif item["type"] == "missing":
            message = "missing: this key is required"
        elif "input" in item and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        issues.append(RecipeIssue(path, message, _line_for(path, lines)))
    return issues


def _fields_at(path: tuple) -> list[str]:
    model: Any = Recipe
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return []
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if isinstance(a, type)]
        model = next((a for a in [annotation, *args] if hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(model.model_fields)


def _line_for(path: tuple, lines: dict) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _param_model(component: Component, provided: tuple[str, ...]):
    """A pydantic model of the factory's parameters, typed by its annotations."""
    try:
        hints = typing.get_type_hints(
            component.factory.__init__ if inspect.isclass(component.factory) else component.factory
        )
    except Exception:  # unresolvable annotations in a plugin: check names only
        hints = {}
    fields = {}
    for name, param in component.parameters().items():
        if name in provided or param.kind is param.VAR_KEYWORD:
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(
        f"{component.kind}_{component.name}",
        __config__=ConfigDict(extra="allow", allow_inf_nan=False, arbitrary_types_allowed=True),
        **fields,
    )


def _check_component(
    section: tuple[str, ...], spec: dict, registry: Registry, lines: dict
) -> tuple[list[RecipeIssue], dict]:
    """Issues with a component section, and its parameters converted to their declared types."""

    def issue(path: tuple, message: str) -> RecipeIssue:
        return RecipeIssue(path, message, _line_for(path, lines))

    kind, provided = COMPONENT_SECTIONS.get(section) or (COMPONENT_LISTS[section[:-1]], ())
    reserved = {k: spec[k] for k in RESERVED.get(section, ()) if k in spec}
    params = {k: v for k, v in spec.items() if k != "name" and k not in reserved}
    try:
        component = registry.get(kind, spec.get("name"))
    except ComponentError as error:
        return [issue((*section, "name"), str(error))], {**params, **reserved}
    problems = param_problems(component, params, provided=provided)
    issues = [issue((*section, key) if key else section, message) for key, message in problems]
    known = {k: v for k, v in params.items() if k not in {key for key, _ in problems}}
    try:
        typed = _param_model(component, provided)(**known)
    except ValidationError as error:
        for item in error.errors():
            if item["type"] != "missing":  # missing parameters are reported above
                message = f"{item['msg']} (got {item.get('input')!r})"
                issues.append(issue((*section, *item["loc"]), message))
        return issues, {**params, **reserved}
    converted = {**params, **{k: getattr(typed, k) for k in known if k in type(typed).model_fields}}
    converted.update(reserved)
    if not issues and kind == "corruption":
        # Build it once, so its own value checks (sigma >= 0, ...) run now. Models and datasets
        # are built, and check their values, before training writes anything.
        try:
            registry.create(kind, component.name, **converted)
        except ComponentError as error:
            issues.append(issue(section, str(error)))
    return issues, converted


def validate(
    data: dict,
    lines: dict | None = None,
    source: str = "<recipe>",
    registry: Registry | None = None,
) -> Recipe:
    """Validate recipe data: every issue is collected, then raised as one RecipeError."""
    lines = lines or {}
    registry = registry or get_registry()
    issues: list[RecipeIssue] = []
    data = copy.deepcopy(data)
    for section in COMPONENT_SECTIONS:
        parent = data
        for key in section[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        spec = parent.get(section[-1]) if isinstance(parent, dict) else None
        if isinstance(spec, dict) and "name" in spec:
            found, converted = _check_component(section, spec, registry, lines)
            issues += found
            parent[section[-1]] = {"name": spec["name"], **converted}
    for path in COMPONENT_LISTS:
        entries = (
            data.get(path[0], {}).get(path[1]) if isinstance(data.get(path[0]), dict) else None
        )
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                spec = {"name": entry} if isinstance(entry, str) else entry
                if isinstance(spec, dict) and "name" in spec:
                    found, converted = _check_component((*path, i), spec, registry, lines)
                    issues += found
                    entries[i] = {"name": spec["name"], **converted}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        issues = _pydantic_issues(error, lines) + issues
        recipe = None
    if issues:
        issues.sort(key=lambda i: (i.line if isinstance(i.line, int) else math.inf, i.path))
        raise RecipeError(source, issues)
    return recipe


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None
) -> Recipe:
    """Read, override and validate a recipe file."""
    data, lines = read_yaml(path)
    overrides = list(overrides)
    data = apply_overrides(data, overrides)
    for text in overrides:  # problems with overridden keys point at the command line
        key, _ = parse_override(text)
        for known in [k for k in lines if k[: len(key)] == key]:
            del lines[known]
        lines[key] = COMMAND_LINE
    return validate(data, lines, str(path), registry)
