aesampler evaluate recipes/compare/daae_mnist5k.yaml --checkpoint runs/compare/daae_mnist5k --out runs/compare/daae_running sampling.batchnorm=running
