"""Training a generative autoencoder from a recipe.

``train(recipe)`` builds the data, model and corruption, then runs epochs of
``model.training_step(x, C(x), ...)``. It writes into the run directory:

* ``recipe.yaml``: the resolved recipe (every default filled in);
* ``metrics.jsonl``: one JSON line per optimiser step (losses) and per epoch (means, validation
  reconstruction, wall time);
* ``images/epoch-NNN-reconstructions.png`` (rows: data, corrupted input if any,
  reconstruction) and ``images/epoch-NNN-samples.png`` (decoded prior draws, batch-statistics
  BN as in the paper), after every epoch;
* ``checkpoints/``: a complete checkpoint after every epoch and when training stops
  (see :mod:`aesampler.checkpoint`).

Randomness: ``train.seed`` seeds the weight initialisation and dropout (PyTorch's global
generator), the data order (epoch e's order is a permutation drawn from ``seed + e``, as
``DistributedSampler`` draws it) and the corruption and latent noise (a generator seeded with
``seed + 1``). The random states are saved in every checkpoint, so a resumed run continues
exactly as an uninterrupted one would (bit for bit on CPU).

Under torchrun (see docs/distributed.md) every rank builds the same initial weights; rank r
trains on every world_size-th image of each epoch's order, ``train.batch_size`` images per step,
so one step uses world_size × batch_size images; the model's ``ddp_modules`` run wrapped in
DistributedDataParallel, which averages the gradients over the ranks. Dropout and the noise
of rank r > 0 come from seeds derived from (seed, rank), so ranks draw different noise (rank 0's
are a single process's). Logged losses are averaged over the ranks; validation, grids, metrics,
checkpoints and the run directory are rank 0's alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import distributed
from .chain import Chain
from .checkpoint import (
    MODEL_WEIGHTS,
    TRAINING_STATE,
    CheckpointError,
    find_checkpoint,
    load_training_state,
    load_weights,
    read_info,
    save_checkpoint,
)
from .errors import AesamplerError, quoted
from .plugins import get_registry
from .precision import PrecisionChoice, autocast_dtype, resolve_precision
from .recipe import Recipe, build_corruption, build_dataset, build_model
from .registry import Registry
from .rundir import (
    CHECKPOINTS,
    IMAGES,
    OUTPUTS,
    RECIPE,
    TRAIN_LOG,
    RunDir,
    atomic_write_bytes,
    naming,
    save_png,
)
from .version import __version__


class TrainingError(AesamplerError):
    """Training cannot start or cannot go on (non-finite loss, run directory in the way)."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    epochs_completed: int
    seconds: float
    last_losses: dict[str, float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise TrainingError(f"train.device: {name!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available; use 'cpu'")
    return device


def train_precision(device: torch.device, precision: str) -> PrecisionChoice:
    """What ``train.precision`` means on ``device`` (:func:`aesampler.precision.resolve_precision`).

    ``auto`` trains in bf16 only where bfloat16 itself is fast (never float16: its narrow range
    needs loss scaling, which the models' steps do not do). An explicit ``bf16`` on a CUDA device
    without bfloat16 is refused, since autocast would fall back to float16 there.
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(
            f"train.precision is 'bf16' but {device} has no bfloat16 support (float16 training "
            "would need loss scaling); use train.precision: fp32 or auto"
        )
    choice = resolve_precision(device, precision)
    if choice.precision == "bf16" and autocast_dtype(device) != torch.bfloat16:
        reason = f"{choice.reason}, but no bfloat16 (float16 training would need loss scaling)"
        return PrecisionChoice(choice.requested, "fp32", False, reason)
    return choice


class _Metrics:
    """Appends JSON lines to metrics.jsonl, flushed line by line (None: another rank's, no file)."""

    def __init__(self, path: Path | None):
        # Line-buffered: a crash loses no line. Closed by close(), in _Trainer.run's finally.
        self._path = path
        self._file = open(path, "a", buffering=1) if path is not None else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            with naming(self._path):  # a full disk: the message names the log
                self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            with naming(self._path):
                self._file.close()


def train(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train the recipe's model and return where its run directory and checkpoint are.

    Everything that can be checked is checked before the run directory is touched: the data
    (every file's header), the model's size, the corruption, and for ``resume`` the checkpoint
    and its fit to the recipe. A new run is a run-directory transaction that commits when its
    first checkpoint is on disk: a training that fails earlier leaves the directory as it was.
    """
    _check_request(recipe, resume, overwrite)
    progress, log = distributed.voice(progress, log)  # rank 0 speaks for the run
    parts = _build(recipe, registry, log)
    if resume:
        start = _resume(parts, log)
        return _Trainer(parts, start, progress, log).run()
    with contextlib.ExitStack() as stack:
        # Rank 0 alone opens the run directory's transaction; it spans the whole training.
        txn = distributed.main_first(_begin, stack, parts, overwrite, registry)
        trainer = _Trainer(parts, _Start(), progress, log)
        return trainer.run(on_first_checkpoint=txn.commit if txn is not None else None)


def _check_request(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse a training that cannot be meant, before anything is built."""
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite contradict each other; choose one")
    if recipe.model.checkpoint is not None:
        raise TrainingError(
            f"model.checkpoint is set ({recipe.model.checkpoint!r}): that model is loaded, not "
            "trained; sample or evaluate it (aesampler sample/evaluate/run), or remove "
            "model.checkpoint to train a new model"
        )


@dataclass(frozen=True)
class _Parts:
    """What a training trains with, fresh or resumed: built by :func:`_build`."""

    recipe: Recipe
    run: RunDir
    model: Any
    optimizers: dict[str, torch.optim.Optimizer]
    replicas: _Replicas
    corruption: Any
    train_set: Any
    valid_set: Any


def _build(recipe: Recipe, registry: Registry | None, log: Callable[[str], None]) -> _Parts:
    """Build everything before touching the run directory: bad data or parameters lose nothing."""
    cfg = recipe.train
    world = distributed.world()
    device = distributed.rank_device(resolve_device(cfg.device))
    precision = train_precision(device, cfg.precision)
    log(f"train: {precision.describe()}")
    run = RunDir(recipe.output.dir)
    train_set, valid_set = _datasets(recipe, registry, log)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(recipe, train_set, registry).to(device)
    model.train_precision = precision.precision  # what model.autocast() computes in
    if world.rank > 0:  # dropout: each rank its own masks
        torch.manual_seed(_rank_seed(cfg.seed, world.rank, 0))
    corruption = build_corruption(recipe, registry)
    optimizers = {
        name: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
        for name, params in model.optimizer_groups().items()
    }
    replicas = _Replicas(model, optimizers, device)  # before the run directory is touched
    return _Parts(recipe, run, model, optimizers, replicas, corruption, train_set, valid_set)


def _datasets(recipe: Recipe, registry: Registry | None, log: Callable[[str], None]) -> tuple:
    """The training and validation splits, checked to hold a batch for every rank."""
    cfg, world = recipe.train, distributed.world()
    train_set = build_dataset(recipe, "train", registry)
    valid_set = build_dataset(recipe, "valid", registry)
    for dataset in (train_set, valid_set):
        note = dataset.skipped_note()
        if note is not None:
            log(note)
    per_rank = len(train_set) // world.world_size
    if per_rank < cfg.batch_size:
        ranks = f": {per_rank} for each of {world.world_size} ranks" if world.enabled else ""
        raise TrainingError(
            f"train.batch_size is {cfg.batch_size} but the training split of "
            f"{recipe.data.name!r} holds only {len(train_set)} images{ranks}"
        )
    return train_set, valid_set


def _rank_seed(seed: int, rank: int, stream: int) -> int:
    """The seed of one random stream of one rank.

    Rank 0 keeps a single process's seeds (``seed + stream``); rank r > 0 gets a seed hashed from
    (seed, stream, rank), far from every other rank's.
    """
    if rank == 0:
        return seed + stream
    digest = hashlib.blake2b(f"aesampler:{seed}:{stream}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63: any torch seed


class _Replicas:
    """The model's ``ddp_modules`` wrapped in DistributedDataParallel, in their places for a step.

    Only :meth:`in_place` puts the wrappers into the model: everywhere else the model holds its
    own modules, so its checkpoints have a single process's state-dict keys and rank 0 validates
    and draws grids without the other ranks. BN running statistics are rank 0's
    (``forward_sync_buffers``: DDP copies them to every rank before each forward). A single process
    wraps nothing.
    """

    def __init__(self, model, optimizers: dict[str, torch.optim.Optimizer], device: torch.device):
        self.model = model
        self.wrapped: dict[str, DistributedDataParallel] = {}
        if not distributed.world().enabled:
            return
        for name in _ddp_module_names(model, optimizers):
            self.wrapped[name] = DistributedDataParallel(
                getattr(model, name),
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=True,
            )

    @contextlib.contextmanager
    def in_place(self) -> Iterator[None]:
        for name, wrapper in self.wrapped.items():
            setattr(self.model, name, wrapper)
        try:
            yield
        finally:
            for name, wrapper in self.wrapped.items():
                setattr(self.model, name, wrapper.module)


def _ddp_module_names(model, optimizers: dict[str, torch.optim.Optimizer]) -> tuple[str, ...]:
    """The model's ``ddp_modules``, checked to cover every parameter its optimisers step."""
    what = f"model {getattr(model, 'kind', '?')!r} ({type(model).__qualname__})"
    names = getattr(model, "ddp_modules", None)
    if names is None:
        raise distributed.DistributedError(
            f"{what} cannot train under torchrun: it does not set ddp_modules, the names of its "
            "submodules whose forward passes in training_step make every gradient its "
            "optimisers use (see 'Your own model' in docs/distributed.md); train it in one process"
        )
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise distributed.DistributedError(
            f"{what}: ddp_modules names {unknown}, which are not submodules of the model "
            f"(its submodules: {sorted(children)})"
        )
    owner: dict[int, str] = {}
    for name in names:
        for param in children[name].parameters():
            if owner.setdefault(id(param), name) != name:
                raise distributed.DistributedError(
                    f"{what}: ddp_modules {owner[id(param)]!r} and {name!r} share parameters; "
                    "each parameter must belong to one of them"
                )
    param_names = {id(p): n for n, p in model.named_parameters()}
    outside = [
        param_names.get(id(p), "?")
        for optimizer in optimizers.values()
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) not in owner
    ]
    if outside:
        raise distributed.DistributedError(
            f"{what}: its optimisers step {outside[:3]}{' ...' if len(outside) > 3 else ''}, "
            f"which belong to none of its ddp_modules {list(names)}: their gradients would not "
            "be averaged over the ranks"
        )
    return tuple(names)


def _begin(
    stack: contextlib.ExitStack, parts: _Parts, overwrite: bool, registry: Registry | None
) -> Any:
    """Rank 0 alone: open a new run's transaction on ``stack`` (so that it spans the whole
    training; it commits at the first checkpoint) and write the recipe and its provenance."""
    run = parts.run
    train_entries = OUTPUTS["train"]
    owned_before = list(run.owned()) if run.is_aesampler() else []
    # A new model makes every output of the old one stale: all of them are replaced.
    run.check_replaceable("train", [*train_entries, *owned_before], overwrite)
    stale = [e for e in owned_before if e not in train_entries]
    txn = stack.enter_context(run.transaction("train", train_entries, replace=stale))
    for entry in train_entries:
        txn.direct(entry)
    atomic_write_bytes(run / RECIPE, _recipe_bytes(parts.recipe))
    run.record_components(_provenance(parts.recipe, registry))
    return txn


def _recipe_bytes(recipe: Recipe) -> bytes:
    return yaml.safe_dump(recipe.resolved(), sort_keys=False).encode()


def _provenance(recipe: Recipe, registry: Registry | None) -> dict:
    registry = registry or get_registry()
    used = [("model", recipe.model.name), ("dataset", recipe.data.name)]
    if recipe.corruption is not None:
        used.append(("corruption", recipe.corruption.name))
    return registry.provenance(used)


@dataclass
class _Start:
    """Where the loop starts: step, epoch, batches of the epoch to skip, this rank's RNG states."""

    step: int = 0
    epoch: int = 0
    skip: int = 0
    noise_state: torch.Tensor | None = None
    checkpoint: Path | None = None


def _resume(parts: _Parts, log: Callable[[str], None]) -> _Start:
    """Every rank: where a resumed run starts, its checkpoint loaded into the model, optimisers
    and generators."""
    # Rank 0 checks, repairs and reads the run directory; the others receive what it read.
    loaded = distributed.main_first(_read_resume, parts)
    start = _resume_state(distributed.broadcast_object(loaded), parts, log)
    where = f"step {start.step} (epoch {start.epoch + 1}, batch {start.skip})"
    log(f"resuming {parts.run.path} at {where}")
    return start


def _read_resume(parts: _Parts) -> dict[str, Any]:
    """Rank 0: check and repair the run directory, read its checkpoint, drop the log past it.

    Returns what every rank needs to resume (plain tensors: it is broadcast to the others).
    """
    run, model = parts.run, parts.model
    if not run.exists() or run.is_empty():
        raise TrainingError(f"cannot resume: {quoted(run.path)} does not exist or is empty")
    run.checkpoints_folder()  # a link is refused before anything changes
    if not (run / CHECKPOINTS / "latest").is_file():
        raise TrainingError(
            f"cannot resume: {quoted(run.path)} is not a training run of aesampler (it has no "
            f"{CHECKPOINTS}/latest)"
        )
    if not run.is_aesampler():
        run.adopt_training()  # a run made before manifests: its training outputs are ours
    run.recover()
    owned = run.owned()
    for entry in (RECIPE, TRAIN_LOG):
        if (run / entry).exists() and entry not in owned:
            raise TrainingError(
                f"cannot resume: {quoted(run / entry)} is not listed as aesampler's in the run's "
                "manifest, and resuming would rewrite it; move it away"
            )
    folder = find_checkpoint(run / CHECKPOINTS)
    info = read_info(folder)
    if info["model"] != {"kind": model.kind, "architecture": model.architecture}:
        raise TrainingError(
            f"cannot resume {quoted(run.path)}: its checkpoint holds {info['model']}, but the "
            f"recipe builds {{'kind': {model.kind!r}, 'architecture': {model.architecture}}}; "
            "nothing was changed"
        )
    state = load_training_state(folder)
    missing = [name for name in parts.optimizers if name not in state["optimizers"]]
    if missing:
        raise CheckpointError(
            f"{quoted(folder / TRAINING_STATE)} holds no state for the optimisers {missing}"
        )
    load_weights(model, folder / MODEL_WEIGHTS)
    _truncate_log(run / TRAIN_LOG, state["step"])
    atomic_write_bytes(run / RECIPE, _recipe_bytes(parts.recipe))
    weights = None  # rank 0 has them; the others receive a copy
    if distributed.world().enabled:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"folder": folder, "state": state, "weights": weights}


def _resume_state(loaded: dict[str, Any], parts: _Parts, log: Callable[[str], None]) -> _Start:
    """Load what :func:`_read_resume` read into this rank's model, optimisers and generators.

    The position in the interrupted epoch is the number of images of the epoch's order already
    trained on (``samples_in_epoch``; the order does not depend on the number of ranks). With
    world_size × batch_size images per step the run skips the steps that cover them; when they
    do not divide evenly it rounds down, so a few images of that epoch are trained on twice.
    """
    folder, state = loaded["folder"], loaded["state"]
    cfg, world = parts.recipe.train, distributed.world()
    device = next(parts.model.parameters()).device
    if not world.is_main:
        parts.model.load_state_dict(loaded["weights"])
    _load_optimizers(parts.optimizers, state, folder, log)
    noise_state = _load_rng_states(state["rng"], device)
    per_step = world.world_size * cfg.batch_size
    done = state.get("samples_in_epoch", state["batch_in_epoch"] * cfg.batch_size)
    skip = done // per_step
    if done % per_step:
        log(
            f"the interrupted epoch had trained on {done} images of its order; with "
            f"{world.world_size} rank(s) x batch {cfg.batch_size} it resumes after "
            f"{skip * per_step}, so {done - skip * per_step} images are trained on again"
        )
    return _Start(
        step=state["step"],
        epoch=state["epoch"],
        skip=skip,
        noise_state=noise_state,
        checkpoint=folder,
    )


def _load_optimizers(
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    folder: Path,
    log: Callable[[str], None],
) -> None:
    """Load the checkpoint's optimiser states, keeping the recipe's learning rate and betas.

    The optimisers take their state (moments, step counts) from the checkpoint but keep the
    recipe's ``train.lr`` and ``train.betas`` (``load_state_dict`` would bring back the saved
    ones): a run that diverged resumes with the lower learning rate its message suggests.
    """
    changed = set()
    for name, optimizer in optimizers.items():
        recipe_values = [(group["lr"], group["betas"]) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(
                f"{folder / TRAINING_STATE}: the state of optimiser {name!r} does not fit the "
                f"model: {error}"
            ) from None
        for group, (lr, betas) in zip(optimizer.param_groups, recipe_values):
            if group["lr"] != lr:
                changed.add(f"train.lr {group['lr']:g} -> {lr:g}")
            if tuple(group["betas"]) != tuple(betas):
                changed.add(f"train.betas {tuple(group['betas'])} -> {tuple(betas)}")
            group["lr"], group["betas"] = lr, betas
    if changed:
        log(f"the recipe changes the checkpoint's {', '.join(sorted(changed))}")


def _load_rng_states(rng: dict[str, Any], device: torch.device) -> torch.Tensor | None:
    """Put this rank's saved random states back: dropout's (PyTorch's global generators) now,
    and return the noise generator's, which :class:`_Trainer` sets.

    None for a rank the interrupted run did not have: its streams start from (seed, rank) afresh.
    """
    ranks = rng.get("ranks", [rng])  # a checkpoint written before torchrun: one rank's states
    rank = distributed.world().rank
    mine = ranks[rank] if rank < len(ranks) else None
    if mine is None:
        return None
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    return mine["noise"]


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines past ``step``: a resumed run trains those steps again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        at = record.get("step") if isinstance(record, dict) else None
        if isinstance(at, int) and not isinstance(at, bool) and at <= step:
            kept.append(line)  # lines without a valid step number are dropped too
    atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


class _PendingLosses:
    """Losses of the steps not yet logged, kept on the device.

    Reading a loss with ``float()`` after every step makes the host wait for the device (a
    host-device synchronisation per step, which stalls a GPU). The training loop instead adds
    each step's detached losses here and reads them all at once every ``train.log_every`` steps
    and at the end of each epoch: one copy for many steps. Under torchrun that read averages
    each step's losses over the ranks (one all-reduce): every rank logs, and checks, the same
    values.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[tuple[int, int]] = []
        self.names: list[str] | None = None
        self.rows: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, epoch: int, losses: dict) -> None:
        names = list(losses)
        if self.names is not None and names != self.names:
            raise TrainingError(
                f"the model's training_step returned the losses {names} at step {step}, but "
                f"{self.names} before; it must return the same losses at every step"
            )
        self.names = names
        row = [torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in losses.values()]
        self.rows.append(torch.stack([v.reshape(()) for v in row]) if row else torch.zeros(0))
        self.steps.append((step, epoch))

    def drain(self) -> list[tuple[int, int, dict[str, float]]]:
        """Every buffered step as (step, epoch, {loss: value}), oldest first; empties the buffer."""
        if not self.steps:
            return []
        values = distributed.all_reduce_mean(torch.stack(self.rows)).cpu().tolist()  # the one sync
        out = [
            (step, epoch, dict(zip(self.names or [], row)))
            for (step, epoch), row in zip(self.steps, values)
        ]
        self.steps, self.rows = [], []
        return out

    def first_non_finite(self) -> tuple[int, int, dict[str, float]] | None:
        """This rank's first buffered step with a non-finite loss, read without the other ranks
        (for a step that failed on this rank alone) and without emptying the buffer."""
        if not self.steps:
            return None
        values = torch.stack(self.rows).cpu().tolist()
        for (step, epoch), row in zip(self.steps, values):
            bad = {k: v for k, v in zip(self.names or [], row) if not math.isfinite(v)}
            if bad:
                return step, epoch, bad
        return None


def _all_finite(model, optimizers: dict[str, torch.optim.Optimizer]) -> torch.Tensor:
    """Whether every float tensor a checkpoint would hold is finite: a 0-dim bool tensor on the
    model's device (one reduction per tensor, no synchronisation until it is read).

    That is the weights and buffers (BN statistics) and the optimisers' state: a NaN there
    would turn the first step after a resume NaN.
    """
    device = next(model.parameters()).device
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    tensors += [
        value
        for optimizer in optimizers.values()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.is_floating_point()
    ]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


class _Trainer:
    """One training, fresh or resumed: epochs of optimiser steps from a :class:`_Start`, the
    losses logged to metrics.jsonl, a checkpoint after every epoch (and when training stops).

    :meth:`__init__` sets up the random streams, the data loader, the grids, the log and the
    progress bar; :meth:`run` trains epoch after epoch (:meth:`_epoch`, :meth:`_step`),
    reads the pending losses into the log (:meth:`_flush`) and ends every epoch with a check of
    the weights and a checkpoint (:meth:`_end_epoch`, :meth:`_save`). Every rank runs one; rank 0
    alone writes.
    """

    def __init__(
        self, parts: _Parts, start: _Start, progress: bool, log: Callable[[str], None]
    ) -> None:
        """Set up: the noise generator, the data loader, the grids, the log and the bar."""
        self.parts, self.progress, self.log = parts, progress, log
        self.cfg = cfg = parts.recipe.train
        self.world = distributed.world()
        self.main = self.world.is_main  # rank 0 writes; the others train and wait
        self.device = next(parts.model.parameters()).device
        self.noise = torch.Generator(device=self.device).manual_seed(
            _rank_seed(cfg.seed, self.world.rank, 1)
        )
        self.step, self.epoch, self.skip = start.step, start.epoch, start.skip
        if start.noise_state is not None:
            self.noise.set_state(start.noise_state)
        if self.main:
            (parts.run / IMAGES).mkdir(exist_ok=True)
        self.sampler, self.workers, self.loader = _train_loader(parts.train_set, cfg, self.device)
        planned = cfg.epochs * len(self.loader)
        self.total = planned if cfg.max_steps is None else min(planned, cfg.max_steps)
        self.grids = _Grids(parts.model, parts.valid_set, parts.corruption, cfg, self.device)
        log(self._opening_line())
        self.metrics = _Metrics(parts.run / TRAIN_LOG if self.main else None)
        self.bar = tqdm(
            total=self.total,
            initial=min(self.step, self.total),
            desc=f"train {parts.recipe.model.name}",
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
        )
        self.started = time.perf_counter()
        self.checkpoint = start.checkpoint  # the last good one, named if training stops
        self.pending = _PendingLosses(self.device)
        self.last: dict[str, float] = {}  # the last logged step's losses
        self.epoch_log = _EpochLog()

    def run(self, on_first_checkpoint: Callable[[], None] | None = None) -> TrainResult:
        """Train until ``train.epochs`` or ``train.max_steps``, a checkpoint after every epoch.

        ``on_first_checkpoint`` (a new run's transaction commit) is called once the first
        checkpoint is on disk: a resumable run exists then, and the old outputs can go.
        """
        cfg = self.cfg
        try:
            while self.epoch < cfg.epochs and (cfg.max_steps is None or self.step < cfg.max_steps):
                self._epoch()
                # Read and checked before anything is saved: neither a non-finite loss nor
                # non-finite weights ever reach a checkpoint.
                self._flush()
                self._check_weights()
                self._end_epoch()
                if on_first_checkpoint is not None:
                    on_first_checkpoint()
                    on_first_checkpoint = None
        finally:
            self.bar.close()
            self.metrics.close()
        return self._result()

    def _epoch(self) -> None:
        """Train the epoch's batches from ``skip`` on, to its end or to ``train.max_steps``;
        leave in ``skip`` where the next epoch's training starts (0: the epoch is complete)."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        self.workers.manual_seed(_rank_seed(cfg.seed, self.world.rank, 3) + self.epoch)
        self.epoch_log = _EpochLog()
        for batch_index, (x, _) in enumerate(self.loader):
            if batch_index < self.skip:
                continue  # resuming mid-epoch: these batches were trained on already
            self._step(x)
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                self.skip = batch_index + 1 if batch_index + 1 < len(self.loader) else 0
                return
        self.skip = 0

    def _step(self, x: torch.Tensor) -> None:
        """One optimiser step on batch ``x``; its losses wait on the device in ``pending``."""
        model, noise, corruption = self.parts.model, self.noise, self.parts.corruption
        x = x.to(self.device, non_blocking=True)
        x_input = corruption(x, generator=noise) if corruption is not None else x
        model.train()
        try:
            with self.parts.replicas.in_place():
                losses = model.training_step(x, x_input, self.parts.optimizers, noise)
        except Exception as error:
            # A loss that checks its input's range (PyTorch's BCE does) raises on the NaN
            # outputs of diverged weights before the loss could be NaN.
            explained = self._diverged(self.step + 1, self.epoch + 1, error)
            if explained is None:
                raise
            raise explained from error
        self.step += 1
        self.pending.add(self.step, self.epoch + 1, losses)
        self.bar.update(1)
        if len(self.pending) >= self.cfg.log_every:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered steps' losses (one device-to-host copy) and check them."""
        for at, in_epoch, values in self.pending.drain():
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                raise self._non_finite_loss(at, in_epoch, bad)
            self.metrics.write({"event": "step", "step": at, "epoch": in_epoch, **values})
            self.epoch_log.add(values)
            self.last = values
        if self.last:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.last.items()}, refresh=False)

    def _check_weights(self) -> None:
        """Stop if the last step's update made the weights or optimiser state non-finite from
        finite losses (every rank holds the same weights; each rank checks, and they agree)."""
        finite = _all_finite(self.parts.model, self.parts.optimizers).float()
        if not bool(distributed.all_reduce_mean(finite) == 1):
            raise self._stop(
                f"non-finite weights or optimiser state after step {self.step} (epoch "
                f"{self.epoch + 1}), whose losses were finite"
            )

    def _stop(self, what: str) -> TrainingError:
        """The error that ends a diverged run; ``what`` says what was not finite, and when."""
        where = (
            f"the last good checkpoint is {self.checkpoint}"
            if self.checkpoint
            else "no checkpoint was written"
        )
        return TrainingError(f"training stopped: {what}; {where}. Try a lower train.lr.")

    def _non_finite_loss(self, at: int, in_epoch: int, bad: dict[str, float]) -> TrainingError:
        losses = ", ".join(f"{k}={v}" for k, v in bad.items())
        return self._stop(f"non-finite loss at step {at} (epoch {in_epoch}): {losses}")

    def _diverged(self, at: int, in_epoch: int, error: Exception) -> TrainingError | None:
        """The non-finite-loss error for a training step that raised ``error``, if the run had
        diverged by then (None otherwise: ``error`` is another failure and stands).

        Read on this rank alone (it may be the only one that failed): a buffered step with a
        non-finite loss is named first; otherwise, if the weights are no longer finite, step
        ``at``'s loss could not be computed from them.
        """
        try:
            found = self.pending.first_non_finite()
            if found is None and bool(_all_finite(self.parts.model, self.parts.optimizers)):
                return None
        except Exception:  # the device itself failed (a CUDA assert): the error stands
            return None
        if found is not None:
            return self._non_finite_loss(*found)
        reason = (str(error).strip().splitlines() or [""])[0]
        return self._stop(
            f"non-finite loss at step {at} (epoch {in_epoch}): the weights are no longer "
            f"finite, and the model's training_step failed on them "
            f"({type(error).__name__}: {reason})"
        )

    def _end_epoch(self) -> None:
        """Every rank: the epoch's metrics line and checkpoint (or the part of the epoch's that
        ``train.max_steps`` allowed), written by rank 0."""
        complete = self.skip == 0
        if complete:
            self.epoch += 1
        record = {
            "event": "epoch",
            "epoch": self.epoch if complete else self.epoch + 1,
            "complete": complete,
            "step": self.step,
            "seconds": round(time.perf_counter() - self.epoch_log.started, 3),
            "precision": self.parts.model.train_precision,
            **self.epoch_log.means(),
        }
        saved = distributed.main_first(self._save, record, self._training_state(), complete)
        self.checkpoint = distributed.broadcast_object(saved)

    def _training_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights: the optimisers, the position in the
        data and every rank's random states."""
        cfg, world = self.cfg, self.world
        rng = distributed.all_gather_object(_rng_states(self.noise, self.device))  # every rank's
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.parts.optimizers.items()},
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.skip,
            # The position in the epoch's order, whatever world size resumes it.
            "samples_in_epoch": self.skip * world.world_size * cfg.batch_size,
            "world_size": world.world_size,
            "rng": {**rng[0], "ranks": rng},
        }

    def _save(self, record: dict[str, Any], state: dict[str, Any], complete: bool) -> Path:
        """Rank 0: the epoch's metrics line, grids and checkpoint."""
        parts, cfg, device = self.parts, self.cfg, self.device
        # The grids draw from the global generators: forked, so training's streams (saved in
        # ``state``) go on as if no grid had been drawn.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            valid = _validate(parts.model, parts.valid_set, cfg.batch_size, device)
            record.update({f"valid/{k}": v for k, v in valid.items()})
            self.metrics.write(record)
            tag = f"epoch-{record['epoch']:03d}"
            self.grids.save(parts.model, parts.run / IMAGES, tag)
        info = {
            "step": self.step,
            "epoch": self.epoch,
            "epoch_complete": complete,
            "data": parts.train_set.describe(),
            "corruption": parts.recipe.corruption.model_dump() if parts.recipe.corruption else None,
            "aesampler_version": __version__,
        }
        saved = save_checkpoint(parts.run.path, parts.model, info, state)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if "/" in k)
        (self.bar.write if self.progress else self.log)(
            f"epoch {record['epoch']}/{cfg.epochs} (step {self.step}, {record['seconds']:.1f}s): "
            f"{summary}"
        )
        return saved

    def _result(self) -> TrainResult:
        """Where the run and its last checkpoint are, on every rank."""
        checkpoint = self.checkpoint
        if checkpoint is None:
            found = find_checkpoint(self.parts.run.path) if self.main else None
            checkpoint = distributed.broadcast_object(found)
        return TrainResult(
            run_dir=self.parts.run.path,
            checkpoint=checkpoint,
            steps=self.step,
            epochs_completed=self.epoch,
            seconds=time.perf_counter() - self.started,
            last_losses=self.last,
        )

    def _opening_line(self) -> str:
        """What is about to be trained, on what, for how long: the first line of a training."""
        recipe, model, train_set = self.parts.recipe, self.parts.model, self.parts.train_set
        cfg, world, per_epoch = self.cfg, self.world, len(self.loader)
        parameters = sum(p.numel() for p in model.parameters())
        image = "×".join(map(str, train_set[0][0].shape))
        corruption = recipe.corruption.name if recipe.corruption is not None else "none"
        ranks = f" on each of {world.world_size} ranks" if world.enabled else ""
        steps = f"{cfg.epochs * per_epoch:,} steps"
        if self.total < cfg.epochs * per_epoch:
            steps += f", cut to {self.total:,} by train.max_steps"
        if self.step:
            steps += f", resumed at step {self.step:,}"
        return (
            f"train: model {recipe.model.name} ({parameters:,} parameters), data "
            f"{recipe.data.name} ({len(train_set):,} training images of {image}), corruption "
            f"{corruption}; {cfg.epochs} epochs × {per_epoch} steps of {cfg.batch_size} images"
            f"{ranks} = {steps}; on {self.device}"
        )


@dataclass
class _EpochLog:
    """The epoch's logged losses, summed for the means of its metrics line, and its start."""

    started: float = field(default_factory=time.perf_counter)
    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.batches += 1

    def means(self) -> dict[str, float]:
        return {f"train/{k}": v / max(self.batches, 1) for k, v in self.sums.items()}


def _train_loader(
    train_set, cfg, device: torch.device
) -> tuple[DistributedSampler, torch.Generator, DataLoader]:
    """This rank's sampler and loader of the training split, and the loader's seed generator."""
    world = distributed.world()
    # Epoch e's order is a permutation seeded with seed + e, whatever the number of ranks; rank r
    # takes every world_size-th image of it, so step k trains on images k·W·B to (k+1)·W·B - 1.
    sampler = DistributedSampler(
        train_set,
        num_replicas=world.world_size,
        rank=world.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,  # no image twice in an epoch
    )
    # The loader draws its workers' base seed from this generator when each epoch starts; seeded
    # from (seed, rank, epoch) by _Trainer._epoch, so a resumed epoch leaves PyTorch's global
    # generator (dropout) where the interrupted run had it.
    workers = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        generator=workers,
        drop_last=True,  # batch-statistics BN must never see a tiny last batch
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    return sampler, workers, loader


def _rng_states(noise: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's random states: dropout (PyTorch's global generators) and the noise."""
    states = {"torch": torch.get_rng_state(), "noise": noise.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


@torch.no_grad()
def _validate(
    model, dataset, batch_size: int, device: torch.device, limit: int = 1000
) -> dict[str, float]:
    """Mean reconstruction BCE (nats per image) of the posterior mean on up to ``limit`` images."""
    model.eval()
    # Summed on the device in float64 (each batch's float32 sum is exact in it, as it was in a
    # Python float) and read once: no host-device synchronisation per batch.
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    loader = DataLoader(
        torch.utils.data.Subset(dataset, range(min(limit, len(dataset)))),
        batch_size=batch_size,
        pin_memory=device.type == "cuda",
    )
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        rec = model.reconstruct(x)
        total += torch.nn.functional.binary_cross_entropy(rec, x, reduction="sum").double()
        count += len(x)
    return {"reconstruction": total.item() / max(count, 1)}


class _Grids:
    """The image grids drawn after every epoch, from fixed inputs.

    Rows of evenly spaced validation images (data, corrupted input if any, reconstruction) and
    decoded prior draws. The inputs come from generators of their own, so the grids never
    disturb training's random streams.
    """

    def __init__(self, model, valid_set, corruption, cfg, device: torch.device):
        self.z = torch.randn(
            cfg.grid_size,
            *model.decoder.latent_shape,
            generator=torch.Generator().manual_seed(cfg.seed + 2),
        ).to(device)
        # Evenly spaced validation images: splits of labelled data are often ordered by class.
        picks = torch.linspace(0, len(valid_set) - 1, min(cfg.grid_size // 2, len(valid_set)))
        self.x = torch.stack([valid_set[int(i)][0] for i in picks]).to(device)
        self.corruption, self.seed = corruption, cfg.seed

    @torch.no_grad()
    def save(self, model, folder: Path, tag: str) -> None:
        """Write ``{tag}-reconstructions.png`` and ``{tag}-samples.png`` into ``folder``."""
        model.eval()
        grid_x, seed = self.x, self.seed
        rows = [grid_x]
        if self.corruption is not None:
            noise = torch.Generator(grid_x.device).manual_seed(seed)
            rows.append(self.corruption(grid_x, generator=noise))
        rows.append(model.reconstruct(grid_x))
        save_png(torch.cat(rows), folder / f"{tag}-reconstructions.png", nrow=len(grid_x))
        # Prior samples with batch-statistics BN, as the paper samples (step 0 of a chain).
        chain = Chain(model.encoder, model.decoder)
        samples = chain.run(self.z, steps=0, seed=seed, precision="fp32").x[0]
        save_png(samples, folder / f"{tag}-samples.png", nrow=int(math.sqrt(len(samples))) or 1)
