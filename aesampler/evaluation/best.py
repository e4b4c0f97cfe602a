"""Which chain step is best, by each metric, in words a reader can act on.

An evaluation measures the samples at every recorded step (``metrics.json``); a table of numbers
leaves the reader to find the best step and to notice when the chain made samples worse. Here
each metric with a direction (``lower_is_better`` True or False; None is context, not a score)
gets its best step, and the last step is compared with it: when the two intervals do not
overlap, the chain's later steps made the samples worse by that metric, and the words say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: One sentence on the chain diagnostics, for wherever R-hat and ESS are shown.
DIAGNOSTICS_MEANING = (
    "R-hat compares the spread of a latent between chains with its spread within them: near 1 "
    "(below about 1.01) the chains have forgotten where they started, well above 1 each still "
    "sits near its own start; the effective sample size (ESS) is how many independent draws the "
    "correlated steps of all chains are worth."
)


@dataclass(frozen=True)
class BestStep:
    """The best step of one metric, and how the last step compares with it.

    Attributes:
        metric: the metric's key in ``metrics.json``.
        lower_is_better: the metric's direction.
        best: the best step (the earliest, on ties).
        last: the last step with a value.
        values: step -> (value, low, high) for every step with a value.
        worse_at_last: the last step's interval lies entirely on the bad side of the best
            step's: later chain steps made samples worse, beyond the bootstrap's uncertainty.
    """

    metric: str
    lower_is_better: bool
    best: int
    last: int
    values: dict[int, tuple[float, float, float]]
    worse_at_last: bool

    def describe(self) -> str:
        """One line: ``frechet (lower is better): best at step 1 (63 [59.2, 67.1]); …``."""

        def at(step: int) -> str:
            value, low, high = self.values[step]
            return f"{value:.4g} [{low:.3g}, {high:.3g}]"

        way = "lower" if self.lower_is_better else "higher"
        line = f"{self.metric} ({way} is better): best at step {self.best} ({at(self.best)})"
        if self.best == self.last:
            first = min(self.values)
            if first == self.last:
                return line
            return f"{line}, the last step: the chain improved on step {first} ({at(first)})"
        if self.worse_at_last:
            return (
                f"{line}; step {self.last} is worse ({at(self.last)}): chain steps after step "
                f"{self.best} made the samples worse by this metric"
            )
        return f"{line}; step {self.last} ({at(self.last)}) is within the intervals' uncertainty"


def best_steps(report: dict[str, Any]) -> list[BestStep]:
    """The :class:`BestStep` of every metric of ``report`` (``metrics.json``) with a direction."""
    found = []
    for metric, by_step in report.get("metrics", {}).items():
        direction = report.get("lower_is_better", {}).get(metric)
        if direction is None:
            continue
        values = {
            int(step): (cell["value"], cell["low"], cell["high"])
            for step, cell in by_step.items()
            if cell and _finite(cell["value"])
        }
        if not values:
            continue
        sign = 1.0 if direction else -1.0
        best = min(sorted(values), key=lambda step: sign * values[step][0])
        last = max(values)
        _, best_low, best_high = values[best]
        _, last_low, last_high = values[last]
        worse = last != best and (last_low > best_high if direction else last_high < best_low)
        found.append(BestStep(metric, bool(direction), best, last, values, worse))
    return found


def describe_best_steps(report: dict[str, Any]) -> list[str]:
    """Lines for a terminal or a report: each metric's best step, then one plain verdict when
    chain steps made samples worse by some metric."""
    found = best_steps(report)
    lines = [best.describe() for best in found]
    worse = [best.metric for best in found if best.worse_at_last]
    if worse:
        lines.append(
            f"More chain steps made the samples worse by {', '.join(worse)}: use the best step "
            "above (sampling.steps) rather than the last."
        )
    return lines


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
