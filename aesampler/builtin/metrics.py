"""Built-in metrics and feature extractors for measuring samples at every chain step."""

from __future__ import annotations

from aesampler import hookimpl
from aesampler.evaluation import (
    ClassifierFeatures,
    DataCopying,
    Frechet,
    InceptionFeatures,
    MMDLearned,
    MMDPrior,
    Novelty,
    PixelFeatures,
    PrecisionRecall,
    StepSize,
)


@hookimpl
def register_metrics(register):
    register("mmd_learned", MMDLearned)
    register("mmd_prior", MMDPrior)
    register("step_size", StepSize)
    register("frechet", Frechet)
    register("precision_recall", PrecisionRecall)
    register("novelty", Novelty)
    register("data_copying", DataCopying)


@hookimpl
def register_feature_extractors(register):
    register("classifier", ClassifierFeatures)
    register("inception", InceptionFeatures)
    register("pixels", PixelFeatures)
