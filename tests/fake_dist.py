"""Build a real installed-looking distribution on disk: a dist-info folder plus modules."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path,
    name: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "1.0",
) -> Path:
    """Write ``modules`` and a ``<name>-<version>.dist-info`` declaring ``entry_points`` under root.

    Put ``root`` on ``sys.path`` (or PYTHONPATH) and importlib.metadata finds the distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[aesampler]\n{lines}\n")
    return root


GOOD = """
    import aesampler

    class FlipCorruption(aesampler.Corruption):
        '''Flips every pixel with probability p.'''

        def __init__(self, p: float = 0.1):
            self.p = p

        def __call__(self, x, *, generator=None):
            import torch
            flip = torch.rand(x.shape, generator=generator, device=x.device) < self.p
            return torch.where(flip, 1 - x, x)

    @aesampler.hookimpl
    def register_corruptions(register):
        register("flip", FlipCorruption)
"""

BROKEN_IMPORT = """
    import a_module_that_does_not_exist  # noqa: F401
"""

MISSPELLED_HOOK = """
    import aesampler

    @aesampler.hookimpl
    def register_corruption(register):  # singular: no such hook
        register("never", object)
"""

DUPLICATE = """
    import aesampler

    @aesampler.hookimpl
    def register_corruptions(register):
        register("gaussian", aesampler.IdentityCorruption)
        register("other_noise", aesampler.IdentityCorruption)
"""

RAISES = """
    import aesampler

    @aesampler.hookimpl
    def register_transitions(register):
        raise RuntimeError("cannot register today")
"""

WRONG_ARGS = """
    import aesampler

    @aesampler.hookimpl
    def register_corruptions(register, extra):
        pass
"""

EXITS_AT_IMPORT = """
    import sys

    sys.exit(0)
"""

EXITS_IN_HOOK = """
    import sys

    import aesampler

    @aesampler.hookimpl
    def register_corruptions(register):
        sys.exit(0)
"""

CUSTOM_BASE_EXCEPTION = """
    import aesampler

    class Odd(BaseException):
        pass

    @aesampler.hookimpl
    def register_metrics(register):
        raise Odd("not an Exception")
"""

INTERRUPTED_AT_IMPORT = """
    raise KeyboardInterrupt
"""

# Its first hook (in kind order: corruption before transition) succeeds, its second fails.
SECOND_HOOK_FAILS = """
    import aesampler

    @aesampler.hookimpl
    def register_corruptions(register):
        register("half_noise", aesampler.IdentityCorruption)

    @aesampler.hookimpl
    def register_transitions(register):
        raise RuntimeError("second hook breaks")
"""

# Its second hook registers a name a built-in already has.
SECOND_HOOK_CLASHES = """
    import aesampler

    @aesampler.hookimpl
    def register_corruptions(register):
        register("clash_noise", aesampler.IdentityCorruption)

    @aesampler.hookimpl
    def register_transitions(register):
        register("decode_corrupt_encode", aesampler.DecodeCorruptEncode)
"""

# A hookwrapper and two ordered implementations of one hook in one module (specname).
WRAPPED = """
    import aesampler

    CALLS = []

    @aesampler.hookimpl(hookwrapper=True, specname="register_corruptions")
    def around(register):
        CALLS.append("before")
        yield
        CALLS.append("after")

    @aesampler.hookimpl(trylast=True, specname="register_corruptions")
    def second(register):
        CALLS.append("second")
        register("wrapped_second", aesampler.IdentityCorruption)

    @aesampler.hookimpl(tryfirst=True, specname="register_corruptions")
    def first(register):
        CALLS.append("first")
        register("wrapped_first", aesampler.IdentityCorruption)
"""


# Importing it leaves a trace, so a test can tell that a switched-off plugin was never imported.
IMPORT_TRACE = """
    import os

    import aesampler

    with open(os.environ["AESAMPLER_TEST_TRACE"], "a") as trace:
        trace.write(__name__ + "\\n")

    @aesampler.hookimpl
    def register_corruptions(register):
        register("traced_" + __name__, aesampler.IdentityCorruption)
"""
