"""Networks of one's own, wrapped for aesampler: these return dicts, as many libraries' do."""

from torch import nn

import aesampler


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):  # (B, 1, 8, 8) -> a mean and a log-variance per latent dimension
        h = self.body(x)
        return {"mu": h[:, :4], "logvar": h[:, 4:]}


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())

    def forward(self, z):  # (B, 4) -> images in [0, 1]
        return {"images": self.body(z).reshape(-1, 1, 8, 8)}


encoder_net, decoder_net = Encoder(), Decoder()  # your trained networks (load_state_dict ...)
encoder = aesampler.GaussianEncoder(
    encoder_net, scale="logvar", mean_output="mu", scale_output="logvar"
)
decoder = aesampler.ModuleDecoder(decoder_net, latent_shape=4, output="images")
chain = aesampler.Chain(encoder, decoder, aesampler.GaussianCorruption(0.5))
result = chain.run(n=32, steps=10, seed=0)
print(tuple(result.x[10].shape))  # (32, 1, 8, 8): d(z_10) for 32 chains

try:  # the decoder without output=: one clear error at its first call
    aesampler.Chain(encoder, aesampler.ModuleDecoder(decoder_net, latent_shape=4)).run(n=2)
except aesampler.WrapperError as error:
    print(error)
