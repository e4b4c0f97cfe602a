"""DCGAN-style encoder and decoder, and the AAE's adversary.

Creswell et al. §4.1: the encoder mimics the DCGAN discriminator (strided convolutions, no
pooling) and the decoder the DCGAN generator (fractionally-strided convolutions, no fixed
upsampling); "each convolutional layer is succeeded by spatial batch normalisation and ReLU
nonlinearities, except for the top of the decoder which utilises a sigmoid function". The AAE's
adversary is "a fully-connected network with dropout and leaky ReLU nonlinearities".

For an image of size S (a power of two >= 8) with ``width`` w, the encoder halves the resolution
log2(S) - 2 times (w, 2w, 4w, ... channels) down to 4 × 4, and a final 4 × 4 convolution maps to
the latent code; the decoder mirrors it (Radford et al., 2015).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..checks import check_int


def _num_halvings(image_size: int) -> int:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < 8
        or image_size & (image_size - 1)
    ):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size!r}")
    return int(math.log2(image_size)) - 2


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        check_int(name, value)


class DCGANEncoder(nn.Module):
    """x (B, C, S, S) -> features (B, out_features): strided conv + BN + ReLU blocks.

    Args:
        image_size: S, a power of two >= 8.
        channels: C, image channels.
        out_features: the size of the code (latent size, or twice it for a mean and a scale).
        width: channels of the first convolution; doubled at every halving.
    """

    def __init__(self, image_size: int, channels: int, out_features: int, width: int = 64):
        super().__init__()
        halvings = _num_halvings(image_size)
        _check_positive(channels=channels, out_features=out_features, width=width)
        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(halvings):
            out_ch = width * 2**i
            layers += [
                nn.Conv2d(
                    in_ch, out_ch, 4, stride=2, padding=1, bias=False
                ),  # (B, out_ch, S/2^(i+1), ..)
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)  # (B, w * 2^(h-1), 4, 4)
        self.head = nn.Conv2d(in_ch, out_features, 4)  # (B, out_features, 1, 1): the code
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).flatten(1)  # (B, out_features)


class DCGANDecoder(nn.Module):
    """z (B, latent_dim) -> x (B, C, S, S) in [0, 1]: fractionally-strided conv + BN + ReLU.

    Args:
        image_size: S, a power of two >= 8.
        channels: C, image channels.
        latent_dim: the size of z.
        width: channels of the last hidden layer; doubled towards the input as in DCGAN.
    """

    def __init__(self, image_size: int, channels: int, latent_dim: int, width: int = 64):
        super().__init__()
        halvings = _num_halvings(image_size)
        _check_positive(channels=channels, latent_dim=latent_dim, width=width)
        top = width * 2 ** (halvings - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, top, 4, bias=False),  # (B, top, 4, 4)
            nn.BatchNorm2d(top),
            nn.ReLU(inplace=True),
        ]
        in_ch = top
        for _ in range(halvings - 1):
            out_ch = in_ch // 2
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),  # 2x size
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        layers += [
            nn.ConvTranspose2d(in_ch, channels, 4, stride=2, padding=1),  # (B, C, S, S)
            nn.Sigmoid(),  # pixel intensities in [0, 1], the targets of the BCE loss
        ]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])  # (B, latent_dim, 1, 1) -> (B, C, S, S)


class Adversary(nn.Module):
    """D(z): the probability (as a logit) that z was drawn from the prior rather than encoded.

    Args:
        latent_dim: the size of z.
        hidden: the width of each hidden layer (Makhzani et al. used two of 1000).
        layers: the number of hidden layers.
        dropout: dropout probability after each hidden layer.
        negative_slope: the leaky ReLU's slope.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: int = 1000,
        layers: int = 2,
        dropout: float = 0.2,
        negative_slope: float = 0.2,
    ):
        super().__init__()
        _check_positive(latent_dim=latent_dim, hidden=hidden, layers=layers)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        blocks: list[nn.Module] = []
        in_features = latent_dim
        for _ in range(layers):
            blocks += [
                nn.Linear(in_features, hidden),
                nn.LeakyReLU(negative_slope, inplace=True),
                nn.Dropout(dropout),
            ]
            in_features = hidden
        blocks.append(nn.Linear(in_features, 1))  # (B, 1): a logit
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(1)  # (B,)
