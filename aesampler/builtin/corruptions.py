"""Built-in corruptions: ``gaussian`` (the paper's denoising noise) and ``identity``."""

from __future__ import annotations

import aesampler


@aesampler.hookimpl
def register_corruptions(register):
    register("gaussian", aesampler.GaussianCorruption)
    register("identity", aesampler.IdentityCorruption)
