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
  step (keys ``z/step-NNN`` and ``x/step-NNN``) for other tools;
* ``interpolation/interpolation.png``: for each pair of test images, a row of interpolated
  latents decoded as they are, then the same row after ``interpolation.steps`` chain steps (the
  paper's Figures 2, 5 and 6); ``interpolation/interpolation.safetensors`` holds the tensors.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from tqdm import tqdm

from .chain import Chain, ChainResult, sampling_mode
from .checkpoint import CheckpointError, find_checkpoint, load_model
from .data import ImageDataset
from .errors import AesamplerError
from .interpolate import lerp, slerp
from .models import GenerativeAutoencoder
from .plugins import get_registry
from .recipe import Recipe, build_dataset
from .registry import Registry
from .rundir import atomic_write_bytes
from .training import _save_png, prepare_run_dir, resolve_device, train


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

    def dataset(self, split: str) -> ImageDataset:
        """A split of the recipe's data, checked against the geometry the model was trained on."""
        dataset = build_dataset(self.recipe, split, self.registry)
        arch = self.model.architecture
        wanted = (arch.get("channels"), arch.get("image_size"))
        if (dataset.channels, dataset.image_size) != wanted and None not in wanted:
            raise WorkflowError(
                f"data {self.recipe.data.name!r} gives {dataset.channels}-channel images of "
                f"{dataset.image_size} x {dataset.image_size}, but the model in {self.checkpoint} "
                f"was trained on {wanted[0]}-channel images of {wanted[1]} x {wanted[1]}; set "
                "data.image_size (and the data) to match"
            )
        return dataset


def checkpoint_for(recipe: Recipe, override: str | Path | None = None) -> Path:
    """The checkpoint to sample: ``override``, else ``model.checkpoint``, else the run's own."""
    for candidate in (override, recipe.model.checkpoint):
        if candidate is not None:
            return find_checkpoint(candidate)
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
    folder = checkpoint_for(recipe, checkpoint)
    device = resolve_device(recipe.sampling.device or recipe.train.device)
    model, info = load_model(folder, registry, device)
    wanted = {"kind": recipe.model.name, **recipe.model.params}
    held = {"kind": info["model"]["kind"], **info["model"]["architecture"]}
    clashes = {k: (v, held.get(k)) for k, v in wanted.items() if held.get(k) != v}
    if clashes:
        detail = ", ".join(f"{k}: recipe {a!r}, checkpoint {b!r}" for k, (a, b) in clashes.items())
        raise WorkflowError(f"the checkpoint {folder} does not match the recipe's model ({detail})")
    spec = recipe.chain_corruption
    corruption = registry.create("corruption", spec.name, **spec.params) if spec else None
    transition = registry.create(
        "transition",
        recipe.sampling.transition.name,
        encoder=model.encoder,
        decoder=model.decoder,
        corruption=corruption,
        **recipe.sampling.transition.params,
    )
    chain = Chain.from_transition(transition, model.decoder)
    return Components(recipe, model, chain, device, folder, registry)


def _run_chain(
    parts: Components, desc: str, total: int, progress: bool, *args, **kwargs
) -> ChainResult:
    """``parts.chain.run(...)`` with a progress bar over chunk steps; results on the CPU."""
    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
        return parts.chain.run(*args, out_device="cpu", callback=lambda _: bar.update(1), **kwargs)


def _replace_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists():
        if not overwrite:
            raise WorkflowError(
                f"{str(folder)!r} already exists; pass --overwrite to replace it, or choose "
                "another output.dir (--out)"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _grid_nrow(count: int) -> int:
    return max(1, math.ceil(math.sqrt(count)))


def sample(
    parts: Components, run_dir: Path, *, overwrite: bool = False, progress: bool = True
) -> ChainResult:
    """Run ``sampling.num_chains`` chains from the prior and save grids and tensors."""
    cfg = parts.recipe.sampling
    folder = Path(run_dir) / "samples"
    _replace_folder(folder, overwrite)
    chunks = math.ceil(cfg.num_chains / (cfg.chunk_size or cfg.num_chains))
    result = _run_chain(
        parts,
        "chains",
        chunks * (cfg.steps + 1),
        progress,
        n=cfg.num_chains,
        steps=cfg.steps,
        record=cfg.record,
        chunk_size=cfg.chunk_size,
        batchnorm=cfg.batchnorm,
        seed=cfg.seed,
    )
    shown = min(cfg.grid_size, cfg.num_chains)
    tensors = {}
    for t in result.steps:
        _save_png(result.x[t][:shown], folder / f"step-{t:03d}.png", nrow=_grid_nrow(shown))
        tensors[f"z/step-{t:03d}"] = result.z[t].float().contiguous()
        tensors[f"x/step-{t:03d}"] = result.x[t].float().contiguous()
    _save_tensors(tensors, folder / "samples.safetensors")
    _save_settings(
        parts, folder, dict(cfg.model_dump(mode="json"), steps_recorded=list(result.steps))
    )
    from .report import steps_figure  # matplotlib is imported only when pictures are made

    steps_figure({t: result.x[t][:shown] for t in result.steps}, folder / "steps.png")
    return result


def interpolate(
    parts: Components, run_dir: Path, *, overwrite: bool = False, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Interpolate between encodings of test images, then apply chain steps (Figure 2)."""
    cfg, sampling = parts.recipe.interpolation, parts.recipe.sampling
    folder = Path(run_dir) / "interpolation"
    _replace_folder(folder, overwrite)
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
    rows = torch.stack([plain, chained], dim=1).flatten(0, 2)  # pair by pair: plain, then chained
    _save_png(rows, folder / "interpolation.png", nrow=points)
    tensors = {
        "images": images.cpu().contiguous(),
        "z_path": path.cpu().float().contiguous(),
        "x_plain": plain.contiguous(),
        "x_chain": chained.contiguous(),
    }
    _save_tensors(tensors, folder / "interpolation.safetensors")
    _save_settings(parts, folder, dict(cfg.model_dump(mode="json"), batchnorm=sampling.batchnorm))
    return tensors


def _save_settings(parts: Components, folder: Path, settings: dict) -> None:
    """What produced these pictures, for the report and for whoever reads them later."""
    spec = parts.recipe.chain_corruption
    settings = {
        **settings,
        "checkpoint": str(parts.checkpoint),
        "chain_corruption": spec.model_dump() if spec else None,
    }
    atomic_write_bytes(folder / "settings.json", (json.dumps(settings, indent=2) + "\n").encode())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report: Path
    trained_steps: int | None
    seconds: float
    metrics: dict | None = None


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
    checkpoint: str | Path | None = None,
) -> RunResult:
    """Train (unless a checkpoint is given), sample, interpolate and write the report.

    With a checkpoint (``checkpoint`` or ``model.checkpoint``) nothing is trained. Its own run
    directory may be the output: then only the pictures are added (``overwrite`` replaces
    earlier ones). Any other existing output directory is replaced only with ``overwrite``.
    """
    from .report import write_report  # matplotlib is imported only when pictures are made

    started = time.perf_counter()
    run_dir = Path(recipe.output.dir)
    trained = None
    if do_evaluate and recipe.evaluate.enabled:  # fail before training, not after it
        registry = registry or get_registry()
        spec = recipe.evaluate.feature_extractor
        registry.create("feature_extractor", spec.name, **spec.params).check(
            build_dataset(recipe, "train", registry)
        )
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
    else:
        folder = checkpoint_for(recipe, checkpoint)
        if run_dir.resolve() not in folder.resolve().parents:
            prepare_run_dir(run_dir, resume=False, overwrite=overwrite)
            atomic_write_bytes(
                run_dir / "recipe.yaml",
                yaml.safe_dump(recipe.resolved(), sort_keys=False).encode(),
            )
        remake = overwrite
    parts = build_components(recipe, checkpoint=checkpoint, registry=registry)
    if do_sample:
        sample(parts, run_dir, overwrite=remake, progress=progress)
    if do_interpolate and recipe.interpolation.enabled:
        interpolate(parts, run_dir, overwrite=remake, progress=progress)
    metrics = None
    if do_evaluate and recipe.evaluate.enabled:
        from .evaluation import evaluate

        if (run_dir / "metrics.json").exists() and not remake:
            raise WorkflowError(
                f"{str(run_dir / 'metrics.json')!r} already exists; pass --overwrite to replace it"
            )
        metrics = evaluate(parts, run_dir, registry=registry, progress=progress, log=log)
    report = write_report(run_dir)
    return RunResult(run_dir, report, trained, time.perf_counter() - started, metrics)
