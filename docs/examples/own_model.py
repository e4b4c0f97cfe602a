from my_project import my_decoder, my_encoder, test_images, train_images  # your own

import aesampler
from aesampler.evaluation import evaluate_samples, format_table
from aesampler.samplers import ExPostGMM, encode_images

encoder = aesampler.GaussianEncoder(my_encoder, scale="logvar")  # DeterministicEncoder: an AAE
decoder = aesampler.ModuleDecoder(my_decoder, latent_shape=16)
chain = aesampler.Chain(encoder, decoder, aesampler.GaussianCorruption(sigma=0.5))

z = encode_images(encoder, train_images, batchnorm="running")  # one latent per training image
gmm = ExPostGMM(components=10).fit_latents(z)
result = chain.run(n=1000, start=gmm, steps=5, record=[0, 1, 5], batchnorm="running", seed=0)
report = evaluate_samples(result.x, test_images, train=train_images, latents=result.z)
print(format_table(report))
