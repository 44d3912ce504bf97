"""Imported dictionaries as ordinary run folders (so eval, features and serve work unchanged), and run folders
exported in a peer's layout. Either way the output folder appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..io import new_file_mode, sweep_temporaries, temp_prefix, write_json
from ..layout import CONFIG_FILE, SAE_FILE
from . import hooknames
from .common import ImportedDictionary
from .hooknames import Placement

EMBEDDED_MODELS = {None: "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The embedded models (a run's ``source.model``: null for the default, "smollm2") and their hub ids: an export
names the hub id, an import of a dictionary for one of them uses the embedded copy (works offline)."""


def embedded_name(model: str) -> str | None:
    """The run's ``source.model`` for ``model``: the embedded name when it is one of the embedded models' hub ids."""
    for name, hub_id in EMBEDDED_MODELS.items():
        if model.lower() == hub_id.lower():
            return name
    return model


def hub_id(model: str | None) -> str:
    """The hub id to write into a peer's files for a run's ``source.model``."""
    from ..sources.embedded import is_smollm2

    if model is None or is_smollm2(model):
        return EMBEDDED_MODELS[None if model is None else "smollm2"]
    return model


def write_atomically(out: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a fresh folder beside ``out``, then rename it to ``out`` (which must not exist, or be
    an empty folder). On any error nothing is left behind."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(out.parent)  # folders of writes cut short by a kill
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), dir=out.parent))
    try:
        os.chmod(tmp, new_file_mode(directory=True))  # mkdtemp's 0700 would outlive the rename
        write(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_family(model: str | None) -> tuple[str | None, bool | None]:
    """(family, loaded as a causal LM) from the model's config when it can be read (local folder or cached hub
    model), else from its name; (None, None) when neither says."""
    from ..sources.hf import _load_config, is_causal_lm_config, resolve_model

    try:
        config = _load_config(resolve_model(model))  # offline-aware, quiet, one-line DataError
    except DataError:  # not available here: the name is all there is
        return hooknames.family_from_name(model or "all-MiniLM-L6-v2"), None
    family = config.model_type if config.model_type in hooknames.FAMILIES else None
    return family or hooknames.family_from_name(model), is_causal_lm_config(config)


def place(imported: ImportedDictionary, family: str | None, hook: str | None) -> tuple[Placement, Placement | None]:
    """(input point, target point or None) in the model, from ``--hook`` or from what the peer recorded."""
    transcoder = imported.sae.cfg.arch == "transcoder"
    if hook:
        point = hooknames.parse_hook(hook, family)
        return point, _target(imported, family, point) if transcoder else None
    if imported.hook is None:
        raise ConfigError(f"{imported.path}: the files do not say where the dictionary reads activations; give --hook")
    if imported.format == "sparsify":  # a module path relative to the base model
        module = hooknames.base_relative_to_module(imported.hook, family)
        if transcoder and imported.hook_out:
            return Placement(module, "input"), Placement(module, "output")
        return Placement(module, "output"), None
    point = hooknames.tl_to_module(imported.hook, family)
    return point, _target(imported, family, point) if transcoder else None


def _target(imported: ImportedDictionary, family: str | None, point: Placement) -> Placement | None:
    if not imported.hook_out:
        return None
    if imported.format == "sparsify":
        return Placement(hooknames.base_relative_to_module(imported.hook_out, family), "output")
    target = hooknames.tl_to_module(imported.hook_out, family)
    return None if target == point else target


def import_run(
    source: str,
    out: str | Path,
    format: str = "auto",
    model: str | None = None,
    hook: str | None = None,
    corpus: list[str] | None = None,
) -> dict[str, Any]:
    """Read ``source`` (path or hub id) and write it as the run folder ``out`` (``corpus``: the texts eval and
    features will read, None for the embedded default). Returns a summary."""
    from ..run import RunConfig
    from ..sources import ModelSourceConfig
    from . import read_dictionary
    from .hub import resolve

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    path, hint = resolve(source)
    imported = read_dictionary(path, format, hint)
    model_id = model or hooknames.hub_model(imported.model)
    if model_id is None:
        named = f" (it names {imported.model!r}, which is not a hub id)" if imported.model else ""
        raise ConfigError(f"{source}: the files do not name the model it was trained on{named}; give --model")
    model_id = embedded_name(model_id)
    family, causal = model_family(model_id)
    point, target = place(imported, family, hook)
    if causal is False and family in hooknames.FAMILIES and hooknames.FAMILIES[family].causal:
        fam = hooknames.FAMILIES[family]  # a bare base model (no LM head): its paths have no wrapper prefix
        point = Placement(point.module.removeprefix(fam.base + "."), point.side)
        target = target and Placement(target.module.removeprefix(fam.base + "."), target.side)
    source_cfg = ModelSourceConfig(
        model=model_id,
        hook=point.module,
        hook_side=point.side,
        corpus=corpus,
        **({"target_hook": target.module, "target_hook_side": target.side} if target else {}),
    )
    config = RunConfig(source=source_cfg, sae=imported.sae.cfg)
    record = {
        "format": imported.format,
        "source": hint or source,
        "hook": imported.hook,
        "hook_out": imported.hook_out,
        "model": imported.model,
        "notes": imported.notes,
    }

    def write(tmp: Path) -> None:
        write_json(tmp / CONFIG_FILE, {**config.to_dict(), "imported_from": record})
        imported.sae.save(tmp / SAE_FILE, extra_metadata={"imported_from": imported.format})

    write_atomically(out, write)
    return {
        "out": str(out),
        "format": imported.format,
        "arch": imported.sae.cfg.arch,
        "n_latents": imported.sae.cfg.n_latents,
        "d_in": imported.sae.cfg.d_in,
        "model": model_id or f"{EMBEDDED_MODELS[None]} (embedded)",
        "hook": f"{point.module} ({point.side})",
        "target": f"{target.module} ({target.side})" if target else None,
        "notes": imported.notes,
    }


def export_run(run_dir: str | Path, format: str, out: str | Path) -> dict[str, Any]:
    """Write the run's SAE in ``format`` (saelens or sparsify) into the new folder ``out``."""
    from ..run import load_run
    from . import export_sae

    run = load_run(run_dir)
    src = run.config.source
    if src.kind != "model":
        model_name, hook_name, family = None, None, None
        if format == "sparsify":
            raise DataError(f"{run_dir}: sparsify names a coder by its model's module; this run has no model source")
    else:
        model_name = hub_id(src.model)
        family, _ = model_family(src.model)
        point = Placement(src.hook, src.hook_side)
        if format == "saelens":
            hook_name = hooknames.module_to_tl(point, family) or src.hook
        else:
            hook_name = hooknames.module_to_base_relative(src.hook, family)
    export_sae(run.sae.eval(), format, out, hook=hook_name, model=model_name)
    return {"out": str(out), "format": format, "arch": run.sae.cfg.arch, "hook": hook_name, "model": model_name}
