"""Fill in the right half of eight test digits with the quickstart model, from Python."""

import torch

import aesampler
from aesampler.checkpoint import load_model
from aesampler.inpaint import inpaint, make_mask

model, info = load_model("runs/quickstart")
data = info["data"]
test = aesampler.get_registry().create(
    "dataset", data["dataset"], split="test", image_size=data["image_size"]
)
images = torch.stack([test[i][0] for i in range(8)])  # (8, C, H, W), the truth
observed = make_mask("right", images.shape[2:], count=8)  # True where a pixel is kept

done = inpaint(
    model.encoder,
    model.decoder,
    images,
    observed,
    corruption=aesampler.GaussianCorruption(0.5),  # the model's training corruption
    steps=10,
    seed=0,
)
print(done.mean_error)  # {0: ..., 1: ..., 5: ..., 10: ...}: squared error of the hidden pixels
filled = done.chains.x[10]  # (8, C, H, W); the observed pixels are those of `images`, exactly
