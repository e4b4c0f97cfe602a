"""Sample quality for images from anywhere: ``evaluate_samples``.

The metrics, intervals and report of ``aesampler evaluate`` for samples a user brings (a tensor of
images, or one per chain step), without a model, recipe or run directory. The numbers come from
the same code as ``evaluate`` (:func:`~aesampler.evaluation.evaluate.measure`); this module
checks the inputs, so that a wrong one stops with an error naming the argument.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checks import check_int
from ..data import ImageDataset
from ..errors import AesamplerError, Voice, speaking
from ..plugins import get_registry
from ..registry import Registry
from .evaluate import (
    UNUSED_EXTRACTOR,
    check_finite,
    check_sample_sizes,
    measure,
    metric_inputs,
    uses_features,
)
from .features import FeatureExtractor
from .metrics import DEFAULT_METRICS, Metric

#: The argument of ``evaluate_samples`` that provides each optional input of EvaluationData.
_ARGUMENT = {
    "z": "latents",
    "prior_z": "latents",
    "reference_z": "reference_latents",
    "train_images": "train",
}


#: How a caller of ``evaluate_samples`` sets what a recipe sets under these keys: errors raised
#: inside it give their advice in these words (:class:`aesampler.errors.Voice`).
VOICE = Voice(
    "evaluate_samples",
    {
        "evaluate.feature_extractor.name": "features={value}",
        "evaluate.feature_extractor.weights": (
            "features={{'name': 'inception', 'weights': {value}}}"
        ),
        "evaluate.cache_dir": "cache_dir",
        "evaluate.num_chains": "the number of samples",
        "evaluate.reference_size": "the number of reference images",
        "evaluate.steps": "latents at {value} steps or more",
        "data": "train",  # the images the feature classifier trains on
        "labels": "train=(images, labels)",
        "train_images": "train=...",
    },
)


class _TensorImages(ImageDataset):
    """Images (and labels) given as tensors, as a dataset a feature extractor can train on."""

    split = "train"

    def __init__(self, images: Tensor, labels: Tensor | None):
        self.images, self.labels = images, labels
        self.channels, self.image_size = images.shape[1], images.shape[-1]
        self.num_classes = None if labels is None else int(labels.max()) + 1
        self.name = "tensors"
        if labels is not None:  # the classifier's cache key: these very images and labels
            digest = hashlib.sha256(str(tuple(images.shape)).encode())
            digest.update(images.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
            self.name = f"tensors-{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], -1 if self.labels is None else int(self.labels[index])


def _tensor(value: Any, argument: str, what: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise AesamplerError(
            f"{argument} must be a torch.Tensor {what}, got {type(value).__name__}"
        )
    if value.dim() > 0 and value.numel() == 0:
        raise AesamplerError(f"{argument} is empty (shape {tuple(value.shape)})")
    return value.detach().cpu()


def _check_images(value: Any, argument: str) -> Tensor:
    x = _tensor(value, argument, "of images (N, C, H, W) in [0, 1]")
    if x.dim() != 4:
        raise AesamplerError(
            f"{argument} must be images (N, C, H, W), got shape {tuple(x.shape)}"
            + ("; add a channel axis with x.unsqueeze(1)" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise AesamplerError(
            f"{argument} must hold floating-point pixel values in [0, 1], got {x.dtype}"
            + ("; convert with x.float() / 255" if x.dtype == torch.uint8 else "")
        )
    check_finite(x, argument)
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise AesamplerError(
            f"{argument} must have pixel values in [0, 1], got values from {low:.4g} to {high:.4g}"
        )
    return x.float()


def _check_latents(value: Any, argument: str) -> Tensor:
    z = _tensor(value, argument, "of latents (N, ...)")
    if z.dim() < 2:
        raise AesamplerError(
            f"{argument} must have one row per sample (N, D), got shape {tuple(z.shape)}"
        )
    if not z.is_floating_point():
        raise AesamplerError(f"{argument} must hold floating-point values, got {z.dtype}")
    check_finite(z, argument)
    return z.float()


def _by_step(value: Any, argument: str, check: Callable[[Any, str], Tensor]) -> dict[int, Tensor]:
    """A dict step -> checked tensor (a lone tensor is step 0)."""
    if not isinstance(value, Mapping):
        return {0: check(value, argument)}
    if not value:
        raise AesamplerError(f"{argument} is an empty dict: give at least one chain step")
    out: dict[int, Tensor] = {}
    for step, x in value.items():
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise AesamplerError(
                f"{argument} keys must be chain steps (non-negative integers), got {step!r}"
            )
        out[int(step)] = check(x, f"{argument}[{step}]")
    return dict(sorted(out.items()))


def _check_labels(value: Any, count: int) -> Tensor:
    try:
        labels = torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise AesamplerError(f"train labels must be integers, got {value!r}: {error}") from None
    if labels.dim() != 1 or len(labels) != count:
        raise AesamplerError(
            f"train labels must be one integer per training image ({count}), got shape "
            f"{tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise AesamplerError(f"train labels must be integers, got {labels.dtype}")
    if int(labels.min()) < 0:
        raise AesamplerError("train labels must be class indices 0, 1, ..., got a negative one")
    return labels.long()


def _check_settings(bootstrap: Any, confidence: Any, seed: Any) -> None:
    for argument, value in (("bootstrap", bootstrap), ("seed", seed)):
        check_int(argument, value, 0, error=AesamplerError, bound=True, types=(int, np.integer))
    number = isinstance(confidence, int | float | np.number) and not isinstance(confidence, bool)
    if not (number and 0 < confidence < 1):
        raise AesamplerError(f"confidence must be a number between 0 and 1, got {confidence!r}")


def _metric_list(metrics: Any, registry: Registry) -> list[tuple[str, Metric]]:
    if isinstance(metrics, str | Mapping) or callable(getattr(metrics, "compute", None)):
        metrics = [metrics]
    if not isinstance(metrics, Iterable):
        raise AesamplerError(
            f"metrics must be a list of metric names or Metric objects, got {metrics!r}"
        )
    out: list[tuple[str, Metric]] = []
    for item in metrics:
        if isinstance(item, str):
            out.append((item, registry.create("metric", item)))
        elif isinstance(item, Mapping):
            params = dict(item)
            name = params.pop("name", None)
            if not isinstance(name, str):
                raise AesamplerError(
                    f"metrics: a metric given as a dict needs a 'name' key, got {item!r}"
                )
            out.append((name, registry.create("metric", name, **params)))
        elif callable(getattr(item, "compute", None)):
            out.append((getattr(item, "name", None) or type(item).__name__, item))
        else:
            raise AesamplerError(
                "metrics entries must be metric names, {'name': ..., **params} dicts or Metric "
                f"objects, got {item!r}"
            )
    if not out:
        raise AesamplerError("metrics is empty: give at least one metric")
    return out


@speaking(VOICE)
def evaluate_samples(
    samples: Tensor | Mapping[int, Tensor],
    reference: Tensor,
    *,
    train: Tensor | tuple[Tensor, Tensor] | None = None,
    metrics: Iterable[str | Metric | Mapping[str, Any]] | None = None,
    features: str | FeatureExtractor | Mapping[str, Any] = "pixels",
    latents: Tensor | Mapping[int, Tensor] | None = None,
    reference_latents: Tensor | None = None,
    prior_latents: Tensor | None = None,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    registry: Registry | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """The metrics ``evaluate`` computes, with the same bootstrap intervals, for any images.

    Returns the report structure of ``metrics.json`` ("steps", "metrics" with value, low and
    high by step, "lower_is_better", "diagnostics", "reference", "feature_extractor",
    "settings") plus "skipped": the default metrics left out for lack of an input, and why.

    Args:
        samples: images (N, C, H, W) with values in [0, 1], or a dict chain step -> images.
        reference: real images (M, C, H, W) to compare with (held out from training).
        train: training images, for ``novelty`` and ``data_copying``; ``(images, labels)``
            also lets the ``classifier`` feature extractor train on them.
        metrics: metric names, ``{"name": ..., **params}`` dicts or Metric objects; default:
            every built-in metric whose inputs are given (the others are listed in "skipped").
            A metric given explicitly without its inputs is an error.
        features: the feature space of the image metrics, by name, ``{"name": ..., **params}``
            or FeatureExtractor object (its ``prepare`` is called): default ``pixels``.
        latents: the samples' latents (N, ...), or a dict step -> latents with every sample
            step (extra steps are used by ``step_size`` and the diagnostics); the rows are the
            same chains at every step.
        reference_latents: encodings of the reference images, for ``mmd_learned``.
        prior_latents: draws from the model's prior, for ``mmd_prior``; default N(0, I).
        bootstrap, confidence, seed: resamples (0: no intervals), level and seed of the
            bootstrap intervals (docs/evaluation.md says how they are computed).
        registry: where names are looked up; default: every installed plugin.
        device, cache_dir: where a feature extractor runs and keeps what it trains (the
            classifier; without ``cache_dir`` it is trained afresh and not kept).
    """
    _check_settings(bootstrap, confidence, seed)
    device = _checked_device(device)
    registry = registry or get_registry()
    given = _checked_inputs(samples, reference, train, latents, reference_latents, prior_latents)
    runnable, skipped = _choose_metrics(metrics, given.names(), registry)
    for name, reason in skipped.items():
        log(f"evaluate_samples: skipped metric {name} ({reason})")
    labels = _labels(given.several, isinstance(latents, Mapping))
    given.check_sizes(runnable, labels)  # before a feature extractor trains
    extractor = _feature_extractor(features, registry)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aesampler-")))
        else:
            folder = Path(cache_dir)
        info = _prepared(extractor, given, runnable, folder, device, log, cache_dir is None)
        measured = measure(
            given.images,
            given.reference,
            runnable,
            extractor,
            train=given.train_images,
            latents=given.z,
            reference_latents=given.reference_latents,
            prior_latents=given.prior_latents,
            bootstrap=int(bootstrap),
            confidence=float(confidence),
            seed=int(seed),
            labels=labels,
            progress=progress,
        )
    settings = {"metrics": [name for name, _ in runnable], "bootstrap": int(bootstrap)}
    settings |= {"confidence": float(confidence), "seed": int(seed)}
    return {**measured, "skipped": skipped, "feature_extractor": info, "settings": settings}


def _labels(several_samples: bool, several_latents: bool) -> dict[str, str]:
    """What messages call each input: the argument's name (and ``[step]`` for a dict)."""
    return {
        "samples": "samples[{step}]" if several_samples else "samples",
        "latents": "latents[{step}]" if several_latents else "latents",
        "reference": "reference",
        "reference_z": "reference_latents",
        "train_images": "train",
    }


def _checked_device(device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise AesamplerError(f"device {device!r} is not a torch device: {error}") from None


@dataclass(frozen=True)
class _Inputs:
    """``evaluate_samples``'s tensors, checked: images by step, latents by step (or None)."""

    several: bool
    images: dict[int, Tensor]
    reference: Tensor
    train_images: Tensor | None
    train_labels: Tensor | None
    z: dict[int, Tensor] | None
    reference_latents: Tensor | None
    prior_latents: Tensor | None

    def names(self) -> set[str]:
        """The inputs of :class:`EvaluationData` that were given (metrics need some)."""
        given = {"z", "prior_z"} if self.z is not None else set()
        given |= {"reference_z"} if self.reference_latents is not None else set()
        given |= {"train_images"} if self.train_images is not None else set()
        return given

    def check_sizes(self, runnable: list[tuple[str, Metric]], labels: dict[str, str]) -> None:
        check_sample_sizes(
            runnable,
            {t: len(x) for t, x in self.images.items()},
            {
                "reference": len(self.reference),
                "reference_z": _length(self.reference_latents),
                "train_images": _length(self.train_images),
            },
            labels,
        )


def _length(value: Tensor | None) -> int | None:
    return None if value is None else len(value)


def _checked_inputs(
    samples: Any,
    reference: Any,
    train: Any,
    latents: Any,
    reference_latents: Any,
    prior_latents: Any,
) -> _Inputs:
    several = isinstance(samples, Mapping)
    images, reference, train_images, train_labels = _checked_images(samples, reference, train)
    z = None if latents is None else _checked_latents(latents, images, several)
    reference_latents = _checked_extra_latents(reference_latents, "reference_latents", z)
    prior_latents = _checked_extra_latents(prior_latents, "prior_latents", z)
    return _Inputs(
        several, images, reference, train_images, train_labels, z, reference_latents, prior_latents
    )


def _prepared(
    extractor: FeatureExtractor,
    given: _Inputs,
    runnable: list[tuple[str, Metric]],
    folder: Path,
    device: torch.device,
    log: Callable[[str], None],
    temporary: bool,
) -> dict:
    """The feature extractor prepared (trained on the train images if it needs them) if any
    metric uses features; what the report says of it."""
    if uses_features(runnable):
        train = given.train_images
        train_set = None if train is None else _TensorImages(train, given.train_labels)
        info = dict(extractor.prepare(train_set, folder, device, log))
    else:
        info = {"name": getattr(extractor, "name", type(extractor).__name__)}
        info["note"] = UNUSED_EXTRACTOR
    if temporary:
        info.pop("cache", None)  # it was a temporary directory
    return info


def _checked_images(
    samples: Any, reference: Any, train: Any
) -> tuple[dict[int, Tensor], Tensor, Tensor | None, Tensor | None]:
    """Samples by step, reference, train images and labels: checked, one image shape for all."""
    several = isinstance(samples, Mapping)
    images = _by_step(samples, "samples", _check_images)
    reference = _check_images(reference, "reference")
    named = [(f"samples[{t}]" if several else "samples", x) for t, x in images.items()]
    named.append(("reference", reference))
    train_images, train_labels = None, None
    if isinstance(train, tuple | list):
        if len(train) != 2:
            raise AesamplerError(
                f"train must be images or a pair (images, labels), got {len(train)} items"
            )
        train_images = _check_images(train[0], "train images")
        train_labels = _check_labels(train[1], len(train_images))
    elif train is not None:
        train_images = _check_images(train, "train")
    if train_images is not None:
        named.append(("train", train_images))
    first, shape = named[0][0], named[0][1].shape[1:]
    for argument, x in named:
        if x.shape[1:] != shape:
            raise AesamplerError(
                f"{argument} has images of shape {tuple(x.shape[1:])} (C, H, W), but {first} "
                f"has {tuple(shape)}: every image set must have the same shape"
            )
    return images, reference, train_images, train_labels


def _checked_extra_latents(
    value: Any, argument: str, latents: Mapping[int, Tensor] | None
) -> Tensor | None:
    """reference_latents or prior_latents: rows shaped like the latents' rows."""
    if value is None:
        return None
    if latents is None:
        raise AesamplerError(f"{argument} was given without latents: give latents too")
    checked = _check_latents(value, argument)
    like = next(iter(latents.values()))
    if checked.shape[1:] != like.shape[1:]:
        raise AesamplerError(
            f"{argument} rows have shape {tuple(checked.shape[1:])}, but the latents' rows "
            f"have {tuple(like.shape[1:])}"
        )
    return checked


def _choose_metrics(
    metrics: Any, given: set[str], registry: Registry
) -> tuple[list[tuple[str, Metric]], dict[str, str]]:
    """The metrics to compute, and the default ones skipped for a missing input (with why).

    A metric asked for explicitly whose input is missing is an error, not a skip.
    """
    explicit = metrics is not None
    if metrics is None:
        metrics = DEFAULT_METRICS
    runnable: list[tuple[str, Metric]] = []
    skipped: dict[str, str] = {}
    for name, metric in _metric_list(metrics, registry):
        missing = metric_inputs(metric) - given
        if not missing:
            runnable.append((name, metric))
            continue
        arguments = sorted({_ARGUMENT.get(k, k) for k in missing}, key=_argument_order)
        if explicit:
            raise AesamplerError(
                f"metric {name!r} needs {' and '.join(arguments)}, which were not given: pass "
                f"{', '.join(f'{a}=...' for a in arguments)}, or leave the metric out"
            )
        skipped[name] = f"needs {' and '.join(arguments)}"
    if not runnable:
        raise AesamplerError(
            "none of the default metrics can be computed from what was given: "
            + "; ".join(f"{k} {v}" for k, v in skipped.items())
        )
    return runnable, skipped


def _argument_order(argument: str) -> int:
    order = ["latents", "reference_latents", "train"]
    return order.index(argument) if argument in order else len(order)


def _checked_latents(
    latents: Any, images: Mapping[int, Tensor], several: bool
) -> dict[int, Tensor]:
    """Latents by step, covering every sample step, one row per sample, one shape throughout."""
    if isinstance(latents, Mapping):
        z = _by_step(latents, "latents", _check_latents)
    elif len(images) == 1:
        z = {next(iter(images)): _check_latents(latents, "latents")}
    else:
        raise AesamplerError(
            "samples is a dict of several steps, so latents must be a dict step -> latents too"
        )
    missing = sorted(set(images) - set(z))
    if missing:
        raise AesamplerError(
            f"latents has no step {missing[0]}, which samples has: give the latents of every "
            "sample step"
        )
    shapes = {tuple(v.shape) for v in z.values()}
    if len(shapes) > 1:
        raise AesamplerError(
            "latents must have the same shape at every step (the same chains), got "
            f"{sorted(shapes)}"
        )
    for t, x in images.items():
        if len(z[t]) != len(x):
            where = f"[{t}]" if several or isinstance(latents, Mapping) else ""
            raise AesamplerError(
                f"latents{where} has {len(z[t])} rows but samples{where if several else ''} has "
                f"{len(x)} images: give one latent row per sample"
            )
    return z


def _feature_extractor(features: Any, registry: Registry) -> FeatureExtractor:
    if isinstance(features, FeatureExtractor):
        return features
    if isinstance(features, str):
        return registry.create("feature_extractor", features)
    if isinstance(features, Mapping):
        params = dict(features)
        name = params.pop("name", None)
        if isinstance(name, str):
            return registry.create("feature_extractor", name, **params)
    raise AesamplerError(
        "features must be a feature extractor name (pixels, classifier, inception, ...), a "
        f"{{'name': ..., **params}} dict or a FeatureExtractor object, got {features!r}"
    )
