"""Sample quality at every chain step: metrics, feature extractors and the evaluation run."""

from .evaluate import diagnostics, evaluate, format_table
from .features import (
    ClassifierFeatures,
    FeatureError,
    FeatureExtractor,
    InceptionFeatures,
    PixelFeatures,
)
from .metrics import (
    EvaluationData,
    Frechet,
    Metric,
    MMDLearned,
    MMDPrior,
    Novelty,
    PrecisionRecall,
    StepSize,
)
from .samples import evaluate_samples
from .stats import Estimate

__all__ = [
    "ClassifierFeatures",
    "Estimate",
    "EvaluationData",
    "FeatureError",
    "FeatureExtractor",
    "Frechet",
    "InceptionFeatures",
    "MMDLearned",
    "MMDPrior",
    "Metric",
    "Novelty",
    "PixelFeatures",
    "PrecisionRecall",
    "StepSize",
    "diagnostics",
    "evaluate",
    "evaluate_samples",
    "format_table",
]
