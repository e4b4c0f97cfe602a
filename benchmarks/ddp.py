"""Numbers for docs/distributed.md: DDP's traffic, per-rank BN against one big batch, SyncBatchNorm.

* ``volume``: the parameters of the paper's 64 × 64 networks and the bytes DDP all-reduces per
  optimiser step and per training step (gradients in fp32, as DDP reduces them), and the BN
  buffers it broadcasts before each forward.
* ``bn``: what batch-statistics BN changes. DDP with W ranks of batch B averages W gradients, each
  with BN statistics of its own B images; one process with batch W·B (what SyncBatchNorm would
  give) normalises with the statistics of all W·B. For the quickstart AAE on mnist5k this
  compares the reconstruction gradient of both, averaged over batches, and puts the difference
  next to the difference between the gradients of two disjoint batches (the minibatch noise).
  ``--checkpoint`` measures a trained model instead of the initial one.
* ``syncbn``: SyncBatchNorm on CPU tensors under gloo (2 processes): the error PyTorch raises.

Usage::

    python benchmarks/ddp.py volume
    python benchmarks/ddp.py bn [--checkpoint RUN_DIR] [--batches 8]
    python benchmarks/ddp.py syncbn
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from aesampler.checkpoint import load_model
from aesampler.models import AAE, VAE
from aesampler.recipe import build_dataset, load_recipe


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _buffers(module: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


def volume() -> None:
    mb = 1e6
    for model in (
        VAE(image_size=64, channels=3, latent_dim=200, width=64),
        AAE(image_size=64, channels=3, latent_dim=200, width=64),
    ):
        enc, dec = _count(model.encoder), _count(model.decoder)
        adv = _count(model.adversary) if isinstance(model, AAE) else 0
        print(f"{model.kind}: encoder {enc:,}, decoder {dec:,}, adversary {adv:,} parameters")
        if isinstance(model, AAE):
            phases = {
                "autoencoder (encoder + decoder)": enc + dec,
                "adversary": adv,
                "generator (encoder)": enc,
            }
            forwards = [model.encoder, model.decoder, model.encoder]  # BN buffers broadcast
        else:
            phases = {"autoencoder (encoder + decoder)": enc + dec}
            forwards = [model.encoder, model.decoder]
        for name, count in phases.items():
            print(f"  optimiser step {name}: {4 * count / mb:.2f} MB all-reduced")
        total = 4 * sum(phases.values())
        buffers = sum(_buffers(m) for m in forwards)
        print(f"  per training step: {total / mb:.2f} MB of gradients, {buffers / 1e3:.1f} kB")
        print("  of BN buffers broadcast from rank 0 before the forwards")


def _reconstruction_grad(model, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy(model.reconstruct(x), x, reduction="sum") / len(x)
    loss.backward()
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    return torch.cat([p.grad.flatten() for p in params])


def bn(checkpoint: str | None, batches: int) -> None:
    recipe = load_recipe("recipes/quickstart.yaml", ["output.dir=unused"])
    data = build_dataset(recipe, "train")
    torch.manual_seed(0)
    if checkpoint:
        model, _ = load_model(checkpoint)
    else:
        model = AAE(image_size=32, channels=1, latent_dim=200, width=32)
    model.train()  # batch statistics, as in training
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    for per_rank, ranks in ((32, 2), (64, 2), (32, 4)):
        size = per_rank * ranks
        split, noise = [], []
        for i in range(batches):
            pick = order[2 * i * size : (2 * i + 1) * size]
            other = order[(2 * i + 1) * size : (2 * i + 2) * size]
            x = torch.stack([data[int(j)][0] for j in pick])
            y = torch.stack([data[int(j)][0] for j in other])
            state = {k: v.clone() for k, v in model.state_dict().items()}
            full = _reconstruction_grad(model, x)
            parts = [_reconstruction_grad(model, part) for part in x.chunk(ranks)]
            mean = torch.stack(parts).mean(0)  # what DDP makes of per-rank BN
            other_grad = _reconstruction_grad(model, y)
            model.load_state_dict(state)  # BN running statistics untouched by the measurement
            split.append(((mean - full).norm() / full.norm()).item())
            noise.append(((other_grad - full).norm() / full.norm()).item())
        print(
            f"{ranks} ranks x {per_rank} vs 1 x {size}: |g_ddp - g_big| / |g_big| = "
            f"{sum(split) / batches:.3f}; another batch of {size}: "
            f"|g_other - g_big| / |g_big| = {sum(noise) / batches:.3f}"
        )


def _syncbn_worker(rank: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29541")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        layer = nn.SyncBatchNorm(4).train()
        layer(torch.randn(8, 4, 2, 2))
        print(f"rank {rank}: SyncBatchNorm ran on CPU")
    except Exception as error:  # the message is the measurement
        if rank == 0:
            print(f"{type(error).__name__}: {error}")
    finally:
        dist.destroy_process_group()


def syncbn() -> None:
    mp.spawn(_syncbn_worker, nprocs=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("volume")
    measure = sub.add_parser("bn")
    measure.add_argument("--checkpoint")
    measure.add_argument("--batches", type=int, default=8)
    sub.add_parser("syncbn")
    args = parser.parse_args()
    if args.what == "volume":
        volume()
    elif args.what == "bn":
        bn(args.checkpoint, args.batches)
    else:
        syncbn()
