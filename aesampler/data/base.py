"""Dataset containers shared by every image source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..errors import AesamplerError

SPLITS: tuple[str, ...] = ("train", "valid", "test")


class DatasetError(AesamplerError):
    """A dataset is missing, empty, or holds a file that cannot be read."""


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; splits: {', '.join(SPLITS)}")


def square_resize(images: Tensor, size: int) -> Tensor:
    """Centre-crop (…, C, H, W) images to a square of side min(H, W), then resize to size."""
    side = min(images.shape[-2:])
    if images.shape[-1] != images.shape[-2]:
        images = TF.center_crop(images, [side, side])
    if side != size:
        images = TF.resize(images, [size, size], antialias=True)
    return images


class ImageDataset(Dataset):
    """A split of an image dataset: ``(image, label)`` with images (C, S, S) in [0, 1]."""

    name: str
    split: str
    channels: int
    image_size: int
    num_classes: int | None

    def describe(self) -> dict:
        """Plain values describing the data a model is trained on (for checkpoints)."""
        return {
            "dataset": self.name,
            "split": self.split,
            "channels": self.channels,
            "image_size": self.image_size,
            "value_range": [0.0, 1.0],
            "preprocessing": "centre crop to square, resize (antialiased)",
        }


class TensorImageDataset(ImageDataset):
    """Images held in memory as uint8 (N, C, H, W), resized once at construction."""

    def __init__(
        self,
        name: str,
        split: str,
        images: Tensor,
        labels: Tensor | None,
        image_size: int,
        num_classes: int | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) == 0:
            raise DatasetError(f"{name}: split {split!r} is empty")
        self.name, self.split, self.image_size = name, split, image_size
        self.channels, self.num_classes = images.shape[1], num_classes
        self.images = square_resize(images, image_size).contiguous()  # (N, C, S, S) uint8
        self.labels = labels if labels is not None else torch.full((len(images),), -1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float() / 255, int(self.labels[index])


class FileImageDataset(ImageDataset):
    """Images decoded from files on every access (JPEG, PNG, GIF, WebP)."""

    def __init__(
        self,
        name: str,
        split: str,
        paths: Sequence[Path],
        image_size: int,
        channels: int = 3,
        labels: Sequence[int] | None = None,
        num_classes: int | None = None,
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.name, self.split, self.image_size = name, split, image_size
        self.channels, self.num_classes = channels, num_classes
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self._mode = "RGB" if channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as file:
                image = TF.pil_to_tensor(file.convert(self._mode))  # (C, H, W) uint8
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DatasetError(f"{self.name}: cannot read image {path}: {error}") from error
        image = square_resize(image, self.image_size)
        return TF.to_dtype(image, torch.float32, scale=True), self.labels[index]
