"""The JSON documents of a run directory, one pydantic model each: the writer builds a document
with ``model_dump`` and the reader (the report) checks it with ``model_validate``, so what is
written and what is read cannot drift apart.

A document keeps every key its writer gave it (``extra="allow"``: the report reads only some)
and in the writer's order, so a file is written byte for byte as the dict it came from. Types
are strict (a JSON ``true`` is no number, ``"12"`` no whole number): a damaged or foreign file is
:func:`problem`'s one line naming the key, what it should be and what it holds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError


def _floatable(value: int | float) -> int | float:
    try:
        float(value)
    except OverflowError:  # an integer beyond the range of a float cannot be drawn or formatted
        raise PydanticCustomError("number_too_large", "a number too large") from None
    return value


#: Numbers as JSON has them: a whole number stays whole (``1``, not ``1.0``), NaN and infinity
#: are allowed (a metric may be either); a bool is no number.
Number = Annotated[int | float, AfterValidator(_floatable), Field(description="a number")]
Count = Annotated[int, Field(ge=0, description="a whole number from 0")]


def _field(description: str, **kwargs: Any) -> Any:
    return Field(description=description, **kwargs)


class Document(BaseModel):
    """A JSON object of a run directory: checked keys declared, any other key kept as it is."""

    model_config = ConfigDict(extra="allow", strict=True)
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Any:
        document = handler(data)
        if isinstance(data, dict):
            document._order = list(data)
        return document

    @model_serializer(mode="wrap")
    def _in_order(self, handler: Any) -> dict[str, Any]:
        dumped = handler(self)
        keys = [k for k in self._order if k in dumped]
        return {k: dumped[k] for k in [*keys, *(k for k in dumped if k not in keys)]}

    @classmethod
    def build(cls, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` as the writer saves it: checked by this model, then ``model_dump``-ed
        (the keys it was given, in their order)."""
        return cls.model_validate(document).model_dump(exclude_unset=True)


# --- settings.json of samples/, interpolation/ and inpainting/ ----------------------------------


class SampleSettings(Document):
    """``samples/settings.json`` (written by ``aesampler sample``): what the report reads."""

    num_chains: Count
    steps: Count
    checkpoint: str = _field("text")
    batchnorm: str = _field("text")
    seed: int = _field("a whole number")
    chain_corruption: dict | None = _field("an object or null", default=None)
    start: dict | None = _field("an object or null", default=None)
    start_describes: str = _field("text", default=None)
    steps_auto: dict | None = _field("an object or null", default=None)


class InterpolationSettings(Document):
    """``interpolation/settings.json`` (written by ``aesampler interpolate``)."""

    method: str = _field("text")
    steps: Count


class Mask(Document):
    missing: str = _field("text")
    fraction: Number


class InpaintingSettings(Document):
    """``inpainting/settings.json`` (written by ``aesampler inpaint``)."""

    mask: Mask = _field("an object")
    fill: Number
    corrupt_observed: bool = _field("true or false")
    steps_recorded: list[Count] = _field("a list of step numbers")
    masked_mse: dict[str, Number] = _field("an object of numbers")
    fill_mse: Number


# --- metrics.json ---------------------------------------------------------------------------------


class Interval(Document):
    value: Number
    low: Number
    high: Number


class QualitySettings(Document):
    confidence: float = _field("a number between 0 and 1", gt=0, lt=1)
    num_chains: Count
    bootstrap: Count


class Reference(Document):
    images: Count
    split: str = _field("text")
    novelty_of_held_out_images: Number | None = _field("a number or null")


class Diagnostics(Document):
    """R-hat and ESS of the chains; the report shows R-hat's median, maximum, window and chains
    together, and ESS's median with its minimum."""

    rhat_median: Number = None
    rhat_max: Number = None
    window: list[int] = _field(
        "a list of two step numbers", default=None, min_length=2, max_length=2
    )
    chains: Count = None
    ess_median: Number = None
    ess_min: Number = None
    ess_note: str = _field("text", default=None)

    @model_validator(mode="after")
    def _together(self) -> Diagnostics:
        needed = []
        if "rhat_median" in self.model_fields_set:
            needed += ["rhat_max", "window", "chains"]
        if "ess_median" in self.model_fields_set:
            needed.append("ess_min")
        for name in needed:
            if name not in self.model_fields_set:
                raise PydanticCustomError("missing", "Field required", {"field": name})
        return self


class ChainSettings(Document):
    start: dict | None = _field("an object or null", default=None)


class Metrics(Document):
    """``metrics.json`` (written by ``aesampler evaluate``): every key the report and
    ``aesampler compare`` read."""

    steps: list[Count] = _field("a list of step numbers")
    metrics: dict[str, dict[str, Interval]] = _field(
        "an object",
        json_schema_extra={"each": "metric {key!r} does not hold value/low/high numbers by step"},
    )
    lower_is_better: dict[str, bool | None] = _field(
        "an object", default=None, json_schema_extra={"item": "true, false or null"}
    )
    diagnostics: Diagnostics = _field("an object", default=None)
    reference: Reference = _field("an object")
    feature_extractor: dict = _field("an object", default=None)
    settings: QualitySettings = _field("an object")
    chain: ChainSettings = _field("an object", default=None)


# --- samplers/comparison.json -------------------------------------------------------------------

#: A compared sampler's folder name (:func:`aesampler.comparison.labels`).
LABEL = r"^[a-z][a-z0-9_]*(?:-(?:batch|running))?(?:-(?:training|none))?(?:-\d+)?$"


class ComparisonSettings(Document):
    steps: list[Count] = _field("a list of step numbers")
    num_chains: Count
    confidence: float = _field("a number between 0 and 1", gt=0, lt=1)


class AutoStep(Document):
    chosen: Count


class ComparedSampler(Document):
    """One entry of the comparison's ``samplers``: a sampler measured as ``metrics.json`` is."""

    label: str = _field("a folder name", pattern=LABEL)
    sampler: dict = _field("an object")
    describes: str = _field("text")
    steps: list[Count] = _field("a list of step numbers")
    metrics: dict[str, dict[str, Interval]] = Metrics.model_fields["metrics"]
    lower_is_better: dict[str, bool | None] = _field(
        "an object", json_schema_extra={"item": "true, false or null"}
    )
    fit_seconds: Number
    auto: AutoStep = _field("an object")
    best_step: dict = _field("an object")
    diagnostics: Diagnostics = _field("an object", default=None)
    feature_extractor: dict = _field("an object", default=None)
    chain: ChainSettings = _field("an object", default=None)


class Comparison(Document):
    """``samplers/comparison.json`` (written by ``aesampler compare-samplers``)."""

    format: str = _field("text")
    settings: ComparisonSettings = _field("an object")
    reference: dict = _field("an object")
    samplers: list[ComparedSampler] = _field("a list of objects", min_length=1)


# --- tuning/tuning.json --------------------------------------------------------------------------


class TuningSettings(Document):
    score: str = _field("the name of a metric")
    max_steps: Count
    reference_size: Count
    copying_threshold: Number
    copying_test: bool = _field("true or false", default=None)


class TuningRound(Document):
    chains: Count


class TuningCandidate(Document):
    """One configuration of the grid; its ``rounds`` hold the scores by step (keyed by the
    score's name, so not declared here)."""

    label: str = _field("text")
    start: dict = _field("an object")
    paper: bool = _field("true or false")
    rounds: list[dict] = _field("a list of objects")


class TuningChoice(Document):
    label: str = _field("text")
    start: dict = _field("an object")
    steps: Count


class TuningPaper(Document):
    label: str = _field("text")
    steps: Count


class TuningTestEntry(Document):
    label: str = _field("text")
    step: Count
    metrics: dict[str, dict[str, Interval]] = Metrics.model_fields["metrics"]


class TuningTest(Document):
    chosen: TuningTestEntry = _field("an object")
    paper: TuningTestEntry = _field("an object")


class TuningCost(Document):
    search_seconds: Number
    fit_seconds: Number
    test_seconds: Number


class Tuning(Document):
    """``tuning/tuning.json`` (written by ``aesampler tune`` and ``sampling.start: auto``)."""

    format: str = _field("text")
    key: str = _field("text")
    settings: TuningSettings = _field("an object")
    candidates: list[TuningCandidate] = _field("a list of objects", min_length=1)
    rounds: list[TuningRound] = _field("a list of objects", min_length=1)
    yardstick: dict = _field("an object")
    choice: TuningChoice = _field("an object")
    paper: TuningPaper = _field("an object")
    test: TuningTest = _field("an object")
    cost: TuningCost = _field("an object")


# --- checking -----------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A value as a message shows it: JSON, at most 40 characters."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _description(model: type[BaseModel], loc: tuple) -> tuple[int, str, dict]:
    """How many parts of ``loc`` name a declared field, what that field should hold, and the
    field's extra notes (``item``: what each value of an object should be; ``each``: the whole
    message for a bad value)."""
    depth, description, extra = 0, "valid", {}
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        depth += 1
        description = field.description or description
        for meta in field.metadata:  # Annotated[..., Field(description=...)]
            description = getattr(meta, "description", None) or description
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        nested = field.annotation
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            break
        model = nested
    return depth, description, extra


def _row(model: type[BaseModel], document: dict, loc: tuple, depth: int) -> str | None:
    """The problem of an entry of a list of documents (``samplers[1]``), prefixed with where."""
    if depth != 1 or len(loc) < 2 or not isinstance(loc[1], int):
        return None
    (entry,) = get_args(model.model_fields[loc[0]].annotation) or (None,)
    if not (isinstance(entry, type) and issubclass(entry, Document)):
        return None
    where = f"{loc[0]}[{loc[1]}]"
    row = document[loc[0]][loc[1]]
    if not isinstance(row, dict):
        return f"{where!r} is not an object"
    return f"in {where!r}: {problem(entry, row)}"


def problem(model: type[Document], document: Any) -> str | None:
    """What is wrong with ``document`` as a ``model``, in one line, or None."""
    if not isinstance(document, dict):
        return "it does not hold a JSON object"
    try:
        model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        loc = first["loc"]
        depth, description, extra = _description(model, loc)
        row = _row(model, document, loc, depth)
        if row is not None:
            return row
        if first["type"] == "missing" and "field" in first.get("ctx", {}):
            loc, depth = (*loc, first["ctx"]["field"]), depth + 1  # a model's own check
        if first["type"] == "missing" and depth == len(loc):
            return f"{'.'.join(map(str, loc))!r} is missing"
        if len(loc) > depth and extra:  # a value inside an object of values
            if "each" in extra:
                return extra["each"].format(key=loc[depth])
            depth, description = depth + 1, extra["item"]
        depth = max(depth, 1)
        held = document
        for part in loc[:depth]:
            held = held.get(part) if isinstance(held, dict) else None
        key = ".".join(str(part) for part in loc[:depth])
        return f"{key!r} is not {description} (it holds {shown(held)})"
    return None
