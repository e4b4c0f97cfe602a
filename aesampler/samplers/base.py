"""The sampler interface: where chains start.

A chain's step 0 is a draw z0 from some distribution over latents; the paper draws it from the
prior N(0, I). The decoder, however, was trained on the encoder's learned latent distribution
P̂(Z) = ∫ Q(z|x) P(x) dx, and a sampler that targets P̂(Z) directly can beat the prior, and the
chain, at step 0. A :class:`Sampler` is fitted once (:meth:`Sampler.fit`, given a
:class:`SamplerContext`: the model, encodings of a data split computed once, a seed) and then
draws latents (:meth:`Sampler.sample`) from a generator. What a sampler fitted is plain tensors
(:meth:`Sampler.state_dict`), saved in the run directory so that later commands do not refit.

The built-in samplers are in the sibling modules; docs/samplers.md gives their maths.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import AesamplerError


class SamplerError(AesamplerError):
    """A sampler cannot be fitted or used (no data to fit on, a state that does not fit)."""


@torch.inference_mode()
def encode_images(
    model: Any,
    images: Tensor | Iterable[Tensor],
    *,
    batchnorm: str = "batch",
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch: int = 256,
) -> Tensor:
    """Draws from Q(z|x) for each image: a sample of P̂(Z) = ∫ Q(z|x) P(x) dx.

    ``images`` is a tensor (N, C, H, W), encoded ``batch`` images at a time, or an iterable of
    such batches (a data loader). Batch normalisation runs in the chain's mode (``"batch"``:
    minibatch statistics, the paper's choice); the model's buffers are left as they were. All
    draws come from one generator seeded with ``seed``. Returns float32 latents on the CPU.
    """
    from ..chain import sampling_mode  # the chain imports the samplers' interface

    if isinstance(images, Tensor):
        images = [images[i : i + batch] for i in range(0, len(images), batch)]
    generator = torch.Generator(device).manual_seed(seed)
    out = []
    with sampling_mode([model], batchnorm):
        for x in images:
            out.append(model.encoder(x.to(device)).sample(generator).float().cpu())
    if not out:
        raise SamplerError("there are no images to encode")
    return torch.cat(out)


class SamplerContext:
    """What a sampler may use when it is fitted.

    Args:
        latent_shape: the shape of one latent.
        encode: ``encode(split) -> Tensor (N, *latent_shape)``: draws from Q(z|x) for the images
            of a data split ("train", "valid" or "test"); each split is encoded once and cached.
        seed: the seed of any randomness in fitting.
        device: where the model runs.
        model: the trained model (None when the sampler is fitted on latents alone).
        log: where to say what happens.
    """

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        encode: Callable[[str], Tensor] | None = None,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        model: Any = None,
        log: Callable[[str], None] = print,
    ):
        self.latent_shape = tuple(latent_shape)
        self._encode = encode
        self._cache: dict[str, Tensor] = {}
        self.seed = seed
        self.device = torch.device(device)
        self.model = model
        self.log = log

    @classmethod
    def from_encodings(
        cls, encodings: dict[str, Tensor], *, seed: int = 0, log: Callable[[str], None] = print
    ) -> SamplerContext:
        """A context over latents a user already has, by split (for tests and own models)."""
        first = next(iter(encodings.values()))
        context = cls(tuple(first.shape[1:]), seed=seed, log=log)
        context._cache.update({k: v.detach().float().cpu() for k, v in encodings.items()})
        return context

    def encodings(self, split: str) -> Tensor:
        """Encodings of ``split`` on the CPU, (N, *latent_shape), computed once."""
        if split not in self._cache:
            if self._encode is None:
                raise SamplerError(f"no encodings of the {split!r} split are available")
            self._cache[split] = self._encode(split).detach().float().cpu()
        return self._cache[split]


class Sampler(abc.ABC):
    """Draws starting latents z0.

    Subclasses implement :meth:`sample`; those that learn something implement :meth:`fit`,
    :meth:`state_dict` and :meth:`load_state_dict` (plain tensors, so the state can be saved as
    safetensors) and set ``fits = True``.
    """

    #: True when :meth:`fit` learns a state worth saving.
    fits: ClassVar[bool] = False
    #: A short description for captions: what step 0 shows.
    describes: ClassVar[str] = "latents"

    latent_shape: tuple[int, ...] | None = None

    def fit(self, context: SamplerContext) -> None:
        """Learn whatever the sampler needs (the default: the latent shape)."""
        self.latent_shape = context.latent_shape

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` latents (n, *latent_shape) on the CPU, all randomness from ``generator``."""

    def state_dict(self) -> dict[str, Tensor]:
        """What :meth:`fit` learned, as named CPU tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:  # noqa: B027 (optional)
        """Restore what :meth:`state_dict` returned; raise SamplerError when it does not fit."""

    def _shape(self) -> tuple[int, ...]:
        if self.latent_shape is None:
            raise SamplerError(f"{type(self).__name__} is not fitted: call fit(context) first")
        return self.latent_shape

    def _check_n(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SamplerError(f"n must be a non-negative integer, got {n!r}")
        return n
