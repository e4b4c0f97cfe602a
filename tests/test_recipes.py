"""Every shipped recipe validates and runs; broken recipes get precise messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.io import savemat

from aesampler.checkpoint import find_checkpoint
from aesampler.recipe import RecipeError, apply_overrides, load_recipe, parse_override
from aesampler.training import train

from .test_data import CELEBA_NUMBERS, _fake_celeba_jpegs

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
    _fake_celeba_jpegs(root / "celeba" / "img_align_celeba", [*range(3, 9), *CELEBA_NUMBERS])
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
        f"  {p}:4: model.latent_dim: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        f"  {p}:5: model.widht: model 'aae' (aesampler) has no parameter 'widht'. Did you mean 'width'? "
        "Parameters: latent_dim, width, adversary_hidden, adversary_layers, adversary_dropout",
        f"  {p}:7: data.name: unknown dataset 'mnist5l'. Did you mean 'mnist5k'? Registered datasets: "
        "celeba (aesampler), digits (aesampler), image_folder (aesampler), mnist5k (aesampler), svhn (aesampler)",
        f"  {p}:8: corruption: corruption 'gaussian' (aesampler) rejected its parameters {{'sigma': -0.5}}: "
        "GaussianCorruption: sigma must be finite and >= 0, got -0.5",
        f"  {p}:12: train.epochs: Input should be greater than 0 (got 0)",
        f"  {p}:13: train.betas.1: Input should be less than 1 (got 1.5)",
        f"  {p}:14: train.lrr: unknown key. Did you mean 'lr'? Keys here: epochs, max_steps, batch_size, lr, "
        "betas, seed, device, num_workers, grid_size",
        f"  {p}:15: output.dir: missing: this key is required",
        f"  {p}:16: extra: unknown key. Keys here: model, data, corruption, train, sampling, interpolation, evaluate, output",
        f"  {p} (command line): train.seed: Input should be greater than or equal to 0 (got -1)",
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
