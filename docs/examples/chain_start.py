"""Chains that start from a sampler of one's own; with running BN, chunking changes nothing."""

import torch

import aesampler
from aesampler.checkpoint import load_model

model, info = load_model("runs/quickstart")
chain = aesampler.Chain(model.encoder, model.decoder, aesampler.GaussianCorruption(0.5))


class Tempered:
    """The prior at temperature T, N(0, T² I): draws on the CPU, all noise from the generator."""

    def __init__(self, latent_shape, temperature):
        self.latent_shape, self.temperature = tuple(latent_shape), temperature

    def sample(self, n, generator=None):
        return self.temperature * torch.randn(n, *self.latent_shape, generator=generator)


start = Tempered(model.decoder.latent_shape, 0.7)
whole = chain.run(n=600, start=start, batchnorm="running", seed=0)
chunked = chain.run(n=600, start=start, batchnorm="running", seed=0, chunk_size=256)
assert all(torch.equal(whole.x[t], chunked.x[t]) for t in whole.steps)  # bit for bit
