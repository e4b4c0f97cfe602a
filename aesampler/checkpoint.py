"""Checkpoints: tensors and plain values only, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step-NNNNNNNN/`` holding

* ``model.safetensors``: the model's weights and buffers (safetensors: no code, no pickle);
* ``model.json``: what rebuilds the model without the recipe: model kind and architecture,
  the data it was trained on and how it was preprocessed, the corruption, the training step;
* ``state.pt``: everything needed to resume (optimiser states, epoch, RNG states), plain
  tensors and values read back with ``torch.load(..., weights_only=True)``.

The folder is written under a temporary name and renamed into place; then
``<run>/checkpoints/latest`` (one line, the folder's name) is replaced atomically, and older
checkpoints are removed (:meth:`aesampler.rundir.RunDir.drop_old_checkpoints`: only folders
named ``step-NNNNNNNN``, never through a link; a ``checkpoints/`` that is a link is refused).
A crash at any moment leaves the previous complete checkpoint in use.

These folders are the built-in checkpoint format ``aesampler`` (:class:`AesamplerCheckpoints`).
Plugins register others (:mod:`aesampler.formats`): :func:`locate_checkpoint` asks each format
whether it recognises a folder, and :func:`load_model` loads from any of them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import AesamplerError, UnknownComponentError, quoted
from .formats import KIND as FORMAT_KIND
from .formats import CheckpointFormat
from .interfaces import Decoder, Encoder
from .models import GenerativeAutoencoder
from .plugins import get_registry
from .recipe.build import check_model_size
from .registry import Component, Registry, check_params
from .rundir import CHECKPOINTS, RunDir, atomic_write_bytes, fsync_dir, naming, remove_path

FORMAT = "aesampler-checkpoint"
VERSION = 1
MODEL_WEIGHTS, MODEL_INFO, TRAINING_STATE, LATEST = (
    "model.safetensors",
    "model.json",
    "state.pt",
    "latest",
)


class CheckpointError(AesamplerError):
    """A checkpoint is missing, truncated, foreign, or does not fit its model."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path, model: GenerativeAutoencoder, info: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write a complete checkpoint for ``info["step"]`` and make it the latest."""
    run = RunDir(run_dir)
    root = run.checkpoints_folder()  # never a link: old checkpoints are deleted there
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(info['step']):08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        remove_path(tmp)  # this process's own name (a save interrupted before): never a link
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with naming(tmp / MODEL_WEIGHTS):
        save_file(weights, str(tmp / MODEL_WEIGHTS))
    document = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"kind": model.kind, "architecture": model.architecture},
        **info,
    }
    with naming(tmp / MODEL_INFO):
        (tmp / MODEL_INFO).write_text(json.dumps(document, indent=2) + "\n")
    with naming(tmp / TRAINING_STATE):
        try:
            torch.save(state, tmp / TRAINING_STATE)
        except RuntimeError as error:  # PyTorch's writer reports a failed write so
            full = os.statvfs(tmp).f_bavail == 0
            raise OSError(
                errno.ENOSPC if full else errno.EIO,
                f"{os.strerror(errno.ENOSPC if full else errno.EIO)} ({_first_line(error)})",
                str(tmp / TRAINING_STATE),
            ) from error
    for file in (MODEL_WEIGHTS, MODEL_INFO, TRAINING_STATE):
        with naming(tmp / file):
            _fsync_file(tmp / file)
    final = root / name
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        remove_path(tmp)
        raise CheckpointError(
            f"{quoted(final)} is in the way of the checkpoint aesampler writes there (it is a "
            f"{'link' if final.is_symlink() else 'file'}, not a checkpoint aesampler wrote); "
            "move it away and resume again"
        )
    if final.exists():  # the same step saved again (a resumed run that did no new step)
        remove_path(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    run.drop_old_checkpoints(keep=name)
    return final


_CHECKPOINT_NAME = re.compile(r"step-\d{8,}\Z")


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run directory, its ``checkpoints/`` folder, or itself.

    ``latest`` must name a ``step-NNNNNNNN`` folder beside it: it is never followed elsewhere
    (``..``, an absolute path, or a link out of the run directory are refused). Only aesampler's
    own checkpoints: :func:`locate_checkpoint` also finds folders in other formats.
    """
    folder = _find_own(Path(path))
    if folder is None:
        raise CheckpointError(
            f"no checkpoint at {quoted(path)}: expected a run directory (with checkpoints/latest) "
            f"or a checkpoint folder holding {MODEL_INFO} and {MODEL_WEIGHTS}"
        )
    return folder


def _find_own(path: Path) -> Path | None:
    """:func:`find_checkpoint`, None when ``path`` holds no aesampler checkpoint at all."""
    for root in (path / CHECKPOINTS, path):
        latest = root / LATEST
        if latest.is_file():
            try:
                name = latest.read_bytes()[:100].decode("ascii").strip()
            except (OSError, UnicodeDecodeError):
                name = None
            folder = root / name if name else None
            if (
                folder is None
                or not _CHECKPOINT_NAME.match(name)
                or folder.is_symlink()
                or folder.resolve().parent != root.resolve()
            ):
                raise CheckpointError(
                    f"{quoted(latest)} does not name a checkpoint folder beside it (expected one "
                    "line like 'step-00000100'); it is damaged or was edited"
                )
            if not (folder / MODEL_INFO).is_file():
                raise CheckpointError(
                    f"{quoted(latest)} points to {quoted(folder)}, which holds no {MODEL_INFO}"
                )
            return folder
    if (path / MODEL_INFO).is_file():
        return path
    return None


def read_info(folder: Path) -> dict[str, Any]:
    file = folder / MODEL_INFO
    try:
        document = json.loads(file.read_bytes().decode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"cannot read {quoted(file)}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"{quoted(file)} is not UTF-8 text (byte {error.start}): it is damaged or not a "
            "checkpoint"
        ) from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{quoted(file)} is not valid JSON (truncated?): {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(
            f"{quoted(file)} is not an aesampler checkpoint (no format {FORMAT!r})"
        )
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{quoted(file)} has checkpoint version {document.get('version')!r}; this aesampler "
            f"reads version {VERSION}"
        )
    model = document.get("model")
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("kind"), str)
        or not isinstance(model.get("architecture"), dict)
    ):
        raise CheckpointError(
            f"{quoted(file)} does not describe its model (model.kind, model.architecture)"
        )
    return document


def load_weights(module: nn.Module, file: Path) -> None:
    try:
        weights = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"cannot read weights from {quoted(file)} (truncated?): {error}"
        ) from error
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {quoted(file)} do not fit the model: {error}"
        ) from error


def _rebuild(folder: Path, registry: Registry) -> GenerativeAutoencoder:
    """The model of an aesampler checkpoint folder, from its ``model.json`` and weights."""
    info = read_info(folder)
    kind, architecture = info["model"]["kind"], info["model"]["architecture"]
    try:
        check_model_size(kind, architecture, registry)  # before allocating anything
        model = registry.create("model", kind, **architecture)
    except AesamplerError as error:
        raise CheckpointError(
            f"{quoted(folder / MODEL_INFO)}: cannot rebuild the model: {error}"
        ) from error
    except Exception as error:  # a factory that fails on values a damaged file holds
        raise CheckpointError(
            f"{quoted(folder / MODEL_INFO)}: cannot rebuild the model from its architecture "
            f"{architecture}: {type(error).__name__}: {error}"
        ) from None
    load_weights(model, folder / MODEL_WEIGHTS)
    return model


class AesamplerCheckpoints(CheckpointFormat):
    """aesampler's own checkpoints: model.json and model.safetensors, no code."""

    model = None  # model.json names the model kind, and holds its architecture

    def locate(self, path: Path) -> Path | None:
        return _find_own(Path(path))

    def files(self, folder: Path) -> list[Path]:
        return [folder / MODEL_WEIGHTS]

    def load(self, folder: Path, registry: Registry, **options: Any) -> GenerativeAutoencoder:
        return _rebuild(folder, registry)

    def info(self, folder: Path) -> dict[str, Any]:
        return read_info(folder)


@dataclass(frozen=True)
class Checkpoint:
    """A folder holding a trained model, and the format it is in."""

    folder: Path
    format: CheckpointFormat
    #: The format's registry entry: its name (``aesampler``, ``pythae``) and distribution.
    component: Component

    @property
    def own(self) -> bool:
        """Whether it is an aesampler checkpoint (the model kind is in its ``model.json``)."""
        return self.format.model is None

    def describe(self) -> str:
        return f"checkpoint format {self.component.name!r} ({self.component.distribution})"


def _formats(registry: Registry) -> list[Component]:
    """The registered checkpoint formats, aesampler's own first."""
    found = [c for c in registry if c.kind == FORMAT_KIND]
    return sorted(found, key=lambda c: (c.distribution != "aesampler", c.name))


def _build_format(component: Component, registry: Registry) -> CheckpointFormat:
    where = f"checkpoint format {component.name!r} ({component.distribution})"
    try:
        fmt = registry.create(FORMAT_KIND, component.name)
    except AesamplerError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"{where} cannot be built: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(fmt, CheckpointFormat):
        raise CheckpointError(
            f"{where} returned {type(fmt).__name__}, not an aesampler.formats.CheckpointFormat"
        )
    return fmt


def locate_checkpoint(path: str | Path, registry: Registry | None = None) -> Checkpoint:
    """The checkpoint at ``path``: a run directory, an aesampler checkpoint folder, or a folder
    in a checkpoint format that a plugin registered (``register_checkpoint_formats``).

    aesampler's own format is tried first; then every other format is asked, and exactly one
    may recognise the folder.
    """
    registry = registry or get_registry()
    path = Path(path)
    found: list[Checkpoint] = []
    others: list[str] = []
    for component in _formats(registry):
        fmt = _build_format(component, registry)
        where = f"checkpoint format {component.name!r} ({component.distribution})"
        if fmt.model is not None:
            others.append(f"{component.name} ({component.distribution})")
        try:
            folder = fmt.locate(path)
        except AesamplerError:
            raise
        except Exception as error:  # a plugin's bug: named, not a traceback from inside it
            raise CheckpointError(
                f"{where} failed while looking at {quoted(path)}: {type(error).__name__}: {error}"
            ) from error
        if folder is None:
            continue
        if not isinstance(folder, (str, os.PathLike)) or not Path(folder).is_dir():
            raise CheckpointError(
                f"{where} recognised {quoted(path)} but gave {folder!r}, not a folder"
            )
        found.append(Checkpoint(Path(folder), fmt, component))
        if fmt.model is None:  # an aesampler checkpoint is that, whatever else matches
            return found[-1]
    if len(found) > 1:
        names = ", ".join(c.describe() for c in found)
        raise CheckpointError(
            f"{quoted(path)} is recognised by several checkpoint formats ({names}); switch off "
            "the plugins you do not mean (AESAMPLER_DISABLE_PLUGINS=...)"
        )
    if found:
        return found[0]
    elsewhere = (
        f", or a folder in another registered checkpoint format: {', '.join(others)}"
        if others
        else " (a plugin can add the folders another library writes: register_checkpoint_formats)"
    )
    raise CheckpointError(
        f"no checkpoint at {quoted(path)}: expected a run directory (with checkpoints/latest), a "
        f"checkpoint folder holding {MODEL_INFO} and {MODEL_WEIGHTS}{elsewhere}"
    )


def check_options(checkpoint: Checkpoint, options: dict[str, Any], registry: Registry) -> None:
    """Raise unless ``options`` are load options of the checkpoint's format: the parameters of
    the model kind it names (aesampler's own checkpoints take none)."""
    if checkpoint.own:
        if options:
            raise CheckpointError(
                f"{quoted(checkpoint.folder)} is an aesampler checkpoint, which takes no load "
                f"options; got {', '.join(map(repr, options))} (options are for folders in "
                "other checkpoint formats)"
            )
        return
    try:
        component = registry.get("model", checkpoint.format.model)
    except UnknownComponentError as error:
        raise CheckpointError(
            f"{checkpoint.describe()} loads models of kind {checkpoint.format.model!r}, which is "
            f"not registered: {error}"
        ) from None
    check_params(component, options, provided=("image_size", "channels"))


def load_located(
    checkpoint: Checkpoint,
    registry: Registry,
    device: torch.device | str = "cpu",
    options: dict[str, Any] | None = None,
) -> tuple[GenerativeAutoencoder, dict[str, Any]]:
    """:func:`load_model` for a checkpoint already located."""
    options = dict(options or {})
    check_options(checkpoint, options, registry)
    folder = checkpoint.folder
    try:
        model = checkpoint.format.load(folder, registry, **options)
    except AesamplerError:
        raise
    except Exception as error:  # a plugin's bug, or a library it calls that fails on the folder
        raise CheckpointError(
            f"{checkpoint.describe()} could not load {quoted(folder)}: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    problems = _model_problems(model, foreign=not checkpoint.own)
    if problems:
        raise CheckpointError(
            f"{checkpoint.describe()} loaded from {quoted(folder)} a model aesampler cannot "
            f"sample: {'; '.join(problems)}"
        )
    info = dict(checkpoint.format.info(folder) or {})
    kind = getattr(model, "kind", checkpoint.format.model)
    info.setdefault("model", {"kind": kind, "architecture": dict(model.architecture)})
    return model.to(device), info


def _model_problems(model: object, foreign: bool) -> list[str]:
    """What a model loaded from another library's folder lacks (aesampler's own model kinds are
    held to their hook's contract where they are registered)."""
    if not foreign:
        return []
    if not isinstance(model, GenerativeAutoencoder):
        return [f"it is a {type(model).__name__}, not an aesampler.models.GenerativeAutoencoder"]
    problems = []
    if not isinstance(getattr(model, "encoder", None), Encoder):
        problems.append("its encoder is not an aesampler.Encoder")
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, Decoder):
        problems.append("its decoder is not an aesampler.Decoder")
    elif decoder.latent_shape is None:
        problems.append("its decoder has no latent_shape")
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, dict):
        problems.append("it has no architecture dict")
    else:
        for key in ("image_size", "channels"):
            value = architecture.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"its architecture's {key} is {value!r}, not a positive integer")
    return problems


def load_model(
    path: str | Path,
    registry: Registry | None = None,
    device: torch.device | str = "cpu",
    **options: Any,
) -> tuple[GenerativeAutoencoder, dict[str, Any]]:
    """Load a trained model (no recipe needed) and what describes it.

    Args:
        path: a run directory, an aesampler checkpoint folder, or a folder in a checkpoint
            format a plugin registered (a pythae folder, with aesampler-pythae installed).
        registry: where the formats and model kinds come from; default: the installed plugins.
        device: where the model goes.
        options: a folder in another format's load options, the parameters of the model kind it
            names (pythae's ``trust_pickled_code=True``); aesampler's own checkpoints take none.

    Returns:
        The model and a dict: an aesampler checkpoint's ``model.json``; for other formats what
        the format says, with ``"model"`` (the model's kind and architecture).
    """
    registry = registry or get_registry()
    return load_located(locate_checkpoint(path, registry), registry, device, options)


def model_digest(path: str | Path, registry: Registry | None = None) -> str:
    """SHA-256 of the files that make the model at ``path`` (its format's ``files``): what the
    model is, for the keys of what aesampler keeps for it. For an aesampler checkpoint it is
    the digest of ``model.safetensors``."""
    checkpoint = locate_checkpoint(path, registry)
    files = [Path(f) for f in checkpoint.format.files(checkpoint.folder)]

    def digest(file: Path):  # a hashlib object
        h = hashlib.sha256()
        with naming(file), open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h

    if len(files) == 1:
        return digest(files[0]).hexdigest()
    combined = hashlib.sha256()
    for file in files:
        combined.update(file.name.encode() + b"\n" + digest(file).digest())
    return combined.hexdigest()


#: What ``state.pt`` holds: key -> the type of its value (``rng``: its keys and types).
STATE_KEYS: dict[str, type] = {
    "optimizers": dict,
    "step": int,
    "epoch": int,
    "batch_in_epoch": int,
    "rng": dict,
}
RNG_KEYS = ("torch", "noise")  # rank 0's; ``rng.ranks`` (optional): every rank's, in rank order


def _is_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def _first_line(error: BaseException) -> str:
    """The first line of an error from a library (PyTorch adds paragraphs of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _refused(error: BaseException) -> str:
    """What PyTorch's weights-only unpickler refused, without its advice to turn it off or to
    allow-list what the file names."""
    text = str(error)
    named = re.search(r"GLOBAL\s+([\w.]+)", text)
    if named:
        return f"it names {named.group(1)}"
    operand = re.search(r"[Uu]nsupported operand \d+", text)
    return operand.group(0) if operand else "a part it does not allow"


def load_training_state(folder: Path) -> dict[str, Any]:
    """The training state of a checkpoint, checked to hold everything a resume reads."""
    file = folder / TRAINING_STATE
    try:
        with warnings.catch_warnings():  # PyTorch warns of pickle protocols: one message only
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(
            f"{quoted(file)} is missing: this checkpoint cannot be resumed"
        ) from error
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():  # a damaged pickle
            raise CheckpointError(
                f"cannot read the training state {quoted(file)}: {_first_line(error)}; it is "
                "damaged or was not written by aesampler"
            ) from None
        # More than tensors and plain values (or damage), refused by the weights-only reader.
        raise CheckpointError(
            f"cannot read the training state {quoted(file)}: PyTorch's weights-only reader "
            f"refused it ({_refused(error)}); aesampler never runs code from a checkpoint, so "
            "it will not read it. aesampler writes no such file: it is damaged, or was made "
            "elsewhere or altered, and reading it without weights_only could run code in it. "
            "Resume from a checkpoint you made"
        ) from None
    except Exception as error:  # truncated zip, ...
        raise CheckpointError(
            f"cannot read the training state {quoted(file)}: {_first_line(error)}; it is "
            "damaged or was not written by aesampler"
        ) from None
    problems = []
    if not isinstance(state, dict):
        problems.append("it is not a mapping")
    else:
        for key, kind in STATE_KEYS.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                problems.append(f"{key!r} is missing or not a {kind.__name__}")
        rng = state.get("rng") if isinstance(state.get("rng"), dict) else {}
        problems += [
            f"'rng.{key}' is missing or not a byte tensor"
            for key in RNG_KEYS
            if not _is_state(rng.get(key))
        ]
        ranks = rng.get("ranks", [rng])

        def whole(r: Any) -> bool:
            return isinstance(r, dict) and all(_is_state(r.get(k)) for k in RNG_KEYS)

        if not (isinstance(ranks, list) and ranks and all(whole(r) for r in ranks)):
            problems.append("'rng.ranks' is not a list of every rank's random states")
    if problems:
        raise CheckpointError(
            f"{quoted(file)} cannot be resumed: {'; '.join(problems)}; it is damaged or was not "
            "written by aesampler"
        )
    return state
