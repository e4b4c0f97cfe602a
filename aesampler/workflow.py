"""From a recipe to pictures: the steps behind ``aesampler run``, ``sample`` and ``interpolate``.

``build_components(recipe)`` gives the trained model and the chain exactly as the CLI uses them,
so Python users get the same objects::

    recipe = aesampler.recipe.load_recipe("recipes/quickstart.yaml", ["output.dir=runs/q"])
    parts = aesampler.workflow.build_components(recipe)
    result = parts.chain.run(n=16, steps=10, seed=0)

Files written into the run directory:

* ``samples/step-NNN.png``: the first ``sampling.grid_size`` chains at each recorded step, each
  chain in the same place in every grid (the paper's Figure 4); ``samples/steps.png`` puts them
  side by side; ``samples/samples.safetensors`` holds z and x of every chain at every recorded
  step (keys ``z/step-NNN`` and ``x/step-NNN``) for other tools, or with more chains than
  ``sampling.shard_size`` one file per shard, ``samples/samples-NNNNN-of-MMMMM.safetensors``;
* ``interpolation/interpolation.png``: for each pair of test images, a row of interpolated
  latents decoded as they are, then the same row after ``interpolation.steps`` chain steps (the
  paper's Figures 2, 5 and 6); ``interpolation/interpolation.safetensors`` holds the tensors;
* ``inpainting/``: held-out images with a hidden part filled in by a conditional chain, see
  :func:`aesampler.inpaint.inpaint_test_images`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import __version__, distributed
from .chain import (
    Chain,
    ChainResult,
    chunk_bounds,
    default_record,
    sampling_mode,
    shard_bounds,
    shard_seed,
)
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
from .interpolate import lerp, slerp
from .models import GenerativeAutoencoder
from .plugins import get_registry
from .precision import PrecisionChoice, resolve_precision
from .recipe import Recipe, build_corruption, build_dataset
from .recipe.schema import ComponentSpec, SamplerSpec
from .registry import Registry
from .resources import check_disk, check_memory
from .rundir import (
    FITTED,
    INPAINTING,
    INTERPOLATION,
    INTERPOLATION_GRID,
    INTERPOLATION_TENSORS,
    METRICS,
    PARTIAL,
    RECIPE,
    REPORT,
    SAMPLER_STATE,
    SAMPLERS,
    SAMPLES,
    SETTINGS,
    STEPS_FIGURE,
    TUNING,
    TUNING_FILE,
    RunDir,
    Transaction,
    atomic_write_bytes,
    naming,
    partial_shard_file,
    read_json,
    samples_file,
    save_png,
    write_json,
)
from .samplers import Sampler, SamplerContext, SamplerError, encode_images, encode_posteriors
from .training import resolve_device, train

if TYPE_CHECKING:
    from .evaluation.stopping import AutoSteps
    from .tuning import TunedStart


class WorkflowError(AesamplerError):
    """A run cannot go on: no trained model, outputs in the way, a mismatched checkpoint."""


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
    recipe, sampling = parts.recipe, parts.recipe.sampling
    details = {} if details is None else details
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
    if sampler.fits:  # what it fits is kept in fitted/: checked before any work for it
        RunDir(recipe.output.dir).check_collection(FITTED)
    batchnorm, _ = parts.setting(spec)
    context = parts.sampler_context(log, batchnorm)
    details.update(fit_seconds=0.0, loaded=False)
    if not sampler.fits:
        sampler.fit(context)
        return sampler
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
        "data": recipe.data.model_dump(mode="json"),
        "batchnorm": batchnorm,
        "seed": sampling.seed,
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    identity = json.loads(text)  # as saved: defaults that are not JSON shown as their repr
    run = RunDir(recipe.output.dir)
    folder = run / FITTED / f"{spec.name}-{key}"
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
    with run.new_folder(FITTED, folder.name, "fit") as staged:
        save_tensors(state, staged / SAMPLER_STATE)
        components = parts.registry.provenance([("sampler", spec.name)])
        stats = dict(getattr(sampler, "stats", None) or {})
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
    return sampler


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


def _run_chain(
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


def _grid_nrow(count: int) -> int:
    return max(1, math.ceil(math.sqrt(count)))


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


def with_recipe(run: RunDir, entry: str) -> list[str]:
    """The entries a command writes: its own, and the recipe when the directory has none yet."""
    return [entry] if (run / RECIPE).exists() else [entry, RECIPE]


def write_recipe(parts: Components, txn: Transaction) -> None:
    if RECIPE in txn.entries:
        recipe_text = yaml.safe_dump(parts.recipe.resolved(), sort_keys=False)
        atomic_write_bytes(txn.path(RECIPE), recipe_text.encode())


def chain_steps(
    parts: Components, start: Sampler, log: Callable[[str], None] = print
) -> tuple[int, AutoSteps | None]:
    """``sampling.steps``, the steps ``sampling.start: auto`` chose, or with ``steps: auto``
    the steps that pilot chains choose.

    The pilot runs ``sampling.auto_chains`` chains from ``start`` (seeded with
    ``sampling.seed + 1``, so not the chains being chosen for) up to ``sampling.max_steps``, and
    stops at the first step after which the MMD of their latents to encodings of the
    validation images stops falling (:mod:`aesampler.evaluation.stopping`).
    """
    cfg = parts.recipe.sampling
    if cfg.tuned:
        return parts.start_steps(), None
    if cfg.steps != "auto":
        return cfg.steps, None
    from .evaluation.stopping import choose_steps  # SciPy and scikit-learn: only when needed

    batchnorm, corruption = parts.setting(parts.start_spec)
    reference = parts.sampler_context(log, batchnorm).encodings("valid")
    auto = choose_steps(
        parts.chain_for(corruption),
        start,
        reference,
        max_steps=cfg.max_steps,
        chains=cfg.auto_chains,
        seed=cfg.seed + 1,
        batchnorm=batchnorm,
        chunk_size=cfg.chunk_size,
        precision=parts.precision.precision,
    )
    curve = ", ".join(f"{t}: {v:.4g}" for t, v in auto.curve.items())
    log(f"steps: auto chose {auto.steps} of at most {cfg.max_steps} (MMD² by step: {curve})")
    return auto.steps, auto


@dataclass(frozen=True)
class SampleResult:
    """What ``sample`` wrote: ``num_chains`` chains in ``shards`` files under ``folder``."""

    folder: Path
    num_chains: int
    steps: int
    recorded: tuple[int, ...]
    shards: int
    resumed: int  # shards a killed run had finished, kept rather than run again


def sample(
    parts: Components,
    run_dir: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SampleResult:
    """Run ``sampling.num_chains`` chains and save grids and tensors in ``samples/``.

    The chains run in shards of at most ``sampling.shard_size`` (:func:`aesampler.chain.
    shard_bounds`), shard i as ``Chain.run`` seeded with :func:`aesampler.chain.shard_seed`, so
    memory holds one shard at a time whatever the number of chains. With more than one shard,
    each finished shard is saved at once in ``partial/samples-KEY/`` (KEY: a hash of the model's
    weights and everything that decides the chains): a run killed midway, started again with the
    same settings, keeps the shards it finished and runs the rest.

    The outputs replace ``samples/`` in one transaction, checked before the chains run and
    again when they have: the old samples survive any failure, and nothing that appeared at
    ``samples/`` meanwhile is replaced without ``overwrite``.
    """
    cfg = parts.recipe.sampling
    run = RunDir(run_dir)
    world = distributed.world()
    progress, log = distributed.voice(progress, log)
    distributed.main_first(run.check_replaceable, "sample", [SAMPLES], overwrite)
    if len(shard_bounds(cfg.num_chains, cfg.shard_size)) > 1:  # it keeps progress in partial/
        distributed.main_first(run.check_collection, PARTIAL)
    check_sizes(parts, sample=True, evaluate=False)
    if cfg.tuned:
        from .tuning import resolve_start

        resolve_start(parts, progress=progress, log=log)
    start = parts.shared_start_sampler(log)
    chosen = distributed.main_first(chain_steps, parts, start, log)  # pilot chains: rank 0's
    steps, auto = distributed.broadcast_object(chosen)
    record = cfg.record
    if cfg.tuned:  # the steps asked for (or the default ones) up to the chosen step, and it
        record = record or default_record(cfg.most_steps)
    if record is not None and (auto is not None or cfg.tuned):  # those the chains reach
        record = sorted({t for t in record if t <= steps} | {steps})
    batchnorm, corruption = parts.setting(parts.start_spec)
    shards = shard_bounds(cfg.num_chains, cfg.shard_size)
    count = len(shards)
    chunks = [len(chunk_bounds(b - a, cfg.chunk_size, batchnorm=batchnorm)) for a, b in shards]
    shown = min(cfg.grid_size, cfg.num_chains)
    key = _samples_key(parts, start, steps, record)
    log(f"sample: {parts.precision.describe()}")
    from .report import steps_figure  # matplotlib is imported only when pictures are made

    def run_shard(index: int, bar: tqdm) -> ChainResult:
        a, b = shards[index]
        update = lambda _: bar.update(1)  # noqa: E731
        return parts.run_shard(
            start, index, b - a, seed=cfg.seed, steps=steps, record=record, callback=update
        )

    def shard_tensors(result: ChainResult) -> dict[str, torch.Tensor]:
        tensors = {}
        for t in result.steps:
            tensors[f"z/step-{t:03d}"] = result.z[t].float().contiguous()
            tensors[f"x/step-{t:03d}"] = result.x[t].float().contiguous()
        return tensors

    partial, done = None, []
    try:
        if count > 1:  # finished shards are kept on disk until the run completes
            found = distributed.main_first(run.partial_folder, f"samples-{key}")
            partial, done = distributed.broadcast_object(found)
            done = [i for i in done if i < count]
            if done:
                log(f"sample: resuming, {len(done)} of {count} shards were finished before")
        elif world.is_main:
            run.drop_partial()  # what a killed run with other settings left is of no use now
        todo = [i for i in range(count) if i not in done]
        # Under torchrun the shards are dealt out in turn; one shard is rank 0's, kept in memory.
        mine = todo[world.rank :: world.world_size] if partial is not None else todo
        mine = mine if partial is not None or world.is_main else []
        result = None
        with tqdm(
            total=sum(chunks[i] for i in mine) * (steps + 1),
            desc="chains" if not world.enabled else f"chains ({len(mine)} of {len(todo)} shards)",
            unit="step",
            disable=not progress,
        ) as bar:
            for index in mine:
                result = run_shard(index, bar)
                if partial is not None:
                    save_tensors(shard_tensors(result), partial / partial_shard_file(index))
                    result = None  # on disk now: memory holds one shard at a time
        ran = distributed.gather_object(len(mine))  # on rank 0: every rank's shards are on disk
        if world.enabled and ran is not None:
            log(f"sample: {len(todo)} shards run by {world.world_size} processes: {ran} each")
        if not world.is_main:
            return SampleResult(run.path / SAMPLES, cfg.num_chains, steps, (), count, len(done))

        # The chains took long: checked again, so that whatever appeared at samples/ meanwhile (a
        # folder that is not aesampler's, or a sample without --overwrite) is not replaced.
        run.check_replaceable("sample", [SAMPLES], overwrite)
        with run.transaction("sample", with_recipe(run, SAMPLES)) as txn:
            folder = txn.path(SAMPLES)
            folder.mkdir()
            files = [samples_file(i, count) for i in range(count)]
            if partial is None:
                recorded = result.steps
                save_tensors(shard_tensors(result), folder / files[0])
                first = {t: result.x[t][:shown] for t in recorded}
            else:
                for i, name in enumerate(files):
                    _link_or_copy(partial / partial_shard_file(i), folder / name)
                first = _first_chains([folder / name for name in files], shown)
                recorded = tuple(sorted(first))
            for t in recorded:
                save_png(first[t], folder / f"step-{t:03d}.png", nrow=_grid_nrow(shown))
            settings = dict(
                cfg.model_dump(mode="json"),
                batchnorm=batchnorm,
                steps=steps,
                steps_recorded=list(recorded),
                precision=parts.precision.as_dict(),
                start=parts.start_spec.model_dump(mode="json"),
                start_describes=start.describes,
                chain={"batchnorm": batchnorm, "corruption": corruption},
                tuned=None if parts.tuned is None else parts.tuned.as_dict(),
                steps_auto=None if auto is None else auto.as_dict(),
                shards=[
                    {"file": name, "chains": list(bounds), "seed": shard_seed(cfg.seed, i)}
                    for i, (name, bounds) in enumerate(zip(files, shards))
                ],
            )
            save_settings(
                parts, folder, settings, ["transition", "corruption", "sampler"], corruption
            )
            steps_figure(first, folder / STEPS_FIGURE, parts.start_spec.name)
            write_recipe(parts, txn)
        if partial is not None:
            run.drop_partial(partial.name)
        return SampleResult(
            run.path / SAMPLES, cfg.num_chains, steps, tuple(recorded), count, len(done)
        )
    finally:
        if partial is not None and world.is_main:  # a failure keeps the shards, unlocked
            run.release_partial(partial.name)


def _samples_key(parts: Components, start: Sampler, steps: int, record: list[int] | None) -> str:
    """A hash of everything that decides the chains' values, for resuming their shards: the
    model's weights, the sampling settings, the device the chains run on, the start sampler's
    fitted state (and the data it was fitted on), the chain's corruption, the version."""
    identity = {
        "sampling": parts.recipe.sampling.model_dump(mode="json", exclude={"grid_size"}),
        "start": parts.start_spec.model_dump(mode="json"),
        "setting": parts.setting(parts.start_spec),
        "steps": steps,
        "record": record,
        "device": str(parts.device),
        "precision": parts.precision.precision,
        "start_state": state_digest(start.state_dict()),
        "data": parts.recipe.data.model_dump(mode="json"),
        "transition": parts.recipe.sampling.transition.model_dump(mode="json"),
        "corruption": parts.recipe.chain_corruption.model_dump(mode="json")
        if parts.recipe.chain_corruption
        else None,
        "weights": parts.weights_digest(),
        "aesampler": __version__,
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (instant, no second copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        with naming(target):
            shutil.copyfile(source, target)


def _first_chains(files: list[Path], count: int) -> dict[int, torch.Tensor]:
    """x of the first ``count`` chains at each recorded step, read from the shard files in order
    (only those rows are read)."""
    from safetensors import safe_open

    parts: dict[int, list[torch.Tensor]] = {}
    have = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            names = sorted(k for k in f.keys() if k.startswith("x/step-"))  # noqa: SIM118
            rows = None
            for name in names:
                block = f.get_slice(name)
                rows = min(block.get_shape()[0], count - have)
                parts.setdefault(int(name[len("x/step-") :]), []).append(block[:rows])
            have += rows or 0
        if have >= count:
            break
    return {t: torch.cat(blocks) for t, blocks in sorted(parts.items())}


def interpolate(
    parts: Components, run_dir: Path, *, overwrite: bool = False, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Interpolate between encodings of test images, then apply chain steps (Figure 2)."""
    cfg, sampling = parts.recipe.interpolation, parts.recipe.sampling
    run = RunDir(run_dir)
    run.check_replaceable("interpolate", [INTERPOLATION], overwrite)
    with run.transaction("interpolate", with_recipe(run, INTERPOLATION)) as txn:
        test = parts.dataset("test")
        count = min(2 * cfg.pairs, len(test) - len(test) % 2)
        if count < 2:
            raise WorkflowError(
                f"interpolation needs at least 2 test images; the test split has {len(test)}"
            )
        picks = torch.linspace(0, len(test) - 1, count).round().long()  # spread over the split
        images = torch.stack([test[int(i)][0] for i in picks]).to(parts.device)  # (2P, C, H, W)
        with sampling_mode([parts.model], sampling.batchnorm), torch.inference_mode():
            z = parts.model.encoder(images).mean  # (2P, D): encodings of the test images
        start, end = z[0::2], z[1::2]  # (P, D) each
        weights = torch.linspace(0, 1, cfg.points)
        path = (slerp if cfg.method == "slerp" else lerp)(start, end, weights)  # (P, T, D)
        pairs, points = path.shape[:2]
        result = _run_chain(
            parts,
            "interpolation",
            cfg.steps + 1,
            progress,
            path.reshape(pairs * points, *path.shape[2:]),
            steps=cfg.steps,
            record=[0, cfg.steps],
            batchnorm=sampling.batchnorm,
            seed=cfg.seed,
        )
        plain = result.x[0].reshape(pairs, points, *result.x[0].shape[1:])
        chained = result.x[cfg.steps].reshape(pairs, points, *result.x[0].shape[1:])
        # Pair by pair: the plain row, then the chained row.
        rows = torch.stack([plain, chained], dim=1).flatten(0, 2)
        tensors = {
            "images": images.cpu().contiguous(),
            "z_path": path.cpu().float().contiguous(),
            "x_plain": plain.contiguous(),
            "x_chain": chained.contiguous(),
        }
        folder = txn.path(INTERPOLATION)
        folder.mkdir()
        save_png(rows, folder / INTERPOLATION_GRID, nrow=points)
        save_tensors(tensors, folder / INTERPOLATION_TENSORS)
        settings = dict(cfg.model_dump(mode="json"), batchnorm=sampling.batchnorm)
        save_settings(parts, folder, settings, ["transition", "corruption", "dataset"])
        write_recipe(parts, txn)
    return tensors


def save_settings(
    parts: Components,
    folder: Path,
    settings: dict,
    kinds: list[str],
    corruption: str = "training",
) -> None:
    """What produced these pictures, for the report and for whoever reads them later
    (``corruption``: whether the chains used the recipe's chain corruption or none)."""
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
    components = parts.registry.provenance(used)
    settings = {
        **settings,
        "checkpoint": str(parts.checkpoint),
        "chain_corruption": spec.model_dump() if spec else None,
        "components": components,
    }
    write_json(folder / SETTINGS, settings)
    RunDir(folder.parent).record_components(components)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Tensors as one safetensors file, written atomically."""
    atomic_write_bytes(path, save(tensors))


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report: Path
    trained_steps: int | None
    seconds: float
    metrics: dict | None = None
    inpainting: dict[int, float] | None = None
    comparison: dict | None = None
    tuning: dict | None = None


def run(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    do_sample: bool = True,
    do_interpolate: bool = True,
    do_evaluate: bool = True,
    do_inpaint: bool | None = None,
    do_compare: bool | None = None,
    do_tune: bool = False,
    checkpoint: str | Path | None = None,
) -> RunResult:
    """Train (unless a checkpoint is given), sample, interpolate, inpaint, evaluate, report.

    ``do_interpolate`` and ``do_evaluate`` run their step when the recipe's section is enabled;
    ``do_inpaint`` is None to follow ``inpaint.enabled`` (off by default), True to inpaint anyway
    (the ``inpaint`` command) and False never to.

    With a checkpoint (``checkpoint`` or ``model.checkpoint``) nothing is trained, and only the
    outputs of the commands asked for are written into the run directory (``overwrite``
    replaces those, and only those). A run that trains a new model (or resumes one) remakes its
    pictures and metrics. ``do_compare`` runs the sampler comparison (None: when
    ``samplers.enabled``). ``do_tune`` searches for the best way to sample
    (:mod:`aesampler.tuning`) even when ``sampling.start`` is not ``auto``; with ``auto`` the
    search runs whenever samples or metrics are made and ``tuning/`` holds none for this
    model and these settings.

    Everything that can be checked is checked before anything is written: the recipe, the
    checkpoint and its fit to the recipe, the data's geometry, the feature extractor, the sizes,
    and whether the outputs may be written where they would go.
    """
    from .report import write_report  # matplotlib is imported only when pictures are made

    started = time.perf_counter()
    registry = registry or get_registry()
    # Under torchrun every rank trains, samples and runs evaluation chains, each its share;
    # rank 0 alone writes, interpolates, inpaints, measures, compares and reports.
    main = distributed.world().is_main
    progress, log = distributed.voice(progress, log)
    run_dir = RunDir(recipe.output.dir)
    evaluating = do_evaluate and recipe.evaluate.enabled
    interpolating = do_interpolate and recipe.interpolation.enabled
    inpainting = recipe.inpaint.enabled if do_inpaint is None else do_inpaint
    comparing = recipe.samplers.enabled if do_compare is None else do_compare
    outputs = [
        *([SAMPLES] if do_sample else []),
        *([INTERPOLATION] if interpolating else []),
        *([INPAINTING] if inpainting else []),
        *([METRICS] if evaluating else []),
        *([SAMPLERS] if comparing else []),
    ]
    tuning = do_tune or (recipe.sampling.tuned and (do_sample or evaluating))
    if tuning:
        outputs.append(TUNING)
    if main and (evaluating or comparing):  # fail before training, not after it
        from .evaluation.evaluate import uses_features

        wanted = [
            (m.name, registry.create("metric", m.name, **m.params)) for m in recipe.evaluate.metrics
        ]
        if uses_features(wanted):  # latent-space metrics alone never run the extractor
            spec = recipe.evaluate.feature_extractor
            registry.create("feature_extractor", spec.name, **spec.params).check(
                build_dataset(recipe, "train", registry)
            )
    if main and inpainting:  # a mask that hides nothing (or everything) fails now
        from .inpaint import recipe_mask

        size = build_dataset(recipe, "test", registry).image_size
        recipe_mask(recipe, 1, (size, size))
    trained = None
    if checkpoint is None and recipe.model.checkpoint is None:
        result = train(
            recipe,
            resume=resume,
            overwrite=overwrite,
            registry=registry,
            progress=progress,
            log=log,
        )
        trained = result.steps
        remake = True  # a new run, or one the user asked to continue: its pictures are remade
        parts = build_components(recipe, registry=registry)
    else:
        if resume:
            raise WorkflowError(
                "--resume continues a training run; with a checkpoint to load "
                "(--checkpoint or model.checkpoint) nothing is trained"
            )
        parts = build_components(recipe, checkpoint=checkpoint, registry=registry)
        remake = overwrite
        distributed.main_first(run_dir.check_replaceable, "run", outputs, overwrite)
    if interpolating or evaluating or inpainting or comparing:
        parts.dataset("test")  # the data fits the model: checked before any chain runs
    check_sizes(parts, sample=do_sample, evaluate=evaluating)
    if comparing:
        from .comparison import check_size

        check_size(parts)
    searched = None
    if tuning:
        from .tuning import resolve_start, tune

        if do_tune:  # the tune command: search again
            searched = tune(parts, run_dir.path, overwrite=overwrite, progress=progress, log=log)
        else:
            resolve_start(parts, overwrite=remake, progress=progress, log=log)
        if main and searched is None and (run_dir / TUNING / TUNING_FILE).is_file():
            searched = read_json(run_dir / TUNING / TUNING_FILE, "the search's record")
    if do_sample:
        sample(parts, run_dir.path, overwrite=remake, progress=progress, log=log)
    if not main:  # the other ranks' share of the evaluation chains, then they are done
        if evaluating:
            from .evaluation import evaluate

            evaluate(parts, run_dir.path, registry=registry, progress=progress, log=log)
        seconds = time.perf_counter() - started
        return RunResult(run_dir.path, run_dir / REPORT, trained, seconds)
    if interpolating:
        interpolate(parts, run_dir.path, overwrite=remake, progress=progress)
    filled = None
    if inpainting:
        from .inpaint import inpaint_test_images

        done = inpaint_test_images(
            parts, run_dir.path, overwrite=remake, progress=progress, log=log
        )
        filled = done.mean_error
    metrics = None
    if evaluating:
        from .evaluation import evaluate

        run_dir.check_replaceable("evaluate", [METRICS], remake)
        used = [("metric", spec.name) for spec in recipe.evaluate.metrics]
        used.append(("feature_extractor", recipe.evaluate.feature_extractor.name))
        with run_dir.transaction("evaluate", with_recipe(run_dir, METRICS)) as txn:
            metrics = evaluate(parts, run_dir.path, registry=registry, progress=progress, log=log)
            metrics["components"] = registry.provenance(used)
            write_json(txn.path(METRICS), metrics)
            write_recipe(parts, txn)
        run_dir.record_components(metrics["components"])
    comparison = None
    if comparing:
        from .comparison import compare_samplers

        comparison = compare_samplers(
            parts, run_dir.path, overwrite=remake, progress=progress, log=log
        )
    report = write_report(run_dir.path)
    seconds = time.perf_counter() - started
    return RunResult(run_dir.path, report, trained, seconds, metrics, filled, comparison, searched)
