"""Small recipes and generated data sets for training tests."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import torch

from aesampler import rundir
from aesampler.recipe.loader import validate


def tiny_recipe(run_dir: Path, registry=None, **sections) -> object:
    """A recipe that trains in about a second: 8 × 8 digits, a 4-D latent, narrow networks."""
    data = {
        "model": {"name": "aae", "latent_dim": 4, "width": 4, "adversary_hidden": 16},
        "data": {"name": "digits", "image_size": 8},
        "corruption": {"name": "gaussian", "sigma": 0.5},
        "train": {"epochs": 1, "batch_size": 64, "grid_size": 4, "seed": 3},
        "output": {"dir": str(run_dir)},
    }
    for section, values in sections.items():
        if values is None:
            data[section] = None
        elif "name" in values:  # another component: its own parameters only
            data[section] = {
                k: v for k, v in {**data[section], **values}.items() if k in ("latent_dim", "width")
            } | values
        else:
            data[section] = {**data.get(section, {}), **values}
    return validate(data, registry=registry)


def crash_at(point: int, argv: list[str]) -> int:
    """Run ``aesampler ARGV`` in a forked child that dies at its ``point``-th disk change."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup of any kind, as after SIGKILL
        try:
            # The parent's intra-op thread pool does not survive a fork (convolutions would
            # wait for it forever): the child computes on one thread.
            torch.set_num_threads(1)
            os.environ[rundir._FAULT_ENV] = str(point)
            rundir._fault_count = 0
            with open(os.devnull, "w") as sink:
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
            from aesampler.cli import main

            code = main(argv)
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def copy_run(tiny_run, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of the shared ``tiny_run`` fixture's run directory, for a test that changes it."""
    _, run, _ = tiny_run
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def install_my_project(monkeypatch) -> types.ModuleType:
    """A stand-in for a user's own code, importable as ``my_project`` (docs/examples/own_model.py
    imports it): an untrained MLP VAE with batch norm (16-D latents, 28 × 28 images) and random
    training and test images."""
    from torch import nn

    torch.manual_seed(0)
    project = types.ModuleType("my_project")
    project.my_encoder = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2 * 16)
    )
    project.my_decoder = nn.Sequential(
        nn.Linear(16, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 784),
        nn.Sigmoid(),
        nn.Unflatten(1, (1, 28, 28)),
    )
    generator = torch.Generator().manual_seed(1)
    project.train_images = torch.rand(400, 1, 28, 28, generator=generator)
    project.test_images = torch.rand(300, 1, 28, 28, generator=generator)
    monkeypatch.setitem(sys.modules, "my_project", project)
    return project


def check_own_model_example(done: dict, printed: list[str], project: types.ModuleType) -> None:
    """What docs/examples/own_model.py did: fitted a mixture on the training latents, started
    1,000 chains from it and printed a table of metrics at steps 0, 1 and 5."""
    gmm, result = done["gmm"], done["result"]
    assert done["z"].shape == (len(project.train_images), 16)
    assert gmm.weights.shape == (10,) and abs(float(gmm.weights.sum()) - 1) < 1e-5
    assert result.steps == (0, 1, 5) and result.x[5].shape == (1000, 1, 28, 28)
    # Step 0 is the mixture's draws from the run's start generator.
    from aesampler.chain import start_generator

    assert torch.equal(result.z[0], gmm.sample(1000, generator=start_generator(0)))
    header = printed.index(next(line for line in printed if line.split()[:1] == ["step"]))
    assert {"frechet", "novelty", "mmd_prior"} <= set(printed[header].split())
    assert [line.split()[0] for line in printed[header + 1 : header + 4]] == ["0", "1", "5"]
