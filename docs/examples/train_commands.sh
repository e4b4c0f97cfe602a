aesampler train recipes/quickstart.yaml
aesampler train recipes/daae_celeba.yaml data.root=/data/celeba train.epochs=5 --out runs/try
