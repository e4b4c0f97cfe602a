"""Training that diverges (NaN or inf) stops with one message naming the first bad step.

Every step's losses are kept on the device and checked when they are read (every
``train.log_every`` steps, and before any checkpoint); losses that check their input's range
(PyTorch's BCE) must not raise first, and checking must not make the host wait for the device
after each step.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch.nn import functional as F

import aesampler
from aesampler.checkpoint import find_checkpoint
from aesampler.models import VAE, _bce
from aesampler.plugins import load_registry
from aesampler.training import TrainingError, train

from .conftest import cli
from .helpers import tiny_recipe

TINY = (
    "model: {name: vae, latent_dim: 4, width: 4}\n"
    "data: {name: digits, image_size: 8}\n"
    "train: {epochs: 1, grid_size: 4}\n"
    "output: {dir: unused}\n"
)
ONE_LINE_NON_FINITE = re.compile(
    r"aesampler: error: training stopped: non-finite loss at step (\d+) \(epoch 1\): [^\n]*"
    r"Try a lower train\.lr\.\n"
)


def quiet(recipe, **kwargs):
    return train(recipe, progress=False, log=lambda message: None, **kwargs)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_huge_learning_rate_exits_2_with_one_line_naming_the_step_and_keeps_the_old_run(
    tmp_path,
):
    """`train.lr=1.0e+10` with the default log_every: the decoder's outputs turn NaN, which
    PyTorch's BCE used to reject with a RuntimeError (exit 1, a traceback) before the check."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    run = tmp_path / "run"
    base = ["train", str(recipe), "--out", str(run), "--quiet"]
    assert cli(*base, "train.max_steps=3").returncode == 0
    before = snapshot(run)

    done = cli(*base, "train.lr=1.0e+10", "--overwrite")
    assert done.returncode == 2, done.stderr
    match = ONE_LINE_NON_FINITE.fullmatch(done.stderr)
    assert match, done.stderr
    assert "Traceback" not in done.stderr and "no checkpoint was written" in done.stderr
    # A run that fails before its first checkpoint leaves the old one exactly as it was.
    assert snapshot(run) == before
    assert find_checkpoint(run).name == "step-00000003"

    # Resumed, the run takes the recipe's learning rate (not the one its optimiser state was
    # saved with), diverges, and its checkpoint stays as it was.
    checkpoints = snapshot(run / "checkpoints")
    resumed = cli(*base, "train.lr=1.0e+10", "train.max_steps=30", "--resume")
    assert resumed.returncode == 2, resumed.stderr
    assert ONE_LINE_NON_FINITE.fullmatch(resumed.stderr), resumed.stderr
    assert f"the last good checkpoint is {find_checkpoint(run)}." in resumed.stderr
    assert "the recipe changes the checkpoint's train.lr 0.0002 -> 1e+10" in resumed.stdout
    assert snapshot(run / "checkpoints") == checkpoints

    # The step is the first bad one, whatever the read interval.
    other = tmp_path / "other"
    every_step = cli(
        "train",
        str(recipe),
        "--out",
        str(other),
        "--quiet",
        "train.lr=1.0e+10",
        "train.log_every=1",
    )
    assert every_step.returncode == 2
    assert ONE_LINE_NON_FINITE.fullmatch(every_step.stderr)[1] == match[1]
    assert not other.exists()


class _Poisoned(VAE):
    """A VAE whose decoder weights turn NaN before its ``poison_at``-th step (None: never)."""

    poison_at: int | None = None
    after_update = False  # poison after the step's update instead: its losses stay finite
    loss = None  # another reconstruction loss, or None for the built-in one

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def poison(self):
        with torch.no_grad():
            next(self.decoder.parameters()).fill_(float("nan"))

    def training_step(self, x, x_input, optimizers, generator=None):
        self.calls += 1
        hit = self.calls == self.poison_at
        if hit and not self.after_update:
            self.poison()
        if self.loss is None:
            losses = super().training_step(x, x_input, optimizers, generator)
        else:
            x_rec = self.decoder(self.encoder(x_input).mean)
            reconstruction = self.loss(x_rec, x)
            optimizers["autoencoder"].zero_grad()
            reconstruction.backward()
            optimizers["autoencoder"].step()
            losses = {"reconstruction": reconstruction.detach()}
        if hit and self.after_update:
            self.poison()
        return losses


@pytest.fixture
def poisoned(monkeypatch):
    class Plugin:
        @aesampler.hookimpl
        def register_models(self, register):
            register("poisoned", _Poisoned)

    for name in ("poison_at", "after_update", "loss"):
        monkeypatch.setattr(_Poisoned, name, getattr(_Poisoned, name))
    return load_registry(extra_plugins=[("poisoned", Plugin())])


def test_a_step_that_goes_nan_is_named_though_the_losses_are_read_every_10_steps(
    tmp_path, poisoned
):
    """Resuming a good run, the third step's outputs are NaN: the message names that step (25,
    not the read at step 30) and the last good checkpoint, which stays as it was."""
    run = tmp_path / "run"
    quiet(tiny_recipe(run, poisoned, model={"name": "poisoned"}), registry=poisoned)
    good = find_checkpoint(run)
    assert good.name == "step-00000022"
    before = snapshot(run / "checkpoints")

    _Poisoned.poison_at = 3
    recipe = tiny_recipe(run, poisoned, model={"name": "poisoned"}, train={"epochs": 2})
    assert recipe.train.log_every == 10
    with pytest.raises(TrainingError) as caught:
        quiet(recipe, registry=poisoned, resume=True)
    assert str(caught.value) == (
        "training stopped: non-finite loss at step 25 (epoch 2): loss=nan, reconstruction=nan; "
        f"the last good checkpoint is {good}. Try a lower train.lr."
    )
    assert snapshot(run / "checkpoints") == before


def test_a_loss_that_rejects_nan_inputs_gives_the_same_message(tmp_path, poisoned):
    """A plugin's own loss may check its input's range (PyTorch's BCE does, and on CUDA as a
    device assert): the step that fails on diverged weights is named as a non-finite loss."""
    _Poisoned.loss = staticmethod(lambda x_rec, x: F.binary_cross_entropy(x_rec, x))
    _Poisoned.poison_at = 3
    recipe = tiny_recipe(tmp_path / "run", poisoned, model={"name": "poisoned"})
    with pytest.raises(
        TrainingError,
        match=r"^training stopped: non-finite loss at step 3 \(epoch 1\): the weights are no "
        r"longer finite, and the model's training_step failed on them \(RuntimeError: all "
        r"elements of input should be between 0 and 1\); no checkpoint was written\.",
    ):
        quiet(recipe, registry=poisoned)
    assert not (tmp_path / "run").exists()

    # An error that has nothing to do with divergence is not disguised as one.
    def broken(x_rec, x):
        raise ValueError("a bug in the loss")

    _Poisoned.loss = staticmethod(broken)
    _Poisoned.poison_at = None
    with pytest.raises(ValueError, match="a bug in the loss"):
        quiet(recipe, registry=poisoned)


def test_weights_that_diverge_on_the_last_step_never_reach_a_checkpoint(tmp_path, poisoned):
    """The update of the epoch's last step makes the weights NaN from finite losses: no
    checkpoint is written with them."""
    _Poisoned.poison_at, _Poisoned.after_update = 5, True
    recipe = tiny_recipe(
        tmp_path / "run", poisoned, model={"name": "poisoned"}, train={"max_steps": 5}
    )
    with pytest.raises(
        TrainingError,
        match=r"^training stopped: non-finite weights or optimiser state after step 5 "
        r"\(epoch 1\), whose losses were finite; no checkpoint was written\.",
    ):
        quiet(recipe, registry=poisoned)
    assert not (tmp_path / "run").exists()


def test_the_built_in_bce_is_torchs_for_valid_inputs_and_nan_for_the_others():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    logits = torch.randn(4, 1, 8, 8, requires_grad=True)
    ours = _bce(torch.sigmoid(logits), x)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 4
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    assert torch.equal(ours, theirs) and torch.equal(grad_ours, grad_theirs)
    for bad in (float("nan"), float("inf"), -0.5, 1.5):
        x_rec = torch.sigmoid(logits.detach()).clone()
        x_rec[1, 0, 2, 3] = bad
        assert torch.isnan(_bce(x_rec, x))


#: What makes the host wait for the device when called on a device tensor.
SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


def test_checking_every_step_makes_the_host_wait_for_the_device_only_at_reads(
    tmp_path, monkeypatch
):
    """aesampler's own code reads a tensor's value (``item``, ``bool``, ``float``, ``.cpu()``
    ...) as often in a run of 2 steps as in one of 7 with one read of the losses: the per-step
    check costs no host-device synchronisation. (On CPU nothing waits, so the reads are
    counted instead: a per-step ``bool(torch.isfinite(loss))`` in the loop or a model fails.)"""
    calls: list[str] = []

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            # Datasets are host code (their items are CPU tensors the loop then moves): not a
            # wait for the device.
            ours = caller == "aesampler" or caller.startswith("aesampler.")
            if ours and not caller.startswith("aesampler.data"):
                calls.append(f"{caller}:{sys._getframe(1).f_lineno} {name}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    counts = {}
    for model in ("aae", "vae"):
        for steps in (2, 7):
            calls.clear()
            recipe = tiny_recipe(
                tmp_path / f"{model}-{steps}",
                model={"name": model},
                train={"max_steps": steps, "log_every": 100},
            )
            quiet(recipe)
            counts[model, steps] = sorted(calls)
        assert counts[model, 2], "the counting does not see aesampler's reads"
        assert counts[model, 2] == counts[model, 7], (counts[model, 2], counts[model, 7])


def test_the_aae_phases_also_stop_at_the_first_bad_step(tmp_path):
    """The AAE's reconstruction, adversary and generator losses: a huge learning rate is
    caught at the step it first shows, the same for every read interval."""
    steps = set()
    for every in (1, 10):
        recipe = tiny_recipe(tmp_path / f"run-{every}", train={"lr": 1e10, "log_every": every})
        with pytest.raises(TrainingError, match="non-finite loss at step") as caught:
            quiet(recipe)
        steps.add(re.search(r"step (\d+)", str(caught.value))[1])
        assert not (tmp_path / f"run-{every}").exists()
    assert len(steps) == 1
