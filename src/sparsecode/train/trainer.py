"""The training loop: Adam with warmup and decay, checkpoints that resume bit-exactly, metrics, plots.

Exact resume holds because every piece of state is saved or derivable: the SAE weights and Adam
moments (checkpoint), the data position (the store's batch count), the dead-latent counters, and the
schedule (a pure function of the step). Training runs in the *normalised* space (inputs times
``input_scale``); the saved ``sae.safetensors`` has that scale folded back in.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..activations import ActivationStore, split_targets
from ..device import check_device
from ..errors import DataError, Interrupted, SparsecodeError
from ..io import atomic_write, load_tensors, read_metadata, save_tensors
from ..layout import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SAE_FILE, TRAINING_PLOT
from ..sae import SparseAutoencoder, build_sae, restore_state
from ..sources.base import Source
from .distributed import DataParallel
from .memory import keep_freed_memory
from .optim import Adam
from .plots import plot_training_curves
from .trackers import open_tracker

if TYPE_CHECKING:
    from ..run import RunConfig


class Trainer:
    """Trains ``config.sae`` on ``source`` into ``run_dir``. Call ``fit()``."""

    def __init__(self, config: RunConfig, run_dir: str | Path, source: Source, progress: bool = True) -> None:
        if source.d_in != config.sae.d_in:
            raise DataError(f"the source yields rows of width {source.d_in} but sae.d_in is {config.sae.d_in}")
        d_target = source.d_out
        if d_target is not None and getattr(config.sae, "d_out", None) != d_target:
            raise DataError(
                f"the source yields paired targets of width {d_target}: train a transcoder "
                f"(sae.arch 'transcoder' with d_out={d_target})"
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.source = source
        self.progress = progress
        self.label = "train"
        """The progress bar's name (each run's folder name when several train together)."""
        self.device = check_device(config.train.device)
        self._stop_requested = False
        self.group = DataParallel()  # this process's place among data-parallel processes (alone: rank 0 of 1)
        self.local_rows = self.group.local_rows(config.train.batch_size)
        if not self.group.is_main:
            self.progress = False

    # -- public ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_at_step: int | None = None) -> SparseAutoencoder:
        """Train to the token budget (or, for tests and interruptions, until ``stop_at_step``).

        Returns the SAE acting on raw activations once finished. When stopped early by ``stop_at_step``
        (as a crash would), the training-space SAE is returned and ``fit(resume=True)`` continues from the
        last periodic checkpoint, if one was written.
        """
        steps = self.steps(resume, stop_at_step)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def steps(
        self, resume: bool = False, stop_at_step: int | None = None, handle_sigint: bool = True
    ) -> Generator[int, None, SparseAutoencoder]:
        """``fit`` one optimizer step at a time: yields the tokens trained on so far after every step and returns
        what ``fit`` returns. Several trainers fed by one shared pass advance together this way
        (``train.together``, which then handles Ctrl-C for all of them: ``handle_sigint=False``)."""
        tc = self.config.train
        keep_freed_memory()
        if resume:
            sae, optimizer, tokens_since_fired, step, store = self._load_checkpoint()
        else:
            sae, optimizer, tokens_since_fired, step, store = self._start_fresh()
        if note := (self.group.is_main and epochs_note(store.rows_per_epoch, tc.tokens)):
            print(note, file=sys.stderr)
        scale = float(self.config.input_scale or 1.0)
        target_scale = float(self.config.target_scale or 1.0)
        total = tc.total_steps
        end = total if stop_at_step is None else min(stop_at_step, total)
        peak_lr = tc.learning_rate(self.config.sae.n_latents, self.config.sae.base_lr)
        sae.train()

        group = self.group
        autocast = torch.autocast(self.device.type, dtype=getattr(torch, tc.dtype), enabled=tc.dtype != "float32")
        bar = tqdm(
            total=total * tc.batch_size,
            initial=step * tc.batch_size,
            unit="tok",
            unit_scale=True,
            desc=self.label,
            disable=not self.progress,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        tracker = open_tracker(tc.log, self.run_dir, self.config.to_dict(), resume) if group.is_main else None
        previous_handler = self._install_sigint_handler() if handle_sigint else None
        t_last, tokens_last = time.perf_counter(), step * tc.batch_size
        try:
            while step < end and not self._stop_requested:
                x, target = split_targets(
                    next(store)[self.local_rows].to(self.device, non_blocking=True), self.config.sae.d_in
                )
                x = x * scale  # (batch / procs, d_in)
                targets = {} if target is None else {"target": target * target_scale}  # (batch / procs, d_out)
                dead_mask = tokens_since_fired >= tc.dead_tokens  # (n_latents,)
                for param_group in optimizer.param_groups:
                    param_group["lr"] = peak_lr * param_group["lr_multiplier"] * tc.lr_factor(step)
                with autocast:
                    out = sae.training_output(x, dead_mask=dead_mask, progress=step / total, **targets)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                group.average_gradients(sae.parameters())
                optimizer.step()  # also keeps the decoder rows at unit norm (``unit_rows``)
                fired, self._stop_requested = group.fired_and_stop(out.fired, self._stop_requested)
                tokens_since_fired += tc.batch_size
                tokens_since_fired[fired] = 0
                step += 1
                bar.update(tc.batch_size)

                if step % tc.log_every == 0 or step == total:
                    scalars = group.mean({"loss": out.loss.item(), **{k: v.item() for k, v in out.metrics.items()}})
                    loss = scalars["loss"]
                    if not math.isfinite(loss):
                        raise SparsecodeError(
                            f"training diverged at step {step} (loss is {loss}); "
                            f"lower the learning rate (--lr) or check the inputs"
                        )
                    now = time.perf_counter()
                    row = {
                        "step": step,
                        "tokens": step * tc.batch_size,
                        "lr": optimizer.param_groups[0]["lr"],
                        **scalars,
                        "dead_fraction": dead_mask.float().mean().item(),
                        "tokens_per_s": (step * tc.batch_size - tokens_last) / max(now - t_last, 1e-9),
                    }
                    t_last, tokens_last = now, step * tc.batch_size
                    if group.is_main:
                        self._append_metrics(row)
                        if tracker is not None:
                            tracker.log(row, step)
                    bar.set_postfix(l0=f"{row['l0']:.1f}", fvu=f"{row['fvu']:.3f}", refresh=False)
                if (step % tc.checkpoint_every == 0 or step == total) and group.is_main:
                    self._save_checkpoint(sae, optimizer, tokens_since_fired, step, store)
                yield step * tc.batch_size
        finally:
            bar.close()
            self._restore_sigint_handler(previous_handler)
            if tracker is not None:
                tracker.close()

        if self._stop_requested and step < total:
            if group.is_main:
                self._save_checkpoint(sae, optimizer, tokens_since_fired, step, store)
            group.barrier()
            raise Interrupted(
                f"interrupted at step {step}/{total}; checkpoint saved — continue with "
                f"`sparsecode train --resume --out {self.run_dir}`"
            )
        if step < total:
            return sae
        with _sigint_deferred():
            return self._finish(sae)

    # -- setup ----------------------------------------------------------------------------------
    def _make_store(self, batches_emitted: int, *, all_shards: bool = False) -> ActivationStore:
        """The training stream; this process's own shards only, where the process count divides them (then
        ``local_rows`` is everything the store yields)."""
        tc = self.config.train
        shards, group = tc.data_shards or 1, self.group
        own = None
        if not all_shards and shards % group.world_size == 0:
            per = shards // group.world_size
            own = range(group.rank * per, (group.rank + 1) * per)
            self.local_rows = slice(None)
        elif not all_shards:
            self.local_rows = group.local_rows(tc.batch_size)
        return ActivationStore(
            self.source,
            batch_size=tc.batch_size,
            buffer_rows=tc.buffer_rows,
            seed=tc.seed,
            split="train",
            batches_emitted=batches_emitted,
            shards=shards,
            own=own,
        )

    def _optimizer(self, sae: SparseAutoencoder) -> Adam:
        tc = self.config.train
        # fused: one kernel over all parameters instead of a dozen elementwise passes
        lr = tc.learning_rate(self.config.sae.n_latents, self.config.sae.base_lr)
        multipliers = sae.lr_multipliers()
        named = list(sae.named_parameters())
        groups = [{"params": [p for n, p in named if n not in multipliers], "lr_multiplier": 1.0}]
        groups += [
            {"params": [p], "lr": lr * multipliers[n], "lr_multiplier": multipliers[n]}
            for n, p in named
            if n in multipliers
        ]
        return Adam(groups, lr=lr, betas=(tc.beta1, tc.beta2), fused=True, unit_rows=sae.unit_norm_rows())

    def _start_fresh(self):
        tc = self.config.train
        if tc.data_shards is None:
            tc.data_shards = self.group.world_size
        store = self._make_store(0)
        # every process estimates the scales from the same global rows, whatever shards it reads (a process
        # that reads them all peeks at its own store: the first fill is loaded once)
        everything = store if len(store.own) == store.shards else self._make_store(0, all_shards=True)
        rows = everything.peek(min(tc.init_rows, everything.buffer_rows))  # (init_rows, d_in [+ d_out])
        del everything
        if not torch.isfinite(rows).all():
            raise DataError("the source's activations contain NaN or inf values; fix or filter the input data")
        sample, target_sample = split_targets(rows, self.config.sae.d_in)
        self.config.input_scale = _normalizing_scale(sample, "activations") if tc.normalize_inputs else 1.0
        if target_sample is not None:
            self.config.target_scale = _normalizing_scale(target_sample, "targets") if tc.normalize_inputs else 1.0
        if self.group.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.config.save(self.run_dir)
            except OSError as e:
                raise DataError(f"cannot write the run folder {self.run_dir}: {e.strerror or e}") from None
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)

        sae = build_sae(self.config.sae).to(self.device)
        sae.initialize_from_data(
            sample.to(self.device) * self.config.input_scale,
            None if target_sample is None else target_sample.to(self.device) * self.config.target_scale,
        )
        tokens_since_fired = torch.zeros(self.config.sae.n_latents, dtype=torch.long, device=self.device)
        return sae, self._optimizer(sae), tokens_since_fired, 0, store

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, sae, optimizer, tokens_since_fired, step: int, store: ActivationStore) -> None:
        tensors = {f"sae.{k}": v for k, v in sae.state_dict().items()}
        opt_state = optimizer.state_dict()
        for idx, state in opt_state["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["tokens_since_fired"] = tokens_since_fired
        meta = {
            "format": "sparsecode-checkpoint",
            "step": str(step),
            "store": json.dumps(store.state()),
            "config": json.dumps(self.config.to_dict()),
        }
        save_tensors(self.run_dir / CHECKPOINT_FILE, tensors, metadata=meta)

    def _load_checkpoint(self):
        path = self.run_dir / CHECKPOINT_FILE
        if not path.is_file():
            raise DataError(f"nothing to resume: {path} not found")
        meta = read_metadata(path)
        if meta.get("format") != "sparsecode-checkpoint":
            raise DataError(f"{path}: not a sparsecode checkpoint")
        tensors = load_tensors(path, device=self.device)
        step = int(meta["step"])
        total = self.config.train.total_steps
        finished = all((self.run_dir / name).is_file() for name in (SAE_FILE, TRAINING_PLOT))
        if step >= total and finished:
            raise SparsecodeError(
                f"{self.run_dir} already finished all {step} steps; to train it further, resume with a larger "
                f"--tokens (now {self.config.train.tokens:,})"
            )
        if step < total and self.group.is_main:
            # continuing (or extending a finished run to more tokens): the old outputs no longer describe the run,
            # and config.json records the budget now aimed at
            for name in (SAE_FILE, TRAINING_PLOT):
                (self.run_dir / name).unlink(missing_ok=True)
            self.config.save(self.run_dir)
        sae = build_sae(self.config.sae).to(self.device)
        restore_state(sae, {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, str(path))
        optimizer = self._optimizer(sae)
        opt_state = optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state["state"].setdefault(int(idx), {})[name] = value.cpu() if name == "step" else value
        optimizer.load_state_dict(opt_state)
        if self.config.train.data_shards is None:
            self.config.train.data_shards = 1  # runs from before data shards read one stream
        store = self._make_store(json.loads(meta["store"])["batches_emitted"])
        if self.group.is_main:
            self._truncate_metrics(step)
        return sae, optimizer, tensors["tokens_since_fired"].clone(), step, store

    # -- outputs --------------------------------------------------------------------------------
    def _append_metrics(self, row: dict) -> None:
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a hard kill
        atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in kept)))

    def _finish(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        sae.eval()
        sae = sae.to("cpu")
        sae.finish_training_()
        sae.fold_input_scale_(
            float(self.config.input_scale or 1.0),
            None if self.config.target_scale is None else float(self.config.target_scale),
        )
        if self.group.is_main:
            sae.save(self.run_dir / SAE_FILE)
            plot_training_curves(self.run_dir / METRICS_FILE, self.run_dir / TRAINING_PLOT)
        self.group.barrier()  # the run folder is complete when any process returns
        return sae

    # -- Ctrl-C: finish the current step, checkpoint, stop ---------------------------------------
    def _install_sigint_handler(self):
        def handler(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            return None

    def _restore_sigint_handler(self, previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_deferred():
    """Ctrl-C waits until the final save is over (a few seconds): an interrupt inside a library import there once
    surfaced as "ImportError: initialization failed" and left the run without its plot."""
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


L0_TOLERANCE = 0.1
"""How far (relative) the end-of-training L0 may sit from a target L0 before ``missed_l0_target`` reports it."""


REPEAT_WARNING_EPOCHS = 4.0
"""Training on the same rows more often than this draws a warning: the dictionary starts to learn the corpus."""


def epochs_note(rows_per_epoch: int | None, tokens: int) -> str | None:
    """What training tells about its budget against the source: the epochs it runs over the train split, and a
    warning when that repeats the split more than ``REPEAT_WARNING_EPOCHS`` times; None for unbounded sources."""
    if not rows_per_epoch:
        return None
    epochs = tokens / rows_per_epoch
    note = f"training on {tokens:,} tokens: {epochs:.2f} epochs of the train split ({rows_per_epoch:,} tokens)"
    if epochs > REPEAT_WARNING_EPOCHS:
        note += (
            f"\nwarning: the budget repeats the training data {epochs:.1f} times; the dictionary may learn this "
            "corpus rather than the layer: give a larger corpus (--corpus) or fewer --tokens"
        )
    return note


def missed_l0_target(run_dir: str | Path, tail: float = 0.05) -> str | None:
    """A one-line explanation when a run trained with a target L0 ended outside ±``L0_TOLERANCE`` of it (the
    mean logged L0 over the last ``tail`` of training), None when it reached it or had no target. The controller
    only moves the sparsity coefficient; when the thresholds or encoder stop responding, or the budget is too
    short, the L0 misses and the user should know."""
    run_dir = Path(run_dir)
    target = json.loads((run_dir / CONFIG_FILE).read_text()).get("sae", {}).get("target_l0")
    lines = [line for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    if target is None or not lines:
        return None
    rows = [json.loads(line) for line in lines]
    last = rows[-1]["step"]
    tail_rows = [r for r in rows if r["step"] >= (1 - tail) * last and "l0" in r] or rows[-1:]
    l0 = sum(r["l0"] for r in tail_rows) / len(tail_rows)
    if abs(l0 - target) <= L0_TOLERANCE * target:
        return None
    coefficient = next((k for k in ("l0_coefficient", "l1_coefficient") if k in rows[-1]), None)
    trend = "still falling" if len(rows) > 1 and rows[-1]["l0"] < rows[max(0, len(rows) - 10)]["l0"] else "settled"
    return (
        f"the training L0 ended at {l0:.1f}, not the target {target:g} (±{L0_TOLERANCE:.0%}; {trend}"
        + (f", final {coefficient} {rows[-1][coefficient]:.3g}" if coefficient else "")
        + "): train longer (--tokens) or start the coefficient nearer what the target needs"
    )


def _normalizing_scale(sample: torch.Tensor, what: str) -> float:
    """The factor s with E‖s·x‖² = width over the (n, width) ``sample``."""
    mean_sq_norm = sample.pow(2).sum(-1).mean().item()
    if mean_sq_norm <= 0:
        raise DataError(f"the source's {what} are all zero; nothing to learn")
    return math.sqrt(sample.shape[1] / mean_sq_norm)


def open_training_source(config: Any, cache_dir: str | Path | None = None, progress: bool = False) -> Source:
    """The source for ``config``, checked up front where it can be, and for model sources wrapped in the
    activation cache at ``cache_dir`` (None: no cache)."""
    from ..activations import CachedSource
    from ..sources import open_source

    source = open_source(config)
    source.validate()
    if cache_dir is not None and config.kind in ("model", "vision"):
        source = CachedSource(source, cache_dir, progress=progress)
    return source


def fit_worker(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    stop_at_step: int | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> None:
    """One data-parallel process (``sparsecode train --nproc``, torchrun, ``distributed.launch``): open the source
    from the config and train. Only rank 0 shows progress and uses the activation cache (one writer)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    source = open_training_source(config.source, cache_dir if rank == 0 else None, progress and rank == 0)
    Trainer(config, run_dir, source, progress=progress and rank == 0).fit(resume=resume, stop_at_step=stop_at_step)
