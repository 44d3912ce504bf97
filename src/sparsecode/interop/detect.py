"""Which format a path holds, from its files alone; ``--format`` forces one."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from ..io import read_metadata
from ..layout import CONFIG_FILE, SAE_FILE
from . import dictionary_learning, gemmascope, saelens, sparsify

FORMATS = ("sparsecode", "saelens", "sparsify", "dictionary_learning", "gemmascope")


def is_sparsecode(path: Path) -> bool:
    """A sparsecode run folder or SAE file (its safetensors metadata says so)."""
    file = path / SAE_FILE if path.is_dir() else path
    if not (file.is_file() and file.suffix == ".safetensors"):
        return False
    try:
        return read_metadata(file).get("format") == "sparsecode-sae"
    except DataError:
        return False


CHECKS = {
    "sparsecode": is_sparsecode,
    "saelens": saelens.looks_like,
    "sparsify": sparsify.looks_like,
    "dictionary_learning": dictionary_learning.looks_like,
    "gemmascope": gemmascope.looks_like,
}


def detect(path: Path) -> str:
    """The one format ``path`` holds; a one-line error when none or several match."""
    if not path.exists():
        raise DataError(f"{path} not found")
    found = [name for name, check in CHECKS.items() if check(path)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{path}: unknown format (none of: SAELens {' + '.join(saelens.FILES)}, sparsify {sparsify.CFG_FILE} + "
            f"{sparsify.WEIGHTS_FILE} per hook folder, dictionary_learning {dictionary_learning.WEIGHTS_FILE} + "
            f"{dictionary_learning.CFG_FILE}, Gemma Scope {gemmascope.WEIGHTS_FILE}, sparsecode {CONFIG_FILE} + "
            f"{SAE_FILE}); pass --format if it is one of them"
        )
    raise DataError(f"{path}: ambiguous, it looks like {' and '.join(found)}; pass --format to choose")


def check_format(name: str) -> str:
    if name not in ("auto", *FORMATS):
        raise ConfigError(f"--format must be auto or one of {', '.join(FORMATS)}, got {name!r}")
    return name
