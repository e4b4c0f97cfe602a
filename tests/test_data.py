from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torchvision.utils import save_image

from aesampler.data import celeba, digits, image_folder, mnist5k, svhn
from aesampler.data.base import DatasetError
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


def _fake_celeba_jpegs(folder, numbers):
    folder.mkdir(parents=True)
    for n in numbers:
        # Aligned CelebA images are 178 wide and 218 high; a tiny stand-in keeps the aspect.
        image = torch.full((3, 22, 18), n % 255, dtype=torch.float32) / 255
        save_image(image, folder / f"{n:06d}.jpg")


CELEBA_NUMBERS = [1, 2, 162770, 162771, 182637, 182638, 202599]


def test_celeba_bare_folder_uses_the_official_number_ranges(tmp_path):
    _fake_celeba_jpegs(tmp_path / "img_align_celeba", CELEBA_NUMBERS)
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
    _fake_celeba_jpegs(base / "img_align_celeba", CELEBA_NUMBERS)
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
    _fake_celeba_jpegs(tmp_path / "img_align_celeba", [1, 2])
    with pytest.raises(DatasetError, match="split 'test' has no images"):
        celeba("test", root=str(tmp_path))
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg x\n")
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:1: expected"):
        celeba("train", root=str(tmp_path))


def test_celeba_unreadable_image_names_the_file(tmp_path):
    _fake_celeba_jpegs(tmp_path / "img_align_celeba", [1])
    (tmp_path / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    data = celeba("train", root=str(tmp_path), image_size=8)
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
