"""Built-in transitions: the paper's decode-corrupt-encode operator (Eq. 1 and Eq. 2)."""

from __future__ import annotations

import aesampler


@aesampler.hookimpl
def register_transitions(register):
    register("decode_corrupt_encode", aesampler.DecodeCorruptEncode)
