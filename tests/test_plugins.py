from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

import aesampler
from aesampler import ComponentError, PluginLoadWarning, UnknownComponentError, hookspecs, kinds
from aesampler.cli import main
from aesampler.plugins import (
    DISABLE_ENV,
    PluginSettingWarning,
    get_registry,
    load_registry,
    reset_registry,
    set_builtins_only,
)
from aesampler.registry import Registry

from . import fake_dist


@pytest.fixture(autouse=True)
def plugin_settings(monkeypatch):
    """No switched-off plugins from the outside, and a fresh process-wide registry afterwards."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    reset_registry()
    yield
    set_builtins_only(False)
    reset_registry()


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install fake third-party distributions for one test, with unique module names.

    ``third_party(dist_name, version="1.0", key=source, ...)`` returns the entry-point names by
    key; ``third_party.modules`` maps each key to its module name.
    """
    created: list[str] = []

    def install(dist_name: str, version: str = "1.0", **plugins: str) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        modules = {f"{key}_{suffix}": source for key, source in plugins.items()}
        entry_points = {f"{dist_name}.{key}": f"{key}_{suffix}" for key in plugins}
        root = fake_dist.make_distribution(
            tmp_path / dist_name, dist_name, modules, entry_points, version=version
        )
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        created.extend(modules)
        install.modules.update({key: f"{key}_{suffix}" for key in plugins})
        return {key: f"{dist_name}.{key}" for key in plugins}

    install.modules = {}
    yield install
    for module in created:
        sys.modules.pop(module, None)


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
    assert Registry().kinds == [kind.name for kind in kinds.KINDS] == list(hookspecs.KIND_HOOKS)
    for kind in kinds.KINDS:
        assert hookspecs.KIND_HOOKS[kind.name] == kind.hook
        spec = getattr(hookspecs, kind.hook)
        assert len((spec.__doc__ or "").strip()) > 80, kind.hook


def test_the_hook_specifications_are_exactly_the_kinds_hooks():
    specified = {
        name
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")
    }
    assert specified == {kind.hook for kind in kinds.KINDS}
    hookspecs.check_kinds_have_hooks()  # what importing hookspecs does


def test_a_kind_without_its_hook_specification_is_refused_at_import(monkeypatch):
    extra = kinds.Kind("scheduler", "register_schedulers", "aesampler.Transition")
    monkeypatch.setitem(hookspecs.KIND_HOOKS, extra.name, extra.hook)
    with pytest.raises(
        RuntimeError, match=r"kinds without a hook specification: \['register_schedulers'\]"
    ):
        hookspecs.check_kinds_have_hooks()


def test_every_kinds_interface_resolves_and_builtin_classes_implement_it():
    registry = load_registry()
    for kind in kinds.KINDS:
        base = kind.base_class()
        assert isinstance(base, type), kind.name
        assert kind.base.startswith("aesampler."), kind.name
        for component in registry:
            if component.kind == kind.name and isinstance(component.factory, type):
                assert issubclass(component.factory, base), (kind.name, component.name)


def test_reading_the_table_of_kinds_imports_nothing_heavy():
    code = (
        "import sys, aesampler.kinds, aesampler.hookspecs; "
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # aesampler's package __init__ imports torch; the table itself adds nothing beyond it.
    assert "scipy" not in done.stdout and "sklearn" not in done.stdout
    assert "matplotlib" not in done.stdout


#: What listing the plugins or validating a recipe must not import (issue #10: the evaluation
#: stack and the samplers' fitting libraries cost seconds of start-up; torchvision imports its
#: model zoo and torch._dynamo).
HEAVY_MODULES = ("sklearn", "scipy", "matplotlib", "arviz_stats", "zuko", "mlxtend", "torchvision")


def test_listing_plugins_and_validating_recipes_import_nothing_heavy():
    # A fresh interpreter: this test process has imported everything already. The recipes build
    # every built_once component (samplers_mnist5k builds each start sampler, ratio_corrected's
    # proposal through the registry) and `plugins --json` reads every factory's parameters.
    code = (
        "import json, sys\n"
        "from aesampler.cli import main\n"
        "codes = [main(['plugins', '--json']),\n"
        "         main(['validate', 'recipes/quickstart.yaml']),\n"
        "         main(['validate', 'recipes/samplers_mnist5k.yaml'])]\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}), file=sys.stderr)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0], "heavy": []}


def test_the_sampler_builtins_come_through_their_entry_point():
    from aesampler.samplers import (
        AAEDiscriminator,
        EncodingsSampler,
        ExPostGMM,
        LatentFlow,
        LocalGlobal,
        PosteriorMixture,
        PriorSampler,
        RatioCorrected,
    )

    registry = load_registry()
    expected = {
        "prior": PriorSampler,
        "encodings": EncodingsSampler,
        "ex_post_gmm": ExPostGMM,
        "latent_flow": LatentFlow,
        "ratio_corrected": RatioCorrected,
        "aae_discriminator": AAEDiscriminator,
        "local_global": LocalGlobal,
        "posterior_mixture": PosteriorMixture,
    }
    assert registry.names("sampler") == sorted(expected)
    for name, factory in expected.items():
        component = registry.get("sampler", name)
        assert component.factory is factory
        assert (component.distribution, component.plugin) == ("aesampler", "aesampler.samplers")
    assert registry.create("sampler", "ex_post_gmm", components=3).components == 3


def test_the_docs_table_of_kinds_is_the_table():
    text = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    table = text.split("## Kinds of component")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == [f"`{kind.name}`" for kind in kinds.KINDS]
    for kind, row in zip(kinds.KINDS, cells):
        assert row[1] == f"[`{kind.hook}`](#{kind.hook}register)", kind.name  # the heading
        assert row[2] == f"`{kind.base}`", kind.name
        for path in kind.sections:
            assert f"`{'.'.join(path)}`" in row[3], (kind.name, path)
        for path in kind.lists:
            assert f"`{'.'.join(path)}` (a list)" in row[3], (kind.name, path)
        for key in (*kind.provided, *kind.reserved):
            assert f"`{key}`" in row[4], (kind.name, key)
        assert (row[5] == "yes") == kind.built_once, kind.name


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
    with pytest.raises(ComponentError, match="unknown component kind 'no_such_kind'"):
        registry.add("no_such_kind", "x", object, distribution="d", plugin="p")


# --- issue #8: plugins cannot take the tool down ----------------------------------------------


def test_a_plugin_that_exits_at_import_is_a_failure_not_an_exit(third_party):
    names = third_party("aesampler-exits", exits=fake_dist.EXITS_AT_IMPORT, good=fake_dist.GOOD)
    with pytest.warns(PluginLoadWarning, match="aesampler-exits.*SystemExit") as warned:
        registry = load_registry()
    assert len(warned) == 1
    [failure] = registry.failures
    assert (failure.plugin, failure.distribution) == (names["exits"], "aesampler-exits")
    assert "SystemExit: 0" in failure.message
    assert registry.get("corruption", "flip").distribution == "aesampler-exits"


def test_base_exceptions_raised_in_hooks_are_failures(third_party):
    third_party(
        "aesampler-odd", exit_hook=fake_dist.EXITS_IN_HOOK, odd=fake_dist.CUSTOM_BASE_EXCEPTION
    )
    with pytest.warns(PluginLoadWarning):
        registry = load_registry()
    messages = {f.plugin.split(".")[-1]: f.message for f in registry.failures}
    assert "register_corruptions raised SystemExit: 0" in messages["exit_hook"]
    assert "register_metrics raised Odd: not an Exception" in messages["odd"]
    assert registry.get("corruption", "gaussian").distribution == "aesampler"


def test_ctrl_c_while_loading_still_stops(third_party):
    third_party("aesampler-ctrlc", ctrlc=fake_dist.INTERRUPTED_AT_IMPORT)
    with pytest.raises(KeyboardInterrupt):
        load_registry()


def test_the_cli_reports_a_plugin_that_exits_instead_of_exiting(third_party, capsys):
    third_party("aesampler-exits", exits=fake_dist.EXITS_AT_IMPORT)
    with pytest.warns(PluginLoadWarning):
        status = main(["plugins"])
    assert status == 1
    err = capsys.readouterr().err
    assert (
        "aesampler: broken plugin 'aesampler-exits.exits' from distribution 'aesampler-exits'"
        in err
    )
    assert "SystemExit" in err


# --- switching plugins off ----------------------------------------------------------------------


def _traced(third_party, tmp_path, monkeypatch):
    trace = tmp_path / "imported.txt"
    monkeypatch.setenv("AESAMPLER_TEST_TRACE", str(trace))
    a = third_party("aesampler-traced-a", a=fake_dist.IMPORT_TRACE)
    bc = third_party("aesampler-traced-b", b=fake_dist.IMPORT_TRACE, c=fake_dist.IMPORT_TRACE)
    return trace, {**a, **bc}


def _imported(trace) -> list[str]:
    return trace.read_text().split() if trace.exists() else []


def test_switched_off_plugins_are_never_imported(third_party, tmp_path, monkeypatch):
    trace, names = _traced(third_party, tmp_path, monkeypatch)
    # an entry-point name, and a distribution name spelled with '_' as pip would accept it
    monkeypatch.setenv(DISABLE_ENV, f" {names['a']} , aesampler_traced_b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: every name matched
        registry = load_registry()
    assert _imported(trace) == []
    assert not [n for n in registry.names("corruption") if n.startswith("traced")]
    assert registry.failures == []
    assert sorted((d.plugin, d.distribution) for d in registry.disabled) == [
        (names["a"], "aesampler-traced-a"),
        (names["b"], "aesampler-traced-b"),
        (names["c"], "aesampler-traced-b"),
    ]
    assert {d.reason for d in registry.disabled} == {f"switched off by {DISABLE_ENV}"}


def test_one_entry_point_of_a_distribution_can_be_switched_off(third_party, tmp_path, monkeypatch):
    trace, names = _traced(third_party, tmp_path, monkeypatch)
    registry = load_registry(disable=[names["b"]])
    assert sorted(_imported(trace)) == sorted([third_party.modules["a"], third_party.modules["c"]])
    assert [d.plugin for d in registry.disabled] == [names["b"]]


def test_unknown_names_to_switch_off_are_a_warning_not_an_error(third_party, tmp_path, monkeypatch):
    trace, names = _traced(third_party, tmp_path, monkeypatch)
    monkeypatch.setenv(DISABLE_ENV, "aesampler-no-such,aesampler-traced-a")
    with pytest.warns(
        PluginSettingWarning, match="names no installed plugin.*'aesampler-no-such'"
    ) as warned:
        registry = load_registry()
    assert "aesampler-traced-a" not in str(warned[0].message).split(":")[2]
    assert [d.plugin for d in registry.disabled] == [names["a"]]
    assert len(_imported(trace)) == 2


def test_builtins_only_skips_every_third_party_plugin(third_party, tmp_path, monkeypatch):
    trace, names = _traced(third_party, tmp_path, monkeypatch)
    registry = load_registry(builtins_only=True)
    assert _imported(trace) == []
    assert {c.distribution for c in registry} == {"aesampler"}
    assert set(names.values()) <= {d.plugin for d in registry.disabled}
    assert "gaussian" in registry.names("corruption")


def test_get_registry_follows_the_switches(third_party, monkeypatch):
    third_party("aesampler-flip", good=fake_dist.GOOD)
    assert "flip" in get_registry().names("corruption")
    monkeypatch.setenv(DISABLE_ENV, "aesampler-flip")
    assert "flip" not in get_registry().names("corruption")
    monkeypatch.delenv(DISABLE_ENV)
    assert "flip" in get_registry().names("corruption")
    set_builtins_only(True)
    assert "flip" not in get_registry().names("corruption")


def test_no_plugins_flag_loads_only_builtins(third_party, capsys):
    third_party("aesampler-flip", good=fake_dist.GOOD)
    assert main(["--no-plugins", "plugins", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {c["distribution"] for c in payload["components"]} == {"aesampler"}
    assert main(["plugins", "--json"]) == 0  # the flag holds for one command only
    payload = json.loads(capsys.readouterr().out)
    assert "aesampler-flip" in {c["distribution"] for c in payload["components"]}


# --- all or nothing, through pluggy ---------------------------------------------------------------


def test_a_plugin_whose_second_hook_fails_keeps_none_of_its_components(third_party):
    third_party(
        "aesampler-half", half=fake_dist.SECOND_HOOK_FAILS, clash=fake_dist.SECOND_HOOK_CLASHES
    )
    with pytest.warns(PluginLoadWarning):
        registry = load_registry()
    messages = {f.plugin.split(".")[-1]: f.message for f in registry.failures}
    assert "register_transitions raised RuntimeError: second hook breaks" in messages["half"]
    assert "corruption 'half_noise'" in messages["half"]
    assert "registered twice" in messages["clash"]
    assert "corruption 'clash_noise'" in messages["clash"]
    corruptions = registry.names("corruption")
    assert "half_noise" not in corruptions and "clash_noise" not in corruptions
    assert registry.get("transition", "decode_corrupt_encode").distribution == "aesampler"


def test_hooks_run_through_pluggy_with_wrappers_and_ordering(third_party):
    third_party("aesampler-wrapped", wrapped=fake_dist.WRAPPED)
    registry = load_registry()
    calls = sys.modules[third_party.modules["wrapped"]].CALLS
    assert calls == ["before", "first", "second", "after"]
    assert {"wrapped_first", "wrapped_second"} <= set(registry.names("corruption"))


# A hook no aesampler has (yet): register_samplers, the earlier example, is a real hook now.
FUTURE_HOOK = """
    import aesampler

    @aesampler.hookimpl(optionalhook=True)
    def register_schedulers(register):
        register("never_called", object)

    @aesampler.hookimpl
    def register_corruptions(register):
        register("future_proof", aesampler.IdentityCorruption)
"""


def test_an_optional_hook_from_a_later_version_does_not_fail_the_plugin(third_party):
    third_party("aesampler-future", future=FUTURE_HOOK)
    registry = load_registry()  # a PluginLoadWarning would fail the test
    assert registry.get("corruption", "future_proof").distribution == "aesampler-future"
    assert "never_called" not in {c.name for c in registry}


def test_a_plugin_registers_a_sampler(third_party):
    third_party(
        "aesampler-halfprior",
        half="""
        import aesampler
        from aesampler.samplers import PriorSampler

        class HalfPrior(PriorSampler):
            '''The prior, shrunk by half.'''

            def sample(self, n, generator=None):
                return 0.5 * super().sample(n, generator)

        @aesampler.hookimpl
        def register_samplers(register):
            register("half_prior", HalfPrior)
        """,
    )
    registry = load_registry()
    component = registry.get("sampler", "half_prior")
    assert (component.distribution, component.description) == (
        "aesampler-halfprior",
        "The prior, shrunk by half.",
    )


# --- provenance --------------------------------------------------------------------------------


def test_components_record_their_distribution_version(third_party):
    names = third_party("aesampler-flip", version="2.3.1", good=fake_dist.GOOD)
    registry = load_registry()
    assert registry.get("corruption", "flip").version == "2.3.1"
    assert registry.get("corruption", "gaussian").version == aesampler.__version__
    assert registry.provenance([("corruption", "flip")]) == {
        "corruption": {
            "flip": {"distribution": "aesampler-flip", "version": "2.3.1", "plugin": names["good"]}
        }
    }
    everything = json.loads(json.dumps(registry.provenance()))  # plain data
    assert everything["transition"]["decode_corrupt_encode"]["distribution"] == "aesampler"
    assert sum(map(len, everything.values())) == len(list(registry))
    with pytest.raises(UnknownComponentError, match="unknown corruption 'nope'"):
        registry.provenance([("corruption", "nope")])
    direct = load_registry(
        extra_plugins=[("script", fake_dist_module(fake_dist.GOOD))], disable=["aesampler-flip"]
    )
    assert direct.get("corruption", "flip").provenance() == {
        "distribution": "<direct>",
        "version": None,
        "plugin": "script",
    }


def fake_dist_module(source: str):
    import textwrap
    import types

    module = types.ModuleType("direct_plugin")
    exec(textwrap.dedent(source), module.__dict__)
    return module


def _last_time(distribution: str, plugin: str = "salt", version: str | None = "0.1.0") -> dict:
    entry = {"distribution": distribution, "version": version, "plugin": plugin}
    return {"corruption": {"salt": entry}}


def _why_missing(registry: Registry, last: object) -> str:
    with pytest.raises(UnknownComponentError) as error:
        registry.get("corruption", "salt", provided_before=last)
    return str(error.value)


def test_a_missing_component_is_explained_by_what_provided_it_last_time(third_party, monkeypatch):
    registry = load_registry()
    assert _why_missing(registry, _last_time("aesampler-salt")).startswith(
        "unknown corruption 'salt'. It was provided last time by aesampler-salt 0.1.0, "
        "which is not installed now. Registered corruptions: gaussian (aesampler)"
    )
    plain = _why_missing(registry, None)
    assert "last time" not in plain
    for malformed in ({"corruption": "x"}, {"corruption": {"salt": 3}}, [], {"model": {}}):
        assert _why_missing(registry, malformed) == plain
    message = _why_missing(registry, _last_time("<direct>", plugin="my-plugin", version=None))
    assert "provided last time by plugin 'my-plugin', passed directly" in message

    names = third_party("aesampler-salt", salt=fake_dist.BROKEN_IMPORT)
    third_party("aesampler-flip", good=fake_dist.GOOD)
    with pytest.warns(PluginLoadWarning):
        registry = load_registry()
    message = _why_missing(registry, _last_time("aesampler-salt", plugin=names["salt"]))
    assert (
        "It was provided last time by aesampler-salt 0.1.0, which failed to load now: import of"
        in message
    )
    assert "ModuleNotFoundError" in message

    monkeypatch.setenv(DISABLE_ENV, "aesampler-salt")
    registry = load_registry()
    monkeypatch.delenv(DISABLE_ENV)
    assert (
        "aesampler-salt 0.1.0, which is switched off now (switched off by AESAMPLER_DISABLE_PLUGINS)"
        in _why_missing(registry, _last_time("aesampler-salt"))
    )
    assert (
        "It was provided last time by aesampler-flip 0.9, which is installed now (version 1.0) "
        "but no longer provides it."
        in _why_missing(registry, _last_time("aesampler-flip", version="0.9"))
    )


def test_a_second_plugin_of_the_same_name_fails_and_the_first_stays(tmp_path, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    other = """
        import aesampler

        @aesampler.hookimpl
        def register_corruptions(register):
            register("other_flip", aesampler.IdentityCorruption)
    """
    for dist, source in (("aesampler-one", fake_dist.GOOD), ("aesampler-two", other)):
        module = f"{dist.replace('-', '_')}_{suffix}"
        root = fake_dist.make_distribution(
            tmp_path / dist, dist, {module: source}, {"same": module}
        )
        monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    with pytest.warns(PluginLoadWarning, match="already registered as 'same'"):
        registry = load_registry()
    [failure] = registry.failures
    assert failure.distribution == "aesampler-two"
    assert "(from 'aesampler-one')" in failure.message
    assert registry.get("corruption", "flip").distribution == "aesampler-one"
    assert "other_flip" not in registry.names("corruption")


def test_remove_takes_a_component_out():
    registry = Registry()
    registry.add("corruption", "gone", aesampler.IdentityCorruption, distribution="d", plugin="p")
    assert registry.remove("corruption", "gone").name == "gone"
    assert registry.names("corruption") == []
    with pytest.raises(UnknownComponentError):
        registry.remove("corruption", "gone")
