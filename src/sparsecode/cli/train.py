"""train an SAE on activations from a model, an array file, synthetic data, image patches or an image model
Train a sparse autoencoder. Pick one source: a transformers model at a hook (--hook, with --model and
--corpus defaulting to the embedded MiniLM and CPython docs), an array file (--activations), synthetic data
(--synthetic), patches of images (--images: a folder, "skimage" for scikit-image's photographs, or "noise") or
an image model over views of those images (--images with --model and --hook: its tokens' activations).

The dictionary and training options are the fields of the config dataclasses (sae/*.py, train/config.py),
described by their docstrings; a dictionary option names the architectures that have it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import ConfigFlag, add_config_flags, given, parse_count

EXAMPLES = """examples:
  sparsecode train --hook encoder.layer.3 --arch topk --k 32 --latents 6144 --tokens 2M --out runs/minilm-l3
  sparsecode train --model PATH_OR_NAME --hook encoder.layer.3 --corpus texts/ --out runs/l3
  sparsecode train --activations recordings.npy --arch relu --l1 5 --latents 4096 --out runs/rec
  sparsecode train --synthetic features=512,dim=64,active=5 --arch topk --k 5 --latents 512 --out runs/toy
  sparsecode train --images skimage --patch 12 --latents 256 --k 8 --out runs/v1     # whitened natural patches
  sparsecode train --images photos/ --model PATH_OR_NAME --hook encoder.layer.3 --out runs/vit3   # an image model
  sparsecode train --hook encoder.layer.3 --arch batchtopk --k 32 --out runs/btk
  sparsecode train --hook encoder.layer.3 --arch jumprelu --target-l0 32 --out runs/jr
  sparsecode train --hook encoder.layer.3 --arch multibudget --budgets 16,32,64,128 --out runs/mb
  sparsecode train --hook encoder.layer.2 encoder.layer.4 --k 16 32 --out runs/sweep   # 4 runs, one model pass
  sparsecode train --sweep sweep.json --out runs/sweep        # the runs listed in a file, one model pass
  sparsecode train --hook encoder.layer.3.intermediate --hook-side input --target-hook encoder.layer.3.output.dense \\
      --arch transcoder --k 32 --skip --out runs/tc3     # MLP input -> MLP output of block 3
  sparsecode train --resume --out runs/minilm-l3
  sparsecode train --activations acts.npy --latents 6144 --nproc 2 --out runs/ddp     # data-parallel, 2 processes
  torchrun --nnodes 2 --nproc-per-node 4 ... -m sparsecode train ... --device cuda   # several machines
"""

DEFAULT_ARCH = "topk"
SOURCE_NAMES = {"model": "text model", "images": "image patches", "vision": "image model"}
"""How a source option's help names the sources that have it."""
SAE_SET_HERE = ("d_in", "n_latents", "d_out", "seed")
"""Dictionary fields the command fills itself: widths from the source, --latents, and --seed (shared with train)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..sae import ARCHITECTURES
    from ..sources import ArraySourceConfig, ImageSourceConfig, ModelSourceConfig, VisionSourceConfig
    from ..train import TrainConfig

    src = p.add_argument_group("source (choose one)")
    fields = (
        "model",
        "hook",
        "hook_side",
        "corpus",
        "text_column",
        "max_length",
        "exclude_first_positions",
        "target_hook",
        "target_hook_side",
        "dtype",
        "images",
        "patch",
        "n_patches",
        "whiten",
        "zca_epsilon",
        "views",
        "crop",
        "image_size",
        "keep_cls",
    )
    flags = add_config_flags(
        src,
        [ModelSourceConfig, ImageSourceConfig, VisionSourceConfig],
        only=fields,
        many=("hook",),
        rename={"dtype": "model_dtype"},
        owner_name=lambda c: SOURCE_NAMES[c.kind],
    )
    flags += add_config_flags(src, [ArraySourceConfig], only=("path", "key"), rename={"path": "activations"})
    src.add_argument(
        "--synthetic",
        metavar="SPEC",
        help="synthetic data with known features, e.g. "
        "features=512,dim=64,active=5[,magnitude=exponential,correlation=0.1,noise=0.01,seed=0]",
    )
    p.set_defaults(source_flags=flags)

    d = p.add_argument_group("dictionary (an option's [arch, ...] lists the architectures that have it)")
    d.add_argument("--arch", help=f"architecture: {', '.join(ARCHITECTURES)} (default {DEFAULT_ARCH})")
    d.add_argument(
        "--latents", type=parse_count, nargs="+", metavar="N", help="dictionary size (default 16 × input width)"
    )
    archs = [cls.config_class for cls in ARCHITECTURES.values()]
    sae_flags = add_config_flags(d, archs, skip=SAE_SET_HERE, owner_name=lambda c: c.arch, many=True)
    d.add_argument(
        "--sweep",
        metavar="FILE",
        help='several runs from one pass, listed in a JSON file: {"runs": [{"hook": "model.layers.4", "k": 32, '
        '"out": "l4-k32"}, ...]}, each naming its hook and dictionary options; see docs/sweeps.md',
    )
    p.set_defaults(sae_flags=sae_flags)

    tr = p.add_argument_group("training")
    p.set_defaults(train_flags=add_config_flags(tr, [TrainConfig]))
    tr.add_argument(
        "--nproc",
        type=parse_count,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (torch.distributed: gloo on CPU, NCCL on CUDA, one GPU "
        "each); the global batch is split between them. Under torchrun the group comes from its environment "
        "instead. A checkpoint resumes with any N",
    )
    tr.add_argument(
        "--config",
        metavar="FILE",
        help="a run config JSON (as written to RUN/config.json); training flags given too override its train section",
    )

    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or continue, with --resume)")
    o.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    o.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="activation cache for model sources (default $SPARSECODE_CACHE or ~/.cache/sparsecode/activations)",
    )
    o.add_argument("--no-cache", action="store_true", help="do not cache model activations on disk")
    o.add_argument("--quiet", action="store_true", help="no progress bars")


def _flag_names(args: argparse.Namespace, flags: list[ConfigFlag]) -> list[str]:
    return [f.flag for f in flags if getattr(args, f.dest) is not None]


def _source_config(args: argparse.Namespace):
    from ..sources import (
        ArraySourceConfig,
        ImageSourceConfig,
        ModelSourceConfig,
        VisionSourceConfig,
        parse_synthetic_spec,
    )
    from .train_many import unwrap

    unwrap(args)  # options that take several values, given one each

    if args.target_hook and (args.activations or args.synthetic or args.images):
        raise ConfigError("--target-hook needs a text model source (--hook with --corpus)")
    vision = bool(args.images and (args.hook or args.model))  # an image model over the images
    chosen = [
        flag
        for flag, on in (
            ("--hook", (args.hook or args.model or args.corpus) and not vision),
            ("--activations", args.activations),
            ("--synthetic", args.synthetic),
            ("--images", args.images and not vision),
            ("--images with --model/--hook", vision),
        )
        if on
    ]
    if len(chosen) != 1:
        raise ConfigError(
            "choose exactly one source: --hook (a model, with optional --model/--corpus), "
            "--activations FILE, --synthetic SPEC, --images FOLDER (patches) or --images FOLDER --model M --hook H "
            "(an image model)" + (f"; got {', '.join(chosen)}" if chosen else "")
        )
    image_only = [f.flag for f in args.source_flags if f.owners == (ImageSourceConfig,)]
    stray = [flag for flag in image_only if getattr(args, flag[2:].replace("-", "_")) is not None]
    if stray and not args.images:
        raise ConfigError(f"{', '.join(stray)} applies to an image source: add --images FOLDER (or skimage / noise)")
    owner = VisionSourceConfig if vision else ImageSourceConfig if args.images else ModelSourceConfig
    if not (args.activations or args.synthetic):
        _check_owned(args, owner)
    if vision:
        if not args.hook or not args.model:
            raise ConfigError("an image model source needs --model (a transformers image model) and --hook")
        kw = given(args, args.source_flags, VisionSourceConfig)
        if args.device:
            kw["device"] = args.device
        return VisionSourceConfig(**kw)
    if args.images:
        return ImageSourceConfig(**given(args, args.source_flags, ImageSourceConfig))
    if args.activations:
        return ArraySourceConfig(**given(args, args.source_flags, ArraySourceConfig))
    if args.synthetic:
        return parse_synthetic_spec(args.synthetic)
    if not args.hook:
        raise ConfigError("--hook is required with a model source, e.g. --hook encoder.layer.3")
    if args.target_hook_side and not args.target_hook:
        raise ConfigError("--target-hook-side needs --target-hook")
    kw = given(args, args.source_flags, ModelSourceConfig)
    if args.device:
        kw["device"] = args.device
    return ModelSourceConfig(**kw)


def _check_owned(args: argparse.Namespace, owner: type) -> None:
    """A one-line ConfigError for source flags given that the chosen source (``owner``) does not have."""
    stray = [f for f in args.source_flags if getattr(args, f.dest) is not None and owner not in f.owners]
    if stray:
        names = " / ".join(SOURCE_NAMES[o.kind] for o in stray[0].owners)
        hint = "; an image model is --images FOLDER --model M --hook H" if names == SOURCE_NAMES["vision"] else ""
        raise ConfigError(
            f"{', '.join(f.flag for f in stray)} applies to {names} sources, not to {SOURCE_NAMES[owner.kind]}{hint}"
        )


def _sae_config(args: argparse.Namespace, d_in: int, d_out: int | None = None):
    from ..sae import ARCHITECTURES
    from .train_many import unwrap

    unwrap(args)  # options that take several values, given one each

    arch = args.arch or DEFAULT_ARCH
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    config_class = ARCHITECTURES[arch].config_class
    for f in args.sae_flags:  # which architecture takes which option: whichever config has that field
        if getattr(args, f.dest) is not None and config_class not in f.owners:
            raise ConfigError(f"{f.flag} applies to --arch {' / '.join(c.arch for c in f.owners)}, not {arch}")
    kw = {"d_in": d_in, "n_latents": args.latents or 16 * d_in, **given(args, args.sae_flags)}
    if d_out is not None:
        if arch != "transcoder":
            raise ConfigError(f"--target-hook gives paired targets: use --arch transcoder, not {arch}")
        kw["d_out"] = d_out
    if args.seed is not None:
        kw["seed"] = args.seed
    return config_class(**kw)


def _cache_dir(args: argparse.Namespace) -> str | None:
    from ..activations import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def _open(source_config, args: argparse.Namespace):
    from ..train.trainer import open_training_source

    return open_training_source(source_config, _cache_dir(args), progress=not args.quiet)


def _resumed_config(args: argparse.Namespace, out: Path, train_overrides: dict):
    from ..run import CONFIG_FILE, RunConfig

    clash = _flag_names(args, args.source_flags + args.sae_flags) + _cli_only_given(args)
    if clash:
        raise ConfigError(f"--resume continues the run as saved in {out / CONFIG_FILE}; drop {', '.join(clash)}")
    config = RunConfig.load(out)
    bad = sorted(set(train_overrides) - {"device", "tokens", "log"})
    if bad:
        raise ConfigError(
            f"--resume keeps the saved training settings; only --device, --log and --tokens (to extend the run) may "
            f"change (drop --{bad[0].replace('_', '-')})"
        )
    if "tokens" in train_overrides:
        config.train = _extended(config.train, train_overrides["tokens"], out)
    if "log" in train_overrides:
        config.train.log = train_overrides["log"]
    if "device" in train_overrides:
        config.train.device = train_overrides["device"]
        if config.source.has_device:
            config.source.device = train_overrides["device"]
    return config


def _extended(train, tokens: int, out: Path):
    """The saved training settings with a larger token budget (the learning-rate schedule is a function of the
    budget: it is stretched to the new one from the step the run has reached)."""
    from ..train import TrainConfig

    if tokens < train.tokens:
        raise ConfigError(
            f"--resume --tokens {tokens:,} is below the run's budget of {train.tokens:,} tokens; a run can be "
            f"extended, not shortened (to stop early, Ctrl-C and use the checkpoint in {out})"
        )
    return TrainConfig.from_dict({**train.to_dict(), "tokens": tokens})


def _cli_only_given(args: argparse.Namespace, names=("synthetic", "arch", "latents", "config", "sweep")) -> list[str]:
    """Source and dictionary flags given that are not config fields."""
    return ["--" + n for n in names if getattr(args, n) is not None]


def _holds_progress(out: Path) -> bool:
    """Whether ``out`` holds a run worth keeping: a checkpoint or a trained SAE. A run killed before its first
    checkpoint (config.json alone) holds nothing to continue, so the same command starts it again."""
    from ..layout import CHECKPOINT_FILE, SAE_FILE

    return (out / CHECKPOINT_FILE).exists() or (out / SAE_FILE).exists()


def _new_config(args: argparse.Namespace, out: Path, train_overrides: dict):
    from ..io import read_json
    from ..run import RunConfig
    from ..train import TrainConfig

    if _holds_progress(out) and not args.overwrite:
        raise ConfigError(
            f"{out} already holds a run; continue it with --resume, replace it with --overwrite, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if args.config:
        clash = _flag_names(args, args.source_flags + args.sae_flags) + _cli_only_given(
            args, ("synthetic", "arch", "latents")
        )
        if clash:
            raise ConfigError(f"--config sets the source and the dictionary; drop {', '.join(clash)}")
        raw = read_json(args.config)
        raw.setdefault("train", {})
        if isinstance(raw["train"], dict):
            raw["train"].update(train_overrides)
        config = RunConfig.from_dict(raw, where=args.config)
        config.input_scale = config.target_scale = None
        return config, None
    source_config = _source_config(args)
    source = _open(source_config, args)
    sae = _sae_config(args, source.d_in, source.d_out)
    return RunConfig(source=source_config, sae=sae, train=TrainConfig(**train_overrides)), source


def run(args: argparse.Namespace) -> int:
    from ..run import run_folder
    from ..train import Trainer
    from ..train.distributed import init_from_environment, launch
    from ..train.trainer import fit_worker

    if args.nproc > 1 and "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts its own processes; under torchrun leave it out")
    torchrun = init_from_environment(args.device or "cpu")  # launched by torchrun: one rank of its group
    out = Path(args.out)
    train_overrides = given(args, args.train_flags)
    several = _several_runs(args, out, train_overrides, torchrun)
    if several is not None:
        return several
    if args.resume:
        config, source = _resumed_config(args, out, train_overrides), None
        if not _holds_progress(out):  # killed before its first checkpoint: start the saved run from the beginning
            args.resume = False
            config.input_scale = config.target_scale = None
    else:
        config, source = _new_config(args, out, train_overrides)
    worker_args = (config, out, args.resume, None, not args.quiet, _cache_dir(args))

    if torchrun:  # every rank has checked the arguments before any of them writes
        import torch.distributed as dist

        dist.barrier()
        fit_worker(*worker_args)
        if dist.get_rank() == 0:
            print_summary(out)
        return 0
    if args.nproc == 1:
        trainer = Trainer(config, out, source or _open(config.source, args), progress=not args.quiet)
    elif config.train.batch_size % args.nproc:
        raise ConfigError(f"--nproc {args.nproc} must divide the batch size ({config.train.batch_size})")
    elif source is None:
        _open(config.source, args)  # check the source before starting processes
    with run_folder(out, replace=args.overwrite and not args.resume):
        if args.nproc == 1:
            trainer.fit(resume=args.resume)
        else:
            launch(args.nproc, config.train.device, fit_worker, *worker_args)
    print_summary(out)
    return 0


def _several_runs(args: argparse.Namespace, out: Path, overrides: dict, torchrun: bool) -> int | None:
    """Train (or resume) the runs when the command line asks for several; None when it asks for one (then
    ``args`` holds one value per option)."""
    from . import train_many

    if args.resume:
        dirs = train_many.resumable_runs(out)
        if not dirs:
            train_many.unwrap(args)
            return None
        runs = None
    else:
        if args.sweep:
            train_many.unwrap(args)
        runs = train_many.sweep_entries(args) if args.sweep else train_many.expand(args)
        if len(runs) == 1 and not args.sweep:
            vars(args).update(vars(runs[0][1]))
            return None
    if torchrun:
        raise ConfigError("under torchrun, train one run at a time")
    return (
        train_many.resume_many(args, dirs, overrides)
        if runs is None
        else train_many.train_many(args, out, runs, overrides)
    )


def print_summary(out: Path) -> None:
    import json

    from ..layout import METRICS_FILE

    lines = [line for line in (out / METRICS_FILE).read_text().splitlines() if line.strip()]
    print(format_summary(out, json.loads(lines[-1]) if lines else {}))
    from ..train.trainer import missed_l0_target

    missed = missed_l0_target(out)
    if missed:
        print(f"warning: {missed}", file=sys.stderr)


def format_summary(out: Path | str, last: dict) -> str:
    """What `train` prints at the end, from the last line of the run's metrics.jsonl."""
    return (
        f"trained {out}: {last.get('tokens', 0):,} tokens, final batch FVU {last.get('fvu', float('nan')):.4f}, "
        f"L0 {last.get('l0', float('nan')):.1f}\n"
        f"  wrote {out}/sae.safetensors, config.json, metrics.jsonl, training.png\n"
        f"  next: sparsecode eval {out}"
    )
