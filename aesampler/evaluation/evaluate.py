"""Measure sample quality at every evaluated chain step and write ``metrics.json``.

``evaluate(parts, run_dir)`` runs ``evaluate.num_chains`` fresh chains (seeded separately from
``sampling``) for max(``evaluate.steps``) steps, keeps z at every step and x at the evaluated
ones, and computes every configured metric with a bootstrap interval against held-out data. It
also reports chain diagnostics (R-hat and effective sample size over chains, per latent
coordinate, on the second half of the trajectory).

``evaluate_samples(samples, reference, ...)`` computes the same report for images that come from
anywhere: no model, recipe or run directory. Both compute their numbers in :func:`measure`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .. import distributed
from ..chain import ChainResult, shard_bounds
from ..errors import AesamplerError, named
from ..registry import Registry
from ..samplers.base import encode_images
from .features import FeatureExtractor
from .metrics import EvaluationData, Metric, nearest_rms_distance


def _images(dataset, count: int, seed: int, what: str) -> torch.Tensor:
    """Up to ``count`` images of the dataset, a fixed random subset when it holds more."""
    if len(dataset) == 0:
        raise AesamplerError(f"{what} holds no images")
    if len(dataset) > count:
        index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        index = index.sort().values.tolist()
    else:
        index = range(len(dataset))
    return torch.stack([dataset[i][0] for i in index])


MIN_DRAWS_FOR_ESS = 20


def _summary(values: np.ndarray, name: str, extreme: str) -> dict[str, float]:
    """Median and ``extreme`` ("min" or "max") over the coordinates where a statistic is defined.

    Coordinates that never move within any chain give 0 / 0 (NaN) and are left out.
    """
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return {}
    return {
        f"{name}_median": float(np.median(defined)),
        f"{name}_{extreme}": float(getattr(np, extreme)(defined)),
    }


def diagnostics(z: dict[int, np.ndarray]) -> dict:
    """R-hat (rank-normalised, split) and bulk ESS over chains, per latent coordinate.

    Computed on the second half of the trajectory (steps T//2 .. T), the part that has had time
    to move away from the prior draws. R-hat needs at least 4 draws per chain; the ESS estimate
    needs a longer window (its autocorrelations are meaningless over a few draws, where the
    estimator returns its upper cap), so it is reported from 20 draws per chain on. Coordinates
    that do not vary within the chains have no R-hat or ESS and are left out of the summaries.
    """
    steps = sorted(z)
    window = steps[len(steps) // 2 :]
    if len(window) < 4:
        return {"note": f"needs at least 8 recorded steps for diagnostics, got {len(steps)}"}
    draws = np.stack([z[t] for t in window], axis=1)  # (chains, draws, D)
    if draws.shape[0] < 2:
        return {"note": f"needs at least 2 chains for diagnostics, got {draws.shape[0]}"}
    from arviz_stats.base import array_stats  # imports SciPy: only when diagnosing

    result: dict[str, Any] = {"window": [window[0], window[-1]], "chains": draws.shape[0]}
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant coordinates give 0 / 0
        rhat = _summary(
            np.asarray(array_stats.rhat(draws, chain_axis=0, draw_axis=1)), "rhat", "max"
        )
        ess = (
            _summary(np.asarray(array_stats.ess(draws, chain_axis=0, draw_axis=1)), "ess", "min")
            if len(window) >= MIN_DRAWS_FOR_ESS
            else None
        )
    if not rhat:
        result["note"] = "no latent coordinate varies within the chains: R-hat and ESS undefined"
        return result
    result.update(rhat)
    if ess is not None:
        result.update(ess)
    else:
        more = named(
            "evaluate.steps", 2 * MIN_DRAWS_FOR_ESS - 1, recipe="max(evaluate.steps) >= {value}"
        )
        result["ess_note"] = (
            f"ESS needs at least {MIN_DRAWS_FOR_ESS} draws per chain in the window: record "
            f"more steps ({more})"
        )
    return result


# ---------------------------------------------------------------------------------------------
# The one implementation of the numbers


def metric_inputs(metric: Metric) -> set[str]:
    """The optional EvaluationData inputs a metric reads: ``requires``, and z for latent space."""
    needed = set(getattr(metric, "requires", ()))
    if getattr(metric, "space", "latent") == "latent":
        needed.add("z")
    return needed


def uses_features(metrics: Iterable[tuple[str, Metric]]) -> bool:
    """Whether any metric is image-space, so the feature extractor must be prepared and run.

    When every metric is latent-space, no classifier is trained or loaded and no image passes
    through the extractor.
    """
    return any(getattr(metric, "space", "latent") == "image" for _, metric in metrics)


#: What metrics.json says of a feature extractor that no metric needed.
UNUSED_EXTRACTOR = "not prepared: every metric is latent-space"


def check_sample_sizes(
    metrics: list[tuple[str, Metric]],
    samples: Mapping[int, int],
    others: Mapping[str, int | None],
    labels: Mapping[str, str],
) -> None:
    """Raise if a metric needs more rows (``min_samples``) than a data set it compares has.

    ``samples`` counts the samples by step; ``others`` the rows of "reference", "reference_z"
    and "train_images" (None: not given); ``labels`` names each for the message.
    """
    for name, metric in metrics:
        need = int(getattr(metric, "min_samples", 1))
        found = [(labels["samples"].format(step=t), n) for t, n in samples.items()]
        compared = ["reference"] if getattr(metric, "space", "latent") == "image" else []
        compared += sorted(metric_inputs(metric) & {"reference_z", "train_images"})
        found += [(labels[key], others[key]) for key in compared if others.get(key) is not None]
        for label, count in found:
            if count < need:
                why = f" (k={metric.k} needs k + 1)" if hasattr(metric, "k") else ""
                raise AesamplerError(
                    f"metric {name!r} needs at least {need} samples in each set it compares"
                    f"{why}, got {count} in {label}"
                )


def check_finite(x: Tensor, label: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise AesamplerError(f"{label}: {bad} of {x.numel()} values are NaN or infinite")


def _rows(x: Tensor) -> np.ndarray:
    return x.double().numpy().reshape(len(x), -1)


def _check_measured(
    samples: Mapping[int, Tensor],
    steps: list[int],
    reference: Tensor,
    metrics: list[tuple[str, Metric]],
    *,
    train: Tensor | None,
    latents: Mapping[int, Tensor] | None,
    reference_latents: Tensor | None,
    labels: Mapping[str, str],
) -> None:
    """Raise if a metric lacks rows or a sample or latent is NaN or infinite."""
    check_sample_sizes(
        metrics,
        {t: len(samples[t]) for t in steps},
        {
            "reference": len(reference),
            "reference_z": None if reference_latents is None else len(reference_latents),
            "train_images": None if train is None else len(train),
        },
        labels,
    )
    for t in steps:
        check_finite(samples[t], labels["samples"].format(step=t))
    for t, v in (latents or {}).items():
        check_finite(v, labels["latents"].format(step=t))


def _evaluation_data(
    samples: Mapping[int, Tensor],
    steps: list[int],
    reference: Tensor,
    metrics: list[tuple[str, Metric]],
    extractor: FeatureExtractor,
    *,
    train: Tensor | None,
    latents: Mapping[int, Tensor] | None,
    reference_latents: Tensor | None,
    prior_latents: Tensor | None,
    bootstrap: int,
    confidence: float,
    seed: int,
) -> EvaluationData:
    """What the metrics read; the samples' and training images' features only when asked for."""
    features: dict[int, np.ndarray] = {}
    featured = uses_features(metrics)

    def features_at(step: int) -> np.ndarray:
        if not featured:
            raise AesamplerError(
                "features were read, but every metric of this evaluation is latent-space, so no "
                "feature extractor was prepared; declare the metric space = 'image'"
            )
        if step not in features:  # once per step, shared by every image metric
            features[step] = extractor(samples[step]).double().numpy()
        return features[step]

    train_rows: list[np.ndarray] = []

    def train_features() -> np.ndarray:
        if not train_rows:  # once, for every metric and step that reads them
            train_rows.append(extractor(train).double().numpy())
        return train_rows[0]

    return EvaluationData(
        z={t: _rows(v) for t, v in latents.items()} if latents is not None else {},
        images={t: samples[t].flatten(1).double().numpy() for t in steps},
        features=features_at,
        reference_z=None if reference_latents is None else _rows(reference_latents),
        prior_z=None if prior_latents is None else _rows(prior_latents),
        reference_features=(
            extractor(reference).double().numpy() if featured else np.empty((len(reference), 0))
        ),
        train_images=None if train is None else train.flatten(1).double().numpy(),
        resamples=bootstrap,
        confidence=confidence,
        seed=seed,
        train_features=train_features if train is not None and featured else None,
    )


def _compute_metrics(
    metrics: list[tuple[str, Metric]], data: EvaluationData, steps: list[int], progress: bool
) -> tuple[dict[str, dict[str, dict]], dict[str, bool | None]]:
    """Each metric's estimates by key and step, and whether each key is lower-is-better."""
    values: dict[str, dict[str, dict]] = {}
    direction: dict[str, bool | None] = {}
    for _, metric in tqdm(metrics, desc="metrics", disable=not progress):
        for step in steps:
            for key, estimate in metric.compute(data, step).items():
                values.setdefault(key, {})[str(step)] = estimate.as_dict()
                direction[key] = metric.lower_is_better
    return values, direction


def _prior_draws(
    latents: Mapping[int, Tensor], reference_latents: Tensor | None, seed: int
) -> Tensor:
    """N(0, I) draws seeded with ``seed + 1``, as many as the reference latents (else samples)."""
    like = reference_latents if reference_latents is not None else next(iter(latents.values()))
    return torch.randn(
        len(like), *like.shape[1:], generator=torch.Generator().manual_seed(seed + 1)
    )


def measure(
    samples: Mapping[int, Tensor],
    reference: Tensor,
    metrics: list[tuple[str, Metric]],
    extractor: FeatureExtractor,
    *,
    train: Tensor | None,
    latents: Mapping[int, Tensor] | None,
    reference_latents: Tensor | None,
    prior_latents: Tensor | None,
    bootstrap: int,
    confidence: float,
    seed: int,
    labels: Mapping[str, str],
    progress: bool = False,
) -> dict:
    """Every metric at every step of ``samples``, with diagnostics and the novelty baseline.

    The one implementation behind ``evaluate`` and ``evaluate_samples``. Tensors are on the CPU:
    images (N, C, H, W) by step, latents (N, ...) by step (a superset of the sample steps, in
    evaluate every step 0..T). Without ``prior_latents`` the prior draws are N(0, I), seeded
    with ``seed + 1``, as many as the reference latents (else as the samples).
    Returns the report's "steps", "metrics", "lower_is_better", "diagnostics" and "reference".
    """
    steps = sorted(samples)
    _check_measured(
        samples,
        steps,
        reference,
        metrics,
        train=train,
        latents=latents,
        reference_latents=reference_latents,
        labels=labels,
    )
    if latents is not None and prior_latents is None:
        prior_latents = _prior_draws(latents, reference_latents, seed)
    data = _evaluation_data(
        samples,
        steps,
        reference,
        metrics,
        extractor,
        train=train,
        latents=latents,
        reference_latents=reference_latents,
        prior_latents=prior_latents,
        bootstrap=bootstrap,
        confidence=confidence,
        seed=seed,
    )
    values, direction = _compute_metrics(metrics, data, steps, progress)
    novelty = None
    if data.train_images is not None:
        baseline = nearest_rms_distance(_rows(reference), data.train_images, data.cache)
        novelty = float(baseline.mean())
    return {
        "steps": steps,
        "metrics": values,
        "lower_is_better": direction,
        "diagnostics": diagnostics(data.z) if data.z else {"note": "no latents given"},
        "reference": {
            "images": len(reference),
            "train_images": 0 if train is None else len(train),
            "novelty_of_held_out_images": novelty,
        },
    }


# ---------------------------------------------------------------------------------------------
# A trained model's run


class Evaluator:
    """The recipe's ``evaluate`` setup, prepared once, measuring chains from any start sampler.

    Preparing builds the metrics and the feature extractor (training or loading its cached
    classifier), picks the reference and training images and encodes the reference; then
    :meth:`run_chains` runs ``evaluate.num_chains`` fresh chains from a start sampler and
    :meth:`measure` measures them. The evaluate stage measures the recipe's own start sampler
    (:func:`evaluate`); the sampler comparison and the tuning search measure each of their
    samplers with the same setup, so their numbers compare. ``parts`` is the
    :class:`aesampler.components.Components` those callers share (model, chain, data).
    """

    def __init__(
        self,
        parts,
        run_dir: str | Path,
        *,
        registry: Registry | None = None,
        log: Callable[[str], None] = print,
        reference_split: str | None = None,
        reference_size: int | None = None,
        metrics: list[tuple[str, Metric]] | None = None,
    ):
        recipe, registry = parts.recipe, registry or parts.registry
        cfg = recipe.evaluate
        self.parts, self.cfg, self.log = parts, cfg, log
        self.reference_split = reference_split or cfg.reference_split
        size = reference_size or cfg.reference_size
        self.metrics: list[tuple[str, Metric]] = metrics or [
            (spec.name, registry.create("metric", spec.name, **spec.params)) for spec in cfg.metrics
        ]
        extractor: FeatureExtractor = registry.create(
            "feature_extractor", cfg.feature_extractor.name, **cfg.feature_extractor.params
        )
        train_set = parts.dataset("train")
        reference_set = parts.dataset(self.reference_split)
        split = repr(self.reference_split)
        self.reference = _images(reference_set, size, cfg.seed, f"the {split} split")
        self.train_images = _images(train_set, cfg.train_size, cfg.seed, "the 'train' split")
        held_out = (
            f"the held-out images ({len(self.reference)} from the {split} split; "
            f"{'evaluate' if reference_size is None else 'tune'}.reference_size={size})"
        )
        self.labels = {
            "samples": "the images x_t of the evaluation chains at step {step} "
            f"(evaluate.num_chains={cfg.num_chains})",
            "latents": "the latents z_t of the evaluation chains at step {step}",
            "reference": held_out,
            "reference_z": held_out,
            "train_images": f"the training images (evaluate.train_size={cfg.train_size})",
        }
        check_sample_sizes(  # before any training or sampling
            self.metrics,
            {t: cfg.num_chains for t in cfg.steps},
            {
                "reference": len(self.reference),
                "reference_z": len(self.reference),
                "train_images": len(self.train_images),
            },
            self.labels,
        )
        run_dir = Path(run_dir)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir.parent / ".aesampler-cache"
        self.extractor = extractor
        self.extractor_info = (
            extractor.prepare(train_set, cache_dir, parts.device, log)
            if uses_features(self.metrics)
            else {"name": cfg.feature_extractor.name, "note": UNUSED_EXTRACTOR}
        )
        self._reference_z: dict[str, Tensor] = {}

    def reference_latents(self, batchnorm: str | None = None) -> Tensor:
        """Encodings of the reference images in ``batchnorm`` mode (default:
        ``sampling.batchnorm``): P̂(Z) as chains in that mode see it."""
        mode = batchnorm or self.parts.recipe.sampling.batchnorm
        if mode not in self._reference_z:
            self._reference_z[mode] = encode_images(
                self.parts.model,
                self.reference,
                batchnorm=mode,
                seed=self.cfg.seed,
                device=self.parts.device,
            )
        return self._reference_z[mode]

    @property
    def reference_z(self) -> Tensor:
        return self.reference_latents()

    def run_chains(
        self,
        start,
        record: Iterable[int],
        *,
        progress: bool = True,
        setting: tuple[str, str] | None = None,
        num_chains: int | None = None,
        seed: int | None = None,
    ) -> tuple[Any, dict[int, Tensor]]:
        """Run ``evaluate.num_chains`` chains (or ``num_chains``) from ``start`` up to the last
        step of ``record``, in ``setting`` (batch-norm mode, chain corruption; default: the
        start entry's), seeded with ``evaluate.seed`` (or ``seed``).

        Returns the chain result (x and z at the ``record`` steps, on the CPU) and the latents
        of every step 0..max(record). This process runs them all, also under torchrun (where
        ``evaluate`` shares them out with :func:`evaluation_chains`).
        """
        chains = evaluation_chains(
            self.parts,
            start,
            record,
            progress=progress,
            shared=False,
            setting=setting,
            num_chains=num_chains,
            seed=seed,
        )
        assert chains is not None  # rank 0, or a single process
        return chains

    def measure(
        self,
        samples: Mapping[int, Tensor],
        latents: Mapping[int, Tensor],
        *,
        progress=True,
        batchnorm: str | None = None,
        bootstrap: int | None = None,
    ) -> dict:
        """Every metric at every step of ``samples`` (images by step), see :func:`measure`;
        the latents are compared with the reference's encodings in ``batchnorm`` mode."""
        cfg = self.cfg
        return measure(
            samples,
            self.reference,
            self.metrics,
            self.extractor,
            train=self.train_images,
            latents=latents,
            reference_latents=self.reference_latents(batchnorm),
            prior_latents=None,
            bootstrap=cfg.bootstrap if bootstrap is None else bootstrap,
            confidence=cfg.confidence,
            seed=cfg.seed,
            labels=self.labels,
            progress=progress,
        )

    def reference_info(self, measured: dict | None = None) -> dict:
        """What the measurements compare with: the split, the images, the novelty baseline."""
        info = {
            "split": self.reference_split,
            "images": len(self.reference),
            "train_images": len(self.train_images),
        }
        if measured is not None:
            info.update(measured["reference"])
        return info


def evaluation_chains(
    parts,
    start,
    record: Iterable[int],
    *,
    progress: bool = True,
    shared: bool = True,
    log: Callable[[str], None] = print,
    setting: tuple[str, str] | None = None,
    num_chains: int | None = None,
    seed: int | None = None,
) -> tuple[ChainResult, dict[int, Tensor]] | None:
    """Run ``evaluate.num_chains`` chains from ``start`` up to the last step of ``record``.

    The chains run in the shards ``sample`` uses (``sampling.shard_size``; shard i seeded with
    ``shard_seed(evaluate.seed, i)``), so they do not depend on how many processes run them.
    Under torchrun, with ``shared``, the shards are dealt out to the ranks in turn and gathered
    on rank 0, and every rank must call this; without, this process runs them all. Returns the
    chain result (x and z at the ``record`` steps, on the CPU) and the latents of every step
    0..max(record) on rank 0 (or a single process), None on the other ranks. ``setting``
    (batch-norm mode, chain corruption), ``num_chains`` and ``seed`` default to the start
    entry's setting, ``evaluate.num_chains`` and ``evaluate.seed``.
    """
    cfg, sampling = parts.recipe.evaluate, parts.recipe.sampling
    num_chains = cfg.num_chains if num_chains is None else num_chains
    seed = cfg.seed if seed is None else seed
    world = distributed.world() if shared else distributed.World()
    record = sorted(set(record))
    last = record[-1]
    shards = shard_bounds(num_chains, sampling.shard_size)
    mine = list(range(world.rank, len(shards), world.world_size))
    done: list[tuple[int, ChainResult, dict[int, Tensor]]] = []
    bar = tqdm(desc="evaluation chains", unit="step", disable=not progress)
    try:
        for index in mine:
            a, b = shards[index]
            all_z: dict[int, list[Tensor]] = {t: [] for t in range(last + 1)}

            def keep_z(step, all_z=all_z) -> None:
                # Kept on the chain's device and copied to the host once per shard: no
                # host-device synchronisation per step.
                all_z[step.step].append(step.z.float())
                bar.update(1)

            result = parts.run_shard(
                start,
                index,
                b - a,
                seed=seed,
                steps=last,
                record=record,
                callback=keep_z,
                setting=setting,
            )
            done.append((index, result, {t: torch.cat(v).cpu() for t, v in all_z.items()}))
    finally:
        bar.close()
    gathered = distributed.gather_object(done) if world.enabled else [done]
    if gathered is None:
        return None
    if world.enabled:
        ran = [len(rank) for rank in gathered]
        log(f"evaluation: {len(shards)} shards run by {world.world_size} processes: {ran} each")
    by_index = sorted((item for rank in gathered for item in rank), key=lambda item: item[0])
    result = ChainResult.concatenate([r for _, r, _ in by_index])
    latents = {t: torch.cat([z[t] for _, _, z in by_index]) for t in range(last + 1)}
    return result, latents


def evaluate(
    parts,
    run_dir: str | Path,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Compute the recipe's ``evaluate`` metrics for the trained model in ``parts``.

    Returns the report that ``aesampler evaluate`` writes to ``metrics.json`` (the caller writes
    it: the evaluate stage, :mod:`aesampler.stages`, does so in a run-directory transaction).
    With ``sampling.start: auto`` the caller chooses the start first
    (:func:`aesampler.tuning.resolve_start`): evaluation sits below the tuning search, which
    measures with it, so it never runs the search itself. Under torchrun
    every rank calls it and runs its share of the chains; rank 0 measures them and gets the
    report, the other ranks None. ``run_dir`` places the default feature-classifier cache beside
    the run.
    """
    recipe = parts.recipe
    cfg, sampling = recipe.evaluate, recipe.sampling
    main = distributed.world().is_main
    progress, log = distributed.voice(progress, log)
    # Under torchrun: rank 0 prepares the measurements; every rank runs its shards of chains.
    evaluator = Evaluator(parts, run_dir, registry=registry, log=log) if main else None
    start = parts.shared_start_sampler(log)
    batchnorm, corruption = parts.setting(parts.start_spec)
    chains = evaluation_chains(parts, start, cfg.steps, progress=progress, log=log)
    if evaluator is None or chains is None:
        return None
    result, latents = chains
    measured = evaluator.measure(
        {t: result.x[t] for t in cfg.steps}, latents, progress=progress, batchnorm=batchnorm
    )
    spec = recipe.chain_corruption if corruption == "training" else None
    report = {
        **measured,
        "reference": evaluator.reference_info(measured),
        "feature_extractor": evaluator.extractor_info,
        "settings": cfg.model_dump(mode="json"),
        "model": {"kind": recipe.model.name, "checkpoint": str(parts.checkpoint)},
        "chain": {
            "start": {**parts.start_spec.model_dump(), "describes": start.describes},
            "corruption": spec.model_dump() if spec else None,
            "batchnorm": batchnorm,
            "chunk_size": sampling.chunk_size,
        },
    }
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
