"""Checkpoint formats: the folders aesampler can load a trained model from.

A *checkpoint format* recognises a folder and loads the model it holds. aesampler's own
checkpoints (``model.json`` and ``model.safetensors``, :mod:`aesampler.checkpoint`) are the
built-in format ``aesampler``; a plugin adds the folders another library writes (pythae's
``model_config.json`` and ``model.pt``, ...) through the ``register_checkpoint_formats`` hook, so
that ``--checkpoint FOLDER`` and :func:`aesampler.checkpoint.load_model` take them too.

Such a model is loaded, never trained by aesampler: a format names the model kind (``model``)
that recipes use for its folders, and that kind's factory parameters (but ``image_size`` and
``channels``) are the options its :meth:`CheckpointFormat.load` takes: the recipe's ``model:``
section holds them (``model: {name: pythae, trust_pickled_code: true}``), and so does the
Python call (``load_model(folder, trust_pickled_code=True)``).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .models import GenerativeAutoencoder
    from .registry import Component, Registry

#: The kind of component in the registry (:data:`aesampler.kinds.KINDS`).
KIND = "checkpoint_format"


class CheckpointFormat(abc.ABC):
    """A layout of model folders: it recognises one and loads the model it holds."""

    #: The model kind that recipes name for this format's folders (``model: {name: ...}``),
    #: registered by the same plugin. Its factory's parameters, but ``image_size`` and
    #: ``channels``, are the options :meth:`load` takes, checked before :meth:`load` is called;
    #: aesampler never builds that kind from a recipe, nor trains it. None: the folder itself
    #: says which model kind it holds (aesampler's own format).
    model: ClassVar[str | None] = None

    @abc.abstractmethod
    def locate(self, path: Path) -> Path | None:
        """The folder of ``path`` holding a model in this format (``path`` itself, or a folder
        inside it), or None when ``path`` is not this format's.

        aesampler asks every format about any path a user gives, so this reads file names and
        small plain files only (JSON, never a pickle) and runs nothing from the folder. It raises
        :class:`aesampler.checkpoint.CheckpointError` only for a folder that is clearly this
        format's but cannot be used.
        """

    @abc.abstractmethod
    def files(self, folder: Path) -> list[Path]:
        """The files whose bytes make the model in ``folder``: their digest keys what aesampler
        keeps for this model (fitted samplers, shards of samples)."""

    @abc.abstractmethod
    def load(self, folder: Path, registry: Registry, **options: Any) -> GenerativeAutoencoder:
        """The model in ``folder``, on the CPU.

        It returns an :class:`aesampler.models.GenerativeAutoencoder` whose ``architecture``
        holds ``image_size`` and ``channels`` (the images it takes, checked against a recipe's
        data), with an :class:`aesampler.Encoder` and an :class:`aesampler.Decoder` that has a
        ``latent_shape``. A folder that cannot be loaded is an
        :class:`aesampler.AesamplerError` naming the file and what to do.
        """

    def info(self, folder: Path) -> dict[str, Any]:
        """Plain values about the checkpoint, returned beside the model by ``load_model``
        (aesampler's own: its ``model.json``). ``"model"`` defaults to the loaded model's kind
        and architecture."""
        return {}


def loaded_by(registry: Registry, model: str) -> tuple[Component, CheckpointFormat] | None:
    """The registered format whose folders hold models of kind ``model``, with its component;
    None for a model kind that aesampler builds and trains itself."""
    for component in registry:
        if component.kind != KIND:
            continue
        try:
            fmt = registry.create(KIND, component.name)
        except Exception:  # a broken format plugin: it serves no model kind
            continue
        if isinstance(fmt, CheckpointFormat) and fmt.model == model:
            return component, fmt
    return None
