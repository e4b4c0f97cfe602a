"""Small recipes and generated data sets for training tests."""

from __future__ import annotations

from pathlib import Path

from aesampler.recipe.loader import validate


def tiny_recipe(run_dir: Path, registry=None, **sections) -> object:
    """A recipe that trains in about a second: 8 × 8 digits, a 4-D latent, narrow networks."""
    data = {
        "model": {"name": "aae", "latent_dim": 4, "width": 4, "adversary_hidden": 16},
        "data": {"name": "digits", "image_size": 8},
        "corruption": {"name": "gaussian", "sigma": 0.5},
        "train": {"epochs": 1, "batch_size": 64, "grid_size": 4, "seed": 3},
        "output": {"dir": str(run_dir)},
    }
    for section, values in sections.items():
        if values is None:
            data[section] = None
        elif "name" in values:  # another component: its own parameters only
            data[section] = {
                k: v for k, v in {**data[section], **values}.items() if k in ("latent_dim", "width")
            } | values
        else:
            data[section] = {**data.get(section, {}), **values}
    return validate(data, registry=registry)
