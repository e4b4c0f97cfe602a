"""Sampling in shards: memory for one shard at a time, and a killed run resumed from its shards."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aesampler import resources, rundir
from aesampler.chain import ChainResult, shard_bounds, shard_seed
from aesampler.errors import ChainInputError
from aesampler.evaluation.evaluate import Evaluator
from aesampler.recipe import load_recipe
from aesampler.resources import ResourceError
from aesampler.rundir import MANIFEST, RunDir
from aesampler.workflow import build_components, check_sizes

from .conftest import cli
from .helpers import crash_at

SHARDED = ["sampling.shard_size=5", "sampling.seed=9"]  # 12 chains: shards of 4, 4 and 4


def _copy(tiny_run, tmp_path, name):
    _, run, _ = tiny_run
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def _samples(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_are_balanced_and_seeded_by_index():
    assert shard_bounds(12, 5) == [(0, 4), (4, 8), (8, 12)]
    assert shard_bounds(10, 4) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(3, 100) == [(0, 3)]
    assert shard_seed(7, 0) == 7  # one shard is the plain run with the sampling seed
    seeds = {shard_seed(7, i) for i in range(1, 50)} | {shard_seed(8, i) for i in range(1, 50)}
    assert len(seeds) == 98 and 7 not in seeds


def test_each_shard_is_its_own_seeded_chain_run(tiny_run, tmp_path):
    recipe_path, _, _ = tiny_run
    copy = _copy(tiny_run, tmp_path, "copy")
    done = cli("sample", str(recipe_path), "--out", str(copy), "--overwrite", "--quiet", *SHARDED)
    assert done.returncode == 0, done.stderr
    folder = copy / "samples"
    names = [f"samples-{i:05d}-of-00003.safetensors" for i in range(3)]
    assert all((folder / n).is_file() for n in names)
    assert not (folder / "samples.safetensors").exists()
    settings = json.loads((folder / "settings.json").read_text())
    assert [s["file"] for s in settings["shards"]] == names
    assert [s["chains"] for s in settings["shards"]] == [[0, 4], [4, 8], [8, 12]]
    recipe = load_recipe(recipe_path, [f"output.dir={copy}", *SHARDED])
    parts = build_components(recipe)
    cfg = recipe.sampling
    for i, name in enumerate(names):
        saved = load_file(str(folder / name))
        expected = parts.chain.run(
            n=4,
            steps=cfg.steps,
            record=cfg.record,
            chunk_size=cfg.chunk_size,
            seed=shard_seed(cfg.seed, i),
        )
        for t in (0, 1, 6):
            assert torch.equal(saved[f"z/step-{t:03d}"], expected.z[t]), (name, t)
            assert torch.equal(saved[f"x/step-{t:03d}"], expected.x[t]), (name, t)
    # Nothing of the run's progress is left once it completed.
    assert not (copy / "partial").exists()
    assert "partial" not in RunDir(copy).owned()


def test_a_killed_sampling_run_resumes_with_its_finished_shards(tiny_run, tmp_path, monkeypatch):
    recipe_path, _, _ = tiny_run
    argv = ["sample", str(recipe_path), "--overwrite", "--quiet", *SHARDED]
    whole = _copy(tiny_run, tmp_path, "whole")
    labels: list[str] = []
    real = rundir.fault_point
    monkeypatch.setattr(rundir, "fault_point", lambda label: (labels.append(label), real(label)))
    assert cli(*argv, "--out", str(whole)).returncode == 0
    monkeypatch.setattr(rundir, "fault_point", real)
    expected = _samples(whole / "samples")

    # Killed while writing the second shard: the first is finished, the second is not.
    point = labels.index("write shard-00001.safetensors") + 1
    victim = _copy(tiny_run, tmp_path, "victim")
    old = _samples(victim / "samples")
    assert crash_at(point, [*argv, "--out", str(victim)]) == 137
    RunDir(victim).recover()
    assert _samples(victim / "samples") == old  # the old samples are untouched
    partial = [p for p in (victim / "partial").iterdir()]
    assert len(partial) == 1 and partial[0].name.startswith("samples-")
    assert sorted(p.name for p in partial[0].glob("shard-*")) == ["shard-00000.safetensors"]
    assert "partial" in json.loads((victim / MANIFEST).read_text())["entries"]

    done = cli(*argv, "--out", str(victim))
    assert done.returncode == 0, done.stderr
    assert "resuming, 1 of 3 shards were finished before" in done.stdout
    now = _samples(victim / "samples")
    assert now.keys() == expected.keys()
    for name in now:  # settings name the run directory: compare the tensors and pictures
        if name != "settings.json":
            assert now[name] == expected[name], name
    assert not (victim / "partial").exists()


def test_other_settings_start_afresh_and_drop_the_old_progress(tiny_run, tmp_path):
    recipe_path, _, _ = tiny_run
    argv = ["sample", str(recipe_path), "--overwrite", "--quiet", *SHARDED]
    victim = _copy(tiny_run, tmp_path, "victim")
    run = RunDir(victim)
    stale, _ = run.partial_folder("samples-0123456789ab")
    (stale / "shard-00000.safetensors").write_bytes(b"from other settings")
    done = cli(*argv, "--out", str(victim), "sampling.seed=10")
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stdout
    assert not (victim / "partial").exists()
    # A run of one shard keeps nothing in partial/, and clears what others left there.
    stale, _ = run.partial_folder("samples-0123456789ab")
    done = cli("sample", str(recipe_path), "--overwrite", "--quiet", "--out", str(victim))
    assert done.returncode == 0, done.stderr
    assert not (victim / "partial").exists() and "partial" not in run.owned()
    # Only the folders aesampler makes there are removed: anything else stays.
    stale, _ = run.partial_folder("samples-0123456789ab")
    (victim / "partial" / "notes").mkdir()
    (victim / "partial" / "notes" / "mine.txt").write_text("mine")
    done = cli(*argv, "--out", str(victim), "sampling.seed=11")
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert (victim / "partial" / "notes" / "mine.txt").read_text() == "mine"


def test_memory_is_checked_for_one_shard_and_the_disk_for_all(tiny_run, monkeypatch):
    recipe_path, run, _ = tiny_run
    # 10**6 chains of 8 x 8 images and 4-D latents, one recorded step: 272 MB in all.
    many = [f"output.dir={run}", "sampling.num_chains=1000000", "sampling.steps=0"]
    many.append("sampling.record=[0]")
    monkeypatch.setattr(resources, "available_memory", lambda: 100 * 10**6)  # 80 MB to use
    monkeypatch.setattr(resources, "free_disk", lambda path: 10**12)
    for fine in ("sampling.shard_size=4", "sampling.shard_size=2048"):
        parts = build_components(load_recipe(recipe_path, [*many, fine]))
        check_sizes(parts, sample=True, evaluate=False)
    recipe = load_recipe(recipe_path, [*many, "sampling.shard_size=1000000"])
    with pytest.raises(ResourceError, match=r"sampling.num_chains=1000000 needs .* of memory"):
        check_sizes(build_components(recipe), sample=True, evaluate=False)
    monkeypatch.setattr(resources, "free_disk", lambda path: 100 * 10**6)
    with pytest.raises(
        ResourceError, match=r"sampling.num_chains=1000000 needs about 272.0 MB on disk"
    ):
        check_sizes(parts, sample=True, evaluate=False)


def test_evaluation_chains_run_in_the_same_shards(tiny_run):
    recipe_path, run, _ = tiny_run
    recipe = load_recipe(recipe_path, [f"output.dir={run}", "sampling.shard_size=16"])
    parts = build_components(recipe)
    evaluator = Evaluator(parts, run, log=lambda _: None)
    start = parts.start_sampler(lambda _: None)
    result, latents = evaluator.run_chains(start, [0, 2], progress=False)
    cfg = recipe.evaluate  # 40 chains: shards of 14, 13 and 13
    assert [b - a for a, b in shard_bounds(cfg.num_chains, 16)] == [14, 13, 13]
    shards = [
        parts.chain.run(
            n=b - a,
            start=start,
            steps=2,
            record="all",
            chunk_size=recipe.sampling.chunk_size,
            seed=shard_seed(cfg.seed, i),
        )
        for i, (a, b) in enumerate(shard_bounds(cfg.num_chains, 16))
    ]
    joined = ChainResult.concatenate(shards)
    assert result.steps == (0, 2) and result.num_chains == 40
    for t in (0, 2):
        assert torch.equal(result.x[t], joined.x[t]) and torch.equal(result.z[t], joined.z[t])
    for t in (0, 1, 2):  # the latents of every step, in chain order
        assert torch.equal(latents[t], joined.z[t])
    with pytest.raises(ChainInputError, match="different steps"):
        ChainResult.concatenate([shards[0], parts.chain.run(n=4, steps=1, seed=0)])


def test_the_disk_check_counts_what_partial_holds_as_room(tiny_run, tmp_path, monkeypatch):
    recipe_path, _, _ = tiny_run
    copy = _copy(tiny_run, tmp_path, "copy")
    # 10**6 chains, one recorded step: 272 MB; the disk has 100 MB free.
    many = [f"output.dir={copy}", "sampling.num_chains=1000000", "sampling.steps=0"]
    parts = build_components(load_recipe(recipe_path, [*many, "sampling.record=[0]"]))
    monkeypatch.setattr(resources, "free_disk", lambda path: 100 * 10**6)
    with pytest.raises(ResourceError, match="on disk"):
        check_sizes(parts, sample=True, evaluate=False)
    # A killed run left 200 MB of shards (a sparse file here): reused or deleted, they are room.
    folder, _ = RunDir(copy).partial_folder("samples-0123456789ab")
    RunDir(copy).release_partial(folder.name)  # its writer is gone
    with open(folder / "shard-00000.safetensors", "wb") as shard:
        shard.truncate(200 * 10**6)
    check_sizes(parts, sample=True, evaluate=False)
