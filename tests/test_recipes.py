"""Every shipped recipe validates and runs; broken recipes get precise messages."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from scipy.io import savemat

from aesampler import DecodeCorruptEncode
from aesampler.checkpoint import find_checkpoint
from aesampler.cli import main as cli_main
from aesampler.errors import AesamplerError, ComponentError
from aesampler.models import VAE
from aesampler.plugins import get_registry, load_registry
from aesampler.recipe import (
    Recipe,
    RecipeError,
    apply_overrides,
    build_model,
    check_model_size,
    load_recipe,
    parse_override,
)
from aesampler.registry import Registry
from aesampler.training import train

from .test_data import CELEBA_NUMBERS, fake_celeba_jpegs

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(RECIPES_DIR.rglob("*.yaml"))
TINY = [
    "data.image_size=8",
    "model.width=4",
    "model.latent_dim=4",
    "train.batch_size=2",
    "train.max_steps=2",
    "train.grid_size=4",
    "train.num_workers=0",
    "train.device=cpu",
]


def test_the_paper_recipes_and_the_quickstart_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {f"{m}_{d}" for m in ("vae", "dvae", "aae", "daae") for d in ("celeba", "svhn")} <= names
    assert "quickstart" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates_and_says_how_to_run_it(path):
    recipe = load_recipe(path)
    head = path.read_text().split("\nmodel:")[0]
    relative = path.relative_to(RECIPES_DIR.parent).as_posix()
    assert head.startswith("# ") and f"aesampler run {relative}" in head
    if path.stem.startswith(("dvae", "daae")):
        assert recipe.corruption.name == "gaussian" and recipe.corruption.params == {"sigma": 0.5}
    if path.stem.split("_")[-1] in ("celeba", "svhn"):  # the paper's settings
        assert (recipe.model.params["latent_dim"], recipe.data.params["image_size"]) == (200, 64)
        assert (recipe.train.epochs, recipe.train.lr, recipe.train.betas) == (
            20,
            2e-4,
            (0.5, 0.999),
        )


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fake_celeba_jpegs(root / "celeba" / "img_align_celeba", [*range(3, 9), *CELEBA_NUMBERS])
    (root / "svhn").mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 60), ("test_32x32.mat", 10)):
        savemat(
            root / "svhn" / name,
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": (np.arange(n) % 10 + 1)[:, None],
            },
        )
    return root


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_trains_with_tiny_overrides(path, fake_data, tmp_path):
    overrides = [*TINY, f"output.dir={tmp_path / 'run'}"]
    recipe = load_recipe(path)
    if recipe.data.name in ("celeba", "svhn"):
        overrides.append(f"data.root={fake_data / recipe.data.name}")
    result = train(load_recipe(path, overrides), progress=False, log=lambda m: None)
    assert result.steps == 2
    assert find_checkpoint(tmp_path / "run").name == "step-00000002"


def test_overrides():
    assert parse_override("train.epochs=2") == (("train", "epochs"), 2)
    assert parse_override("train.lr=2.0e-4") == (("train", "lr"), 2e-4)
    assert parse_override("data.root=/a=b") == (("data", "root"), "/a=b")
    assert parse_override("train.betas=[0.9, 0.99]") == (("train", "betas"), [0.9, 0.99])
    assert parse_override("corruption=null") == (("corruption",), None)
    data = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "new.key=x"])
    assert data == {"train": {"epochs": 3}, "new": {"key": "x"}}
    with pytest.raises(RecipeError, match="write key.path=value"):
        parse_override("train.epochs")
    with pytest.raises(RecipeError, match="train.epochs is 1, not a section"):
        apply_overrides({"train": {"epochs": 1}}, ["train.epochs.x=3"])


BROKEN = """\
# A recipe with one mistake per line.
model:
  name: aae
  latent_dim: many
  widht: 8
data:
  name: mnist5l
corruption:
  name: gaussian
  sigma: -0.5
train:
  epochs: 0
  betas: [0.5, 1.5]
  lrr: 0.1
output: {}
extra: 1
"""


def test_broken_recipe_catalogue(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["train.seed=-1"])
    lines = str(caught.value).splitlines()
    p = str(path)
    assert lines == [
        f"{p}: 10 problems:",
        f"  {p}:4: model.latent_dim: Input should be a valid integer (got 'many')",
        f"  {p}:5: model.widht: model 'aae' (aesampler) has no parameter 'widht'. Did you mean 'width'? "
        "Parameters: latent_dim, width, adversary_hidden, adversary_layers, adversary_dropout",
        f"  {p}:7: data.name: unknown dataset 'mnist5l'. Did you mean 'mnist5k'? Registered datasets: "
        "celeba (aesampler), digits (aesampler), image_folder (aesampler), mnist5k (aesampler), svhn (aesampler)",
        f"  {p}:8: corruption: corruption 'gaussian' (aesampler) rejected its parameters {{'sigma': -0.5}}: "
        "GaussianCorruption: sigma must be finite and >= 0, got -0.5",
        f"  {p}:12: train.epochs: Input should be greater than 0 (got 0)",
        f"  {p}:13: train.betas.1: Input should be less than 1 (got 1.5)",
        f"  {p}:14: train.lrr: unknown key. Did you mean 'lr'? Keys here: epochs, max_steps, batch_size, lr, "
        "betas, seed, device, precision, num_workers, log_every, grid_size",
        f"  {p}:15: output.dir: missing: this key is required",
        f"  {p}:16: extra: unknown key. Keys here: model, data, corruption, train, sampling, interpolation, inpaint, evaluate, samplers, tune, output",
        f"  {p} (command line): train.seed: a seed must be an integer from 0 to 2**63 - 1 (got -1)",
    ]


def test_yaml_errors_and_non_mappings_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: aae\n  width: [1, 2\n")
    with pytest.raises(RecipeError, match=r"bad.yaml:4: invalid YAML"):
        load_recipe(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="a recipe must be a mapping of sections"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(RECIPES[0], [f"output.dir={tmp_path}"])
    again = yaml.safe_load(yaml.safe_dump(recipe.resolved()))
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(again))
    assert load_recipe(path).resolved() == recipe.resolved()


# ----------------------------------------------------------------------------------------------
# Every bad input gets one clear error (issue #8)

BASE = """\
model:
  name: aae
  latent_dim: 8
  width: 8
data:
  name: digits
  image_size: 8
corruption:
  name: gaussian
  sigma: 0.5
train:
  epochs: 2
  seed: 0
output:
  dir: runs/x
"""


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _problems(tmp_path: Path, text: str | bytes, overrides=(), registry=None) -> list[str]:
    """The problems reported for a recipe, each without the file name in front."""
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides, registry)
    assert caught.value.source == str(path)
    return [line.strip().removeprefix(str(path)) for line in str(caught.value).splitlines()[1:]]


def test_the_base_recipe_of_these_tests_is_valid(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE))
    assert recipe.model.params == {"latent_dim": 8, "width": 8}


def test_a_recipe_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    raw = BASE.replace("dir: runs/x", "dir: runs/café").encode("latin-1")
    assert _problems(tmp_path, raw) == [
        ":15: not UTF-8 text: the byte 0xe9 at column 16 cannot be decoded; save the recipe as UTF-8"
    ]
    path = _write(tmp_path, BASE.replace("runs/x", "runs/café").encode("utf-8-sig"))
    assert load_recipe(path).output.dir == "runs/café"  # UTF-8 with a byte-order mark is fine


def _alias_bomb(levels: int) -> str:
    """The "billion laughs": each level is nine aliases of the one before."""
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "bomb:\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    started = time.perf_counter()
    problems = _problems(tmp_path, BASE + _alias_bomb(9))
    assert time.perf_counter() - started < 10  # a guard against blow-up (the old code: 39 s)
    assert problems == [
        ":21: refused: its aliases expand it to more than 10,000 values; a recipe holds far "
        "fewer, so it is refused (an alias bomb?)"
    ]
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="more than 10,000 values"):
        parse_override("train.x=" + "{" + _alias_bomb(9).replace("\n  ", ", ")[7:-1] + "}")
    assert time.perf_counter() - started < 10  # a guard against blow-up (the old code: 39 s)


def test_aliases_and_merges_that_stay_small_are_fine(tmp_path):
    text = (
        BASE.replace("corruption:\n", "corruption: &noise\n") + "sampling:\n  corruption: *noise\n"
    )
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.sampling.corruption == recipe.corruption
    text = BASE + "sampling: &s {steps: 4, record: [4]}\ninterpolation: {<<: *s, steps: 2}\n"
    assert _problems(tmp_path, text) == [
        ":17: interpolation.record: unknown key. Keys here: enabled, pairs, points, steps, method, seed"
    ]


def test_a_recursive_alias_is_refused(tmp_path):
    assert _problems(tmp_path, BASE + "extra: &r [1, *r]\n") == [
        ":16: refused: an alias refers to a node that contains it (a recursive structure)"
    ]


@pytest.mark.parametrize("opening,closing", [("[", "]"), ("{a: ", "}")], ids=["lists", "maps"])
def test_deep_nesting_is_refused(tmp_path, opening, closing):
    problems = _problems(tmp_path, BASE + f"extra: {opening * 5000}1{closing * 5000}\n")
    assert problems == [":16: refused: nested deeper than 100 levels"]
    with pytest.raises(RecipeError, match="nested deeper than 100 levels"):
        parse_override(f"train.x={opening * 5000}1{closing * 5000}")
    assert parse_override(f"train.x={opening * 99}1{closing * 99}")[1] is not None


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    text = BASE.replace("  seed: 0\n", "  seed: 0\n  epochs: 5\n") + "model: {name: vae}\n"
    assert _problems(tmp_path, text) == [
        ":14: train.epochs: duplicate key 'epochs' (lines 12 and 14): give each key once",
        ":17: model: duplicate key 'model' (lines 1 and 17): give each key once",
    ]


def test_keys_must_be_text(tmp_path):
    assert _problems(tmp_path, BASE.replace("  width: 8\n", "  width: 8\n  1: 2\n")) == [
        ":5: model.1: a key must be text, and this one reads as int; put it in quotes if you "
        "mean the text"
    ]
    assert _problems(tmp_path, BASE + "? [a]\n: 1\n") == [":16: a key must be text, not a list"]


@pytest.mark.parametrize(
    "old,new,problem",
    [
        (
            "epochs: 2",
            "epochs: true",
            ":12: train.epochs: Input should be a valid integer (got True)",
        ),
        (
            "epochs: 2",
            "epochs: '3'",
            ":12: train.epochs: Input should be a valid integer (got '3')",
        ),
        (
            "epochs: 2",
            "epochs: 2.0",
            ":12: train.epochs: Input should be a valid integer (got 2.0)",
        ),
        ("epochs: 2", "lr: true", ":12: train.lr: Input should be a valid number (got True)"),
        ("epochs: 2", "lr: '0.1'", ":12: train.lr: Input should be a valid number (got '0.1')"),
        (
            "epochs: 2",
            "betas: [0.5, false]",
            ":12: train.betas.1: Input should be a valid number (got False)",
        ),
        (
            "epochs: 2",
            "epochs: 9223372036854775808",
            ":12: train.epochs: Input should be less than 9223372036854775808 (got 9223372036854775808)",
        ),
        (
            "sigma: 0.5",
            "sigma: true",
            ":10: corruption.sigma: Input should be a valid number (got True)",
        ),
        (
            "latent_dim: 8",
            "latent_dim: yes",
            ":3: model.latent_dim: Input should be a valid integer (got True)",
        ),
        (
            "latent_dim: 8",
            "latent_dim: 8.0",
            ":3: model.latent_dim: Input should be a valid integer (got 8.0)",
        ),
        (
            "latent_dim: 8",
            "latent_dim: 1.0e+23",
            ":3: model.latent_dim: Input should be a valid integer (got 1e+23)",
        ),
        ("dir: runs/x", "dir: 7", ":15: output.dir: Input should be a valid string (got 7)"),
    ],
)
def test_numbers_are_strict(tmp_path, old, new, problem):
    assert _problems(tmp_path, BASE.replace(old, new)) == [problem]


def test_ints_pass_where_floats_are_expected(tmp_path):
    text = BASE.replace("sigma: 0.5", "sigma: 1").replace("epochs: 2", "lr: 1")
    recipe = load_recipe(_write(tmp_path, text))
    assert (recipe.corruption.params["sigma"], recipe.train.lr) == (1, 1)
    text = BASE + "interpolation: {enabled: 1}\n"
    assert _problems(tmp_path, text) == [
        ":16: interpolation.enabled: Input should be a valid boolean (got 1)"
    ]


@pytest.mark.parametrize("section", ["train", "sampling", "interpolation", "inpaint", "evaluate"])
@pytest.mark.parametrize("value", ["9223372036854775808", "1.0e+23", "-1", "true"])
def test_seeds_must_fit_torch(tmp_path, section, value):
    path = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [f"{section}.seed={value}"])
    assert str(caught.value).splitlines()[1:] == [
        f"  {path} (command line): {section}.seed: a seed must be an integer from 0 to 2**63 - 1 "
        f"(got {yaml.safe_load(value)!r})"
    ]
    recipe = load_recipe(path, [f"{section}.seed={2**63 - 1}"])
    assert getattr(recipe, section).seed == 2**63 - 1


def test_a_component_parameter_named_seed_must_fit_torch(tmp_path):
    problems = _problems(tmp_path, BASE, ["evaluate.feature_extractor.seed=9223372036854775808"])
    assert problems == [
        " (command line): evaluate.feature_extractor.seed: a seed must be an integer from 0 to "
        "2**63 - 1 (got 9223372036854775808)"
    ]


def test_validate_checks_the_image_size_against_the_model(tmp_path, capsys):
    path = _write(tmp_path, BASE.replace("image_size: 8", "image_size: 33"))
    assert cli_main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"  {path}:7: data.image_size: model 'aae' cannot take it: image_size must be a power of "
        "two >= 8, got 33"
    ]
    # Without an image size in the recipe, the dataset's default is the one checked.
    text = BASE.replace("  image_size: 8\n", "").replace("digits", "mnist5k")
    assert load_recipe(_write(tmp_path, text)).data.params == {}


def test_validate_runs_the_models_own_value_checks(tmp_path):
    text = BASE.replace("  width: 8\n", "  width: 8\n  adversary_dropout: 1.5\n")
    (problem,) = _problems(tmp_path, text)
    assert problem.startswith(":1: model: model 'aae' (aesampler) rejected its parameters ")
    assert problem.endswith(": dropout must be in [0, 1), got 1.5")


@pytest.mark.parametrize(
    "key,value", [("latent_dim", "100000000000"), ("width", "200000")], ids=["latent", "width"]
)
def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, key, value):
    text = BASE.replace(f"{key}: 8", f"{key}: {value}").replace("image_size: 8", "image_size: 32")
    started = time.perf_counter()
    (problem,) = _problems(tmp_path, text)
    assert time.perf_counter() - started < 10  # a guard against blow-up (the old code: 39 s)
    assert problem.startswith(":1: model: model 'aae' (model.latent_dim=")
    assert f"model.{key}={value}" in problem
    assert "32 x 32 images with 3 channels) is too large: it would hold at least " in problem
    assert re.search("[0-9.]+ TB of parameters and buffers, more than the ", problem)
    assert problem.endswith("allowed (half of this machine's memory); lower the sizes")


def test_check_model_size_counts_bytes_on_the_meta_device():
    params = {"image_size": 8, "channels": 1, "latent_dim": 4, "width": 4}
    model = VAE(**params)
    tensors = [*model.parameters(), *model.buffers()]
    assert check_model_size("vae", params) == sum(t.numel() * t.element_size() for t in tensors)
    with pytest.raises(
        ComponentError,
        match=r"model.latent_dim=4, model.width=4; 8 x 8 images "
        r"with 1 channels\) is too large: it would hold .* more than the 100 bytes",
    ):
        check_model_size("vae", params, limit=100)
    with pytest.raises(ComponentError, match="sizes overflow"):
        check_model_size("vae", {**params, "width": 10**18})
    with pytest.raises(ComponentError, match="more than 5,000 parameter and buffer tensors"):
        check_model_size("aae", {**params, "adversary_layers": 10**9, "adversary_hidden": 1})
    with pytest.raises(ComponentError, match="image_size must be a power of two"):
        check_model_size("vae", {**params, "image_size": 12})


def test_build_model_refuses_a_model_too_large_for_memory():
    recipe = Recipe.model_validate(
        {
            "model": {"name": "vae", "latent_dim": 10**11},
            "data": {"name": "digits"},
            "output": {"dir": "unused"},
        }
    )
    dataset = SimpleNamespace(image_size=8, channels=1)
    started = time.perf_counter()
    with pytest.raises(
        AesamplerError,
        match=r"^model: model 'vae' \(model.latent_dim=100000000000; "
        r"8 x 8 images with 1 channels\) is too large: it would hold at least",
    ):
        build_model(recipe, dataset)
    assert time.perf_counter() - started < 10  # a guard against blow-up (the old code: 39 s)


def _registry_with(*extra) -> Registry:
    """The installed components plus ``extra`` ``(kind, name, factory)`` triples."""
    registry = Registry(get_registry().kinds)
    for c in get_registry():
        registry.add(c.kind, c.name, c.factory, distribution=c.distribution, plugin=c.plugin)
    for kind, name, factory in extra:
        registry.add(kind, name, factory, distribution="tests", plugin="tests")
    return registry


def _cautious(encoder, decoder, corruption=None, *, temperature: float = 1.0):
    """A transition that checks its own parameter, as a plugin's would."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return DecodeCorruptEncode(encoder, decoder, corruption)


def test_a_transition_is_built_once_so_its_own_checks_run(tmp_path):
    registry = _registry_with(("transition", "cautious", _cautious))
    text = BASE + "sampling:\n  transition: {name: cautious, temperature: -1}\n"
    (problem,) = _problems(tmp_path, text, registry=registry)
    assert problem.startswith(":17: sampling.transition: transition 'cautious' (tests) rejected")
    assert problem.endswith(": temperature must be > 0, got -1.0")
    # With a model that cannot be built, the transition gets stand-ins and is still checked.
    problems = _problems(tmp_path, text.replace("name: aae", "name: nope"), registry=registry)
    assert [p.split(":")[1:3] for p in problems] == [
        ["2", " model.name"],
        ["17", " sampling.transition"],
    ]
    path = _write(tmp_path, text.replace("-1", "2"))
    assert load_recipe(path, (), registry).sampling.transition.params == {"temperature": 2}


def test_metrics_and_feature_extractors_are_built_once_so_their_own_checks_run(tmp_path):
    text = BASE + "evaluate:\n  metrics: [frechet, {name: precision_recall, k: 0}]\n"
    text += "  feature_extractor: {name: pixels, size: 0}\n"
    assert _problems(tmp_path, text) == [
        ":17: evaluate.metrics.1: metric 'precision_recall' (aesampler) rejected its parameters "
        "{'k': 0}: k must be a positive integer, got 0",
        ":18: evaluate.feature_extractor: feature_extractor 'pixels' (aesampler) rejected its "
        "parameters {'size': 0}: size must be a positive integer, got 0",
    ]


def test_a_section_without_a_name_still_gets_its_keys_checked(tmp_path):
    text = BASE.replace("  name: aae\n  latent_dim: 8\n", "  kind: vae\n  latnt_dim: 8\n")
    builtins = load_registry(builtins_only=True)  # installed plugins may add model kinds
    assert _problems(tmp_path, text, registry=builtins) == [
        ":1: model.name: missing: name the model. Registered models: aae (aesampler), vae (aesampler)",
        ":2: model.kind: unknown key. Did you mean 'name'? Keys of model sections: name, "
        "checkpoint, adversary_dropout, adversary_hidden, adversary_layers, latent_dim, width",
        ":3: model.latnt_dim: unknown key. Did you mean 'latent_dim'? Keys of model sections: "
        "name, checkpoint, adversary_dropout, adversary_hidden, adversary_layers, latent_dim, width",
    ]
    text = BASE + "evaluate:\n  metrics: [{k: 3}]\n"
    (problem,) = _problems(tmp_path, text)
    assert problem.startswith(":17: evaluate.metrics.0.name: missing: name the metric. ")
    assert "frechet (aesampler)" in problem


def test_a_name_must_be_text(tmp_path):
    builtins = load_registry(builtins_only=True)  # installed plugins may add model kinds
    assert _problems(tmp_path, BASE.replace("name: aae", "name: [aae]"), registry=builtins) == [
        ":2: model.name: must be the name of a registered model (aae, vae), not ['aae']"
    ]


def test_overrides_apply_on_top_of_the_defaults(tmp_path):
    path = _write(tmp_path, BASE)
    recipe = load_recipe(path, ["evaluate.feature_extractor.epochs=2"])
    assert recipe.evaluate.feature_extractor.name == "classifier"
    assert recipe.evaluate.feature_extractor.params == {"epochs": 2}
    recipe = load_recipe(path, ["sampling.transition.sample=false", "sampling.steps=3"])
    assert recipe.sampling.transition.name == "decode_corrupt_encode"
    assert (recipe.sampling.transition.params, recipe.sampling.steps) == ({"sample": False}, 3)
    assert recipe.sampling.num_chains == 64  # the other defaults stay
    validated = load_recipe(path, ["evaluate.feature_extractor.epochs=2", "sampling.steps=10"])
    assert (
        validated.resolved()
        == load_recipe(
            path, ["evaluate.feature_extractor={name: classifier, epochs: 2}"]
        ).resolved()
    )


def test_overrides_index_into_lists(tmp_path):
    path = _write(tmp_path, BASE + "evaluate:\n  metrics:\n    - frechet\n    - precision_recall\n")
    recipe = load_recipe(path, ["evaluate.metrics.1.k=5", "train.betas.0=0.9"])
    assert [(m.name, m.params) for m in recipe.evaluate.metrics] == [
        ("frechet", {}),
        ("precision_recall", {"k": 5}),
    ]
    assert recipe.train.betas == (0.9, 0.999)
    recipe = load_recipe(_write(tmp_path, BASE), ["evaluate.metrics.4.k=3"])  # the defaults
    assert (recipe.evaluate.metrics[4].name, recipe.evaluate.metrics[4].params) == (
        "precision_recall",
        {"k": 3},
    )
    with pytest.raises(
        RecipeError,
        match=r"evaluate.metrics has 6 items: index 6 is out of "
        r"range \(0 to 5\)",
    ):
        load_recipe(path.parent / "r.yaml", ["evaluate.metrics.6.k=3"])
    with pytest.raises(
        RecipeError,
        match=r"'evaluate.metrics.k=3': evaluate.metrics is a list: "
        r"'k' is not an index \(0 to 5\)",
    ):
        load_recipe(path, ["evaluate.metrics.k=3"])
    with pytest.raises(RecipeError, match=r"evaluate.steps.0 is 0, not a section"):
        load_recipe(path, ["evaluate.steps.0.x=3"])


def test_problems_with_overridden_list_items_point_at_the_command_line(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["evaluate.metrics.4.k=true"])
    assert str(caught.value).splitlines()[1:] == [
        f"  {path} (command line): evaluate.metrics.4.k: Input should be a valid integer (got True)"
    ]


@pytest.mark.parametrize(
    "text,problem",
    [
        ("train.epochs", "'train.epochs' is not an override: write key.path=value"),
        ("=3", "'=3' is not an override: write key.path=value"),
        ("train..epochs=3", "'train..epochs=3' is not an override: write key.path=value"),
        (
            "model={1: 2}",
            "'model={1: 2}': model.1: a key must be text, and this one reads as int; "
            "put it in quotes if you mean the text",
        ),
        (
            "train=&a [*a]",
            "'train=&a [*a]': refused: an alias refers to a node that contains it "
            "(a recursive structure)",
        ),
        (
            "train.x=!!binary aGk=",
            "'train.x=!!binary aGk=': refused: a recipe holds plain values; "
            "the tag !!binary is not supported",
        ),
    ],
)
def test_odd_overrides_are_clear_errors(text, problem):
    with pytest.raises(RecipeError) as caught:
        apply_overrides({}, [text])
    assert str(caught.value).splitlines() == ["overrides: 1 problem:", f"  overrides: {problem}"]


def test_overrides_that_are_not_yaml_stay_text():
    assert parse_override("data.root=[a") == (("data", "root"), "[a")
    assert parse_override(" train . epochs = 2") == (("train", "epochs"), 2)
    assert parse_override("output.dir=2020-01-01") == (("output", "dir"), "2020-01-01")


@pytest.mark.parametrize(
    "old,new,problem",
    [
        ("epochs: 2", "epochs: !!int xyz", ":12: invalid YAML: cannot read 'xyz' as int"),
        ("epochs: 2", "epochs: !!float ''", ":12: invalid YAML: cannot read '' as float"),
        (
            "epochs: 2",
            "epochs: " + "9" * 5000,
            ":12: invalid YAML: cannot read '999999999999999999999999999999999999... as int",
        ),
        (
            "dir: runs/x",
            "dir: !!binary aGk=",
            ":15: refused: a recipe holds plain values; the tag !!binary is not supported",
        ),
        (
            "dir: runs/x",
            "dir: !!set {a}",
            ":15: refused: a recipe holds plain values; the tag !!set is not supported",
        ),
        (
            "dir: runs/x",
            "dir: !!python/name:os.system",
            ":15: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ),
        (
            "dir: runs/x",
            "dir: runs/\x07",
            ":15: invalid YAML: the character U+0007 (column 13) is not allowed in YAML",
        ),
        (
            "dir: runs/x",
            'dir: "\\ud800"',
            ":15: output.dir: holds a character that is not valid text (a lone surrogate)",
        ),
    ],
)
def test_values_yaml_cannot_read_as_plain_data_name_their_line(tmp_path, old, new, problem):
    assert _problems(tmp_path, BASE.replace(old, new)) == [problem]


def test_dates_stay_text(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE.replace("dir: runs/x", "dir: 2020-01-01")))
    assert recipe.output.dir == "2020-01-01"


def test_files_that_are_not_recipes(tmp_path):
    assert _problems(tmp_path, b"# big\n" + b"a" * 2_000_000) == [
        ": larger than 1,000,000 bytes: a recipe is a short text; is this one?"
    ]
    with pytest.raises(RecipeError, match="cannot read the recipe: Is a directory"):
        load_recipe(tmp_path)
    assert _problems(tmp_path, b"\x00") == [
        ":1: invalid YAML: the character U+0000 (column 1) is not allowed in YAML"
    ]
    assert _problems(tmp_path, BASE + "---\nmore: 1\n")[0].startswith(
        ":16: invalid YAML: expected a single document"
    )


# ----------------------------------------------------------------------------------------------
# Component sections come from the table of kinds (issue #9)


def _component_fields(model, prefix=()) -> dict[tuple[str, ...], tuple[type, bool]]:
    """Key path -> (spec class, is a list) of every ComponentSpec field of the schema."""
    import typing

    from aesampler.recipe.schema import ComponentSpec

    found = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        is_list = typing.get_origin(annotation) is list
        inner = (
            typing.get_args(annotation) if is_list else (annotation, *typing.get_args(annotation))
        )
        spec = next(
            (a for a in inner if isinstance(a, type) and issubclass(a, ComponentSpec)), None
        )
        if spec is not None:
            found[(*prefix, name)] = (spec, is_list)
        else:
            nested = next(
                (a for a in inner if isinstance(a, type) and hasattr(a, "model_fields")), None
            )
            if nested is not None:
                found.update(_component_fields(nested, (*prefix, name)))
    return found


def test_the_schemas_component_sections_are_the_table_of_kinds():
    from aesampler import kinds

    fields = _component_fields(Recipe)
    singles = {path for path, (_, is_list) in fields.items() if not is_list}
    lists = {path for path, (_, is_list) in fields.items() if is_list}
    assert singles == {path for kind in kinds.KINDS for path in kind.sections}
    assert lists == {path for kind in kinds.KINDS for path in kind.lists}
    for kind in kinds.KINDS:  # the recipe's own keys are declared fields of the spec
        for path in kind.locations:
            assert set(kind.reserved) <= set(fields[path][0].model_fields), (kind.name, path)


def test_the_loaders_tables_are_derived_from_the_kinds():
    from aesampler import kinds
    from aesampler.recipe import loader

    sections = {path: (k.name, k.provided) for k in kinds.KINDS for path in k.sections}
    assert sections == loader.COMPONENT_SECTIONS
    assert loader.COMPONENT_LISTS == {
        ("evaluate", "metrics"): "metric",
        ("samplers", "compare"): "sampler",
        ("tune", "samplers"): "sampler",
    }
    reserved = ("batchnorm", "corruption")
    expected = {
        ("model",): ("checkpoint",),
        ("sampling", "start"): reserved,
        ("samplers", "compare"): reserved,
        ("tune", "samplers"): reserved,
    }
    assert expected == loader.RESERVED
    assert set(loader.BUILT_ONCE) == {"corruption", "sampler", "metric", "feature_extractor"}
    assert loader.COMPONENT_SECTIONS[("sampling", "start")] == ("sampler", ())


def test_sampling_start_defaults_to_the_prior(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE))
    assert (recipe.sampling.start.name, recipe.sampling.start.params) == ("prior", {})
    assert recipe.resolved()["sampling"]["start"] == {"name": "prior"}


def test_sampling_start_is_validated_and_built_once(tmp_path):
    path = _write(tmp_path, BASE)
    gmm = ["sampling.start.name=ex_post_gmm", "sampling.start.components=5"]
    recipe = load_recipe(path, gmm)
    assert recipe.sampling.start.name == "ex_post_gmm"
    assert recipe.sampling.start.params == {"components": 5}
    assert recipe.sampling.transition.name == "decode_corrupt_encode"  # its siblings keep defaults
    # Built once: the sampler's own check runs now, and the section came from the command line.
    assert _problems(tmp_path, BASE, [gmm[0], "sampling.start.components=0"]) == [
        " (command line): sampling.start: sampler 'ex_post_gmm' (aesampler) rejected its "
        "parameters {'components': 0}: components must be a positive integer, got 0"
    ]
    assert _problems(tmp_path, BASE, [gmm[0], "sampling.start.components=2.5"]) == [
        " (command line): sampling.start.components: Input should be a valid integer (got 2.5)"
    ]
    text = BASE + "sampling:\n  start: {name: encodings, split: tset}\n"
    assert _problems(tmp_path, text) == [
        ":17: sampling.start: sampler 'encodings' (aesampler) rejected its parameters "
        "{'split': 'tset'}: split must be 'train', 'valid' or 'test', got 'tset'"
    ]
    (problem,) = _problems(tmp_path, BASE, ["sampling.start.name=ex_post_gmn"])
    assert problem.startswith(
        " (command line): sampling.start.name: unknown sampler 'ex_post_gmn'. "
        "Did you mean 'ex_post_gmm'? Registered samplers: aae_discriminator (aesampler), "
        "encodings (aesampler), ex_post_gmm (aesampler), latent_flow (aesampler), "
        "local_global (aesampler), posterior_mixture (aesampler), prior (aesampler), "
        "ratio_corrected (aesampler)"
    )
    assert _problems(tmp_path, BASE, ["sampling.start.split=test"]) == [
        " (command line): sampling.start.split: sampler 'prior' (aesampler) has no parameter "
        "'split'. Parameters: none"
    ]


def test_a_component_that_is_not_its_kinds_interface_is_refused(tmp_path):
    from aesampler.recipe import build_sampler

    def not_a_sampler(scale: float = 1.0):
        """Returns a plain function where a Sampler belongs."""
        return lambda n, generator=None: None

    registry = _registry_with(("sampler", "odd", not_a_sampler))
    text = BASE + "sampling:\n  start: {name: odd}\n"
    assert _problems(tmp_path, text, registry=registry) == [
        ":17: sampling.start: sampler 'odd' (tests) returned function, not an "
        "aesampler.samplers.Sampler"
    ]
    recipe = load_recipe(_write(tmp_path, BASE), ["sampling.start.name=ex_post_gmm"])
    sampler = build_sampler(recipe)
    assert (type(sampler).__name__, sampler.components) == ("ExPostGMM", 10)
    resolved = recipe.resolved()
    resolved["sampling"]["start"] = {"name": "odd"}  # the schema alone does not build anything
    with pytest.raises(ComponentError, match="returned function, not an aesampler.samplers"):
        build_sampler(Recipe.model_validate(resolved), registry)


# A bare name wherever a component section goes (issue 19, item 7) ------------------------------

#: A registered name of each kind that the base recipe of these tests can use as it is.
BARE = {
    "model": "vae",
    "dataset": "mnist5k",
    "corruption": "identity",
    "transition": "decode_corrupt_encode",
    "sampler": "encodings",
    "feature_extractor": "pixels",
}


def _section_at(recipe: Recipe, path: tuple[str, ...]):
    for key in path:
        recipe = getattr(recipe, key)
    return recipe


def _nested_yaml(path: tuple[str, ...], value: str) -> str:
    return "".join(f"{'  ' * i}{key}:\n" for i, key in enumerate(path[:-1])) + (
        f"{'  ' * (len(path) - 1)}{path[-1]}: {value}\n"
    )


def _component_sections() -> list[tuple[tuple[str, ...], str]]:
    from aesampler import kinds

    return [(path, kind.name) for path, kind in kinds.sections()]


@pytest.mark.parametrize(
    ("path", "kind"),
    _component_sections(),
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else v,
)
def test_a_bare_name_is_the_section_on_the_command_line_in_yaml_and_in_python(tmp_path, path, kind):
    name, key = BARE[kind], ".".join(path)
    by_override = _section_at(load_recipe(_write(tmp_path, BASE), [f"{key}={name}"]), path)
    # In the file, the section replaces the base recipe's own (a top-level one is a new key).
    text = BASE if len(path) > 1 else re.sub(rf"(?ms)^{path[0]}:\n(  .*?\n)*", "", BASE)
    by_file = _section_at(load_recipe(_write(tmp_path, text + _nested_yaml(path, name))), path)
    data = yaml.safe_load(text)
    data.setdefault(path[0], {}) if len(path) > 1 else None
    (data[path[0]] if len(path) > 1 else data)[path[-1]] = name
    by_schema = _section_at(Recipe.model_validate(data), path)
    for section in (by_override, by_file, by_schema):
        assert (section.name, section.params) == (name, {}), key


def test_naming_another_component_replaces_the_section_and_name_keeps_its_siblings(tmp_path):
    text = BASE + "sampling:\n  start: {name: ex_post_gmm, components: 10, batchnorm: running}\n"
    path = _write(tmp_path, text)
    # KEY=NAME: the new component's section, nothing of the old one's parameters or settings
    start = load_recipe(path, ["sampling.start=prior"]).sampling.start
    assert (start.name, start.params, start.batchnorm) == ("prior", {}, None)
    # ... and its own keys may follow, in that order
    start = load_recipe(path, ["sampling.start=encodings", "sampling.start.split=valid"])
    assert start.sampling.start.params == {"split": "valid"}
    # KEY.name=NAME changes the name only: a parameter the new component lacks is an error at
    # the file's line, never carried over silently
    assert _problems(tmp_path, text, ["sampling.start.name=prior"]) == [
        ":17: sampling.start.components: sampler 'prior' (aesampler) has no "
        "parameter 'components'. Parameters: none"
    ]
    # A section named bare in the file takes overrides of its keys
    bare = _write(tmp_path, BASE + "sampling:\n  start: ex_post_gmm\n")
    assert load_recipe(bare, ["sampling.start.components=5"]).sampling.start.params == {
        "components": 5
    }


SAMPLERS = (
    "aae_discriminator, encodings, ex_post_gmm, latent_flow, local_global, posterior_mixture, "
    "prior, ratio_corrected"
)


def test_an_unknown_bare_name_names_the_key_and_the_choices(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert cli_main(["validate", str(path), "sampling.start=priorr"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"  {path} (command line): sampling.start.name: unknown sampler 'priorr'. Did you mean "
        "'prior'? Registered samplers: "
        + ", ".join(f"{name} (aesampler)" for name in SAMPLERS.split(", "))
    ]
    (problem,) = _problems(tmp_path, BASE + "sampling:\n  start: priorr\n")
    assert problem.startswith(":17: sampling.start.name: unknown sampler 'priorr'. Did you mean")
    (problem,) = _problems(tmp_path, BASE, ["evaluate.feature_extractor=pixel"])
    assert problem == (
        " (command line): evaluate.feature_extractor.name: unknown feature_extractor 'pixel'. "
        "Did you mean 'pixels'? Registered feature_extractors: classifier (aesampler), "
        "inception (aesampler), pixels (aesampler)"
    )


def test_a_section_that_holds_no_name_says_what_it_takes(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert cli_main(["validate", str(path), "sampling.start=5"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"  {path} (command line): sampling.start: must name a sampler ({SAMPLERS}, or auto), "
        "alone or as the name of a section with its parameters, not 5"
    ]
    listed = BASE.replace("data:\n  name: digits\n  image_size: 8\n", "data: [digits]\n")
    assert _problems(tmp_path, listed) == [
        ":5: data: must name a dataset (celeba, digits, image_folder, mnist5k, svhn), alone or as "
        "the name of a section with its parameters, not ['digits']"
    ]
    builtins = load_registry(builtins_only=True)  # installed plugins may add model kinds
    assert _problems(tmp_path, BASE, ["model=null"], builtins) == [
        " (command line): model: must name a model (aae, vae), alone or as the name of a section "
        "with its parameters, not None"
    ]
    assert load_recipe(path, ["corruption=null"]).corruption is None  # optional: null is none
