"""Start-up time of aesampler's commands against a bare ``import torch``.

Each command runs in a fresh process (``sys.executable``; the ``aesampler`` commands through the
installed console script), the commands interleaved round by round so that machine noise hits
all of them alike; the table reports each command's median wall time and its difference from
the bare torch import. ``--compare DIR`` also times the ``aesampler`` commands with the
``aesampler`` package found in DIR (put first on ``PYTHONPATH``; the console script does not put
the working directory on ``sys.path``, so DIR wins over the installed package), interleaved with
the installed one: for example DIR extracted from an older commit with
``git archive COMMIT aesampler | tar -x -C DIR``. Usage (from the repository root):

    python benchmarks/startup.py [--repeats 5] [--recipe recipes/quickstart.yaml] [--compare DIR]
"""

from __future__ import annotations

import argparse
import os
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


def time_once(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def tree_env(tree: str) -> dict[str, str]:
    """The environment in which the console script imports ``aesampler`` from ``tree``."""
    if not (Path(tree) / "aesampler" / "__init__.py").is_file():
        raise SystemExit(f"{tree}: no aesampler package here")
    paths = [str(Path(tree).resolve()), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--compare", metavar="DIR", help="also time the aesampler package in DIR")
    args = parser.parse_args()
    runs = commands(args.recipe)
    # (label, command, argv, environment); the bare torch import is the same for every tree.
    variants = [("", name, argv, None) for name, argv in runs.items()]
    if args.compare:
        env = tree_env(args.compare)
        variants += [
            (f"[{args.compare}] ", name, argv, env)
            for name, argv in runs.items()
            if name.startswith("aesampler")
        ]
    times: dict[str, list[float]] = {label + name: [] for label, name, _, _ in variants}
    for _, _, argv, env in variants:  # warm the file cache once, untimed
        time_once(argv, env)
    for _ in range(args.repeats):
        for label, name, argv, env in variants:
            times[label + name].append(time_once(argv, env))
    base = statistics.median(next(iter(times.values())))
    width = max(map(len, times))
    print(f"{'command':<{width}}  median s  vs torch  (of {args.repeats} runs)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:8.2f}  {median - base:+8.2f}")


if __name__ == "__main__":
    main()
