from __future__ import annotations

import importlib
import sys
import uuid

import pytest

import aesampler
from aesampler import ComponentError, PluginLoadWarning, UnknownComponentError, hookspecs
from aesampler.plugins import load_registry
from aesampler.registry import Registry

from . import fake_dist


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install fake third-party distributions for one test, with unique module names."""

    def install(dist_name: str, **plugins: str) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        modules = {f"{key}_{suffix}": source for key, source in plugins.items()}
        entry_points = {f"{dist_name}.{key}": f"{key}_{suffix}" for key in plugins}
        root = fake_dist.make_distribution(tmp_path / dist_name, dist_name, modules, entry_points)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        for module in modules:
            monkeypatch.delitem(sys.modules, module, raising=False)
        return {key: f"{dist_name}.{key}" for key in plugins}

    return install


def test_builtins_come_through_the_entry_point_group():
    registry = load_registry()
    assert registry.failures == []
    expected = {
        ("corruption", "gaussian"): "aesampler.corruptions",
        ("corruption", "identity"): "aesampler.corruptions",
        ("transition", "decode_corrupt_encode"): "aesampler.transitions",
    }
    for (kind, name), plugin in expected.items():
        component = registry.get(kind, name)
        assert component.distribution == "aesampler"
        assert component.plugin == plugin
    assert registry.get("corruption", "gaussian").factory is aesampler.GaussianCorruption
    assert registry.create("corruption", "gaussian", sigma=0.5).sigma == 0.5


def test_every_kind_has_a_hook_with_a_contract_docstring():
    assert set(hookspecs.KIND_HOOKS) == set(Registry(hookspecs.KIND_HOOKS).kinds)
    for hook in hookspecs.KIND_HOOKS.values():
        spec = getattr(hookspecs, hook)
        assert len((spec.__doc__ or "").strip()) > 80, hook


def test_a_good_third_party_plugin_registers_with_its_distribution(third_party):
    third_party("aesampler-flip", good=fake_dist.GOOD)
    registry = load_registry()
    flip = registry.get("corruption", "flip")
    assert flip.distribution == "aesampler-flip"
    assert flip.description == "Flips every pixel with probability p."
    corruption = registry.create("corruption", "flip", p=1.0)
    import torch

    assert torch.equal(corruption(torch.zeros(2, 2)), torch.ones(2, 2))


def test_a_broken_plugin_is_named_and_the_others_still_load(third_party):
    names = third_party("aesampler-mixed", broken=fake_dist.BROKEN_IMPORT, good=fake_dist.GOOD)
    with pytest.warns(PluginLoadWarning, match="aesampler-mixed") as warned:
        registry = load_registry()
    assert len(warned) == 1
    [failure] = registry.failures
    assert failure.plugin == names["broken"]
    assert failure.distribution == "aesampler-mixed"
    assert (
        "ModuleNotFoundError" in failure.message
        and "a_module_that_does_not_exist" in failure.message
    )
    assert registry.get("corruption", "flip").distribution == "aesampler-mixed"
    assert registry.get("corruption", "gaussian").distribution == "aesampler"
    # Asking for a missing component mentions the broken plugin too.
    with pytest.raises(UnknownComponentError, match="failed to load.*aesampler-mixed"):
        registry.get("corruption", "salt")


def test_a_misspelled_hook_is_an_error_naming_the_plugin(third_party):
    names = third_party("aesampler-typo", typo=fake_dist.MISSPELLED_HOOK)
    with pytest.warns(PluginLoadWarning, match="unknown hook 'register_corruption'"):
        registry = load_registry()
    [failure] = registry.failures
    assert (failure.plugin, failure.distribution) == (names["typo"], "aesampler-typo")
    assert "never" not in registry.names("corruption")


def test_wrong_hook_arguments_and_raising_hooks_are_reported(third_party):
    third_party("aesampler-args", wrong=fake_dist.WRONG_ARGS, raises=fake_dist.RAISES)
    with pytest.warns(PluginLoadWarning):
        registry = load_registry()
    messages = {f.plugin.split(".")[-1]: f.message for f in registry.failures}
    assert "extra" in messages["wrong"]
    assert "register_transitions raised RuntimeError: cannot register today" in messages["raises"]
    assert registry.names("transition") == ["decode_corrupt_encode"]


def test_duplicate_names_keep_the_builtin_and_name_both_distributions(third_party):
    third_party("aesampler-dup", dup=fake_dist.DUPLICATE)
    with pytest.warns(PluginLoadWarning, match="registered twice"):
        registry = load_registry()
    [failure] = registry.failures
    assert "'aesampler'" in failure.message and "'aesampler-dup'" in failure.message
    assert registry.get("corruption", "gaussian").factory is aesampler.GaussianCorruption


def test_plugins_can_be_registered_directly():
    class Plugin:
        @aesampler.hookimpl
        def register_corruptions(self, register):
            register("twice_identity", aesampler.IdentityCorruption, "An identity, for a test.")

    registry = load_registry(extra_plugins=[("script", Plugin())])
    component = registry.get("corruption", "twice_identity")
    assert (component.distribution, component.description) == (
        "<direct>",
        "An identity, for a test.",
    )


def test_unknown_names_suggest_and_list():
    registry = load_registry()
    with pytest.raises(UnknownComponentError) as error:
        registry.get("corruption", "gausian")
    message = str(error.value)
    assert "Did you mean 'gaussian'?" in message
    assert "gaussian (aesampler), identity (aesampler)" in message
    with pytest.raises(ComponentError, match="unknown component kind 'corruptions'.*'corruption'"):
        registry.get("corruptions", "gaussian")


def test_parameters_are_checked_against_the_factory():
    registry = load_registry()
    with pytest.raises(ComponentError, match=r"no parameter 'sgma'. Did you mean 'sigma'\?"):
        registry.create("corruption", "gaussian", sgma=0.5)
    with pytest.raises(ComponentError, match="rejected its parameters.*sigma must be finite"):
        registry.create("corruption", "gaussian", sigma=-1.0)
    with pytest.raises(ComponentError, match="needs parameter 'encoder', 'decoder'"):
        registry.create("transition", "decode_corrupt_encode")


def test_registration_rejects_bad_names():
    registry = Registry(hookspecs.KIND_HOOKS)
    with pytest.raises(ComponentError, match="not valid"):
        registry.add("corruption", "Salt-Pepper", object, distribution="d", plugin="p")
    with pytest.raises(ComponentError, match="unknown component kind"):
        registry.add("sampler", "x", object, distribution="d", plugin="p")
