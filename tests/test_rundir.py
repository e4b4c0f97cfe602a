"""The run directory never loses what aesampler did not write, and every write is all-or-nothing."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from aesampler import rundir
from aesampler.checkpoint import CheckpointError, find_checkpoint
from aesampler.rundir import MANIFEST, RunDir, RunDirError

from .conftest import EXE, cli
from .helpers import crash_at


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), the manifest's lock aside."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK
    }


def leftovers(folder: Path) -> list[str]:
    """Staging and backup folders of transactions (the lock file is not one)."""
    return [
        p.name for p in folder.iterdir() if p.name.startswith((".aesampler-new", ".aesampler-old"))
    ]


def without_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != MANIFEST}


def tree(folder: Path, entry: str, path: str | None = None) -> dict[str, bytes]:
    """The files of one entry; ``path`` (the folder's own path) is written as RUN in them."""
    files = {k: v for k, v in snapshot(folder).items() if k == entry or k.startswith(entry + "/")}
    if path is not None:  # settings name the checkpoint by its path, the report the run's name
        name = f"report: {Path(path).name}<".encode()
        files = {
            k: v.replace(path.encode(), b"RUN").replace(name, b"report: RUN<")
            for k, v in files.items()
        }
    # The sampler comparison records how long fitting and chains took: not the same twice.
    files = {
        k: re.sub(rb'("[a-z]+_seconds": )[-+.e0-9]+', rb"\1T", v) if k.endswith(".json") else v
        for k, v in files.items()
    }
    return {
        k: re.sub(rb"<td>[0-9.]+ s( \(saved fit\))?</td>", b"<td>T s</td>", v)
        if k.endswith(".html")
        else v
        for k, v in files.items()
    }


def copy_run(tiny_run, tmp_path: Path, name: str = "copy") -> Path:
    _, run, _ = tiny_run
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


# ----------------------------------------------------------------------------------------------
# --overwrite replaces only aesampler's own outputs


def test_overwrite_refuses_a_folder_aesampler_did_not_make(tiny_run, tmp_path):
    recipe, _, _ = tiny_run
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "important.txt").write_text("years of work")
    for command in ("train", "run"):
        done = cli(command, str(recipe), "--out", str(precious), "--overwrite", "--quiet")
        assert done.returncode == 2
        assert "was not made by aesampler" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(precious) == {"important.txt": b"years of work"}


def test_overwrite_never_deletes_the_dataset_it_reads(tmp_path):
    data = tmp_path / "faces"
    data.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(data / f"{i:03d}.png")
    before = snapshot(data)
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        f"data: {{name: image_folder, root: {data}, image_size: 8}}\n"
        "train: {epochs: 1, batch_size: 4, grid_size: 4}\n"
        f"output: {{dir: {data}}}\n"
    )
    done = cli("train", str(recipe), "--overwrite", "--quiet")
    assert done.returncode == 2 and "was not made by aesampler" in done.stderr
    assert snapshot(data) == before


def test_sample_overwrite_replaces_only_the_samples(tiny_run, tmp_path):
    _, run, _ = tiny_run
    copy = copy_run(tiny_run, tmp_path)
    (copy / "notes.txt").write_text("mine")
    before = snapshot(copy)
    done = cli(
        "sample", str(copy), "--checkpoint", str(run), "--overwrite", "--quiet", "sampling.seed=9"
    )
    assert done.returncode == 0, done.stderr
    after = snapshot(copy)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed and all(
        k.startswith(("samples/", "report")) or k == MANIFEST for k in changed
    ), changed
    for kept in ("checkpoints", "images", "metrics.jsonl", "metrics.json", "notes.txt"):
        assert tree(copy, kept) == {
            k: v for k, v in before.items() if k == kept or k.startswith(kept + "/")
        }, kept


def test_evaluate_overwrite_keeps_earlier_samples_and_suggests_no_missing_flag(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    out = tmp_path / "out"
    made = cli("sample", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet")
    assert made.returncode == 0, made.stderr
    samples = tree(out, "samples")
    first = cli("evaluate", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    again = cli("evaluate", str(recipe), "--checkpoint", str(run), "--out", str(out), "--quiet")
    assert again.returncode == 2
    assert "metrics.json' already exists; pass --overwrite" in again.stderr
    assert "--resume" not in again.stderr
    done = cli(
        "evaluate",
        str(recipe),
        "--checkpoint",
        str(run),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert tree(out, "samples") == samples


def test_a_failed_sample_keeps_the_old_samples(tiny_run, tmp_path, monkeypatch):
    copy = copy_run(tiny_run, tmp_path)
    samples = tree(copy, "samples")
    huge = cli("sample", str(copy), "--overwrite", "--quiet", "sampling.num_chains=1000000000000")
    assert huge.returncode == 2 and "sampling.num_chains=1000000000000 needs about" in huge.stderr
    assert tree(copy, "samples") == samples

    # The disk fills up while the new samples are written: the old ones stay, one clear message.
    real = rundir.atomic_write_bytes
    calls = []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(rundir, "atomic_write_bytes", full_disk)
    done = cli("sample", str(copy), "--overwrite", "--quiet", "sampling.seed=9")
    assert done.returncode == 2
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    assert tree(copy, "samples") == samples
    assert not leftovers(copy)
    assert RunDir(copy).manifest()["pending"] == {}


def test_a_failed_resume_changes_nothing(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    before = without_manifest(snapshot(copy))
    done = cli("train", str(copy), "--resume", "--quiet", "model.latent_dim=16")
    assert done.returncode == 2 and "cannot resume" in done.stderr
    assert without_manifest(snapshot(copy)) == before
    assert cli("sample", str(copy), "--overwrite", "--quiet").returncode == 0


def test_a_failed_start_leaves_no_half_made_run_directory(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(run / "checkpoints", broken / "checkpoints")
    (find_checkpoint(broken) / "model.json").write_text("{")
    out = tmp_path / "out"
    done = cli("sample", str(recipe), "--checkpoint", str(broken), "--out", str(out), "--quiet")
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    assert not out.exists()

    # An image that cannot be decoded fails the training; the next attempt is not refused.
    data = tmp_path / "images"
    for split, count in (("train", 8), ("valid", 2), ("test", 2)):
        (data / split).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), 20 * i).save(data / split / f"{i:03d}.png")
    damaged = data / "train" / "005.png"  # a whole header, but the pixels are cut short
    damaged.write_bytes(damaged.read_bytes()[:40])
    folder_recipe = tmp_path / "folder.yaml"
    folder_recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        f"data: {{name: image_folder, root: {data}, image_size: 8, channels: 1}}\n"
        "train: {epochs: 1, batch_size: 4, grid_size: 4}\n"
        f"output: {{dir: {tmp_path / 'trained'}}}\n"
    )
    done = cli("train", str(folder_recipe), "--quiet")
    assert done.returncode == 2 and "005.png" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "trained").exists()
    damaged.unlink()
    done = cli("train", str(folder_recipe), "--quiet")
    assert done.returncode == 0, done.stderr


def test_a_training_that_fails_before_its_first_checkpoint_restores_the_old_run(
    tiny_run, tmp_path, monkeypatch
):
    copy = copy_run(tiny_run, tmp_path)
    before = without_manifest(snapshot(copy))

    def broken_save(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints")

    monkeypatch.setattr("aesampler.training.save_checkpoint", broken_save)
    done = cli("train", str(copy), "--overwrite", "--quiet")
    assert done.returncode == 2 and "No space left" in done.stderr
    assert without_manifest(snapshot(copy)) == before
    assert RunDir(copy).manifest()["pending"] == {}


def test_resume_leaves_no_repeated_steps_in_the_training_log(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        "data: {name: digits, image_size: 8}\n"
        "train: {epochs: 1, grid_size: 4}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    assert cli("train", str(recipe), "train.max_steps=3", "--quiet").returncode == 0
    log = tmp_path / "run" / "metrics.jsonl"
    # Steps 4 and 5 were logged by a process killed before it saved their checkpoint.
    with log.open("a") as file:
        for step in (4, 5):
            file.write(json.dumps({"event": "step", "step": step, "epoch": 1, "loss": 1.0}) + "\n")
        file.write('{"event": "step", "st')  # cut short by the kill
    done = cli("train", str(recipe), "train.max_steps=6", "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    steps = [
        r["step"] for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "step"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_recover_removes_only_dead_writers_temporary_files(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    live = os.getpid()
    (copy / f".aesampler-new-samples-{dead}").mkdir()
    (copy / f".aesampler-new-samples-{dead}" / "x").write_text("half")
    (copy / f".recipe.yaml.tmp-{dead}").write_text("half")
    (copy / "checkpoints" / f".tmp-step-00000009-{dead}").mkdir()
    (copy / f".aesampler-new-interpolation-{live}").mkdir()
    # A user's files with look-alike names, in the run and inside its outputs: all kept.
    lookalikes = [
        copy / f".notes.tmp-{dead}.txt",
        copy / ".tmp-results-20240105",
        copy / ".thesis.tex.tmp-2024",
        copy / f".tmp-step-00000009-{dead}",
        copy / "samples" / ".tmp-fig-3-99999",
    ]
    for path in lookalikes:
        path.write_text("mine")
    (copy / ".aesampler-old-mine-7777777").mkdir()
    done = RunDir(copy).recover()
    assert len(done) == 3, done
    assert all(path.read_text() == "mine" for path in lookalikes)
    assert (copy / ".aesampler-old-mine-7777777").is_dir()
    assert (copy / f".aesampler-new-interpolation-{live}").is_dir()
    assert not (copy / f".aesampler-new-samples-{dead}").exists()
    assert not (copy / f".recipe.yaml.tmp-{dead}").exists()
    assert not (copy / "checkpoints" / f".tmp-step-00000009-{dead}").exists()


def test_the_sweep_never_follows_a_link_out_of_the_run(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    victim = outside / f".epoch-001-samples.png.tmp-{2**22 + 1}"
    victim.write_text("mine")
    shutil.rmtree(copy / "images")
    os.symlink(outside, copy / "images")
    RunDir(copy).recover()
    assert victim.read_text() == "mine"


def test_latest_is_never_followed_out_of_its_run_directory(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    outside = tmp_path / "step-00000001"
    shutil.copytree(find_checkpoint(copy), outside)
    for pointer in ("../../step-00000001", str(outside), "step-1\nx", "\xff"):
        (copy / "checkpoints" / "latest").write_bytes(pointer.encode("latin-1"))
        with pytest.raises(CheckpointError, match="does not name a checkpoint folder"):
            find_checkpoint(copy)
    os.symlink(outside, copy / "checkpoints" / "step-00000099")
    (copy / "checkpoints" / "latest").write_text("step-00000099\n")
    with pytest.raises(CheckpointError, match="does not name a checkpoint folder"):
        find_checkpoint(copy)


def test_output_paths_that_cannot_be_written_give_one_message(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = cli("sample", str(recipe), "--checkpoint", str(run), "--out", str(a_file), "--quiet")
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr
    assert a_file.read_text() == "x"
    done = cli("sample", str(recipe), "--checkpoint", str(run), "--out", "/proc/no/such", "--quiet")
    assert done.returncode == 2 and "cannot create the output directory" in done.stderr
    done = cli("compare", str(run), "--out", str(a_file))
    assert done.returncode == 2 and "is a file" in done.stderr


def test_damaged_files_given_to_report_and_compare_give_one_message(tiny_run, tmp_path):
    for name, content, expected in (
        ("metrics.json", b'{"steps": [0], "metr', "not valid JSON"),
        ("metrics.json", b'{"steps": [0], "metrics": {"x": 1}}', "not aesampler sample-quality"),
        ("metrics.json", b"\xff\xfe", "not UTF-8"),
        ("samples/settings.json", b"[1, 2", "not valid JSON"),
        ("recipe.yaml", b"model: [", "not valid YAML"),
        ("recipe.yaml", b"\xff", "not UTF-8"),
    ):
        copy = copy_run(tiny_run, tmp_path, f"copy-{len(list(tmp_path.iterdir()))}")
        (copy / name).write_bytes(content)
        report = (copy / "report.html").read_bytes()
        done = cli("report", str(copy))
        assert done.returncode == 2, (name, done.stderr)
        assert expected in done.stderr and name.split("/")[-1] in done.stderr
        assert "Traceback" not in done.stderr
        assert (copy / "report.html").read_bytes() == report
        if name == "metrics.json":
            done = cli("compare", str(copy))
            assert done.returncode == 2 and expected in done.stderr


# ----------------------------------------------------------------------------------------------
# Transactions and crashes


def test_a_transaction_commits_or_rolls_back(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.transaction("sample", [rundir.SAMPLES]) as txn:
        txn.path(rundir.SAMPLES).mkdir()
        (txn.path(rundir.SAMPLES) / "a").write_text("old")
    assert (run / "samples" / "a").read_text() == "old"
    assert run.owned()["samples"]["command"] == "sample"
    with pytest.raises(RuntimeError), run.transaction("sample", [rundir.SAMPLES]) as txn:
        txn.path(rundir.SAMPLES).mkdir()
        (txn.path(rundir.SAMPLES) / "a").write_text("new")
        raise RuntimeError("boom")
    assert (run / "samples" / "a").read_text() == "old"
    assert sorted(p.name for p in run.path.iterdir()) == sorted([MANIFEST, rundir.LOCK, "samples"])
    # A fresh directory whose first transaction fails is removed again.
    fresh = RunDir(tmp_path / "fresh")
    with pytest.raises(RuntimeError), fresh.transaction("sample", [rundir.SAMPLES]) as txn:
        txn.path(rundir.SAMPLES).mkdir()
        raise RuntimeError("boom")
    assert not fresh.path.exists()


def _count_points(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv(rundir._FAULT_ENV, str(10**9))
    monkeypatch.setattr(rundir, "_fault_count", 0)
    assert cli(*argv).returncode == 0
    count = rundir._fault_count
    monkeypatch.delenv(rundir._FAULT_ENV)
    return count


@pytest.mark.parametrize("command", ["sample", "evaluate", "compare-samplers"])
def test_a_writer_killed_at_any_point_leaves_the_old_or_the_new_result(
    command, tiny_run, tmp_path, monkeypatch
):
    """Kill ``sample``/``evaluate``/``compare-samplers`` at every point where it changes the
    disk, in turn."""
    entries = {
        "sample": ["samples"],
        "evaluate": ["metrics.json"],
        "compare-samplers": ["samplers"],
    }[command] + ["report.html", "report"]
    base = copy_run(tiny_run, tmp_path, "base")
    argv = [command, "RUN", "--overwrite", "--quiet", "sampling.seed=9", "evaluate.seed=9"]
    # What is written matters here, not the numbers: two metrics, no intervals, fewer plots.
    argv += ["evaluate.metrics=[mmd_learned, frechet]", "evaluate.bootstrap=0"]
    if command == "compare-samplers":  # over an earlier comparison
        compared = ["samplers.compare=[{name: ex_post_gmm, components: 2}]"]
        assert cli(command, str(base), "--quiet", "samplers.compare=[prior]").returncode == 0
        argv += [*compared, "samplers.steps=[0, 1]"]
    old = {e: tree(base, e) for e in entries}
    counted = copy_run(tiny_run, tmp_path, "count")
    points = _count_points([a.replace("RUN", str(counted)) for a in argv], monkeypatch)
    new_dir = copy_run(tiny_run, tmp_path, "new")  # made as the victims are: forked, one thread
    assert crash_at(10**9, [a.replace("RUN", str(new_dir)) for a in argv]) == 0
    new = {e: tree(new_dir, e, str(new_dir)) for e in entries}
    assert all(old[e] != new[e] for e in entries[:1])
    assert points >= 8, points
    outcomes = {"old": 0, "new": 0}
    for point in range(1, points + 1):
        victim = tmp_path / f"victim-{point}"
        shutil.copytree(base, victim)
        code = crash_at(point, [a.replace("RUN", str(victim)) for a in argv])
        assert code == 137, (point, code)
        RunDir(victim).recover()  # what the next command does first
        for entry in entries:
            now = tree(victim, entry, str(victim))
            if entry == "report":  # plots are redrawn: compare names, not pixels
                assert set(now) in ({*old[entry]}, {*new[entry]}), (point, entry)
                continue
            assert now in (old[entry], new[entry]), (point, entry, sorted(now))
        outcomes["old" if tree(victim, entries[0]) == old[entries[0]] else "new"] += 1
        assert RunDir(victim).manifest()["pending"] == {}
        assert not leftovers(victim)
        for kept in ("checkpoints", "metrics.jsonl"):
            assert tree(victim, kept) == tree(base, kept)
        shutil.rmtree(victim)
    assert outcomes["old"] and outcomes["new"], outcomes


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_real_process_killed_at_random_moments(command, tiny_run, tmp_path):
    """SIGKILL a real ``aesampler`` process at random moments while it works."""
    entry = {"sample": "samples", "evaluate": "metrics.json"}[command]
    base = copy_run(tiny_run, tmp_path, "base")
    old = tree(base, entry)
    argv = [EXE, command, "RUN", "--overwrite", "--quiet", "sampling.seed=9", "evaluate.seed=9"]
    started = time.perf_counter()
    full = copy_run(tiny_run, tmp_path, "full")
    done = subprocess.run([a.replace("RUN", str(full)) for a in argv], capture_output=True)
    assert done.returncode == 0, done.stderr
    duration = time.perf_counter() - started
    new = tree(full, entry, str(full))
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        victim = tmp_path / f"victim-{i}"
        shutil.copytree(base, victim)
        process = subprocess.Popen(
            [a.replace("RUN", str(victim)) for a in argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Uniform over the second half of a run: start-up (imports) takes the first half.
        time.sleep(duration * (0.5 + 0.5 * torch.rand((), generator=generator).item()))
        process.send_signal(signal.SIGKILL)
        process.wait()
        RunDir(victim).recover()
        assert tree(victim, entry, str(victim)) in (old, new), i
        assert RunDir(victim).manifest()["pending"] == {}


def test_concurrent_writers_do_not_clobber_the_manifest(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.transaction("sample", [rundir.SAMPLES]) as outer:
        outer.path(rundir.SAMPLES).mkdir()
        with run.transaction("interpolate", [rundir.INTERPOLATION]) as inner:
            inner.path(rundir.INTERPOLATION).mkdir()
    assert set(run.owned()) == {"samples", "interpolation"}
    assert run.manifest()["pending"] == {}


def test_a_damaged_manifest_is_one_clear_error(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    (copy / MANIFEST).write_text('{"format": "something-else"}')
    done = cli("sample", str(copy), "--overwrite", "--quiet")
    assert done.returncode == 2 and "is not an aesampler run manifest" in done.stderr
    (copy / MANIFEST).write_text("{")
    done = cli("sample", str(copy), "--overwrite", "--quiet")
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    with pytest.raises(RunDirError):
        RunDir(copy).owned()


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints and what a run remembers


def test_damaged_checkpoint_files_give_one_message(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    folder = find_checkpoint(copy)
    info = json.loads((folder / "model.json").read_text())
    cases = []
    big = {**info, "model": {**info["model"]}}
    big["model"]["architecture"] = {**info["model"]["architecture"], "latent_dim": 10**11}
    cases.append(("model.json", json.dumps(big).encode(), "too large"))
    cases.append(("model.json", b"\xff\xfe{}", "not UTF-8"))
    bad_width = {**info, "model": {**info["model"]}}
    bad_width["model"]["architecture"] = {**info["model"]["architecture"], "width": -3}
    cases.append(("model.json", json.dumps(bad_width).encode(), "cannot rebuild the model"))
    for name, content, expected in cases:
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(content)
        started = time.perf_counter()
        done = cli("sample", str(copy), "--overwrite", "--quiet")
        assert time.perf_counter() - started < 60  # a guard: it used to try to allocate TBs
        assert done.returncode == 2 and expected in done.stderr, (expected, done.stderr)
        assert "Traceback" not in done.stderr
        (folder / name).write_bytes(original)

    state = torch.load(folder / "state.pt", weights_only=True)
    for broken in (
        {k: v for k, v in state.items() if k != "rng"},
        {**state, "step": "3"},
        {**state, "rng": {k: v for k, v in state["rng"].items() if k != "noise"}},
        {**state, "optimizers": {}},
    ):
        torch.save(broken, folder / "state.pt")
        done = cli("train", str(copy), "--resume", "--quiet", "train.max_steps=4")
        assert done.returncode == 2, done.stderr
        assert "state.pt" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_plugin_component_names_what_provided_it_last_time(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    recipe = (copy / "recipe.yaml").read_text()
    assert "name: gaussian" in recipe
    (copy / "recipe.yaml").write_text(recipe.replace("name: gaussian", "name: salt_pepper", 1))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["components"]["corruption"] = {
        "salt_pepper": {"distribution": "aesampler-saltpepper", "version": "0.1.0", "plugin": "x"}
    }
    (copy / MANIFEST).write_text(json.dumps(manifest))
    done = cli("--no-plugins", "validate", str(copy))
    from aesampler.plugins import set_builtins_only

    set_builtins_only(False)
    assert done.returncode == 2
    assert "unknown corruption 'salt_pepper'" in done.stderr
    assert "provided last time by aesampler-saltpepper 0.1.0" in done.stderr


# ----------------------------------------------------------------------------------------------
# Found by a hostile review


def test_train_overwrite_killed_before_its_first_checkpoint_keeps_the_old_model(
    tiny_run, tmp_path, monkeypatch
):
    """Every disk change of `train --overwrite` up to its commit, killed and recovered twice."""
    base = copy_run(tiny_run, tmp_path, "base")
    old = {e: tree(base, e) for e in ("checkpoints", "metrics.jsonl", "recipe.yaml", "images")}
    argv = ["train", "RUN", "--overwrite", "--quiet", "train.seed=7"]
    counted = copy_run(tiny_run, tmp_path, "count")
    points = _count_points([a.replace("RUN", str(counted)) for a in argv], monkeypatch)
    commit = 0
    for point in range(1, points + 1):
        victim = tmp_path / f"victim-{point}"
        shutil.copytree(base, victim)
        assert crash_at(point, [a.replace("RUN", str(victim)) for a in argv]) == 137
        # The rollback itself is killed at its first disk change, then run again to the end.
        crash_at(1, ["report", str(victim)])
        RunDir(victim).recover()
        now = {e: tree(victim, e) for e in old}
        if now == old:
            assert not commit, f"point {point}: old model back after the new one committed"
        else:  # the new training committed: a complete, resumable run
            commit = commit or point
            assert find_checkpoint(victim).is_dir() and (victim / "recipe.yaml").is_file()
        assert RunDir(victim).manifest()["pending"] == {}
        shutil.rmtree(victim)
    assert commit > 1, "the old model was never kept"


def test_resume_refuses_a_folder_that_is_not_a_run(tiny_run, tmp_path):
    _, run, _ = tiny_run
    mine = tmp_path / "mymodel"
    shutil.copytree(find_checkpoint(run), mine)  # a bare checkpoint folder ...
    (mine / "recipe.yaml").write_text("# mine\n")  # ... with the user's own notes
    (mine / "metrics.jsonl").write_text("notes\n")
    before = snapshot(mine)
    done = cli("train", str(tiny_run[0]), "--out", str(mine), "--resume", "--quiet")
    assert done.returncode == 2 and "is not a training run of aesampler" in done.stderr
    assert snapshot(mine) == before


def test_an_output_inside_another_runs_output_is_refused(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    copy = copy_run(tiny_run, tmp_path)
    inside = copy / "samples" / "mine"
    done = cli("sample", str(recipe), "--checkpoint", str(run), "--out", str(inside), "--quiet")
    assert done.returncode == 2 and "lies inside" in done.stderr
    assert not inside.exists()


def test_a_file_that_appears_while_sampling_is_not_replaced(tiny_run, tmp_path, monkeypatch):
    copy = copy_run(tiny_run, tmp_path)
    shutil.rmtree(copy / "samples")
    from aesampler.chain import Chain

    real = Chain.run

    def meanwhile(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if kwargs.get("n") == 12:  # the sampling chains, not the interpolation
            (copy / "samples").mkdir(exist_ok=True)
            (copy / "samples" / "analysis.txt").write_text("mine")
        return result

    monkeypatch.setattr(Chain, "run", meanwhile)
    done = cli("sample", str(copy), "--quiet")
    # Checked again once the chains have run: without --overwrite nothing there is replaced.
    assert done.returncode == 2 and "already exists; pass --overwrite" in done.stderr
    assert (copy / "samples" / "analysis.txt").read_text() == "mine"

    # And what appears while the outputs are written is caught by the transaction.
    shutil.rmtree(copy / "samples")
    import aesampler.stages.sample as sample_stage

    real_figure = sample_stage.save_settings

    def late(*args, **kwargs):
        real_figure(*args, **kwargs)
        (copy / "samples").mkdir(exist_ok=True)
        (copy / "samples" / "analysis.txt").write_text("mine")

    monkeypatch.setattr(Chain, "run", real)
    monkeypatch.setattr(sample_stage, "save_settings", late)
    done = cli("sample", str(copy), "--quiet")
    assert done.returncode == 2 and "appeared while aesampler was writing" in done.stderr
    assert (copy / "samples" / "analysis.txt").read_text() == "mine"


def test_a_dead_transaction_is_found_by_its_lock_not_its_process_id(tiny_run, tmp_path):
    """Process ids are reused (a container's command is often pid 1): the lock decides."""
    copy = copy_run(tiny_run, tmp_path)
    run = RunDir(copy)
    backup = f".aesampler-old-sample-{os.getpid()}-1"
    (copy / backup).mkdir()
    os.replace(copy / "samples", copy / backup / "samples")  # moved aside, then the writer died
    (copy / ".aesampler-new-samples-1").mkdir()
    record = {
        "command": "sample",
        "pid": os.getpid(),
        "entries": ["samples"],
        "replace": [],
        "existed": ["samples"],
        "direct": [],
        "backup": backup,
        "lock": f".aesampler-txn-sample-{os.getpid()}-1.lock",
        "created_dir": False,
    }
    run._update(lambda d: d["pending"].__setitem__("sample-x", record))
    assert run.recover()  # nobody holds the lock: rolled back though the pid is ours
    assert (copy / "samples" / "samples.safetensors").is_file()
    assert run.manifest()["pending"] == {} and not (copy / backup).exists()


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(entries=["samples"]),
        lambda m: m["entries"].update({"notes.txt": {"command": "train"}}),
        lambda m: m["entries"].update({"/tmp/elsewhere": {"command": "train"}}),
        lambda m: m.update(pending=[]),
        lambda m: m["pending"].update(x={"command": "sample", "pid": "abc"}),
        lambda m: m["pending"].update(
            x={
                "command": "sample",
                "pid": 999999,
                "entries": ["samples"],
                "replace": [],
                "existed": [],
                "direct": [],
                "backup": ".",
                "lock": "x.lock",
            }
        ),
        lambda m: m["pending"].update(
            x={
                "command": "sample",
                "pid": 999999,
                "entries": ["samples"],
                "replace": [],
                "existed": [],
                "direct": [],
                "backup": "/tmp/victim",
                "lock": "x.lock",
            }
        ),
        lambda m: m.update(components={"model": [1]}),
    ],
)
def test_a_crafted_manifest_is_refused_and_nothing_moves(edit, tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    (copy / "notes.md").write_text("mine")
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(copy)
    for argv in (["report", str(copy)], ["sample", str(copy), "--overwrite", "--quiet"]):
        done = cli(*argv)
        assert done.returncode == 2, done.stderr
        assert MANIFEST in done.stderr and "Traceback" not in done.stderr
    assert snapshot(copy) == before


def test_train_refuses_a_recipe_that_loads_a_checkpoint(tiny_run, tmp_path):
    recipe = tiny_run[0]
    copy = copy_run(tiny_run, tmp_path)
    before = snapshot(copy)
    done = cli("train", str(recipe), "--out", str(copy), "--overwrite", f"model.checkpoint={copy}")
    assert done.returncode == 2 and "model.checkpoint is set" in done.stderr
    assert snapshot(copy) == before
