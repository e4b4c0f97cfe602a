"""The figures: PNG plots of chains, losses, metrics, the sampler comparison and the search.

Producers (the sample stage, the comparison, the tuning search) and the report draw with these;
none of them needs the report's HTML. Plots are drawn with matplotlib's Agg canvas and written
atomically (:func:`aesampler.rundir.atomic_write_bytes`).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .errors import AesamplerError
from .rundir import atomic_write_bytes

MAX_PANELS = 30
"""At most this many plots in one figure (the tables still show every metric)."""
#: The fields of an interval cell (``metrics.json``, ``comparison.json``).
INTERVAL = ("value", "low", "high")


class FigureError(AesamplerError):
    """Numbers that cannot be drawn (the message names where they came from)."""


def is_int(value) -> bool:
    """A whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that can be formatted and plotted as a float (NaN and inf included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:  # an integer beyond the range of a float
        return False
    return True


def is_finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


@contextlib.contextmanager
def _drawing(source: str) -> Iterator[None]:
    """Numbers matplotlib cannot draw become one error naming ``source`` (and no warnings)."""
    try:
        with warnings.catch_warnings():  # overflow warnings would repeat the error below
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    except (ValueError, OverflowError) as error:
        raise FigureError(f"cannot plot the numbers in {source}: {error}") from None


def png_bytes(figure: Figure, source: str, tight_layout: bool = False) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with _drawing(source):
        if tight_layout:
            figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _save_figure(figure: Figure, path: Path, source: str = "the run directory") -> None:
    data = png_bytes(figure, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _panels(count: int, columns: int) -> tuple[int, int]:
    """Rows and columns of a grid of ``count`` plots, at most ``columns`` wide."""
    columns = max(1, min(columns, count))
    return max(1, -(-count // columns)), columns


def steps_figure(samples: dict[int, torch.Tensor], path: Path, start: str = "prior") -> None:
    """The same chains at each recorded step, side by side, one panel per step.

    ``start`` names the sampler that drew step 0 (its recipe name).
    """
    steps = sorted(samples)
    figure = Figure(figsize=(2.6 * len(steps), 2.9))
    for i, t in enumerate(steps):
        x = samples[t]
        grid = make_grid(x.float().clamp(0, 1), nrow=max(1, round(len(x) ** 0.5)), padding=1)
        axis = figure.add_subplot(1, len(steps), i + 1)
        axis.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(f"step 0 ({start})" if t == 0 else f"step {t}")
        axis.axis("off")
    _save_figure(figure, path)


def tuning_figure(document: dict, path: Path) -> None:
    """The search's last round: the validation score of each configuration against the chain
    step, the paper's configuration dashed, the choice marked, steps flagged as copying hollow."""
    score = document["settings"]["score"]
    rounds = len(document["rounds"])
    figure = Figure(figsize=(7.5, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    choice = document["choice"]
    for c in document["candidates"]:
        if len(c["rounds"]) != rounds:
            continue
        last = c["rounds"][-1]
        steps = sorted(int(t) for t in last[score])
        values = [last[score][str(t)] for t in steps]
        (line,) = axis.plot(
            steps, values, "--" if c["paper"] else "-", label=c["label"] + (" (paper)" * c["paper"])
        )
        flagged = [t for t in steps if last["copying_flag"].get(str(t))]
        if flagged:
            axis.plot(
                flagged,
                [last[score][str(t)] for t in flagged],
                "o",
                mfc="none",
                color=line.get_color(),
            )
        if c["label"] == choice["label"]:
            axis.plot(
                [choice["steps"]],
                [last[score][str(choice["steps"])]],
                "*",
                ms=14,
                color=line.get_color(),
            )
    axis.set_xlabel("chain step")
    axis.set_ylabel(f"{score} to validation images")
    axis.set_title(f"last round ({document['rounds'][-1]['chains']} chains each); *: chosen")
    axis.legend(fontsize=7)
    _save_figure(figure, path)


def loss_figure(
    steps: list[dict], epochs: list[dict], path: Path, source: str = "the training log"
) -> bool:
    """Each loss against the optimiser step; False (and no file) when no loss has a number.

    A key is drawn from the step records that hold a finite number for it (records may differ
    in their keys); any other value is skipped.
    """
    keys = dict.fromkeys(k for r in steps for k in r if k not in ("event", "step", "epoch"))
    series: dict[str, tuple[list, list]] = {}
    for key in keys:
        train = [(r["step"], r[key]) for r in steps if is_finite(r.get(key))]
        if train:
            name = f"valid/{key}"
            valid = [(r["step"], r[name]) for r in epochs if is_finite(r.get(name))]
            series[key] = (train, valid)
    if not series:
        return False
    shown = list(series)[:MAX_PANELS]
    rows, columns = _panels(len(shown), 4)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    with _drawing(source):
        for i, key in enumerate(shown):
            train, valid = series[key]
            axis = figure.add_subplot(rows, columns, i + 1)
            axis.plot(*zip(*train), lw=0.8, label="train (step)")
            if valid:
                axis.plot(*zip(*valid), "o-", ms=3, label="valid (epoch)")
                axis.legend(fontsize=8)
            axis.set_title(key)
            axis.set_xlabel("optimiser step")
            if key == "reconstruction":
                axis.set_ylabel("nats per image")
                if any(v > 0 for _, v in train + valid):  # a log axis needs a positive value
                    axis.set_yscale("log")
    _save_figure(figure, path, source)
    return True


def metrics_png(runs: dict[str, dict], source: str) -> bytes:
    """Each metric against the chain step, one line (with its interval band) per run.

    Reports as :func:`aesampler.report.read_quality` returns them. At most ``MAX_PANELS``
    metrics are drawn; steps whose value or interval is not a finite number are left out.
    """
    keys = list(dict.fromkeys(k for report in runs.values() for k in report["metrics"]))
    keys = keys[:MAX_PANELS]
    rows, columns = _panels(len(keys), 3)
    figure = Figure(figsize=(4.2 * columns, 3.1 * rows))
    if not keys:
        figure.text(0.5, 0.5, "no metrics", ha="center", va="center")
    with _drawing(source):
        for i, key in enumerate(keys):
            axis = figure.add_subplot(rows, columns, i + 1)
            for label, report in runs.items():
                cells = report["metrics"].get(key, {})
                points = [
                    (s, c["value"], c["low"], c["high"])
                    for s in report["steps"]
                    if (c := cells.get(str(s))) and all(is_finite(c[f]) for f in INTERVAL)
                ]
                if not points:
                    continue
                steps, value, low, high = zip(*points)
                (line,) = axis.plot(steps, value, "o-", ms=3, label=label)
                axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
            better = next(
                (r["lower_is_better"].get(key) for r in runs.values() if key in r["metrics"]), None
            )
            axis.set_title(
                key + {True: " (lower is better)", False: " (higher is better)"}.get(better, "")
            )
            axis.set_xlabel("chain step")
            if len(runs) > 1 and i == 0 and axis.lines:
                axis.legend(fontsize=8)
    return png_bytes(figure, source, tight_layout=True)


def metrics_figure(runs: dict[str, dict], path: Path, source: str = "metrics.json") -> None:
    """Draw :func:`metrics_png` into ``path``."""
    data = metrics_png(runs, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def comparison_figure(comparison: dict, path: Path, source: str = "comparison.json") -> None:
    """Each metric against the chain step, one line (with its interval band) per sampler."""
    metrics_figure({row["label"]: row for row in comparison["samplers"]}, path, source)
