from __future__ import annotations

import json
import pickle
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

import aesampler
from aesampler.checkpoint import CheckpointError, find_checkpoint, load_model, load_training_state
from aesampler.models import AAE
from aesampler.plugins import load_registry
from aesampler.rundir import RunDirError
from aesampler.training import TrainingError, train

from .conftest import cli
from .helpers import tiny_recipe


def quiet(recipe, **kwargs):
    return train(recipe, progress=False, log=lambda message: None, **kwargs)


def weights(run_dir):
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_training_writes_a_complete_run_directory(tmp_path):
    run = tmp_path / "run"
    result = quiet(tiny_recipe(run))
    steps_per_epoch = 1455 // 64  # digits' training split, last partial batch dropped
    assert result.steps == steps_per_epoch and result.epochs_completed == 1
    assert (run / "recipe.yaml").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, steps_per_epoch + 1))
    assert {"reconstruction", "adversary", "generator", "loss"} <= set(steps[0])
    [epoch] = [r for r in lines if r["event"] == "epoch"]
    assert epoch["complete"] and "valid/reconstruction" in epoch and epoch["seconds"] > 0
    assert steps[-1]["reconstruction"] < steps[0]["reconstruction"]
    for name in ("epoch-001-reconstructions.png", "epoch-001-samples.png"):
        assert (run / "images" / name).stat().st_size > 100
    folder = find_checkpoint(run)
    assert folder.name == f"step-{steps_per_epoch:08d}"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.json",
        "model.safetensors",
        "state.pt",
    ]
    info = json.loads((folder / "model.json").read_text())
    assert info["model"] == {
        "kind": "aae",
        "architecture": {
            "image_size": 8,
            "channels": 1,
            "latent_dim": 4,
            "width": 4,
            "adversary_hidden": 16,
            "adversary_layers": 2,
            "adversary_dropout": 0.2,
        },
    }
    assert info["data"]["dataset"] == "digits" and info["data"]["value_range"] == [0.0, 1.0]
    assert info["corruption"] == {"name": "gaussian", "sigma": 0.5}
    assert info["step"] == steps_per_epoch


def test_checkpoint_rebuilds_the_model_without_the_recipe(tmp_path):
    run = tmp_path / "run"
    quiet(tiny_recipe(run, model={"name": "vae"}))
    model, info = load_model(run)
    assert isinstance(model, aesampler.models.VAE) and info["model"]["kind"] == "vae"
    again, _ = load_model(find_checkpoint(run))
    x = torch.rand(5, 1, 8, 8)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x), again.reconstruct(x))
    stored = weights(run)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key])
    # The rebuilt model samples through the chain runner.
    result = aesampler.Chain(model.encoder, model.decoder, aesampler.GaussianCorruption(0.5)).run(
        n=6, steps=2, seed=0
    )
    assert result.x[2].shape == (6, 1, 8, 8)


def test_two_epochs_equal_one_epoch_resumed_for_one_more(tmp_path):
    quiet(tiny_recipe(tmp_path / "straight", train={"epochs": 2}))
    quiet(tiny_recipe(tmp_path / "resumed", train={"epochs": 1}))
    result = quiet(tiny_recipe(tmp_path / "resumed", train={"epochs": 2}), resume=True)
    assert result.epochs_completed == 2
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("name", ["vae", "aae"])  # the AAE's adversary draws dropout masks
def test_resume_mid_epoch_after_max_steps(tmp_path, name):
    quiet(tiny_recipe(tmp_path / "straight", model={"name": name}))
    first = quiet(tiny_recipe(tmp_path / "resumed", model={"name": name}, train={"max_steps": 5}))
    assert first.steps == 5 and first.epochs_completed == 0
    state = load_training_state(find_checkpoint(tmp_path / "resumed"))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (5, 0, 5)
    quiet(tiny_recipe(tmp_path / "resumed", model={"name": name}), resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_a_run_directory_is_never_overwritten_without_the_flag(tmp_path):
    run = tmp_path / "run"
    quiet(tiny_recipe(run, train={"max_steps": 2}))
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already exists; pass --resume .* --overwrite"):
        quiet(tiny_recipe(run, train={"max_steps": 2}))
    assert (run / "metrics.jsonl").read_text() == before
    quiet(tiny_recipe(run, train={"max_steps": 3}), overwrite=True)
    assert find_checkpoint(run).name == "step-00000003"
    with pytest.raises(TrainingError, match="does not exist or is empty"):
        quiet(tiny_recipe(tmp_path / "new"), resume=True)
    with pytest.raises(TrainingError, match="cannot resume .* recipe builds"):
        quiet(tiny_recipe(run, model={"latent_dim": 5}), resume=True)


class _NaNAfterTwoEpochs(AAE):
    """An AAE whose loss turns NaN at its 30th step (in the second epoch)."""

    calls = 0

    def training_step(self, x, x_input, optimizers, generator=None):
        losses = super().training_step(x, x_input, optimizers, generator)
        type(self).calls += 1
        if type(self).calls >= 30:
            losses["reconstruction"] = torch.tensor(float("nan"))
        return losses


class _NaNPlugin:
    @aesampler.hookimpl
    def register_models(self, register):
        register("nan_aae", _NaNAfterTwoEpochs)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    registry = load_registry(extra_plugins=[("nan", _NaNPlugin())])
    run = tmp_path / "run"
    recipe = tiny_recipe(run, registry, model={"name": "nan_aae"}, train={"epochs": 3})
    _NaNAfterTwoEpochs.calls = 0
    with pytest.raises(
        TrainingError,
        match=r"non-finite loss at step 30 \(epoch 2\): reconstruction=nan.*step-00000022",
    ):
        quiet(recipe, registry=registry)
    assert find_checkpoint(run).name == "step-00000022"
    model, _ = load_model(run, registry=registry)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_broken_checkpoints_give_clear_errors(tmp_path):
    run = tmp_path / "run"
    quiet(tiny_recipe(run, train={"max_steps": 1}))
    folder = find_checkpoint(run)
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read weights .*truncated"):
        load_model(run)
    (folder / "model.json").write_text('{"hello": "world"}')
    with pytest.raises(CheckpointError, match="not an aesampler checkpoint"):
        load_model(run)
    (folder / "model.json").write_text('{"format": "aesampler-check')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder)
    state = folder / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read the training state"):
        load_training_state(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    state.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="cannot read the training state"):
        load_training_state(folder)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nothing")


def test_train_cli_end_to_end(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        "data: {name: digits, image_size: 8}\n"
        "train: {epochs: 1, grid_size: 4}\n"
        "output: {dir: unused}\n"
    )
    out = tmp_path / "run"
    args = ["train", str(recipe), "train.max_steps=3", "--out", str(out), "--quiet"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "trained vae for 3 steps" in done.stdout and "step-00000003" in done.stdout
    again = cli(*args)
    assert again.returncode == 2
    assert (
        again.stderr.startswith("aesampler: error: the run directory")
        and "Traceback" not in again.stderr
    )
    resumed = cli(*args[:2], "train.max_steps=4", *args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "trained vae for 4 steps" in resumed.stdout
    bad = cli("train", str(recipe), "train.epochs=0", "model.widht=3")
    assert bad.returncode == 2
    assert (
        f"{recipe} (command line): train.epochs: Input should be greater than 0 (got 0)"
        in bad.stderr
    )
    assert (
        "model.widht: model 'vae' (aesampler) has no parameter 'widht'. Did you mean 'width'?"
        in bad.stderr
    )


def test_losses_are_read_from_the_device_every_log_every_steps_and_all_are_logged(
    tmp_path, monkeypatch
):
    """The loop reads losses in batches of train.log_every steps (one device-to-host copy for
    many steps, no synchronisation per step), and the log is the same whatever the batch."""
    from aesampler import training

    reads = []
    drain = training._PendingLosses.drain

    def counted(self):
        reads.append(len(self))
        return drain(self)

    monkeypatch.setattr(training._PendingLosses, "drain", counted)
    logs = {}
    for every in (1, 4):
        reads.clear()
        run = tmp_path / f"every-{every}"
        quiet(tiny_recipe(run, train={"epochs": 2, "max_steps": 9, "log_every": every}))
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logs[every] = lines
        steps = [line["step"] for line in lines if line["event"] == "step"]
        assert steps == list(range(1, 10))
        assert sum(reads) == 9 and max(reads) == every, reads
    strip = lambda lines: [{k: v for k, v in line.items() if k != "seconds"} for line in lines]  # noqa: E731
    assert strip(logs[1]) == strip(logs[4])


def test_bf16_training_keeps_weights_optimiser_state_and_checkpoint_format_fp32(tmp_path):
    """train.precision: bf16 trains (finite losses) under autocast, and what it saves has the
    keys, shapes and dtypes of an fp32 run's checkpoint."""
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        result = quiet(tiny_recipe(runs[precision], train={"precision": precision, "max_steps": 6}))
        assert all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())
    w32, w16 = weights(runs["fp32"]), weights(runs["bf16"])
    assert {k: (v.shape, v.dtype) for k, v in w32.items()} == {
        k: (v.shape, v.dtype) for k, v in w16.items()
    }
    assert {v.dtype for v in w16.values() if v.is_floating_point()} == {torch.float32}
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # bf16 did compute differently
    states = [load_training_state(find_checkpoint(runs[p])) for p in ("fp32", "bf16")]
    for name, state in states[1]["optimizers"].items():
        for index, values in state["state"].items():
            reference = states[0]["optimizers"][name]["state"][index]
            for key, value in values.items():
                assert value.dtype == reference[key].dtype, (name, index, key)
                assert value.stride() == reference[key].stride(), (name, index, key)
    model, _ = load_model(runs["bf16"])
    assert model.train_precision == "fp32"  # precision is the loop's setting, not the model's


class _PlainAAE(AAE):
    """A third-party model written before train.precision: its step never enters autocast."""

    seen: ClassVar[set] = set()  # the dtypes its decoder produced in training

    def training_step(self, x, x_input, optimizers, generator=None):
        x_rec = self.decoder(self.encoder(x_input).mean)
        type(self).seen.add(x_rec.dtype)
        loss = torch.nn.functional.binary_cross_entropy(x_rec, x)
        optimizers["autoencoder"].zero_grad()
        loss.backward()
        optimizers["autoencoder"].step()
        return {"loss": loss.detach()}


class _PlainPlugin:
    @aesampler.hookimpl
    def register_models(self, register):
        register("plain_aae", _PlainAAE)


def test_a_model_that_ignores_the_precision_trains_in_fp32_under_bf16(tmp_path):
    registry = load_registry(extra_plugins=[("plain", _PlainPlugin())])
    recipe = tiny_recipe(
        tmp_path / "run", registry, model={"name": "plain_aae"}, train={"precision": "bf16"}
    )
    _PlainAAE.seen = set()
    result = quiet(recipe, registry=registry)
    assert result.steps == 1455 // 64 and torch.isfinite(torch.tensor(result.last_losses["loss"]))
    assert _PlainAAE.seen == {torch.float32}


def test_bf16_training_is_refused_on_a_cuda_device_without_bfloat16(monkeypatch):
    from aesampler.training import train_precision

    monkeypatch.setattr("aesampler.precision._WARNED", set())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(TrainingError, match="cuda:0 has no bfloat16 support"):
        train_precision(torch.device("cuda:0"), "bf16")
    assert train_precision(torch.device("cuda:0"), "fp32").precision == "fp32"
    with pytest.warns(aesampler.SlowPrecisionWarning):  # this suite's CPU has no fast bf16
        assert train_precision(torch.device("cpu"), "bf16").precision == "bf16"


def test_training_opens_with_what_it_trains_and_labels_its_bar(tmp_path, capsys):
    """One line says the model, its size, the data, the corruption, epochs and steps; the bar
    names the model (issue 19: "nothing says what is being trained")."""
    said: list[str] = []
    recipe = tiny_recipe(tmp_path / "run", train={"epochs": 2, "max_steps": 30})
    train(recipe, progress=True, log=said.append)
    model = AAE(image_size=8, channels=1, latent_dim=4, width=4, adversary_hidden=16)
    parameters = sum(p.numel() for p in model.parameters())
    opening = next(line for line in said if line.startswith("train: model"))
    assert opening == (
        f"train: model aae ({parameters:,} parameters), data digits (1,455 training images of "
        "1×8×8), corruption gaussian; 2 epochs × 22 steps of 64 images = 44 steps, cut to 30 by "
        "train.max_steps; on cpu"
    )
    assert "train aae: 100%" in capsys.readouterr().err
    said.clear()
    resumed = tiny_recipe(tmp_path / "run", train={"epochs": 2})
    train(resumed, resume=True, progress=False, log=said.append)
    opening = next(line for line in said if line.startswith("train: model"))
    assert opening.endswith("= 44 steps, resumed at step 30; on cpu")


def test_the_opening_line_shown_in_the_docs_is_the_quickstarts():
    """docs/training.md shows the quickstart's opening line: its numbers are the quickstart's."""
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    shown = re.search(r"^train: model .*$", (root / "docs" / "training.md").read_text(), re.M)[0]
    recipe = yaml.safe_load((root / "recipes" / "quickstart.yaml").read_text())
    model, train_cfg = recipe["model"], recipe["train"]
    net = AAE(image_size=32, channels=1, latent_dim=model["latent_dim"], width=model["width"])
    per_epoch = 4000 // train_cfg["batch_size"]
    assert shown == (
        f"train: model aae ({sum(p.numel() for p in net.parameters()):,} parameters), data "
        "mnist5k (4,000 training images of 1×32×32), corruption gaussian; "
        f"{train_cfg['epochs']} epochs × {per_epoch} steps of {train_cfg['batch_size']} images = "
        f"{train_cfg['epochs'] * per_epoch:,} steps; on cpu"
    )
