"""Build a real installed-looking distribution on disk: a dist-info folder plus modules."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]
) -> Path:
    """Write ``modules`` and a ``<name>-1.0.dist-info`` declaring ``entry_points`` under root.

    Put ``root`` on ``sys.path`` (or PYTHONPATH) and importlib.metadata finds the distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
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
