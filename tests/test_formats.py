"""Checkpoint formats: the extension point through which a plugin loads models another library
saved (``register_checkpoint_formats``), tested with a toy format defined here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import aesampler
from aesampler.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_model,
    locate_checkpoint,
    model_digest,
)
from aesampler.formats import CheckpointFormat, loaded_by
from aesampler.models import GenerativeAutoencoder
from aesampler.plugins import load_registry
from aesampler.recipe import build_model
from aesampler.recipe.build import meta_model
from aesampler.recipe.loader import validate
from aesampler.workflow import WorkflowError, build_components

from .helpers import tiny_recipe

SIDE, LATENT = 8, 3


class ToyModel(GenerativeAutoencoder):
    """Trained elsewhere: a linear encoder and decoder on 1 x 8 x 8 images."""

    kind = "toy"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.architecture = dict(image_size=SIDE, channels=1, latent_dim=LATENT)
        self.encoder = aesampler.DeterministicEncoder(
            nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, LATENT))
        )
        net = nn.Sequential(nn.Linear(LATENT, SIDE * SIDE), nn.Sigmoid())
        self.decoder = aesampler.ModuleDecoder(
            nn.Sequential(net, nn.Unflatten(1, (1, SIDE, SIDE))), latent_shape=LATENT
        )
        self.scale = scale

    def optimizer_groups(self):
        raise AssertionError("never trained")

    def training_step(self, x, x_input, optimizers, generator=None):
        raise AssertionError("never trained")


def toy(image_size: int, channels: int, scale: float = 1.0):
    """A toy model saved elsewhere (loaded, never built)."""
    raise AssertionError("aesampler never builds a kind a format loads")


class ToyFolders(CheckpointFormat):
    """Folders holding toy.json and toy.safetensors."""

    model = "toy"

    def locate(self, path):
        return path if (path / "toy.json").is_file() else None

    def files(self, folder):
        return [folder / "toy.json", folder / "toy.safetensors"]

    def load(self, folder, registry, scale: float = 1.0):
        model = ToyModel(scale)
        model.load_state_dict(load_file(str(folder / "toy.safetensors")))
        return model

    def info(self, folder):
        return {"toy": json.loads((folder / "toy.json").read_text())}


class ToyPlugin:
    @aesampler.hookimpl
    def register_models(self, register):
        register("toy", toy)

    @aesampler.hookimpl
    def register_checkpoint_formats(self, register):
        register("toy", ToyFolders)


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra_plugins=[("toy", ToyPlugin())], builtins_only=True)


def toy_recipe(run_dir: Path, registry, **model):
    data = {"name": "digits", "image_size": SIDE}
    sections = {"model": {"name": "toy", **model}, "data": data, "output": {"dir": str(run_dir)}}
    return validate(sections, registry=registry)


def toy_folder(path: Path, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file(ToyModel().state_dict(), str(path / "toy.safetensors"))
    (path / "toy.json").write_text(json.dumps({"saved_by": "toylib"}))
    return path


def test_the_built_in_format_is_aesamplers_own_and_listed_first(registry):
    component = registry.get("checkpoint_format", "aesampler")
    assert component.distribution == "aesampler"
    assert registry.names("checkpoint_format") == ["aesampler", "toy"]
    assert loaded_by(registry, "toy")[0].name == "toy"
    assert loaded_by(registry, "vae") is None  # aesampler builds and trains it


def test_a_foreign_folder_loads_with_its_options(registry, tmp_path):
    folder = toy_folder(tmp_path / "saved")
    located = locate_checkpoint(folder, registry)
    assert (located.folder, located.component.name, located.own) == (folder, "toy", False)
    model, info = load_model(folder, registry, scale=2.5)
    assert isinstance(model, ToyModel) and model.scale == 2.5
    assert info == {
        "toy": {"saved_by": "toylib"},
        "model": {"kind": "toy", "architecture": model.architecture},
    }
    result = aesampler.Chain(model.encoder, model.decoder).run(n=4, steps=2, seed=0)
    assert result.x[2].shape == (4, 1, SIDE, SIDE)
    with pytest.raises(aesampler.ComponentError, match=r"has no parameter 'sclae'.*'scale'\?"):
        load_model(folder, registry, sclae=2.5)


def test_aesamplers_own_checkpoints_take_no_options_and_keep_their_digest(tiny_run, tmp_path):
    _, run, _ = tiny_run
    with pytest.raises(CheckpointError, match=r"is an aesampler checkpoint, which takes no load"):
        load_model(run, scale=2.0)
    weights = find_checkpoint(run) / "model.safetensors"
    assert model_digest(run) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_the_digest_covers_every_file_of_a_foreign_model(registry, tmp_path):
    folder = toy_folder(tmp_path / "saved")
    before = model_digest(folder, registry)
    (folder / "toy.json").write_text(json.dumps({"saved_by": "someone else"}))
    assert model_digest(folder, registry) != before


def test_what_a_format_gets_wrong_is_named(registry, tmp_path):
    folder = toy_folder(tmp_path / "saved")

    class Broken(ToyFolders):
        def __init__(self, fault):
            self.fault = fault

        def locate(self, path):
            if self.fault == "locate":
                raise KeyError("oops")
            return "not/a/folder" if self.fault == "not a folder" else super().locate(path)

        def load(self, folder, registry, scale: float = 1.0):
            if self.fault == "load":
                raise ValueError("bad bytes")
            if self.fault == "no latent shape":
                model = super().load(folder, registry)
                model.decoder.latent_shape = None
                model.architecture.pop("channels")
                return model
            return nn.Linear(2, 2)

    for fault, message in [
        ("locate", r"checkpoint format 'toy' \(<direct>\) failed while looking at .*KeyError"),
        ("not a folder", r"recognised .* but gave 'not/a/folder', not a folder"),
        ("load", r"checkpoint format 'toy' \(<direct>\) could not load .*ValueError: bad bytes"),
        ("model", r"a model aesampler cannot sample: it is a Linear, not an aesampler\.models"),
        (
            "no latent shape",
            r"its decoder has no latent_shape; its architecture's channels is None",
        ),
    ]:

        class Plugin:
            @aesampler.hookimpl
            def register_models(self, register):
                register("toy", toy)

            @aesampler.hookimpl
            def register_checkpoint_formats(self, register, fault=fault):
                register("toy", lambda: Broken(fault))

        broken = load_registry(extra_plugins=[("toy", Plugin())], builtins_only=True)
        with pytest.raises(CheckpointError, match=message):
            load_model(folder, broken)


def test_a_folder_two_formats_claim_or_none_claims(registry, tmp_path):
    folder = toy_folder(tmp_path / "saved")

    class Greedy(ToyFolders):
        model = "toy"

        def locate(self, path):
            return path

    class Plugin:
        @aesampler.hookimpl
        def register_checkpoint_formats(self, register):
            register("greedy", Greedy)

    both = load_registry(
        extra_plugins=[("toy", ToyPlugin()), ("greedy", Plugin())], builtins_only=True
    )
    with pytest.raises(CheckpointError, match=r"recognised by several checkpoint formats"):
        locate_checkpoint(folder, both)
    with pytest.raises(
        CheckpointError,
        match=r"no checkpoint at .*model\.safetensors, or a folder in another registered "
        r"checkpoint format: toy \(<direct>\)",
    ):
        locate_checkpoint(tmp_path / "empty", registry)


def test_a_kind_a_format_loads_is_never_built_nor_trained(registry, tmp_path):
    assert meta_model("toy", {"image_size": 8, "channels": 1}, registry) is None
    recipe = toy_recipe(tmp_path / "run", registry, scale=2.0)
    data = aesampler.get_registry().create("dataset", "digits", split="train", image_size=8)
    with pytest.raises(
        aesampler.AesamplerError,
        match=r"model: 'toy' \(<direct>\) is not trained by aesampler: its models are loaded "
        r"from folders in the checkpoint format 'toy'",
    ):
        build_model(recipe, data, registry)


def test_a_recipe_samples_a_foreign_folder_with_its_options(registry, tmp_path):
    folder = toy_folder(tmp_path / "saved")
    recipe = toy_recipe(tmp_path / "run", registry, scale=2.0)
    parts = build_components(recipe, checkpoint=folder, registry=registry)
    assert parts.model.scale == 2.0 and parts.checkpoint == folder
    assert len(parts.weights_digest()) == 64
    assert parts.dataset("test").image_size == SIDE
    wrong = tiny_recipe(tmp_path / "run", registry, model={"name": "vae"})
    with pytest.raises(
        WorkflowError, match=r"set model.name: toy in the recipe \(it names 'vae'\)"
    ):
        build_components(wrong, checkpoint=folder, registry=registry)


def test_a_recipe_naming_a_foreign_kind_for_an_aesampler_checkpoint(registry, tiny_run, tmp_path):
    _, run, _ = tiny_run
    recipe = toy_recipe(tmp_path / "run", registry)
    with pytest.raises(
        WorkflowError, match=r"model 'toy' is loaded from folders in the checkpoint"
    ):
        build_components(recipe, checkpoint=run, registry=registry)
