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
generator), the data order (a generator seeded with ``seed``) and the corruption and latent
noise (a generator seeded with ``seed + 1``). All three states are saved in every checkpoint, so
a resumed run continues exactly as an uninterrupted one would (bit for bit on CPU).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import __version__
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
from .errors import AesamplerError
from .plugins import get_registry
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
    save_png,
)


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


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse ``train.precision: bf16`` where autocast would fall back to float16.

    On CUDA devices without bfloat16, :func:`aesampler.chain.autocast_for` computes in float16,
    whose narrow range needs loss scaling in training (which the models' steps do not do).
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(
            f"train.precision is 'bf16' but {device} has no bfloat16 support (float16 training "
            "would need loss scaling); use train.precision: fp32"
        )


class _Metrics:
    """Appends JSON lines to metrics.jsonl, flushed line by line."""

    def __init__(self, path: Path):
        # Line-buffered: a crash loses no line. Closed by close(), in train()'s finally.
        self._file = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
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
    cfg = recipe.train
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite contradict each other; choose one")
    if recipe.model.checkpoint is not None:
        raise TrainingError(
            f"model.checkpoint is set ({recipe.model.checkpoint!r}): that model is loaded, not "
            "trained; sample or evaluate it (aesampler sample/evaluate/run), or remove "
            "model.checkpoint to train a new model"
        )
    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)
    run = RunDir(recipe.output.dir)

    # Build everything before touching the run directory: bad data or parameters lose nothing.
    train_set = build_dataset(recipe, "train", registry)
    valid_set = build_dataset(recipe, "valid", registry)
    for dataset in (train_set, valid_set):
        note = dataset.skipped_note()
        if note is not None:
            log(note)
    if len(train_set) < cfg.batch_size:
        raise TrainingError(
            f"train.batch_size is {cfg.batch_size} but the training split of "
            f"{recipe.data.name!r} holds only {len(train_set)} images"
        )
    torch.manual_seed(cfg.seed)
    model = build_model(recipe, train_set, registry).to(device)
    model.train_precision = cfg.precision  # what model.autocast() computes in
    corruption = build_corruption(recipe, registry)
    optimizers = {
        name: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
        for name, params in model.optimizer_groups().items()
    }
    start = _Start()
    if resume:
        start = _resume_state(run, model, optimizers, device)
        _truncate_log(run / TRAIN_LOG, start.step)
        atomic_write_bytes(run / RECIPE, _recipe_bytes(recipe))
        where = f"step {start.step} (epoch {start.epoch + 1}, batch {start.skip})"
        log(f"resuming {run.path} at {where}")
        parts = (model, optimizers, corruption, train_set, valid_set)
        return _loop(recipe, run, *parts, start, progress, log)

    train_entries = OUTPUTS["train"]
    owned_before = list(run.owned()) if run.is_aesampler() else []
    # A new model makes every output of the old one stale: all of them are replaced.
    run.check_replaceable("train", [*train_entries, *owned_before], overwrite)
    stale = [e for e in owned_before if e not in train_entries]
    with run.transaction("train", train_entries, replace=stale) as txn:
        for entry in train_entries:
            txn.direct(entry)
        atomic_write_bytes(run / RECIPE, _recipe_bytes(recipe))
        run.record_components(_provenance(recipe, registry))
        return _loop(
            recipe,
            run,
            model,
            optimizers,
            corruption,
            train_set,
            valid_set,
            start,
            progress,
            log,
            on_first_checkpoint=txn.commit,
        )


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
    """Where the loop starts: step, epoch, batch within the epoch, the data order's state."""

    step: int = 0
    epoch: int = 0
    skip: int = 0
    shuffle_state: torch.Tensor | None = None
    noise_state: torch.Tensor | None = None
    checkpoint: Path | None = None


def _resume_state(run: RunDir, model, optimizers, device: torch.device) -> _Start:
    """Load the run's checkpoint into ``model`` and ``optimizers``; nothing is written."""
    if not run.exists() or run.is_empty():
        raise TrainingError(f"cannot resume: {str(run.path)!r} does not exist or is empty")
    if not (run / CHECKPOINTS / "latest").is_file():
        raise TrainingError(
            f"cannot resume: {str(run.path)!r} is not a training run of aesampler (it has no "
            f"{CHECKPOINTS}/latest)"
        )
    if not run.is_aesampler():
        run.adopt_training()  # a run made before manifests: its training outputs are ours
    run.recover()
    owned = run.owned()
    for entry in (RECIPE, TRAIN_LOG):
        if (run / entry).exists() and entry not in owned:
            raise TrainingError(
                f"cannot resume: {str(run / entry)!r} is not listed as aesampler's in the run's "
                "manifest, and resuming would rewrite it; move it away"
            )
    folder = find_checkpoint(run / CHECKPOINTS)
    info = read_info(folder)
    if info["model"] != {"kind": model.kind, "architecture": model.architecture}:
        raise TrainingError(
            f"cannot resume {str(run.path)!r}: its checkpoint holds {info['model']}, but the "
            f"recipe builds {{'kind': {model.kind!r}, 'architecture': {model.architecture}}}; "
            "nothing was changed"
        )
    state = load_training_state(folder)
    missing = [name for name in optimizers if name not in state["optimizers"]]
    if missing:
        raise CheckpointError(
            f"{folder / TRAINING_STATE} holds no state for the optimisers {missing}"
        )
    load_weights(model, folder / MODEL_WEIGHTS)
    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(
                f"{folder / TRAINING_STATE}: the state of optimiser {name!r} does not fit the "
                f"model: {error}"
            ) from None
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return _Start(
        step=state["step"],
        epoch=state["epoch"],
        skip=state["batch_in_epoch"],
        shuffle_state=state["rng"]["shuffle_epoch_start"],
        noise_state=state["rng"]["noise"],
        checkpoint=folder,
    )


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
    and at the end of each epoch: one copy for many steps.
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
        values = torch.stack(self.rows).cpu().tolist()  # the one synchronisation
        out = [
            (step, epoch, dict(zip(self.names or [], row)))
            for (step, epoch), row in zip(self.steps, values)
        ]
        self.steps, self.rows = [], []
        return out


def _loop(
    recipe: Recipe,
    run: RunDir,
    model,
    optimizers,
    corruption,
    train_set,
    valid_set,
    start: _Start,
    progress: bool,
    log: Callable[[str], None],
    on_first_checkpoint: Callable[[], None] | None = None,
) -> TrainResult:
    cfg = recipe.train
    device = next(model.parameters()).device
    shuffle = torch.Generator().manual_seed(cfg.seed)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    step, epoch, skip = start.step, start.epoch, start.skip
    epoch_start_state = shuffle.get_state() if start.shuffle_state is None else start.shuffle_state
    if start.noise_state is not None:
        noise.set_state(start.noise_state)
    (run / IMAGES).mkdir(exist_ok=True)

    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,  # batch-statistics BN must never see a tiny last batch
        generator=shuffle,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    total = (
        cfg.epochs * len(loader)
        if cfg.max_steps is None
        else min(cfg.epochs * len(loader), cfg.max_steps)
    )
    # Fixed inputs for the per-epoch grids, drawn from generators of their own so the grids never
    # disturb training's random streams.
    grid_z = torch.randn(
        cfg.grid_size,
        *model.decoder.latent_shape,
        generator=torch.Generator().manual_seed(cfg.seed + 2),
    ).to(device)
    # Evenly spaced validation images: splits of labelled data are often ordered by class.
    picks = torch.linspace(0, len(valid_set) - 1, min(cfg.grid_size // 2, len(valid_set)))
    grid_x = torch.stack([valid_set[int(i)][0] for i in picks]).to(device)

    metrics = _Metrics(run / TRAIN_LOG)
    bar = tqdm(
        total=total, initial=min(step, total), disable=not progress, unit="step", dynamic_ncols=True
    )
    started = time.perf_counter()
    last: dict[str, float] = {}
    checkpoint = start.checkpoint
    pending = _PendingLosses(device)
    sums: dict[str, float] = {}
    batches = 0

    def flush() -> None:
        """Write the buffered steps' losses (one device-to-host copy) and check them."""
        nonlocal last, batches
        for at, in_epoch, values in pending.drain():
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                where = (
                    f"the last good checkpoint is {checkpoint}"
                    if checkpoint
                    else "no checkpoint was written"
                )
                raise TrainingError(
                    f"training stopped: non-finite loss at step {at} (epoch {in_epoch}): "
                    f"{', '.join(f'{k}={v}' for k, v in bad.items())}; {where}. "
                    "Try a lower train.lr."
                )
            metrics.write({"event": "step", "step": at, "epoch": in_epoch, **values})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
            last = values
        if last:
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)

    try:
        while epoch < cfg.epochs and (cfg.max_steps is None or step < cfg.max_steps):
            shuffle.set_state(epoch_start_state)
            epoch_started = time.perf_counter()
            sums.clear()
            batches = 0
            for batch_index, (x, _) in enumerate(loader):
                if batch_index < skip:
                    continue  # resuming mid-epoch: these batches were trained on already
                x = x.to(device, non_blocking=True)
                x_input = corruption(x, generator=noise) if corruption is not None else x
                model.train()
                losses = model.training_step(x, x_input, optimizers, noise)
                step += 1
                pending.add(step, epoch + 1, losses)
                bar.update(1)
                if len(pending) >= cfg.log_every:
                    flush()
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    skip = batch_index + 1 if batch_index + 1 < len(loader) else 0
                    break
            else:
                skip = 0
            flush()  # before anything is saved: a non-finite loss never reaches a checkpoint
            complete = skip == 0
            if complete:
                epoch += 1
                epoch_start_state = shuffle.get_state()
            record = {
                "event": "epoch",
                "epoch": epoch if complete else epoch + 1,
                "complete": complete,
                "step": step,
                "seconds": round(time.perf_counter() - epoch_started, 3),
                **{f"train/{k}": v / max(batches, 1) for k, v in sums.items()},
                **{
                    f"valid/{k}": v
                    for k, v in _validate(model, valid_set, cfg.batch_size, device).items()
                },
            }
            metrics.write(record)
            tag = f"epoch-{record['epoch']:03d}"
            _save_grids(model, run / IMAGES, tag, grid_x, grid_z, corruption, cfg.seed)
            state = {
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": skip,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "noise": noise.get_state(),
                    "shuffle_epoch_start": epoch_start_state,
                    **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                },
            }
            info = {
                "step": step,
                "epoch": epoch,
                "epoch_complete": complete,
                "data": train_set.describe(),
                "corruption": recipe.corruption.model_dump() if recipe.corruption else None,
                "aesampler_version": __version__,
            }
            checkpoint = save_checkpoint(run.path, model, info, state)
            if on_first_checkpoint is not None:
                on_first_checkpoint()  # a resumable run exists now: the old outputs can go
                on_first_checkpoint = None
            summary = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if "/" in k)
            seconds = record["seconds"]
            (bar.write if progress else log)(
                f"epoch {record['epoch']}/{cfg.epochs} (step {step}, {seconds:.1f}s): {summary}"
            )
    finally:
        bar.close()
        metrics.close()
    if checkpoint is None:
        checkpoint = find_checkpoint(run.path)
    return TrainResult(
        run_dir=run.path,
        checkpoint=checkpoint,
        steps=step,
        epochs_completed=epoch,
        seconds=time.perf_counter() - started,
        last_losses=last,
    )


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


@torch.no_grad()
def _save_grids(model, folder: Path, tag: str, grid_x, grid_z, corruption, seed: int) -> None:
    model.eval()
    rows = [grid_x]
    if corruption is not None:
        rows.append(corruption(grid_x, generator=torch.Generator(grid_x.device).manual_seed(seed)))
    rows.append(model.reconstruct(grid_x))
    save_png(torch.cat(rows), folder / f"{tag}-reconstructions.png", nrow=len(grid_x))
    # Prior samples with batch-statistics BN, as the paper samples (step 0 of a chain).
    samples = Chain(model.encoder, model.decoder).run(grid_z, steps=0, seed=seed).x[0]
    save_png(samples, folder / f"{tag}-samples.png", nrow=int(math.sqrt(len(samples))) or 1)
