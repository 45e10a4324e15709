"""cilbench: class-incremental learning benchmarks on pre-trained models.

This module re-exports what a strategy or stream author needs. The names load on first use
(PEP 562), so `import cilbench` and the command line's `--help` pull in no torch; importing
cilbench does no I/O.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cilbench.core.version import __version__

_EXPORTS: dict[str, str] = {
    "BACKBONES": "cilbench.backbones.spec",
    "STRATEGIES": "cilbench.api",
    "STREAMS": "cilbench.api",
    "ArraySource": "cilbench.data.sources",
    "Backbone": "cilbench.backbones.model",
    "BackboneSpec": "cilbench.backbones.spec",
    "BaseStrategy": "cilbench.api",
    "CilbenchError": "cilbench.core.errors",
    "ClassIncrementalOptions": "cilbench.data.streams",
    "ClassMeans": "cilbench.learn.prototypes",
    "Constraint": "cilbench.core.config",
    "DatasetView": "cilbench.data.sources",
    "Experience": "cilbench.data.streams",
    "FeatureStore": "cilbench.features",
    "FileSource": "cilbench.data.sources",
    "ImageSource": "cilbench.data.sources",
    "NoConfig": "cilbench.api",
    "NonNegative": "cilbench.core.config",
    "OneOf": "cilbench.core.config",
    "Positive": "cilbench.core.config",
    "PrototypeStrategy": "cilbench.learn.prototypes",
    "Range": "cilbench.core.config",
    "RunContext": "cilbench.api",
    "RunResult": "cilbench.core.results",
    "RunSpec": "cilbench.engine.spec",
    "Strategy": "cilbench.api",
    "Stream": "cilbench.data.streams",
    "StreamBuilder": "cilbench.data.streams",
    "StreamInfo": "cilbench.data.streams",
    "class_incremental_stream": "cilbench.data.streams",
    "cosine_scores": "cilbench.learn.prototypes",
    "create_backbone": "cilbench.backbones.model",
    "domain_incremental_stream": "cilbench.data.streams",
    "load_result": "cilbench.core.results",
    "register_backbone": "cilbench.backbones.spec",
    "register_strategy": "cilbench.api",
    "register_stream": "cilbench.api",
    "register_weights": "cilbench.backbones.weights",
    "run": "cilbench.engine.loop",
}

__all__ = [
    "BACKBONES",
    "STRATEGIES",
    "STREAMS",
    "ArraySource",
    "Backbone",
    "BackboneSpec",
    "BaseStrategy",
    "CilbenchError",
    "ClassIncrementalOptions",
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
    "RunContext",
    "RunResult",
    "RunSpec",
    "Strategy",
    "Stream",
    "StreamBuilder",
    "StreamInfo",
    "__version__",
    "class_incremental_stream",
    "cosine_scores",
    "create_backbone",
    "domain_incremental_stream",
    "load_result",
    "register_backbone",
    "register_strategy",
    "register_stream",
    "register_weights",
    "run",
]


def __getattr__(name: str) -> Any:
    """Load an exported name from the module that defines it, on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cilbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from cilbench.api import (
        STRATEGIES,
        STREAMS,
        BaseStrategy,
        NoConfig,
        RunContext,
        Strategy,
        register_strategy,
        register_stream,
    )
    from cilbench.backbones.model import Backbone, create_backbone
    from cilbench.backbones.spec import BACKBONES, BackboneSpec, register_backbone
    from cilbench.backbones.weights import register_weights
    from cilbench.core.config import Constraint, NonNegative, OneOf, Positive, Range
    from cilbench.core.errors import CilbenchError
    from cilbench.core.results import RunResult, load_result
    from cilbench.data.sources import ArraySource, DatasetView, FileSource, ImageSource
    from cilbench.data.streams import (
        ClassIncrementalOptions,
        Experience,
        Stream,
        StreamBuilder,
        StreamInfo,
        class_incremental_stream,
        domain_incremental_stream,
    )
    from cilbench.engine.loop import run
    from cilbench.engine.spec import RunSpec
    from cilbench.features import FeatureStore
    from cilbench.learn.prototypes import ClassMeans, PrototypeStrategy, cosine_scores
