"""The sampler comparison: which start sampler gives this model its best samples.

``aesampler compare-samplers RECIPE`` (and ``aesampler run`` with ``samplers.enabled``) fits
every sampler of ``samplers.compare`` on the trained model, runs ``evaluate.num_chains`` chains
from each, and measures them at ``samplers.steps`` (0: the sampler's draws decoded as they are)
with the ``evaluate`` section's metrics, feature extractor, reference images and seed. Every
sampler is measured against the same reference with the same chains' seed, so the numbers
compare. For each sampler it also records which step ``sampling.steps: auto``'s rule would stop
at (the first step after which the MMD of the latents to validation encodings stops falling),
so its choice can be checked against the step with the best Fréchet distance.

Files, in the run directory's ``samplers/`` (replaced as one, in a transaction)::

    comparison.json          every sampler's metrics by step, fit cost, auto step, ...
    comparison.png           each metric against the chain step, one line per sampler
    LABEL/samples.safetensors   z and x of every chain at every measured step (z/step-NNN, ...)
    LABEL/steps.png          the first samplers.grid_size chains at each measured step
    LABEL/settings.json      the sampler's section and what fitting it measured

LABEL is the sampler's name (with the batch-norm mode and chain corruption the entry sets, if
any: ``ex_post_gmm-running-none``), followed by ``-2``, ``-3``, ... when a name is compared
twice. Each entry runs its chains in its own batch-norm mode and corruption (``batchnorm``,
``corruption``; defaults ``sampling.batchnorm`` and the recipe's chain corruption).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .components import fit_sampler, sample_bytes
from .documents import Comparison
from .evaluation.copying import COPYING_THRESHOLD
from .evaluation.evaluate import Evaluator
from .evaluation.stopping import first_minimum, mmd_curve
from .resources import check_memory
from .rundir import (
    COMPARISON,
    COMPARISON_FIGURE,
    SAMPLERS,
    SAMPLES_TENSORS,
    SETTINGS,
    STEPS_FIGURE,
    RunDir,
    save_tensors,
    with_recipe,
    write_json,
    write_recipe,
)

FORMAT = "aesampler-sampler-comparison"
#: The metric whose best step the comparison reports (when the recipe measures it).
PRIMARY = "frechet"
#: The copying test's metric: a step whose C_T is below COPYING_THRESHOLD is flagged.
COPYING = "data_copying"


def entry_name(spec) -> str:
    """A sampler entry's name, with the batch-norm mode and corruption it sets, if any:
    ``ex_post_gmm``, ``ex_post_gmm-running``, ``prior-batch-none``."""
    return "-".join(part for part in (spec.name, spec.batchnorm, spec.corruption) if part)


def labels(names: list[str]) -> list[str]:
    """Folder names for the compared samplers: each name, with -2, -3, ... for repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def check_size(parts) -> None:
    """Refuse a comparison whose saved chains cannot fit in memory, before any work."""
    recipe = parts.recipe
    chains, last = recipe.evaluate.num_chains, max(recipe.samplers.steps)
    # One sampler at a time: z and x recorded at every step (for the auto step), and the
    # latents of every step kept once more for the MMD curve.
    latent = math.prod(parts.model.decoder.latent_shape)
    nbytes = sample_bytes(parts, chains, last + 1) + 4 * chains * (last + 1) * latent
    check_memory(nbytes, f"evaluate.num_chains={chains} with samplers.steps up to {last}")


@dataclass
class _Chains:
    """One sampler's chains, the step ``sampling.steps: auto`` would take, what was measured."""

    setting: tuple[str, str]
    result: object
    sample_stats: dict
    curve: dict
    auto: int
    steps: list[int]
    measured: dict
    seconds: float = 0.0


#: What a sampler's ``settings.json`` holds of its row.
_SETTINGS_KEYS = ("label", "sampler", "describes", "setting", "fit_seconds", "fit_stats")


def compare_samplers(
    parts,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit, run and measure every sampler of ``samplers.compare``; write ``samplers/``.

    Returns what ``samplers/comparison.json`` holds.
    """
    from .figures import comparison_figure  # matplotlib only when drawing

    cfg = parts.recipe.samplers
    run = RunDir(run_dir)
    run.check_replaceable("samplers", [SAMPLERS], overwrite)
    check_size(parts)
    evaluator = Evaluator(parts, run.path, log=log)
    names = labels([entry_name(spec) for spec in cfg.compare])
    rows = []
    measured = None
    with run.transaction("samplers", with_recipe(run, SAMPLERS)) as txn:
        folder = txn.path(SAMPLERS)
        folder.mkdir()
        for label, spec in zip(names, cfg.compare):
            row, measured = _compare_one(parts, evaluator, folder, label, spec, progress, log)
            rows.append(row)
        comparison = _comparison(parts, evaluator, rows, measured)
        write_json(folder / COMPARISON, Comparison.build(comparison))
        comparison_figure(comparison, folder / COMPARISON_FIGURE)
        write_recipe(parts.recipe, txn)
    run.record_components(comparison["components"])
    return comparison


def _compare_one(
    parts, evaluator: Evaluator, folder: Path, label: str, spec, progress: bool, log
) -> tuple[dict, dict]:
    """Fit one sampler, run and measure its chains, and save them in ``folder/label``.
    Returns its row of the comparison and what was measured."""
    log(f"sampler {label}: fitting")
    fitting: dict = {}
    sampler = fit_sampler(parts, spec, log, fitting)
    fit_stats = dict(sampler.stats)
    started = time.perf_counter()
    chains = _run_chains(parts, evaluator, sampler, spec, fit_stats, progress, log)
    chains.seconds = time.perf_counter() - started
    row = _row(label, spec, sampler, fitting, fit_stats, chains)
    _save(parts, folder / label, row, chains)
    log(f"sampler {label}: {_summary(row)}")
    return row, chains.measured


def _run_chains(
    parts, evaluator: Evaluator, sampler, spec, fit_stats: dict, progress: bool, log
) -> _Chains:
    """The sampler's chains to the last step of ``samplers.steps``, the step the auto rule
    takes, and the ``evaluate`` metrics at those steps."""
    cfg = parts.recipe.samplers
    last = max(cfg.steps)
    batchnorm, _ = setting = parts.setting(spec)
    result, latents = evaluator.run_chains(
        sampler, range(last + 1), progress=progress, setting=setting
    )
    sample_stats = {k: v for k, v in sampler.stats.items() if k not in fit_stats}
    valid = parts.sampler_context(log, batchnorm).encodings("valid")
    curve = mmd_curve(latents, valid)
    auto = first_minimum(curve)
    measured_steps = sorted({*cfg.steps, auto})
    measured = evaluator.measure(
        {t: result.x[t] for t in measured_steps},
        latents,
        progress=progress,
        batchnorm=batchnorm,
    )
    return _Chains(setting, result, sample_stats, curve, auto, measured_steps, measured)


def _row(label: str, spec, sampler, fitting: dict, fit_stats: dict, chains: _Chains) -> dict:
    """One sampler's row of ``comparison.json``."""
    batchnorm, corruption = chains.setting
    measured = chains.measured
    best = _best_step(measured, PRIMARY)
    return {
        "label": label,
        "sampler": spec.model_dump(mode="json"),
        "describes": sampler.describes,
        "setting": {"batchnorm": batchnorm, "corruption": corruption},
        "fit_seconds": fitting["fit_seconds"],
        "fit_loaded": fitting["loaded"],
        "fit_stats": fit_stats,
        "sample_stats": chains.sample_stats,
        "chain_seconds": chains.seconds,
        "steps": measured["steps"],
        "metrics": measured["metrics"],
        "lower_is_better": measured["lower_is_better"],
        "diagnostics": measured["diagnostics"],
        "auto": {
            "chosen": chains.auto,
            "mmd_learned_valid": {str(t): v for t, v in chains.curve.items()},
        },
        "best_step": {PRIMARY: best} if best is not None else {},
    }


def _save(parts, out: Path, row: dict, chains: _Chains) -> None:
    """A sampler's folder: its chains at the measured steps, their picture, its settings."""
    from .figures import steps_figure  # matplotlib only when drawing

    shown = min(parts.recipe.samplers.grid_size, parts.recipe.evaluate.num_chains)
    out.mkdir()
    save_tensors(chains.result.step_tensors(chains.steps), out / SAMPLES_TENSORS)
    steps_figure(
        {t: chains.result.x[t][:shown] for t in chains.steps}, out / STEPS_FIGURE, row["label"]
    )
    write_json(out / SETTINGS, {k: row[k] for k in _SETTINGS_KEYS})


def _comparison(parts, evaluator: Evaluator, rows: list[dict], measured: dict | None) -> dict:
    """What ``comparison.json`` holds: the settings, the reference, every sampler's row."""
    recipe = parts.recipe
    cfg, ev = recipe.samplers, recipe.evaluate
    reference = evaluator.reference_info(measured)
    return {
        "format": FORMAT,
        "settings": {
            "steps": cfg.steps,
            "num_chains": ev.num_chains,
            "bootstrap": ev.bootstrap,
            "confidence": ev.confidence,
            "seed": ev.seed,
            "batchnorm": recipe.sampling.batchnorm,
            "checkpoint": str(parts.checkpoint),
            "chain_corruption": (
                recipe.chain_corruption.model_dump() if recipe.chain_corruption else None
            ),
        },
        "reference": reference,
        "feature_extractor": evaluator.extractor_info,
        "samplers": rows,
        "components": parts.registry.provenance(
            [("sampler", spec.name) for spec in cfg.compare]
            + [("metric", spec.name) for spec in ev.metrics]
            + [("feature_extractor", ev.feature_extractor.name)]
        ),
    }


def _best_step(measured: dict, key: str) -> int | None:
    cells = measured["metrics"].get(key)
    if not cells:
        return None
    lower = measured["lower_is_better"].get(key, True)
    finite = {int(t): c["value"] for t, c in cells.items() if math.isfinite(c["value"])}
    if not finite:
        return None
    return (min if lower else max)(finite, key=finite.get)


def _summary(row: dict) -> str:
    cells = row["metrics"].get(PRIMARY, {})
    values = ", ".join(f"step {t}: {c['value']:.4g}" for t, c in cells.items())
    return (
        f"{PRIMARY} {values or 'not measured'}; auto step {row['auto']['chosen']}; "
        + ("loaded, " if row["fit_loaded"] else "")
        + f"fitted in {row['fit_seconds']:.1f}s"
    )


def format_comparison(comparison: dict) -> str:
    """The comparison as a plain-text table: the primary metric by sampler and step."""
    steps = comparison["settings"]["steps"]
    header = ["sampler", *[f"step {t}" for t in steps], "best", "auto"]
    lines = []
    for row in comparison["samplers"]:
        cells = row["metrics"].get(PRIMARY, {})
        line = [row["label"]]
        copying = row["metrics"].get(COPYING, {})
        for t in steps:
            c = cells.get(str(t))
            ct = copying.get(str(t), {}).get("value")
            flag = " !" if ct is not None and ct < COPYING_THRESHOLD else ""
            line.append(f"{c['value']:.4g} [{c['low']:.3g}, {c['high']:.3g}]{flag}" if c else "-")
        line += [str(row["best_step"].get(PRIMARY, "-")), str(row["auto"]["chosen"])]
        lines.append(line)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    level = round(100 * comparison["settings"]["confidence"])
    return "\n".join(
        [
            f"{PRIMARY} by sampler and chain step (value [{level}% bootstrap interval]); best: "
            f"the step with the best {PRIMARY}; auto: the step sampling.steps: auto would take; "
            f"!: copying (the {COPYING} metric's C_T < {COPYING_THRESHOLD:g})",
            *text,
        ]
    )
