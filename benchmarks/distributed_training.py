"""One quickstart epoch of ``aesampler train`` by 1 and 2 processes under torchrun, and plain.

Each way trains the quickstart recipe for one epoch (the embedded mnist5k digits), the ways
interleaved round by round; the table gives the median of the epoch's own clock (the
``seconds`` of its record in metrics.jsonl: training steps and data loading, not start-up,
validation, grids or the checkpoint) and the images per second it means. Usage (repository
root):

    python benchmarks/distributed_training.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGES = 3968  # one quickstart epoch: 62 steps of 64 digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    args = parser.parse_args()
    exe = shutil.which("aesampler") or str(Path(sys.executable).with_name("aesampler"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ways = {  # name: (command, threads per process, batch per process)
        "1 process x 2 threads (no torchrun)": ([exe], 2, 64),
        "1 process x 1 thread": ([*torchrun, "--nproc-per-node=1", "-m", "aesampler"], 1, 64),
        "2 processes x 1 thread": ([*torchrun, "--nproc-per-node=2", "-m", "aesampler"], 1, 32),
        "2 processes x 1 thread, batch 64 each": (
            [*torchrun, "--nproc-per-node=2", "-m", "aesampler"],
            1,
            64,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for name, (command, threads, batch) in ways.items():
                out = Path(tmp) / f"{round_}-{len(seconds[name])}-{name.replace(' ', '_')}"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                argv = [*command, "train", args.recipe, "--out", str(out), "--quiet"]
                argv += ["train.epochs=1", f"train.batch_size={batch}"]
                subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
                lines = (out / "metrics.jsonl").read_text().splitlines()
                epoch = [json.loads(line) for line in lines if '"event": "epoch"' in line][-1]
                seconds[name].append(epoch["seconds"])
    print(f"one quickstart epoch ({IMAGES} images), median of {args.repeats}")
    print("| how | batch per process | seconds | images/s |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        batch = ways[name][2]
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {batch} | {median:.1f} ({runs}) | {IMAGES / median:,.0f} |")


if __name__ == "__main__":
    main()
