"""cilbench: class-incremental learning benchmarks on pre-trained models.

This module re-exports what a strategy or stream author needs; importing it does no I/O.
"""

from cilbench.api import (
    STRATEGIES,
    STREAMS,
    BaseStrategy,
    Experience,
    NoConfig,
    Strategy,
    Stream,
    StreamBuilder,
    StreamInfo,
    register_strategy,
    register_stream,
)
from cilbench.backbones import BACKBONES, Backbone, BackboneSpec, create_backbone, register_backbone
from cilbench.config import Constraint, NonNegative, OneOf, Positive, Range
from cilbench.data import ArraySource, DatasetView, FileSource, ImageSource
from cilbench.errors import CilbenchError
from cilbench.features import FeatureStore
from cilbench.prototypes import ClassMeans, PrototypeStrategy, cosine_scores
from cilbench.results import RunResult, load_result
from cilbench.runner import RunSpec, run

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "STRATEGIES",
    "STREAMS",
    "ArraySource",
    "Backbone",
    "BackboneSpec",
    "BaseStrategy",
    "CilbenchError",
    "ClassMeans",
    "Constraint",
    "DatasetView",
    "Experience",
    "FeatureStore",
    "FileSource",
    "ImageSource",
    "NoConfig",
    "NonNegative",
    "OneOf",
    "Positive",
    "PrototypeStrategy",
    "Range",
    "RunResult",
    "RunSpec",
    "Strategy",
    "Stream",
    "StreamBuilder",
    "StreamInfo",
    "__version__",
    "cosine_scores",
    "create_backbone",
    "load_result",
    "register_backbone",
    "register_strategy",
    "register_stream",
    "run",
]
