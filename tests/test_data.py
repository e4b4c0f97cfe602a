from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader
from torchvision.utils import save_image

from aesampler.data import celeba, digits, image_folder, mnist5k, svhn
from aesampler.data.base import DatasetError, FileImageDataset
from aesampler.plugins import load_registry


def test_mnist5k_is_5000_real_digits_at_32():
    splits = {s: mnist5k(s) for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 4000, "valid": 500, "test": 500}
    x, y = splits["train"][0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and 0 <= y <= 9
    # Splits are disjoint and stratified: 50 of each digit in valid and test.
    for split in ("valid", "test"):
        assert torch.bincount(splits[split].labels, minlength=10).tolist() == [50] * 10
    images = torch.cat([d.images.flatten(1) for d in splits.values()])
    assert len(torch.unique(images, dim=0)) == 5000
    # Real digits: ink in the middle, empty padding at the border.
    mean = splits["train"].images.float().mean(0)[0]
    assert mean[:2].max() == 0 and mean[14:18, 14:18].mean() > 50
    assert mnist5k("train", image_size=64)[0][0].shape == (1, 64, 64)


def test_digits_splits_and_resize():
    sizes = [len(digits(s)) for s in ("train", "valid", "test")]
    assert sum(sizes) == 1797
    x, y = digits("test", image_size=16)[3]
    assert x.shape == (1, 16, 16) and 0 <= y <= 9 and x.max() <= 1


def fake_celeba_jpegs(folder, numbers):
    folder.mkdir(parents=True)
    for n in numbers:
        # Aligned CelebA images are 178 wide and 218 high; a tiny stand-in keeps the aspect.
        image = torch.full((3, 22, 18), n % 255, dtype=torch.float32) / 255
        save_image(image, folder / f"{n:06d}.jpg")


CELEBA_NUMBERS = [1, 2, 162770, 162771, 182637, 182638, 202599]


def test_celeba_bare_folder_uses_the_official_number_ranges(tmp_path):
    fake_celeba_jpegs(tmp_path / "img_align_celeba", CELEBA_NUMBERS)
    split_names = {
        s: [p.name for p in celeba(s, root=str(tmp_path), image_size=8).paths]
        for s in ("train", "valid", "test")
    }
    assert split_names == {
        "train": ["000001.jpg", "000002.jpg", "162770.jpg"],
        "valid": ["162771.jpg", "182637.jpg"],
        "test": ["182638.jpg", "202599.jpg"],
    }
    x, label = celeba("train", root=str(tmp_path), image_size=8)[0]
    assert x.shape == (3, 8, 8) and label == -1


def test_celeba_official_layout_uses_the_partition_file(tmp_path):
    base = tmp_path / "celeba"
    fake_celeba_jpegs(base / "img_align_celeba", CELEBA_NUMBERS)
    # A partition that differs from the number ranges, to show the file is what decides.
    lines = [f"{n:06d}.jpg {i % 3}" for i, n in enumerate(CELEBA_NUMBERS)]
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    got = {
        s: [p.name for p in celeba(s, root=str(tmp_path), image_size=8).paths]
        for s in ("train", "valid", "test")
    }
    assert got == {
        "train": ["000001.jpg", "162771.jpg", "202599.jpg"],
        "valid": ["000002.jpg", "182637.jpg"],
        "test": ["162770.jpg", "182638.jpg"],
    }


def test_celeba_errors_say_where_files_go(tmp_path):
    with pytest.raises(DatasetError, match="set data.root"):
        celeba("train")
    with pytest.raises(
        DatasetError, match=r"no images found.*img_align_celeba.*Nothing is downloaded"
    ):
        celeba("train", root=str(tmp_path))
    fake_celeba_jpegs(tmp_path / "img_align_celeba", [1, 2])
    with pytest.raises(DatasetError, match="split 'test' has no images"):
        celeba("test", root=str(tmp_path))
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg x\n")
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:1: expected"):
        celeba("train", root=str(tmp_path))


def test_celeba_unreadable_image_names_the_file(tmp_path):
    fake_celeba_jpegs(tmp_path / "img_align_celeba", [1])
    (tmp_path / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    # The header check finds it when the dataset is built ...
    with pytest.raises(DatasetError, match=r"000002.jpg': cannot identify the image format"):
        celeba("train", root=str(tmp_path), image_size=8)
    # ... and a dataset built without the check names it when the image is read.
    data = FileImageDataset("celeba", "train", sorted(tmp_path.rglob("*.jpg")), 8)
    with pytest.raises(DatasetError, match="cannot read image .*000002.jpg"):
        data[1]


def test_svhn_reads_torchvisions_mat_files(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 200), ("test_32x32.mat", 30)):
        savemat(
            tmp_path / name,
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": (np.arange(n) % 10 + 1).reshape(-1, 1),  # SVHN stores the digit 0 as 10
            },
        )
    train, valid, test = (svhn(s, root=str(tmp_path)) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (190, 10, 30)
    x, y = test[9]
    assert x.shape == (3, 32, 32) and y == 0
    assert set(test.labels.tolist()) == set(range(10))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="train_32x32.mat' is missing.*Nothing is downloaded"):
        svhn("train", root=str(empty))


def test_image_folder_recursive_and_presplit(tmp_path):
    for i in range(40):
        sub = tmp_path / "flat" / f"group{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 12), (i, i, i)).save(sub / f"{i}.png")
    sizes = [
        len(image_folder(s, root=str(tmp_path / "flat"), image_size=8))
        for s in ("train", "valid", "test")
    ]
    assert sizes == [36, 2, 2]
    x, _ = image_folder("train", root=str(tmp_path / "flat"), image_size=8, channels=1)[0]
    assert x.shape == (1, 8, 8)
    for split in ("train", "valid", "test"):
        (tmp_path / "pre" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pre" / split / "a.png")
    assert len(image_folder("valid", root=str(tmp_path / "pre"), image_size=8)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds 0 image files"):
        image_folder("train", root=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="is not a folder"):
        image_folder("train", root=str(tmp_path / "absent"))


def test_unknown_split_and_registration():
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        mnist5k("validation")
    registry = load_registry()
    assert set(registry.names("dataset")) == {"mnist5k", "digits", "celeba", "svhn", "image_folder"}


# --- Issue #8: high bit depths, decompression bombs, the header check, errors in workers -------


def _png_header_only(path, width, height, bit_depth=8, colour_type=0):
    """A PNG whose IHDR declares ``width`` × ``height``, with no pixel data behind it."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    return path


def _noise_png(path, size=(12, 10), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _truncated_png(path, seed=0):
    """A PNG whose header is intact but whose pixel data stops half way."""
    _noise_png(path, (32, 32), seed)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _files(paths, size=16, channels=1):
    return FileImageDataset("files", "train", paths, size, channels=channels)


def test_16_bit_grey_png_is_scaled_to_unit_range_not_saturated(tmp_path):
    # A 64 × 64 gradient over the whole 16-bit range: 8-bit conversion clips most of it to white.
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path = tmp_path / "gradient.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as file:
        assert file.mode == "I;16"  # what Pillow gives for a 16-bit grey PNG
    expected = torch.from_numpy(values.astype(np.float64) / 65535)
    grey, _ = _files([path], size=64, channels=1)[0]
    assert grey.shape == (1, 64, 64) and grey.dtype == torch.float32
    torch.testing.assert_close(grey[0].double(), expected, rtol=0, atol=1e-6)
    assert (grey == 1).float().mean() < 0.01
    rgb, _ = _files([path], size=64, channels=3)[0]
    assert rgb.shape == (3, 64, 64) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    torch.testing.assert_close(rgb[0], grey[0])
    # Resizing averages neighbours: the mean stays the gradient's mean, and values stay in [0, 1].
    small, _ = _files([path], size=16)[0]
    assert small.min() >= 0 and small.max() <= 1
    assert abs(small.mean().item() - 0.5) < 0.01


def test_32_bit_integer_and_float_images(tmp_path):
    ramp = np.arange(16 * 16).reshape(16, 16)
    good_int = tmp_path / "int.tif"
    Image.fromarray((ramp * 256).astype(np.int32)).save(good_int)  # 0..65280: 16-bit data
    x, _ = _files([good_int])[0]
    torch.testing.assert_close(
        x[0].double(), torch.from_numpy(ramp * 256 / 65535), rtol=0, atol=1e-6
    )

    too_wide = tmp_path / "wide.tif"
    Image.fromarray((ramp * 1000).astype(np.int32)).save(too_wide)  # up to 255,000
    with pytest.raises(DatasetError, match=r"cannot read image .*wide.tif': .*0\.\.65535.*255000"):
        _files([too_wide])[0]

    good_float = tmp_path / "float.tif"
    Image.fromarray((ramp / 255).astype(np.float32)).save(good_float)
    x, _ = _files([good_float])[0]
    torch.testing.assert_close(x[0], torch.from_numpy((ramp / 255).astype(np.float32)))

    bad_float = tmp_path / "bright.tif"
    Image.fromarray((ramp / 100).astype(np.float32)).save(bad_float)
    with pytest.raises(
        DatasetError, match=r"bright.tif': floating-point pixels must lie in \[0, 1\]"
    ):
        _files([bad_float])[0]


def test_decompression_bomb_is_a_dataset_error_naming_the_file_and_size(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    data = _files([bomb])
    with pytest.raises(DatasetError, match=r"bomb.png': declares 20000 × 20000 pixels") as caught:
        data[0]
    assert "decompression bomb" in str(caught.value)
    # Between Pillow's two limits it only warns, and the image is used; a filter that turns the
    # warning into an error gives the same clear message.
    big = _png_header_only(tmp_path / "big.png", 10000, 10000)
    with pytest.warns(Image.DecompressionBombWarning):
        assert _files([big]).check_files() == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DatasetError, match=r"big.png': declares 10000 × 10000 pixels.*warning"):
            _files([big]).check_files()


def test_header_check_finds_every_kind_of_bad_file(tmp_path):
    good = [_noise_png(tmp_path / f"good{i}.png", seed=i) for i in range(3)]
    (tmp_path / "text.png").write_text("not an image")
    header = _noise_png(tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(header[:20])  # cut inside the IHDR chunk
    Image.new("LAB", (8, 8)).save(tmp_path / "lab.tif")
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    _png_header_only(tmp_path / "empty.png", 0, 7)
    bad = ["text.png", "cut.png", "lab.tif", "bomb.png", "empty.png", "missing.png"]
    data = _files([*good, *(tmp_path / name for name in bad)])
    problems = data.check_files(on_error="skip")
    assert [p.path.name for p in problems] == bad
    reasons = {p.path.name: p.reason for p in problems}
    assert "cannot identify" in reasons["text.png"]
    assert "unsupported pixel mode 'LAB'" in reasons["lab.tif"]
    assert "20000 × 20000" in reasons["bomb.png"]
    assert "no such file" in reasons["missing.png"]
    assert data.paths == good and len(data) == 3 and len(data.skipped) == 6
    assert data.skipped_note() == (
        f"files: skipped 6 of 9 image files in split 'train' that cannot be used "
        f"(first: {str(tmp_path / 'text.png')!r}: {reasons['text.png']})"
    )
    assert data.describe()["skipped_files"] == 6
    assert data.check_files() == ()  # what is left is clean


def test_image_folder_on_error_policy(tmp_path):
    root = tmp_path / "pre"
    for split in ("train", "valid", "test"):
        (root / split).mkdir(parents=True)
        for i in range(4):
            _noise_png(root / split / f"{i}.png", seed=i)
    for i in range(7):
        (root / "train" / f"bad{i}.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(DatasetError) as caught:
        image_folder("train", root=str(root), image_size=8)
    message = str(caught.value)
    assert message.startswith("image_folder: 7 of 11 image files in split 'train' cannot be used:")
    assert message.count("bad") == 5 and "and 2 more" in message
    assert "data.on_error: skip" in message

    data = image_folder("train", root=str(root), image_size=8, on_error="skip")
    assert len(data) == 4 and len(data.skipped) == 7
    assert data.skipped_note().startswith("image_folder: skipped 7 of 11 image files")
    assert image_folder("valid", root=str(root), image_size=8).skipped_note() is None
    assert data[3][0].shape == (3, 8, 8)

    for path in (root / "valid").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"split 'valid' has no usable images: all 4 files"):
        image_folder("valid", root=str(root), on_error="skip")
    with pytest.raises(
        DatasetError, match=r"data.on_error must be 'error' or 'skip', got 'ignore'"
    ):
        image_folder("train", root=str(root), on_error="ignore")


def test_celeba_on_error_and_tensor_datasets_have_no_files(tmp_path):
    fake_celeba_jpegs(tmp_path / "img_align_celeba", [1, 2, 3])
    (tmp_path / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DatasetError, match=r"(?s)celeba: 1 of 3 image files .*000002.jpg"):
        celeba("train", root=str(tmp_path), image_size=8)
    data = celeba("train", root=str(tmp_path), image_size=8, on_error="skip")
    assert [p.name for p in data.paths] == ["000001.jpg", "000003.jpg"]
    digits_train = digits("train")
    assert digits_train.check_files() == () and digits_train.skipped_note() is None
    assert "skipped_files" not in digits_train.describe()


def test_image_that_fails_to_decode_names_the_file(tmp_path):
    cut = _truncated_png(tmp_path / "cut.png")
    data = _files([cut])
    assert data.check_files() == ()  # the header is fine: only decoding finds the damage
    with pytest.raises(DatasetError, match=r"files: cannot read image .*cut.png': .*truncated"):
        data[0]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_decode_error_in_a_dataloader_worker_is_one_clear_message(tmp_path, num_workers):
    paths = [_noise_png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    paths.append(_truncated_png(tmp_path / "cut.png"))
    data = _files(paths, size=8, channels=3)
    loader = DataLoader(data, batch_size=2, num_workers=num_workers)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    message = str(caught.value)
    assert (
        message
        == f"files: cannot read image {str(tmp_path / 'cut.png')!r}: image file is truncated"
    )
    assert "Traceback" not in message and "\n" not in message
    if num_workers:
        assert caught.value.worker == "in DataLoader worker process 0"
        assert "Traceback" in caught.value.worker_traceback
