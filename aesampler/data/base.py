"""Dataset containers shared by every image source."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import AesamplerError, quoted

SPLITS: tuple[str, ...] = ("train", "valid", "test")
OnError = Literal["error", "skip"]
ON_ERROR: tuple[str, ...] = ("error", "skip")

# Pillow modes read through ``Image.convert`` (8 bits per channel) ...
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")
# ... and those read as numbers and scaled to [0, 1] by a fixed rule (see ``_high_depth``).
HIGH_DEPTH_MODES: tuple[str, ...] = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
SUPPORTED_MODES: tuple[str, ...] = EIGHT_BIT_MODES + HIGH_DEPTH_MODES
_SHOWN_PROBLEMS = 5  # how many bad files an error message lists

# What Pillow raises for a file it cannot open or decode.
_PIL_ERRORS = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # only when a warnings filter turns it into an error
)
_WORKER_MESSAGE = re.compile(r"Caught (\w+) (in .*?)\.\nOriginal (.*)", re.S)


class DatasetError(AesamplerError):
    """A dataset is missing, empty, or holds a file that cannot be read.

    Raised in a DataLoader worker process, the error reaches the main process with the same
    message: PyTorch re-creates it there from one string that holds the worker's whole traceback,
    and the constructor takes the original message back out of that string. The worker's side
    is kept in ``worker`` (e.g. ``"in DataLoader worker process 0"``) and ``worker_traceback``.
    """

    worker: str | None = None
    worker_traceback: str | None = None

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            unwrapped = _unwrap_worker_message(type(self), args[0])
            if unwrapped is not None:
                message, self.worker, self.worker_traceback = unwrapped
                args = (message,)
        super().__init__(*args)


def _unwrap_worker_message(cls: type, text: str) -> tuple[str, str, str] | None:
    """Split torch's ``"Caught X in <where>.\\nOriginal <traceback>"`` into its parts.

    Returns (original message, where, traceback text), or None if ``text`` is not such a string.
    """
    match = _WORKER_MESSAGE.fullmatch(text)
    if match is None or match.group(1) != cls.__name__:
        return None
    where, traceback_text = match.group(2), match.group(3)
    # The traceback ends with "<module>.<qualname>: <message>"; the message may span lines.
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        _, marker, message = traceback_text.rpartition(f"\n{name}: ")
        if marker:
            return message.removesuffix("\n"), where, traceback_text
    return None


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; splits: {', '.join(SPLITS)}")


def check_on_error(name: str, on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DatasetError(
            f"{name}: data.on_error must be 'error' or 'skip', got {on_error!r}: 'error' stops at "
            "files that cannot be used, 'skip' leaves them out"
        )


@dataclass(frozen=True)
class FileProblem:
    """A file a dataset cannot use, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{quoted(self.path)}: {self.reason}"


class _Unusable(Exception):
    """Internal: a file cannot be used; the message is the reason, without the path."""


def _transforms():
    """torchvision's functional transforms, imported on first use.

    ``import torchvision`` imports its model zoo and ``torch._dynamo`` (about 2 s), which
    commands that never read an image (``validate``, ``plugins``) should not pay for.
    """
    from torchvision.transforms.v2 import functional

    return functional


def square_resize(images: Tensor, size: int) -> Tensor:
    """Centre-crop (…, C, H, W) images to a square of side min(H, W), then resize to size."""
    TF = _transforms()
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
            **({"skipped_files": len(self.skipped)} if self.skipped else {}),
        }

    #: Files left out by ``check_files(on_error="skip")``.
    skipped: tuple[FileProblem, ...] = ()

    def check_files(self, on_error: OnError = "error") -> tuple[FileProblem, ...]:
        """Check every file behind the dataset by its header, before any training.

        With ``on_error="error"`` any bad file raises one :class:`DatasetError` listing how many
        there are and the first few with their reasons; with ``"skip"`` they are dropped from the
        dataset (see ``skipped`` and :meth:`skipped_note`). Returns the problems found (empty if
        none). Datasets held in memory have no files: this base version checks nothing.
        """
        check_on_error(self.name, on_error)
        return ()

    def skipped_note(self) -> str | None:
        """One line for a log saying how many files were skipped and the first reason, or None."""
        if not self.skipped:
            return None
        total = len(self) + len(self.skipped)
        return (
            f"{self.name}: skipped {len(self.skipped)} of {total} image files in split "
            f"{self.split!r} that cannot be used (first: {self.skipped[0]})"
        )


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
    """Images decoded from files on every access (JPEG, PNG, GIF, WebP, BMP, ...).

    8-bit images are converted by Pillow to RGB or grey. 16-bit grey images (Pillow's ``I;16``
    modes) are divided by 65535; 32-bit integer images (``I``) are read the same way and must hold
    values in 0..65535; floating-point images (``F``) must already lie in [0, 1]. A grey image
    asked for in RGB has its one channel repeated.
    """

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
            with _open(path) as file:
                problem = _header_problem(file)
                if problem is not None:
                    raise _Unusable(problem)
                image = _pixels(file, self._mode)
        except _Unusable as error:
            raise DatasetError(f"{self.name}: cannot read image {quoted(path)}: {error}") from error
        image = square_resize(image, self.image_size)
        if image.dtype == torch.uint8:
            return _transforms().to_dtype(image, torch.float32, scale=True), self.labels[index]
        return image.expand(self.channels, -1, -1).contiguous(), self.labels[index]

    def check_files(self, on_error: OnError = "error") -> tuple[FileProblem, ...]:
        """Open every file's header (format, mode and size; no pixels are decoded) and flag
        files that cannot be identified or are cut short in the header, unsupported pixel modes,
        empty images and decompression bombs.

        With ``on_error="error"`` any bad file raises one :class:`DatasetError` listing how many
        there are and the first few with their reasons; with ``"skip"`` they are dropped from the
        dataset, kept in ``skipped`` and summed up by :meth:`skipped_note`. A split left with no
        files is an error. Returns the problems found (empty if none). Damage further into a file
        is found only when the image is decoded, and is then a :class:`DatasetError` naming it.
        """
        check_on_error(self.name, on_error)
        problems = []
        for path in self.paths:
            reason = _header_check(path)
            if reason is not None:
                problems.append(FileProblem(Path(path), reason))
        if not problems:
            return ()
        total = len(self.paths)
        if on_error == "error":
            shown = "".join(f"\n  {p}" for p in problems[:_SHOWN_PROBLEMS])
            more = len(problems) - _SHOWN_PROBLEMS
            raise DatasetError(
                f"{self.name}: {len(problems)} of {total} image files in split {self.split!r} "
                f"cannot be used:{shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nFix or remove them, or set data.on_error: skip to leave them out."
            )
        bad = {str(p.path) for p in problems}
        kept = [(p, y) for p, y in zip(self.paths, self.labels) if str(p) not in bad]
        self.paths = [p for p, _ in kept]
        self.labels = [y for _, y in kept]
        self.skipped = (*self.skipped, *problems)
        if not self.paths:
            raise DatasetError(
                f"{self.name}: split {self.split!r} has no usable images: all {total} files were "
                f"skipped (first: {problems[0]})"
            )
        return tuple(problems)


def _open(path: Path) -> Image.Image:
    """Open an image file, reading its header only; Pillow's failures become :class:`_Unusable`."""
    try:
        return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _Unusable(_bomb_reason(path, error)) from error
    except UnidentifiedImageError as error:
        if _file_size(path) == 0:
            raise _Unusable("the file is empty (0 bytes)") from error
        raise _Unusable(
            "cannot identify the image format (not an image, an image of no pixels, or a damaged "
            "or cut-short header)"
        ) from error
    except FileNotFoundError as error:
        raise _Unusable("no such file") from error
    except _PIL_ERRORS as error:
        raise _Unusable(f"cannot read the header: {error}") from error


def _file_size(path: Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def _header_problem(file: Image.Image) -> str | None:
    if file.mode not in SUPPORTED_MODES:
        return f"unsupported pixel mode {file.mode!r} (supported: {', '.join(SUPPORTED_MODES)})"
    width, height = file.size
    if width <= 0 or height <= 0:
        return f"declares an empty image ({width} × {height} pixels)"
    return None


def _header_check(path: Path) -> str | None:
    """Why a file cannot be used, judged from its header alone, or None if it looks fine."""
    try:
        with _open(path) as file:
            return _header_problem(file)
    except _Unusable as error:
        return str(error)


def _bomb_reason(path: Path, error: Exception) -> str:
    size = _declared_size(path)
    if size is None:  # Pillow's own message gives the number of pixels
        return f"a possible decompression bomb: {error}"
    width, height = size
    limit = Image.MAX_IMAGE_PIXELS or 0
    if isinstance(error, Image.DecompressionBombWarning):  # a warnings filter made it an error
        refused = f"over Pillow's warning limit of {limit:,}"
    else:
        refused = f"over the {2 * limit:,} Pillow decodes"
    return (
        f"declares {width} × {height} pixels ({width * height:,}, {refused}): "
        "a possible decompression bomb"
    )


def _declared_size(path: Path) -> tuple[int, int] | None:
    """The width and height in a file's header, read past Pillow's size limit; None if unknown.

    This mirrors how ``Image.open`` finds a format, leaving out only its size check.
    """
    try:
        Image.init()
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for format_id in Image.ID:
                factory, accept = Image.OPEN[format_id]
                verdict = accept(prefix) if accept else True
                if not verdict or isinstance(verdict, str):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, str(path)).size
                except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError):
                    continue
    except Exception:  # only used to word a message: never let it hide the real error
        return None
    return None


def _pixels(file: Image.Image, mode: str) -> Tensor:
    """(C, H, W) pixels: uint8 for 8-bit images, one float32 channel in [0, 1] otherwise."""
    try:
        if file.mode not in HIGH_DEPTH_MODES:
            return _transforms().pil_to_tensor(file.convert(mode))
        values = np.asarray(file)  # decodes the file
    except _PIL_ERRORS as error:
        raise _Unusable(str(error) or type(error).__name__) from error
    return torch.from_numpy(_high_depth(file.mode, values))[None]


def _high_depth(mode: str, values: np.ndarray) -> np.ndarray:
    """Scale 16-bit, 32-bit integer and floating-point pixels to float32 in [0, 1].

    The rule depends only on the mode, never on an image's content, so every image of a dataset
    is scaled alike: 16-bit and 32-bit integers are divided by 65535 (32-bit ones must hold
    16-bit values, as Pillow gives for 16-bit data), floats must already lie in [0, 1].
    """
    if mode == "F":
        if not np.isfinite(values).all():
            raise _Unusable("floating-point pixels must be finite; this image holds NaN or inf")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise _Unusable(
                f"floating-point pixels must lie in [0, 1]; this image holds {low:.6g}..{high:.6g}"
            )
        return values.astype(np.float32)
    if mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise _Unusable(
                "32-bit integer pixels are read as 16-bit values (0..65535, divided by 65535); "
                f"this image holds {low}..{high}"
            )
    return (values.astype(np.float32) / np.float32(65535)).astype(np.float32)
