"""The run report: one ``report.html`` a person opens in a browser.

It is built from what the run directory holds (resolved recipe, metrics.jsonl, image grids,
checkpoint description) and links its pictures relatively, so the whole directory can be moved or
archived and the report still shows everything. Plots are drawn with matplotlib's Agg canvas.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .checkpoint import CheckpointError, find_checkpoint, read_info
from .errors import AesamplerError
from .rundir import (
    IMAGES,
    INTERPOLATION,
    INTERPOLATION_GRID,
    METRICS,
    OUTPUTS,
    RECIPE,
    REPORT,
    REPORT_ASSETS,
    SAMPLES,
    SETTINGS,
    TRAIN_LOG,
    RunDir,
    atomic_write_bytes,
    read_json,
)


class ReportError(AesamplerError):
    """A file the report or a comparison reads is missing or damaged."""


def _save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def steps_figure(samples: dict[int, torch.Tensor], path: Path) -> None:
    """The same chains at each recorded step, side by side, one panel per step."""
    steps = sorted(samples)
    figure = Figure(figsize=(2.6 * len(steps), 2.9))
    for i, t in enumerate(steps):
        x = samples[t]
        grid = make_grid(x.float().clamp(0, 1), nrow=max(1, round(len(x) ** 0.5)), padding=1)
        axis = figure.add_subplot(1, len(steps), i + 1)
        axis.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title("step 0 (prior)" if t == 0 else f"step {t}")
        axis.axis("off")
    _save_figure(figure, path)


def _read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    file = run_dir / TRAIN_LOG
    if not file.is_file():
        return [], []
    steps, epochs = [], []
    for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        (steps if record.get("event") == "step" else epochs).append(record)
    return steps, epochs


def loss_figure(steps: list[dict], epochs: list[dict], path: Path) -> None:
    keys = [k for k in steps[0] if k not in ("event", "step", "epoch")]
    figure = Figure(figsize=(4.2 * len(keys), 3.2))
    for i, key in enumerate(keys):
        axis = figure.add_subplot(1, len(keys), i + 1)
        axis.plot([r["step"] for r in steps], [r[key] for r in steps], lw=0.8, label="train (step)")
        valid = [(r["step"], r[f"valid/{key}"]) for r in epochs if f"valid/{key}" in r]
        if valid:
            axis.plot(*zip(*valid), "o-", ms=3, label="valid (epoch)")
            axis.legend(fontsize=8)
        axis.set_title(key)
        axis.set_xlabel("optimiser step")
        if key == "reconstruction":
            axis.set_ylabel("nats per image")
            axis.set_yscale("log")
    _save_figure(figure, path)


def _figure(src: str, caption: str) -> str:
    text = html.escape(caption)
    return f'<figure><img src="{quote(src)}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _settings(folder: Path) -> dict:
    file = folder / SETTINGS
    if not file.is_file():
        return {}
    settings = read_json(file, "settings of the outputs in that folder")
    if not isinstance(settings, dict):
        raise ReportError(f"{str(file)!r} does not hold settings (a JSON object)")
    return settings


def _spec(spec: dict | None) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in spec.items()) if spec else "none"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222;
       padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; font-size: 0.9rem; }
th { background: #f6f6f6; font-weight: 600; }
.grids { display: flex; flex-wrap: wrap; gap: 1rem; }
.grids figure { flex: 0 1 240px; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
"""


def metrics_figure(runs: dict[str, dict], path: Path) -> None:
    """Each metric against the chain step, one line (with its interval band) per run."""
    keys = list(dict.fromkeys(k for report in runs.values() for k in report["metrics"]))
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.1 * rows))
    for i, key in enumerate(keys):
        axis = figure.add_subplot(rows, columns, i + 1)
        for label, report in runs.items():
            cells = report["metrics"].get(key, {})
            steps = [s for s in report["steps"] if str(s) in cells]
            if not steps:
                continue
            value = [cells[str(s)]["value"] for s in steps]
            low = [cells[str(s)]["low"] for s in steps]
            high = [cells[str(s)]["high"] for s in steps]
            (line,) = axis.plot(steps, value, "o-", ms=3, label=label)
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        better = next(
            (r["lower_is_better"].get(key) for r in runs.values() if key in r["metrics"]), None
        )
        axis.set_title(
            key + {True: " (lower is better)", False: " (higher is better)"}.get(better, "")
        )
        axis.set_xlabel("chain step")
        if len(runs) > 1 and i == 0:
            axis.legend(fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)


def _quality_section(report: dict, name: str, assets: Path) -> str:
    metrics_figure({name: report}, assets / "metrics.png")
    keys = list(report["metrics"])
    level = round(100 * report["settings"]["confidence"])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", *keys])
    body = ""
    for step in report["steps"]:
        cells = []
        for key in keys:
            c = report["metrics"][key].get(str(step))
            cells.append(
                f"{c['value']:.4g} <small>[{c['low']:.3g}, {c['high']:.3g}]</small>" if c else "–"
            )
        body += f"<tr><th>{step}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    diag = report.get("diagnostics", {})
    extractor = report.get("feature_extractor", {})
    notes = [
        f"{report['settings']['num_chains']} chains against {report['reference']['images']} "
        f"held-out images ({report['reference']['split']} split); intervals: {level}% percentile "
        f"bootstrap ({report['settings']['bootstrap']} resamples).",
        f"Image metrics in the features of: {_spec(extractor)}.",
        "Novelty of held-out images (their distance to the nearest training image): "
        f"{report['reference']['novelty_of_held_out_images']:.4g}.",
    ]
    if "rhat_median" in diag:
        ess = (
            f"bulk ESS median {diag['ess_median']:.0f} (min {diag['ess_min']:.0f})"
            if "ess_median" in diag
            else diag.get("ess_note", "")
        )
        notes.append(
            f"Chain diagnostics over steps {diag['window'][0]}–{diag['window'][1]} of "
            f"{diag['chains']} chains: R-hat median {diag['rhat_median']:.3f} (max "
            f"{diag['rhat_max']:.3f}); {ess}."
        )
    return (
        "<h2>Sample quality by chain step</h2>"
        + _figure(
            f"{REPORT_ASSETS}/metrics.png",
            "Metrics against the chain step, with bootstrap intervals.",
        )
        + f"<table><tr>{head}</tr>{body}</table>"
        + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    )


def read_quality(path: Path) -> dict:
    """A ``metrics.json`` written by ``aesampler evaluate``, checked for what reports read."""
    report = read_json(path, "sample-quality metrics")
    problem = None
    if not isinstance(report, dict):
        problem = "it does not hold a JSON object"
    elif not isinstance(report.get("steps"), list) or not all(
        isinstance(s, int) for s in report["steps"]
    ):
        problem = "'steps' is not a list of step numbers"
    elif not isinstance(report.get("metrics"), dict):
        problem = "'metrics' is not an object"
    elif not isinstance(report.get("settings"), dict) or not isinstance(
        report["settings"].get("confidence"), (int, float)
    ):
        problem = "'settings.confidence' is missing"
    else:
        for key, cells in report["metrics"].items():
            ok = isinstance(cells, dict) and all(
                isinstance(c, dict)
                and all(isinstance(c.get(f), (int, float)) for f in ("value", "low", "high"))
                for c in cells.values()
            )
            if not ok:
                problem = f"metric {key!r} does not hold value/low/high numbers by step"
                break
    if problem:
        raise ReportError(
            f"{str(path)!r} is not aesampler sample-quality metrics: {problem}; re-create it "
            "with aesampler evaluate"
        )
    report.setdefault("lower_is_better", {})
    return report


def compare_runs(run_dirs: list[Path], out: Path | None = None) -> str:
    """Side-by-side metrics of several runs: a Markdown table per metric, and a plot."""
    runs = {}
    for run_dir in run_dirs:
        file = Path(run_dir) / METRICS
        if not file.is_file():
            raise ReportError(
                f"{str(file)!r} does not exist: run aesampler evaluate {run_dir} first"
            )
        runs[Path(run_dir).name] = read_quality(file)
    keys = list(dict.fromkeys(k for r in runs.values() for k in r["metrics"]))
    steps = sorted({s for r in runs.values() for s in r["steps"]})
    parts = []
    for key in keys:
        lines = [
            f"**{key}**",
            "",
            "| step | " + " | ".join(runs) + " |",
            "|---" * (len(runs) + 1) + "|",
        ]
        for step in steps:
            cells = []
            for report in runs.values():
                c = report["metrics"].get(key, {}).get(str(step))
                cells.append(f"{c['value']:.4g} [{c['low']:.3g}, {c['high']:.3g}]" if c else "–")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    text = "\n\n".join(parts) + "\n"
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ReportError(f"--out {str(out)!r} is a file, not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"cannot create {str(out)!r}: {error.strerror}") from None
        atomic_write_bytes(out / "compare.md", text.encode())
        metrics_figure(runs, out / "compare.png")
    return text


def _read_recipe(run_dir: Path) -> tuple[str, dict]:
    file = run_dir / RECIPE
    if not file.is_file():
        return "", {}
    try:
        text = file.read_bytes().decode("utf-8")
        recipe = yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise ReportError(f"{str(file)!r} is not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ReportError(f"{str(file)!r} is not valid YAML: {error}") from None
    if recipe is not None and not isinstance(recipe, dict):
        raise ReportError(f"{str(file)!r} does not hold a recipe (a mapping of sections)")
    return text, recipe or {}


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` for everything the run directory holds; return its path.

    Every file the report reads is checked first (a damaged one is one clear error, and the
    previous report stays); the page and its plots replace the old ones in one transaction.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ReportError(f"{str(run.path)!r} is not a run directory")
    run.check_replaceable("report", OUTPUTS["report"], overwrite=True)
    with run.transaction("report", list(OUTPUTS["report"])) as txn:
        return _write_report(run.path, txn.path(REPORT), txn.path(REPORT_ASSETS))


def _write_report(run_dir: Path, page_path: Path, assets: Path) -> Path:
    recipe_text, recipe = _read_recipe(run_dir)
    sections: list[str] = []

    summary: list[tuple[str, str]] = []
    model = recipe.get("model", {}) if recipe else {}
    if model:
        summary.append(
            ("model", ", ".join(f"{k}={_fmt(v)}" for k, v in model.items() if v is not None))
        )
    for key in ("data", "corruption"):
        summary.append((key, _spec(recipe.get(key) if recipe else None)))
    try:
        info = read_info(find_checkpoint(run_dir))
        summary.append(("checkpoint", f"step {info['step']}, epoch {info['epoch']}"))
    except CheckpointError:
        pass
    sampling = _settings(run_dir / SAMPLES)
    if sampling:
        corruption = sampling.get("chain_corruption")
        summary.append(
            (
                "sampling",
                f"{sampling['num_chains']} chains from {sampling['checkpoint']}, "
                f"{sampling['steps']} steps, chain corruption "
                f"{_spec(corruption)}, BN statistics: {sampling['batchnorm']}, "
                f"seed {sampling['seed']}",
            )
        )
    sections.append("<h2>Run</h2>" + _table(summary))

    samples = sorted((run_dir / SAMPLES).glob("step-*.png"))
    if samples:
        figures = []
        for file in samples:
            t = int(re.search(r"step-(\d+)", file.name).group(1))
            after = f"after {t} transition{'s' * (t != 1)}"
            caption = "step 0: decoded prior draws" if t == 0 else f"step {t}: {after}"
            figures.append(_figure(f"{SAMPLES}/{file.name}", caption))
        sections.append(
            "<h2>Samples along the chain</h2><p>Each grid shows the same chains in the same "
            "places: step 0 decodes draws from the prior N(0, I); step t decodes the latents "
            "after t decode–corrupt–encode transitions. Raw tensors: "
            "<code>samples/samples.safetensors</code>.</p>"
            f'<div class="grids">{"".join(figures)}</div>'
        )
    interpolation = run_dir / INTERPOLATION / INTERPOLATION_GRID
    if interpolation.is_file():
        cfg = _settings(run_dir / INTERPOLATION)
        caption = (
            f"{cfg.get('method', '?')} between encodings of test images: for each pair, the "
            f"first row decodes the interpolated latents, the second row the same latents after "
            f"{cfg.get('steps', '?')} chain steps."
        )
        sections.append(
            "<h2>Interpolation</h2>" + _figure(f"{INTERPOLATION}/{INTERPOLATION_GRID}", caption)
        )
    quality = run_dir / METRICS
    if quality.is_file():
        sections.append(_quality_section(read_quality(quality), run_dir.name, assets))
    steps, epochs = _read_metrics(run_dir)
    if steps:
        loss_figure(steps, epochs, assets / "losses.png")
        last = epochs[-1] if epochs else {}
        rows = [(k, _fmt(v)) for k, v in last.items() if k not in ("event",)]
        sections.append(
            "<h2>Training</h2>"
            + _figure(
                f"{REPORT_ASSETS}/losses.png",
                "Losses per optimiser step (nats per image for the reconstruction) and on the "
                "validation split after each epoch.",
            )
            + ("<h3>Last epoch</h3>" + _table(rows) if rows else "")
        )
        grids = sorted((run_dir / IMAGES).glob("epoch-*-samples.png"))
        if grids:
            tag = grids[-1].name.replace("-samples.png", "")
            sections.append(
                _figure(
                    f"{IMAGES}/{tag}-reconstructions.png",
                    f"{tag}: validation images (top row), their corrupted inputs (if the model "
                    "was trained with a corruption) and their reconstructions (bottom row)",
                )
            )
    if recipe_text:
        sections.append(f"<h2>Recipe</h2><pre>{html.escape(recipe_text)}</pre>")
    title = f"aesampler report: {run_dir.name}"
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections)
        + "</body></html>\n"
    )
    atomic_write_bytes(page_path, page.encode())
    return run_dir / REPORT
