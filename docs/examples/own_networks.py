"""Chains on your own networks: the wrappers, the recorded steps, and interpolation."""

import torch
from torch import nn

import aesampler

# Stand-ins for your trained networks: any nn.Module pair works.
my_encoder = nn.Sequential(
    nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2 * 16)
)  # outputs mean and log-variance
my_decoder = nn.Sequential(
    nn.Linear(16, 64),
    nn.BatchNorm1d(64),
    nn.ReLU(),
    nn.Linear(64, 784),
    nn.Sigmoid(),
    nn.Unflatten(1, (1, 28, 28)),
)

chain = aesampler.Chain(
    aesampler.GaussianEncoder(my_encoder, scale="logvar"),  # a VAE encoder; use
    # DeterministicEncoder for an AAE
    aesampler.ModuleDecoder(my_decoder, latent_shape=16),
    aesampler.GaussianCorruption(sigma=0.5),  # the paper's N(x, 0.25 I); None for a
)  # model trained without denoising
result = chain.run(n=64, steps=10, seed=0)  # 64 chains from z0 ~ N(0, I)
print(result.steps)  # (0, 1, 5, 10): the paper's steps
print(result.x[5].shape)  # torch.Size([64, 1, 28, 28]): samples after 5 steps
print(result.z[10].shape)  # torch.Size([64, 16])

# Interpolate spherically between two batches of latents, then let the chain clean it up.
path = aesampler.slerp(result.z[10][:4], result.z[10][4:8], torch.linspace(0, 1, 8))  # (4, 8, 16)
cleaned = chain.run(path.reshape(32, 16), steps=5, record=[0, 5], seed=1)
print(cleaned.x[5].shape)  # torch.Size([32, 1, 28, 28])
