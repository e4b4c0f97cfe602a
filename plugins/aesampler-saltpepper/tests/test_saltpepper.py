"""Tests of the salt-and-pepper plugin, run against the installed distribution."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
from aesampler_saltpepper import SaltPepperCorruption

import aesampler

N = 200_000
Z = 6.0  # bounds of 6 binomial standard errors


def _within(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) <= Z * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(("p", "salt"), [(0.1, 0.5), (0.3, 0.9), (1.0, 0.2)])
def test_hit_and_salt_fractions_match_the_parameters(p, salt):
    x = torch.full((N,), 0.5)  # a value that is neither salt nor pepper
    x_tilde = SaltPepperCorruption(p, salt)(x, generator=torch.Generator().manual_seed(0))
    hit = x_tilde != 0.5
    assert _within(hit.float().mean().item(), p, N)
    salted = (x_tilde[hit] == 1).float()
    assert _within(salted.mean().item(), salt, int(hit.sum()))
    assert set(x_tilde.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_seeded_input_untouched_and_identity_at_zero():
    x = torch.rand(4, 3, 8, 8)
    original = x.clone()
    corrupt = SaltPepperCorruption(0.3)
    a = corrupt(x, generator=torch.Generator().manual_seed(1))
    b = corrupt(x, generator=torch.Generator().manual_seed(1))
    c = corrupt(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, original)
    assert torch.equal(SaltPepperCorruption(0.0)(x), x)


@pytest.mark.parametrize("kwargs", [{"p": -0.1}, {"p": 1.5}, {"salt": float("nan")}, {"p": "0.1"}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="must be"):
        SaltPepperCorruption(**kwargs)


def test_registered_through_the_entry_point_with_its_distribution():
    registry = aesampler.load_registry()
    component = registry.get("corruption", "salt_pepper")
    assert component.distribution == "aesampler-saltpepper"
    assert component.version == importlib.metadata.version("aesampler-saltpepper")
    assert component.plugin == "saltpepper"
    assert component.factory is SaltPepperCorruption
    corruption = registry.create("corruption", "salt_pepper", p=0.5)
    assert isinstance(corruption, aesampler.Corruption) and corruption.p == 0.5
