"""Argument types shared by the commands, and flags derived from config dataclasses.

A config field is described once, by the docstring under it; ``add_config_flags`` turns fields into
``--flags`` whose help is that docstring's first sentence plus the field's default, so neither the help
text nor the defaults are written a second time here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, fields
from decimal import Decimal
from typing import Any, NoReturn

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def _count(text: str) -> Decimal:
    m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGbB]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (examples: 2000000, 2M, 500k, 1e6)")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2).lower()]


def parse_count(text: str) -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, '1e6' -> 1_000_000."""
    value = _count(text)
    if value < 1 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a positive whole count: {text!r}")
    return int(value)


def whole_number(text: str) -> int:
    """A whole number, with the count suffixes allowed ('2M'); the config checks its range and names the field."""
    value = _count(text)
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def count_list(text: str) -> list[int]:
    """'16,32,64' -> [16, 32, 64]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need whole numbers >= 1, e.g. 16,32,64; got {text!r}")
    return values


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line (``error: sparsecode train: argument --tokens: not a
    count: '2Q' ...; see sparsecode train --help``) and exit status 2, like every other user error, instead of a
    usage block. Subcommand parsers are of the same class (argparse makes them with ``type(parent)``)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; an option's argparse default appended to its help (so no help text repeats it),
    except for on/off flags and options whose default means "not given"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        if (
            "%(default)" not in help
            and default not in (None, False, True, argparse.SUPPRESS)
            and action.option_strings
            and action.nargs != 0
        ):
            help += " (default %(default)s)"
        return help


# -- flags from config fields ------------------------------------------------------------------------
_TYPES = {  # field annotation (without "| None") -> (argparse type, metavar)
    "int": (whole_number, "N"),
    "float": (float, "X"),
    "str": (str, None),
    "list[int]": (count_list, "N1,N2,.."),
    "list[str]": (str, None),
}


@dataclass(frozen=True)
class ConfigFlag:
    """One ``--flag`` standing for field ``field`` of the config classes in ``owners``."""

    field: str
    flag: str
    owners: tuple[type, ...]

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def first_sentence(doc: str) -> str:
    """A field docstring as one line of help: its first sentence, in plain text."""
    text = " ".join(doc.split()).replace("``", "")
    m = re.search(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])", text)
    text = text[: m.start() + 1] if m else text
    return re.sub(r"\bNone\b", "unset", text).replace("%", "%%")


def show_default(value: Any) -> str:
    """2000000 -> '2M', 0.05 -> '0.05', 'float32' -> 'float32'."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**4:
        for suffix, unit in (("M", 10**6), ("k", 10**3)):
            if value % unit == 0:
                return f"{value // unit}{suffix}"
    return str(value)


def _default(f) -> Any:
    return f.default if f.default is not MISSING else None


def _family(cls: type, name: str, classes: Sequence[type]) -> int:
    """Position of the first of ``classes`` up ``cls``'s bases to have field ``name``: subclasses that inherit a
    field are listed right after the class they inherit it from (relu, gated, then jumprelu)."""
    return min(
        classes.index(base) for base in cls.__mro__ if base in classes and name in {f.name for f in fields(base)}
    )


def _defaults_note(defaults: dict[str, Any]) -> list[str]:
    """{owner: default} -> ['default 5.0, 2.0 for gated'] (the most common default first; nothing if all unset)."""
    by_value: dict[str, list[str]] = {}
    for owner, value in defaults.items():
        by_value.setdefault("unset" if value is None else show_default(value), []).append(owner)
    ranked = sorted(by_value.items(), key=lambda kv: -len(kv[1]))
    if list(by_value) == ["unset"]:
        return []
    (common, _), rest = ranked[0], ranked[1:]
    return [", ".join([f"default {common}", *(f"{value} for {', '.join(owners)}" for value, owners in rest)])]


def add_config_flags(
    group: argparse._ActionsContainer,
    classes: Sequence[type],
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
    owner_name=lambda cls: cls.__name__,
    many: Iterable[str] | bool = (),
) -> list[ConfigFlag]:
    """Add a flag for every field of ``classes`` (in order of first appearance) not in ``skip`` (and in ``only``).

    A field several classes share is one flag; when only some of ``classes`` have it, its help names them
    (``owner_name``) and the defaults they differ in. Flags default to None, so a run can tell what was given.
    The fields in ``many`` (all with True; yes/no fields excepted) take one or more values, given as a list.
    """
    from ..configs import field_docs

    rename = rename or {}
    owners: dict[str, list[type]] = {}
    for cls in classes:
        for f in fields(cls):
            if f.name not in skip and (only is None or f.name in only):
                owners.setdefault(f.name, []).append(cls)
    flags = []
    for name, owning in owners.items():
        owning.sort(key=lambda c: (_family(c, name, classes), classes.index(c)))
        f = next(x for x in fields(owning[0]) if x.name == name)
        flag = ConfigFlag(name, "--" + rename.get(name, name).replace("_", "-"), tuple(owning))
        help = first_sentence(field_docs(owning[0]).get(name, ""))
        notes = []
        if len(owning) < len(classes):
            notes.append(", ".join(owner_name(c) for c in owning))
        notes += _defaults_note({owner_name(c): _default(next(x for x in fields(c) if x.name == name)) for c in owning})
        if notes:
            help += f" [{'; '.join(notes)}]"
        base = str(f.type).replace(" ", "").removesuffix("|None")
        several = many is True or (many is not True and name in many)  # yes/no flags stay single
        if base == "bool":
            group.add_argument(flag.flag, dest=flag.dest, action=argparse.BooleanOptionalAction, help=help)
        else:
            kind, metavar = _TYPES[base]
            nargs = "+" if base.startswith("list[str]") or several else None
            group.add_argument(flag.flag, dest=flag.dest, type=kind, metavar=metavar, nargs=nargs, help=help)
        flags.append(flag)
    return flags


def given(args: argparse.Namespace, flags: Iterable[ConfigFlag], owner: type | None = None) -> dict[str, Any]:
    """{field: value} of the flags given on the command line (of those ``owner`` has, if named)."""
    return {
        f.field: getattr(args, f.dest)
        for f in flags
        if getattr(args, f.dest) is not None and (owner is None or owner in f.owners)
    }


def check_run_folder(run: str) -> None:
    """The cheap checks of a RUN argument, done before the command imports torch (seconds) to find it missing."""
    from pathlib import Path

    from ..errors import DataError
    from ..layout import CONFIG_FILE

    path = Path(run)
    if not path.is_dir():
        raise DataError(f"run folder {run} not found")
    if not (path / CONFIG_FILE).is_file():
        raise DataError(f"{run} is not a run folder: {CONFIG_FILE} is missing")
