"""A network of a pythae user's own, which pythae saves as a pickle (``encoder.pkl``)."""

from __future__ import annotations

from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseEncoder
from torch import nn


class SmallGaussianEncoder(BaseEncoder):
    """Images (1, 8, 8) to pythae's ``embedding`` and ``log_covariance``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 2 * latent_dim)

    def forward(self, x):
        h = self.head(self.body(x))
        return ModelOutput(
            embedding=h[:, : self.latent_dim], log_covariance=h[:, self.latent_dim :]
        )
