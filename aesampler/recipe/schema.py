"""The recipe's sections as pydantic models (unknown keys are errors).

Component sections (``model``, ``data``, ``corruption``) hold ``name``, the registered
component, and its parameters as sibling keys; the section decides the kind. Their parameters
are checked against the component's own signature by the loader.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class ComponentSpec(BaseModel):
    """``name`` plus the component's parameters."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSection(Section):
    """How to train (defaults: the paper's settings, §4.3)."""

    epochs: PositiveInt = 20
    max_steps: PositiveInt | None = Field(
        None, description="stop after this many optimiser steps (for smoke runs)"
    )
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 2e-4
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.5,
        0.999,
    )
    seed: NonNegativeInt = 0
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    num_workers: NonNegativeInt = 0
    grid_size: Annotated[int, Field(ge=2)] = Field(
        64, description="images in each per-epoch image grid"
    )


class OutputSection(Section):
    dir: str = Field(description="the run directory")


class Recipe(Section):
    model: ComponentSpec
    data: ComponentSpec
    corruption: ComponentSpec | None = None
    train: TrainSection = TrainSection()
    output: OutputSection

    def resolved(self) -> dict[str, Any]:
        """Plain values of every key, defaults filled in: what the run directory records."""
        return self.model_dump(mode="json")
