"""Per-latent statistics and examples of a trained run, stored in RUN/features.sqlite for the dashboard.

Importing this package is cheap and torch-free (the dashboard reads the database's schema from here);
the computation (``build_features``) imports torch when first used.
"""

from __future__ import annotations

from typing import Any

from .config import FeaturesConfig

__all__ = ["FeaturesConfig", "build_features"]


def __getattr__(name: str) -> Any:
    if name == "build_features":
        from .build import build_features

        return build_features
    raise AttributeError(name)
