"""The best chain step by each metric, said in words by the CLI and the report (issue 19, item 6)."""

from __future__ import annotations

import html
import json
import math

from aesampler.evaluation import DIAGNOSTICS_MEANING, best_steps, describe_best_steps


def cell(value, low, high):
    return {"value": value, "low": low, "high": high}


# The README's model as the issue measured it: Fréchet distance best at step 1 (63.0), 117.5 at
# step 10; precision keeps rising; recall flat within its intervals; mmd_prior is context.
REPORT = {
    "steps": [0, 1, 5, 10],
    "metrics": {
        "frechet": {
            "0": cell(73.0, 63.8, 89.8),
            "1": cell(63.0, 59.0, 68.0),
            "5": cell(90.0, 84.0, 97.0),
            "10": cell(117.5, 110.0, 125.0),
        },
        "precision": {
            "0": cell(0.40, 0.35, 0.45),
            "1": cell(0.50, 0.45, 0.55),
            "5": cell(0.60, 0.55, 0.65),
            "10": cell(0.70, 0.65, 0.75),
        },
        "recall": {
            "0": cell(0.30, 0.20, 0.40),
            "1": cell(0.33, 0.22, 0.41),
            "5": cell(0.31, 0.21, 0.40),
            "10": cell(0.29, 0.19, 0.39),
        },
        "mmd_prior": {"0": cell(0.01, 0.0, 0.02), "10": cell(0.5, 0.4, 0.6)},
        "novelty": {"0": cell(math.nan, math.nan, math.nan)},
    },
    "lower_is_better": {
        "frechet": True,
        "precision": False,
        "recall": False,
        "mmd_prior": None,
        "novelty": False,
    },
}


def test_each_scored_metric_gets_its_best_step():
    found = {best.metric: best for best in best_steps(REPORT)}
    assert set(found) == {"frechet", "precision", "recall"}  # context and NaN-only: none
    assert (found["frechet"].best, found["frechet"].last) == (1, 10)
    assert found["frechet"].worse_at_last
    assert (found["precision"].best, found["precision"].worse_at_last) == (10, False)
    assert (found["recall"].best, found["recall"].worse_at_last) == (1, False)


def test_the_words_say_where_to_stop_and_when_steps_made_samples_worse():
    assert describe_best_steps(REPORT) == [
        "frechet (lower is better): best at step 1 (63 [59, 68]); step 10 is worse "
        "(117.5 [110, 125]): chain steps after step 1 made the samples worse by this metric",
        "precision (higher is better): best at step 10 (0.7 [0.65, 0.75]), the last step: the "
        "chain improved on step 0 (0.4 [0.35, 0.45])",
        "recall (higher is better): best at step 1 (0.33 [0.22, 0.41]); step 10 "
        "(0.29 [0.19, 0.39]) is within the intervals' uncertainty",
        "More chain steps made the samples worse by frechet: use the best step above "
        "(sampling.steps) rather than the last.",
    ]


def test_ties_go_to_the_earliest_step_and_a_single_step_needs_no_comparison():
    report = {
        "metrics": {"frechet": {"0": cell(5.0, 4.0, 6.0), "3": cell(5.0, 4.5, 5.5)}},
        "lower_is_better": {"frechet": True},
    }
    [best] = best_steps(report)
    assert best.best == 0 and not best.worse_at_last
    single = {
        "metrics": {"frechet": {"0": cell(5.0, 4.0, 6.0)}},
        "lower_is_better": {"frechet": True},
    }
    assert describe_best_steps(single) == ["frechet (lower is better): best at step 0 (5 [4, 6])"]


def test_run_prints_and_the_report_shows_the_best_steps_and_what_r_hat_means(tiny_run):
    _, run, done = tiny_run
    metrics = json.loads((run / "metrics.json").read_text())
    lines = describe_best_steps(metrics)
    assert any(line.startswith("frechet (lower is better): best at step") for line in lines)
    table_end = done.stdout.index("bootstrap interval])") + len("bootstrap interval])\n")
    assert done.stdout[table_end:].startswith("\n".join(lines) + "\n")
    report = (run / "report.html").read_text()
    assert "The best step by each metric" in report
    assert all(html.escape(line) in report for line in lines)
    assert "R-hat median" in report and html.escape(DIAGNOSTICS_MEANING) in report
