"""Issue 17: what a resume deletes among checkpoints, and what a concurrent ``sample`` deletes.

Checkpoint deletion removes only the folders aesampler names ``step-NNNNNNNN`` in a real
``checkpoints/`` folder, never through a link; a ``checkpoints/`` that is a link is refused. A
live ``sample``'s ``partial/samples-KEY/`` (it holds the lock in that folder) is never removed by
another ``sample``; a dead one's is, as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aesampler.checkpoint import find_checkpoint
from aesampler.rundir import RunDir, RunDirError

from .conftest import cli
from .helpers import copy_run


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


# ----------------------------------------------------------------------------------------------
# A concurrent sample

SHARDED = ["sampling.shard_size=5", "sampling.seed=9"]  # 12 chains: shards of 4, 4 and 4
ROOT = Path(__file__).resolve().parents[1]  # this checkout's aesampler, in the subprocesses
HOLD = """\
import sys
from aesampler.rundir import RunDir
folder, _ = RunDir(sys.argv[1]).partial_folder(sys.argv[2])
(folder / "shard-00000.safetensors").write_bytes(b"a live run's shard")
print("ready", flush=True)
sys.stdin.read()  # holds the lock until the test closes stdin
"""


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kwargs)


def _hold(run: Path, name: str) -> subprocess.Popen:
    """Another process that holds ``partial/NAME/`` as a running ``sample`` does."""
    child = _python("-c", HOLD, str(run), name, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "ready"
    return child


def _end(child: subprocess.Popen) -> None:
    child.stdin.close()
    assert child.wait(timeout=60) == 0


def test_a_live_samples_progress_is_never_removed_and_a_dead_ones_is(
    tiny_run, tmp_path, monkeypatch
):
    recipe_path, _, _ = tiny_run
    copy = copy_run(tiny_run, tmp_path)
    argv = ["sample", str(recipe_path), "--out", str(copy), "--overwrite", "--quiet"]
    other = "samples-0123456789ab"
    child = _hold(copy, other)
    live = copy / "partial" / other
    try:
        # Other settings, in shards (partial_folder) and in one (drop_partial): the live
        # progress stays, and each completes with its own.
        for settings in (SHARDED, ["sampling.seed=4"]):
            done = cli(*argv, *settings)
            assert done.returncode == 0, done.stderr
            assert (live / "shard-00000.safetensors").read_bytes() == b"a live run's shard"
        # The same settings while a live process writes them: refused, naming it.
        with monkeypatch.context() as patch:  # keep this run's progress, to learn its name
            patch.setattr(RunDir, "drop_partial", lambda self, name=None: None)
            assert cli(*argv, *SHARDED).returncode == 0
        mine = next(p.name for p in (copy / "partial").iterdir() if p.name != other)
        RunDir(copy).release_partial(mine)
        same = _hold(copy, mine)
        try:
            shards = listing(copy / "partial" / mine)
            done = cli(*argv, *SHARDED)
            assert done.returncode == 2
            assert f"pid {same.pid}" in done.stderr and "aesampler sample" in done.stderr
            assert str(copy / "partial" / mine) in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
            assert listing(copy / "partial" / mine) == shards
        finally:
            _end(same)
    finally:
        _end(child)
    # Both writers are gone: their progress is stale, and dropped as before.
    done = cli(*argv, *SHARDED[:1], "sampling.seed=10")
    assert done.returncode == 0, done.stderr
    assert not (copy / "partial").exists()
    assert "partial" not in RunDir(copy).owned()


def test_a_second_sample_with_other_settings_leaves_a_running_one_alone(tiny_run, tmp_path):
    """The reported case: a long sharded sample runs, a short one with other settings starts."""
    recipe_path, _, _ = tiny_run
    copy = copy_run(tiny_run, tmp_path)
    common = ["sample", str(recipe_path), "--out", str(copy), "--overwrite", "--quiet"]
    long = [*common, "sampling.num_chains=600", "sampling.shard_size=20", "sampling.seed=1"]
    first = _python("-m", "aesampler", *long, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list((copy / "partial").glob("samples-*/shard-*.safetensors")):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        short = [*common, "sampling.num_chains=100", "sampling.shard_size=25", "sampling.seed=2"]
        done = cli(*short)
        assert done.returncode == 0, done.stderr
        assert first.poll() is None  # still running: the test tried what it claims to
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert len(list((copy / "samples").glob("samples-*-of-00030.safetensors"))) == 30
    assert not (copy / "partial").exists()


def test_a_sharded_sample_into_a_new_folder_makes_it_and_its_lock(tiny_run, tmp_path):
    """The lock of partial/ lives in the run directory: a first output in shards makes it."""
    recipe_path, run, _ = tiny_run
    fresh = tmp_path / "new" / "run"
    checkpoint = f"model.checkpoint={find_checkpoint(run)}"
    done = cli("sample", str(recipe_path), "--out", str(fresh), "--quiet", checkpoint, *SHARDED)
    assert done.returncode == 0, done.stderr
    assert len(list((fresh / "samples").glob("samples-*-of-00003.safetensors"))) == 3
    assert not (fresh / "partial").exists() and "partial" not in RunDir(fresh).owned()
