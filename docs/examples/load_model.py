import aesampler
from aesampler.checkpoint import load_model

model, info = load_model("runs/quickstart")  # or a checkpoints/step-… folder
chain = aesampler.Chain(model.encoder, model.decoder, aesampler.GaussianCorruption(0.5))
