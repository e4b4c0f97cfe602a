"""``aesampler bench``: what it times is what it says, and it writes the documented JSON."""

from __future__ import annotations

import copy
import json

import torch

from aesampler import Chain
from aesampler.bench import VARIANTS, _reference
from aesampler.models import AAE

from .conftest import cli


def test_the_reference_loop_is_the_chain_without_its_machinery():
    """With no noise the bare loop and Chain.run compute the same map, so the bench compares
    like with like (and Chain.run exact equals the loop a user would write)."""
    torch.manual_seed(0)
    model = AAE(image_size=16, channels=1, latent_dim=8, width=8)
    z0 = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    z, x = _reference(copy.deepcopy(model), z0, steps=3, sigma=0.0, seed=0)
    chained = Chain(model.encoder, model.decoder).run(z0, steps=3, record=[3], seed=0)
    torch.testing.assert_close(chained.z[3], z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chained.x[3], x, rtol=1e-5, atol=1e-5)


def test_bench_prints_a_table_and_writes_every_documented_field(tmp_path):
    path = tmp_path / "bench.json"
    done = cli(
        "bench",
        "--batch",
        "4",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--network",
        "quickstart",
        "--json",
        str(path),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(path.read_text())
    rows = result["rows"]
    assert [row["name"] for row in rows] == list(VARIANTS)
    for row in rows:
        assert set(row) == {
            "name",
            "network",
            "image_size",
            "batch",
            "images_per_s",
            "ratio_to_reference",
            "peak_memory_bytes",
            "fraction_of_matmul_peak",
        }
        assert row["image_size"] == 32 and row["batch"] == 4 and row["images_per_s"] > 0
        assert 0 < row["fraction_of_matmul_peak"] < 10
        assert row["peak_memory_bytes"] is None  # not measurable per variant on the CPU
    assert rows[0]["ratio_to_reference"] == 1.0
    assert result["matmul_peak_flops"]["fp32"] > 0
    assert "bf16+channels_last" in done.stdout and "× reference" in done.stdout


def test_the_training_bench_times_every_variant_on_both_networks(monkeypatch):
    from aesampler import bench

    tiny = {
        "model": {"name": "aae", "latent_dim": 4, "width": 4, "adversary_hidden": 16},
        "data": {"name": "digits", "image_size": 8},
        "corruption": {"name": "gaussian", "sigma": 0.5},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0, "grid_size": 4},
    }
    monkeypatch.setattr(bench, "TRAIN_RECIPE", tiny)
    monkeypatch.setattr(bench, "NETWORKS", (("paper", 8, 3, 4),))
    monkeypatch.setattr(bench, "PAPER_TRAIN_STEPS", 1)
    said = []
    rows = bench.bench_training(repeats=1, networks=("quickstart", "paper"), log=said.append)
    names = [name for name, *_ in bench.TRAIN_VARIANTS]
    bare = [name for name, loop, *_ in bench.TRAIN_VARIANTS if loop == "bare"]
    assert [(row["network"], row["name"]) for row in rows] == [
        *(("quickstart", name) for name in names),
        *(("paper", name) for name in bare),
    ]
    assert names[0] == "train: bare loop" and "train: aesampler train bf16" in names
    for row in rows:
        assert row["image_size"] == 8 and row["batch"] == 64
        assert row["images_per_s"] > 0 and row["ratio_to_reference"] > 0
        assert 0 < row["fraction_of_matmul_peak"] < 10
    assert rows[0]["ratio_to_reference"] == 1.0 and rows[len(names)]["ratio_to_reference"] == 1.0
    assert len(said) == 4  # per network, a warm-up round and a timed one
