"""Peak memory of ``aesampler sample`` as the number of chains grows: it holds one shard at a time.

Trains the paper's 64 × 64 AAE (latent 200, width 64) for one step on the embedded digits
(resized to 64 × 64: the weights do not matter for memory), then runs ``aesampler sample`` on it
once per chain count, each in a fresh process, and prints each process's peak resident memory
(``ru_maxrss``) and wall time. Usage (from the repository root):

    python benchmarks/sample_memory.py [--chains 2048 8192 20480] [--steps 1] [--shard-size 2048]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = [
    "data.image_size=64",
    "model.width=64",
    "model.latent_dim=200",
    "train.epochs=1",
    "train.max_steps=1",
    "evaluate.enabled=false",
    "interpolation.enabled=false",
]


def _aesampler() -> str:
    return shutil.which("aesampler") or str(Path(sys.executable).with_name("aesampler"))


def peak_of(argv: list[str]) -> tuple[float, int]:
    """Seconds and peak resident bytes of a command run in a fresh process."""
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all waited-for children: one child per
    # wrapper process keeps each measurement separate.
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(code, time.perf_counter() - t, peak)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    code, seconds, peak = out.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr}")
    return float(seconds), int(peak) * 1024  # Linux reports kibibytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[2048, 8192, 20480])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--shard-size", type=int, default=2048)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    args = parser.parse_args()
    exe = _aesampler()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run(
            [exe, "train", args.recipe, "--out", str(run), "--quiet", *MODEL], check=True
        )
        print("| chains | shards | steps | seconds | peak resident memory |")
        print("|---|---|---|---|---|")
        for chains in args.chains:
            settings = [
                f"sampling.num_chains={chains}",
                f"sampling.steps={args.steps}",
                f"sampling.record=[0, {args.steps}]",
                f"sampling.shard_size={args.shard_size}",
                f"sampling.precision={args.precision}",
                "sampling.grid_size=64",
            ]
            argv = [exe, "sample", args.recipe, "--out", str(run), "--overwrite", "--quiet"]
            seconds, peak = peak_of([*argv, *MODEL, *settings])
            shards = -(-chains // args.shard_size)
            memory = f"{peak / 2**20:,.0f} MiB"
            print(f"| {chains:,} | {shards} | {args.steps} | {seconds:.0f} | {memory} |")


if __name__ == "__main__":
    main()
