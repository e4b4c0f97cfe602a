"""Start-up time of aesampler's commands against a bare ``import torch``.

Each command runs in a fresh process (``sys.executable``; the ``aesampler`` commands through the
installed console script), the commands interleaved round by round so that machine noise hits
all of them alike; the table reports each command's median wall time and its difference from
the bare torch import. Usage (from the repository root):

    python benchmarks/startup.py [--repeats 5] [--recipe recipes/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def commands(recipe: str) -> dict[str, list[str]]:
    script = shutil.which("aesampler") or str(Path(sys.executable).with_name("aesampler"))
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "aesampler --help": [script, "--help"],
        f"aesampler validate {recipe}": [script, "validate", recipe],
        "aesampler plugins": [script, "plugins"],
    }


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    args = parser.parse_args()
    runs = commands(args.recipe)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for argv in runs.values():  # warm the file cache once, untimed
        time_once(argv)
    for _ in range(args.repeats):
        for name, argv in runs.items():
            times[name].append(time_once(argv))
    base = statistics.median(next(iter(times.values())))
    width = max(map(len, runs))
    print(f"{'command':<{width}}  median s  vs torch  (of {args.repeats} runs)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:8.2f}  {median - base:+8.2f}")


if __name__ == "__main__":
    main()
