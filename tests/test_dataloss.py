"""Issue 17: what a resume deletes among checkpoints, and what a concurrent ``sample`` deletes.

Checkpoint deletion removes only the folders aesampler names ``step-NNNNNNNN`` in a real
``checkpoints/`` folder, never through a link; a ``checkpoints/`` that is a link is refused. A
live ``sample``'s ``partial/samples-KEY/`` (it holds the lock in that folder) is never removed by
another ``sample``; a dead one's is, as before.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aesampler.checkpoint import find_checkpoint
from aesampler.rundir import RunDir, RunDirError

from .conftest import cli


def copy_run(tiny_run, tmp_path: Path, name: str = "copy") -> Path:
    _, run, _ = tiny_run
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (links not followed) and the bytes of its files."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            found[key] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return found


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_a_resume_deletes_only_the_checkpoints_aesampler_wrote(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    checkpoints = copy / "checkpoints"
    assert find_checkpoint(copy).name == "step-00000003"
    mine = checkpoints / "step-00000003-keep-me"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"mine")
    (checkpoints / "step-notes.txt").write_text("notes")
    (checkpoints / "step-00000009").write_text("a file by aesampler's name is not aesampler's")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(find_checkpoint(copy), elsewhere)
    os.symlink(elsewhere, checkpoints / "step-00000002")  # a linked step folder
    before = listing(elsewhere)

    done = cli("train", str(copy), "--resume", "--quiet", "train.max_steps=5")
    assert done.returncode == 0, done.stderr
    assert find_checkpoint(copy).name == "step-00000005"
    assert not (checkpoints / "step-00000003").exists()  # aesampler's older checkpoint goes
    assert (mine / "weights.bin").read_bytes() == b"mine"
    assert (checkpoints / "step-notes.txt").read_text() == "notes"
    assert (checkpoints / "step-00000009").is_file()
    assert (checkpoints / "step-00000002").is_symlink()  # never deleted through
    assert listing(elsewhere) == before


def test_a_linked_checkpoints_folder_is_refused_and_nothing_changes(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    big = tmp_path / "big" / "ckpts"
    big.mkdir(parents=True)
    for item in (copy / "checkpoints").iterdir():  # mv run/checkpoints/* /big/ckpts
        shutil.move(str(item), big / item.name)
    (copy / "checkpoints").rmdir()
    os.symlink(big, copy / "checkpoints")  # ln -s /big/ckpts run/checkpoints
    other = big / "step-00000001-other-experiment"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another experiment's")
    before_target, before_run = listing(big), listing(copy)

    done = cli("train", str(copy), "--resume", "--quiet", "train.max_steps=5")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert str(copy / "checkpoints") in done.stderr and "symbolic link" in done.stderr
    assert "output.dir" in done.stderr  # says how to fix it
    assert listing(big) == before_target
    assert listing(copy) == before_run
    # Sampling only reads the checkpoint: it still works through the link.
    done = cli("sample", str(copy), "--overwrite", "--quiet", "sampling.seed=2")
    assert done.returncode == 0, done.stderr
    assert listing(big) == before_target

    # The library call refuses too (a training that would save there).
    with pytest.raises(RunDirError, match="symbolic link"):
        RunDir(copy).drop_old_checkpoints(keep="step-00000005")
    assert listing(big) == before_target
