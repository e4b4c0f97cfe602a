"""Image datasets: the embedded default (``mnist5k``), scikit-learn's ``digits``, ``celeba``,
``svhn`` and ``image_folder``. Every dataset yields ``(image, label)`` pairs: a float32 tensor
(C, S, S) with values in [0, 1], centre-cropped to a square and resized to S, and an integer
class (-1 where the data has none). Nothing is ever downloaded.
"""

from .base import (
    SPLITS,
    DatasetError,
    FileImageDataset,
    FileProblem,
    ImageDataset,
    TensorImageDataset,
    square_resize,
)
from .sources import celeba, digits, image_folder, mnist5k, svhn

__all__ = [
    "SPLITS",
    "DatasetError",
    "FileImageDataset",
    "FileProblem",
    "ImageDataset",
    "TensorImageDataset",
    "celeba",
    "digits",
    "image_folder",
    "mnist5k",
    "square_resize",
    "svhn",
]
