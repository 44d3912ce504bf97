"""Bring your own dictionary: read SAELens, sparsify, dictionary_learning and Gemma Scope checkpoints as sparsecode
SAEs, write sparsecode SAEs in the SAELens and sparsify layouts, and make an imported one a run folder that eval,
features and serve use unchanged. See docs/interop.md."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..sae import SparseAutoencoder
from . import dictionary_learning, gemmascope, saelens, sparsify
from .common import ImportedDictionary
from .detect import FORMATS, check_format, detect
from .hub import resolve


def read_dictionary(path: str | Path, format: str = "auto", hint: str | None = None) -> ImportedDictionary:
    """Read the dictionary at ``path`` (a local folder or file) in ``format`` ("auto": detected from its files)."""
    path = Path(path)
    fmt = detect(path) if check_format(format) == "auto" else format
    if not path.exists():
        raise DataError(f"{path} not found")
    if fmt == "saelens":
        return saelens.read(path)
    if fmt == "sparsify":
        return sparsify.read(path)
    if fmt == "dictionary_learning":
        return dictionary_learning.read(path)
    if fmt == "gemmascope":
        return gemmascope.read(path, hint)
    from ..sae import load_sae

    return ImportedDictionary(sae=load_sae(path).eval(), format="sparsecode", path=path)


def load(source: str | Path, format: str = "auto") -> SparseAutoencoder:
    """An SAE object (encode / decode / forward) from a run folder, a sparsecode SAE file, a peer library's
    checkpoint folder or a hub id (``org/repo[/subfolder]``), whatever its format."""
    path, hint = resolve(str(source))
    return read_dictionary(path, format, hint).sae


def export_sae(
    imported: ImportedDictionary | SparseAutoencoder,
    format: str,
    out: str | Path,
    hook: str | None = None,
    model: str | None = None,
) -> Path:
    """Write a dictionary in a peer's layout into the new folder ``out``. ``hook`` is the name the peer expects
    (TransformerLens name for SAELens, base-model module path for sparsify); ``model`` the model's name."""
    from .runs import write_atomically

    sae = imported.sae if isinstance(imported, ImportedDictionary) else imported
    if isinstance(imported, ImportedDictionary):
        hook = hook or imported.hook
        model = model or imported.model
    out = Path(out)
    if format == "saelens":
        saelens.to_saelens(sae)  # refuse before anything is written
        write_atomically(out, lambda tmp: saelens.write(sae, tmp, hook, model))
    elif format == "sparsify":
        sparsify.to_sparsify(sae)
        write_atomically(out, lambda tmp: sparsify.write(sae, tmp, hook or "sae"))
    else:
        from ..errors import ConfigError

        raise ConfigError(f"--format must be saelens or sparsify, got {format!r}")
    return out


__all__ = ["FORMATS", "ImportedDictionary", "detect", "export_sae", "load", "read_dictionary", "resolve"]
