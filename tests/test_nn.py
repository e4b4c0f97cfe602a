from __future__ import annotations

import pytest
import torch

from aesampler.nn import Adversary, DCGANDecoder, DCGANEncoder


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    encoder = DCGANEncoder(size, channels, out_features=10, width=4)
    decoder = DCGANDecoder(size, channels, latent_dim=5, width=4)
    x = torch.rand(3, channels, size, size)
    assert encoder(x).shape == (3, 10)
    out = decoder(torch.randn(3, 5))
    assert out.shape == (3, channels, size, size)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output


def test_dcgan_layout_follows_the_paper():
    encoder = DCGANEncoder(64, 3, out_features=400, width=64)
    convs = [m for m in encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512]  # 64 -> 32 -> 16 -> 8 -> 4
    assert all(c.stride == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()) == 4
    decoder = DCGANDecoder(64, 3, latent_dim=200, width=64)
    deconvs = [m for m in decoder.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [512, 256, 128, 64, 3]
    assert isinstance(decoder.net[-1], torch.nn.Sigmoid)


def test_adversary():
    adversary = Adversary(7, hidden=16, layers=3, dropout=0.5)
    assert adversary(torch.randn(4, 7)).shape == (4,)
    assert sum(isinstance(m, torch.nn.Dropout) for m in adversary.modules()) == 3
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in adversary.modules()) == 3


@pytest.mark.parametrize("size", [4, 48, 0, 32.0, True])
def test_bad_sizes_are_rejected(size):
    with pytest.raises(ValueError, match="power of two >= 8"):
        DCGANEncoder(size, 1, 4)
    with pytest.raises(ValueError, match="power of two >= 8"):
        DCGANDecoder(size, 1, 4)


def test_bad_widths_are_rejected():
    with pytest.raises(ValueError, match="width must be a positive integer"):
        DCGANEncoder(8, 1, 4, width=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        Adversary(4, dropout=1.0)
