"""Tiny networks built on the fly: small enough that the whole suite stays fast on 2 cores."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import aesampler
from aesampler.cli import main


def tiny_nets(
    latent: int = 4,
    image: tuple[int, int, int] = (1, 4, 4),
    stochastic: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """An MLP encoder/decoder pair with BatchNorm layers, images in [0, 1]."""
    torch.manual_seed(seed)
    c, h, w = image
    pixels = c * h * w
    enc = nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, latent * (2 if stochastic else 1)),
    )
    dec = nn.Sequential(
        nn.Linear(latent, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, pixels),
        nn.Sigmoid(),
        nn.Unflatten(1, image),
    )
    for net in (enc, dec):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                # Non-trivial population statistics, so batch and running modes really differ.
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return enc.to(dtype), dec.to(dtype)


@pytest.fixture(autouse=True, scope="session")
def _no_fast_bf16():
    """In this process every test sees a CPU without fast bfloat16 units, so that ``precision:
    auto`` is fp32 on every machine the suite runs on (results compared to fp32 ones stay exact).
    Tests of the choice mock the queries themselves; subprocesses see the real hardware, so a
    test that compares one with this process sets its precision explicitly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        patch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        yield


def tiny_chain_parts(
    latent: int = 4,
    image: tuple[int, int, int] = (1, 4, 4),
    stochastic: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[aesampler.Encoder, aesampler.Decoder]:
    enc, dec = tiny_nets(latent, image, stochastic, dtype, seed)
    encoder = aesampler.GaussianEncoder(enc) if stochastic else aesampler.DeterministicEncoder(enc)
    return encoder, aesampler.ModuleDecoder(dec, latent_shape=latent)


@pytest.fixture
def parts():
    return tiny_chain_parts()


EXE = shutil.which("aesampler") or os.path.join(os.path.dirname(sys.executable), "aesampler")


TINY_RECIPE = """\
model: {name: aae, latent_dim: 4, width: 4, adversary_hidden: 16}
data: {name: digits, image_size: 8}
corruption: {name: gaussian, sigma: 0.5}
train: {epochs: 1, max_steps: 3, grid_size: 4}
sampling: {num_chains: 12, steps: 6, record: [0, 1, 6], chunk_size: 6, grid_size: 9, seed: 5}
interpolation: {pairs: 3, points: 5, steps: 2}
evaluate: {num_chains: 40, steps: [0, 1, 6], reference_size: 40, bootstrap: 20, feature_extractor: {name: pixels}}
output: {dir: unused}
"""


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str) -> CliResult:
    """``aesampler ARGS`` in this process, through ``aesampler.cli.main(argv)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 2
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_subprocess(
    *args: str, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real console script, as a user runs it (for the few tests that need a process)."""
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One `aesampler run` on a tiny recipe, shared by the tests that only read its outputs."""
    folder = tmp_path_factory.mktemp("run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    done = cli("run", str(recipe), "--out", str(folder / "run"), "--quiet")
    assert done.returncode == 0, done.stderr
    return recipe, folder / "run", done
