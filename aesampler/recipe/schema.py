"""The recipe's sections as pydantic models (unknown keys are errors).

Component sections (``model``, ``data``, ``corruption``, ``sampling.start``, ...) hold ``name``,
the registered component, and its parameters as sibling keys; the section decides the kind (where
each kind appears is said in :data:`aesampler.kinds.KINDS`, and each location there is a
:class:`ComponentSpec` field here). Their parameters are checked against the component's own
signature by the loader.
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..evaluation.metrics import DEFAULT_METRICS

# Numbers are strict: true is not 1 and "3" is not 3. An int passes where a float is expected.
# Integers stop below 2**63, the largest that torch's int64 holds.
INT_LIMIT = 2**63
Int = Annotated[int, Strict(), Field(lt=INT_LIMIT)]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]


def check_seed(value: Any) -> Any:
    """A seed is an integer torch's generators accept (and ``seed + 1`` still does)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INT_LIMIT:
        raise PydanticCustomError("seed_range", "a seed must be an integer from 0 to 2**63 - 1")
    return value


Seed = Annotated[int, BeforeValidator(check_seed)]


def check_steps_or_auto(value: Any) -> Any:
    """Chain steps: a non-negative integer, or "auto" (see aesampler.evaluation.stopping)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INT_LIMIT:
        raise PydanticCustomError("steps_or_auto", "steps must be a non-negative integer or 'auto'")
    return value


StepsOrAuto = Annotated[int | Literal["auto"], PlainValidator(check_steps_or_auto)]


def name_to_section(value: Any) -> Any:
    """A component named bare is the section holding only its name: ``prior`` is
    ``{name: prior}``. Every component section and list item reads it so, in a recipe file and
    on the command line (``sampling.start=prior``); anything else is returned as it is."""
    return {"name": value} if isinstance(value, str) else value


def _names_to_sections(value: Any) -> Any:
    """A list of components may name them bare: ``[prior, {name: ex_post_gmm}]``."""
    if isinstance(value, list):
        return [name_to_section(v) for v in value]
    return value


#: Steps to measure: any order, each once.
StepList = Annotated[list[NonNegativeInt], AfterValidator(lambda v: sorted(set(v)))]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class ComponentSpec(BaseModel):
    """``name`` plus the component's parameters (as a field, a bare name is the section: see
    :data:`ComponentSection`)."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def params(self) -> dict[str, Any]:
        """The component's parameters: every key but ``name`` (and declared fields)."""
        return dict(self.model_extra or {})


#: A component section (``data``, ``sampling.transition``, ...): a bare name is ``{name: ...}``.
ComponentSection = Annotated[ComponentSpec, BeforeValidator(name_to_section)]
#: An optional one (``corruption``): null is none.
OptionalComponentSection = Annotated[ComponentSpec | None, BeforeValidator(name_to_section)]

BatchNormMode = Literal["batch", "running"]
#: How a chain from a sampler corrupts: ``training``, the recipe's chain corruption (Eq. 2:
#: ``sampling.corruption``, else the training corruption); ``none``, no corruption (Eq. 1).
ChainCorruption = Literal["training", "none"]
#: ``sampling.start: auto``: the sampler, batch-norm mode, corruption and steps are chosen on
#: held-out data (aesampler.tuning).
AUTO = "auto"


class SamplerSpec(ComponentSpec):
    """A start sampler and how its chains run: each entry may set its own batch-norm mode and
    chain corruption (defaults: ``sampling.batchnorm`` and the recipe's chain corruption)."""

    batchnorm: BatchNormMode | None = Field(
        None,
        exclude_if=lambda value: value is None,  # an entry that sets nothing reads as before
        description="batch-norm statistics for the encodings it fits on, the decoding and the "
        "chain steps: batch (minibatch, the paper's) or running; default: sampling.batchnorm",
    )
    corruption: ChainCorruption | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="the corruption inside its chain steps: training (the recipe's chain "
        "corruption, Eq. 2) or none (Eq. 1); default: training",
    )

    def setting(self, default_batchnorm: str) -> tuple[str, str]:
        """(batch-norm mode, chain corruption) with the defaults filled in."""
        return self.batchnorm or default_batchnorm, self.corruption or "training"


class ModelSpec(ComponentSpec):
    """The model kind and architecture, or a checkpoint to load instead of training."""

    checkpoint: str | None = Field(
        None,
        description="a run directory or checkpoint folder to load instead of training, or a "
        "folder in another registered checkpoint format (such as pythae's)",
    )


class TrainSection(Section):
    """How to train (defaults: the paper's settings, §4.3)."""

    epochs: PositiveInt = 20
    max_steps: PositiveInt | None = Field(
        None, description="stop after this many optimiser steps (for smoke runs)"
    )
    batch_size: PositiveInt = Field(
        64, description="images per step of each process (under torchrun a step trains N × this)"
    )
    lr: Annotated[Float, Field(gt=0)] = 2e-4
    betas: tuple[Annotated[Float, Field(ge=0, lt=1)], Annotated[Float, Field(ge=0, lt=1)]] = (
        0.5,
        0.999,
    )
    seed: Seed = 0
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 where the device computes it fast (AVX512-BF16 or AMX CPUs, "
        "CUDA devices with bfloat16 tensor cores), fp32 elsewhere; fp32: exact; bf16: the "
        "forward passes of each training step run under bfloat16 autocast; losses, gradients, "
        "weights and optimiser state stay fp32",
    )
    num_workers: NonNegativeInt = 0
    log_every: PositiveInt = Field(
        10,
        description="steps between reads of the losses from the device (each step is still "
        "logged; a non-finite loss stops training at the next read)",
    )
    grid_size: Annotated[Int, Field(ge=2)] = Field(
        64, description="images in each per-epoch image grid"
    )


class SamplingSection(Section):
    """How to run the chains (§3, §4.4): N chains from a start sampler (by default the prior),
    recorded at chosen steps."""

    transition: ComponentSection = Field(
        default_factory=lambda: ComponentSpec(name="decode_corrupt_encode")
    )
    corruption: OptionalComponentSection = Field(
        None, description="the chain's corruption; default: the training corruption (if any)"
    )
    start: Annotated[SamplerSpec, BeforeValidator(name_to_section)] = Field(
        default_factory=lambda: SamplerSpec(name="prior"),
        description="the start sampler drawing each chain's z0; default: the prior N(0, I); "
        "auto: the sampler, batch-norm mode, corruption and steps that `aesampler tune` "
        "chooses on the validation split (the tune section)",
    )
    num_chains: PositiveInt = 64
    steps: StepsOrAuto = Field(
        10,
        description="transitions per chain, or 'auto': stop where the latents' MMD to held-out "
        "encodings stops falling (pilot chains, at most max_steps)",
    )
    max_steps: NonNegativeInt = Field(10, description="with steps: auto, the most steps it takes")
    auto_chains: Annotated[Int, Field(ge=10)] = Field(
        500, description="with steps: auto, the pilot chains whose MMD curve chooses the steps"
    )
    record: list[NonNegativeInt] | None = Field(
        None, description="steps to record; default 0, 1, 5, 10 (those <= steps) and steps"
    )
    chunk_size: PositiveInt | None = Field(
        None, description="chains per batch; default all the chains of a shard"
    )
    shard_size: PositiveInt = Field(
        2048,
        description="chains run, saved and freed together (memory holds one shard); a killed "
        "run resumes from its finished shards",
    )
    batchnorm: BatchNormMode = Field(
        "batch",
        description="the default batch-norm mode of every sampler entry: batch (minibatch "
        "statistics, the paper's) or running (the statistics of training)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 where the device computes it fast (AVX512-BF16 or AMX CPUs, "
        "CUDA devices with tensor cores), fp32 elsewhere; fp32: exact; bf16: each transition "
        "runs under bfloat16 autocast; z and x are stored as fp32 with bf16 precision",
    )
    seed: Seed = 0
    device: str | None = Field(None, description="default: train.device")
    grid_size: Annotated[Int, Field(ge=1)] = Field(
        64, description="chains shown in each step's image grid"
    )

    @model_validator(mode="after")
    def _record_within_steps(self) -> SamplingSection:
        if self.record is not None:
            if not self.record:
                raise ValueError("record must list at least one step")
            limit, key = (
                (self.max_steps, "max_steps") if self.steps == "auto" else (self.steps, "steps")
            )
            late = [s for s in self.record if s > limit]
            if late:
                raise ValueError(f"record holds steps {late} beyond {key}={limit}")
        return self

    @property
    def tuned(self) -> bool:
        """Whether ``start: auto`` leaves the sampler, modes and steps to the search."""
        return self.start.name == AUTO

    @property
    def most_steps(self) -> int:
        """The most steps a chain can take: ``steps``, or ``max_steps`` with ``steps: auto``."""
        return self.max_steps if self.steps == "auto" else self.steps


class InterpolationSection(Section):
    """Interpolations between encoded test images, before and after chain steps (Figure 2)."""

    enabled: Bool = True
    pairs: PositiveInt = Field(4, description="pairs of test images (rows of the figure)")
    points: Annotated[Int, Field(ge=2)] = Field(
        8, description="points per path, endpoints included"
    )
    steps: NonNegativeInt = Field(5, description="chain steps applied to the interpolated latents")
    method: Literal["slerp", "lerp"] = "slerp"
    seed: Seed = 0


class MaskSection(Section):
    """Which pixels of each held-out image the inpainting chain must fill in."""

    missing: Literal["left", "right", "top", "bottom", "centre", "random"] = Field(
        "right",
        description="the hidden part: a side (left, right, top, bottom), a centred box "
        "(centre) or pixels drawn at random (random)",
    )
    fraction: Annotated[Float, Field(gt=0, lt=1)] = Field(
        0.5,
        description="a side: its share of the columns or rows (0.5 hides a half); centre: the "
        "box's side over the image's; random: the share of pixels hidden",
    )
    seed: Seed = Field(0, description="random: seeds which pixels each image hides")


class InpaintSection(Section):
    """Pseudo-Gibbs inpainting of held-out images: the chain fills in what the mask hides."""

    enabled: Bool = Field(
        False, description="also inpaint in `aesampler run` (`aesampler inpaint` always does)"
    )
    mask: MaskSection = Field(default_factory=MaskSection, description="the hidden pixels")
    images: PositiveInt = Field(8, description="test images, spread over the test split")
    chains_per_image: PositiveInt = Field(1, description="chains run for each image")
    steps: NonNegativeInt = Field(10, description="pseudo-Gibbs steps")
    record: list[NonNegativeInt] | None = Field(
        None, description="steps to record; default 0, 1, 5, 10 (those <= steps) and steps"
    )
    fill: Annotated[Float, Field(ge=0, le=1)] = Field(
        0.5, description="the value of the hidden pixels in the image encoded for step 0"
    )
    corrupt_observed: Bool = Field(
        False, description="corrupt the observed pixels too (default: only the hidden ones)"
    )
    seed: Seed = Field(0, description="seeds the chain noise")

    @model_validator(mode="after")
    def _record_within_steps(self) -> InpaintSection:
        if self.record is not None:
            if not self.record:
                raise ValueError("record must list at least one step")
            late = [s for s in self.record if s > self.steps]
            if late:
                raise ValueError(f"record holds steps {late} beyond steps={self.steps}")
        return self


class EvaluateSection(Section):
    """Sample quality at every evaluated chain step, with bootstrap intervals."""

    enabled: Bool = True
    metrics: Annotated[list[ComponentSpec], BeforeValidator(_names_to_sections)] = Field(
        default_factory=lambda: [ComponentSpec(name=m) for m in DEFAULT_METRICS],
        description="metric names, or sections with a name and parameters",
    )
    feature_extractor: ComponentSection = Field(
        default_factory=lambda: ComponentSpec(name="classifier")
    )
    steps: StepList = Field(default_factory=lambda: [0, 1, 2, 5, 10], min_length=1)
    num_chains: Annotated[Int, Field(ge=10)] = 1000
    reference_split: Literal["train", "valid", "test"] = "test"
    reference_size: Annotated[Int, Field(ge=10)] = 1000
    train_size: PositiveInt = Field(
        10000, description="training images searched for novelty and data_copying"
    )
    bootstrap: NonNegativeInt = Field(200, description="bootstrap resamples (0: no intervals)")
    confidence: Annotated[Float, Field(gt=0, lt=1)] = 0.95
    seed: Seed = 0
    cache_dir: str | None = Field(
        None, description="where trained feature classifiers are cached; default: beside the run"
    )


DEFAULT_COMPARED = ("prior", "encodings", "ex_post_gmm")


class SamplersSection(Section):
    """The sampler comparison: each sampler alone (step 0) and followed by chain steps, measured
    with the ``evaluate`` section's chains, metrics and reference, so the numbers compare."""

    enabled: Bool = Field(False, description="compare the samplers in aesampler run")
    compare: Annotated[list[SamplerSpec], BeforeValidator(_names_to_sections)] = Field(
        default_factory=lambda: [SamplerSpec(name=n) for n in DEFAULT_COMPARED],
        min_length=1,
        description="sampler names, or sections with a name and parameters",
    )
    steps: StepList = Field(
        default_factory=lambda: [0, 1, 2, 5],
        min_length=1,
        description="chain steps measured after each sampler's draws (0: the draws alone)",
    )
    grid_size: Annotated[Int, Field(ge=1)] = Field(
        64, description="chains shown in each sampler's grid of steps"
    )


# The prior, and mixtures of 10 and 30 components: on the quickstart DAAE the 30-component
# mixture in running BN scored 0.64x the 10-component one (docs/samplers.md).
DEFAULT_TUNED: tuple[dict[str, Any], ...] = (
    {"name": "prior"},
    {"name": "ex_post_gmm", "components": 10},
    {"name": "ex_post_gmm", "components": 30},
)


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError("each value may be listed once")
    return values


class TuneSection(Section):
    """The search behind ``sampling.start: auto`` and ``aesampler tune``: every start sampler of
    ``samplers`` in every batch-norm mode and chain corruption, each followed by 0 to
    ``sampling.steps`` chain steps (``sampling.max_steps`` with ``steps: auto``), scored by the
    Fréchet distance of its samples to validation images; successive halving spends the chains
    on the configurations that are still in the race. The test split is never read."""

    samplers: Annotated[list[SamplerSpec], BeforeValidator(_names_to_sections)] = Field(
        default_factory=lambda: [SamplerSpec(**spec) for spec in DEFAULT_TUNED],
        min_length=1,
        description="the start samplers searched; an entry that sets batchnorm or corruption is "
        "searched in that setting only",
    )
    batchnorm: Annotated[list[BatchNormMode], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["batch", "running"], min_length=1
    )
    corruption: Annotated[list[ChainCorruption], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["training", "none"], min_length=1
    )
    num_chains: list[Annotated[Int, Field(ge=10)]] = Field(
        default_factory=lambda: [250, 1000],
        min_length=1,
        description="chains per configuration in each round of successive halving, increasing",
    )
    keep: Annotated[Float, Field(gt=0, lt=1)] = Field(
        1 / 3, description="the share of configurations each round passes to the next"
    )
    reference_size: Annotated[Int, Field(ge=10)] = Field(
        1000, description="validation images the samples are compared with"
    )
    seed: Seed = 0

    @field_validator("num_chains")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("the rounds' chains must increase, e.g. [250, 1000]")
        return value


class OutputSection(Section):
    dir: str = Field(description="the run directory; a leading ~ is the home folder")

    @field_validator("dir")
    @classmethod
    def _home(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the run directory must not be empty")
        return os.path.expanduser(value)  # never a literal folder named '~'


class Recipe(Section):
    model: Annotated[ModelSpec, BeforeValidator(name_to_section)]
    data: ComponentSection
    corruption: OptionalComponentSection = None
    train: TrainSection = TrainSection()
    sampling: SamplingSection = SamplingSection()
    interpolation: InterpolationSection = InterpolationSection()
    inpaint: InpaintSection = InpaintSection()
    evaluate: EvaluateSection = EvaluateSection()
    samplers: SamplersSection = SamplersSection()
    tune: TuneSection = TuneSection()
    output: OutputSection

    @property
    def chain_corruption(self) -> ComponentSpec | None:
        """The corruption the chain uses: sampling.corruption, else the training corruption."""
        return self.sampling.corruption if self.sampling.corruption is not None else self.corruption

    def resolved(self) -> dict[str, Any]:
        """Plain values of every key, defaults filled in: what the run directory records."""
        return self.model_dump(mode="json")
