"""Built-in start samplers: ``prior`` (the paper's N(0, I)), ``encodings`` and ``ex_post_gmm``."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.samplers import EncodingsSampler, ExPostGMM, PriorSampler


@hookimpl
def register_samplers(register):
    register("prior", PriorSampler)
    register("encodings", EncodingsSampler)
    register("ex_post_gmm", ExPostGMM)
