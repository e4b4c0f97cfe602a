"""Inpainting: a chain conditioned on the observed pixels of held-out images.

Split an image into observed pixels x_o and missing pixels x_m with a mask m (1 = observed). The
conditional p(x_m | x_o) has no closed form for an autoencoder, but Rezende, Mohamed & Wierstra
(2014, "Stochastic backpropagation and approximate inference in deep generative models", the
missing-data imputation experiment) sample it approximately with a pseudo-Gibbs chain: encode the
image, decode, keep the decoded values only where pixels are missing, and repeat. With the
paper's transition (Creswell et al., Eq. 1 / Eq. 2) the same loop reads

    x_t = m ⊙ x_o + (1 − m) ⊙ d(z_t)      the observed pixels re-imposed after every decode
    x̃_t ~ C(x̃ | x_t)                      by default only the missing pixels are corrupted
    z_{t+1} ~ Q(z | x̃_t)

so nothing new is needed: :class:`KeepObserved` is a decoder that re-imposes the observed pixels,
:class:`KeepObservedCorruption` a corruption that leaves them alone, and any transition built with
those two (:class:`InpaintTransition` is the built-in one) runs in the ordinary :class:`Chain`.
Because the chain records what the decoder renders, every recorded x_t holds the observed pixels
bit for bit.

Start: z_0 is the posterior mean of Q(z | x_start), where x_start keeps the observed pixels and
sets the missing ones to a constant ``fill`` (0.5, mid-grey, by default). Step 0 is therefore
the model's one-shot fill from the masked image; each further step is one pseudo-Gibbs sweep.

:func:`inpaint` runs the chain; :func:`inpaint_test_images` is ``aesampler inpaint``: it takes
the recipe's ``inpaint`` section and writes ``inpainting/`` into the run directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .chain import BatchNormMode, Chain, ChainResult, ChainStep, step_key
from .corruptions import IdentityCorruption
from .errors import ChainInputError
from .interfaces import Corruption, Decoder, Encoder, Transition
from .modes import sampling_mode
from .transitions import DecodeCorruptEncode

if TYPE_CHECKING:
    from .components import Components
    from .recipe import Recipe

#: The parts of an image a mask can hide: one side (a share of the columns or rows), a centred
#: box, or pixels drawn at random.
MASK_KINDS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre", "random")
DEFAULT_FILL = 0.5

TransitionFactory = Callable[[Encoder, Decoder, "Corruption | None"], Transition]


def make_mask(
    missing: str,
    size: tuple[int, int],
    *,
    count: int = 1,
    fraction: float = 0.5,
    generator: torch.Generator | None = None,
    where: str = "",
) -> Tensor:
    """Which pixels are observed: a bool tensor (count, 1, H, W), True where a pixel is kept.

    Args:
        missing: the part that is hidden. ``"left"``, ``"right"``, ``"top"``, ``"bottom"``: that
            side, ``round(fraction * W)`` columns (or ``round(fraction * H)`` rows) wide, so 0.5
            hides a half; ``"centre"``: a centred box whose sides are ``fraction`` of the image's;
            ``"random"``: ``round(fraction * H * W)`` pixels of each image, drawn independently
            per image from ``generator``.
        size: (H, W).
        count: how many masks (one per image); all equal except for ``"random"``.
        fraction: in (0, 1), as above.
        generator: the source of ``"random"`` masks.
        where: a prefix for error messages (the recipe key of the mask).

    A mask that would hide no pixel, or every pixel, is an error: there would be nothing to fill
    in, or nothing to condition on.
    """
    prefix = f"{where}." if where else ""
    if missing not in MASK_KINDS:
        raise ChainInputError(
            f"{prefix}missing must be one of {', '.join(MASK_KINDS)}; got {missing!r}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ChainInputError(f"{prefix}fraction must be a number in (0, 1), got {fraction!r}")
    if not 0 < fraction < 1:
        raise ChainInputError(f"{prefix}fraction must be in (0, 1), got {fraction!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ChainInputError(f"count must be an integer >= 1, got {count!r}")
    height, width = size
    observed = torch.ones(count, 1, height, width, dtype=torch.bool)
    if missing in ("left", "right"):
        hidden = round(fraction * width)
        columns = slice(0, hidden) if missing == "left" else slice(width - hidden, width)
        observed[..., columns] = False
    elif missing in ("top", "bottom"):
        hidden = round(fraction * height)
        rows = slice(0, hidden) if missing == "top" else slice(height - hidden, height)
        observed[..., rows, :] = False
    elif missing == "centre":
        box_h, box_w = round(fraction * height), round(fraction * width)
        top, left = (height - box_h) // 2, (width - box_w) // 2
        observed[..., top : top + box_h, left : left + box_w] = False
    else:
        hidden = round(fraction * height * width)
        scores = torch.rand(count, height * width, generator=generator)
        order = scores.argsort(dim=1)[:, :hidden]  # (count, hidden): the pixels each mask hides
        flat = observed.view(count, height * width)
        flat.scatter_(1, order, False)
    kept = int(observed[0].sum())
    if kept == height * width or (missing == "random" and hidden == 0):
        raise ChainInputError(
            f"{prefix}fraction={fraction} hides no pixel of a {height} x {width} image "
            f"(missing: {missing}); raise it"
        )
    if kept == 0 or (missing == "random" and hidden == height * width):
        raise ChainInputError(
            f"{prefix}fraction={fraction} hides every pixel of a {height} x {width} image "
            f"(missing: {missing}), leaving nothing to condition on; lower it"
        )
    return observed


def _check_pair(images: Tensor, observed: Tensor) -> Tensor:
    """``observed`` as a bool mask broadcast to one row per image."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ChainInputError(
            "images must be a floating-point tensor (N, C, H, W), got "
            + (f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else repr(images))
        )
    if not isinstance(observed, Tensor) or observed.dtype != torch.bool:
        raise ChainInputError(
            "observed must be a bool tensor (True where a pixel is kept), got "
            + (f"dtype {observed.dtype}" if isinstance(observed, Tensor) else repr(observed))
        )
    n, c, h, w = images.shape
    if observed.dim() != 4 or observed.shape[0] not in (1, n) or observed.shape[1] not in (1, c):
        raise ChainInputError(
            f"observed must have shape (N or 1, C or 1, H, W) for images {tuple(images.shape)}, "
            f"got {tuple(observed.shape)}"
        )
    if tuple(observed.shape[2:]) != (h, w):
        raise ChainInputError(
            f"observed is {observed.shape[2]} x {observed.shape[3]} pixels but the images are "
            f"{h} x {w}"
        )
    return observed.expand(n, *observed.shape[1:]).to(images.device)


class KeepObserved(Decoder):
    """d(z) with the observed pixels put back: m ⊙ x_o + (1 − m) ⊙ d(z), row by row.

    Row i of every batch it decodes belongs to ``images[i]``, so it decodes whole batches only
    (:func:`inpaint` runs all chains in one chunk). The pixels are copied with ``torch.where``,
    so the observed ones are the images' values exactly, whatever d(z) holds there.

    Args:
        decoder: d(z).
        images: (N, C, H, W), the images whose observed pixels are kept.
        observed: bool (N or 1, C or 1, H, W), True where a pixel is observed.
    """

    def __init__(self, decoder: Decoder, images: Tensor, observed: Tensor):
        super().__init__()
        observed = _check_pair(images, observed)
        self.decoder = decoder
        self.latent_shape = decoder.latent_shape
        # Buffers, so that .to(device) moves them with the networks; not saved in state dicts.
        self.register_buffer("images", images, persistent=False)
        self.register_buffer("observed", observed, persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        x = self.decoder(z)  # (B, C, H, W)
        if x.shape != self.images.shape:
            raise ChainInputError(
                f"KeepObserved decodes {self.images.shape[0]} chains at once (one per held-out "
                f"image row), got a batch of shape {tuple(x.shape)}: run the chains in one chunk"
            )
        return torch.where(self.observed, self.images.to(x.dtype), x)


class KeepObservedCorruption(Corruption):
    """C(x̃|x) on the missing pixels only; the observed ones reach the encoder unchanged.

    Args:
        corruption: the corruption of the missing pixels.
        observed: bool (B or 1, C or 1, H, W), True where a pixel is observed.
    """

    def __init__(self, corruption: Corruption, observed: Tensor):
        if not isinstance(corruption, Corruption):
            raise ChainInputError(
                f"corruption must be an aesampler.Corruption, got {type(corruption).__name__}"
            )
        self.corruption = corruption
        self.observed = observed

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return torch.where(self.observed, x, self.corruption(x, generator=generator))


class InpaintTransition(DecodeCorruptEncode):
    """One pseudo-Gibbs sweep: decode, re-impose the observed pixels, corrupt, encode.

    z_{t+1} ~ Q(z | x̃),  x̃ ~ C(x̃ | x),  x = m ⊙ x_o + (1 − m) ⊙ d(z_t). It is the paper's
    decode-corrupt-encode with :class:`KeepObserved` as its decoder and, unless
    ``corrupt_observed``, :class:`KeepObservedCorruption` as its corruption; ``self.decoder``
    renders the chain's samples (``Chain.from_transition(t, t.decoder)``).

    Args:
        encoder: Q(z|x).
        decoder: d(z).
        images: (N, C, H, W), one row per chain.
        observed: bool (N or 1, C or 1, H, W), True where a pixel is observed.
        corruption: C(x̃|x); None for the identity.
        sample: draw z_{t+1} from Q(z|x̃) (False: take its mean).
        corrupt_observed: corrupt the observed pixels too, as in denoising training (the encoder
            then sees inputs like its training inputs) rather than only the missing ones.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        images: Tensor,
        observed: Tensor,
        corruption: Corruption | None = None,
        *,
        sample: bool = True,
        corrupt_observed: bool = False,
    ):
        keep = KeepObserved(decoder, images, observed)
        super().__init__(
            encoder, keep, _chain_corruption(corruption, keep, corrupt_observed), sample=sample
        )


def _chain_corruption(
    corruption: Corruption | None, keep: KeepObserved, corrupt_observed: bool
) -> Corruption | None:
    if corruption is None or isinstance(corruption, IdentityCorruption) or corrupt_observed:
        return corruption
    return KeepObservedCorruption(corruption, keep.observed)


@dataclass(frozen=True)
class InpaintResult:
    """What :func:`inpaint` returns. Chain ``i * chains + k`` is chain k of image i.

    Attributes:
        images: (N, C, H, W), the held-out images (the truth).
        observed: (N, 1 or C, H, W) bool, True where a pixel was observed.
        start: (N, C, H, W), the masked images encoded for z_0 (missing pixels = ``fill``).
        chains: z_t and x_t of every chain at the recorded steps; x_t holds the observed
            pixels exactly.
        error: per recorded step, (N * chains,) mean squared error of each chain's missing
            pixels against the truth.
        fill_error: (N,) the same error for ``start``: what filling with a constant scores.
        chains_per_image: chains per image.
    """

    images: Tensor
    observed: Tensor
    start: Tensor
    chains: ChainResult
    error: dict[int, Tensor]
    fill_error: Tensor
    chains_per_image: int

    @property
    def mean_error(self) -> dict[int, float]:
        """Mean squared error of the missing pixels, over all chains, by recorded step."""
        return {t: float(e.double().mean()) for t, e in self.error.items()}


def _masked_mse(x: Tensor, truth: Tensor, observed: Tensor) -> Tensor:
    """Per row: the mean of (x − truth)² over the missing pixels (all channels)."""
    missing = (~observed).expand_as(truth)
    squared = torch.where(missing, (x.double() - truth.double()) ** 2, 0.0)
    return squared.flatten(1).sum(1) / missing.flatten(1).sum(1)


def inpaint(
    encoder: Encoder,
    decoder: Decoder,
    images: Tensor,
    observed: Tensor,
    *,
    corruption: Corruption | None = None,
    transition: TransitionFactory | None = None,
    corrupt_observed: bool = False,
    chains: int = 1,
    steps: int = 10,
    record: Iterable[int] | Literal["all"] | None = None,
    fill: float = DEFAULT_FILL,
    batchnorm: BatchNormMode = "batch",
    seed: int | None = None,
    out_device: torch.device | str | None = "cpu",
    callback: Callable[[ChainStep], None] | None = None,
) -> InpaintResult:
    """Fill in the missing pixels of ``images`` with pseudo-Gibbs chains (see the module doc).

    Args:
        encoder, decoder: the trained model's Q(z|x) and d(z).
        images: (N, C, H, W) held-out images; moved to the model's device.
        observed: bool (N or 1, C or 1, H, W), True where a pixel is observed (see
            :func:`make_mask`).
        corruption: C(x̃|x) of the chain; None for the identity.
        transition: builds the transition from (encoder, decoder, corruption); default
            :class:`~aesampler.DecodeCorruptEncode`. It must render x with the decoder it is
            given, which re-imposes the observed pixels; this is checked.
        corrupt_observed: corrupt the observed pixels too (default: only the missing ones).
        chains: chains per image.
        steps, record, batchnorm, seed, out_device, callback: as for :meth:`Chain.run`.
        fill: the value of the missing pixels in the image encoded for z_0.

    Returns:
        An :class:`InpaintResult`.
    """
    observed = _check_pair(images, observed)
    _check_inpaint_args(chains, fill)
    device = next((p.device for p in encoder.parameters()), images.device)
    images, observed = images.to(device), observed.to(device)
    truth = images.repeat_interleave(chains, dim=0)  # (N * chains, C, H, W)
    mask = observed.repeat_interleave(chains, dim=0)
    rows = truth.shape[0]
    start = torch.where(observed, images, torch.full_like(images, fill))  # (N, C, H, W)
    _check_batch_statistics(encoder, decoder, batchnorm, rows)
    z0 = _start_latents(encoder, start, chains, batchnorm)

    keep = KeepObserved(decoder, truth, mask)
    chain_corruption = _chain_corruption(corruption, keep, corrupt_observed)
    build = transition if transition is not None else DecodeCorruptEncode
    chain = Chain.from_transition(build(encoder, keep, chain_corruption), keep)
    result = chain.run(
        z0.clone(),  # out of inference mode, as Chain.run expects a plain tensor
        steps=steps,
        record=record,
        batchnorm=batchnorm,
        block_size=rows,  # one group: KeepObserved pairs rows with images
        seed=seed,
        out_device=out_device,
        callback=callback,
        precision="fp32",  # exact: the observed pixels stay the image's, bit for bit
    )
    return _inpaint_result(chain, result, images, observed, start, truth, mask, chains)


def _check_inpaint_args(chains: int, fill: float) -> None:
    """Raise unless ``chains`` is an integer >= 1 and ``fill`` a finite number."""
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ChainInputError(f"chains must be an integer >= 1, got {chains!r}")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise ChainInputError(f"fill must be a finite number, got {fill!r}")


def _check_batch_statistics(
    encoder: Encoder, decoder: Decoder, batchnorm: BatchNormMode, rows: int
) -> None:
    """Raise if batch normalisation would normalise over a single chain."""
    uses_batch_statistics = batchnorm == "batch" and any(
        isinstance(m, _BatchNorm) for m in [*encoder.modules(), *decoder.modules()]
    )
    if uses_batch_statistics and rows < 2:
        raise ChainInputError(
            "batchnorm='batch' normalises over the chains, and there is 1 (1 image, 1 chain): "
            "inpaint at least 2 images or run 2 chains, or use batchnorm='running'"
        )


def _start_latents(
    encoder: Encoder, start: Tensor, chains: int, batchnorm: BatchNormMode
) -> Tensor:
    """z_0 of every chain: the posterior mean of Q(z | start), (N * chains, *latent)."""
    with sampling_mode([encoder], batchnorm), torch.inference_mode():
        # The chains' rows, so that batch statistics are those of the chains' own batch.
        return encoder(start.repeat_interleave(chains, dim=0)).mean


def _inpaint_result(
    chain: Chain,
    result: ChainResult,
    images: Tensor,
    observed: Tensor,
    start: Tensor,
    truth: Tensor,
    mask: Tensor,
    chains: int,
) -> InpaintResult:
    """Check that every recorded x_t kept the observed pixels; measure the fills' errors."""
    out = result.x[result.steps[0]].device
    truth, mask = truth.to(out), mask.to(out)
    for t in result.steps:
        if not torch.equal(result.x[t][mask.expand_as(truth)], truth[mask.expand_as(truth)]):
            raise ChainInputError(
                f"the transition {type(chain.transition).__name__} changed observed pixels at "
                f"step {t}: a transition used for inpainting must render x_t with the decoder it "
                "is given (which puts the observed pixels back)"
            )
    error = {t: _masked_mse(result.x[t], truth, mask) for t in result.steps}
    images, observed, start = images.to(out), observed.to(out), start.to(out)
    return InpaintResult(
        images=images,
        observed=observed,
        start=start,
        chains=result,
        error=error,
        fill_error=_masked_mse(start, images, observed),
        chains_per_image=chains,
    )


# ----------------------------------------------------------------------------------------------
# `aesampler inpaint`: the recipe's `inpaint` section, written into the run directory.


def recipe_mask(recipe: Recipe, count: int, size: tuple[int, int]) -> Tensor:
    """The masks of ``inpaint.mask`` for ``count`` images of ``size``; errors name the key."""
    spec = recipe.inpaint.mask
    return make_mask(
        spec.missing,
        size,
        count=count,
        fraction=spec.fraction,
        generator=torch.Generator().manual_seed(spec.seed),
        where="inpaint.mask",
    )


def inpaint_test_images(
    parts: Components,
    run_dir: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> InpaintResult:
    """Inpaint test images as the recipe's ``inpaint`` section says; write ``inpainting/``.

    Files: ``step-NNN.png`` per recorded step (a row per image: the original, the masked image
    the chain started from, then each chain's fill at that step), ``inpainting.png`` (a row per
    image: original, masked, then the first chain at every recorded step),
    ``inpainting.safetensors`` and ``settings.json`` (which holds the measured error by step).
    Like the other commands, the folder is replaced in one transaction.
    """
    from .rundir import INPAINTING, RunDir, with_recipe, write_recipe

    recipe = parts.recipe
    cfg = recipe.inpaint
    run = RunDir(run_dir)
    run.check_replaceable("inpaint", [INPAINTING], overwrite)
    images = _test_images(parts, cfg.images)  # (N, C, H, W)
    count = len(images)
    observed = recipe_mask(recipe, count, tuple(images.shape[2:]))
    spec = recipe.chain_corruption
    corruption = parts.registry.create("corruption", spec.name, **spec.params) if spec else None
    with run.transaction("inpaint", with_recipe(run, INPAINTING)) as txn:
        result = _run_inpaint(parts, images, observed, corruption, progress)
        folder = txn.path(INPAINTING)
        folder.mkdir()
        _save_inpainting(folder, result, count, cfg.chains_per_image)
        _save_inpainting_settings(parts, folder, result, count)
        write_recipe(parts.recipe, txn)
    log(
        "inpainting: mean squared error of the missing pixels by step: "
        + ", ".join(f"{t}: {v:.4f}" for t, v in result.mean_error.items())
        + f" (constant fill {cfg.fill}: {float(result.fill_error.mean()):.4f})"
    )
    return result


def _test_images(parts: Components, images: int) -> Tensor:
    """Up to ``images`` test images, spread evenly over the split: (N, C, H, W)."""
    from .components import WorkflowError

    test = parts.dataset("test")
    count = min(images, len(test))
    if count < 1:
        raise WorkflowError("inpainting needs at least 1 test image; the test split has none")
    picks = torch.linspace(0, len(test) - 1, count).round().long()  # spread over the split
    return torch.stack([test[int(i)][0] for i in picks])


def _recipe_transition(parts: Components) -> TransitionFactory:
    """Builds ``sampling.transition`` from the registry, for :func:`inpaint`."""
    sampling = parts.recipe.sampling

    def transition(encoder: Encoder, decoder: Decoder, noise: Corruption | None) -> Transition:
        return parts.registry.create(
            "transition",
            sampling.transition.name,
            encoder=encoder,
            decoder=decoder,
            corruption=noise,
            **sampling.transition.params,
        )

    return transition


def _run_inpaint(
    parts: Components,
    images: Tensor,
    observed: Tensor,
    corruption: Corruption | None,
    progress: bool,
) -> InpaintResult:
    """:func:`inpaint` as the recipe's ``inpaint`` section says, with a progress bar."""
    from tqdm import tqdm

    cfg, sampling = parts.recipe.inpaint, parts.recipe.sampling
    with tqdm(total=cfg.steps + 1, desc="inpainting", unit="step", disable=not progress) as bar:
        return inpaint(
            parts.model.encoder,
            parts.model.decoder,
            images.to(parts.device),
            observed,
            corruption=corruption,
            transition=_recipe_transition(parts),
            corrupt_observed=cfg.corrupt_observed,
            chains=cfg.chains_per_image,
            steps=cfg.steps,
            record=cfg.record,
            fill=cfg.fill,
            batchnorm=sampling.batchnorm,
            seed=cfg.seed,
            callback=lambda _: bar.update(1),
        )


def _save_inpainting(folder: Path, result: InpaintResult, count: int, per: int) -> None:
    """The step grids, the overview grid and the tensors of ``inpainting/``."""
    from .rundir import INPAINTING_GRID, INPAINTING_TENSORS, save_png, save_tensors

    shown = result.start.shape[1:]
    for t in result.chains.steps:
        filled = result.chains.x[t].reshape(count, per, *shown)
        rows = torch.cat([result.images[:, None], result.start[:, None], filled], dim=1)
        save_png(rows.flatten(0, 1), folder / f"step-{t:03d}.png", nrow=2 + per)
    first = [result.chains.x[t][::per] for t in result.chains.steps]  # chain 0 of each image
    overview = torch.stack([result.images, result.start, *first], dim=1)
    save_png(overview.flatten(0, 1), folder / INPAINTING_GRID, nrow=overview.shape[1])
    tensors = {
        "images": result.images.float().contiguous(),
        "observed": result.observed.contiguous(),
        "start": result.start.float().contiguous(),
        "fill_error": result.fill_error.contiguous(),
    }
    for t in result.chains.steps:
        tensors[step_key("x", t)] = result.chains.x[t].float().contiguous()
        tensors[step_key("z", t)] = result.chains.z[t].float().contiguous()
        tensors[step_key("error", t)] = result.error[t].contiguous()
    save_tensors(tensors, folder / INPAINTING_TENSORS)


def _save_inpainting_settings(
    parts: Components, folder: Path, result: InpaintResult, count: int
) -> None:
    """``inpainting/settings.json``: the ``inpaint`` section and the measured errors."""
    from .components import settings_document
    from .documents import InpaintingSettings
    from .rundir import save_settings

    cfg, sampling = parts.recipe.inpaint, parts.recipe.sampling
    missing = (~result.observed).expand_as(result.images)
    settings = dict(
        cfg.model_dump(mode="json"),
        batchnorm=sampling.batchnorm,
        images_used=count,
        steps_recorded=list(result.chains.steps),
        missing_share=float(missing.double().mean()),
        masked_mse={str(t): v for t, v in result.mean_error.items()},
        fill_mse=float(result.fill_error.mean()),
    )
    kinds = ["transition", "corruption", "dataset"]
    save_settings(folder, InpaintingSettings.build(settings_document(parts, settings, kinds)))
