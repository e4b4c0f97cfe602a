aesampler run recipes/quickstart.yaml            # trains, samples, then evaluates
aesampler evaluate runs/quickstart --overwrite   # again, for a trained run (key=value overrides work)
aesampler compare runs/a runs/b --out runs/ab    # several runs side by side
