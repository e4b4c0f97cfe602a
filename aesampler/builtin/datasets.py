"""Built-in datasets. None of them downloads anything."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.data import celeba, digits, image_folder, mnist5k, svhn


@hookimpl
def register_datasets(register):
    register("mnist5k", mnist5k)
    register("digits", digits)
    register("celeba", celeba)
    register("svhn", svhn)
    register("image_folder", image_folder)
