"""Measure sample quality at every evaluated chain step and write ``metrics.json``.

``evaluate(parts, run_dir)`` runs ``evaluate.num_chains`` fresh chains (seeded separately from
``sampling``) for max(``evaluate.steps``) steps, keeps z at every step and x at the evaluated
ones, and computes every configured metric with a bootstrap interval against held-out data. It
also reports chain diagnostics (R-hat and effective sample size over chains, per latent
coordinate, on the second half of the trajectory).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from arviz_stats.base import array_stats
from tqdm import tqdm

from ..chain import sampling_mode
from ..registry import Registry
from ..rundir import atomic_write_bytes
from .features import FeatureExtractor
from .metrics import EvaluationData, Metric, nearest_rms_distance


def _images(dataset, count: int, seed: int) -> torch.Tensor:
    """Up to ``count`` images of the dataset, a fixed random subset when it holds more."""
    if len(dataset) > count:
        index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        index = index.sort().values.tolist()
    else:
        index = range(len(dataset))
    return torch.stack([dataset[i][0] for i in index])


@torch.inference_mode()
def _encode(
    parts, images: torch.Tensor, batchnorm: str, seed: int, batch: int = 256
) -> torch.Tensor:
    """Draws from Q(z|x) for each image: a sample of P̂(Z) = ∫ Q(z|x) P(x) dx."""
    generator = torch.Generator(parts.device).manual_seed(seed)
    out = []
    with sampling_mode([parts.model], batchnorm):
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(parts.device)
            out.append(parts.model.encoder(x).sample(generator).float().cpu())
    return torch.cat(out)


MIN_DRAWS_FOR_ESS = 20


def diagnostics(z: dict[int, np.ndarray]) -> dict:
    """R-hat (rank-normalised, split) and bulk ESS over chains, per latent coordinate.

    Computed on the second half of the trajectory (steps T//2 .. T), the part that has had time
    to move away from the prior draws. R-hat needs at least 4 draws per chain; the ESS estimate
    needs a longer window (its autocorrelations are meaningless over a few draws, where the
    estimator returns its upper cap), so it is reported from 20 draws per chain on.
    """
    steps = sorted(z)
    window = steps[len(steps) // 2 :]
    if len(window) < 4:
        return {"note": f"needs at least 8 recorded steps for diagnostics, got {len(steps)}"}
    draws = np.stack([z[t] for t in window], axis=1)  # (chains, draws, D)
    rhat = array_stats.rhat(draws, chain_axis=0, draw_axis=1)
    result = {
        "window": [window[0], window[-1]],
        "chains": draws.shape[0],
        "rhat_median": float(np.nanmedian(rhat)),
        "rhat_max": float(np.nanmax(rhat)),
    }
    if len(window) >= MIN_DRAWS_FOR_ESS:
        ess = array_stats.ess(draws, chain_axis=0, draw_axis=1)
        result.update(ess_median=float(np.nanmedian(ess)), ess_min=float(np.nanmin(ess)))
    else:
        result["ess_note"] = (
            f"ESS needs at least {MIN_DRAWS_FOR_ESS} draws per chain in the window; evaluate "
            f"more steps (max(evaluate.steps) >= {2 * MIN_DRAWS_FOR_ESS - 1})"
        )
    return result


def evaluate(
    parts,
    run_dir: str | Path,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Compute the recipe's ``evaluate`` metrics for the trained model in ``parts``."""
    recipe, registry = parts.recipe, registry or parts.registry
    cfg, sampling = recipe.evaluate, recipe.sampling
    run_dir = Path(run_dir)
    metrics: list[tuple[str, Metric]] = [
        (spec.name, registry.create("metric", spec.name, **spec.params)) for spec in cfg.metrics
    ]
    extractor: FeatureExtractor = registry.create(
        "feature_extractor", cfg.feature_extractor.name, **cfg.feature_extractor.params
    )
    train_set = parts.dataset("train")
    reference_set = parts.dataset(cfg.reference_split)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir.parent / ".aesampler-cache"
    extractor_info = extractor.prepare(train_set, cache_dir, parts.device, log)

    reference = _images(reference_set, cfg.reference_size, cfg.seed)
    train_images = _images(train_set, cfg.train_size, cfg.seed)
    reference_z = _encode(parts, reference, sampling.batchnorm, cfg.seed)
    prior_z = torch.randn(
        len(reference_z),
        *reference_z.shape[1:],
        generator=torch.Generator().manual_seed(cfg.seed + 1),
    )

    last = max(cfg.steps)
    all_z: dict[int, list[torch.Tensor]] = {t: [] for t in range(last + 1)}
    bar = tqdm(desc="evaluation chains", unit="step", disable=not progress)

    def keep_z(step) -> None:
        all_z[step.step].append(step.z.float().cpu())
        bar.update(1)

    try:
        result = parts.chain.run(
            n=cfg.num_chains,
            steps=last,
            record=cfg.steps,
            chunk_size=sampling.chunk_size,
            batchnorm=sampling.batchnorm,
            seed=cfg.seed,
            out_device="cpu",
            callback=keep_z,
        )
    finally:
        bar.close()

    features: dict[int, np.ndarray] = {}

    def features_at(step: int) -> np.ndarray:
        if step not in features:
            features[step] = extractor(result.x[step]).double().numpy()
        return features[step]

    data = EvaluationData(
        z={t: torch.cat(v).double().numpy().reshape(cfg.num_chains, -1) for t, v in all_z.items()},
        images={t: result.x[t].flatten(1).double().numpy() for t in cfg.steps},
        features=features_at,
        reference_z=reference_z.double().numpy().reshape(len(reference_z), -1),
        prior_z=prior_z.double().numpy().reshape(len(prior_z), -1),
        reference_features=extractor(reference).double().numpy(),
        train_images=train_images.flatten(1).double().numpy(),
        resamples=cfg.bootstrap,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    values: dict[str, dict[str, dict]] = {}
    direction: dict[str, bool | None] = {}
    for _, metric in tqdm(metrics, desc="metrics", disable=not progress):
        for step in cfg.steps:
            for key, estimate in metric.compute(data, step).items():
                values.setdefault(key, {})[str(step)] = estimate.as_dict()
                direction[key] = metric.lower_is_better
    baseline = nearest_rms_distance(
        reference.flatten(1).double().numpy(), data.train_images, data.cache
    )
    spec = recipe.chain_corruption
    report = {
        "steps": list(cfg.steps),
        "metrics": values,
        "lower_is_better": direction,
        "diagnostics": diagnostics(data.z),
        "reference": {
            "split": cfg.reference_split,
            "images": len(reference),
            "train_images": len(train_images),
            "novelty_of_held_out_images": float(baseline.mean()),
        },
        "feature_extractor": extractor_info,
        "settings": cfg.model_dump(mode="json"),
        "model": {"kind": recipe.model.name, "checkpoint": str(parts.checkpoint)},
        "chain": {
            "corruption": spec.model_dump() if spec else None,
            "batchnorm": sampling.batchnorm,
            "chunk_size": sampling.chunk_size,
        },
    }
    atomic_write_bytes(run_dir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def format_table(report: dict) -> str:
    """Metrics by step as a plain-text table: value [low, high] at the configured confidence."""
    keys = list(report["metrics"])
    level = round(100 * report["settings"]["confidence"])
    header = ["step", *keys]
    rows = []
    for step in report["steps"]:
        row = [str(step)]
        for key in keys:
            cell = report["metrics"][key].get(str(step))
            row.append(
                f"{cell['value']:.4g} [{cell['low']:.3g}, {cell['high']:.3g}]" if cell else "-"
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join([*lines, f"(value [{level}% bootstrap interval])"])
