import numpy as np

import aesampler
from aesampler.evaluation import Metric


class MeanNorm(Metric):
    """Mean ‖z_t‖ over chains."""

    space = "latent"  # reads z (the default)
    lower_is_better = None  # context, not a score

    def compute(self, data, step):
        norms = np.linalg.norm(data.z[step], axis=1)
        return {"mean_norm": data.boot(lambda i: float(norms[i].mean()), len(norms))}


@aesampler.hookimpl
def register_metrics(register):
    register("mean_norm", MeanNorm)
