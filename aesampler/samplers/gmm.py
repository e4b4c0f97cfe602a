"""``ex_post_gmm``: a Gaussian mixture fitted to the training encodings."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Sampler, SamplerError

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


class ExPostGMM(Sampler):
    """A Gaussian mixture fitted to the training encodings (Ghosh et al., 2020).

    The mixture is fitted with scikit-learn's ``GaussianMixture`` (EM, k-means initialisation,
    ``reg_covar`` added to the diagonals); draws are made in PyTorch from the fitted weights,
    means and Cholesky factors, so they come from the generator like every other draw.

    Args:
        components: mixture components.
        covariance: "full", "diag", "spherical" or "tied".
        split: the split whose encodings are fitted.
        reg_covar: added to each covariance's diagonal (numerical stability in high dimensions).
        max_iter: EM iterations at most.
    """

    fits = True
    describes = "draws from a Gaussian mixture fitted to the training encodings"

    def __init__(
        self,
        components: int = 10,
        covariance: str = "full",
        split: str = "train",
        reg_covar: float = 1e-6,
        max_iter: int = 200,
    ):
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be a positive integer, got {components!r}")
        if covariance not in COVARIANCE_TYPES:
            raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        if not (isinstance(reg_covar, (int, float)) and math.isfinite(reg_covar) and reg_covar > 0):
            raise ValueError(f"reg_covar must be a positive number, got {reg_covar!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.components = components
        self.covariance = covariance
        self.split = split
        self.reg_covar = float(reg_covar)
        self.max_iter = max_iter
        self.weights: Tensor | None = None  # (K,)
        self.means: Tensor | None = None  # (K, D)
        self.scale_tril: Tensor | None = None  # (K, D, D): covariance = L Lᵀ

    def fit(self, context):
        from sklearn.mixture import GaussianMixture  # slow to import: only when fitting

        super().fit(context)
        z = context.encodings(self.split).flatten(1).double().numpy()
        if len(z) < self.components:
            raise SamplerError(
                f"ex_post_gmm: {self.components} components need at least as many encodings; "
                f"the {self.split!r} split has {len(z)}"
            )
        mixture = GaussianMixture(
            n_components=self.components,
            covariance_type=self.covariance,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            random_state=context.seed,
        )
        mixture.fit(z)
        if not mixture.converged_:
            context.log(
                f"ex_post_gmm: EM did not converge in {self.max_iter} iterations; using the last "
                "estimate (raise max_iter to fit longer)"
            )
        d = z.shape[1]
        covariances = torch.as_tensor(mixture.covariances_, dtype=torch.float64)
        k = self.components
        if self.covariance == "full":
            full = covariances
        elif self.covariance == "tied":
            full = covariances.expand(k, d, d)
        elif self.covariance == "diag":
            full = torch.diag_embed(covariances)
        else:  # spherical: one variance per component
            full = covariances[:, None, None] * torch.eye(d, dtype=torch.float64)
        self.weights = torch.as_tensor(mixture.weights_, dtype=torch.float64)
        self.means = torch.as_tensor(mixture.means_, dtype=torch.float64)
        self.scale_tril = torch.linalg.cholesky(full)

    def sample(self, n, generator=None):
        n = self._check_n(n)
        if self.weights is None:
            raise SamplerError("ExPostGMM is not fitted: call fit(context) first")
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        z = self.means[which] + (self.scale_tril[which] @ eps.unsqueeze(-1)).squeeze(-1)
        return z.float().reshape(n, *self._shape())

    def state_dict(self):
        if self.weights is None:
            return {}
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    def load_state_dict(self, state):
        try:
            weights, means, tril = state["weights"], state["means"], state["scale_tril"]
        except KeyError as error:
            raise SamplerError(f"the saved state of 'ex_post_gmm' lacks {error}") from None
        k, d = means.shape
        if weights.shape != (k,) or tril.shape != (k, d, d) or k != self.components:
            raise SamplerError(
                f"the saved state of 'ex_post_gmm' holds {k} components of {d} dimensions "
                f"(weights {tuple(weights.shape)}, Cholesky factors {tuple(tril.shape)}), not "
                f"the {self.components} asked for"
            )
        self.weights, self.means, self.scale_tril = (
            weights.double(),
            means.double(),
            tril.double(),
        )
        if self.latent_shape is None:
            self.latent_shape = (d,)
