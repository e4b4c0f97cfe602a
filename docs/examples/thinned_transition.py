"""A transition plugin: several decode-corrupt-encode moves per chain step."""

import torch

import aesampler


class ThinnedDecodeCorruptEncode(aesampler.Transition):
    """Decode-corrupt-encode repeated `moves` times per chain step (a thinned chain)."""

    def __init__(
        self,
        encoder: aesampler.Encoder,
        decoder: aesampler.Decoder,
        corruption: aesampler.Corruption | None = None,
        *,
        moves: int = 2,
    ):
        super().__init__()
        if moves < 1:
            raise ValueError(f"moves must be at least 1, got {moves}")
        # Keep the networks as attributes: as submodules of this nn.Module they are what the
        # chain runner moves to its device and puts in batch-norm sampling mode.
        self.encoder = encoder
        self.decoder = decoder
        self.corruption = corruption or aesampler.IdentityCorruption()
        self.moves = moves

    def forward(self, z: torch.Tensor, *, generator: torch.Generator | None = None):
        x_t = None
        for _ in range(self.moves):
            x = self.decoder(z)
            if x_t is None:
                x_t = x  # d(z_t), the sample at this step: returned so the runner need not decode
            posterior = self.encoder(self.corruption(x, generator=generator))  # Q(z | x̃)
            z = posterior.sample(generator)  # mean + std * eps, or the mean when std is None
        return aesampler.TransitionOutput(z=z, x=x_t)


@aesampler.hookimpl
def register_transitions(register):
    register("thinned_dce", ThinnedDecodeCorruptEncode)
