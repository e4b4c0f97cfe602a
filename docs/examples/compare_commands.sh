aesampler run recipes/compare/vae_mnist5k.yaml
aesampler run recipes/compare/dvae_mnist5k.yaml
aesampler run recipes/compare/aae_mnist5k.yaml
aesampler run recipes/compare/daae_mnist5k.yaml
aesampler compare runs/compare/vae_mnist5k runs/compare/dvae_mnist5k runs/compare/aae_mnist5k runs/compare/daae_mnist5k --out runs/compare
