"""A metric plugin: how far the chains' latent norms are from those of encoded data."""

import numpy as np

import aesampler
from aesampler.evaluation import EvaluationData, Metric


class NormGap(Metric):
    """|mean ‖z_t‖ − mean ‖z‖ of encoded held-out images|."""

    space = "latent"  # reads the chains' latents, data.z
    lower_is_better = True  # 0 when the chains' latents have the data's typical norm
    requires = ("reference_z",)  # an input it reads beyond data.z

    def __init__(self, order: float = 2):
        if order <= 0:
            raise ValueError(f"order must be positive, got {order}")
        self.order = order

    def compute(self, data: EvaluationData, step: int):
        samples = np.linalg.norm(data.z[step], ord=self.order, axis=1)
        reference = np.linalg.norm(data.reference_z, ord=self.order, axis=1)

        def gap(i, j):  # i: indices into the samples, j: into the reference
            return abs(samples[i].mean() - reference[j].mean())

        def gaps(i, j):  # optional: every resample at once, i and j of shape (resamples, n)
            return np.abs(samples[i].mean(axis=1) - reference[j].mean(axis=1))

        return {"norm_gap": data.boot(gap, len(samples), len(reference), batched=gaps)}


@aesampler.hookimpl
def register_metrics(register):
    register("norm_gap", NormGap)
