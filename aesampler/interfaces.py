"""The four interfaces of a generative-autoencoder sampler.

The paper (Creswell et al., "Improving sampling from generative autoencoders with Markov
chains", §3) samples by iterating

    x_{t+1} = d(z_t),   x̃_{t+1} ~ C(x̃ | x_{t+1}),   z_{t+1} ~ Q(z | x̃_{t+1})

* :class:`Encoder` is Q(z|x). It returns a :class:`Posterior`: the mean is always available, and
  a draw is ``mean + std * eps`` for a stochastic (VAE) encoder or the mean itself for a
  deterministic (AAE) one.
* :class:`Decoder` is d(z): the mean image (values in [0, 1] for the built-in models).
* :class:`Corruption` is C(x̃|x), called as ``corruption(x, generator=g)``; all of its noise is
  drawn from ``g``.
* :class:`Transition` is one step z_t -> z_{t+1} of a chain.

A user with trained ``nn.Module`` networks wraps them with :class:`DeterministicEncoder`,
:class:`GaussianEncoder` and :class:`ModuleDecoder`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Posterior:
    """Q(z|x) for a batch: a diagonal Gaussian, or a point mass when ``std`` is None."""

    mean: Tensor
    std: Tensor | None = None

    @property
    def is_deterministic(self) -> bool:
        return self.std is None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw z = mean + std ⊙ eps (reparameterised), or return the mean if deterministic."""
        if self.std is None:
            return self.mean
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps


class Encoder(nn.Module, abc.ABC):
    """Q(z|x): maps a batch of images to a :class:`Posterior` over latents."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Posterior: ...


class Decoder(nn.Module, abc.ABC):
    """d(z): maps a batch of latents to a batch of (mean) images.

    ``latent_shape`` (the shape of one latent, without the batch dimension) lets the chain runner
    draw z0 from the prior itself; it may be None when the caller always passes z0.
    """

    latent_shape: tuple[int, ...] | None = None

    @abc.abstractmethod
    def forward(self, z: Tensor) -> Tensor: ...


class Corruption(abc.ABC):
    """C(x̃|x). Implementations must not modify ``x`` and draw all noise from ``generator``."""

    @abc.abstractmethod
    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True)
class TransitionOutput:
    """What one transition returns.

    Attributes:
        z: z_{t+1}, the next state of the chain.
        x: d(z_t), the sample at the current step, when the transition computed it on the way
            (decode-corrupt-encode does); None otherwise. The runner reuses it instead of decoding
            z_t a second time.
    """

    z: Tensor
    x: Tensor | None = None


class Transition(nn.Module, abc.ABC):
    """One step z_t -> z_{t+1} of a Markov chain.

    A transition is an ``nn.Module`` so that the networks it uses are its submodules: the chain
    runner finds their device, sets their batch-norm mode and protects their buffers through it.
    """

    @abc.abstractmethod
    def forward(
        self, z: Tensor, *, generator: torch.Generator | None = None
    ) -> TransitionOutput: ...


# ----------------------------------------------------------------------------------------------
# Wrappers for a user's own networks.


class DeterministicEncoder(Encoder):
    """An encoder whose network outputs z directly (as the paper's AAE does)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Posterior:
        return Posterior(mean=self.net(x))


ScaleKind = Literal["std", "logvar", "log_std", "softplus"]


class GaussianEncoder(Encoder):
    """An encoder whose network outputs the mean and a scale of a diagonal Gaussian (a VAE).

    The network may return a ``(mean, scale)`` pair, or one tensor holding both halves along
    ``dim`` (mean first), which is split in two.

    Args:
        net: the network.
        scale: what the second output is: ``"std"`` (used as it is), ``"logvar"`` (std =
            exp(v / 2)), ``"log_std"`` (std = exp(v)) or ``"softplus"`` (std = softplus(v)).
        dim: the dimension along which a single output tensor is split.
    """

    _SCALES = ("std", "logvar", "log_std", "softplus")

    def __init__(self, net: nn.Module, scale: ScaleKind = "logvar", dim: int = 1):
        super().__init__()
        if scale not in self._SCALES:
            raise ValueError(f"GaussianEncoder: scale must be one of {self._SCALES}, got {scale!r}")
        self.net = net
        self.scale = scale
        self.dim = dim

    def forward(self, x: Tensor) -> Posterior:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise ValueError(
                    f"GaussianEncoder: the network returned {len(out)} tensors; expected 2 "
                    "(mean, scale) or one tensor holding both"
                )
            mean, raw = out
        else:
            if out.shape[self.dim] % 2:
                raise ValueError(
                    f"GaussianEncoder: cannot split the network output of shape "
                    f"{tuple(out.shape)} into mean and scale along dim {self.dim} (odd size)"
                )
            mean, raw = out.chunk(2, dim=self.dim)
        if self.scale == "std":
            std = raw
        elif self.scale == "logvar":
            std = torch.exp(0.5 * raw)
        elif self.scale == "log_std":
            std = torch.exp(raw)
        else:
            std = nn.functional.softplus(raw)
        return Posterior(mean=mean, std=std)


class ModuleDecoder(Decoder):
    """A decoder around any network mapping z to x."""

    def __init__(self, net: nn.Module, latent_shape: tuple[int, ...] | int | None = None):
        super().__init__()
        self.net = net
        if isinstance(latent_shape, int):
            latent_shape = (latent_shape,)
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
