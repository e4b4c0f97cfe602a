"""Training under torchrun: real 2-process runs (gloo on CPU) against one process.

Each torchrun run costs a few seconds of process start-up, so there are three: an exact
comparison of 2 ranks × batch B with 1 process × batch 2B on a model with the AAE's three phases
and no random draw (resumed in one process afterwards), the built-in AAE resumed from one process
by two, and a rank that fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aesampler import distributed
from aesampler.checkpoint import find_checkpoint, load_training_state
from aesampler.cli import main
from aesampler.plugins import load_registry
from aesampler.recipe.loader import validate
from aesampler.training import train

from . import fake_dist
from .helpers import tiny_recipe

# The AAE's phases on tiny BN-free MLPs: autoencoder step; adversary step with two forwards (the
# "prior draws" are a fixed function of the images) and one backward; generator step with the
# adversary frozen. No noise, no dropout: 2 × B and 1 × 2B must agree up to float rounding.
EXACT = """
    import os

    import torch
    from torch import nn
    from torch.nn import functional as F

    import aesampler
    from aesampler.models import GenerativeAutoencoder


    def step(optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


    class ExactAAE(GenerativeAutoencoder):
        kind = "exact_aae"
        ddp_modules = ("encoder", "decoder", "adversary")

        def __init__(self, image_size, channels, latent_dim=3, fail_on_rank=-1):
            super().__init__()
            self.architecture = dict(
                image_size=image_size, channels=channels, latent_dim=latent_dim,
                fail_on_rank=fail_on_rank,
            )
            pixels = channels * image_size * image_size
            self.encoder = aesampler.DeterministicEncoder(
                nn.Sequential(nn.Flatten(), nn.Linear(pixels, 16), nn.Tanh(), nn.Linear(16, latent_dim))
            )
            self.decoder = aesampler.ModuleDecoder(
                nn.Sequential(
                    nn.Linear(latent_dim, pixels), nn.Sigmoid(),
                    nn.Unflatten(1, (channels, image_size, image_size)),
                ),
                latent_shape=latent_dim,
            )
            self.adversary = nn.Sequential(nn.Linear(latent_dim, 8), nn.Tanh(), nn.Linear(8, 1))
            self.latent_dim, self.fail_on_rank = latent_dim, fail_on_rank

        def optimizer_groups(self):
            return {
                "autoencoder": [*self.encoder.parameters(), *self.decoder.parameters()],
                "adversary": self.adversary.parameters(),
                "generator": self.encoder.parameters(),
            }

        def training_step(self, x, x_input, optimizers, generator=None):
            if int(os.environ.get("RANK", "0")) == self.fail_on_rank:
                raise ValueError(f"rank {self.fail_on_rank} was told to fail")
            z = self.encoder(x_input).mean
            reconstruction = F.binary_cross_entropy(self.decoder(z), x, reduction="sum") / len(x)
            step(optimizers["autoencoder"], reconstruction)
            real = self.adversary(2 * x.flatten(1)[:, 20 : 20 + self.latent_dim] - 1)
            fake = self.adversary(z.detach())
            adversary = F.binary_cross_entropy_with_logits(
                real, torch.ones_like(real)
            ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            step(optimizers["adversary"], adversary)
            self.adversary.requires_grad_(False)
            judged = self.adversary(self.encoder(x_input).mean)
            generator_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
            step(optimizers["generator"], generator_loss)
            self.adversary.requires_grad_(True)
            return {
                "reconstruction": reconstruction.detach(),
                "adversary": adversary.detach(),
                "generator": generator_loss.detach(),
            }


    @aesampler.hookimpl
    def register_models(register):
        register("exact_aae", ExactAAE)
"""

#: Float32 sums in another order (two half-batch gradients averaged instead of one): the
#: weights after a few Adam steps agree to this, the losses to a relative 1e-5.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """The plugin distribution on disk (for torchrun) and a registry holding it (in-process)."""
    root = fake_dist.make_distribution(
        tmp_path_factory.mktemp("plugin"),
        "aesampler-exact",
        {"exact_aae": EXACT},
        {"exact": "exact_aae"},
    )
    spec = importlib.util.spec_from_file_location("exact_aae_inprocess", root / "exact_aae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return root, load_registry(extra_plugins=[("exact", module)])


def torchrun(
    *args: str, plugin_root=None, timeout: int = 240, processes: int = 2
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=PROCESSES -m aesampler ARGS`` on this Python."""
    paths = [str(plugin_root)] if plugin_root else []
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "aesampler", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def quiet(recipe, **kwargs):
    return train(recipe, progress=False, log=lambda message: None, **kwargs)


def weights(run_dir):
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


def max_difference(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def steps_logged(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "step"]


def exact_recipe(run_dir, registry, batch_size, max_steps, **model):
    return validate(
        {
            "model": {"name": "exact_aae", "latent_dim": 3, **model},
            "data": {"name": "digits", "image_size": 8},
            "train": {
                "batch_size": batch_size,
                "max_steps": max_steps,
                "log_every": 1,
                "grid_size": 4,
                "seed": 3,
                "precision": "fp32",  # torchrun's processes see the real hardware
            },
            "output": {"dir": str(run_dir)},
        },
        registry=registry,
    )


def write_recipe(recipe, path):
    import yaml

    path.write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False))
    return path


def test_two_ranks_of_batch_b_train_as_one_process_of_batch_2b(tmp_path, exact):
    root, registry = exact
    two, one = tmp_path / "two", tmp_path / "one"
    recipe = write_recipe(exact_recipe(two, registry, 16, 3), tmp_path / "two.yaml")
    done = torchrun("train", str(recipe), "--quiet", plugin_root=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained exact_aae for 3 steps") == 1  # rank 0 alone reports
    quiet(exact_recipe(one, registry, 32, 3), registry=registry)

    # The same images per step (each epoch's order does not depend on the ranks), the gradients
    # averaged over the ranks: the rank-averaged losses and the weights are 1 × 2B's.
    logged_two, logged_one = steps_logged(two), steps_logged(one)
    assert [r["step"] for r in logged_two] == [1, 2, 3]  # written once, by rank 0
    for a, b in zip(logged_two, logged_one):
        for key in ("reconstruction", "adversary", "generator"):
            assert a[key] == pytest.approx(b[key], rel=TOLERANCE), (a["step"], key)
    assert max_difference(two, one) < TOLERANCE
    state = load_training_state(find_checkpoint(two))
    assert (state["world_size"], state["samples_in_epoch"], len(state["rng"]["ranks"])) == (
        2,
        96,
        2,
    )

    # Resumed in one process with batch 2B: it goes on from image 96 of the epoch's order, as
    # the one-process run does.
    quiet(exact_recipe(two, registry, 32, 6), registry=registry, resume=True)
    quiet(exact_recipe(one, registry, 32, 6), registry=registry, resume=True)
    assert [r["step"] for r in steps_logged(two)] == [1, 2, 3, 4, 5, 6]
    assert max_difference(two, one) < TOLERANCE


def test_the_aae_resumed_by_two_ranks_from_one(tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(run, train={"batch_size": 16, "max_steps": 3, "log_every": 2})
    quiet(recipe)  # one process: 3 × 16 = 48 images of epoch 1 done
    write_recipe(tiny_recipe(run, train={"batch_size": 16, "max_steps": 5}), run / "recipe.yaml")
    done = torchrun("train", str(run), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    # 2 ranks × 16 per step: epoch 1 resumes after image 32, so 16 images are trained on again.
    assert "trained on 48 images of its order" in done.stdout
    assert "16 images are trained on again" in done.stdout
    assert "trained aae for 5 steps" in done.stdout
    assert [r["step"] for r in steps_logged(run)] == [1, 2, 3, 4, 5]
    state = load_training_state(find_checkpoint(run))
    assert (state["step"], state["world_size"], state["samples_in_epoch"]) == (5, 2, 96)
    ranks = state["rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["noise"], ranks[1]["noise"])
    assert torch.isfinite(torch.cat([w.flatten().float() for w in weights(run).values()])).all()


def test_a_failing_rank_fails_the_run_and_names_itself(tmp_path, exact):
    root, registry = exact
    recipe = exact_recipe(tmp_path / "run", registry, 16, 3, fail_on_rank=1)
    done = torchrun("train", str(write_recipe(recipe, tmp_path / "r.yaml")), plugin_root=root)
    assert done.returncode != 0
    assert "aesampler: error on rank 1 of 2: ValueError: rank 1 was told to fail" in done.stderr
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World()
    assert not distributed.world().enabled and distributed.world().is_main
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    assert distributed.main_first(lambda: 5) == 5
    distributed.barrier()
    distributed.teardown()


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world() == distributed.World(rank=1, world_size=2, local_rank=1)
    assert str(distributed.world()) == "rank 1 of 2"
    with pytest.raises(distributed.DistributedError, match="names one GPU"):
        distributed.rank_device(torch.device("cuda", 0))
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(distributed.DistributedError, match="0 <= RANK < WORLD_SIZE"):
        distributed.world()


def test_commands_that_do_not_run_under_torchrun_say_so_naming_the_rank(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        "aesampler: error on rank 1 of 2: aesampler report does not run under torchrun yet"
    )


def test_a_model_without_ddp_modules_gets_one_clear_error_under_torchrun(monkeypatch, tmp_path):
    from aesampler.models import AAE

    class Plain(AAE):
        ddp_modules = None

    class Partial(AAE):
        ddp_modules = ("encoder", "decoder")  # the adversary's optimiser would not be averaged

    class Plugin:
        import aesampler

        @aesampler.hookimpl
        def register_models(self, register):
            register("plain_aae", Plain)
            register("partial_aae", Partial)

    registry = load_registry(extra_plugins=[("ddp-test", Plugin())])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # no process group: the checks come before any
    plain = tiny_recipe(tmp_path / "a", registry, model={"name": "plain_aae"})
    with pytest.raises(
        distributed.DistributedError,
        match="cannot train under torchrun: it does not set ddp_modules",
    ):
        quiet(plain, registry=registry)
    partial = tiny_recipe(tmp_path / "b", registry, model={"name": "partial_aae"})
    with pytest.raises(distributed.DistributedError, match=r"step \['adversary.net.0.weight'"):
        quiet(partial, registry=registry)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_chains_and_metrics_do_not_depend_on_the_number_of_processes(tiny_run, tmp_path):
    """`aesampler run` of a trained model (sample, interpolate, evaluate, report) by 1 and by 2
    processes: bit-identical shards of chains and identical metrics."""
    recipe, run, _ = tiny_run
    checkpoint = find_checkpoint(run)
    # 12 chains in shards of 4, 4 and 4; 40 evaluation chains in 8 shards of 5.
    settings = ["sampling.shard_size=5", f"model.checkpoint={checkpoint}", "evaluate.bootstrap=0"]
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}"
        done = torchrun(
            "run", str(recipe), "--out", str(out), "--quiet", *settings, processes=processes
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("run finished in") == 1  # rank 0 speaks for the run
        if processes == 2:  # the shards were shared out
            assert "sample: 3 shards run by 2 processes: [2, 1] each" in done.stdout
            assert "evaluation: 8 shards run by 2 processes: [4, 4] each" in done.stdout
        outputs[processes] = out
    one, two = outputs[1] / "samples", outputs[2] / "samples"
    names = [f"samples-{i:05d}-of-00003.safetensors" for i in range(3)]
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert not (outputs[2] / "partial").exists()
    metrics = [json.loads((outputs[n] / "metrics.json").read_text())["metrics"] for n in (1, 2)]
    assert metrics[0] == metrics[1]
    assert (outputs[2] / "report.html").is_file()


def test_a_fitted_start_sampler_and_auto_steps_are_rank_0s(tiny_run, tmp_path):
    """Rank 0 fits the start sampler and chooses `steps: auto`; the other rank loads and uses
    them, so `sample` by 2 processes writes what 1 process writes."""
    recipe, run, _ = tiny_run
    checkpoint = find_checkpoint(run)
    settings = [
        "sampling.shard_size=5",
        f"model.checkpoint={checkpoint}",
        "sampling.start.name=ex_post_gmm",
        "sampling.start.components=2",
        "sampling.steps=auto",
        "sampling.max_steps=3",
        "sampling.auto_chains=10",
        "sampling.record=null",
    ]
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}"
        done = torchrun(
            "sample", str(recipe), "--out", str(out), "--quiet", *settings, processes=processes
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("steps: auto chose") == 1  # rank 0's pilot chains only
        outputs[processes] = out
    fitted = [sorted(p.name for p in (outputs[n] / "fitted").iterdir()) for n in (1, 2)]
    assert fitted[0] == fitted[1] and len(fitted[0]) == 1  # fitted once, by rank 0
    one, two = outputs[1] / "samples", outputs[2] / "samples"
    chosen = [json.loads((o / "settings.json").read_text())["steps"] for o in (one, two)]
    assert chosen[0] == chosen[1]
    for name in [f"samples-{i:05d}-of-00003.safetensors" for i in range(3)]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
