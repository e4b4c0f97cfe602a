"""aesampler's training loop against a bare PyTorch loop on the same networks and data.

Both train the quickstart's DAAE (DCGAN-style, 32 × 32, 200-D latent) on mnist5k for one epoch
(62 steps of 64 images) with the paper's Adam settings and Gaussian corruption. The bare loop is
what one would write by hand: a DataLoader, the three AAE phases, nothing else. aesampler's loop
also writes metrics.jsonl, validates on 500 images, saves two image grids and a checkpoint per
epoch, so the ratio includes all of that.

Runs alternate (bare, aesampler, bare, ...) in one process so that machine noise hits both; the
table reports the median of each. Usage:

    python benchmarks/train_loop.py [--repeats 3] [--width 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from aesampler.data import mnist5k
from aesampler.nn import Adversary, DCGANDecoder, DCGANEncoder
from aesampler.recipe.loader import validate
from aesampler.training import train


def bare_epoch(width: int, latent: int, seed: int) -> float:
    torch.manual_seed(seed)
    enc = DCGANEncoder(32, 1, latent, width)
    dec = DCGANDecoder(32, 1, latent, width)
    adv = Adversary(latent)
    opt_ae = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-4, betas=(0.5, 0.999))
    opt_adv = torch.optim.Adam(adv.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_gen = torch.optim.Adam(enc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = mnist5k("train")
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    started = time.perf_counter()
    for x, _ in loader:
        x_in = x + 0.5 * torch.randn_like(x)
        z = enc(x_in)
        rec = F.binary_cross_entropy(dec(z), x, reduction="sum") / len(x)
        opt_ae.zero_grad()
        rec.backward()
        opt_ae.step()
        real, fake = adv(torch.randn_like(z)), adv(z.detach())
        d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        d_loss = d_loss + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        opt_adv.zero_grad()
        d_loss.backward()
        opt_adv.step()
        judged = adv(enc(x_in))
        g_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        opt_gen.zero_grad()
        g_loss.backward()
        opt_gen.step()
        rec.detach().item()  # the same one read-back per step that logging costs
    return time.perf_counter() - started


def aesampler_epoch(width: int, latent: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = validate(
            {
                "model": {"name": "aae", "latent_dim": latent, "width": width},
                "data": {"name": "mnist5k"},
                "corruption": {"name": "gaussian", "sigma": 0.5},
                "train": {"epochs": 1, "seed": seed},
                "output": {"dir": f"{tmp}/run"},
            }
        )
        result = train(recipe, progress=False, log=lambda message: None)
        return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--latent", type=int, default=200)
    args = parser.parse_args()
    mnist5k("train")  # load and cache the data outside the timings
    bare, ours = [], []
    for repeat in range(args.repeats):
        bare.append(bare_epoch(args.width, args.latent, repeat))
        ours.append(aesampler_epoch(args.width, args.latent, repeat))
    b, o = statistics.median(bare), statistics.median(ours)
    print(
        f"one epoch of DAAE training on mnist5k (62 steps of 64), {torch.get_num_threads()} threads"
    )
    print(f"{'loop':<28}{'median s':>10}{'runs':>30}")
    print(f"{'bare PyTorch':<28}{b:>10.2f}{'  '.join(f'{t:.2f}' for t in bare):>30}")
    print(f"{'aesampler train()':<28}{o:>10.2f}{'  '.join(f'{t:.2f}' for t in ours):>30}")
    print(f"ratio aesampler / bare: {o / b:.3f}")


if __name__ == "__main__":
    main()
