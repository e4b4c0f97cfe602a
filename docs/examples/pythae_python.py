"""A model trained with pythae, in Python: load its folder, run chains, start from a fitted GMM."""

import torch

import aesampler
from aesampler.checkpoint import load_model
from aesampler.samplers import ExPostGMM, SamplerContext

model, info = load_model("runs/pythae-vae")  # the output_dir, a training folder or final_model/
print(info["model"]["architecture"])  # image_size, channels, latent_dim and the pythae model
chain = aesampler.Chain(model.encoder, model.decoder)

digits = aesampler.get_registry().create("dataset", "digits", split="train", image_size=8)
images = torch.stack([image for image, _ in digits])
with torch.no_grad():
    z = model.encoder(images).sample(torch.Generator().manual_seed(0))  # draws from Q(z|x)
gmm = ExPostGMM(components=10)
gmm.fit(SamplerContext.from_encodings({"train": z}, log=lambda line: None))
result = chain.run(n=64, start=gmm, steps=5, seed=0)
print(tuple(result.x[5].shape))  # (64, 1, 8, 8)
