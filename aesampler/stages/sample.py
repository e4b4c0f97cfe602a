"""The sample stage: ``sampling.num_chains`` chains from the start sampler, saved in ``samples/``.

Files: ``samples/step-NNN.png``, the first ``sampling.grid_size`` chains at each recorded step,
each chain in the same place in every grid (the paper's Figure 4); ``samples/steps.png`` puts
them side by side; ``samples/samples.safetensors`` holds z and x of every chain at every
recorded step (keys ``z/step-NNN`` and ``x/step-NNN``) for other tools, or with more chains than
``sampling.shard_size`` one file per shard, ``samples/samples-NNNNN-of-MMMMM.safetensors``;
``samples/settings.json`` says what made them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from .. import distributed
from ..chain import ChainResult, chunk_bounds, default_record, shard_bounds, shard_seed
from ..components import Components, check_sizes, settings_document, state_digest
from ..documents import SampleSettings
from ..rundir import (
    PARTIAL,
    SAMPLES,
    STEPS_FIGURE,
    RunDir,
    naming,
    partial_shard_file,
    samples_file,
    save_png,
    save_settings,
    save_tensors,
    with_recipe,
    write_recipe,
)
from ..samplers import Sampler
from ..tuning import resolve_start
from ..version import __version__
from .base import Stage, StageContext

if TYPE_CHECKING:
    from ..evaluation.stopping import AutoSteps


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
    from ..evaluation.stopping import choose_steps  # SciPy and scikit-learn: only when needed

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


@dataclass(frozen=True)
class _Plan:
    """What decides the chains, fixed before any of them runs (the same on every rank)."""

    start: Sampler
    steps: int
    auto: AutoSteps | None
    record: list[int] | None
    batchnorm: str
    corruption: str
    shards: list[tuple[int, int]]
    chunks: list[int]
    shown: int  # chains in the grids
    key: str  # the shards' key in partial/ (see _samples_key)


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
    plan = _plan(parts, progress, log)
    log(f"sample: {parts.precision.describe()}")
    partial, done = None, []
    try:
        partial, done = _resume(run, plan, log)
        result = _run_shards(parts, plan, partial, done, progress, log)
        recorded = ()
        if world.is_main:
            recorded = _write_samples(parts, run, plan, overwrite, partial, result)
            if partial is not None:
                run.drop_partial(partial.name)
        count = len(plan.shards)
        return SampleResult(
            run.path / SAMPLES, cfg.num_chains, plan.steps, recorded, count, len(done)
        )
    finally:
        if partial is not None and world.is_main:  # a failure keeps the shards, unlocked
            run.release_partial(partial.name)


def _plan(parts: Components, progress: bool, log: Callable[[str], None]) -> _Plan:
    """The start sampler (fitted once for every rank), the steps (rank 0's pilot chains when
    ``steps: auto``), the recorded steps, the shards and their key."""
    cfg = parts.recipe.sampling
    if cfg.tuned:
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
    chunks = [len(chunk_bounds(b - a, cfg.chunk_size, batchnorm=batchnorm)) for a, b in shards]
    shown = min(cfg.grid_size, cfg.num_chains)
    key = _samples_key(parts, start, steps, record)
    return _Plan(start, steps, auto, record, batchnorm, corruption, shards, chunks, shown, key)


def _resume(run: RunDir, plan: _Plan, log: Callable[[str], None]) -> tuple[Path | None, list[int]]:
    """With more than one shard, the folder in ``partial/`` that keeps the finished shards
    (locked by rank 0 until the samples are written) and the shards a killed run finished."""
    count = len(plan.shards)
    if count > 1:  # finished shards are kept on disk until the run completes
        found = distributed.main_first(run.partial_folder, f"samples-{plan.key}")
        partial, done = distributed.broadcast_object(found)
        done = [i for i in done if i < count]
        if done:
            log(f"sample: resuming, {len(done)} of {count} shards were finished before")
        return partial, done
    if distributed.world().is_main:
        run.drop_partial()  # what a killed run with other settings left is of no use now
    return None, []


def _run_shards(
    parts: Components,
    plan: _Plan,
    partial: Path | None,
    done: list[int],
    progress: bool,
    log: Callable[[str], None],
) -> ChainResult | None:
    """Run the shards not yet done; each one into ``partial`` when there is one, else the one
    shard in memory (rank 0's). Under torchrun the shards are dealt out in turn."""
    world, seed = distributed.world(), parts.recipe.sampling.seed
    todo = [i for i in range(len(plan.shards)) if i not in done]
    mine = todo[world.rank :: world.world_size] if partial is not None else todo
    mine = mine if partial is not None or world.is_main else []
    result = None
    with tqdm(
        total=sum(plan.chunks[i] for i in mine) * (plan.steps + 1),
        desc="chains" if not world.enabled else f"chains ({len(mine)} of {len(todo)} shards)",
        unit="step",
        disable=not progress,
    ) as bar:
        for index in mine:
            a, b = plan.shards[index]
            update = lambda _: bar.update(1)  # noqa: E731
            result = parts.run_shard(
                plan.start,
                index,
                b - a,
                seed=seed,
                steps=plan.steps,
                record=plan.record,
                callback=update,
            )
            if partial is not None:
                save_tensors(_shard_tensors(result), partial / partial_shard_file(index))
                result = None  # on disk now: memory holds one shard at a time
    ran = distributed.gather_object(len(mine))  # on rank 0: every rank's shards are on disk
    if world.enabled and ran is not None:
        log(f"sample: {len(todo)} shards run by {world.world_size} processes: {ran} each")
    return result


def _shard_tensors(result: ChainResult) -> dict[str, torch.Tensor]:
    return result.step_tensors()


def _write_samples(
    parts: Components,
    run: RunDir,
    plan: _Plan,
    overwrite: bool,
    partial: Path | None,
    result: ChainResult | None,
) -> tuple[int, ...]:
    """``samples/`` in one transaction: the shards (linked from ``partial``, or the one in
    memory), the grids, ``settings.json`` and ``steps.png``. Gives the recorded steps."""
    from ..figures import steps_figure  # matplotlib is imported only when pictures are made

    # The chains took long: checked again, so that whatever appeared at samples/ meanwhile (a
    # folder that is not aesampler's, or a sample without --overwrite) is not replaced.
    run.check_replaceable("sample", [SAMPLES], overwrite)
    with run.transaction("sample", with_recipe(run, SAMPLES)) as txn:
        folder = txn.path(SAMPLES)
        folder.mkdir()
        files = [samples_file(i, len(plan.shards)) for i in range(len(plan.shards))]
        if partial is None:
            recorded = result.steps
            save_tensors(_shard_tensors(result), folder / files[0])
            first = {t: result.x[t][: plan.shown] for t in recorded}
        else:
            for i, name in enumerate(files):
                _link_or_copy(partial / partial_shard_file(i), folder / name)
            first = _first_chains([folder / name for name in files], plan.shown)
            recorded = tuple(sorted(first))
        for t in recorded:
            save_png(first[t], folder / f"step-{t:03d}.png", nrow=_grid_nrow(plan.shown))
        settings = _settings(parts, plan, recorded, files)
        kinds = ["transition", "corruption", "sampler"]
        document = settings_document(parts, settings, kinds, plan.corruption)
        save_settings(folder, SampleSettings.build(document))
        steps_figure(first, folder / STEPS_FIGURE, parts.start_spec.name)
        write_recipe(parts.recipe, txn)
    return tuple(recorded)


def _settings(parts: Components, plan: _Plan, recorded, files: list[str]) -> dict:
    """``samples/settings.json`` before :func:`settings_document` adds what made them."""
    cfg = parts.recipe.sampling
    return dict(
        cfg.model_dump(mode="json"),
        batchnorm=plan.batchnorm,
        steps=plan.steps,
        steps_recorded=list(recorded),
        precision=parts.precision.as_dict(),
        start=parts.start_spec.model_dump(mode="json"),
        start_describes=plan.start.describes,
        chain={"batchnorm": plan.batchnorm, "corruption": plan.corruption},
        tuned=None if parts.tuned is None else parts.tuned.as_dict(),
        steps_auto=None if plan.auto is None else plan.auto.as_dict(),
        shards=[
            {"file": name, "chains": list(bounds), "seed": shard_seed(cfg.seed, i)}
            for i, (name, bounds) in enumerate(zip(files, plan.shards))
        ],
    )


def _grid_nrow(count: int) -> int:
    return max(1, math.ceil(math.sqrt(count)))


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


def _run(ctx: StageContext) -> SampleResult:
    return sample(ctx.parts, ctx.path, overwrite=ctx.remake, progress=ctx.progress, log=ctx.log)


def _prepare(parts: Components) -> None:
    check_sizes(parts, sample=True, evaluate=False)


STAGE = Stage("sample", _run, entry="sample", tuned_start=True, every_rank=True, prepare=_prepare)
