"""The docs keep up with the code: every hook and built-in is documented, examples run.

Every code block of the pages below is a file, named by a marker comment just above it:
``<!-- example: PATH -->`` (the block is the whole file) or ``<!-- excerpt: PATH -->`` (the block
is a run of whole lines of the file). A ``text`` block that shows no code (the chain's equations)
is marked ``<!-- not code: WHAT -->`` instead. The files under docs/examples are exercised below:
the example plugin is pip-installed into a temporary folder, the Python files run, YAML recipes
are validated and used, ``.console`` files (``$ command`` lines, each followed by lines its output
must contain in that order, ``...`` standing for anything) and ``.sh`` files (commands alone) are
replayed, or checked against the parser and the recipes where they would train a full model or
need data that is not here, and the listings (layouts, the run directory, ``metrics.json``, the
command synopsis) are compared with what the code reads, writes or accepts.

Commands and snippets that use ``recipes/quickstart.yaml`` or ``runs/quickstart`` run in a
temporary folder whose ``recipes/quickstart.yaml`` is a tiny stand-in (``TINY_QUICKSTART``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
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
from PIL import Image

import aesampler
from aesampler import hookspecs
from aesampler.cli import build_parser, main
from aesampler.plugins import DISABLE_ENV, load_registry, reset_registry, set_builtins_only

from .conftest import tiny_chain_parts
from .helpers import check_own_model_example, install_my_project

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
#: The pages whose every code block is a file.
PAGES = tuple(sorted(page.name for page in DOCS.glob("*.md")))  # every page of the docs
TEXTS = {page: (DOCS / page).read_text() for page in PAGES}
PLUGINS_MD = TEXTS["plugins.md"]

MARKED_BLOCK = re.compile(
    r"^(?P<indent> *)<!-- (?P<how>example|excerpt): (?P<path>\S+) -->\n"
    r"(?P=indent)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```$",
    re.M | re.S,
)
NOT_CODE = re.compile(r"^( *)<!-- not code: [^>\n]+ -->\n\1```text\n", re.M)
FENCE = re.compile(r"^( *)```[\w-]*\n.*?^\1```$", re.M | re.S)


def marked_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(how, path, body)`` of every marked block, the body without the block's indentation."""
    blocks = []
    for match in MARKED_BLOCK.finditer(text):
        indent, lines = len(match["indent"]), match["body"].splitlines(keepends=True)
        # Up to the block's indentation from each line; an empty line may have none.
        body = "".join(line[min(indent, len(line) - len(line.lstrip(" "))) :] for line in lines)
        blocks.append((match["how"], match["path"], body))
    return blocks


#: ``(page, how, path, body)`` of every marked block of every page.
BLOCKS = [(page, *block) for page in PAGES for block in marked_blocks(TEXTS[page])]


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


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_is_a_marked_file(page):
    text = TEXTS[page]
    fences = FENCE.findall(text)
    marked = len(marked_blocks(text)) + len(NOT_CODE.findall(text))
    assert len(fences) == marked, f"a code block in docs/{page} has no example marker"
    assert not re.search(r"\n\n {4}\S", FENCE.sub("", text)), (
        f"docs/{page} has an indented code block: make it a marked fenced block"
    )


@pytest.mark.parametrize(
    ("page", "how", "path", "body"), BLOCKS, ids=[f"{b[0]}:{b[2]}" for b in BLOCKS]
)
def test_docs_show_the_files_exactly(page, how, path, body):
    text = (ROOT / path).read_text()
    if how == "example":
        assert body == text, f"docs/{page} does not show {path} as it is"
    else:
        lines = text.splitlines(keepends=True)
        wanted = body.splitlines(keepends=True)
        assert any(lines[i : i + len(wanted)] == wanted for i in range(len(lines))), (
            f"docs/{page} shows lines that are not in {path}"
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
    # plugins.md
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
    "docs/examples/diagonal_gaussian_sampler.py": "test_example_sampler",
    "docs/examples/own_model.py": "test_own_model_example",
    # concepts.md
    "docs/examples/chain_figure2.py": "test_figure_2_example",
    "docs/examples/chain_start.py": "test_chain_start_example",
    "docs/examples/own_networks.py": "test_own_networks_example",
    # data.md
    "docs/examples/data_celeba.yaml": "test_data_sections_are_read_where_aesampler_runs",
    "docs/examples/data_image_folder.yaml": "test_data_sections_are_read_where_aesampler_runs",
    "docs/examples/celeba_layout.txt": "test_both_celeba_layouts_are_read",
    "docs/examples/svhn_layout.txt": "test_svhn_layout_is_read",
    # evaluation.md
    "docs/examples/evaluate_commands.sh": "test_evaluation_commands",
    "docs/examples/metrics.json": "test_evaluation_commands",
    "docs/examples/evaluate_samples.py": "test_evaluate_samples_example",
    "docs/examples/evaluate_samples_signature.txt": "test_evaluate_samples_signature_is_the_real_one",
    "docs/examples/mean_norm_metric.py": "test_mean_norm_metric_example",
    "docs/examples/data_copying.py": "test_data_copying_example",
    # inpainting.md
    "docs/examples/inpaint_commands.sh": "test_inpaint_commands",
    "docs/examples/inpaint_python.py": "test_inpaint_python_example",
    # recipes.md
    "docs/examples/cli_synopsis.txt": "test_cli_synopsis_matches_the_parser",
    "docs/examples/recipe_from_python.py": "test_recipe_from_python_example",
    "docs/examples/recipes/broken.yaml": "test_validation_session",
    "docs/examples/validate_broken.console": "test_validation_session",
    # training.md
    "docs/examples/train_commands.sh": "test_train_commands_are_valid",
    "docs/examples/run_directory.txt": "test_run_directory_is_as_shown",
    "docs/examples/load_model.py": "test_load_model_example",
    "docs/examples/resume.sh": "test_resume_example",
    # results.md
    "docs/examples/compare_commands.sh": "test_results_commands_are_valid",
    "docs/examples/running_bn_commands.sh": "test_results_commands_are_valid",
    # elsewhere.md
    "docs/examples/elsewhere_wrappers.py": "test_elsewhere_wrappers_example",
    "docs/examples/pythae_install.console": "test_pythae_examples",
    "docs/examples/pythae_train.py": "test_pythae_examples",
    "docs/examples/pythae_digits.yaml": "test_pythae_examples",
    "docs/examples/pythae_commands.sh": "test_pythae_examples",
    "docs/examples/pythae_python.py": "test_pythae_examples",
    "docs/examples/pythae_pickles.console": "test_pythae_examples",
}


def test_every_example_file_is_shown_and_exercised():
    shown = {path for _, _, path, _ in BLOCKS if path.startswith("docs/")}
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


def script(path: Path) -> list[tuple[str, list[str]]]:
    """The commands of a ``.console`` file (``$ `` lines), each with the output lines shown under
    it, or of a ``.sh`` file (every line a command, shown without output)."""
    sessions: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if path.suffix == ".sh":
            if line.strip():
                sessions.append((line, []))
        elif line.startswith("$ "):
            sessions.append((line[2:], []))
        else:
            sessions[-1][1].append(line)
    return sessions


def replay(
    console: Path,
    cwd: Path,
    target: Path | None,
    monkeypatch,
    capsys,
    sessions: list[tuple[str, list[str]]] | None = None,
) -> None:
    """Run each command of a console or shell file (or the ``sessions`` given) in ``cwd`` and
    check the output lines shown under it. ``aesampler`` commands must exit with status 0, unless
    the output shown is an error."""
    monkeypatch.chdir(cwd)
    for command, expected in script(console) if sessions is None else sessions:
        words = shlex.split(command, comments=True)
        with monkeypatch.context() as env:
            while "=" in words[0]:
                key, value = words.pop(0).split("=", 1)
                env.setenv(key, value)
            if words[:2] == ["pip", "install"]:
                [source] = [w for w in words[2:] if w != "-e"]  # -e: same package, linked
                pip_install(cwd / source, target)
            elif words[0] == "aesampler":
                status = main(words[1:])
                failing = any(line.lstrip().startswith("aesampler: error:") for line in expected)
                assert (status != 0) == failing, (
                    f"{console.name}: {command!r} exited with status {status}:\n"
                    + capsys.readouterr().err
                )
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


def test_example_sampler():
    from aesampler.recipe.loader import RecipeError, validate
    from aesampler.samplers import Sampler, SamplerContext, SamplerError

    plugin = _example_module("diagonal_gaussian_sampler")
    registry = load_registry(extra_plugins=[("diagonal-gaussian", plugin)])
    component = registry.get("sampler", "diagonal_gaussian")
    assert (component.distribution, component.description) == (
        "<direct>",
        "N(mean, diag(std²)) fitted to a split's encodings, its spread multiplied by `scale`.",
    )
    sampler = registry.create("sampler", "diagonal_gaussian", scale=0.5)
    assert isinstance(sampler, Sampler) and sampler.fits
    with pytest.raises(SamplerError, match="not fitted"):
        sampler.sample(3)

    # Fitted on latents a user already has: a mean and a spread per dimension.
    mean, spread = torch.tensor([5.0, -1.0, 0.0]), torch.tensor([1.0, 2.0, 3.0])
    train = mean + spread * torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    sampler.fit(SamplerContext.from_encodings({"train": train}, log=lambda line: None))
    assert sampler.latent_shape == (3,)
    draws = sampler.sample(8000, torch.Generator().manual_seed(1))
    assert draws.shape == (8000, 3) and draws.device.type == "cpu"
    assert torch.allclose(draws.mean(0), mean, atol=0.15)
    assert torch.allclose(draws.std(0), 0.5 * spread, rtol=0.05)
    again = sampler.sample(8000, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)  # all randomness from the generator

    # What it fitted goes through plain tensors, as the run directory keeps it.
    state = sampler.state_dict()
    assert set(state) == {"mean", "std"} and all(t.device.type == "cpu" for t in state.values())
    restored = registry.create("sampler", "diagonal_gaussian", scale=0.5)
    restored.load_state_dict(state)
    seeded = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(restored.sample(10, seeded()), sampler.sample(10, seeded()))
    with pytest.raises(SamplerError, match="holds mean and std"):
        restored.load_state_dict({"pool": train})
    # Its own check of a saved state, on top of the default one (every tensor finite).
    assert restored.check_state(state) == []
    assert restored.check_state({**state, "std": -state["std"]}) == ["std has negative values"]
    nan = torch.full_like(state["mean"], float("nan"))
    assert restored.check_state({**state, "mean": nan}) == ["mean holds 3 NaN or infinite values"]
    with pytest.raises(SamplerError, match="2 or more encodings of 'valid'"):
        registry.create("sampler", "diagonal_gaussian", split="valid").fit(
            SamplerContext.from_encodings({"valid": train[:1]}, log=lambda line: None)
        )

    # From a recipe, as the page says; validate builds it once, so its own checks run.
    recipe = {
        "model": {"name": "aae"},
        "data": {"name": "digits"},
        "sampling": {"start": {"name": "diagonal_gaussian", "scale": 0.8}},
        "output": {"dir": "unused"},
    }
    assert validate(recipe, registry=registry).sampling.start.params == {"scale": 0.8}
    recipe["sampling"]["start"]["scale"] = 0
    with pytest.raises(RecipeError, match="sampling.start: .*scale must be positive, got 0"):
        validate(recipe, registry=registry)


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


# --- the quickstart stand-in ---------------------------------------------------------------------

#: Stands in for recipes/quickstart.yaml where the docs' commands and snippets run: a DAAE as there,
#: with the same sampling and evaluation steps and the same feature space, but tiny: 8 x 8 digits
#: (5 steps an epoch), few chains and resamples, a feature classifier trained for one epoch.
TINY_QUICKSTART = """\
model: {name: aae, latent_dim: 4, width: 4, adversary_hidden: 16}
data: {name: digits, image_size: 8}
corruption: {name: gaussian, sigma: 0.5}
train: {epochs: 1, batch_size: 256, grid_size: 4}
sampling: {num_chains: 12, steps: 10, grid_size: 9}
interpolation: {pairs: 2, points: 4}
evaluate:
  num_chains: 20
  reference_size: 20
  train_size: 100
  bootstrap: 2
  feature_extractor: {name: classifier, epochs: 1}
output: {dir: runs/quickstart}
"""


@pytest.fixture(scope="module")
def quickstart_template(tmp_path_factory):
    """A folder with the stand-in recipes/quickstart.yaml, trained into runs/quickstart."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "recipes").mkdir()
    (folder / "recipes" / "quickstart.yaml").write_text(TINY_QUICKSTART)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(folder)
        assert main(["train", "recipes/quickstart.yaml", "--quiet"]) == 0
    return folder


@pytest.fixture
def quickstart(quickstart_template, tmp_path, monkeypatch):
    """A fresh working directory holding the stand-in recipe; returns a function that copies
    the trained run into it as runs/quickstart."""
    shutil.copytree(quickstart_template / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)

    def add_run() -> None:
        trained = quickstart_template / "runs" / "quickstart"
        shutil.copytree(trained, tmp_path / "runs" / "quickstart")

    return add_run


# --- concepts.md ---------------------------------------------------------------------------------


def test_figure_2_example(quickstart):
    quickstart()
    done = runpy.run_path(str(EXAMPLES / "chain_figure2.py"), run_name="__main__")
    z_a, z_b, path = done["z_a"], done["z_b"], done["path"]
    assert path.shape == (4, 8, 4)  # (B, 8, D) as the comment says
    assert torch.equal(path[:, 0], z_a) and torch.equal(path[:, -1], z_b)
    assert done["before"].shape == done["after"].shape == (32, 1, 8, 8)
    assert not torch.equal(done["before"], done["after"])


def test_own_networks_example(capsys):
    done = runpy.run_path(str(EXAMPLES / "own_networks.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "(0, 1, 5, 10)",
        "torch.Size([64, 1, 28, 28])",
        "torch.Size([64, 16])",
        "torch.Size([32, 1, 28, 28])",
    ]
    path, cleaned = done["path"], done["cleaned"]
    assert torch.equal(path[:, 0], done["result"].z[10][:4])
    assert torch.equal(cleaned.z[0], path.reshape(32, 16))
    assert not torch.equal(cleaned.x[5], cleaned.x[0])


def test_own_model_example(capsys, monkeypatch):
    project = install_my_project(monkeypatch)
    done = runpy.run_path(str(EXAMPLES / "own_model.py"), run_name="__main__")
    check_own_model_example(done, capsys.readouterr().out.splitlines(), project)


def test_chain_start_example(quickstart):
    from aesampler.chain import chunk_bounds, start_generator

    quickstart()
    done = runpy.run_path(str(EXAMPLES / "chain_start.py"), run_name="__main__")
    whole, chunked = done["whole"], done["chunked"]
    # z0 is 0.7 times the prior draws of the run's start generator, all 600 at once.
    expected = 0.7 * torch.randn(600, 4, generator=start_generator(0))
    assert torch.equal(whole.z[0], expected)
    assert whole.x[10].shape == (600, 1, 8, 8)
    assert not torch.equal(whole.z[10], whole.z[0])
    # The two runs really were chunked differently, and agree bit for bit at every step.
    assert len(chunk_bounds(600, batchnorm="running")) == 1
    assert len(chunk_bounds(600, 256, batchnorm="running")) == 3
    for t in whole.steps:
        assert torch.equal(whole.z[t], chunked.z[t]) and torch.equal(whole.x[t], chunked.x[t])


# --- data.md -------------------------------------------------------------------------------------


def _write_images(folder: Path, names: list[str], size: tuple[int, int] = (178, 218)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


#: One CelebA file in each official split: train, valid, test.
CELEBA_FILES = ["000001.jpg", "162771.jpg", "182638.jpg"]


def test_data_sections_are_read_where_aesampler_runs(tmp_path, monkeypatch):
    from aesampler.errors import AesamplerError
    from aesampler.recipe import build_dataset, load_recipe

    monkeypatch.chdir(tmp_path)  # the recipes' relative roots are relative to this folder
    _write_images(tmp_path / "data" / "celeba" / "img_align_celeba", CELEBA_FILES)
    recipe = load_recipe(EXAMPLES / "data_celeba.yaml")
    for split, name in zip(("train", "valid", "test"), CELEBA_FILES):
        dataset = build_dataset(recipe, split)
        assert [p.name for p in dataset.paths] == [name]
        image, label = dataset[0]
        assert image.shape == (3, 64, 64) and label == -1

    images = tmp_path / "data" / "my-images"
    for split in ("train", "valid", "test"):
        _write_images(images / split, ["a.png", "b.png"], size=(20, 20))
    (images / "train" / "broken.png").write_bytes(b"not an image")
    recipe = load_recipe(EXAMPLES / "data_image_folder.yaml")
    train = build_dataset(recipe, "train")
    assert sorted(p.name for p in train.paths) == ["a.png", "b.png"]
    assert [problem.path.name for problem in train.skipped] == ["broken.png"]
    strict = load_recipe(EXAMPLES / "data_image_folder.yaml", ["data.on_error=error"])
    with pytest.raises(AesamplerError, match="broken.png"):
        build_dataset(strict, "train")


def _layouts(listing: Path) -> list[list[str]]:
    """The paths of each layout of a listing: a line with a description starts a layout."""
    layouts: list[list[str]] = []
    for line in listing.read_text().splitlines():
        path, *rest = line.replace("…", "").split(maxsplit=1)
        if rest or not layouts:
            layouts.append([])
        layouts[-1].append(path)
    return layouts


def test_both_celeba_layouts_are_read(tmp_path):
    from aesampler.data.sources import celeba

    layouts = _layouts(EXAMPLES / "celeba_layout.txt")
    assert len(layouts) == 2  # a bare folder, and torchvision's layout with the partition file
    # The partition file deals the files out differently from the official numbers, so the
    # test sees which rule was followed.
    partition = {"000001.jpg": "test", "162771.jpg": "train", "182638.jpg": "valid"}
    for number, layout in enumerate(layouts):
        root = tmp_path / f"layout{number}"
        for path in layout:
            assert path.startswith("root/"), path
            where = root / path.removeprefix("root/")
            if where.suffix == ".jpg":  # a folder of images, shown by its first one
                _write_images(where.parent, CELEBA_FILES)
            else:
                assert where.name == "list_eval_partition.txt", path
                code = {"train": 0, "valid": 1, "test": 2}
                where.write_text("".join(f"{f} {code[s]}\n" for f, s in partition.items()))
        uses_partition = any(p.endswith("list_eval_partition.txt") for p in layout)
        for split, official in zip(("train", "valid", "test"), CELEBA_FILES):
            dataset = celeba(split, image_size=8, root=str(root))
            expected = (
                [f for f, s in partition.items() if s == split] if uses_partition else [official]
            )
            assert [p.name for p in dataset.paths] == expected, (layout, split)


def test_svhn_layout_is_read(tmp_path):
    from scipy.io import savemat

    from aesampler.data.sources import svhn

    sizes = {"train_32x32.mat": 200, "test_32x32.mat": 30}
    paths = [line.strip() for line in (EXAMPLES / "svhn_layout.txt").read_text().splitlines()]
    assert [p.removeprefix("root/") for p in paths] == list(sizes)
    rng = np.random.default_rng(0)
    for path, count in zip(paths, sizes.values()):
        images = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)  # SVHN's axis order
        labels = (np.arange(count) % 10 + 1).reshape(-1, 1)  # 1..10, where 10 is the digit 0
        savemat(tmp_path / path.removeprefix("root/"), {"X": images, "y": labels})
    train, valid, test = (svhn(s, root=str(tmp_path)) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (190, 10, 30)  # valid: a stratified 5%
    assert sorted(valid[i][1] for i in range(10)) == list(range(10))
    assert train[0][0].shape == (3, 32, 32)


# --- evaluation.md -------------------------------------------------------------------------------


def _same_shape(documented, written, where: str) -> None:
    """``written`` has the structure ``documented`` shows; ``"..."`` stands for anything more."""
    if isinstance(documented, dict):
        assert isinstance(written, dict), where
        shown = set(documented) - {"..."}
        assert shown <= set(written), f"{where}: {sorted(shown - set(written))} not written"
        if "..." not in documented:
            assert shown == set(written), f"{where}: {sorted(set(written) - shown)} not shown"
        for key in shown:
            _same_shape(documented[key], written[key], f"{where}.{key}")
    elif documented != "...":
        kind = lambda v: "number" if type(v) in (int, float) else type(v).__name__  # noqa: E731
        assert kind(documented) == kind(written), f"{where}: {written!r}"


def test_evaluation_commands(quickstart, monkeypatch, capsys):
    run, evaluate, compare = script(EXAMPLES / "evaluate_commands.sh")
    replay(
        EXAMPLES / "evaluate_commands.sh", Path.cwd(), None, monkeypatch, capsys, [run, evaluate]
    )
    for other in ("runs/a", "runs/b"):  # two runs to compare
        shutil.copytree("runs/quickstart", other)
    replay(EXAMPLES / "evaluate_commands.sh", Path.cwd(), None, monkeypatch, capsys, [compare])
    written = json.loads(Path("runs/quickstart/metrics.json").read_text())
    documented = json.loads((EXAMPLES / "metrics.json").read_text())
    _same_shape(documented, written, "metrics.json")
    assert written["steps"] == documented["steps"]
    assert Path("runs/ab/compare.md").is_file()


def test_evaluate_samples_example(capsys):
    runpy.run_path(str(EXAMPLES / "evaluate_samples.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["step", "frechet", "precision", "recall"]
    source = (EXAMPLES / "evaluate_samples.py").read_text()
    shown = source.rsplit("# ", 1)[1].strip().removesuffix(", ...}")
    assert printed[-1].startswith(shown)
    skipped = ast.literal_eval(printed[-1])
    assert set(skipped) == {"mmd_learned", "mmd_prior", "step_size", "novelty"}


def test_evaluate_samples_signature_is_the_real_one():
    text = (EXAMPLES / "evaluate_samples_signature.txt").read_text()
    namespace: dict = {}
    exec(compile(f"def {text.rstrip()}:\n    pass\n", "signature", "exec"), namespace)
    shown = inspect.signature(namespace["evaluate_samples"])
    real = inspect.signature(aesampler.evaluate_samples)
    describe = lambda s: [(p.name, p.kind, p.default) for p in s.parameters.values()]  # noqa: E731
    assert describe(shown) == describe(real)
    assert shown.return_annotation == real.return_annotation == "dict"  # both postponed


def test_mean_norm_metric_example():
    from aesampler.recipe.loader import validate

    plugin = _example_module("mean_norm_metric")  # the module is the plugin: it holds the hook
    registry = load_registry(extra_plugins=[("mean-norm", plugin)])
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(20, 3, generator=generator)
    report = aesampler.evaluate_samples(
        torch.rand(20, 1, 4, 4, generator=generator),
        torch.rand(20, 1, 4, 4, generator=generator),
        metrics=["mean_norm"],
        latents=latents,
        registry=registry,
        bootstrap=0,
        log=lambda line: None,
    )
    expected = latents.double().norm(dim=1).mean().item()
    assert report["metrics"]["mean_norm"]["0"]["value"] == pytest.approx(expected)
    assert report["lower_is_better"] == {"mean_norm": None}
    recipe = {
        "model": {"name": "aae"},
        "data": {"name": "digits"},
        "evaluate": {"metrics": ["mmd_learned", "frechet", "mean_norm"]},  # as the page says
        "output": {"dir": "unused"},
    }
    assert validate(recipe, registry=registry).evaluate.metrics[2].name == "mean_norm"


def test_data_copying_example(capsys):
    runpy.run_path(str(EXAMPLES / "data_copying.py"), run_name="__main__")
    line = re.compile(r"(?P<name>\w+): C_T = (?P<ct>\S+),.* copying: (?P<copying>True|False)$")
    found = {
        m["name"]: (float(m["ct"]), m["copying"] == "True")
        for m in map(line.match, capsys.readouterr().out.splitlines())
    }
    assert set(found) == {"copies", "fresh", "blurred"}
    assert found["copies"][0] < -3 and found["copies"][1]  # as the page says
    assert abs(found["fresh"][0]) < 1 and not found["fresh"][1]
    assert found["blurred"][0] > 1 and not found["blurred"][1]
    # The page's table shows the numbers printed (within k-means' drift across scikit-learn).
    shown = dict(re.findall(r"^\| `(\w+)` \| (-?[\d.]+) \|", TEXTS["evaluation.md"], re.M))
    for name, (ct, _) in found.items():
        assert float(shown[name]) == pytest.approx(ct, abs=0.3), name


# --- inpainting.md -------------------------------------------------------------------------------


def test_inpaint_commands(quickstart, monkeypatch, capsys):
    """The first command trains the full quickstart: it is checked; the others run."""
    quickstart()
    first, *others = script(EXAMPLES / "inpaint_commands.sh")
    words = shlex.split(first[0], comments=True)
    assert build_parser().parse_args(words[1:]).command == "run"
    assert main(["validate", *words[2:]]) == 0, capsys.readouterr().err
    replay(EXAMPLES / "inpaint_commands.sh", Path.cwd(), None, monkeypatch, capsys, others)
    folder = Path("runs/quickstart/inpainting")
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["mask"]["missing"] == "centre" and settings["images"] == 8
    assert (folder / "step-010.png").is_file() and (folder / "inpainting.png").is_file()


def test_inpaint_python_example(quickstart, capsys):
    quickstart()
    done = runpy.run_path(str(EXAMPLES / "inpaint_python.py"), run_name="__main__")
    assert set(done["done"].mean_error) == {0, 1, 5, 10}
    assert capsys.readouterr().out.startswith("{0: ")
    images, kept = done["images"], done["observed"].expand_as(done["images"])
    assert torch.equal(done["filled"][kept], images[kept])
    assert not kept[..., 4:].any() and kept[..., :4].all()  # the right half of 8 x 8 is hidden


# --- recipes.md ----------------------------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_cli_synopsis_matches_the_parser():
    """Each line names a real command and options it has, and parses once filled in."""
    commands = _subcommands()
    shown = []
    for line in (EXAMPLES / "cli_synopsis.txt").read_text().splitlines():
        words = line.split()
        assert words[0] == "aesampler"
        shown.append(words[1])
        options = {o for action in commands[words[1]]._actions for o in action.option_strings}
        assert set(re.findall(r"--[\w-]+", line)) <= options, line
        filled = line.replace("[key.path=value ...]", "train.epochs=2")
        filled = filled.replace("RUN_DIR ...", "runs/a runs/b")
        for placeholder, value in [("RECIPE", "r.yaml"), ("RUN_DIR", "runs/a"), ("DIR", "out")]:
            filled = re.sub(rf"\b{placeholder}\b", value, filled)
        filled = filled.replace("PATH", "runs/a")
        choices = re.search(r"\[(--[\w-]+) \| (--[\w-]+)\]", filled)
        for choice in choices.groups() if choices else [""]:
            one = filled.replace(choices[0], choice) if choices else filled
            args = build_parser().parse_args(one.replace("[", "").replace("]", "").split()[1:])
            assert args.command == words[1], one
    assert sorted(shown) == sorted(set(commands) - {"plugins"})  # plugins: see plugins.md


def test_recipe_from_python_example(quickstart, capsys):
    done = runpy.run_path(str(EXAMPLES / "recipe_from_python.py"), run_name="__main__")
    assert done["recipe"].train.epochs == 5
    assert Path("runs/q5/report.html").is_file() and Path("runs/q5/metrics.json").is_file()
    assert done["parts"].checkpoint.name == "step-00000025"  # 5 epochs of 5 steps
    assert done["result"].x[10].shape == (16, 1, 8, 8)


def test_validation_session(monkeypatch, capsys):
    replay(EXAMPLES / "validate_broken.console", EXAMPLES, None, monkeypatch, capsys)


# --- training.md ---------------------------------------------------------------------------------


def test_train_commands_are_valid(monkeypatch, capsys):
    """They train full models (one needs CelebA): their arguments and recipes are checked."""
    monkeypatch.chdir(ROOT)
    for command, _ in script(EXAMPLES / "train_commands.sh"):
        words = shlex.split(command, comments=True)
        assert build_parser().parse_args(words[1:]).command == "train"
        assert main(["validate", *words[2:]]) == 0, capsys.readouterr().err


def test_results_commands_are_valid(monkeypatch, capsys):
    """They train four models for minutes each: their arguments and recipes are checked."""
    monkeypatch.chdir(ROOT)
    commands = [
        shlex.split(command, comments=True)
        for file in ("compare_commands.sh", "running_bn_commands.sh")
        for command, _ in script(EXAMPLES / file)
    ]
    for words in commands:
        args, overrides = build_parser().parse_known_args(words[1:])
        assert all("=" in o for o in overrides), overrides  # main() takes these as overrides
        args.overrides = [*getattr(args, "overrides", []), *overrides]
        if args.command in ("run", "evaluate"):
            out = [f"output.dir={args.out}"] if args.out else []
            assert main(["validate", args.recipe, *args.overrides, *out]) == 0, (
                capsys.readouterr().err
            )
    made = {Path(w[2]).stem for w in commands if w[0:2] == ["aesampler", "run"]}
    compared = {Path(d).name for w in commands if w[1] == "compare" for d in w[2:-2]}
    assert made == compared  # the comparison reads the runs the commands make


def test_run_directory_is_as_shown(quickstart, monkeypatch, capsys):
    sessions = script(EXAMPLES / "train_commands.sh")
    assert sessions[0][0] == "aesampler train recipes/quickstart.yaml"
    replay(EXAMPLES / "train_commands.sh", Path.cwd(), None, monkeypatch, capsys, sessions[:1])
    top, *entries = (EXAMPLES / "run_directory.txt").read_text().splitlines()
    patterns = []
    for entry in entries:
        path, description = entry.split(maxsplit=1)
        names = description.split(", ") if path.endswith("/") else [""]
        for name in names:
            pattern = re.sub(r"\d{8}", r"\\d{8}", re.escape(path + name))  # any step number
            patterns.append(re.compile(pattern + r"\Z"))
    run_dir = Path(top)
    written = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".")  # the lock file is no output
    )
    for pattern in patterns:
        assert sum(bool(pattern.match(f)) for f in written) == 1, (pattern.pattern, written)
    assert all(any(pattern.match(f) for pattern in patterns) for f in written), written


def test_load_model_example(quickstart):
    quickstart()
    done = runpy.run_path(str(EXAMPLES / "load_model.py"), run_name="__main__")
    assert done["info"]["model"]["kind"] == "aae"
    assert done["chain"].run(n=4, steps=2, seed=0).x[2].shape == (4, 1, 8, 8)


def test_resume_example(quickstart, monkeypatch, capsys):
    """Two runs, the second resumed, give the weights of one two-epoch run, bit for bit."""
    from safetensors.torch import load_file

    from aesampler.checkpoint import find_checkpoint

    replay(EXAMPLES / "resume.sh", Path.cwd(), None, monkeypatch, capsys)
    assert (
        main(["train", "recipes/quickstart.yaml", "train.epochs=2", "--out", "runs/one", "--quiet"])
        == 0
    )
    resumed, straight = (find_checkpoint(f"runs/{r}") for r in ("quickstart", "one"))
    assert resumed.name == straight.name == "step-00000010"
    resumed, straight = (load_file(c / "model.safetensors") for c in (resumed, straight))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


# --- elsewhere.md ---------------------------------------------------------------------------------


def test_elsewhere_wrappers_example(capsys):
    runpy.run_path(str(EXAMPLES / "elsewhere_wrappers.py"), run_name="__main__")
    shape, message = capsys.readouterr().out.splitlines()
    assert shape == "(32, 1, 8, 8)"
    assert message.startswith("ModuleDecoder: the network returned a dict with outputs 'images'")
    page = " ".join(TEXTS["elsewhere.md"].split())
    assert f"`{message}`" in page  # the page quotes the error as it is


def test_pythae_examples(sandbox, tmp_path, monkeypatch, capsys):
    """The pythae section, in order: install the plugin, train with pythae, the commands, the
    Python file, and a folder with a pickled network refused, then loaded with the user's word."""
    pytest.importorskip("pythae")  # the plugin's dependency, not aesampler's
    replay(EXAMPLES / "pythae_install.console", ROOT, sandbox, monkeypatch, capsys)
    (tmp_path / "docs" / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLES / "pythae_digits.yaml", tmp_path / "docs" / "examples")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "pythae_train.py"), run_name="__main__")
    [training] = Path("runs/pythae-vae").iterdir()
    assert (training / "final_model" / "model_config.json").is_file()
    capsys.readouterr()  # what pythae's trainer printed
    tiny = " sampling.num_chains=16 evaluate.num_chains=40 evaluate.reference_size=40"
    tiny += " evaluate.bootstrap=10 --quiet"
    commands = [(command + tiny, []) for command, _ in script(EXAMPLES / "pythae_commands.sh")]
    replay(EXAMPLES / "pythae_commands.sh", tmp_path, None, monkeypatch, capsys, commands)
    assert Path("runs/pythae-digits/samples/step-010.png").is_file()
    assert json.loads(Path("runs/pythae-digits/metrics.json").read_text())["steps"]
    assert Path("runs/pythae-digits/samplers").is_dir()

    done = runpy.run_path(str(EXAMPLES / "pythae_python.py"), run_name="__main__")
    assert done["info"]["model"]["architecture"]["pythae_model"] == "VAE"
    assert capsys.readouterr().out.splitlines()[-1] == "(64, 1, 8, 8)"

    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseEncoder

    class OwnEncoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 8)

        def forward(self, x):
            h = self.layer(x.flatten(1))
            return ModelOutput(embedding=h[:, :4], log_covariance=h[:, 4:])

    VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=4), encoder=OwnEncoder()).save(
        "runs/pythae-own-encoder"
    )
    replay(EXAMPLES / "pythae_pickles.console", tmp_path, None, monkeypatch, capsys)
    assert Path("runs/pythae-own/samples/step-010.png").is_file()
