"""aesampler: better samples from generative autoencoders.

Implements Markov-chain sampling from Creswell, Arulkumaran & Bharath, "Improving sampling from
generative autoencoders with Markov chains": iterate decode -> corrupt -> encode, whose
stationary distribution is the encoder's learned latent distribution rather than the prior.
"""

from __future__ import annotations

from .chain import (
    BATCHNORM_MODES,
    Chain,
    ChainResult,
    ChainStep,
    StepTensors,
    default_record,
    sampling_mode,
)
from .corruptions import GaussianCorruption, IdentityCorruption
from .errors import (
    AesamplerError,
    ChainInputError,
    ComponentError,
    NonFiniteChainError,
    PluginLoadWarning,
    PluginSettingWarning,
    UnknownComponentError,
    WrapperError,
)
from .hookspecs import hookimpl
from .interfaces import (
    Corruption,
    Decoder,
    DeterministicEncoder,
    Encoder,
    GaussianEncoder,
    ModuleDecoder,
    Posterior,
    Transition,
    TransitionOutput,
)
from .interpolate import lerp, slerp
from .plugins import get_registry, load_registry
from .precision import PrecisionChoice, SlowPrecisionWarning, resolve_precision
from .registry import Component, Registry
from .transitions import DecodeCorruptEncode
from .version import __version__


def __getattr__(name: str):
    # The evaluation stack (SciPy, scikit-learn) is imported only when it is used.
    if name == "evaluate_samples":
        from .evaluation import evaluate_samples

        return evaluate_samples
    raise AttributeError(f"module 'aesampler' has no attribute {name!r}")


__all__ = [
    "BATCHNORM_MODES",
    "AesamplerError",
    "Chain",
    "ChainInputError",
    "ChainResult",
    "ChainStep",
    "Component",
    "ComponentError",
    "Corruption",
    "DecodeCorruptEncode",
    "Decoder",
    "DeterministicEncoder",
    "Encoder",
    "GaussianCorruption",
    "GaussianEncoder",
    "IdentityCorruption",
    "ModuleDecoder",
    "NonFiniteChainError",
    "PluginLoadWarning",
    "PluginSettingWarning",
    "Posterior",
    "PrecisionChoice",
    "Registry",
    "SlowPrecisionWarning",
    "StepTensors",
    "Transition",
    "TransitionOutput",
    "UnknownComponentError",
    "WrapperError",
    "__version__",
    "default_record",
    "evaluate_samples",
    "get_registry",
    "hookimpl",
    "lerp",
    "load_registry",
    "resolve_precision",
    "sampling_mode",
    "slerp",
]
