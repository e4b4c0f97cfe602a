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
:class:`GaussianEncoder` and :class:`ModuleDecoder`; networks that return their outputs by name
(a dict, a dataclass, pythae's ``ModelOutput``) are read through the wrappers' ``*_output``
arguments, and what the wrappers read is checked (:class:`aesampler.errors.WrapperError`).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .errors import WrapperError, did_you_mean


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
#
# A network may return its outputs by name: a dict, a dataclass, a named tuple, or an object with
# attributes (pythae's ModelOutput is a dict whose items are also attributes). The wrappers read
# the outputs named by their ``*_output`` arguments, and check what they read: a wrong output is
# a WrapperError at the first call that names the wrapper, what came back and how to fix it,
# rather than an AttributeError deep inside the next network.


def _output_names(out: object) -> list[str] | None:
    """The names of a network's outputs, or None when it returned no named outputs (a tensor,
    a plain tuple or list)."""
    if isinstance(out, Tensor):
        return None
    if isinstance(out, Mapping):
        return [str(key) for key in out]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [f.name for f in dataclasses.fields(out)]
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a named tuple
        return list(out._fields)
    if isinstance(out, (tuple, list)):
        return None
    attributes = getattr(out, "__dict__", None)
    if isinstance(attributes, dict):
        return [name for name in attributes if not name.startswith("_")]
    return None


def _output(out: object, name: str) -> object:
    return out[name] if isinstance(out, Mapping) else getattr(out, name)


def _describe(out: object) -> str:
    """What a network returned, for a message: ``a ModelOutput with outputs 'embedding', ...``."""
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    names = _output_names(out)
    kind = type(out).__name__
    if names is not None:
        return f"a {kind} with outputs {', '.join(map(repr, names)) or '(none)'}"
    if isinstance(out, (tuple, list)):
        return f"a {kind} of {len(out)} items"
    return f"a {kind}"


def _tensor_outputs(out: object) -> list[str]:
    """The names of the named outputs that hold tensors."""
    return [n for n in _output_names(out) or [] if isinstance(_output(out, n), Tensor)]


def _named_output(out: object, name: str, wrapper: str, argument: str) -> Tensor:
    """The output ``name`` of what the network returned, checked to be a tensor."""
    names = _output_names(out)
    if names is None:
        raise WrapperError(
            f"{wrapper}: {argument}={name!r} names an output, but the network returned "
            f"{_describe(out)}, which has no named outputs; leave out {argument}"
        )
    if name not in names:
        raise WrapperError(
            f"{wrapper}: the network returned {_describe(out)}, none named {name!r} "
            f"({argument}={name!r}).{did_you_mean(name, names)} Pass {argument}= the name of "
            "one of its outputs"
        )
    value = _output(out, name)
    if not isinstance(value, Tensor):
        raise WrapperError(
            f"{wrapper}: the network's output {name!r} ({argument}={name!r}) is "
            f"{_describe(value)}, not a tensor"
        )
    return value


def _suggest(out: object, argument: str, capital: bool = False) -> str:
    """``pass output='reconstruction' ...`` when one named output holds a tensor, else how to."""
    tensors = _tensor_outputs(out)
    if len(tensors) == 1:
        advice = f"pass {argument}={tensors[0]!r} to read that output"
    else:
        advice = f"pass {argument}= the name of the output to read"
    return advice[0].upper() + advice[1:] if capital else advice


class DeterministicEncoder(Encoder):
    """An encoder whose network outputs z directly (as the paper's AAE does).

    Args:
        net: the network.
        output: for a network that returns its outputs by name (a dict, a dataclass, an object
            with attributes, such as pythae's ``ModelOutput``), the name of the one holding z
            (pythae: ``"embedding"``); None for a network that returns z itself.
    """

    def __init__(self, net: nn.Module, *, output: str | None = None):
        super().__init__()
        self.net = net
        self.output = _output_argument("DeterministicEncoder", "output", output)

    def extra_repr(self) -> str:
        return "" if self.output is None else f"output={self.output!r}"

    def forward(self, x: Tensor) -> Posterior:
        out = self.net(x)
        if self.output is not None:
            return Posterior(mean=_named_output(out, self.output, "DeterministicEncoder", "output"))
        if not isinstance(out, Tensor):
            raise WrapperError(
                f"DeterministicEncoder: the network returned {_describe(out)}; expected a tensor "
                f"of latents z. {_suggest(out, 'output', capital=True)}: "
                "DeterministicEncoder(net, output=...)"
                if _output_names(out) is not None
                else f"DeterministicEncoder: the network returned {_describe(out)}; expected a "
                "tensor of latents z (a network that outputs a mean and a scale goes in "
                "GaussianEncoder)"
            )
        return Posterior(mean=out)


ScaleKind = Literal["std", "logvar", "log_std", "softplus"]


class GaussianEncoder(Encoder):
    """An encoder whose network outputs the mean and a scale of a diagonal Gaussian (a VAE).

    The network may return a ``(mean, scale)`` pair, one tensor holding both halves along ``dim``
    (mean first), which is split in two, or its outputs by name (a dict, a dataclass, an object
    with attributes), of which ``mean_output`` and ``scale_output`` name the two to read.

    Args:
        net: the network.
        scale: what the scale output is: ``"std"`` (used as it is), ``"logvar"`` (std =
            exp(v / 2)), ``"log_std"`` (std = exp(v)) or ``"softplus"`` (std = softplus(v)).
        dim: the dimension along which a single output tensor is split.
        mean_output: the name of the output holding the mean (pythae: ``"embedding"``), for a
            network that returns its outputs by name; given together with ``scale_output``.
        scale_output: the name of the output holding the scale (pythae: ``"log_covariance"``,
            a log-variance: ``scale="logvar"``).
    """

    _SCALES = ("std", "logvar", "log_std", "softplus")

    def __init__(
        self,
        net: nn.Module,
        scale: ScaleKind = "logvar",
        dim: int = 1,
        *,
        mean_output: str | None = None,
        scale_output: str | None = None,
    ):
        super().__init__()
        if scale not in self._SCALES:
            raise ValueError(f"GaussianEncoder: scale must be one of {self._SCALES}, got {scale!r}")
        mean_output = _output_argument("GaussianEncoder", "mean_output", mean_output)
        scale_output = _output_argument("GaussianEncoder", "scale_output", scale_output)
        if (mean_output is None) != (scale_output is None):
            given, missing = (
                ("mean_output", "scale_output")
                if scale_output is None
                else ("scale_output", "mean_output")
            )
            raise ValueError(
                f"GaussianEncoder: {given} is given but not {missing}; name both outputs (for "
                "pythae: mean_output='embedding', scale_output='log_covariance') or neither"
            )
        self.net = net
        self.scale = scale
        self.dim = dim
        self.mean_output = mean_output
        self.scale_output = scale_output

    def extra_repr(self) -> str:
        named = (
            f", mean_output={self.mean_output!r}, scale_output={self.scale_output!r}"
            if self.mean_output is not None
            else ""
        )
        return f"scale={self.scale!r}{named}"

    def forward(self, x: Tensor) -> Posterior:
        out = self.net(x)
        if self.mean_output is not None:
            mean = _named_output(out, self.mean_output, "GaussianEncoder", "mean_output")
            raw = _named_output(out, self.scale_output, "GaussianEncoder", "scale_output")
        elif isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
            if len(out) != 2:
                raise WrapperError(
                    f"GaussianEncoder: the network returned {len(out)} tensors; expected 2 "
                    "(mean, scale) or one tensor holding both"
                )
            mean, raw = out
            for what, value in (("mean", mean), ("scale", raw)):
                if not isinstance(value, Tensor):
                    raise WrapperError(
                        f"GaussianEncoder: the network returned a pair whose {what} is "
                        f"{_describe(value)}; expected two tensors (mean, scale)"
                    )
        elif isinstance(out, Tensor):
            if out.shape[self.dim] % 2:
                raise WrapperError(
                    f"GaussianEncoder: cannot split the network output of shape "
                    f"{tuple(out.shape)} into mean and scale along dim {self.dim} (odd size)"
                )
            mean, raw = out.chunk(2, dim=self.dim)
        else:
            names = _output_names(out)
            fix = (
                "name the two to read: GaussianEncoder(net, mean_output=..., scale_output=..., "
                "scale=...)"
                if names is not None
                else "return a tensor holding both halves or a (mean, scale) pair"
            )
            raise WrapperError(
                f"GaussianEncoder: the network returned {_describe(out)}; expected a mean and a "
                f"scale; {fix}"
            )
        if self.scale == "std":
            std = raw
        elif self.scale == "logvar":
            std = torch.exp(0.5 * raw)
        elif self.scale == "log_std":
            std = torch.exp(raw)
        else:
            std = nn.functional.softplus(raw)
        return Posterior(mean=mean, std=std)


#: Words in PyTorch's messages that say the network could not take a tensor of that shape.
_SHAPE_WORDS = re.compile(r"shape|size|dimension", re.IGNORECASE)


class ModuleDecoder(Decoder):
    """A decoder around any network mapping z to x.

    Args:
        net: the network.
        latent_shape: the shape of one latent the network takes (an int for a vector), which
            lets the chain draw z0 from the prior N(0, I); None when the caller always gives z0.
        output: for a network that returns its outputs by name (a dict, a dataclass, an object
            with attributes, such as pythae's ``ModelOutput``), the name of the one holding the
            images (pythae: ``"reconstruction"``); None for a network that returns them itself.

    The network's first call is checked: a network that fails on latents of ``latent_shape``
    because of their shape (PyTorch's "mat1 and mat2 shapes cannot be multiplied") is a
    :class:`~aesampler.errors.WrapperError` that says which latent shape it was given.
    """

    def __init__(
        self,
        net: nn.Module,
        latent_shape: tuple[int, ...] | int | None = None,
        *,
        output: str | None = None,
    ):
        super().__init__()
        self.net = net
        if isinstance(latent_shape, int):
            latent_shape = (latent_shape,)
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.output = _output_argument("ModuleDecoder", "output", output)
        self._first_call = True  # until the network has worked once

    def extra_repr(self) -> str:
        parts = [f"latent_shape={self.latent_shape}"]
        if self.output is not None:
            parts.append(f"output={self.output!r}")
        return ", ".join(parts)

    def forward(self, z: Tensor) -> Tensor:
        try:
            out = self.net(z)
        except RuntimeError as error:
            if (
                self._first_call
                and self.latent_shape is not None
                and tuple(z.shape[1:]) == self.latent_shape
                and not isinstance(error, torch.OutOfMemoryError)
                and _SHAPE_WORDS.search(str(error))
            ):
                first = next((line for line in str(error).splitlines() if line.strip()), "")
                raise WrapperError(
                    f"ModuleDecoder: the network failed on its first latents, of shape "
                    f"{tuple(z.shape)} (N, *latent_shape) with latent_shape={self.latent_shape}: "
                    f"{first.strip()}. Is latent_shape the shape of one latent this network "
                    "takes? Give it that shape: ModuleDecoder(net, latent_shape=...)"
                ) from error
            raise
        if self.output is not None:
            x = _named_output(out, self.output, "ModuleDecoder", "output")
        elif not isinstance(out, Tensor):
            fix = (
                f"{_suggest(out, 'output')}: ModuleDecoder(net, output=...)"
                if _output_names(out) is not None
                else "wrap a network that returns the images"
            )
            raise WrapperError(
                f"ModuleDecoder: the network returned {_describe(out)}; expected a tensor of "
                f"images; {fix}"
            )
        else:
            x = out
        self._first_call = False
        return x


def _output_argument(wrapper: str, argument: str, value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(
            f"{wrapper}: {argument} must be the name of an output (a non-empty string) or None, "
            f"got {value!r}"
        )
    return value
