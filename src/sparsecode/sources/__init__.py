"""Activation sources: a model over a text corpus, an array file, synthetic superposition data, image patches, or an
image model over views of images.

Every source implements the ``Source`` protocol (see ``base.py``) and is rebuilt from its config
dict, so a run's config.json is enough to get the exact same stream back.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .arrays import ArraySource, ArraySourceConfig
from .base import (
    SPLITS,
    ActivationBatch,
    GroundTruthSource,
    Source,
    SourceBase,
    SourceConfigBase,
    TextModelSource,
    check_split,
)
from .hf import ModelSource, ModelSourceConfig, find_module, load_model
from .images import ImageSource, ImageSourceConfig
from .synthetic import SyntheticSource, SyntheticSourceConfig, parse_synthetic_spec
from .text import load_documents, split_documents
from .vision import VisionSource, VisionSourceConfig

SOURCE_KINDS: dict[str, tuple[type[SourceConfigBase], type]] = {
    ModelSourceConfig.kind: (ModelSourceConfig, ModelSource),
    ArraySourceConfig.kind: (ArraySourceConfig, ArraySource),
    SyntheticSourceConfig.kind: (SyntheticSourceConfig, SyntheticSource),
    ImageSourceConfig.kind: (ImageSourceConfig, ImageSource),
    VisionSourceConfig.kind: (VisionSourceConfig, VisionSource),
}
"""kind -> (config class, source class)."""

SourceConfig = ModelSourceConfig | ArraySourceConfig | SyntheticSourceConfig | ImageSourceConfig | VisionSourceConfig


def source_config_from_dict(d: dict[str, Any]) -> SourceConfig:
    """Rebuild a source config from its ``to_dict()`` form; the ``kind`` key picks the class."""
    if not isinstance(d, dict):
        raise ConfigError(f"source: expected a mapping with a 'kind' key, got {type(d).__name__}")
    kind = d.get("kind")
    if kind is None:
        raise ConfigError(f"source: missing 'kind'; use one of {', '.join(SOURCE_KINDS)}")
    if not isinstance(kind, str) or kind not in SOURCE_KINDS:
        raise ConfigError(f"source: unknown kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    return SOURCE_KINDS[kind][0].from_dict(d)


def open_source(config: SourceConfig) -> Source:
    """The source object for ``config``."""
    for config_cls, source_cls in SOURCE_KINDS.values():
        if isinstance(config, config_cls):
            return source_cls(config)
    raise ConfigError(f"source: not a source config: {type(config).__name__}")


__all__ = [
    "SOURCE_KINDS",
    "SPLITS",
    "ActivationBatch",
    "ArraySource",
    "ArraySourceConfig",
    "GroundTruthSource",
    "ImageSource",
    "ImageSourceConfig",
    "ModelSource",
    "ModelSourceConfig",
    "Source",
    "SourceBase",
    "SourceConfig",
    "SourceConfigBase",
    "SyntheticSource",
    "SyntheticSourceConfig",
    "TextModelSource",
    "VisionSource",
    "VisionSourceConfig",
    "check_split",
    "find_module",
    "load_documents",
    "load_model",
    "open_source",
    "parse_synthetic_spec",
    "source_config_from_dict",
    "split_documents",
]
