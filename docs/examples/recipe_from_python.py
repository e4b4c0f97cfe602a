from aesampler.recipe import load_recipe
from aesampler.workflow import build_components, run

recipe = load_recipe("recipes/quickstart.yaml", ["train.epochs=5", "output.dir=runs/q5"])
run(recipe)  # what `aesampler run` does
parts = build_components(recipe)  # the trained model and the chain of `sampling:`
result = parts.chain.run(n=16, steps=10, seed=0)
