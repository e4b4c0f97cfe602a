"""The evaluation's bootstrap: one call per resample (before #10) against the batched statistics.

Three cases, each 1000 samples against 1000 reference rows:

* ``frechet 128-D``: the quickstart's classifier features;
* ``frechet 768-D``: the CelebA recipes' pixel features (16 × 16 × 3);
* ``mmd 200-D``: latents, as ``mmd_learned`` and ``mmd_prior`` compare them.

"per resample" is the code before #10: SciPy's ``stats.bootstrap`` calling the statistic once per
resample (the Fréchet distance by SciPy's eigensolvers with BLAS's own threading, the MMD by
gathering n × n kernel blocks). "batched" is ``aesampler.evaluation.stats.bootstrap`` with the
vectorised statistic. The slow variant runs ``--before-resamples`` resamples and its time is
scaled to ``--resamples``; both variants use the same seed, so on those first resamples their
interval ends must agree to rounding, which the last column shows (SciPy's ends placed at the
value as aesampler places its own since issue 19, see benchmarks/bootstrap_intervals.py).
Variants alternate within one process, ``--repeats`` times, and the table gives the median.
Usage:

    python benchmarks/evaluation_bootstrap.py [--resamples 200] [--before-resamples 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import linalg, stats

from aesampler.evaluation.stats import (
    bootstrap,
    frechet_distance,
    frechet_resampled,
    gaussian_stats,
    median_bandwidth,
    mmd2_from_kernels,
    mmd2_resampled,
    placed_at,
    rbf_kernel_blocks,
)


def frechet_before(mu1, cov1, mu2, cov2) -> float:
    """The Fréchet distance as computed before #10 (BLAS threads as configured)."""
    w, v = linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


def bootstrap_before(statistic, sizes, resamples: int, seed: int = 0) -> tuple[float, float]:
    full = [np.arange(n) for n in sizes]
    result = stats.bootstrap(
        tuple(full),
        lambda *indices: statistic(*(i.astype(np.int64) for i in indices)),
        n_resamples=resamples,
        vectorized=False,
        paired=False,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    value, resampled = float(statistic(*full)), result.bootstrap_distribution
    placed = placed_at(
        value,
        float(result.confidence_interval.low),
        float(np.median(resampled)),
        float(result.confidence_interval.high),
        positive=value > 0 and bool((resampled > 0).all()),
    )
    return placed.low, placed.high


def cases(rng: np.random.Generator) -> dict:
    made = {}
    for dim in (128, 768):
        # correlated, partly dead features, as a ReLU network's or pooled pixels' are
        mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        fake = np.maximum(rng.normal(size=(1000, dim)) @ mix, 0)
        real = np.maximum(rng.normal(0.1, 1.0, size=(1000, dim)) @ mix, 0)

        def slow(i, j, fake=fake, real=real):
            return frechet_before(*gaussian_stats(fake[i]), *gaussian_stats(real[j]))

        def value(i, j, fake=fake, real=real):
            return frechet_distance(*gaussian_stats(fake[i]), *gaussian_stats(real[j]))

        def fast(i, j, fake=fake, real=real):
            return frechet_resampled(fake, real, i, j)

        made[f"frechet {dim}-D"] = (slow, value, fast)
    z, ref = rng.normal(size=(1000, 200)), rng.normal(0.05, 1.0, size=(1000, 200))
    blocks = rbf_kernel_blocks(z, ref, median_bandwidth(z, ref))
    made["mmd 200-D"] = (
        lambda i, j: mmd2_from_kernels(*blocks, i, j),
        lambda i, j: mmd2_from_kernels(*blocks, i, j),
        lambda i, j: mmd2_resampled(*blocks, i, j),
    )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--before-resamples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, (slow, value, fast) in cases(np.random.default_rng(0)).items():
        before, after, gap = [], [], 0.0
        for _ in range(args.repeats):
            started = time.perf_counter()
            ends = bootstrap_before(slow, (1000, 1000), args.before_resamples)
            before.append((time.perf_counter() - started) * args.resamples / args.before_resamples)
            started = time.perf_counter()
            bootstrap(value, (1000, 1000), resamples=args.resamples, confidence=0.95, seed=0,
                      batched=fast)  # fmt: skip
            after.append(time.perf_counter() - started)
            same = bootstrap(
                value,
                (1000, 1000),
                resamples=args.before_resamples,
                confidence=0.95,
                seed=0,
                batched=fast,
            )
            gap = max(gap, *(abs(a - b) / abs(a) for a, b in zip(ends, (same.low, same.high))))
        rows.append((name, statistics.median(before), statistics.median(after), gap))
    header = (
        "case",
        f"per resample, s per {args.resamples}",
        f"batched, s per {args.resamples}",
        "speed-up",
        "interval ends, max rel. diff",
    )
    table = [header] + [
        (name, f"{b:.2f}", f"{a:.2f}", f"{b / a:.1f}x", f"{gap:.1e}") for name, b, a, gap in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print("(batched includes the value on all data; per resample times the resamples alone)")


if __name__ == "__main__":
    main()
