"""Tests of the pythae plugin, run against the installed distribution.

Tiny pythae models are trained here, on 128 of scikit-learn's 8 x 8 digits (aesampler's
``digits`` data, nothing to download): a VAE by pythae's own trainer (its output folder as the
trainer lays it out) and an RAE_L2 by a few steps of a plain loop, saved with ``model.save``.
Then aesampler samples, evaluates and compares them through its command line (in this process)
and its Python API, and the pickles pythae writes for custom networks are read only with the
user's word.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from aesampler_pythae import PythaeAutoencoder, PythaeError, PythaeFolders
from pythae.data.datasets import BaseDataset, DatasetOutput
from pythae.models import RAE_L2, SVAE, VAE, RAE_L2_Config, SVAEConfig, VAEConfig
from pythae.trainers import BaseTrainer, BaseTrainerConfig

import aesampler
from aesampler.checkpoint import CheckpointError, load_model, locate_checkpoint
from aesampler.cli import main
from aesampler.evaluation import evaluate_samples
from aesampler.samplers import ExPostGMM, encode_images

LATENT = 4
RECIPE = """\
model: {name: pythae}
data: {name: digits, image_size: 8}
sampling: {num_chains: 16, steps: 3, chunk_size: 8, grid_size: 9, seed: 5, precision: fp32}
evaluate:
  {num_chains: 40, steps: [0, 1, 3], reference_size: 40, bootstrap: 10, feature_extractor: pixels}
samplers: {compare: [prior, {name: ex_post_gmm, components: 2}], steps: [0, 2]}
interpolation: {pairs: 2, points: 4, steps: 1}
"""


def cli(*args: str) -> tuple[int, str]:
    """``aesampler ARGS`` in this process; the exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    data = aesampler.get_registry().create("dataset", "digits", split="train", image_size=8)
    return torch.stack([data[i][0] for i in range(128)])  # (128, 1, 8, 8) in [0, 1]


@pytest.fixture(scope="module")
def vae_training(tmp_path_factory, digits) -> Path:
    """A VAE trained for 2 epochs by pythae's trainer: its output_dir, as the trainer left it."""
    output_dir = tmp_path_factory.mktemp("pythae-vae")
    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=LATENT))
    config = BaseTrainerConfig(
        output_dir=str(output_dir),
        num_epochs=2,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=64,
        steps_saving=None,
        no_cuda=True,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        BaseTrainer(
            model, BaseDataset(digits, torch.zeros(len(digits))), training_config=config
        ).train()
    return output_dir


@pytest.fixture(scope="module")
def rae(tmp_path_factory, digits) -> Path:
    """A deterministic RAE_L2 after 5 Adam steps of a plain loop, saved with model.save."""
    folder = tmp_path_factory.mktemp("pythae-rae") / "rae"
    torch.manual_seed(1)
    model = RAE_L2(RAE_L2_Config(input_dim=(1, 8, 8), latent_dim=LATENT))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        loss = model(DatasetOutput(data=digits)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save(str(folder))
    return folder


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "pythae.yaml"
    path.write_text(RECIPE + f"output: {{dir: {tmp_path / 'run'}}}\n")
    return path


def with_config(source: Path, target: Path, **changes) -> Path:
    """A copy of a pythae folder with ``model_config.json`` changed."""
    shutil.copytree(source, target)
    config = json.loads((target / "model_config.json").read_text())
    config.update(changes)
    (target / "model_config.json").write_text(json.dumps(config))
    return target


class CreatesMarker:
    """Unpickling this creates the file ``marker``: it proves whether a pickle was read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- registration -------------------------------------------------------------------------------


def test_registered_through_the_entry_point_with_its_distribution():
    registry = aesampler.load_registry()
    for kind in ("model", "checkpoint_format"):
        component = registry.get(kind, "pythae")
        assert component.distribution == "aesampler-pythae"
        assert component.version == importlib.metadata.version("aesampler-pythae")
        assert component.plugin == "pythae"
    assert registry.get("checkpoint_format", "pythae").factory is PythaeFolders
    assert list(registry.get("model", "pythae").parameters()) == [
        "image_size",
        "channels",
        "trust_pickled_code",
    ]
    code, out = cli("plugins")
    assert code == 0
    assert any(
        line.split()[:3] == ["checkpoint_format", "pythae", "aesampler-pythae"]
        for line in out.splitlines()
    )


def test_the_trainers_folders_are_recognised(vae_training, rae, tmp_path):
    [training] = [p for p in vae_training.iterdir() if p.is_dir()]
    for path in (vae_training, training, training / "final_model"):
        assert locate_checkpoint(path).folder == training / "final_model"
        assert locate_checkpoint(path).component.name == "pythae"
    assert locate_checkpoint(rae).folder == rae
    two = tmp_path / "two"
    for name in ("VAE_training_1", "VAE_training_2"):
        shutil.copytree(training, two / name)
    with pytest.raises(PythaeError, match=r"holds 2 pythae trainings .* give the one to load"):
        locate_checkpoint(two)
    with pytest.raises(
        CheckpointError, match=r"no checkpoint at .*: .*pythae \(aesampler-pythae\)"
    ):
        locate_checkpoint(tmp_path / "nothing")


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("trained", ["vae_training", "rae"])
def test_sample_evaluate_and_compare_samplers_on_pythaes_models(trained, recipe, tmp_path, request):
    """A variational model (pythae's trainer's folder) and a deterministic one (model.save)."""
    folder = request.getfixturevalue(trained)
    run = tmp_path / "run"
    code, out = cli("sample", str(recipe), "--checkpoint", str(folder), "--quiet")
    assert code == 0, out
    assert (run / "samples" / "step-003.png").is_file()
    code, out = cli("evaluate", str(recipe), "--checkpoint", str(folder), "--quiet")
    assert code == 0, out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == [0, 1, 3]
    assert "mmd_learned" in metrics["metrics"]  # latent metrics: the encoder's posteriors
    assert "frechet" in metrics["metrics"]
    code, out = cli("compare-samplers", str(recipe), "--checkpoint", str(folder), "--quiet")
    assert code == 0, out
    assert "ex_post_gmm" in out and (run / "samplers").is_dir()
    # The fitted state is kept under a key that names this model's files, and reused.
    code, out = cli(
        "compare-samplers", str(recipe), "--checkpoint", str(folder), "--quiet", "--overwrite"
    )
    assert code == 0 and "loaded what it fitted" in out, out


def test_run_a_deterministic_model_from_model_checkpoint(rae, recipe):
    code, out = cli("run", str(recipe), f"model.checkpoint={rae}", "--quiet")
    assert code == 0, out
    assert "trained" not in out.split("run finished")[1].split(";")[0]  # nothing was trained
    run = recipe.parent / "run"
    assert (run / "interpolation" / "interpolation.png").is_file()
    assert (run / "metrics.json").is_file() and (run / "report.html").is_file()


def test_what_cannot_be_done_is_said(vae_training, rae, recipe):
    code, out = cli("train", str(recipe))
    assert code == 2
    assert "model: 'pythae' (aesampler-pythae) is not trained by aesampler" in out
    assert "--checkpoint FOLDER" in out
    code, out = cli("run", str(recipe), "--quiet")  # no checkpoint: it would train
    assert code == 2 and "is not trained by aesampler" in out
    code, out = cli("sample", str(recipe), "model.name=vae", "--checkpoint", str(rae))
    assert code == 2
    assert "is a folder in the checkpoint format 'pythae' (aesampler-pythae)" in out
    assert "set model.name: pythae" in out
    code, out = cli("evaluate", str(recipe), "data.image_size=16", "--checkpoint", str(rae))
    assert code == 2
    assert (
        "data 'digits' gives 1-channel images of 16 x 16, but the model in "
        f"'{rae}' was trained on 1-channel images of 8 x 8" in out
    )
    code, out = cli(
        "sample", str(recipe), "model.trust_pickled_code=maybe", "--checkpoint", str(rae)
    )
    assert code == 2 and "trust_pickled_code" in out


# --- the Python API ------------------------------------------------------------------------------


def test_load_model_then_chain_fitted_sampler_and_evaluation(vae_training, rae, digits):
    model, info = load_model(vae_training)
    assert isinstance(model, PythaeAutoencoder)
    assert model.architecture == {
        "image_size": 8,
        "channels": 1,
        "latent_dim": LATENT,
        "pythae_model": "VAE",
    }
    assert info["format"] == "pythae" and info["model"]["kind"] == "pythae"
    assert isinstance(model.encoder, aesampler.GaussianEncoder)
    chain = aesampler.Chain(model.encoder, model.decoder)
    result = chain.run(n=10, steps=3, seed=0, precision="fp32")
    assert result.x[3].shape == (10, 1, 8, 8) and result.z[3].shape == (10, LATENT)
    assert float(result.x[3].min()) >= 0 and float(result.x[3].max()) <= 1  # pythae's sigmoid

    deterministic, _ = load_model(rae)
    assert isinstance(deterministic.encoder, aesampler.DeterministicEncoder)
    assert deterministic.encoder(digits[:5]).is_deterministic
    # Both: encode, fit a start sampler on the latents, run chains from it, evaluate.
    for loaded in (model, deterministic):
        chain = aesampler.Chain(loaded.encoder, loaded.decoder)
        z = encode_images(chain, digits, batchnorm="running")
        assert z.shape == (len(digits), LATENT)
        gmm = ExPostGMM(components=2).fit_latents(z, log=lambda line: None)
        started = chain.run(n=30, start=gmm, steps=2, seed=1, precision="fp32")
        report = evaluate_samples(
            started.x,
            digits,
            metrics=["frechet", "mmd_learned"],
            latents=started.z,
            reference_latents=z,
            bootstrap=5,
            log=lambda line: None,
        )
        assert set(report["metrics"]) == {"frechet", "mmd_learned"}
        assert report["steps"] == [0, 1, 2]
    # The weights are pythae's: the wrapped networks give what the pythae model gives.
    reloaded = RAE_L2.load_from_folder(str(rae))  # a folder this test wrote, without pickles
    torch.testing.assert_close(
        deterministic.decoder(deterministic.encoder(digits[:5]).mean),
        reloaded.predict(digits[:5]).recon_x,
    )


def test_loading_leaves_the_callers_random_state_alone(rae):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(rae)
    assert torch.equal(torch.rand(3), expected)


def test_models_aesampler_cannot_sample_and_folders_that_do_not_fit(rae, tmp_path):
    svae = tmp_path / "svae"
    SVAE(SVAEConfig(input_dim=(1, 8, 8), latent_dim=LATENT)).save(str(svae))
    with pytest.raises(
        PythaeError, match=r"cannot sample a pythae SVAE: its posterior is a von Mises-Fisher"
    ):
        load_model(svae)
    flat = with_config(rae, tmp_path / "flat", input_dim=[64])
    with pytest.raises(PythaeError, match=r"has input_dim \[64\]: aesampler samples square images"):
        load_model(flat)
    wider = with_config(rae, tmp_path / "wider", latent_dim=LATENT + 1)
    with pytest.raises(
        PythaeError, match=r"the encoder weights in .*model.pt' do not fit the RAE_L2"
    ):
        load_model(wider)
    damaged = with_config(rae, tmp_path / "damaged")
    (damaged / "model_config.json").write_text('{"name": "RAE_L2_Con')
    with pytest.raises(PythaeError, match=r"model_config.json' is not valid JSON"):
        load_model(damaged)
    with pytest.raises(aesampler.ComponentError, match=r"has no parameter 'trust_pickled_cod'"):
        load_model(rae, trust_pickled_cod=True)
    with pytest.raises(PythaeError, match=r"trust_pickled_code must be True or False, got 'no'"):
        load_model(rae, trust_pickled_code="no")


# --- pickles -------------------------------------------------------------------------------------


def test_a_pickled_network_is_never_unpickled_without_the_users_word(rae, recipe, tmp_path):
    marker = tmp_path / "pickle-ran"
    evil = with_config(rae, tmp_path / "evil", uses_default_encoder=False)
    (evil / "encoder.pkl").write_bytes(pickle.dumps(CreatesMarker(marker)))
    refused = (
        r"has its own encoder network, which pythae saved as a pickle: .*encoder\.pkl'"
        r".*trust_pickled_code"
    )
    with pytest.raises(PythaeError, match=refused):
        load_model(evil)
    for command in ("sample", "evaluate", "compare-samplers"):
        code, out = cli(command, str(recipe), "--checkpoint", str(evil), "--quiet")
        assert code == 2 and "trust_pickled_code: true in the recipe's model section" in out, out
    code, out = cli("validate", str(recipe), f"model.checkpoint={evil}")
    assert code == 0, out
    assert not marker.exists()  # nothing read it: not the format's locate, files or digest
    # The test's pickle does run once the user says the folder is trusted, so the check above
    # could have failed: it is then refused as not a network.
    with pytest.raises(PythaeError, match=r"encoder\.pkl' holds a TextIOWrapper, not a network"):
        load_model(evil, trust_pickled_code=True)
    assert marker.exists()


def test_weights_are_read_as_tensors_only_even_with_the_users_word(rae, tmp_path):
    marker = tmp_path / "weights-ran"
    evil = with_config(rae, tmp_path / "evil-weights")
    torch.save({"model_state_dict": {"w": CreatesMarker(marker)}}, evil / "model.pt")
    with pytest.raises(PythaeError, match=r"model\.pt' holds more than tensors.*refused it"):
        load_model(evil, trust_pickled_code=True)
    assert not marker.exists()


def test_a_custom_network_loads_with_the_users_word(tmp_path, digits, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import pythae_custom_nets

    folder = tmp_path / "custom"
    torch.manual_seed(2)
    encoder = pythae_custom_nets.SmallGaussianEncoder(LATENT)
    VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=LATENT), encoder=encoder).save(str(folder))
    assert (folder / "encoder.pkl").is_file() and not (folder / "decoder.pkl").exists()
    with pytest.raises(PythaeError, match=r"trust_pickled_code"):
        load_model(folder)
    # The pickle holds the class by value: it loads without the module that defined it.
    monkeypatch.delitem(sys.modules, "pythae_custom_nets")
    model, _ = load_model(folder, trust_pickled_code=True)
    assert type(model.encoder.net).__name__ == "SmallGaussianEncoder"
    torch.testing.assert_close(model.encoder.net.head.weight, encoder.head.weight)
    result = aesampler.Chain(model.encoder, model.decoder).run(
        n=6, steps=2, seed=0, precision="fp32"
    )
    assert result.x[2].shape == (6, 1, 8, 8)
