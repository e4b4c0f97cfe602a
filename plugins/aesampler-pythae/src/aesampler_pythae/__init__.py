"""aesampler-pythae: models trained with pythae, sampled, evaluated and compared by aesampler.

pythae (Chadebec et al., "Pythae: Unifying Generative Autoencoders in Python", NeurIPS 2022)
saves a model as a folder: ``model.save(dir)``, and its trainer's ``final_model/`` and
``checkpoint_epoch_N/``, hold

* ``model_config.json``: the model's class (``"name": "VAEConfig"``) and its settings, among
  them ``input_dim`` and ``latent_dim``, and ``uses_default_encoder`` / ``uses_default_decoder``;
* ``model.pt``: the weights, ``torch.save({"model_state_dict": ...})``;
* ``environment.json``: the Python version that saved it;
* ``encoder.pkl`` / ``decoder.pkl`` (and ``discriminator.pkl``, ``metric.pkl``): networks the
  user wrote, pickled with cloudpickle, only when the model did not use pythae's defaults.

This plugin registers the checkpoint format ``pythae`` (such folders) and the model kind
``pythae`` that recipes name for them, so that ``aesampler sample RECIPE --checkpoint FOLDER``
and ``aesampler.checkpoint.load_model(FOLDER)`` work on them.

Security: unpickling a file runs whatever code it names. The weights are read with
``torch.load(..., weights_only=True)`` (tensors only; pythae's own ``load_from_folder`` uses plain
``torch.load`` and unpickles the networks), and a pickled network is read only when the user says
so: ``trust_pickled_code: true`` in the recipe's ``model`` section, ``trust_pickled_code=True`` in
Python. pythae's default networks are rebuilt from ``model_config.json`` by pythae's own classes;
only ``encoder.pkl`` and ``decoder.pkl`` are ever read (aesampler samples with those two
networks alone).
"""

from __future__ import annotations

import json
import pickle
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

import aesampler
from aesampler.checkpoint import CheckpointError
from aesampler.errors import quoted
from aesampler.formats import CheckpointFormat
from aesampler.models import GenerativeAutoencoder

__all__ = [
    "GAUSSIAN",
    "POINT",
    "PythaeAutoencoder",
    "PythaeError",
    "PythaeFolders",
    "pythae_model",
    "register_checkpoint_formats",
    "register_models",
]

CONFIG, WEIGHTS, ENVIRONMENT = "model_config.json", "model.pt", "environment.json"
#: The networks aesampler samples with; pythae pickles each that is not its default.
NETWORKS = ("encoder", "decoder")
#: The folder pythae's trainer saves the trained model in, inside its training folder.
FINAL = "final_model"

#: pythae models whose encoder gives Q(z|x) = N(embedding, exp(log_covariance)) and whose
#: decoder takes its draws.
GAUSSIAN = frozenset(
    {
        "Adversarial_AE",
        "BetaTCVAE",
        "BetaVAE",
        "CIWAE",
        "DisentangledBetaVAE",
        "FactorVAE",
        "INFOVAE_MMD",
        "IWAE",
        "MIWAE",
        "MSSSIM_VAE",
        "PIWAE",
        "VAE",
        "VAEGAN",
        "VAMP",
    }
)
#: pythae models whose encoder gives z itself (``embedding``).
POINT = frozenset({"AE", "RAE_GP", "RAE_L2", "WAE_MMD"})
#: pythae models whose decoder does not take the encoder's output as it is: why each is refused.
REFUSED = {
    "HVAE": "its decoder takes the encoder's Gaussian draw after Hamiltonian steps",
    "RHVAE": "its decoder takes the encoder's Gaussian draw after Riemannian Hamiltonian steps",
    "VAE_IAF": "its decoder takes the encoder's Gaussian draw after an autoregressive flow",
    "VAE_LinNF": "its decoder takes the encoder's Gaussian draw after planar/radial flows",
    "SVAE": "its posterior is a von Mises-Fisher distribution on the sphere, not a Gaussian",
    "PoincareVAE": "its posterior is a wrapped distribution on the Poincaré ball",
    "VQVAE": "its decoder takes quantised embeddings, not the encoder's output",
}


class PythaeError(CheckpointError):
    """A pythae folder that cannot be loaded (the message names the file and what to do)."""


class PythaeAutoencoder(GenerativeAutoencoder):
    """A model trained with pythae, loaded from its folder: its encoder and decoder, wrapped.

    aesampler samples, evaluates and compares it; it does not train it (train with pythae).

    Args:
        encoder: pythae's encoder network (it returns ``embedding``, and ``log_covariance`` for
            a variational model).
        decoder: pythae's decoder network (it returns ``reconstruction``).
        model: the pythae model's class name (``"VAE"``, ``"RAE_L2"``, ...).
        input_dim: the images it takes, (channels, size, size).
        latent_dim: the size of its latents.
    """

    kind = "pythae"

    def __init__(
        self,
        encoder: torch.nn.Module,
        decoder: torch.nn.Module,
        *,
        model: str,
        input_dim: tuple[int, int, int],
        latent_dim: int,
    ):
        super().__init__()
        channels, image_size, _ = input_dim
        self.architecture = dict(
            image_size=image_size, channels=channels, latent_dim=latent_dim, pythae_model=model
        )
        if model in GAUSSIAN:  # log_covariance is the log of the diagonal variance
            self.encoder = aesampler.GaussianEncoder(
                encoder, scale="logvar", mean_output="embedding", scale_output="log_covariance"
            )
        else:
            self.encoder = aesampler.DeterministicEncoder(encoder, output="embedding")
        self.decoder = aesampler.ModuleDecoder(
            decoder, latent_shape=latent_dim, output="reconstruction"
        )

    def optimizer_groups(self):
        raise PythaeError(_NOT_TRAINED)

    def training_step(self, x, x_input, optimizers, generator=None):
        raise PythaeError(_NOT_TRAINED)


_NOT_TRAINED = (
    "aesampler does not train pythae models: train with pythae, then give its folder as the "
    "checkpoint (aesampler sample RECIPE --checkpoint FOLDER)"
)


def pythae_model(image_size: int, channels: int, trust_pickled_code: bool = False):
    """A model trained with pythae, loaded from its folder (--checkpoint); never trained here.

    A recipe names this kind for a pythae folder: ``model: {name: pythae}``, with the folder as
    ``--checkpoint`` or ``model.checkpoint``. aesampler builds it through the ``pythae``
    checkpoint format, never through this function, which only declares the option:

    Args:
        trust_pickled_code: read the networks pythae pickled (``encoder.pkl``,
            ``decoder.pkl``) for a model with networks of its user's own. Unpickling runs code
            from the files: say so only for a folder you trust.
    """
    raise PythaeError(
        "model 'pythae' is loaded from a pythae folder, not built: give the folder as the "
        "checkpoint (--checkpoint FOLDER or model.checkpoint), or in Python "
        "aesampler.checkpoint.load_model(FOLDER)"
    )


class PythaeFolders(CheckpointFormat):
    """Folders pythae writes: model_config.json, model.pt (and pickles for custom networks)."""

    model = "pythae"

    def locate(self, path: Path) -> Path | None:
        # A saved model, a trainer's training folder, or the trainer's output_dir.
        for folder in (path, path / FINAL):
            if _is_model(folder):
                return folder
        trainings = sorted(p for p in _folders(path) if _is_model(p / FINAL))
        if len(trainings) > 1:
            names = ", ".join(quoted(p.name) for p in trainings)
            raise PythaeError(
                f"{quoted(path)} holds {len(trainings)} pythae trainings ({names}); give the "
                f"one to load, such as {quoted(trainings[-1])}"
            )
        return trainings[0] / FINAL if trainings else None

    def files(self, folder: Path) -> list[Path]:
        pickles = [folder / f"{net}.pkl" for net in NETWORKS if (folder / f"{net}.pkl").is_file()]
        return [folder / CONFIG, folder / WEIGHTS, *pickles]

    def load(
        self, folder: Path, registry: aesampler.Registry, trust_pickled_code: bool = False
    ) -> PythaeAutoencoder:
        if not isinstance(trust_pickled_code, bool):  # "false" must not open the door
            raise PythaeError(
                f"trust_pickled_code must be True or False, got {trust_pickled_code!r}"
            )
        config = _read_config(folder)
        name = _model_name(folder, config)
        input_dim = _input_dim(folder, config)
        custom = [net for net in NETWORKS if config.get(f"uses_default_{net}") is False]
        if custom and not trust_pickled_code:
            raise PythaeError(_pickle_refused(folder, custom))
        import pythae.models  # here, not at import: aesampler loads every plugin at start

        config_class = getattr(pythae.models, config["name"])
        fields = {k: v for k, v in config.items() if k != "name"}
        try:
            model_config = config_class(**fields)
        except Exception as error:
            raise PythaeError(
                f"{quoted(folder / CONFIG)} does not describe a pythae {name}: {_one_line(error)}"
            ) from None
        state = _read_weights(folder)
        networks = {net: _unpickle(folder, net) for net in custom}
        # pythae's own classes rebuild the default networks (drawing initial weights, which
        # model.pt replaces): the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(pythae.models, name)(model_config, **networks)
        for net in NETWORKS:
            prefix = f"{net}."
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                getattr(model, net).load_state_dict(weights, strict=True)
            except RuntimeError as error:
                raise PythaeError(
                    f"the {net} weights in {quoted(folder / WEIGHTS)} do not fit the {name} that "
                    f"{quoted(folder / CONFIG)} describes: {_one_line(error)}"
                ) from None
        return PythaeAutoencoder(
            model.encoder,
            model.decoder,
            model=name,
            input_dim=input_dim,
            latent_dim=int(config["latent_dim"]),
        )

    def info(self, folder: Path) -> dict[str, Any]:
        config = _read_config(folder)
        return {"format": "pythae", "pythae": {"config": config, "folder": str(folder)}}


def _is_model(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def _folders(path: Path) -> list[Path]:
    """The training folders pythae's trainer makes in its output_dir (``VAE_training_...``)."""
    try:
        return [p for p in path.iterdir() if "_training_" in p.name and p.is_dir()]
    except OSError:  # not a folder, or not readable: not a pythae output_dir
        return []


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG
    try:
        config = json.loads(file.read_bytes().decode("utf-8"))
    except OSError as error:
        raise PythaeError(f"cannot read {quoted(file)}: {error.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PythaeError(
            f"{quoted(file)} is not valid JSON ({_one_line(error)}): it is damaged or was not "
            "written by pythae"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise PythaeError(
            f'{quoted(file)} names no pythae model (no "name": "...Config"): it was not '
            "written by pythae"
        )
    return config


def _model_name(folder: Path, config: dict[str, Any]) -> str:
    """The pythae model class of ``"name": "VAEConfig"`` (``"RAE_L2_Config"``: ``RAE_L2``)."""
    config_name = config["name"]
    name = config_name.removesuffix("Config").removesuffix("_")
    if name in GAUSSIAN or name in POINT:
        return name
    supported = ", ".join(sorted(GAUSSIAN | POINT))
    if name in REFUSED:
        why = f"aesampler cannot sample a pythae {name}: {REFUSED[name]}"
    else:
        why = f"{config_name!r} is not a pythae model aesampler-pythae knows"
    raise PythaeError(f"{quoted(folder / CONFIG)}: {why}. Supported: {supported}")


def _input_dim(folder: Path, config: dict[str, Any]) -> tuple[int, int, int]:
    dims = config.get("input_dim")
    latent = config.get("latent_dim")
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise PythaeError(
            f"{quoted(folder / CONFIG)} has latent_dim {latent!r}, not a positive integer"
        )
    if (
        isinstance(dims, list)
        and len(dims) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        and dims[1] == dims[2]
    ):
        return tuple(dims)
    raise PythaeError(
        f"{quoted(folder / CONFIG)} has input_dim {dims!r}: aesampler samples square images, "
        "input_dim [channels, size, size] (a model trained on flattened images cannot be "
        "matched to an image dataset)"
    )


def _pickle_refused(folder: Path, custom: list[str]) -> str:
    files = " and ".join(quoted(folder / f"{net}.pkl") for net in custom)
    which = " and ".join(custom)
    return (
        f"the pythae model in {quoted(folder)} has its own {which} network, which pythae saved "
        f"as a pickle: {files}. Unpickling runs code from the file, so aesampler-pythae reads "
        "it only when you say you trust this folder: trust_pickled_code: true in the recipe's "
        "model section (model: {name: pythae, trust_pickled_code: true}), or in Python "
        "load_model(FOLDER, trust_pickled_code=True)"
    )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / WEIGHTS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = torch.load(file, map_location="cpu", weights_only=True)
    except OSError as error:
        raise PythaeError(f"cannot read {quoted(file)}: {error.strerror}") from None
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():  # more than tensors: never run it
            raise PythaeError(
                f"{quoted(file)} holds more than tensors, and PyTorch's weights-only reader "
                "refused it; aesampler never runs code from a weights file (pythae writes "
                "tensors only there: the file was made elsewhere or altered)"
            ) from None
        raise PythaeError(f"cannot read {quoted(file)} (damaged?): {_one_line(error)}") from None
    except Exception as error:  # a truncated zip, ...
        raise PythaeError(f"cannot read {quoted(file)} (damaged?): {_one_line(error)}") from None
    state = saved.get("model_state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PythaeError(
            f"{quoted(file)} holds no model_state_dict of tensors: it was not written by pythae"
        )
    return state


def _unpickle(folder: Path, net: str) -> torch.nn.Module:
    """A pickled network (the caller has the user's word that the folder is trusted)."""
    from pythae.models.base.base_utils import CPU_Unpickler  # pythae's reader: tensors to CPU

    file = folder / f"{net}.pkl"
    if not file.is_file():
        raise PythaeError(
            f"{quoted(folder / CONFIG)} says the {net} is the user's own, but {quoted(file)}, "
            "which pythae saves it in, is missing"
        )
    try:
        with open(file, "rb") as f:
            network = CPU_Unpickler(f).load()
    except Exception as error:
        saved = _python_version(folder)
        here = ".".join(platform.python_version_tuple()[:2])
        hint = (
            f"; it was saved by Python {saved} and this is Python {here}: pickled code needs the "
            "same version"
            if saved and saved != here
            else ""
        )
        raise PythaeError(
            f"cannot unpickle {quoted(file)}: {type(error).__name__}: {_one_line(error)}{hint}"
        ) from None
    if not isinstance(network, torch.nn.Module):
        raise PythaeError(f"{quoted(file)} holds a {type(network).__name__}, not a network")
    return network


def _python_version(folder: Path) -> str | None:
    try:
        version = json.loads((folder / ENVIRONMENT).read_text()).get("python_version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


@aesampler.hookimpl
def register_models(register):
    register("pythae", pythae_model)


@aesampler.hookimpl
def register_checkpoint_formats(register):
    register("pythae", PythaeFolders)
