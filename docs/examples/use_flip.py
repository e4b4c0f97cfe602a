import torch

import aesampler

flip = aesampler.get_registry().create("corruption", "flip", p=0.2)
x = torch.rand(8, 1, 28, 28)
x_tilde = flip(x, generator=torch.Generator().manual_seed(0))
print(f"{(x_tilde != x).float().mean():.2f} of the pixels flipped")
