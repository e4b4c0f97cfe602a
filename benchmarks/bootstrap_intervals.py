"""Bootstrap intervals before and after issue 19: where they lie, and what they cost.

Before, the interval was SciPy's percentile interval of the resampled numbers; since issue 19 it
is that interval moved by the value minus the resamples' median (``aesampler.evaluation.stats
.bootstrap``), and SciPy's BCa interval is shown for comparison. The cases:

* ``frechet, one Gaussian, 60 x 60, 4-D``: two small samples of N(0, I), the plug-in Fréchet
  distance biased upward (the test case of tests/test_bootstrap.py);
* ``frechet, one Gaussian, 1000 x 1000, 128-D``: the same at the size of the default
  evaluation (1000 chains, 1000 held-out images, the classifier's 128 features);
* ``frechet, features, 1000 x 1000, 128-D``: correlated, partly dead features of two slightly
  different distributions, as in benchmarks/evaluation_bootstrap.py;
* ``mean of 1000 exponential draws``: an unbiased statistic with a skewed distribution.

Then the time of 200 resamples of the Fréchet distance of 1000 x 1000 rows of 128 features,
before and after (alternating in one process, ``--repeats`` times, median), and, for the
Fréchet distance of fresh draws (``--draws`` of them) from two Gaussians, how often each kind
of interval holds the mean of the values (where the value of new samples of these sizes falls)
and the distance between the Gaussians; "additive" places the resamples' differences from
their median at the value, "now" their ratios (the value and resamples are positive). Usage:

    python benchmarks/bootstrap_intervals.py [--resamples 200] [--repeats 3] [--no-bca]
        [--draws 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from scipy import stats

from aesampler.evaluation.stats import (
    bootstrap,
    frechet_distance,
    frechet_resampled,
    gaussian_stats,
    mean_resampled,
    resample_indices,
)


def percentile_before(value_of, batched, sizes, resamples, confidence=0.95, seed=0):
    """The interval before issue 19: the percentile interval of the resampled numbers."""
    value = float(value_of(*[np.arange(n) for n in sizes]))
    distribution = batched(*resample_indices(sizes, resamples, seed))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return value, float(low), float(high)


def bca(batched, sizes, resamples, seed=0) -> tuple[float, float, float]:
    """SciPy's BCa interval (NaN where its bias correction is infinite) and its time."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy warns where the interval is NaN
        interval = stats.bootstrap(
            tuple(np.arange(n) for n in sizes),
            lambda *indices, axis=-1: batched(*(np.atleast_2d(i).astype(int) for i in indices)),
            vectorized=True,
            paired=False,
            n_resamples=resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        ).confidence_interval
    seconds = time.perf_counter() - started
    return float(np.squeeze(interval.low)), float(np.squeeze(interval.high)), seconds


def frechet_case(x: np.ndarray, y: np.ndarray):
    def value(i, j):
        return frechet_distance(*gaussian_stats(x[i]), *gaussian_stats(y[j]))

    def batched(i, j):
        return frechet_resampled(x, y, i, j)

    return value, batched, (len(x), len(y))


def cases(rng: np.random.Generator) -> dict:
    made = {
        "frechet, one Gaussian, 60 x 60, 4-D": frechet_case(
            rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
        ),
        "frechet, one Gaussian, 1000 x 1000, 128-D": frechet_case(
            rng.normal(size=(1000, 128)), rng.normal(size=(1000, 128))
        ),
    }
    mix = rng.normal(size=(128, 128)) / np.sqrt(128)
    fake = np.maximum(rng.normal(size=(1000, 128)) @ mix, 0)
    real = np.maximum(rng.normal(0.1, 1.0, size=(1000, 128)) @ mix, 0)
    made["frechet, features, 1000 x 1000, 128-D"] = frechet_case(fake, real)
    values = rng.exponential(size=1000)
    made["mean of 1000 exponential draws"] = (
        lambda i: float(values[i].mean()),
        lambda i: mean_resampled(values, i),
        (1000,),
    )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bca", action="store_true", help="skip SciPy's BCa (slow at n=1000)")
    parser.add_argument("--draws", type=int, default=200, help="fresh draws per coverage case")
    args = parser.parse_args()
    made = cases(np.random.default_rng(0))
    rows = [("case", "value", "percentile (before)", "now", "BCa (SciPy)", "BCa s")]
    for name, (value_of, batched, sizes) in made.items():
        value, low, high = percentile_before(value_of, batched, sizes, args.resamples)
        now = bootstrap(value_of, sizes, resamples=args.resamples, confidence=0.95, seed=0,
                        batched=batched)  # fmt: skip
        shown = ["-", "-"]
        if not args.no_bca:
            b_low, b_high, seconds = bca(batched, sizes, args.resamples)
            shown = [f"[{b_low:.5g}, {b_high:.5g}]", f"{seconds:.1f}"]
        rows.append(
            (
                name,
                f"{value:.5g}",
                f"[{low:.5g}, {high:.5g}]",
                f"[{now.low:.5g}, {now.high:.5g}]",
                *shown,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))

    value_of, batched, sizes = made["frechet, features, 1000 x 1000, 128-D"]
    before, after = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        percentile_before(value_of, batched, sizes, args.resamples)
        before.append(time.perf_counter() - started)
        started = time.perf_counter()
        bootstrap(value_of, sizes, resamples=args.resamples, confidence=0.95, seed=0,
                  batched=batched)  # fmt: skip
        after.append(time.perf_counter() - started)
    b, a = statistics.median(before), statistics.median(after)
    print(
        f"\n{args.resamples} resampled Fréchet distances, 1000 x 1000 rows, 128 features: "
        f"before {b:.2f} s, now {a:.2f} s ({a / b:.2f}x; median of {args.repeats})"
    )
    print(f"\nCoverage of 95% intervals over {args.draws} draws ({args.resamples} resamples):")
    for rows, dim, shift in ((60, 4, 0.0), (200, 8, 0.0), (100, 4, 1.0)):
        print("\n".join(coverage(rows, dim, shift, args.draws, args.resamples)))


def coverage(rows: int, dim: int, shift: float, draws: int, resamples: int) -> list[str]:
    """How often each interval holds the mean value and the true distance, over fresh draws."""
    rng = np.random.default_rng(7)
    values, intervals = [], {"percentile (before)": [], "additive": [], "now": []}
    for draw in range(draws):
        x, y = rng.normal(size=(rows, dim)), rng.normal(size=(rows, dim))
        x[:, 0] += shift
        value_of, batched, sizes = frechet_case(x, y)
        value, low, high = percentile_before(value_of, batched, sizes, resamples, seed=draw)
        middle = float(np.median(batched(*resample_indices(sizes, resamples, draw))))
        now = bootstrap(value_of, sizes, resamples=resamples, confidence=0.95, seed=draw,
                        batched=batched)  # fmt: skip
        values.append(value)
        intervals["percentile (before)"].append((low, high))
        intervals["additive"].append((value - (middle - low), value + (high - middle)))
        intervals["now"].append((now.low, now.high))
    mean, truth = float(np.mean(values)), shift**2
    lines = [f"{rows} x {rows} rows, {dim}-D, means {shift} apart: mean value {mean:.4g}"]
    for name, ends in intervals.items():
        ends = np.array(ends)
        held = np.mean((ends[:, 0] <= mean) & (mean <= ends[:, 1]))
        true = np.mean((ends[:, 0] <= truth) & (truth <= ends[:, 1]))
        below = np.mean(ends[:, 0] < 0)
        lines.append(
            f"  {name:>19}: holds the mean value {held:.2f}, the distance {true:.2f}; "
            f"low < 0 in {below:.2f}; mean width {np.mean(ends[:, 1] - ends[:, 0]):.3g}"
        )
    return lines


if __name__ == "__main__":
    main()
