"""One family of errors.

Every error a user can cause derives from :class:`AesamplerError`. Its message names the thing
that is wrong, where it is (an argument, a key path, a plugin's distribution) and, where there is a
short list, what would have been accepted. The CLI prints the message and exits with status 2;
``--traceback`` shows the stack for debugging.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable


class AesamplerError(Exception):
    """Base class of every error aesampler raises on purpose."""


class ChainInputError(AesamplerError, ValueError):
    """A tensor or argument given to the chain runner is not what it expects."""


class NonFiniteChainError(AesamplerError, FloatingPointError):
    """A chain produced NaN or inf in its latents or samples."""


class WrapperError(AesamplerError, ValueError):
    """A network wrapped by DeterministicEncoder, GaussianEncoder or ModuleDecoder returned what
    the wrapper cannot use (not a tensor, a missing named output), or failed on the latents the
    decoder's ``latent_shape`` describes."""


class ComponentError(AesamplerError):
    """A registered component was asked for by a wrong name, or built with wrong parameters."""


class UnknownComponentError(ComponentError, LookupError):
    """No component of that kind is registered under that name."""


class PluginError(AesamplerError):
    """A plugin could not be loaded or registered something invalid."""


class PluginLoadWarning(UserWarning):
    """Emitted once per plugin that failed to load; the other plugins still load."""


class PluginSettingWarning(UserWarning):
    """A setting about plugins that names nothing installed (a typo in a plugin name)."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` when ``word`` is close to one of ``options``, else ``""``."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f" Did you mean {matches[0]!r}?" if matches else ""


_SURROGATE = re.compile(r"(?<!\\)\\udc([89a-f][0-9a-f])")
_UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def quoted(name: str | bytes | os.PathLike) -> str:
    """A file name for a message: quoted with Python's escapes, so that a newline shows as
    ``\\n`` and a byte that is not UTF-8 as ``\\xff`` (not as the raw byte), and one message
    stays one line."""
    if isinstance(name, (str, bytes, os.PathLike)):
        text = os.fsdecode(os.fspath(name))
    else:  # an OSError's file descriptor
        text = str(name)
    return _SURROGATE.sub(r"\\x\1", repr(text))


def printable(message: str) -> str:
    """``message`` with control characters (but line breaks) and undecodable bytes escaped,
    as the last guard before it reaches a terminal."""

    def escape(match: re.Match) -> str:
        char = match.group()
        if 0xDC80 <= ord(char) <= 0xDCFF:  # a byte os.fsdecode could not decode
            return f"\\x{ord(char) - 0xDC00:02x}"
        return repr(char)[1:-1]

    return _UNPRINTABLE.sub(escape, message)
