"""Building and validating config dataclasses: from JSON dicts, field types from annotations, ranges and choices;
every error is one line naming the field (``section.name``)."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import textwrap
from dataclasses import MISSING, fields, is_dataclass
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
        raise ConfigError(
            f"{section}: unknown field(s) {', '.join(unknown)}{suffix}; known: {', '.join(sorted(known))}"
        )
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in d  # type: ignore[arg-type]
        and f.default is MISSING
        and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigError(f"{section}: missing required field(s) {', '.join(missing)}{suffix}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{section}: {e}") from None


def check_field_types(obj: Any, section: str) -> None:
    """Reject values of the wrong JSON type for fields annotated int / float / bool / str (optionally
    ``| None``), e.g. ``"k": 3.0`` or ``"normalize_inputs": "no"``; ints given for floats become floats."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None")
        base = annotation.removesuffix("|None")
        if value is None and optional:
            continue
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(base, True)
        if not ok:
            expected = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string"}[base]
            raise ConfigError(
                f"{section}.{f.name} must be {expected}" + (" or null" if optional else "") + f", got {value!r}"
            )
        if base == "float" and isinstance(value, int):
            object.__setattr__(obj, f.name, float(value))
        if base == "int" and abs(value) > 2**62:
            raise ConfigError(f"{section}.{f.name} is out of range: {value}")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (and of its dataclass bases), read from the source:
    the one place a setting is described, shared by the command line's help and the docs."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. a frozen build): help falls back to the bare flag
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


# Range and choice checks for the config dataclasses' ``__post_init__``. ``name`` is the field as the user writes
# it, section included (``source.max_length``, ``train.tokens``). Integers given where a float is expected are
# accepted.


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is finite and inside the interval (open or closed at each end); else a
    ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        rng = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {rng}, got {value:g}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else a ConfigError listing them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
