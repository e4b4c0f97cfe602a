"""Does ``torch.compile`` of the networks pay for ``Chain.run`` once its compile time is counted?

For the paper's 64 × 64 DCGAN networks (3 channels, latent 200, width 64, fresh random weights)
and the quickstart's 32 × 32 ones, it times ``Chain.run`` (5 steps, batch-statistics BN) eager
and with the encoder's and decoder's networks compiled (``torch.compile``, default mode), in
fp32 and in the fast mode (bf16 autocast, channels-last). The compiled variants start in a fresh
process state for each mode (``torch._dynamo.reset()``), so their first run includes the
compilation; then both are timed interleaved (median of ``--repeats``). The break-even is the
number of chain images after which the compiled model has saved its compile time.

    python benchmarks/torch_compile.py [--batch 64 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from aesampler import Chain, GaussianCorruption
from aesampler.bench import NETWORKS
from aesampler.models import AAE

STEPS = 5


def chain_for(model: AAE) -> Chain:
    return Chain(model.encoder, model.decoder, GaussianCorruption(0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--network", nargs="+", default=["paper", "quickstart"])
    args = parser.parse_args()
    print(
        "network     batch  mode                  eager img/s  compiled img/s  speed-up  "
        "compile s  break-even images"
    )
    for name, size, channels, width in NETWORKS:
        if name not in args.network:
            continue
        torch.manual_seed(0)
        base = AAE(image_size=size, channels=channels, latent_dim=200, width=width).eval()
        for precision, layout in (("fp32", torch.contiguous_format), ("bf16", torch.channels_last)):
            eager = copy.deepcopy(base).to(memory_format=layout)
            compiled = copy.deepcopy(base).to(memory_format=layout)
            compiled.encoder.net = torch.compile(compiled.encoder.net)
            compiled.decoder.net = torch.compile(compiled.decoder.net)
            torch._dynamo.reset()
            for batch in args.batch:
                z0 = torch.randn(batch, 200, generator=torch.Generator().manual_seed(1))

                def run(model: AAE, z0=z0, precision=precision) -> float:
                    started = time.perf_counter()
                    chain_for(model).run(
                        z0, steps=STEPS, record=[STEPS], seed=0, precision=precision
                    )
                    return time.perf_counter() - started

                run(eager)  # warm-up
                first = run(compiled)  # compiles (for this batch shape)
                times = {"eager": [], "compiled": []}
                for _ in range(args.repeats):
                    times["eager"].append(run(eager))
                    times["compiled"].append(run(compiled))
                e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
                compile_seconds = first - c
                images = batch * STEPS
                saved = (e - c) / images  # seconds saved per image
                even = f"{compile_seconds / saved:,.0f}" if saved > 0 else "never"
                mode = f"{precision}" + ("+channels_last" if precision == "bf16" else "")
                print(
                    f"{name:10s}  {batch:5d}  {mode:20s}  {images / e:11.0f}  "
                    f"{images / c:14.0f}  {e / c:8.2f}  {compile_seconds:9.1f}  {even:>17s}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
