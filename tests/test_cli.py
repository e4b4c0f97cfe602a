"""The real console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import aesampler

from . import fake_dist
from .conftest import EXE

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=120)


def test_version():
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"aesampler {aesampler.__version__}"


def test_plugins_lists_builtins_with_their_distribution():
    done = run("plugins")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert {
        ("corruption", "gaussian", "aesampler"),
        ("corruption", "identity", "aesampler"),
        ("transition", "decode_corrupt_encode", "aesampler"),
        ("metric", "frechet", "aesampler"),
        ("metric", "mmd_learned", "aesampler"),
        ("feature_extractor", "classifier", "aesampler"),
        ("model", "aae", "aesampler"),
        ("dataset", "mnist5k", "aesampler"),
    } <= rows


def test_plugins_json_and_a_broken_third_party_plugin(tmp_path):
    root = fake_dist.make_distribution(
        tmp_path,
        "aesampler-cli-test",
        {"cli_good": fake_dist.GOOD, "cli_broken": fake_dist.BROKEN_IMPORT},
        {"cli.good": "cli_good", "cli.broken": "cli_broken"},
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = run("plugins", "--json", env=env)
    assert done.returncode == 1  # a broken plugin is not silent
    payload = json.loads(done.stdout)
    flip = [c for c in payload["components"] if c["name"] == "flip"]
    assert flip == [
        {
            "kind": "corruption",
            "name": "flip",
            "distribution": "aesampler-cli-test",
            "plugin": "cli.good",
            "description": "Flips every pixel with probability p.",
            "parameters": ["p"],
        }
    ]
    [failure] = payload["failures"]
    assert failure["distribution"] == "aesampler-cli-test" and failure["plugin"] == "cli.broken"
    assert (
        "aesampler: broken plugin 'cli.broken' from distribution 'aesampler-cli-test'"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2():
    done = run("no-such-command")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_plugins_lists_every_kind_of_the_table_in_its_order():
    from aesampler import kinds

    done = run("plugins")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert list(dict.fromkeys(listed)) == [kind.name for kind in kinds.KINDS]
    rows = {tuple(line.split()[:3]) for line in done.stdout.splitlines()[1:]}
    assert {
        ("sampler", "prior", "aesampler"),
        ("sampler", "encodings", "aesampler"),
        ("sampler", "ex_post_gmm", "aesampler"),
    } <= rows


def test_validate_checks_the_start_sampler():
    quickstart = str(ROOT / "recipes" / "quickstart.yaml")
    gmm = "sampling.start.name=ex_post_gmm"
    done = run("validate", quickstart, gmm, "sampling.start.components=5")
    assert done.returncode == 0, done.stderr
    assert "valid (model aae, data mnist5k)" in done.stdout
    done = run("validate", quickstart, gmm, "sampling.start.components=0")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].strip() == (
        f"{quickstart} (command line): sampling.start: sampler 'ex_post_gmm' (aesampler) "
        "rejected its parameters {'components': 0}: components must be a positive integer, got 0"
    )
