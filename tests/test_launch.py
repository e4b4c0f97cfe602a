"""``python -m aesampler.launch``: torchrun whose failed runs end with aesampler's one line.

Two real 2-process runs (a few seconds of start-up each): ranks that stop with an aesampler
error, and a rank killed with SIGKILL. The choice of the line is tested on torchrun's own
failure records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from aesampler import distributed
from aesampler.cli import main
from aesampler.launch import describe
from aesampler.launch import main as launch_main

TINY = (
    "model: {name: vae, latent_dim: 4, width: 4}\n"
    "data: {name: digits, image_size: 8}\n"
    "train: {epochs: 1, grid_size: 4, batch_size: 32, device: cpu}\n"
    "output: {dir: unused}\n"
)


def launch(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "aesampler.launch", "--standalone", "--nproc-per-node=2"]
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                after_name = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(after_name[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


def test_ranks_that_fail_end_the_launch_with_their_one_line_and_status(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    run = tmp_path / "run"
    proc = launch("train", str(recipe), "train.lr=1.0e+10", "--out", str(run), "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert last_line(err).startswith("aesampler: error on rank ")
    assert last_line(err).endswith(
        " of 2: training stopped: non-finite loss at step 2 (epoch 1): loss=nan, "
        "reconstruction=nan, kl=nan; no checkpoint was written. Try a lower train.lr."
    )
    assert "Traceback" not in err and "ChildFailedError" not in err
    assert not run.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks in /proc")
def test_a_rank_killed_by_sigkill_ends_the_launch_with_one_line(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    run = tmp_path / "run"
    proc = launch("train", str(recipe), "train.epochs=500", "--out", str(run), "--quiet")
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and len(children(proc.pid)) == 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1)  # training
        ranks = children(proc.pid)  # torchrun starts them in rank order
        os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert last_line(err) == (
        "aesampler: error: rank 1 was killed by SIGKILL, which the system's out-of-memory killer "
        "also sends; torchrun stopped the others"
    )
    assert "ChildFailedError" not in err


def failure(tmp_path, rank, exitcode, line=None, when=0.0, follows=False, status=None):
    """torchrun's record of a failed rank, reading what ``record_failure`` left (if anything)."""
    error_file = tmp_path / f"error-{rank}.json"
    if line is not None:
        os.environ[distributed.ERROR_FILE_ENV] = str(error_file)
        try:
            distributed.record_failure(line, status or exitcode, follows_another_rank=follows)
        finally:
            del os.environ[distributed.ERROR_FILE_ENV]
        data = json.loads(error_file.read_text())
        data["aesampler"]["time"] = when
        error_file.write_text(json.dumps(data))
    return ProcessFailure(
        local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(error_file)
    )


def test_the_first_rank_that_failed_for_itself_gives_the_line(tmp_path):
    first = failure(tmp_path, 1, 2, "aesampler: error on rank 1 of 3: the cause", when=10.0)
    later = failure(tmp_path, 2, 2, "aesampler: error on rank 2 of 3: another", when=11.0)
    follower_line = "aesampler: error on rank 0 of 3: lost contact"
    follower = failure(tmp_path, 0, 2, follower_line, when=9.0, follows=True)
    assert describe({0: follower, 1: first, 2: later}) == (
        "aesampler: error on rank 1 of 3: the cause",
        2,
    )
    assert describe({0: follower}) == ("aesampler: error on rank 0 of 3: lost contact", 2)
    bug = failure(tmp_path, 3, 1, "aesampler: error on rank 3 of 4: ValueError: x", when=1.0)
    assert describe({3: bug}) == ("aesampler: error on rank 3 of 4: ValueError: x", 1)
    # A rank that had said why and was about to exit 2 when torchrun stopped it: its word holds.
    stopped = failure(
        tmp_path, 4, -signal.SIGTERM, "aesampler: error on rank 4 of 5: the cause", status=2
    )
    assert describe({4: stopped}) == ("aesampler: error on rank 4 of 5: the cause", 2)
    # No line: a rank killed by a signal, or one that ended before aesampler could say why.
    killed = failure(tmp_path, 5, -signal.SIGTERM)
    assert describe({5: killed}) == (
        "aesampler: error: rank 5 was killed by SIGTERM; torchrun stopped the others",
        128 + signal.SIGTERM,
    )
    assert describe({5: killed, 0: follower})[0] == follower_line  # SIGTERM: torchrun's own
    # A rank killed from outside is the cause, whatever the others said (and when).
    oom = failure(tmp_path, 7, -signal.SIGKILL)
    assert describe({0: follower, 1: first, 7: oom})[0].startswith(
        "aesampler: error: rank 7 was killed by SIGKILL"
    )
    assert describe({5: killed, 1: first}) == ("aesampler: error on rank 1 of 3: the cause", 2)
    silent = failure(tmp_path, 6, 137)
    assert describe({6: silent}) == (
        "aesampler: error: rank 6 exited with status 137 without an aesampler error line (see "
        "its output above); torchrun stopped the others",
        137,
    )


def test_a_rank_records_its_line_for_torchrun_only_under_torchrun(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(distributed.ERROR_FILE_ENV, str(error_file))
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert not error_file.exists()  # one process: no torchrun to tell
    line = capsys.readouterr().err.strip()
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.world())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("aesampler: error on rank 1 of 2: ")
    record = json.loads(error_file.read_text())
    assert record["message"] == line and record["aesampler"]["status"] == 2
    assert record["aesampler"]["follows_another_rank"] is False
    assert ProcessFailure(1, 1, 2, str(error_file)).message == line  # what torchrun shows


def test_a_lost_peer_is_recognised_in_gloos_runtime_errors():
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer.")
    assert distributed.lost_peer(gloo) == "Connection reset by peer"
    assert distributed.lost_peer(RuntimeError("shapes do not match")) is None
    assert distributed.lost_peer(ValueError("Connection reset by peer")) is None


def test_torchruns_own_module_options_are_refused(capsys):
    assert launch_main(["--nproc-per-node=2", "-m", "aesampler", "train", "r.yaml"]) == 2
    assert "--module and --no-python do not apply here" in capsys.readouterr().err
