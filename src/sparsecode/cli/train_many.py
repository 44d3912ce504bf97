"""`sparsecode train` with several hooks and/or dictionary configs: one run folder each, trained from one pass.

``--hook A B --k 16 32`` gives the product (4 runs), each in ``--out``/<what varies>, e.g. ``runs/sweep/A-k16``.
A sweep file (``--sweep FILE``, JSON ``{"runs": [...]}``) names the runs one by one instead: each entry gives the ``hook`` (and
``hook_side``, ``target_hook``, ``target_hook_side``), the dictionary (``arch``, ``latents`` and any dictionary
option by its config name, e.g. ``k``, ``l1``, ``budgets``) and optionally ``out``; what an entry leaves out comes
from the command line.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .options import ConfigFlag

SOURCE_MANY = ("hook",)
"""Source fields that take several values (one run per value)."""
ENTRY_SOURCE_FIELDS = ("hook", "hook_side", "target_hook", "target_hook_side")
"""What a sweep file entry may set of the source."""


def _many_flags(args: argparse.Namespace) -> list[ConfigFlag | str]:
    """The flags that take several values: the hook, --latents and every dictionary option that is not yes/no."""
    sae = [f for f in args.sae_flags if isinstance(getattr(args, f.dest), list) and not _is_list_field(f)]
    return [*SOURCE_MANY, "latents", *sae]


def _is_list_field(flag: ConfigFlag) -> bool:
    """Whether the dictionary field's single value is itself a list (--budgets 16,32 64,128 is two runs)."""
    field = next(f for f in fields(flag.owners[0]) if f.name == flag.field)
    return str(field.type).replace(" ", "").startswith("list[")


def _dest(flag: ConfigFlag | str) -> str:
    return flag if isinstance(flag, str) else flag.dest


def _label(flag: ConfigFlag | str, value: Any) -> str:
    if flag == "hook":
        return str(value)
    name = _dest(flag)
    shown = (
        ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else value
    )
    return f"{name.replace('_', '-')}{shown}"


def expand(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """The runs the command line asks for: (folder name, arguments with one value per option). One run: its
    name is ""; several: named after the values that vary between them."""
    dests = [_dest(f) for f in _many_flags(args)] + [f.dest for f in args.sae_flags if _is_list_field(f)]
    flags = {d: f for f in _many_flags(args) for d in [_dest(f)]}
    flags.update({f.dest: f for f in args.sae_flags if _is_list_field(f)})
    given = {d: getattr(args, d) for d in dests if getattr(args, d) is not None}
    varying = [d for d, values in given.items() if len(values) > 1]
    runs = []
    for combo in itertools.product(*given.values()):
        one = copy.copy(args)
        for d, value in zip(given, combo):
            setattr(one, d, value)
        name = "-".join(_label(flags[d], getattr(one, d)) for d in varying)
        runs.append((name, one))
    return runs


def sweep_entries(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """The runs of ``--sweep FILE``: each entry over the command line's values."""
    from ..io import read_json

    where = args.sweep
    raw = read_json(where).get("runs")
    if not isinstance(raw, list) or not raw or not all(isinstance(e, dict) for e in raw):
        raise ConfigError(
            f'{where}: expected {{"runs": [...]}}, a list of runs such as {{"hook": "model.layers.4", "k": 32}}'
        )
    by_field = {f.field: f for f in args.sae_flags}
    known = set(ENTRY_SOURCE_FIELDS) | set(by_field) | {"arch", "latents", "out", "d_in"}
    runs = []
    for i, entry in enumerate(raw):
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(
                f"{where}: run {i + 1} has unknown key {unknown[0]!r}; use {', '.join(sorted(known - {'d_in'}))}"
            )
        one = copy.copy(args)
        for key, value in entry.items():
            if key == "out":
                continue
            dest = by_field[key].dest if key in by_field else key
            setattr(one, dest, value)
        one.sweep_entry = (i + 1, entry)
        runs.append((str(entry.get("out") or f"run{i + 1}"), one))
    names = [n for n, _ in runs]
    if len(set(names)) < len(names):
        raise ConfigError(f"{where}: two runs write to the same folder; give each entry its own 'out'")
    return runs


def check_width(args: argparse.Namespace, d_in: int) -> None:
    """A sweep entry that fixes ``d_in`` must match its hook's width (the command line always takes it from the
    hook)."""
    entry = getattr(args, "sweep_entry", None)
    if entry is None or "d_in" not in entry[1]:
        return
    i, values = entry
    if values["d_in"] != d_in:
        raise ConfigError(
            f"{args.sweep}: run {i} has d_in {values['d_in']} but hook {args.hook} gives rows of width {d_in}; "
            f"drop d_in (it comes from the hook) or pick the hook of that width"
        )


def folders(out: Path, runs: list[tuple[str, argparse.Namespace]]) -> list[Path]:
    """Each run's folder: ``--out`` alone for one run, ``--out``/name for several (a sweep file's ``out`` is
    taken as given when absolute)."""
    if len(runs) == 1 and not runs[0][0]:
        return [out]
    return [Path(name) if Path(name).is_absolute() else out / name for name, _ in runs]


def resumable_runs(out: Path) -> list[Path]:
    """The run folders of a several-run ``--out`` (its subfolders with a config.json), for ``--resume``."""
    from ..layout import CONFIG_FILE

    if (out / CONFIG_FILE).is_file() or not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if (p / CONFIG_FILE).is_file())


def _check_new_folder(args: argparse.Namespace, out: Path) -> None:
    from .train import _holds_progress

    if _holds_progress(out) and not args.overwrite:
        raise ConfigError(
            f"{out} already holds a run; continue the runs with --resume, replace them with --overwrite, or choose "
            f"another --out"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")


def train_many(args: argparse.Namespace, out: Path, runs: list[tuple[str, argparse.Namespace]], overrides: dict) -> int:
    """Train the runs of ``runs`` together (one pass over the model for those on the same model and corpus)."""
    from ..run import RunConfig
    from ..train import TrainConfig, Trainer
    from .train import _sae_config, _source_config

    if args.config:
        raise ConfigError("--config is one run; for several, list them in a --sweep file")
    if args.nproc > 1:
        raise ConfigError("--nproc trains one run on several processes; train several runs without it")
    if args.sweep:
        several = [f"--{d.replace('_', '-')}" for d in vars(args) if _is_many(args, d)]
        if several:
            raise ConfigError(f"with --sweep the file lists the runs: give {several[0]} one value (or set it there)")
    dirs = folders(out, runs)
    for d in dirs:
        _check_new_folder(args, d)
    source_configs = [_source_config(a) for _, a in runs]
    sources, finished = open_sources_for(args, source_configs)
    configs = []
    for (_, a), source, source_config in zip(runs, sources, source_configs):
        check_width(a, source.d_in)
        sae = _sae_config(a, source.d_in, source.d_out)
        configs.append(RunConfig(source=source_config, sae=sae, train=TrainConfig(**overrides)))
    trainers = [Trainer(c, d, s, progress=not args.quiet) for c, d, s in zip(configs, dirs, sources)]
    return _fit(args, trainers, dirs, [False] * len(dirs), finished, replace=args.overwrite)


def _is_many(args: argparse.Namespace, dest: str) -> bool:
    many = {_dest(f) for f in _many_flags(args)}
    value = getattr(args, dest)
    return dest in many and isinstance(value, list) and len(value) > 1


def unwrap(args: argparse.Namespace) -> None:
    """Options that take several values, given one each, as plain values (a sweep file's command line)."""
    for d in {_dest(f) for f in _many_flags(args)}:
        value = getattr(args, d)
        if isinstance(value, list) and len(value) == 1:
            setattr(args, d, value[0])


def resume_many(args: argparse.Namespace, dirs: list[Path], overrides: dict) -> int:
    """Continue the runs in ``dirs`` together; finished ones are left alone (unless --tokens extends them)."""
    from ..layout import SAE_FILE
    from ..train import Trainer
    from .train import _holds_progress, _resumed_config

    if args.nproc > 1:
        raise ConfigError("--nproc trains one run on several processes; resume several runs without it")
    todo = [d for d in dirs if not (d / SAE_FILE).is_file() or "tokens" in overrides]
    if not todo:
        raise ConfigError(f"every run in {args.out} has finished; to train them further, resume with a larger --tokens")
    configs, resumes = [], []
    for d in todo:
        config = _resumed_config(args, d, overrides)
        resumes.append(_holds_progress(d))
        if not resumes[-1]:  # killed before its first checkpoint: starts again
            config.input_scale = config.target_scale = None
        configs.append(config)
    sources, finished = open_sources_for(args, [c.source for c in configs])
    trainers = [Trainer(c, d, s, progress=not args.quiet) for c, d, s in zip(configs, todo, sources)]
    return _fit(args, trainers, todo, resumes, finished, replace=False)


def open_sources_for(args: argparse.Namespace, source_configs: list) -> tuple[list, list]:
    from ..train.together import open_sources
    from .train import _cache_dir

    return open_sources(source_configs, _cache_dir(args), progress=not args.quiet)


def _fit(args, trainers, dirs: list[Path], resumes: list[bool], finished, replace: bool) -> int:
    from contextlib import ExitStack

    from ..run import run_folder
    from ..train.together import fit_together
    from .train import print_summary

    for t, d in zip(trainers, dirs):
        t.label = d.name
    with ExitStack() as stack:
        for d in dirs:
            stack.enter_context(run_folder(d, replace=replace))
        fit_together(trainers, resume=resumes, finished=finished)
    for d in dirs:
        print_summary(d)
    return 0
