"""The interpolate stage: between encodings of test images, then chain steps (Figure 2).

Files: ``interpolation/interpolation.png``: for each pair of test images, a row of interpolated
latents decoded as they are, then the same row after ``interpolation.steps`` chain steps (the
paper's Figures 2, 5 and 6); ``interpolation/interpolation.safetensors`` holds the tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..components import Components, WorkflowError, run_chain, settings_document
from ..documents import InterpolationSettings
from ..interpolate import lerp, slerp
from ..modes import sampling_mode
from ..rundir import (
    INTERPOLATION,
    INTERPOLATION_GRID,
    INTERPOLATION_TENSORS,
    RunDir,
    save_png,
    save_settings,
    save_tensors,
    with_recipe,
    write_recipe,
)
from .base import Stage, StageContext


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
        result = run_chain(
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
        kinds = ["transition", "corruption", "dataset"]
        save_settings(
            folder, InterpolationSettings.build(settings_document(parts, settings, kinds))
        )
        write_recipe(parts.recipe, txn)
    return tensors


def _run(ctx: StageContext) -> dict[str, torch.Tensor]:
    return interpolate(ctx.parts, ctx.path, overwrite=ctx.remake, progress=ctx.progress)


STAGE = Stage(
    "interpolate",
    _run,
    entry="interpolate",
    enabled=lambda recipe: recipe.interpolation.enabled,
    forced=False,
    test_data=True,
)
