"""Small recipes and generated data sets for training tests."""

from __future__ import annotations

import os
import shutil
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
