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


FIELDS = {
    "name",
    "network",
    "image_size",
    "batch",
    "images_per_s",
    "ratio_to_reference",
    "peak_memory_bytes",
    "fraction_of_matmul_peak",
    "precision",
    "cpu_capability",
    "note",
}
SMALL = ["--batch", "4", "--steps", "1", "--repeats", "1", "--network", "quickstart"]


def test_bench_prints_a_table_and_writes_every_documented_field(tmp_path):
    """This suite's CPU has no fast bf16 (conftest): auto is fp32, and bf16 is not timed by
    default but says why."""
    path = tmp_path / "bench.json"
    done = cli("bench", *SMALL, "--json", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(path.read_text())
    assert result["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result["auto_precision"]["precision"] == "fp32"
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == list(VARIANTS) == ["reference", "exact", "auto", "bf16"]
    for row in rows.values():
        assert set(row) == FIELDS
        assert row["image_size"] == 32 and row["batch"] == 4
        assert row["cpu_capability"] == result["cpu_capability"]
        assert row["peak_memory_bytes"] is None  # not measurable per variant on the CPU
    for name in ("reference", "exact", "auto"):
        assert rows[name]["images_per_s"] > 0 and 0 < rows[name]["fraction_of_matmul_peak"] < 10
        assert rows[name]["precision"] == "fp32" and rows[name]["note"] is None
    assert rows["reference"]["ratio_to_reference"] == 1.0
    bf16 = rows["bf16"]
    assert bf16["images_per_s"] is None and bf16["ratio_to_reference"] is None
    assert bf16["note"].startswith("not timed (no fast bf16 here") and "--full" in bf16["note"]
    assert result["matmul_peak_flops"]["fp32"] > 0
    assert "× reference" in done.stdout and "[1] not timed (no fast bf16 here" in done.stdout
    assert f"CPU capability {result['cpu_capability']}, precision auto: fp32" in done.stdout


def test_full_times_bf16_even_where_it_is_slow_and_says_so(tmp_path):
    path = tmp_path / "bench.json"
    done = cli("bench", *SMALL, "--full", "--json", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(path.read_text())
    assert result["steps"] == 1 and result["repeats"] == 1  # given values beat --full's
    bf16 = next(row for row in result["rows"] if row["name"] == "bf16")
    assert bf16["images_per_s"] > 0 and bf16["precision"] == "bf16"
    assert bf16["note"].startswith("no fast bf16 here: the CPU")


def test_the_bench_defaults_are_the_quick_ones(monkeypatch):
    from aesampler import bench

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return {
            "rows": [],
            "matmul_peak_flops": {"fp32": 1e9, "bf16": 1e9},
            "device": "cpu",
            "threads": 1,
            "steps": 2,
            "repeats": 3,
        }

    monkeypatch.setattr(bench, "bench", fake)
    assert cli("bench", "--quiet").returncode == 0
    assert (seen["full"], seen["batches"], seen["steps"], seen["repeats"]) == (
        False,
        None,
        None,
        None,
    )
    assert bench.QUICK == {"batches": (64,), "steps": 5, "repeats": 5}


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
