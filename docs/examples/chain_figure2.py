"""The paper's Figure 2 for the quickstart model: interpolations before and after 5 chain steps."""

import torch

import aesampler
from aesampler.checkpoint import load_model

model, info = load_model("runs/quickstart")
chain = aesampler.Chain(model.encoder, model.decoder, aesampler.GaussianCorruption(0.5))

# Eight test images of the data the model was trained on, encoded to their posterior means with
# batch statistics as while sampling: rows 0-3 are joined to rows 4-7.
data = info["data"]
test = aesampler.get_registry().create(
    "dataset", data["dataset"], split="test", image_size=data["image_size"]
)
images = torch.stack([test[i][0] for i in range(8)])
with aesampler.sampling_mode([model], "batch"), torch.inference_mode():
    z = model.encoder(images).mean
z_a, z_b = z[:4], z[4:]

path = aesampler.slerp(z_a, z_b, torch.linspace(0, 1, 8))  # (B, 8, D)
result = chain.run(path.flatten(0, 1), steps=5, record=[0, 5], seed=0)
before, after = result.x[0], result.x[5]  # rows of Figure 2
