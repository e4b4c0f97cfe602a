"""Mutated recipes: `aesampler validate` accepts them or reports them, and never crashes.

Each example starts from a shipped recipe, changes values (types, sizes, nesting), keys, adds
anchors, aliases and alias bombs, breaks the encoding with raw bytes, adds overrides, and runs
the command line's ``main`` in this process: it must return 0 or 2, print one error without a
traceback, and finish within a couple of seconds.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aesampler.cli import main

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").rglob("*.yaml"))
SOURCES = [yaml.safe_load(path.read_text()) for path in RECIPES]
SECONDS = 10.0  # per example: a guard against blow-ups; a valid recipe takes milliseconds

SPECIAL_NUMBERS = [0, -1, 1, 7, 33, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**100, 1e23, -0.0]
TRICKY_TEXT = ["nan", "inf", "-inf", ".nan", ".inf", "1e23", "3", "true", "yes", "", "~", "null"]

scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(),
    st.sampled_from(TRICKY_TEXT),
    st.text(max_size=12),
)
keys = st.one_of(st.text(max_size=10), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)
deep_lists = st.integers(1, 400).map(lambda n: _nest(n))
# Keys the recipes use, so that overrides often land on something real.
KNOWN_KEYS = sorted(
    {
        *(
            f"{s}.{k}"
            for source in SOURCES
            for s, v in source.items()
            if isinstance(v, dict)
            for k in v
        ),
        "evaluate.metrics.0.k",
        "evaluate.metrics.4.k",
        "evaluate.metrics.9",
        "evaluate.steps.0",
        "evaluate.feature_extractor.epochs",
        "sampling.transition.sample",
        "train.betas.1",
        "model",
        "corruption",
    }
)


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _walk(data: st.DataObject, node: Any) -> tuple[Any, Any]:
    """A random (container, key) inside ``node``; the container is a dict or a list."""
    parent, key = None, None
    while isinstance(node, (dict, list)) and node:
        options = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(options))
        parent = node
        if not data.draw(st.booleans()):
            break
        node = node[key]
    return parent, key


def _mutate_data(data: st.DataObject, recipe: dict) -> None:
    for _ in range(data.draw(st.integers(0, 4))):
        parent, key = _walk(data, recipe)
        if parent is None:
            continue
        action = data.draw(st.sampled_from(["replace", "deep", "add", "delete"]))
        if action == "replace":
            parent[key] = data.draw(values)
        elif action == "deep":
            parent[key] = data.draw(deep_lists)
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(keys)] = data.draw(values)
        elif action == "add":
            parent.append(data.draw(values))
        elif isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)


def _alias_bomb(levels: int) -> str:
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _mutate_text(data: st.DataObject, text: str) -> bytes:
    action = data.draw(
        st.sampled_from(["none", "alias", "merge", "bomb", "deep", "bytes", "cut", "repeat"])
    )
    if action == "alias":  # an anchored section, used again under another key
        anchor = data.draw(st.sampled_from(["model", "data", "corruption", "train", "sampling"]))
        text = text.replace(f"\n{anchor}:", f"\n{anchor}: &a", 1) + "extra: *a\n"
        if data.draw(st.booleans()):
            text = text.replace("\nextra: *a\n", "\nsampling:\n  corruption: *a\n")
    elif action == "merge":
        text = "base: &base {name: gaussian, sigma: 0.5}\n" + text + "corruption: {<<: *base}\n"
    elif action == "bomb":
        levels = data.draw(st.integers(1, 12))
        where = data.draw(st.sampled_from(["extra", "model", "train"]))
        text += f"{where}:\n{_alias_bomb(levels)}"
    elif action == "deep":
        depth = data.draw(st.integers(50, 5000))
        opening, closing = data.draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        text += f"extra: {opening * depth}1{closing * depth}\n"
    raw = text.encode()
    if action == "bytes":
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif action == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif action == "repeat":  # a line twice: often a duplicate key
        lines = raw.splitlines(keepends=True)
        at = data.draw(st.integers(0, len(lines) - 1))
        raw = b"".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])
    return raw


def _override_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


overrides = st.builds(
    lambda key, value: f"{key}={value}",
    st.one_of(
        st.sampled_from(KNOWN_KEYS),
        st.text("abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=20).filter(
            lambda k: not k.startswith("-")
        ),
    ),
    st.one_of(values.map(_override_value), st.text(max_size=20)),
)


@pytest.fixture(scope="module")
def warm():
    """Load the plugins and import what validation imports, once, outside the timed part."""
    assert main(["validate", str(RECIPES[0])]) == 0


@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_validate_accepts_or_reports_every_mutated_recipe(data, tmp_path, capsys, warm):
    recipe = copy.deepcopy(data.draw(st.sampled_from(SOURCES)))
    _mutate_data(data, recipe)
    raw = _mutate_text(data, yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(raw)
    argv = ["validate", str(path), *data.draw(st.lists(overrides, max_size=2))]
    capsys.readouterr()
    started = time.perf_counter()
    status = main(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert status in (0, 2), err
    assert "Traceback" not in err
    if status == 2:
        assert err.startswith("aesampler: error: "), err
    assert seconds < SECONDS, f"validate took {seconds:.2f}s"
