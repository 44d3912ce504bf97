"""Activation stores: shuffled, resumable batches in bounded memory, and an on-disk cache."""

from .cache import CachedSource, cache_key, default_cache_dir
from .store import ActivationStore, split_targets

__all__ = ["ActivationStore", "CachedSource", "cache_key", "default_cache_dir", "split_targets"]
