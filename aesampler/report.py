"""The run report: one ``report.html`` a person opens in a browser.

It is built from what the run directory holds (resolved recipe, metrics.jsonl, image grids,
checkpoint description) and links its pictures relatively, so the whole directory can be moved or
archived and the report still shows everything. Plots are drawn with matplotlib's Agg canvas.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

import yaml

from . import documents
from .checkpoint import CheckpointError, find_checkpoint, read_info
from .errors import AesamplerError, quoted
from .evaluation.best import DIAGNOSTICS_MEANING, describe_best_steps
from .figures import (
    MAX_PANELS,
    is_finite,
    is_int,
    loss_figure,
    metrics_figure,
    metrics_png,
)
from .rundir import (
    CHECKPOINTS,
    CHOSEN_FIGURE,
    COMPARISON,
    COMPARISON_FIGURE,
    IMAGES,
    INPAINTING,
    INPAINTING_GRID,
    INTERPOLATION,
    INTERPOLATION_GRID,
    METRICS,
    OUTPUTS,
    PAPER_FIGURE,
    RECIPE,
    REPORT,
    REPORT_ASSETS,
    SAMPLERS,
    SAMPLES,
    SAMPLES_TENSORS,
    SETTINGS,
    STEPS_FIGURE,
    TRAIN_LOG,
    TUNING,
    TUNING_FIGURE,
    TUNING_FILE,
    RunDir,
    atomic_write_bytes,
    read_json,
)


class ReportError(AesamplerError):
    """A file the report or a comparison reads is missing or damaged."""


# ----------------------------------------------------------------------------------------------
# Reading the run directory: each JSON document is checked by its model (aesampler.documents).


def _read_json(path: Path, what: str):
    """``read_json``, with the JSON documents it lets through as Python errors made clear."""
    try:
        return read_json(path, what)
    except RecursionError:
        raise ReportError(f"{quoted(path)} ({what}) nests too deeply to be read") from None
    except ValueError as error:  # a number too long to convert, and the like
        raise ReportError(f"{quoted(path)} ({what}) cannot be read: {error}") from None


# ----------------------------------------------------------------------------------------------
# What the report reads and draws (the figures themselves: aesampler.figures)


def _read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The step and epoch records of the training log; lines that are not records are skipped."""
    file = run_dir / TRAIN_LOG
    if not file.is_file():
        return [], []
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ReportError(
            f"cannot read {quoted(file)} (the training log): {error.strerror}"
        ) from None
    steps, epochs = [], []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut short by a crash, or one that is not a record
        if not isinstance(record, dict) or not is_finite(record.get("step")):
            continue
        if not is_int(record["step"]):
            continue
        (steps if record.get("event") == "step" else epochs).append(record)
    return steps, epochs


def _auto_note(auto) -> str:
    """How ``steps: auto`` chose the steps, for the run table (empty when it did not)."""
    if not isinstance(auto, dict):
        return ""
    cap = auto.get("max_steps")
    return f" (chosen by steps: auto, at most {cap})" if is_int(cap) else " (chosen by steps: auto)"


def _figure(src: str, caption: str) -> str:
    text = html.escape(caption)
    return f'<figure><img src="{quote(src)}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _settings(folder: Path, model: type[documents.Document], command: str) -> dict:
    """``folder/settings.json`` checked as a ``model``, or {} when there is none."""
    file = folder / SETTINGS
    if not file.is_file():
        return {}
    settings = _read_json(file, "settings of the outputs in that folder")
    problem = documents.problem(model, settings)
    if problem:
        raise ReportError(
            f"{quoted(file)} does not hold the settings aesampler writes: {problem}; re-create it "
            f"with aesampler {command} {quoted(folder.parent)} --overwrite"
        )
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


def _quality_section(report: dict, name: str, assets: Path, source: str) -> str:
    keys = list(report["metrics"])
    parts = ["<h2>Sample quality by chain step</h2>"]
    if keys:
        metrics_figure({name: report}, assets / "metrics.png", source)
        more = len(keys) - MAX_PANELS
        parts.append(
            _figure(
                f"{REPORT_ASSETS}/metrics.png",
                "Metrics against the chain step, with bootstrap intervals."
                + (f" The table also shows {more} more metrics." if more > 0 else ""),
            )
        )
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", *keys])
        body = ""
        for step in report["steps"]:
            cells = []
            for key in keys:
                c = report["metrics"][key].get(str(step))
                cells.append(
                    f"{c['value']:.4g} <small>[{c['low']:.3g}, {c['high']:.3g}]</small>"
                    if c
                    else "–"
                )
            body += f"<tr><th>{step}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
        verdicts = describe_best_steps(report)
        if verdicts:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in verdicts)
            parts.append(f"<p>The best step by each metric:</p><ul class='best'>{items}</ul>")
    else:
        parts.append("<p>metrics.json holds no metric values (no metric was evaluated).</p>")
    settings, reference = report["settings"], report["reference"]
    level = round(100 * settings["confidence"])
    diag = report.get("diagnostics", {})
    extractor = report.get("feature_extractor", {})
    novelty = reference["novelty_of_held_out_images"]
    notes = [
        f"{settings['num_chains']} chains against {reference['images']} held-out images "
        f"({reference['split']} split); intervals: {level}% bootstrap "
        f"({settings['bootstrap']} resamples), moved from the resamples' median to the value "
        "(docs/evaluation.md).",
        f"Image metrics in the features of: {_spec(extractor)}.",
        "Novelty of held-out images (their distance to the nearest training image): "
        + (f"{novelty:.4g}." if novelty is not None else "not measured (no training images)."),
    ]
    start = report.get("chain", {}).get("start")
    if isinstance(start, dict):
        spec = {k: v for k, v in start.items() if k != "describes"}
        notes.append(
            f"Step 0: {start.get('describes', 'latents')} (sampler {_spec(spec)}). "
            "mmd_prior compares with the prior N(0, I) whatever the chains start from."
        )
    if "rhat_median" in diag:
        ess = (
            f"bulk ESS median {diag['ess_median']:.0f} (min {diag['ess_min']:.0f})"
            if "ess_median" in diag
            else diag.get("ess_note", "")
        )
        notes.append(
            f"Chain diagnostics over steps {diag['window'][0]}–{diag['window'][1]} of "
            f"{diag['chains']} chains: R-hat median {diag['rhat_median']:.3f} (max "
            f"{diag['rhat_max']:.3f}); {ess}. {DIAGNOSTICS_MEANING}"
        )
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    return "".join(parts)


def read_quality(path: Path) -> dict:
    """A ``metrics.json`` written by ``aesampler evaluate``, checked for what reports read."""
    report = _read_json(path, "sample-quality metrics")
    problem = documents.problem(documents.Metrics, report)
    if problem:
        raise ReportError(
            f"{quoted(path)} is not aesampler sample-quality metrics: {problem}; re-create it "
            "with aesampler evaluate"
        )
    report.setdefault("lower_is_better", {})
    return report


def read_comparison(path: Path) -> dict:
    """A ``samplers/comparison.json`` written by aesampler, checked for what reports read."""
    document = _read_json(path, "the sampler comparison")
    problem = documents.problem(documents.Comparison, document)
    if problem:
        raise ReportError(
            f"{quoted(path)} is not an aesampler sampler comparison: {problem}; re-create it "
            "with aesampler compare-samplers --overwrite"
        )
    return document


def _comparison_section(run_dir: Path) -> str:
    path = run_dir / SAMPLERS / COMPARISON
    comparison = read_comparison(path)
    settings = comparison["settings"]
    steps = settings["steps"]
    rows = comparison["samplers"]
    keys = list(dict.fromkeys(k for row in rows for k in row["metrics"]))
    primary = "frechet" if "frechet" in keys else (keys[0] if keys else None)
    parts = ["<h2>Samplers compared</h2>"]
    level = round(100 * settings["confidence"])
    novelty = comparison["reference"].get("novelty_of_held_out_images")
    parts.append(
        "<p>"
        + html.escape(
            f"Each sampler's draws (step 0) and the chain started from them, "
            f"{settings['num_chains']} chains each, measured against the same held-out images "
            f"with the evaluate section's metrics ({level}% bootstrap intervals). 'auto' is the "
            "step sampling.steps: auto would stop at for that sampler; 'best' the step with the "
            f"best {primary}."
            + (f" Novelty of held-out images: {novelty:.4g}." if is_finite(novelty) else "")
        )
        + "</p>"
    )
    if primary is not None:
        head = ["sampler", *[f"{primary} at step {t}" for t in steps], "best", "auto"]
        if "novelty" in keys:
            head.append("novelty at step 0")
        head.append("fitted in")
        body = ""
        for row in rows:
            cells = []
            for t in steps:
                c = row["metrics"].get(primary, {}).get(str(t))
                cells.append(
                    f"{c['value']:.4g} <small>[{c['low']:.3g}, {c['high']:.3g}]</small>"
                    if c
                    else "–"
                )
            cells += [
                html.escape(str(row["best_step"].get(primary, "–"))),
                html.escape(str(row["auto"]["chosen"])),
            ]
            if "novelty" in keys:
                c = row["metrics"].get("novelty", {}).get("0")
                cells.append(f"{c['value']:.4g}" if c else "–")
            cells.append(
                f"{row['fit_seconds']:.1f} s" + (" (saved fit)" if row.get("fit_loaded") else "")
            )
            label = html.escape(row["label"])
            spec = html.escape(_spec(row["sampler"]))
            body += (
                f"<tr><th>{label}<br><small>{spec}</small></th>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
        heading = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        parts.append(f"<table><tr>{heading}</tr>{body}</table>")
    if (run_dir / SAMPLERS / COMPARISON_FIGURE).is_file():
        parts.append(
            _figure(
                f"{SAMPLERS}/{COMPARISON_FIGURE}",
                "Each metric against the chain step, one line per sampler (bands: bootstrap "
                "intervals). Step 0 is the sampler's draws decoded as they are.",
            )
        )
    grids = [
        _figure(f"{SAMPLERS}/{row['label']}/{STEPS_FIGURE}", f"{row['label']}: {row['describes']}")
        for row in rows
        if (run_dir / SAMPLERS / row["label"] / STEPS_FIGURE).is_file()
    ]
    if grids:
        parts.append("".join(grids))
    return "".join(parts)


def _tuning_section(run_dir: Path) -> str:
    path = run_dir / TUNING / TUNING_FILE
    document = _read_json(path, "the search behind sampling.start: auto")
    problem = documents.problem(documents.Tuning, document)
    if problem:
        raise ReportError(
            f"{quoted(path)} is not a search aesampler tune wrote: {problem}; re-create it with "
            "aesampler tune --overwrite"
        )
    try:  # what the model leaves open (the scores by step, the yardstick) is read with care
        return _tuning_html(document)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise ReportError(
            f"{quoted(path)} is not a search aesampler tune wrote ({type(error).__name__}: "
            f"{error}); re-create it with aesampler tune --overwrite"
        ) from None


def _cell(cell: dict | None) -> str:
    if not isinstance(cell, dict):
        return "–"
    return f"{cell['value']:.4g} <small>[{cell['low']:.3g}, {cell['high']:.3g}]</small>"


def _tuning_html(document: dict) -> str:
    # Every key read in the same order as before the split, so a malformed search fails on the
    # same key (ReportError names it).
    settings, choice, paper, test = (
        document["settings"],
        document["choice"],
        document["paper"],
        document["test"],
    )
    score = settings["score"]
    steps = list(range(int(settings["max_steps"]) + 1))
    rounds = document["rounds"]
    threshold = settings["copying_threshold"]
    cost = document["cost"]
    parts = ["<h2>How this model samples best (sampling.start: auto)</h2>"]
    parts.append(_tuning_summary(document, settings, choice, cost, rounds, steps))
    # The chosen configuration beside the paper's, on the test split.
    parts.append(_tuning_test_table(test))
    figures = [
        _figure(f"{TUNING}/{CHOSEN_FIGURE}", f"chosen: {choice['label']} (test chains)"),
        _figure(f"{TUNING}/{PAPER_FIGURE}", f"the paper's: {paper['label']} (test chains)"),
    ]
    parts.append(f'<div class="grids">{"".join(figures)}</div>')
    # The grid's last round, on the validation split.
    parts.append(_tuning_last_round(document, choice, rounds, steps, score, threshold))
    parts.append(
        _figure(
            f"{TUNING}/{TUNING_FIGURE}",
            "The last round: each configuration's validation score against the chain step.",
        )
    )
    return "".join(parts)


def _tuning_summary(
    document: dict, settings: dict, choice: dict, cost: dict, rounds: list, steps: list[int]
) -> str:
    """The search in one paragraph: its grid, its rounds, the choice and what it cost."""
    return (
        "<p>"
        + html.escape(
            f"{len(document['candidates'])} configurations (start sampler × batch-norm mode × "
            f"chain corruption) × steps 0–{steps[-1]}, scored by {settings['score']} to "
            f"{settings['reference_size']} validation images; successive halving over "
            f"{len(rounds)} rounds of {', '.join(str(r['chains']) for r in rounds)} chains. "
            f"Chosen: {choice['label']} at step {choice['steps']}. The test split was read only "
            f"after the choice. Cost: {cost['search_seconds']:.0f} s of search "
            f"({cost['fit_seconds']:.0f} s fitting), {cost['test_seconds']:.0f} s on the test "
            "split."
            + (
                ""
                if settings.get("copying_test")
                else " No copying test was registered (the data_copying metric)."
            )
        )
        + "</p>"
    )


def _tuning_test_table(test: dict) -> str:
    """The chosen configuration's and the paper's metrics on the test split."""
    keys = [k for k in test["chosen"]["metrics"] if k in test["paper"]["metrics"]]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["on the test split", "step", *keys])
    body = ""
    for name in ("chosen", "paper"):
        entry = test[name]
        cells = [_cell(entry["metrics"][k].get(str(entry["step"]))) for k in keys]
        title = "chosen" if name == "chosen" else "the paper's"
        body += (
            f"<tr><th>{title}<br><small>{html.escape(entry['label'])}</small></th>"
            f"<td>{entry['step']}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    return f"<table><tr>{head}</tr>{body}</table>"


def _tuning_last_round(
    document: dict, choice: dict, rounds: list, steps: list[int], score: str, threshold: float
) -> str:
    """The finalists' validation scores by step, best first, with the yardstick."""
    yard = document["yardstick"]
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ["configuration", *[f"step {t}" for t in steps], "novelty (best step)"]
    )
    body = ""
    finalists = [c for c in document["candidates"] if len(c["rounds"]) == len(rounds)]
    for c in sorted(finalists, key=lambda c: min(c["rounds"][-1][score].values())):
        last = c["rounds"][-1]
        cells = []
        for t in steps:
            value = last[score].get(str(t))
            flag = " ⚑" if last["copying_flag"].get(str(t)) else ""
            mark = " ★" if c["label"] == choice["label"] and t == choice["steps"] else ""
            cells.append("–" if value is None else f"{value:.4g}{flag}{mark}")
        best = min(last[score], key=last[score].get)
        novelty = last["novelty"].get(best)
        cells.append("–" if novelty is None else f"{novelty:.4g}")
        label = html.escape(c["label"] + (" (paper)" if c["paper"] else ""))
        body += f"<tr><th>{label}</th>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"
    return (
        f"<p>{html.escape(score)} to validation images in the last round "
        f"({rounds[-1]['chains']} chains each); ★ chosen, ⚑ flagged as copying (C_T &lt; "
        f"{threshold:g}, or novelty below the yardstick's) and never chosen. The yardstick, "
        "validation images encoded and decoded: "
        + html.escape(
            "; ".join(
                f"{mode} BN: {score} {v.get(score, float('nan')):.4g}, novelty "
                f"{v.get('novelty', float('nan')):.4g}"
                for mode, v in yard.items()
            )
        )
        + f".</p><table><tr>{head}</tr>{body}</table>"
    )


COMPARE_FILES = ("compare.md", "compare.png")


def _check_compare_out(out: Path, overwrite: bool) -> None:
    """Raise unless ``compare.md`` and ``compare.png`` may be written into ``out``."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {quoted(out)} is a file, not a folder")
    for name in COMPARE_FILES:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            raise ReportError(
                f"{quoted(target)} is a folder, where compare writes a file; move it away, or "
                "choose another --out folder"
            )
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise ReportError(
                f"{quoted(target)} already exists; pass --overwrite to replace "
                f"{' and '.join(COMPARE_FILES)} in {quoted(out)}, or choose another --out folder"
            )


def compare_runs(run_dirs: list[Path], out: Path | None = None, overwrite: bool = False) -> str:
    """Side-by-side metrics of several runs: a Markdown table per metric, and a plot.

    With ``out``, ``compare.md`` and ``compare.png`` are written there; files of those names
    that exist already are replaced only with ``overwrite``.
    """
    if out is not None:
        out = Path(out)
        _check_compare_out(out, overwrite)
    runs: dict[str, dict] = {}
    files = []
    for run_dir in run_dirs:
        file = Path(run_dir) / METRICS
        if not file.is_file():
            raise ReportError(
                f"{quoted(file)} does not exist: run aesampler evaluate {run_dir} first"
            )
        label = Path(run_dir).name or str(run_dir)
        if label in runs:  # two runs of one name: tell them apart by the path given
            label = str(run_dir)
        while label in runs:
            label += "'"
        runs[label] = read_quality(file)
        files.append(file)
    keys = list(dict.fromkeys(k for r in runs.values() for k in r["metrics"]))
    if not keys:
        raise ReportError(
            f"no metric values to compare: {', '.join(repr(str(f)) for f in files)} hold none "
            "(their 'metrics' are empty)"
        )
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
        picture = metrics_png(runs, ", ".join(repr(str(f)) for f in files))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"cannot create {quoted(out)}: {error.strerror}") from None
        atomic_write_bytes(out / "compare.md", text.encode())
        atomic_write_bytes(out / "compare.png", picture)
    return text


RECIPE_SECTIONS = ("model", "data", "corruption")
"""The sections of ``recipe.yaml`` whose keys the report lists (each a mapping, or null)."""


def _read_recipe(run_dir: Path) -> tuple[str, dict]:
    file = run_dir / RECIPE
    if not file.is_file():
        return "", {}
    try:
        text = file.read_bytes().decode("utf-8")
        recipe = yaml.safe_load(text)
    except OSError as error:
        raise ReportError(f"cannot read {quoted(file)}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ReportError(f"{quoted(file)} is not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ReportError(f"{quoted(file)} is not valid YAML: {error}") from None
    except RecursionError:
        raise ReportError(f"{quoted(file)} nests too deeply to be a recipe") from None
    if recipe is not None and not isinstance(recipe, dict):
        raise ReportError(f"{quoted(file)} does not hold a recipe (a mapping of sections)")
    recipe = recipe or {}
    for key in RECIPE_SECTIONS:
        section = recipe.get(key)
        if section is not None and not isinstance(section, dict):
            raise ReportError(
                f"{quoted(file)} is not a recipe aesampler wrote: its section {key!r} is not a "
                f"mapping of keys to values (it holds {documents.shown(section)}); it was edited "
                "or damaged"
            )
    return text, recipe


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` for everything the run directory holds; return its path.

    Every file the report reads is checked first (a damaged one is one clear error, and the
    previous report stays); the page and its plots replace the old ones in one transaction.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ReportError(f"{quoted(run.path)} is not a run directory")
    run.check_replaceable("report", OUTPUTS["report"], overwrite=True)
    with run.transaction("report", list(OUTPUTS["report"])) as txn:
        return _write_report(run.path, txn.path(REPORT), txn.path(REPORT_ASSETS))


_SAMPLE_GRID = re.compile(r"step-(\d+)\.png")
"""The grid of the samples at one chain step (``samples/step-006.png``)."""


def _checkpoint_row(run_dir: Path) -> tuple[str, str] | None:
    """The checkpoint line of the summary: None when the run holds no checkpoint."""
    try:
        info = read_info(find_checkpoint(run_dir))
    except CheckpointError as error:
        if (run_dir / CHECKPOINTS).exists():
            return ("checkpoint", f"unreadable: {error}")
        return None  # the chains ran from a checkpoint elsewhere
    except (ValueError, RecursionError) as error:  # JSON that json.loads cannot hold
        return ("checkpoint", f"unreadable: {type(error).__name__}")
    return ("checkpoint", f"step {info.get('step', '?')}, epoch {info.get('epoch', '?')}")


def _inpainting_section(run_dir: Path) -> str:
    cfg = _settings(run_dir / INPAINTING, documents.InpaintingSettings, "inpaint")
    mask, steps = cfg["mask"], cfg["steps_recorded"]
    caption = (
        f"A row per test image: the image, the masked image the chain starts from (hidden "
        f"pixels set to {_fmt(cfg['fill'])}), then the fill after "
        + ", ".join(map(str, steps))
        + " pseudo-Gibbs steps; the observed pixels are the image's own."
    )
    rows = [
        ("mask", f"missing: {mask['missing']}, fraction {_fmt(mask['fraction'])}"),
        (f"constant fill {_fmt(cfg['fill'])} (no model)", _fmt(cfg["fill_mse"])),
    ]
    rows += [(f"step {t}", _fmt(v)) for t, v in cfg["masked_mse"].items()]
    return (
        "<h2>Inpainting</h2><p>The chain fills in the hidden part of held-out images, the "
        "observed pixels re-imposed after every decode. Mean squared error of the hidden pixels "
        "against the true image, by step (per-chain values and the images at every recorded "
        f"step: <code>{INPAINTING}/</code>):</p>"
        + _table(rows)
        + _figure(f"{INPAINTING}/{INPAINTING_GRID}", caption)
    )


def _write_report(run_dir: Path, page_path: Path, assets: Path) -> Path:
    """The page: one section per output the run directory holds, in a fixed order."""
    recipe_text, recipe = _read_recipe(run_dir)
    summary, sampling = _run_section(run_dir, recipe)
    sections = [summary, _samples_section(run_dir, sampling), _interpolation_section(run_dir)]
    if (run_dir / INPAINTING / INPAINTING_GRID).is_file():
        sections.append(_inpainting_section(run_dir))
    quality = run_dir / METRICS
    if quality.is_file():
        report = read_quality(quality)
        sections.append(_quality_section(report, run_dir.name, assets, repr(str(quality))))
    if (run_dir / SAMPLERS / COMPARISON).is_file():
        sections.append(_comparison_section(run_dir))
    if (run_dir / TUNING / TUNING_FILE).is_file():
        sections.append(_tuning_section(run_dir))
    sections.append(_training_section(run_dir, assets))
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


def _run_section(run_dir: Path, recipe: dict) -> tuple[str, dict]:
    """The run's table (model, data, corruption, checkpoint, sampling), and the samples'
    settings (empty when there are none)."""
    summary: list[tuple[str, str]] = []
    model = recipe.get("model") or {}
    if model:
        summary.append(
            ("model", ", ".join(f"{k}={_fmt(v)}" for k, v in model.items() if v is not None))
        )
    for key in ("data", "corruption"):
        summary.append((key, _spec(recipe.get(key))))
    checkpoint = _checkpoint_row(run_dir)
    if checkpoint:
        summary.append(checkpoint)
    sampling = _settings(run_dir / SAMPLES, documents.SampleSettings, "sample")
    if sampling:
        corruption = sampling.get("chain_corruption")
        summary.append(
            (
                "sampling",
                f"{sampling['num_chains']} chains from {sampling['checkpoint']}, "
                f"{sampling['steps']} steps{_auto_note(sampling.get('steps_auto'))}, "
                "chain corruption "
                f"{_spec(corruption)}, BN statistics: {sampling['batchnorm']}, "
                f"seed {sampling['seed']}, start: {_spec(sampling.get('start'))}",
            )
        )
    return "<h2>Run</h2>" + _table(summary), sampling


def _samples_section(run_dir: Path, sampling: dict) -> str:
    samples = sorted(
        (int(match.group(1)), file.name)
        for file in (run_dir / SAMPLES).glob("step-*.png")
        if (match := _SAMPLE_GRID.fullmatch(file.name)) and file.is_file()
    )
    if not samples:
        return ""
    figures = []
    start = sampling.get("start_describes", "decoded prior draws")
    origin = (
        "draws from the prior N(0, I)"
        if start == "decoded prior draws"
        else f"{start} (sampler {_spec(sampling.get('start'))})"
    )
    for t, name in samples:
        after = f"after {t} transition{'s' * (t != 1)}"
        caption = f"step 0: {start}" if t == 0 else f"step {t}: {after}"
        figures.append(_figure(f"{SAMPLES}/{name}", caption))
    tensors = sorted(p.name for p in (run_dir / SAMPLES).glob("samples*.safetensors"))
    if len(tensors) > 1:
        raw = (
            f"<code>samples/{html.escape(tensors[0])}</code> to "
            f"<code>samples/{html.escape(tensors[-1])}</code> ({len(tensors)} shards)"
        )
    else:
        raw = f"<code>samples/{html.escape(tensors[0] if tensors else SAMPLES_TENSORS)}</code>"
    return (
        "<h2>Samples along the chain</h2><p>Each grid shows the same chains in the same "
        f"places: step 0 decodes {html.escape(origin)}; step t decodes the latents "
        f"after t decode–corrupt–encode transitions. Raw tensors: {raw}.</p>"
        f'<div class="grids">{"".join(figures)}</div>'
    )


def _interpolation_section(run_dir: Path) -> str:
    if not (run_dir / INTERPOLATION / INTERPOLATION_GRID).is_file():
        return ""
    cfg = _settings(run_dir / INTERPOLATION, documents.InterpolationSettings, "interpolate")
    caption = (
        f"{cfg.get('method', '?')} between encodings of test images: for each pair, the "
        f"first row decodes the interpolated latents, the second row the same latents after "
        f"{cfg.get('steps', '?')} chain steps."
    )
    return "<h2>Interpolation</h2>" + _figure(f"{INTERPOLATION}/{INTERPOLATION_GRID}", caption)


def _training_section(run_dir: Path, assets: Path) -> str:
    """The losses (drawn into ``assets``), the last epoch's numbers and its reconstructions."""
    steps, epochs = _read_metrics(run_dir)
    if not steps:
        return ""
    plotted = loss_figure(steps, epochs, assets / "losses.png", repr(str(run_dir / TRAIN_LOG)))
    last = epochs[-1] if epochs else {}
    rows = [(k, _fmt(v)) for k, v in last.items() if k not in ("event",)]
    figure = _figure(
        f"{REPORT_ASSETS}/losses.png",
        "Losses per optimiser step (nats per image for the reconstruction) and on the "
        "validation split after each epoch.",
    )
    section = (
        "<h2>Training</h2>"
        + (figure if plotted else "<p>The training log holds no loss values.</p>")
        + ("<h3>Last epoch</h3>" + _table(rows) if rows else "")
    )
    grids = sorted((run_dir / IMAGES).glob("epoch-*-samples.png"))
    if grids:
        tag = grids[-1].name.replace("-samples.png", "")
        section += _figure(
            f"{IMAGES}/{tag}-reconstructions.png",
            f"{tag}: validation images (top row), their corrupted inputs (if the model "
            "was trained with a corruption) and their reconstructions (bottom row)",
        )
    return section
