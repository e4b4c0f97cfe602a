"""``aesampler sample`` by 1 and 2 processes under torchrun, against one process with 2 threads.

Trains the quickstart model for one step (the weights do not matter for speed), then times
``aesampler sample`` (``--chains`` chains in shards of ``--shard-size``, ``--steps`` steps) three
ways, round by round: torchrun with 1 process of 1 thread, torchrun with 2 processes of 1 thread
each, and a plain process with 2 threads. Prints the median wall time of each (start-up
included) and checks that the chains of every way are bit-identical. Usage (repository root):

    python benchmarks/distributed_sampling.py [--chains 4096] [--shard-size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["train.epochs=1", "train.max_steps=1", "evaluate.enabled=false"]
QUIET = ["interpolation.enabled=false", "evaluate.enabled=false", "--quiet", "--overwrite"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4096)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    args = parser.parse_args()
    exe = shutil.which("aesampler") or str(Path(sys.executable).with_name("aesampler"))
    settings = [
        f"sampling.num_chains={args.chains}",
        f"sampling.shard_size={args.shard_size}",
        f"sampling.steps={args.steps}",
        f"sampling.record=[0, {args.steps}]",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ways = {
        "torchrun, 1 process x 1 thread": ([*torchrun, "--nproc-per-node=1", "-m", "aesampler"], 1),
        "torchrun, 2 processes x 1 thread": (
            [*torchrun, "--nproc-per-node=2", "-m", "aesampler"],
            1,
        ),
        "1 process x 2 threads": ([exe], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        subprocess.run(
            [exe, "train", args.recipe, "--out", str(trained), "--quiet", *TRAIN],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        shards: dict[str, bytes] = {}
        for _ in range(args.repeats):
            for name, (command, threads) in ways.items():
                out = Path(tmp) / name.replace(" ", "_")
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                argv = [
                    *command,
                    "sample",
                    args.recipe,
                    "--checkpoint",
                    str(trained),
                    "--out",
                    str(out),
                    *QUIET,
                    *settings,
                ]
                started = time.perf_counter()
                subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
                seconds[name].append(time.perf_counter() - started)
                files = sorted((out / "samples").glob("samples-*.safetensors"))
                shards[name] = b"".join(f.read_bytes() for f in files)
    images = args.chains * (args.steps + 1)
    print(
        f"{args.chains} chains, {args.steps} steps, shards of {args.shard_size}, "
        f"median of {args.repeats}"
    )
    print("| how | seconds | chain-steps/s |")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {images / median:,.0f} |")
    reference = shards["torchrun, 1 process x 1 thread"]
    same = {name: data == reference for name, data in shards.items()}
    print(f"chains bit-identical to 1 process x 1 thread: {same}")


if __name__ == "__main__":
    main()
