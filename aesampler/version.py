"""The installed distribution's version, in a leaf module.

Modules that record the version (the run directory's manifest, checkpoints, settings) import it
from here rather than from the package: ``from . import __version__`` runs ``aesampler/__init__``,
which imports the chain, the plugins and (lazily) the evaluation stack, so every such module sat
in one import cycle with the package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aesampler")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
