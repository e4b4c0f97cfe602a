"""One family of errors.

Every error a user can cause derives from :class:`AesamplerError`. Its message names the thing
that is wrong, where it is (an argument, a key path, a plugin's distribution) and, where there is a
short list, what would have been accepted. Advice names a setting in the caller's words
(:func:`named`): a recipe key for the CLI and recipes, an argument inside a Python entry point
that speaks its own :class:`Voice` (``evaluate_samples``). The CLI prints the message and exits
with status 2; ``--traceback`` shows the stack for debugging.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


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


class PluginLoadWarning(UserWarning):
    """Emitted once per plugin that failed to load; the other plugins still load."""


class PluginSettingWarning(UserWarning):
    """A setting about plugins that names nothing installed (a typo in a plugin name)."""


# ---------------------------------------------------------------------------------------------
# Advice in the caller's words


@dataclass(frozen=True)
class Voice:
    """How a caller changes its settings: the words advice in an error message uses.

    Code that gives advice names a setting by its recipe key path (``evaluate.cache_dir``, the
    one name every setting has) and asks :func:`named` how the caller says it. The recipe's
    voice (:data:`RECIPE`, the default: the CLI, recipes and the workflow API) says the key path
    itself; an entry point that takes its settings as Python arguments (``evaluate_samples``)
    speaks its own words through :func:`speaking`, ``phrases`` mapping each key path (or the
    name of a setting only it has) to a phrase in which ``{value}`` stands for the value's
    ``repr``. A key it has no phrase for gives no advice, rather than a recipe key.
    """

    name: str
    phrases: Mapping[str, str] = field(default_factory=dict)


#: The recipe's voice: key paths, ``key=value`` with a value.
RECIPE = Voice("recipe")

_VOICE: contextvars.ContextVar[Voice] = contextvars.ContextVar("aesampler_voice", default=RECIPE)
_UNSET: Any = object()


@contextlib.contextmanager
def speaking(voice: Voice) -> Iterator[None]:
    """Advice given inside the block is in ``voice``'s words (for this thread or task)."""
    token = _VOICE.set(voice)
    try:
        yield
    finally:
        _VOICE.reset(token)


def named(key: str, value: Any = _UNSET, *, recipe: str | None = _UNSET) -> str | None:
    """How the caller sets ``key`` (to ``value``), or None when it has no such setting.

    In the recipe's voice: ``recipe`` when given (``{value}`` in it stands for the value; None:
    recipes have no such setting), else ``key`` or ``key=value``. In another voice: its phrase
    for ``key`` with the value's ``repr``, or None.
    """
    voice = _VOICE.get()
    if voice is RECIPE:
        if recipe is not _UNSET:
            return None if recipe is None else recipe.format(value=value)
        return key if value is _UNSET else f"{key}={value}"
    phrase = voice.phrases.get(key)
    return None if phrase is None else phrase.format(value=repr(value))


def alternatives(*options: str | None) -> str:
    """``"a, b, or c"`` of the options that are not None."""
    given = [option for option in options if option]
    if len(given) < 2:
        return "".join(given)
    return ", ".join(given[:-1]) + f", or {given[-1]}"


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
