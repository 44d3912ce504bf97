"""Data-parallel training on torch.distributed: one process per device, the same weights everywhere.

Every process reads the same global batch sequence and trains on its own slice of each global batch;
after the backward pass the gradients are averaged across processes (one all-reduce of one flat buffer),
so every process takes the identical optimizer step. Losses are normalised so that this average is the
gradient of the global batch's loss (see ``sae.base.total_variance``). Which latents fired is combined
across processes, so the dead-latent counters (AuxK) agree. Only rank 0 writes files.

Launch with ``sparsecode train --nproc N`` (processes on this machine, gloo on CPU / NCCL on CUDA) or
under ``torchrun`` (the ``RANK``/``WORLD_SIZE`` environment variables are picked up), which also covers
several machines.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, SparsecodeError


class DataParallel:
    """This process's place in the group and the collectives the trainer needs (no-ops when alone)."""

    def __init__(self) -> None:
        active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if active else 0
        self.world_size = dist.get_world_size() if active else 1
        self._flat: torch.Tensor | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and the final SAE."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def local_rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size ({batch_size}) must be divisible by the number of processes ({self.world_size})"
            )
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the processes (one all-reduce of a reused flat buffer)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        total = sum(g.numel() for g in grads)
        if self._flat is None or self._flat.numel() != total or self._flat.device != grads[0].device:
            self._flat = torch.empty(total, dtype=grads[0].dtype, device=grads[0].device)
        offset = 0
        for g in grads:
            self._flat[offset : offset + g.numel()].copy_(g.reshape(-1))
            offset += g.numel()
        dist.all_reduce(self._flat)
        self._flat.div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(self._flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def fired_and_stop(self, fired: torch.Tensor, stop: bool) -> tuple[torch.Tensor, bool]:
        """Latents that fired in any process; whether any process was asked to stop (Ctrl-C)."""
        if not self.active:
            return fired, stop
        flags = torch.cat([fired.to(torch.uint8), fired.new_tensor([stop], dtype=torch.uint8)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags[:-1].bool(), bool(flags[-1])

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged scalars over the processes (each is a per-process mean or share)."""
        if not self.active:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def init_from_environment(device: str) -> bool:
    """Join the process group described by torchrun's environment variables, if any. Returns True if joined."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def launch(nproc: int, device: str, worker: Callable[..., Any], *args: Any) -> None:
    """Run ``worker(*args)`` in ``nproc`` local processes joined in one group (gloo on CPU, NCCL on CUDA).

    Raises the first worker's error in the parent. ``worker`` must be importable (a module-level function).
    """
    import torch.multiprocessing as mp

    # rendezvous through a file, not a TCP port: no race with other programs for a free port
    rendezvous = Path(tempfile.mkdtemp(prefix="sparsecode-ddp-"))
    try:
        mp.start_processes(
            _run_rank,
            args=(nproc, str(rendezvous / "store"), device, worker, args),
            nprocs=nproc,
            start_method="spawn",
            join=True,
        )
    except mp.ProcessRaisedException as e:
        # the worker's own one-line message (its last traceback line), not the parent's wrapper
        last = str(e).strip().splitlines()[-1]
        raise SparsecodeError(f"a training process failed: {last}") from None
    except mp.ProcessExitedException as e:
        raise SparsecodeError(f"a training process died: {e}") from None
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)


def _run_rank(rank: int, world_size: int, store_file: str, device: str, worker, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    # Each process gets its share of the cores, so N processes do not oversubscribe the machine.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if device.startswith("cuda"):
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend_for(device), init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    try:
        worker(*args)
        dist.barrier()  # every rank is done with its collectives
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without tearing gloo down or finalising the interpreter: in CI a 2-process run stopped early twice aborted
    # one rank on its way out (SIGABRT, "terminate called without an active exception"), once after every rank had
    # passed the barrier. The worker's files are all written and closed by now, and the OS closes the connections.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
