"""The docs keep up with the code: every hook and built-in is documented, examples run."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

import aesampler
from aesampler import hookspecs
from aesampler.plugins import load_registry

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLUGINS_MD = (DOCS / "plugins.md").read_text()


@pytest.mark.parametrize("hook", sorted(hookspecs.KIND_HOOKS.values()))
def test_every_hook_is_documented(hook):
    assert f"### `{hook}(register)`" in PLUGINS_MD


def test_every_builtin_is_documented_under_its_hook():
    for component in load_registry():
        if component.distribution == "aesampler":
            section = PLUGINS_MD.split(f"### `{hookspecs.KIND_HOOKS[component.kind]}(register)`")[1]
            section = section.split("###")[0]
            assert f"`{component.name}`" in section, component.name


def test_plugin_example_registers_and_works():
    source = re.search(r"```python\n( *# aesampler_flip/__init__.py.*?)```", PLUGINS_MD, re.S)
    assert source, "docs/plugins.md lost its example plugin"
    namespace: dict = {}
    exec(compile(textwrap.dedent(source.group(1)), "docs/plugins.md", "exec"), namespace)

    class Module:  # stands in for the module that an entry point would load
        register_corruptions = staticmethod(namespace["register_corruptions"])

    registry = load_registry(extra_plugins=[("aesampler_flip", Module())])
    flip = registry.create("corruption", "flip", p=1.0)
    x = torch.rand(2, 3)
    assert torch.equal(flip(x, generator=torch.Generator()), 1 - x)
    assert registry.get("corruption", "flip").description.startswith("Flips every pixel")


def test_public_api_is_documented():
    for name in aesampler.__all__:
        obj = getattr(aesampler, name)
        if callable(obj) and not name.endswith("Error") and name[0] != "_":
            assert (obj.__doc__ or "").strip(), f"aesampler.{name} has no docstring"


def test_every_recipe_key_is_documented():
    from aesampler.recipe.loader import COMPONENT_SECTIONS
    from aesampler.recipe.schema import Recipe

    text = (DOCS / "recipes.md").read_text()
    keys = []
    for section, field in Recipe.model_fields.items():
        model = field.annotation
        fields = getattr(model, "model_fields", None)
        if fields and section not in ("model", "data", "corruption"):
            keys += [
                f"{section}.{name}" for name in fields if (section, name) not in COMPONENT_SECTIONS
            ]
    registry = load_registry()
    for path, (kind, provided) in COMPONENT_SECTIONS.items():
        prefix = ".".join(path)
        keys.append(f"{prefix}.name" if path != ("sampling", "corruption") else prefix)
        if path == ("sampling", "corruption"):
            continue  # same components as the top-level corruption section
        for component in registry:
            if component.kind == kind and component.distribution == "aesampler":
                keys += [f"{prefix}.{p}" for p in component.parameters() if p not in provided]
    keys.append("model.checkpoint")
    missing = sorted({k for k in keys if f"`{k}`" not in text})
    assert missing == []
