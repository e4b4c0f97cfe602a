aesampler train recipes/quickstart.yaml train.epochs=1
aesampler train recipes/quickstart.yaml train.epochs=2 --resume
