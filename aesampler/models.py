"""The paper's generative autoencoders: VAE and AAE (Creswell et al. §2.1, §4.1).

A model owns its encoder, decoder (and, for the AAE, adversary) and knows how one training step
updates them; the training loop (``aesampler.training``) owns data, corruption, epochs,
logging and checkpoints. Denoising is not a separate model: the loop feeds the model a corrupted
input x̃ = C(x) and the clean target x, so DVAE = ``vae`` + ``gaussian`` and DAAE = ``aae`` +
``gaussian`` (§2.2: "the reconstruction criterion applied to noisy inputs").

Both reconstruct with binary cross-entropy, summed over pixels and averaged over the batch
(nats per image), and use the 200-D prior N(0, I) by default (§4.1).

Precision (``train.precision``): the training loop sets a model's ``train_precision``, and a
training step runs its forward passes inside :meth:`GenerativeAutoencoder.autocast` (bfloat16
autocast for ``"bf16"``, nothing for ``"fp32"``). Losses, backward passes and optimiser steps run
outside it, in fp32, on fp32 parameters and optimiser state.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .interfaces import (
    Decoder,
    DeterministicEncoder,
    Encoder,
    GaussianEncoder,
    ModuleDecoder,
    Posterior,
)
from .nn import Adversary, DCGANDecoder, DCGANEncoder
from .precision import COMPUTED, autocast_for


class GenerativeAutoencoder(nn.Module, abc.ABC):
    """An encoder/decoder pair trained to match a prior, plus its training step.

    Subclasses set ``encoder`` and ``decoder`` and keep every constructor argument in
    ``architecture`` (plain JSON values), which is all a checkpoint needs to rebuild the model.
    """

    kind: ClassVar[str]
    encoder: Encoder
    decoder: Decoder
    architecture: dict[str, Any]
    #: Under torchrun: the submodules (attribute names) whose forward passes in training_step
    #: make every gradient an optimiser uses. The training loop wraps each in
    #: DistributedDataParallel and runs training_step with the wrappers in their places, so each
    #: backward pass averages the gradients over the ranks. None: the model does not train under
    #: torchrun (see docs/distributed.md).
    ddp_modules: ClassVar[tuple[str, ...] | None] = None

    #: What :meth:`autocast` computes in: ``"fp32"`` or ``"bf16"``. The training loop sets it
    #: from ``train.precision``; it is not part of the model's weights or architecture.
    train_precision: str = "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context ``training_step`` runs its forward passes in, at ``train_precision``.

        For ``"bf16"``, autocast on the model's device (see
        :func:`aesampler.precision.autocast_for`); for ``"fp32"``, nothing. Compute the losses,
        the backward passes and the optimiser steps outside it: the losses on outputs cast to
        float32, so that they and the gradients they start from are fp32. A model whose
        ``training_step`` never enters this context trains in
        fp32 whatever ``train.precision`` says.
        """
        if self.train_precision not in COMPUTED:
            raise ValueError(
                f"train_precision must be one of {COMPUTED}, got {self.train_precision!r}"
            )
        if self.train_precision == "fp32":
            return contextlib.nullcontext()
        parameter = next(self.parameters(), None)
        return autocast_for(None if parameter is None else parameter.device, self.train_precision)

    @abc.abstractmethod
    def optimizer_groups(self) -> dict[str, Iterator[nn.Parameter]]:
        """Parameters by optimiser name; the loop builds one optimiser per entry."""

    @abc.abstractmethod
    def training_step(
        self,
        x: Tensor,
        x_input: Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Update the parameters on one batch and return the (detached) losses.

        Args:
            x: the clean batch, the reconstruction target, values in [0, 1].
            x_input: what the encoder sees: x itself, or a corrupted copy C(x).
            optimizers: one per entry of :meth:`optimizer_groups`.
            generator: the source of every random draw the step makes (dropout aside).
        """

    def reconstruct(self, x: Tensor) -> Tensor:
        """d(mean of Q(z|x)): the model's reconstruction of x."""
        return self.decoder(self.encoder(x).mean)


def _bce(x_rec: Tensor, x: Tensor) -> Tensor:
    """Binary cross-entropy summed over pixels, averaged over the batch: nats per image.

    Computed in fp32 (``x_rec`` may come from an autocast forward pass in bfloat16).

    PyTorch's BCE raises ("all elements of input should be between 0 and 1"; on CUDA a device
    assert) for an input outside [0, 1], and NaN is outside: a model whose weights diverged
    would stop with that error instead of the training loop's "non-finite loss at step N".
    So such inputs make the loss NaN instead, without a host-device synchronisation: they are
    replaced by 0.5 for the BCE, and a NaN is added to the sum when there was any. For inputs
    in [0, 1] (a sigmoid's outputs) the loss and its gradient are bit for bit PyTorch's BCE's:
    the replacement selects every input unchanged and passes the gradient through unchanged,
    and the sum gets 0.0 added.
    """
    x_rec = x_rec.float()
    valid = (x_rec >= 0) & (x_rec <= 1)  # False for NaN: the range BCE checks
    inside = torch.where(valid, x_rec, 0.5)
    poison = torch.zeros((), device=x_rec.device).masked_fill(~valid.all(), float("nan"))
    return F.binary_cross_entropy(inside, x, reduction="sum") / x.shape[0] + poison


def _bce_logits(logits: Tensor, target: float) -> Tensor:
    """Mean binary cross-entropy of ``logits`` against a constant label, computed in fp32."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class VAE(GenerativeAutoencoder):
    """Variational autoencoder: a DCGAN encoder outputs mean and log-variance, z = μ + σ ⊙ ε.

    Loss: BCE reconstruction + KL(Q(z|x) ‖ N(0, I)), one Adam optimiser.

    Args:
        image_size: image side S (a power of two >= 8).
        channels: image channels.
        latent_dim: size of z (the paper's is 200).
        width: channels of the first encoder convolution (DCGAN's 64).
    """

    kind = "vae"
    ddp_modules = ("encoder", "decoder")

    def __init__(self, image_size: int, channels: int, latent_dim: int = 200, width: int = 64):
        super().__init__()
        self.architecture = dict(
            image_size=image_size, channels=channels, latent_dim=latent_dim, width=width
        )
        # Twice the latent size: the means and log-variances of a diagonal Gaussian (§4.1).
        self.encoder = GaussianEncoder(
            DCGANEncoder(image_size, channels, 2 * latent_dim, width), scale="logvar"
        )
        self.decoder = ModuleDecoder(
            DCGANDecoder(image_size, channels, latent_dim, width), latent_shape=latent_dim
        )

    def optimizer_groups(self) -> dict[str, Iterator[nn.Parameter]]:
        return {"autoencoder": self.parameters()}

    def training_step(self, x, x_input, optimizers, generator=None):
        with self.autocast():
            posterior = self.encoder(x_input)
        # The noise and the KL in fp32, whatever precision the networks ran in.
        mean, std = posterior.mean.float(), posterior.std.float()
        z = Posterior(mean, std).sample(generator)  # (B, latent_dim), reparameterised
        with self.autocast():
            x_rec = self.decoder(z)
        reconstruction = _bce(x_rec, x)
        # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − log σ² − 1), per image.
        kl = 0.5 * (mean.square() + std.square() - 2 * std.log() - 1).sum() / x.shape[0]
        loss = reconstruction + kl
        _step(optimizers["autoencoder"], loss)
        return {"loss": loss.detach(), "reconstruction": reconstruction.detach(), "kl": kl.detach()}


class AAE(GenerativeAutoencoder):
    """Adversarial autoencoder with a deterministic encoder (§2.1, §4.1).

    Each step has three phases with their own Adam optimisers (Makhzani et al., 2015):

    1. reconstruction: encoder and decoder minimise the BCE of d(e(x̃)) against x;
    2. adversary: D learns prior draws z ~ N(0, I) as real and encodings e(x̃) as fake;
    3. generator: the encoder minimises −log D(e(x̃)).

    The trained adversary is a submodule, so it is saved with the model.

    Args:
        image_size: image side S (a power of two >= 8).
        channels: image channels.
        latent_dim: size of z (the paper's is 200).
        width: channels of the first encoder convolution (DCGAN's 64).
        adversary_hidden: width of the adversary's hidden layers.
        adversary_layers: number of hidden layers in the adversary.
        adversary_dropout: dropout after each of the adversary's hidden layers.
    """

    kind = "aae"
    # In phase 3 the frozen adversary runs through its wrapper too: no gradient reaches its
    # parameters, so DDP starts no reduction for it.
    ddp_modules = ("encoder", "decoder", "adversary")

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 200,
        width: int = 64,
        adversary_hidden: int = 1000,
        adversary_layers: int = 2,
        adversary_dropout: float = 0.2,
    ):
        super().__init__()
        self.architecture = dict(
            image_size=image_size,
            channels=channels,
            latent_dim=latent_dim,
            width=width,
            adversary_hidden=adversary_hidden,
            adversary_layers=adversary_layers,
            adversary_dropout=adversary_dropout,
        )
        self.encoder = DeterministicEncoder(DCGANEncoder(image_size, channels, latent_dim, width))
        self.decoder = ModuleDecoder(
            DCGANDecoder(image_size, channels, latent_dim, width), latent_shape=latent_dim
        )
        self.adversary = Adversary(
            latent_dim, hidden=adversary_hidden, layers=adversary_layers, dropout=adversary_dropout
        )

    def optimizer_groups(self) -> dict[str, Iterator[nn.Parameter]]:
        return {
            "autoencoder": [*self.encoder.parameters(), *self.decoder.parameters()],
            "adversary": self.adversary.parameters(),
            "generator": self.encoder.parameters(),
        }

    def training_step(self, x, x_input, optimizers, generator=None):
        # 1. Reconstruction.
        with self.autocast():
            z = self.encoder(x_input).mean  # (B, latent_dim)
            x_rec = self.decoder(z)
        reconstruction = _bce(x_rec, x)
        _step(optimizers["autoencoder"], reconstruction)

        # 2. Adversary: prior draws are real (1), encodings are fake (0).
        z = z.detach().float()
        z_prior = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        with self.autocast():
            real, fake = self.adversary(z_prior), self.adversary(z)
        adversary = _bce_logits(real, 1.0) + _bce_logits(fake, 0.0)
        _step(optimizers["adversary"], adversary)

        # 3. Generator: the encoder minimises -log D(e(x̃)); the adversary is held fixed.
        self.adversary.requires_grad_(False)
        try:
            with self.autocast():
                judged = self.adversary(self.encoder(x_input).mean)
            generator_loss = _bce_logits(judged, 1.0)
            _step(optimizers["generator"], generator_loss)
        finally:
            self.adversary.requires_grad_(True)
        return {
            "loss": reconstruction.detach() + generator_loss.detach(),
            "reconstruction": reconstruction.detach(),
            "adversary": adversary.detach(),
            "generator": generator_loss.detach(),
        }
