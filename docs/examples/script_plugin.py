import torch

import aesampler


class PixelDropout(aesampler.Corruption):
    """Sets each pixel to 0 with probability p."""

    def __init__(self, p: float = 0.3):
        self.p = p

    def __call__(self, x, *, generator=None):
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.p
        return x * keep


class MyPlugin:
    @aesampler.hookimpl
    def register_corruptions(self, register):
        register("pixel_dropout", PixelDropout)


registry = aesampler.load_registry(extra_plugins=[("my-plugin", MyPlugin())])
dropout = registry.create("corruption", "pixel_dropout", p=0.5)
print(registry.get("corruption", "pixel_dropout").distribution)
