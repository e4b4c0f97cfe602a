"""Reading, overriding and validating recipes.

Every problem is collected before anything is reported, so a user fixes a recipe in one pass.
Each problem names its key path and, when the key is in the file, its line.

A recipe is a short text of plain values, and the reader holds it to that: it must be UTF-8, at
most ``MAX_BYTES`` long, nested at most ``MAX_DEPTH`` levels, and hold at most ``MAX_NODES`` values
once its aliases are expanded (so an alias bomb is refused before anything expands it). Keys must
be text and appear once per mapping. The work done on a recipe is therefore bounded before any of
it starts.
"""

from __future__ import annotations

import copy
import inspect
import math
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationError, create_model
from torch import nn
from yaml.constructor import ConstructorError

from .. import kinds
from ..errors import AesamplerError, ComponentError, did_you_mean, quoted
from ..interfaces import DeterministicEncoder, ModuleDecoder
from ..plugins import get_registry
from ..registry import Component, Registry, param_problems
from .build import meta_model, wrong_type
from .schema import AUTO, INT_LIMIT, Recipe, check_seed, name_to_section

# Where components appear in a recipe, all derived from the table of kinds (aesampler.kinds).
# Single component sections by key path: their kind, and the parameters the host passes itself
# (users do not set those in a recipe).
COMPONENT_SECTIONS: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    path: (kind.name, kind.provided) for path, kind in kinds.sections()
}
# ``sampling.start: auto``: no component; the search (aesampler.tuning) chooses one.
AUTO_START = ("sampling", "start")
# The samplers that the search may choose from (never one that copies data).
SEARCHED = (("tune", "samplers"),)
# Lists of component sections: key path -> kind.
COMPONENT_LISTS: dict[tuple[str, ...], str] = {path: kind.name for path, kind in kinds.lists()}
# Keys of a component section that are the recipe's, not the component's parameters.
RESERVED: dict[tuple[str, ...], tuple[str, ...]] = {
    path: kind.reserved for kind in kinds.KINDS for path in kind.locations if kind.reserved
}
# Kinds whose components are built once while validating: cheap to build, and their own value
# checks would otherwise run only after training.
BUILT_ONCE: tuple[str, ...] = tuple(kind.name for kind in kinds.KINDS if kind.built_once)

# Bounds on a recipe file. Real recipes are a few hundred bytes, a few levels deep and hold a
# few dozen values, so these are generous and only stop files that are not recipes.
MAX_BYTES = 1_000_000
MAX_DEPTH = 100
MAX_NODES = 10_000

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
        # A file name with a line break or an undecodable byte is shown quoted, with escapes.
        shown = source if source.isprintable() else quoted(source)
        lines = "\n".join("  " + issue.render(shown) for issue in self.issues)
        super().__init__(f"{shown}: {count} problem{'s' * (count != 1)}:\n{lines}")


def _show(value: Any, limit: int = 60) -> str:
    """A short repr for messages: long strings and lists are cut."""
    try:
        text = repr(value)
    except Exception:  # an integer too long to print, ...
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# YAML with line numbers

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that is not acceptable as a recipe (too deep, too large, ...)."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, held to plain values and to ``MAX_DEPTH`` while composing.

    Dates stay text (recipes have no dates) and the tags for binary data, sets and ordered
    pairs are refused; a scalar that cannot be read (``!!int x``) is an error at its line.
    """

    _depth = 0

    def compose_node(self, parent, index):
        # PyYAML composes recursively; stop at MAX_DEPTH, long before Python's recursion limit.
        nested = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        self._depth += nested
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= nested

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError):
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(
                problem=f"cannot read {_show(getattr(node, 'value', None), 40)} as {kind}",
                problem_mark=node.start_mark,
            ) from None

    def refuse_tag(self, node):
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        raise _Refused(
            problem=f"a recipe holds plain values; the tag {tag} is not supported",
            problem_mark=node.start_mark,
        )


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith(":timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    _RecipeLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _RecipeLoader.refuse_tag)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a node graph that aliases make recursive, too deep or too large.

    Sizes count values with every alias expanded, computed once per node (memoised), so the
    count is linear in the file even when the expansion is exponential. Sizes are capped just
    above ``MAX_NODES``: only whether a node is too large matters.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            size[key] = min(1 + sum(size[id(c)] for c in children), MAX_NODES + 1)
            nested = isinstance(node, yaml.CollectionNode)
            depth[key] = nested + max((depth[id(c)] for c in children), default=0)
            open_nodes.discard(key)
            continue
        if key in size:
            continue
        if key in open_nodes:  # an alias inside the node it refers to
            raise _Refused(
                problem="an alias refers to a node that contains it (a recursive structure)",
                problem_mark=node.start_mark,
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack += [(child, False) for child in _children(node) if id(child) not in size]
    if depth[id(root)] > MAX_DEPTH:
        raise _Refused(
            problem=f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded",
            problem_mark=root.start_mark,
        )
    if size[id(root)] > MAX_NODES:
        node = root  # point at the smallest node that is too large by itself
        while True:
            big = [c for c in _children(node) if size[id(c)] > MAX_NODES]
            if not big:
                break
            node = big[0]
        raise _Refused(
            problem=f"its aliases expand it to more than {MAX_NODES:,} values; a recipe holds "
            "far fewer, so it is refused (an alias bomb?)",
            problem_mark=node.start_mark,
        )


def _line_map(root: yaml.Node) -> tuple[dict, list[RecipeIssue]]:
    """Key path -> 1-based line of the key (or item), and problems with keys.

    Each node is walked once: the keys under an alias are not listed again (problems there
    point at the alias). Keys must be text and appear once in their mapping.
    """
    lines: dict[tuple, int] = {}
    issues: list[RecipeIssue] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                node.value.encode("utf-8")
            except UnicodeEncodeError:
                message = "holds a character that is not valid text (a lone surrogate)"
                issues.append(RecipeIssue(path, message, node.start_mark.line + 1))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:  # `<<: *base`: its keys merge into this mapping
                    walk(value_node, path)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                    issues.append(RecipeIssue(path, f"a key must be text, not a {kind}", line))
                    continue
                child = (*path, key_node.value)
                if key_node.tag != _STR_TAG:
                    kind = key_node.tag.rsplit(":", 1)[-1]
                    issues.append(
                        RecipeIssue(
                            child,
                            f"a key must be text, and this one reads as {kind}; "
                            "put it in quotes if you mean the text",
                            line,
                        )
                    )
                elif key_node.value in first:
                    issues.append(
                        RecipeIssue(
                            child,
                            f"duplicate key {key_node.value!r} (lines {first[key_node.value]} "
                            f"and {line}): give each key once",
                            line,
                        )
                    )
                else:
                    first[key_node.value] = line
                    lines[child] = line
                walk(key_node, child)
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    walk(root, ())
    return lines, issues


def _load_text(text: str) -> tuple[Any, dict, list[RecipeIssue]]:
    """The data of a YAML text, its line map and the problems with its keys.

    Raises a ``yaml.YAMLError`` (``_Refused`` for YAML that is valid but not a recipe's).
    """
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        _measure(node)
        lines, issues = _line_map(node)
        if issues:
            return None, lines, issues
        return loader.construct_document(node), lines, []
    finally:
        loader.dispose()


def _yaml_issue(error: yaml.YAMLError, text: str) -> RecipeIssue:
    if isinstance(error, yaml.reader.ReaderError):
        before = text[: error.position]
        line, column = before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1
        character = error.character
        code = f"U+{character:04X}" if isinstance(character, int) else _show(character)
        message = f"invalid YAML: the character {code} (column {column}) is not allowed in YAML"
        return RecipeIssue((), message, line)
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    if isinstance(error, _Refused):
        return RecipeIssue((), f"refused: {problem}", line)
    if context:
        problem = f"{context}: {problem}"
    return RecipeIssue((), f"invalid YAML: {problem}", line)


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as error:
        issue = RecipeIssue((), f"cannot read the recipe: {error.strerror or error}")
        raise RecipeError(source, [issue]) from None
    if len(raw) > MAX_BYTES:
        message = f"larger than {MAX_BYTES:,} bytes: a recipe is a short text; is this one?"
        raise RecipeError(source, [RecipeIssue((), message)])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        message = (
            f"not UTF-8 text: the byte 0x{raw[error.start]:02x} at column {column} cannot be "
            "decoded; save the recipe as UTF-8"
        )
        raise RecipeError(source, [RecipeIssue((), message, line)]) from None


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """The recipe's data and its line map; YAML errors become a RecipeError with the line."""
    path = Path(path)
    text = _read_text(path)
    try:
        data, lines, issues = _load_text(text)
    except yaml.YAMLError as error:
        raise RecipeError(str(path), [_yaml_issue(error, text)]) from None
    if issues:
        raise RecipeError(str(path), issues)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [RecipeIssue((), "a recipe must be a mapping of sections")])
    return data, lines


# ----------------------------------------------------------------------------------------------
# Overrides


def _override_error(text: str, message: str) -> RecipeError:
    return RecipeError("overrides", [RecipeIssue((), f"{text!r}: {message}")])


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"train.epochs=2"`` -> ``(("train", "epochs"), 2)``; the value is read as YAML.

    A value that is not valid YAML stays text; one that YAML reads but a recipe may not hold
    (an alias bomb, a key that is not text, ...) is an error.
    """
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise RecipeError(
            "overrides", [RecipeIssue((), f"{text!r} is not an override: write key.path=value")]
        )
    if not raw.strip():
        return path, None
    try:
        value, _, issues = _load_text(raw)
    except _Refused as error:
        raise _override_error(text, f"refused: {error.problem}") from None
    except yaml.YAMLError:
        return path, raw
    if issues:
        problems = "; ".join(
            f"{'.'.join(map(str, (*path, *issue.path)))}: {issue.message}" for issue in issues
        )
        raise _override_error(text, problems)
    return path, value


def _field_default(path: tuple) -> Any:
    """The schema's default for the section at ``path`` as plain data, or None."""
    model: Any = Recipe
    for i, key in enumerate(path):
        fields = getattr(model, "model_fields", None)
        field = fields.get(key) if isinstance(fields, dict) and isinstance(key, str) else None
        if field is None:
            return None
        if i == len(path) - 1:
            if field.is_required():
                return None
            return _plain(field.get_default(call_default_factory=True))
        model = _model_of(field.annotation)
    return None


def _plain(value: Any) -> Any:
    """Schema values as YAML would give them: mappings, lists and scalars."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _model_of(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if isinstance(a, type)]
    return next((a for a in [annotation, *args] if hasattr(a, "model_fields")), None)


def _set(data: dict, path: tuple[str, ...], value: Any, text: str) -> tuple[str | int, ...]:
    """Set ``path`` to ``value`` in ``data``; return the path with list indices as ints.

    A section the data lacks is first filled from the schema's default, so an override changes
    one key of the default rather than replacing it.
    """
    node: Any = data
    done: list[str | int] = []
    for i, part in enumerate(path):
        key: str | int = part
        if isinstance(node, list):
            where = ".".join(map(str, done))
            span = f"0 to {len(node) - 1}" if node else "it is empty"
            if not (part.isascii() and part.isdigit()):
                raise _override_error(text, f"{where} is a list: {part!r} is not an index ({span})")
            key = int(part)
            if key >= len(node):
                raise _override_error(
                    text, f"{where} has {len(node)} items: index {key} is out of range ({span})"
                )
        if i == len(path) - 1:
            node[key] = value
            return (*done, key)
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:
            child = _field_default((*done, key))
            child = node[key] = {} if child is None else child
        elif isinstance(child, str) and _holds_a_component((*done, key)):
            # `start: prior` and `- frechet` become `{name: prior}` and `{name: frechet}`
            child = node[key] = name_to_section(child)
        if not isinstance(child, (dict, list)):
            where = ".".join(map(str, (*done, key)))
            raise _override_error(text, f"{where} is {_show(child)}, not a section")
        done.append(key)
        node = child
    raise AssertionError("unreachable: parse_override never returns an empty path")


def _holds_a_component(path: tuple) -> bool:
    """Whether ``path`` is a component section or an item of a list of them."""
    return tuple(path) in COMPONENT_SECTIONS or (
        bool(path) and isinstance(path[-1], int) and tuple(path[:-1]) in COMPONENT_LISTS
    )


def _apply(data: dict, overrides: Iterable[str]) -> tuple[dict, list[tuple]]:
    data = copy.deepcopy(data)
    paths = []
    for text in overrides:
        path, value = parse_override(text)
        paths.append(_set(data, path, value, text))
    return data, paths


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``data`` with each ``key.path=value`` set.

    Sections missing from ``data`` are filled from the schema's defaults first (or created
    empty); a numeric part indexes a list (``evaluate.metrics.0.k=3``).
    """
    return _apply(data, overrides)[0]


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
            message += f" (got {_show(item['input'])})"
        issues.append(RecipeIssue(path, message, _line_for(path, lines)))
    return issues


def _fields_at(path: tuple) -> list[str]:
    model: Any = Recipe
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _line_for(path: tuple, lines: dict) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


_STRICT = {
    int: typing.Annotated[int, Strict(), Field(ge=-INT_LIMIT, lt=INT_LIMIT)],
    float: typing.Annotated[float, Strict()],
    bool: typing.Annotated[bool, Strict()],
}


def _strict(annotation: Any) -> Any:
    """``annotation`` with every int, float and bool in it made strict (see schema.py)."""
    if isinstance(annotation, type) and annotation in _STRICT:
        return _STRICT[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None or not args or origin is typing.Literal:
        return annotation
    try:
        if origin is typing.Annotated:
            return typing.Annotated[(_strict(args[0]), *annotation.__metadata__)]
        strict = tuple(_strict(a) for a in args)
        if origin in (typing.Union, types.UnionType):
            return typing.Union[strict]  # noqa: UP007 (the arguments are a runtime tuple)
        return origin[strict]
    except TypeError:  # a generic that cannot be rebuilt: keep it as declared
        return annotation


def _seed_in_range(value: Any) -> Any:
    return check_seed(value) if isinstance(value, (int, float)) else value


def _param_model(component: Component, provided: tuple[str, ...]):
    """A pydantic model of the factory's parameters, typed by its annotations.

    Fields have neutral names and take the parameter names as aliases, so no parameter name
    can clash with pydantic's own. Numbers are strict, as in the schema, and a parameter named
    ``seed`` must be a seed torch accepts.
    """
    try:
        hints = typing.get_type_hints(
            component.factory.__init__ if inspect.isclass(component.factory) else component.factory
        )
    except Exception:  # unresolvable annotations in a plugin: check names only
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in component.parameters().items():
        if name in provided or param.kind is param.VAR_KEYWORD:
            continue
        default = ... if param.default is param.empty else param.default
        annotation = _strict(hints.get(name, Any))
        if name == "seed":
            annotation = typing.Annotated[annotation, BeforeValidator(_seed_in_range)]
        fields[f"p{len(fields)}"] = (annotation, Field(default, alias=name))
    config = ConfigDict(extra="allow", allow_inf_nan=False, arbitrary_types_allowed=True)
    title = f"{component.kind}_{component.name}"
    try:
        return create_model(title, __config__=config, **fields)
    except Exception:  # an annotation pydantic cannot check: check names only
        loose = {k: (Any, info) for k, (_, info) in fields.items()}
        return create_model(title, __config__=config, **loose)


def _kind_at(section: tuple) -> tuple[str, tuple[str, ...]]:
    """The kind of the component section at ``section`` (a list item's path ends in its index),
    and the parameters the host passes itself."""
    if section in COMPONENT_SECTIONS:
        return COMPONENT_SECTIONS[section]
    kind = COMPONENT_LISTS[section[:-1]]
    return kind, kinds.get_kind(kind).provided


def _reserved_at(section: tuple) -> tuple[str, ...]:
    """The recipe's own keys of the component section at ``section``."""
    if section in COMPONENT_SECTIONS:
        return RESERVED.get(section, ())
    return RESERVED.get(section[:-1], ())


def _registered(registry: Registry, kind: str) -> list[Component]:
    return [c for c in registry if c.kind == kind]


def _unnamed_section(
    section: tuple, spec: dict, kind: str, provided: tuple[str, ...], registry: Registry, issue
) -> list[RecipeIssue]:
    """A section without ``name``: say which names exist, and check its other keys against
    the parameters of every component of its kind."""
    components = _registered(registry, kind)
    offered = ", ".join(f"{c.name} ({c.distribution})" for c in components) or "none"
    issues = [issue((*section, "name"), f"missing: name the {kind}. Registered {kind}s: {offered}")]
    accepted = [p for c in components for p in c.parameters().values()]
    if any(p.kind is p.VAR_KEYWORD for p in accepted):
        return issues  # some component takes any key: none is unknown
    known = ["name", *_reserved_at(section)]
    known += sorted({p.name for p in accepted if p.name not in provided} - set(known))
    names = {c.name for c in components}
    for key, value in spec.items():
        if key in known:
            continue
        if key in ("kind", "type") or (isinstance(value, str) and value in names):
            hint = " Did you mean 'name'?"
        else:
            hint = did_you_mean(str(key), known)
        message = f"unknown key.{hint} Keys of {kind} sections: {', '.join(known)}"
        issues.append(issue((*section, key), message))
    return issues


def _check_component(
    section: tuple, spec: dict, registry: Registry, lines: dict, provided_before=None
) -> tuple[list[RecipeIssue], dict]:
    """Issues with a component section, and its parameters converted to their declared types.

    ``provided_before`` (what provided each component when the run was made) lets the message
    for a missing component say which distribution it came from.
    """

    def issue(path: tuple, message: str) -> RecipeIssue:
        return RecipeIssue(path, message, _line_for(path, lines))

    kind, provided = _kind_at(section)
    odd = [k for k in spec if not isinstance(k, str)]
    if odd:
        return [issue(section, f"keys must be text, not {_show(odd)}")], spec
    if "name" not in spec:
        return _unnamed_section(section, spec, kind, provided, registry, issue), spec
    reserved = {k: spec[k] for k in _reserved_at(section) if k in spec}
    params = {k: v for k, v in spec.items() if k != "name" and k not in reserved}
    name = spec["name"]
    if not isinstance(name, str):
        offered = ", ".join(c.name for c in _registered(registry, kind)) or "none"
        message = f"must be the name of a registered {kind} ({offered}), not {_show(name)}"
        return [issue((*section, "name"), message)], {**params, **reserved}
    try:
        component = registry.get(kind, name, provided_before=provided_before)
    except ComponentError as error:
        return [issue((*section, "name"), str(error))], {**params, **reserved}
    problems = param_problems(component, params, provided=provided)
    issues = [issue((*section, key) if key else section, message) for key, message in problems]
    known = {k: v for k, v in params.items() if k not in {key for key, _ in problems}}
    model = _param_model(component, provided)
    try:
        typed = model.model_validate(known)
    except ValidationError as error:
        for item in error.errors():
            if item["type"] != "missing":  # missing parameters are reported above
                message = f"{item['msg']} (got {_show(item.get('input'))})"
                issues.append(issue((*section, *item["loc"]), message))
        return issues, {**params, **reserved}
    aliases = {info.alias: field for field, info in model.model_fields.items()}
    converted = {**params, **{k: getattr(typed, aliases[k]) for k in known if k in aliases}}
    converted.update(reserved)
    if not issues and kind in BUILT_ONCE:
        # Build it once, so its own value checks (sigma >= 0, k >= 1, ...) run now. Models are
        # built on the meta device and transitions with the model's parts (see validate);
        # datasets read files, and are built before training writes anything.
        params = {k: v for k, v in converted.items() if k not in reserved}
        try:
            built = registry.create(kind, component.name, **params)
        except ComponentError as error:
            issues.append(issue(section, str(error)))
        else:
            wrong = wrong_type(kind, component, built)
            if wrong:
                issues.append(issue(section, wrong))
    return issues, converted


def _optional(section: tuple) -> bool:
    """Whether the schema lets the component section at ``section`` be null (none)."""
    model: Any = Recipe
    for key in section[:-1]:
        model = _model_of(model.model_fields[key].annotation)
    return type(None) in typing.get_args(model.model_fields[section[-1]].annotation)


def _not_a_section(section: tuple, value: Any, registry: Registry, lines: dict) -> RecipeIssue:
    """A component section that holds neither a name nor a section with one."""
    kind, _ = _kind_at(section)
    offered = ", ".join(c.name for c in _registered(registry, kind)) or "none"
    if section == AUTO_START:
        offered += f", or {AUTO}"
    message = (
        f"must name a {kind} ({offered}), alone or as the name of a section with its "
        f"parameters, not {_show(value)}"
    )
    return RecipeIssue(section, message, _line_for(section, lines))


def _image_geometry(data: dict, registry: Registry) -> tuple[Any, Any]:
    """The image size and channels the data section will give (None when unknown)."""
    try:
        factory = registry.get("dataset", data["name"]).parameters()
    except ComponentError:
        return None, None

    def value(key: str, fallback: Any) -> Any:
        if key in data:
            return data[key]
        param = factory.get(key)
        return fallback if param is None or param.default is param.empty else param.default

    return value("image_size", None), value("channels", 3)


def _check_model(clean: dict, registry: Registry, lines: dict) -> tuple[list[RecipeIssue], Any]:
    """Build the model once on the meta device (nothing is allocated): its own checks of the
    image geometry and the size of its parameters run now, not when training starts."""
    model_spec, data_spec = clean.get(("model",)), clean.get(("data",))
    if model_spec is None or data_spec is None:
        return [], None
    image_size, channels = _image_geometry(data_spec, registry)
    if image_size is None:
        return [], None
    reserved = _reserved_at(("model",))
    params = {k: v for k, v in model_spec.items() if k != "name" and k not in reserved}
    try:
        model = meta_model(
            model_spec["name"], {"image_size": image_size, "channels": channels, **params}, registry
        )
    except AesamplerError as error:
        cause = str(error.__cause__ or "")
        wrong = [k for k in ("image_size", "channels") if k in cause and k in data_spec]
        if wrong:  # the data's value is what the model refuses: point at it
            path: tuple = ("data", wrong[0])
            message = f"model {model_spec['name']!r} cannot take it: {cause}"
        else:
            path, message = ("model",), str(error)
        return [RecipeIssue(path, message.splitlines()[0], _line_for(path, lines))], None
    return [], model


def _check_transition(
    clean: dict, data: dict, model: Any, registry: Registry, lines: dict
) -> list[RecipeIssue]:
    """Build the transition once, so its own value checks run now. Its encoder and decoder
    are the model's, built on the meta device, or small stand-ins when that model is unknown."""
    section = ("sampling", "transition")
    spec = clean.get(section)
    sampling = data.get("sampling")
    if spec is None or not isinstance(sampling, dict) or "transition" not in sampling:
        return []
    corruption_path = ("sampling", "corruption") if sampling.get("corruption") else ("corruption",)
    corruption_spec = clean.get(corruption_path)
    try:
        with torch.device("meta"):
            corruption = None
            if corruption_spec is not None:
                corruption = registry.create(
                    "corruption",
                    corruption_spec["name"],
                    **{k: v for k, v in corruption_spec.items() if k != "name"},
                )
            if model is not None:
                encoder, decoder = model.encoder, model.decoder
            else:
                encoder, decoder = DeterministicEncoder(nn.Identity()), ModuleDecoder(nn.Identity())
            registry.create(
                "transition",
                spec["name"],
                encoder=encoder,
                decoder=decoder,
                corruption=corruption,
                **{k: v for k, v in spec.items() if k != "name"},
            )
    except AesamplerError as error:
        # Not str(error): that would print the networks passed in, layer by layer.
        params = {k: v for k, v in spec.items() if k != "name"}
        where = registry.get("transition", spec["name"]).distribution
        message = (
            f"transition {spec['name']!r} ({where}) rejected its parameters "
            f"{_show(params, 200)}: {error.__cause__ or error}"
        )
        return [RecipeIssue(section, message, _line_for(section, lines))]
    except Exception:  # fails for want of the real networks: training will tell
        return []
    return []


def _check_samplers(clean: dict, model: Any, registry: Registry, lines: dict) -> list[RecipeIssue]:
    """Ask each sampler whether it can serve the model (``aae_discriminator`` needs an
    adversary), with the model built on the meta device; nothing to ask without a model."""
    if model is None:
        return []
    kind = kinds.get_kind("sampler")
    issues = []
    for section, spec in clean.items():
        if section not in kind.sections and section[:-1] not in kind.lists:
            continue
        try:
            reserved = ("name", *kind.reserved)
            sampler = registry.create(
                "sampler", spec["name"], **{k: v for k, v in spec.items() if k not in reserved}
            )
            sampler.check_model(model)
            if section[:-1] in SEARCHED and getattr(sampler, "copies_data", False):
                raise AesamplerError(
                    f"sampler {spec['name']!r} draws encodings of real images, so it would "
                    "copy the data the search scores against; it is the search's yardstick, "
                    "not a candidate"
                )
        except AesamplerError as error:
            issues.append(RecipeIssue(section, str(error), _line_for(section, lines)))
    return issues


def _parent(data: dict, path: tuple) -> dict | None:
    """The mapping that holds the last key of ``path`` in ``data``, or None."""
    parent: Any = data
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    return parent if isinstance(parent, dict) else None


def _sort_key(issue: RecipeIssue) -> tuple:
    line = issue.line if isinstance(issue.line, int) else math.inf
    # Paths mix keys and list indices: compare indices with indices and keys with keys.
    return line, tuple(
        (isinstance(p, str), p if isinstance(p, (int, str)) else 0) for p in issue.path
    )


def validate(
    data: dict,
    lines: dict | None = None,
    source: str = "<recipe>",
    registry: Registry | None = None,
    *,
    provided_before: dict | None = None,
) -> Recipe:
    """Validate recipe data: every issue is collected, then raised as one RecipeError.

    ``provided_before``: what provided each component last time (a run directory records it),
    named in the error when one of them is missing now.
    """
    lines = lines or {}
    if not isinstance(data, dict):
        raise RecipeError(source, [RecipeIssue((), "a recipe must be a mapping of sections")])
    registry = registry or get_registry()
    issues: list[RecipeIssue] = []
    data = copy.deepcopy(data)
    clean: dict[tuple, dict] = {}  # component sections without problems: converted values

    def check(section: tuple, spec: dict) -> dict:
        found, converted = _check_component(section, spec, registry, lines, provided_before)
        issues.extend(found)
        if "name" not in spec:
            return spec
        checked = {"name": spec["name"], **converted}
        if not found:
            clean[section] = checked
        return checked

    for section in COMPONENT_SECTIONS:
        parent = _parent(data, section)
        if parent is None or section[-1] not in parent:
            continue
        spec = parent[section[-1]] = name_to_section(parent[section[-1]])  # `start: prior`
        if not isinstance(spec, dict) and not (spec is None and _optional(section)):
            issues.append(_not_a_section(section, spec, registry, lines))
            continue
        if section == AUTO_START and isinstance(spec, dict) and spec.get("name") == AUTO:
            extra = sorted(k for k in spec if k != "name")
            if extra:
                issues.append(
                    RecipeIssue(
                        (*section, extra[0]),
                        "sampling.start: auto chooses the sampler, its batch-norm mode and "
                        "corruption itself; set them in the tune section instead",
                        _line_for((*section, extra[0]), lines),
                    )
                )
            continue
        if isinstance(spec, dict):
            parent[section[-1]] = check(section, spec)
    for path in COMPONENT_LISTS:
        parent = _parent(data, path)
        entries = parent.get(path[-1]) if parent is not None else None
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                spec = name_to_section(entry)
                if isinstance(spec, dict):
                    entries[i] = check((*path, i), spec)
    found, model = _check_model(clean, registry, lines)
    issues += found
    issues += _check_transition(clean, data, model, registry, lines)
    issues += _check_samplers(clean, model, registry, lines)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        reported = {issue.path for issue in issues}  # e.g. a missing name, reported with names
        issues = [i for i in _pydantic_issues(error, lines) if i.path not in reported] + issues
        recipe = None
    if issues:
        issues.sort(key=_sort_key)
        raise RecipeError(source, issues)
    return recipe


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
    *,
    provided_before: dict | None = None,
) -> Recipe:
    """Read, override and validate a recipe file (see :func:`validate` for ``provided_before``)."""
    data, lines = read_yaml(path)
    data, paths = _apply(data, overrides)
    in_file = set(lines)
    for key in paths:  # problems with overridden keys point at the command line
        for known in [k for k in lines if k[: len(key)] == key]:
            del lines[known]
        lines[key] = COMMAND_LINE
        # So do problems with a section the file lacks and an override created.
        for depth in range(1, len(key)):
            if key[:depth] not in in_file:
                lines.setdefault(key[:depth], COMMAND_LINE)
    return validate(data, lines, str(path), registry, provided_before=provided_before)
