"""Sample quality at every chain step: metrics, feature extractors and the evaluation run."""

from .best import DIAGNOSTICS_MEANING, BestStep, best_steps, describe_best_steps
from .copying import COPYING_THRESHOLD, CopyingResult, DataCopying, data_copying
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
    "COPYING_THRESHOLD",
    "DIAGNOSTICS_MEANING",
    "BestStep",
    "ClassifierFeatures",
    "CopyingResult",
    "DataCopying",
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
    "best_steps",
    "data_copying",
    "describe_best_steps",
    "diagnostics",
    "evaluate",
    "evaluate_samples",
    "format_table",
]
