"""Building config dataclasses from JSON dicts, with one-line errors naming the section and field."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: dict[str, Any], section: str, what: str = "") -> T:
    """``cls(**d)``, rejecting unknown and missing fields with a ConfigError naming ``section``.

    ``what`` (e.g. "for arch 'topk'") is added to the messages to say which variant was meant.
    """
    suffix = f" {what}" if what else ""
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {', '.join(unknown)}{suffix}; known: {', '.join(sorted(known))}")
    missing = [f.name for f in fields(cls) if f.name not in d  # type: ignore[arg-type]
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{section}: missing required field(s) {', '.join(missing)}{suffix}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{section}: {e}") from None
