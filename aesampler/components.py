"""What a recipe builds for sampling: the trained model, its chain, and the samplers it fits.

``build_components(recipe)`` gives the trained model and the chain exactly as the CLI uses them,
so Python users get the same objects::

    recipe = aesampler.recipe.load_recipe("recipes/quickstart.yaml", ["output.dir=runs/q"])
    parts = aesampler.components.build_components(recipe)
    result = parts.chain.run(n=16, steps=10, seed=0)

This is the service layer below the stages (:mod:`aesampler.stages`): every stage, the
comparison, inpainting and the tuning search take a :class:`Components`; none of them imports
the orchestrator (:mod:`aesampler.workflow`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .chain import Chain, ChainResult, default_record, shard_seed
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    load_located,
    locate_checkpoint,
    model_digest,
)
from .data import ImageDataset
from .errors import AesamplerError, quoted
from .formats import loaded_by
from .models import GenerativeAutoencoder
from .plugins import get_registry
from .precision import PrecisionChoice, resolve_precision
from .recipe import Recipe, build_corruption, build_dataset
from .recipe.schema import ComponentSpec, SamplerSpec
from .registry import Registry
from .resources import check_disk, check_memory
from .rundir import (
    FITTED,
    SAMPLER_STATE,
    SETTINGS,
    RunDir,
    save_tensors,
    write_json,
)
from .samplers import Sampler, SamplerContext, SamplerError, encode_images, encode_posteriors
from .training import resolve_device
from .version import __version__


class WorkflowError(AesamplerError):
    """A run cannot go on: no trained model, outputs in the way, a mismatched checkpoint."""


class TuningError(AesamplerError):
    """The search cannot run or its record cannot be used."""


@dataclass(frozen=True)
class TunedStart:
    """What the search chose: the start entry (its batch-norm mode and corruption set) and the
    chain steps."""

    spec: SamplerSpec
    steps: int
    label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "start": self.spec.model_dump(mode="json"),
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TunedStart:
        try:
            spec = SamplerSpec.model_validate(data["start"])
            steps = data["steps"]
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
            if spec.batchnorm is None or spec.corruption is None:
                raise ValueError("the chosen start names no batch-norm mode or corruption")
            return cls(spec, steps, str(data.get("label", spec.name)))
        except (KeyError, TypeError, ValueError) as error:
            raise TuningError(
                f"{where} does not hold a choice aesampler wrote ({error}); run aesampler tune "
                "--overwrite"
            ) from None


@dataclass
class Components:
    """What a recipe builds for sampling: the trained model and its chain."""

    recipe: Recipe
    model: GenerativeAutoencoder
    chain: Chain
    device: torch.device
    checkpoint: Path
    registry: Registry
    #: What ``sampling.precision`` resolved to on ``device`` (``auto``: by the hardware).
    precision: PrecisionChoice
    _start: Sampler | None = field(default=None, init=False, repr=False)
    _contexts: dict[str, SamplerContext] = field(default_factory=dict, init=False, repr=False)
    _chains: dict[str, Chain] = field(default_factory=dict, init=False, repr=False)
    _digest: str | None = field(default=None, init=False, repr=False)
    #: The configuration ``sampling.start: auto`` chose (set by :func:`resolve_start`).
    tuned: TunedStart | None = field(default=None, init=False, repr=False)

    def weights_digest(self) -> str:
        """SHA-256 of the checkpoint's weights file (for a folder in another format, of the
        files that make its model): what the model is, for caches' keys."""
        if self._digest is None:
            self._digest = model_digest(self.checkpoint, self.registry)
        return self._digest

    @property
    def start_spec(self) -> SamplerSpec:
        """The start sampler's entry: ``sampling.start``, or what ``auto`` chose."""
        if self.recipe.sampling.tuned:
            if self.tuned is None:
                raise WorkflowError(
                    "sampling.start is auto, but no configuration has been chosen yet: run "
                    "aesampler tune (or resolve_start) first"
                )
            return self.tuned.spec
        return self.recipe.sampling.start

    def start_steps(self) -> int:
        """The chain steps of ``sampling.start: auto``'s choice."""
        self.start_spec  # noqa: B018 (raises when nothing is chosen yet)
        return self.tuned.steps

    def setting(self, spec: SamplerSpec) -> tuple[str, str]:
        """(batch-norm mode, chain corruption) of a sampler entry, defaults filled in."""
        return spec.setting(self.recipe.sampling.batchnorm)

    def start_sampler(self, log: Callable[[str], None] = print) -> Sampler:
        """The start sampler (``sampling.start``, or what ``auto`` chose), fitted (or loaded
        from the run directory)."""
        if self._start is None:
            self._start = fit_sampler(self, self.start_spec, log)
        return self._start

    def chain_for(self, corruption: str = "training") -> Chain:
        """The recipe's chain with its corruption (``training``), or without any (``none``)."""
        if corruption not in ("training", "none"):
            raise ValueError(f"corruption must be 'training' or 'none', got {corruption!r}")
        if corruption == "training" or self.recipe.chain_corruption is None:
            return self.chain
        if corruption not in self._chains:
            self._chains[corruption] = _build_chain(self.recipe, self.model, self.registry, None)
        return self._chains[corruption]

    def shared_start_sampler(self, log: Callable[[str], None] = print) -> Sampler:
        """:meth:`start_sampler`, fitted once for all the processes of a run under torchrun.

        Rank 0 fits it (and saves what it fitted in the run directory) while the others wait;
        they then load that state. In a single process it is ``start_sampler(log)``. Every rank
        must call it.
        """
        distributed.main_first(self.start_sampler, log)
        return self.start_sampler(log)

    def run_shard(
        self,
        start: Sampler,
        index: int,
        n: int,
        *,
        seed: int,
        steps: int,
        record: Iterable[int] | None,
        callback: Callable | None = None,
        setting: tuple[str, str] | None = None,
    ) -> ChainResult:
        """Shard ``index`` (its ``n`` chains) of a run seeded with ``seed``: one ``Chain.run``
        seeded with :func:`aesampler.chain.shard_seed`, with the recipe's chunks and precision
        and the start entry's ``setting`` (batch-norm mode, corruption; default: those of the
        start sampler's entry); results on the CPU. ``sample`` and the evaluation run their
        chains so."""
        cfg = self.recipe.sampling
        batchnorm, corruption = setting or self.setting(self.start_spec)
        return self.chain_for(corruption).run(
            n=n,
            start=start,
            steps=steps,
            record=record,
            chunk_size=cfg.chunk_size,
            batchnorm=batchnorm,
            seed=shard_seed(seed, index),
            out_device="cpu",
            callback=callback,
            precision=self.precision.precision,
        )

    def sampler_context(
        self, log: Callable[[str], None] = print, batchnorm: str | None = None
    ) -> SamplerContext:
        """What samplers fit on: this model's encodings of each split, each encoded once, with
        batch normalisation in ``batchnorm`` mode (default: ``sampling.batchnorm``)."""
        sampling = self.recipe.sampling
        mode = batchnorm or sampling.batchnorm
        if mode not in self._contexts:

            def encode(split: str) -> torch.Tensor:
                loader = DataLoader(self.dataset(split), batch_size=256)
                return encode_images(
                    self.model,
                    (x for x, _ in loader),
                    batchnorm=mode,
                    seed=sampling.seed,
                    device=self.device,
                )

            def posterior(split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
                # Q(z|x)'s mean and spread for each image: a Gaussian encoder's own, or for a
                # deterministic one the spread of encodings of corrupted copies (the training
                # corruption's; none without one).
                loader = DataLoader(self.dataset(split), batch_size=256)
                return encode_posteriors(
                    self.model,
                    (x for x, _ in loader),
                    batchnorm=mode,
                    device=self.device,
                    corruption=build_corruption(self.recipe, self.registry),
                    seed=sampling.seed,
                )

            self._contexts[mode] = SamplerContext(
                self.model.decoder.latent_shape,
                encode,
                posterior=posterior,
                seed=sampling.seed,
                device=self.device,
                model=self.model,
                log=log,
                registry=self.registry,
            )
        context = self._contexts[mode]
        context.log = log
        return context

    def dataset(self, split: str) -> ImageDataset:
        """A split of the recipe's data, checked against the geometry the model was trained on."""
        dataset = build_dataset(self.recipe, split, self.registry)
        arch = self.model.architecture
        wanted = (arch.get("channels"), arch.get("image_size"))
        if (dataset.channels, dataset.image_size) != wanted and None not in wanted:
            raise WorkflowError(
                f"data {self.recipe.data.name!r} gives {dataset.channels}-channel images of "
                f"{dataset.image_size} x {dataset.image_size}, but the model in "
                f"{quoted(self.checkpoint)} "
                f"was trained on {wanted[0]}-channel images of {wanted[1]} x {wanted[1]}; set "
                "data.image_size (and the data) to match"
            )
        return dataset


def fit_sampler(
    parts: Components,
    spec: SamplerSpec,
    log: Callable[[str], None] = print,
    details: dict | None = None,
) -> Sampler:
    """Build the sampler ``spec`` names and fit it, or load what it fitted before for this model.

    The sampler fits on encodings made in the entry's batch-norm mode. A sampler that fits
    (``fits = True``) saves its state in the run directory under ``fitted/NAME-KEY/``, KEY a
    hash of its settings (with the defaults it was not given), the aesampler version, the
    model's weights, the data, the batch-norm mode and the seed; a later command with the same
    KEY loads it instead of fitting again. (The entry's chain corruption is not in KEY: it acts
    after the draws, so what a sampler fits does not depend on it.) Beside the state,
    ``settings.json`` keeps its checksum (:func:`state_digest`), what fitting measured (a
    sampler's ``stats``) and how long it took; ``details``, when given, receives ``fit_seconds``
    and ``loaded``.

    A fitted state is checked by the sampler (:meth:`Sampler.check_state`) before it is saved: one
    with problems is a WorkflowError and nothing is saved. A saved state is used only if it
    matches its checksum, passes the same check and loads; otherwise it is fitted again, with one
    log line naming the file, and the new fit replaces that folder (only that folder).
    """
    details = {} if details is None else details
    sampler = _new_sampler(parts, spec)
    if sampler.fits:  # what it fits is kept in fitted/: checked before any work for it
        RunDir(parts.recipe.output.dir).check_collection(FITTED)
    batchnorm, _ = parts.setting(spec)
    context = parts.sampler_context(log, batchnorm)
    details.update(fit_seconds=0.0, loaded=False)
    if not sampler.fits:
        sampler.fit(context)
        return sampler
    identity, key = _fitted_identity(parts, spec, batchnorm)
    folder = RunDir(parts.recipe.output.dir) / FITTED / f"{spec.name}-{key}"
    if (folder / SAMPLER_STATE).is_file():
        try:
            fitted = _load_fitted(sampler, folder)
        except _UnusableState as error:  # changed, damaged, or not this sampler's: fit again
            log(
                f"sampler {spec.name!r}: the fitted state {quoted(folder / SAMPLER_STATE)} cannot "
                f"be used ({error}); refitting"
            )
            sampler = parts.registry.create("sampler", spec.name, **spec.params)
        else:
            sampler.latent_shape = context.latent_shape
            if isinstance(fitted, dict):
                if isinstance(fitted.get("stats"), dict):
                    sampler.stats = dict(fitted["stats"])
                if isinstance(fitted.get("fit_seconds"), (int, float)):
                    details["fit_seconds"] = float(fitted["fit_seconds"])
            details["loaded"] = True
            log(f"sampler {spec.name!r}: loaded what it fitted from {folder}")
            return sampler
    _fit_and_save(parts, spec, sampler, context, folder, identity, details, log)
    return sampler


def _new_sampler(parts: Components, spec: SamplerSpec) -> Sampler:
    """The sampler ``spec`` names, checked to be a Sampler that can sample this model."""
    sampler = parts.registry.create("sampler", spec.name, **spec.params)
    if not isinstance(sampler, Sampler):
        raise WorkflowError(
            f"sampler {spec.name!r} returned {type(sampler).__name__}, not an "
            "aesampler.samplers.Sampler"
        )
    try:
        sampler.check_model(parts.model)
    except SamplerError as error:
        raise WorkflowError(f"sampler {spec.name!r}: {error}") from None
    return sampler


def _fitted_identity(parts: Components, spec: SamplerSpec, batchnorm: str) -> tuple[dict, str]:
    """What decides a fitted state (as its ``settings.json`` records it) and KEY, its hash."""
    component = parts.registry.get("sampler", spec.name)
    settings = {
        name: param.default
        for name, param in component.parameters().items()
        if param.default is not param.empty
    }
    settings.update(spec.params)
    identity = {
        "sampler": {"name": spec.name, **settings},
        "aesampler": __version__,
        "weights": parts.weights_digest(),
        "data": parts.recipe.data.model_dump(mode="json"),
        "batchnorm": batchnorm,
        "seed": parts.recipe.sampling.seed,
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return json.loads(text), key  # as saved: defaults that are not JSON shown as their repr


def _fit_and_save(
    parts: Components,
    spec: SamplerSpec,
    sampler: Sampler,
    context: SamplerContext,
    folder: Path,
    identity: dict,
    details: dict,
    log: Callable[[str], None],
) -> None:
    """Fit ``sampler``, check its state, and save it in ``folder`` (``fitted/NAME-KEY/``)."""
    started = time.perf_counter()
    sampler.fit(context)
    seconds = time.perf_counter() - started
    details["fit_seconds"] = seconds
    log(f"sampler {spec.name!r}: fitted in {seconds:.1f}s")
    state = {k: v.contiguous() for k, v in sampler.state_dict().items()}
    problems = _state_problems(sampler, state)
    if problems:  # refitting would give the same: the fit is deterministic
        raise WorkflowError(
            f"sampler {spec.name!r} fitted a state that cannot be used ({'; '.join(problems)}); "
            "nothing was saved. Its settings do not suit this model's encodings: change them, "
            "or sampling.seed"
        )
    run = RunDir(parts.recipe.output.dir)
    with run.new_folder(FITTED, folder.name, "fit") as staged:
        save_tensors(state, staged / SAMPLER_STATE)
        components = parts.registry.provenance([("sampler", spec.name)])
        stats = dict(sampler.stats)
        write_json(
            staged / SETTINGS,
            {
                **identity,
                STATE_CHECKSUM: state_digest(state),
                "fit_seconds": seconds,
                "stats": stats,
                "components": components,
            },
        )
    run.record_components(components)


#: The key in a fitted folder's ``settings.json`` that holds the state's checksum.
STATE_CHECKSUM = "state_sha256"


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: each one's name, dtype, shape and bytes, in the order of the names.

    The checksum of a fitted state in its ``settings.json``, and the part of the samples' key that
    says which fitted start sampler drew them.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)])  # one line: no \n
        digest.update(header.encode() + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _UnusableState(Exception):
    """A saved fitted state that is not used (the message says why); it is fitted again."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _state_problems(sampler: Sampler, state: Mapping[str, torch.Tensor]) -> list[str]:
    """``sampler.check_state(state)``, each problem on one line; a check that raises is one."""
    try:
        return [" ".join(str(p).split()) for p in sampler.check_state(state) or []]
    except Exception as error:  # a plugin's check that cannot read the state
        return [f"its check failed ({type(error).__name__}: {_one_line(error)})"]


def _load_fitted(sampler: Sampler, folder: Path) -> object:
    """Load ``folder``'s state into ``sampler`` and give its ``settings.json``, or raise
    :class:`_UnusableState` saying why the state is not what was fitted, or not usable."""
    try:
        state = load_file(str(folder / SAMPLER_STATE))
    except Exception as error:  # safetensors' own error, or an OSError
        raise _UnusableState(f"it cannot be read: {_one_line(error)}") from None
    try:
        fitted = json.loads((folder / SETTINGS).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # missing, not UTF-8, not JSON
        why = _one_line(error)
        raise _UnusableState(f"the {SETTINGS} beside it cannot be read: {why}") from None
    recorded = fitted.get(STATE_CHECKSUM) if isinstance(fitted, dict) else None
    if not isinstance(recorded, str):
        raise _UnusableState(f"the {SETTINGS} beside it records no checksum of it")
    if recorded != state_digest(state):
        raise _UnusableState(
            f"it does not match the checksum in {SETTINGS}: it was changed after it was fitted"
        )
    problems = _state_problems(sampler, state)
    if problems:
        raise _UnusableState("; ".join(problems))
    try:
        sampler.load_state_dict(state)
    except Exception as error:  # not this sampler's state (a plugin may raise anything)
        raise _UnusableState(_one_line(error)) from None
    return fitted


def checkpoint_for(
    recipe: Recipe, override: str | Path | None = None, registry: Registry | None = None
) -> Path:
    """The checkpoint to sample: ``override``, else ``model.checkpoint``, else the run's own.

    ``override`` and ``model.checkpoint`` may be folders in any registered checkpoint format
    (:func:`aesampler.checkpoint.locate_checkpoint`); the run's own is aesampler's.
    """
    for candidate in (override, recipe.model.checkpoint):
        if candidate is not None:
            return locate_checkpoint(candidate, registry).folder
    try:
        return find_checkpoint(recipe.output.dir)
    except CheckpointError:
        raise WorkflowError(
            f"no trained model: {recipe.output.dir!r} holds no checkpoint and model.checkpoint is "
            "not set; train first (aesampler train / aesampler run) or set model.checkpoint"
        ) from None


def build_components(
    recipe: Recipe,
    *,
    checkpoint: str | Path | None = None,
    registry: Registry | None = None,
) -> Components:
    """Load the recipe's trained model and build the chain its ``sampling`` section describes."""
    registry = registry or get_registry()
    folder = checkpoint_for(recipe, checkpoint, registry)
    located = locate_checkpoint(folder, registry)
    _check_format(recipe, located, registry)
    device = distributed.rank_device(resolve_device(recipe.sampling.device or recipe.train.device))
    # Another library's folder: the recipe's model keys are its load options.
    options = {} if located.own else recipe.model.params
    model, info = load_located(located, registry, device, options)
    # Chain.run itself holds the weights in channels-last layout for bf16 (the fast layout).
    precision = resolve_precision(device, recipe.sampling.precision)
    wanted = {"kind": recipe.model.name, **recipe.model.params}
    held = {"kind": info["model"]["kind"], **info["model"]["architecture"]}
    clashes = {k: (v, held.get(k)) for k, v in wanted.items() if held.get(k) != v}
    if clashes and located.own:  # (another format's checkpoint: the keys were its options)
        detail = ", ".join(f"{k}: recipe {a!r}, checkpoint {b!r}" for k, (a, b) in clashes.items())
        raise WorkflowError(
            f"the checkpoint {quoted(folder)} does not match the recipe's model ({detail})"
        )
    chain = _build_chain(recipe, model, registry, recipe.chain_corruption)
    return Components(recipe, model, chain, device, folder, registry, precision)


def _check_format(recipe: Recipe, located: Checkpoint, registry: Registry) -> None:
    """The recipe's model kind is the one the checkpoint's format loads."""
    name = recipe.model.name
    if not located.own and located.format.model != name:
        raise WorkflowError(
            f"the checkpoint {quoted(located.folder)} is a folder in the "
            f"{located.describe()}, whose models are of kind {located.format.model!r}; set "
            f"model.name: {located.format.model} in the recipe (it names {name!r})"
        )
    owner = loaded_by(registry, name)
    if located.own and owner is not None:
        raise WorkflowError(
            f"model {name!r} is loaded from folders in the checkpoint format "
            f"{owner[0].name!r} ({owner[0].distribution}), but {quoted(located.folder)} is an "
            "aesampler checkpoint; set model.name to the kind of model it holds (its model.json "
            "says which)"
        )


def _build_chain(
    recipe: Recipe, model: GenerativeAutoencoder, registry: Registry, spec: ComponentSpec | None
) -> Chain:
    """The recipe's transition around the model's networks, corrupting with ``spec`` (or not)."""
    corruption = registry.create("corruption", spec.name, **spec.params) if spec else None
    transition = registry.create(
        "transition",
        recipe.sampling.transition.name,
        encoder=model.encoder,
        decoder=model.decoder,
        corruption=corruption,
        **recipe.sampling.transition.params,
    )
    return Chain.from_transition(transition, model.decoder)


def run_chain(
    parts: Components, desc: str, total: int, progress: bool, *args, **kwargs
) -> ChainResult:
    """``parts.chain.run(...)`` with a progress bar over chunk steps; results on the CPU."""
    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
        return parts.chain.run(
            *args,
            out_device="cpu",
            callback=lambda _: bar.update(1),
            precision=parts.precision.precision,
            **kwargs,
        )


def sample_bytes(parts: Components, chains: int, steps: int) -> int:
    """Bytes of the recorded z and x of ``chains`` chains at ``steps`` steps (float32)."""
    latent = math.prod(parts.model.decoder.latent_shape)
    arch = parts.model.architecture
    image = arch.get("channels", 3) * arch.get("image_size", 64) ** 2
    return 4 * chains * steps * (latent + image)


def check_sizes(parts: Components, *, sample: bool, evaluate: bool) -> None:
    """Refuse chain counts whose recorded tensors cannot fit in memory, before any work."""
    recipe = parts.recipe
    cfg = recipe.sampling
    needs = []
    if sample:  # one shard is in memory at a time
        record = cfg.record or default_record(cfg.most_steps)
        largest = math.ceil(cfg.num_chains / math.ceil(cfg.num_chains / cfg.shard_size))
        key, value = (
            ("sampling.shard_size", cfg.shard_size)
            if largest < cfg.num_chains
            else ("sampling.num_chains", cfg.num_chains)
        )
        needs.append((sample_bytes(parts, largest, len(record)), key, value))
        # Every shard is written to disk: refuse a run that would fill it, before it starts.
        # What partial/ holds is room for it (reused on resume, deleted otherwise).
        total = sample_bytes(parts, cfg.num_chains, len(record))
        total -= RunDir(recipe.output.dir).partial_bytes()
        check_disk(total, recipe.output.dir, f"sampling.num_chains={cfg.num_chains}")
    if evaluate and recipe.evaluate.enabled:
        ev = recipe.evaluate
        # Latents at every step up to the last evaluated one, images at the evaluated ones.
        latent = math.prod(parts.model.decoder.latent_shape)
        total = sample_bytes(parts, ev.num_chains, len(ev.steps))
        total += 8 * ev.num_chains * (max(ev.steps) + 1) * latent
        needs.append((total, "evaluate.num_chains", ev.num_chains))
    for nbytes, key, value in needs:
        check_memory(nbytes, f"{key}={value}")


def settings_document(
    parts: Components, settings: dict, kinds: list[str], corruption: str = "training"
) -> dict:
    """What produced an output folder's pictures, for the report and for whoever reads them
    later: ``settings`` with the checkpoint, the chain corruption (``corruption``: whether the
    chains used the recipe's chain corruption or none) and the components of ``kinds`` that made
    them (with the distributions that provided them). Written by
    :func:`aesampler.rundir.save_settings`."""
    spec = parts.recipe.chain_corruption if corruption == "training" else None
    used = [("model", parts.recipe.model.name)]
    if "transition" in kinds:
        used.append(("transition", parts.recipe.sampling.transition.name))
    if "corruption" in kinds and spec is not None:
        used.append(("corruption", spec.name))
    if "sampler" in kinds:
        used.append(("sampler", parts.start_spec.name))
    if "dataset" in kinds:
        used.append(("dataset", parts.recipe.data.name))
    return {
        **settings,
        "checkpoint": str(parts.checkpoint),
        "chain_corruption": spec.model_dump() if spec else None,
        "components": parts.registry.provenance(used),
    }
