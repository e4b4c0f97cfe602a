"""The docs keep up with the code: every hook and built-in is documented, examples run.

Every code block of docs/plugins.md is a file, named by a marker comment just above it:
``<!-- example: PATH -->`` (the block is the whole file) or ``<!-- excerpt: PATH -->`` (the block
is a run of whole lines of the file). The files under docs/examples are exercised below: the
example plugin is pip-installed into a temporary folder, the Python files run, and ``.console``
files (``$ command`` lines, each followed by lines its output must contain in that order, ``...``
standing for anything) are replayed.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aesampler
from aesampler import hookspecs
from aesampler.cli import main
from aesampler.plugins import DISABLE_ENV, load_registry, reset_registry, set_builtins_only

from .conftest import tiny_chain_parts

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PLUGINS_MD = (DOCS / "plugins.md").read_text()

MARKED_BLOCK = re.compile(
    r"^(?P<indent> *)<!-- (?P<how>example|excerpt): (?P<path>\S+) -->\n"
    r"(?P=indent)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```$",
    re.M | re.S,
)
FENCE = re.compile(r"^( *)```[\w-]*\n.*?^\1```$", re.M | re.S)


def marked_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(how, path, body)`` of every marked block, the body without the block's indentation."""
    blocks = []
    for match in MARKED_BLOCK.finditer(text):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        blocks.append((match["how"], match["path"], body))
    return blocks


BLOCKS = marked_blocks(PLUGINS_MD)


@pytest.mark.parametrize("hook", sorted(hookspecs.KIND_HOOKS.values()))
def test_every_hook_is_documented(hook):
    assert f"### `{hook}(register)`" in PLUGINS_MD


def _hook_section(hook: str) -> str:
    section = PLUGINS_MD.split(f"### `{hook}(register)`")[1]
    return re.split(r"^#{1,3} ", section, flags=re.M)[0]


def test_every_builtin_is_documented_under_its_hook():
    for component in load_registry():
        if component.distribution == "aesampler":
            section = _hook_section(hookspecs.KIND_HOOKS[component.kind])
            assert f"`{component.name}`" in section, component.name


def test_every_code_block_is_a_marked_file():
    fences = FENCE.findall(PLUGINS_MD)
    assert len(fences) == len(BLOCKS), "a code block in docs/plugins.md has no example marker"
    assert not re.search(r"\n\n {4}\S", FENCE.sub("", PLUGINS_MD)), (
        "docs/plugins.md has an indented code block: make it a marked fenced block"
    )


@pytest.mark.parametrize(("how", "path", "body"), BLOCKS, ids=[b[1] for b in BLOCKS])
def test_docs_show_the_files_exactly(how, path, body):
    text = (ROOT / path).read_text()
    if how == "example":
        assert body == text, f"docs/plugins.md does not show {path} as it is"
    else:
        lines = text.splitlines(keepends=True)
        wanted = body.splitlines(keepends=True)
        assert any(lines[i : i + len(wanted)] == wanted for i in range(len(lines))), (
            f"docs/plugins.md shows lines that are not in {path}"
        )


def _example_files() -> set[str]:
    ignored = ("__pycache__", ".egg-info", "/build/")
    return {
        str(p.relative_to(ROOT))
        for p in EXAMPLES.rglob("*")
        if p.is_file() and not any(part in str(p) for part in ignored)
    }


#: Every file under docs/examples and the test that makes it work.
EXERCISED = {
    "docs/examples/flip_plugin/pyproject.toml": "test_flip_plugin_installs_and_registers",
    "docs/examples/flip_plugin/aesampler_flip/__init__.py": "test_flip_plugin_installs_and_registers",
    "docs/examples/flip_install.console": "test_flip_plugin_installs_and_registers",
    "docs/examples/use_flip.py": "test_flip_plugin_installs_and_registers",
    "docs/examples/saltpepper.console": "test_saltpepper_session",
    "docs/examples/switch_off.console": "test_switching_plugins_off_session",
    "docs/examples/thinned_transition.py": "test_example_transition_is_built_from_a_recipe",
    "docs/examples/thinned_chain.yaml": "test_example_transition_is_built_from_a_recipe",
    "docs/examples/norm_gap_metric.py": "test_example_metric",
    "docs/examples/provenance.py": "test_provenance_example",
    "docs/examples/script_plugin.py": "test_script_plugin_example",
}


def test_every_example_file_is_shown_and_exercised():
    shown = {path for how, path, _ in BLOCKS if how == "example" and path.startswith("docs/")}
    assert _example_files() == shown == set(EXERCISED)
    for test in set(EXERCISED.values()):
        assert callable(globals().get(test)), test


# --- running the examples -----------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary install target on sys.path; the registry and imports are undone afterwards."""
    target = tmp_path / "site"
    target.mkdir()
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    modules = set(sys.modules)
    reset_registry()
    yield target
    set_builtins_only(False)
    reset_registry()
    for name in set(sys.modules) - modules:
        module = sys.modules[name]
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def pip_install(source: Path, target: Path) -> None:
    """``pip install source``, into ``target`` instead of the environment, offline.

    The source is copied first so that the build leaves nothing in the repository.
    """
    copy = target.parent / "src" / source.name
    shutil.copytree(
        source, copy, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    importlib.invalidate_caches()
    reset_registry()


def _line_pattern(expected: str) -> re.Pattern:
    pieces = " ".join(expected.split()).split("...")
    return re.compile(".*".join(map(re.escape, pieces)) + r"\Z")


def replay(console: Path, cwd: Path, target: Path, monkeypatch, capsys) -> None:
    """Run each ``$`` line of a console file and check the output lines shown under it."""
    sessions: list[tuple[str, list[str]]] = []
    for line in console.read_text().splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
        else:
            sessions[-1][1].append(line)
    monkeypatch.chdir(cwd)
    for command, expected in sessions:
        words = shlex.split(command)
        with monkeypatch.context() as env:
            while "=" in words[0]:
                key, value = words.pop(0).split("=", 1)
                env.setenv(key, value)
            if words[:2] == ["pip", "install"]:
                [source] = [w for w in words[2:] if w != "-e"]  # -e: same package, linked
                pip_install(cwd / source, target)
            elif words[0] == "aesampler":
                main(words[1:])
            elif words[0] == "python":
                runpy.run_path(words[1], run_name="__main__")
            else:
                raise AssertionError(f"{console.name}: cannot replay {command!r}")
        captured = capsys.readouterr()
        output = [" ".join(line.split()) for line in (captured.out + captured.err).splitlines()]
        position = 0
        for wanted in (line for line in expected if line.strip() != "..."):
            pattern = _line_pattern(wanted)
            while position < len(output) and not pattern.match(output[position]):
                position += 1
            assert position < len(output), (
                f"{console.name}: {command!r} did not print {wanted!r}; it printed:\n"
                + "\n".join(output)
            )
            position += 1


def test_flip_plugin_installs_and_registers(sandbox, monkeypatch, capsys):
    replay(EXAMPLES / "flip_install.console", EXAMPLES, sandbox, monkeypatch, capsys)
    assert (sandbox / "aesampler_flip" / "__init__.py").is_file()
    registry = load_registry()
    flip = registry.get("corruption", "flip")
    assert (flip.distribution, flip.version, flip.plugin) == ("aesampler-flip", "0.1.0", "flip")
    assert flip.factory.__module__ == "aesampler_flip"
    x = torch.rand(2, 3)
    assert torch.equal(registry.create("corruption", "flip", p=1.0)(x), 1 - x)


def test_saltpepper_session(sandbox, monkeypatch, capsys):
    replay(EXAMPLES / "saltpepper.console", ROOT, sandbox, monkeypatch, capsys)


def test_switching_plugins_off_session(sandbox, monkeypatch, capsys):
    replay(EXAMPLES / "switch_off.console", ROOT, sandbox, monkeypatch, capsys)


def _example_module(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_transition_is_built_from_a_recipe(tmp_path):
    from aesampler.recipe import load_recipe
    from aesampler.training import train
    from aesampler.workflow import build_components

    plugin = _example_module("thinned_transition")
    registry = load_registry(extra_plugins=[("thinned", plugin)])
    assert registry.get("transition", "thinned_dce").description.startswith("Decode-corrupt-encode")

    # The contract, against the built-in operator: 3 moves are 3 steps of the paper's chain.
    encoder, decoder = tiny_chain_parts(stochastic=True)
    noise = aesampler.GaussianCorruption(0.2)
    thinned = registry.create(
        "transition", "thinned_dce", encoder=encoder, decoder=decoder, corruption=noise, moves=3
    )
    single = aesampler.DecodeCorruptEncode(encoder, decoder, noise)
    thinned.eval()
    z0 = torch.randn(5, 4)
    out = thinned(z0, generator=torch.Generator().manual_seed(3))
    generator, z = torch.Generator().manual_seed(3), z0
    for _ in range(3):
        z = single(z, generator=generator).z
    assert torch.equal(out.z, z)
    assert torch.equal(out.x, decoder(z0))
    with pytest.raises(aesampler.ComponentError, match="moves must be at least 1"):
        registry.create("transition", "thinned_dce", encoder=encoder, decoder=decoder, moves=0)

    # From the recipe: validated, trained briefly, and sampled with the plugin's transition.
    tiny = [f"output.dir={tmp_path / 'run'}", "train.max_steps=2"]
    recipe = load_recipe(EXAMPLES / "thinned_chain.yaml", tiny, registry=registry)
    assert recipe.sampling.transition.params == {"moves": 3}
    with pytest.raises(aesampler.AesamplerError, match="Did you mean 'moves'"):
        load_recipe(
            EXAMPLES / "thinned_chain.yaml",
            [*tiny, "sampling.transition.moevs=2"],
            registry=registry,
        )
    train(recipe, registry=registry, progress=False, log=lambda message: None)
    parts = build_components(recipe, registry=registry)
    assert isinstance(parts.chain.transition, plugin.ThinnedDecodeCorruptEncode)
    assert parts.chain.transition.moves == 3
    result = parts.chain.run(n=recipe.sampling.num_chains, steps=recipe.sampling.steps, seed=0)
    assert result.x[recipe.sampling.steps].shape == (16, 1, 8, 8)


def test_example_metric():
    from aesampler.evaluation import Estimate, EvaluationData
    from aesampler.recipe.loader import validate

    plugin = _example_module("norm_gap_metric")
    registry = load_registry(extra_plugins=[("norm-gap", plugin)])
    metric = registry.create("metric", "norm_gap", order=1)
    rng = np.random.default_rng(0)
    data = EvaluationData(
        z={0: rng.normal(size=(60, 4)), 1: rng.normal(size=(60, 4)) * 0.5},
        images={},
        features=lambda step: np.zeros((60, 1)),
        reference_z=rng.normal(size=(80, 4)),
        prior_z=rng.normal(size=(80, 4)),
        reference_features=np.zeros((80, 1)),
        train_images=np.zeros((10, 1)),
        resamples=50,
    )
    near, far = metric.compute(data, 0)["norm_gap"], metric.compute(data, 1)["norm_gap"]
    assert isinstance(near, Estimate)
    for estimate in (near, far):
        assert 0 <= estimate.low <= estimate.value <= estimate.high
    assert far.value > near.value  # the shrunken latents are further from the data's norms
    with pytest.raises(aesampler.ComponentError, match="order must be positive"):
        registry.create("metric", "norm_gap", order=0)
    recipe = {
        "model": {"name": "aae"},
        "data": {"name": "digits"},
        "evaluate": {"metrics": ["frechet", {"name": "norm_gap", "order": 1}]},
        "output": {"dir": "unused"},
    }
    assert validate(recipe, registry=registry).evaluate.metrics[1].params == {"order": 1}


def test_provenance_example(sandbox, capsys):
    runpy.run_path(str(EXAMPLES / "provenance.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "aesampler"
    assert printed[1].startswith(
        "unknown corruption 'blur'. It was provided last time by aesampler-blur 0.3.0, which is "
        "not installed now. Registered corruptions: gaussian (aesampler), identity (aesampler)"
    )


def test_script_plugin_example(capsys):
    namespace = runpy.run_path(str(EXAMPLES / "script_plugin.py"), run_name="__main__")
    assert capsys.readouterr().out == "<direct>\n"
    assert namespace["dropout"].p == 0.5
    x = torch.ones(1000)
    dropped = namespace["dropout"](x, generator=torch.Generator().manual_seed(0))
    assert 0.4 < (dropped == 0).float().mean() < 0.6 and torch.equal(x, torch.ones(1000))


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
