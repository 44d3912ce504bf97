"""Experiment trackers: the rows training appends to metrics.jsonl, also sent to TensorBoard or Weights & Biases.

metrics.jsonl stays the source of truth (plots, resume and the dashboard read it); a tracker is a copy for people
who keep their experiments there. Both libraries are optional extras (``pip install 'sparsecode[trackers]'``).

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``), one scalar per metric under
  ``train/``.
- ``wandb``: a run in the ``WANDB_PROJECT`` project (default "sparsecode") named after the run folder, with the run
  config; its local files go to ``RUN/wandb/``. ``WANDB_MODE=offline`` keeps it on this machine (``wandb sync``
  uploads it later). A resumed training run continues the same wandb run (its id is kept in ``RUN/wandb-id``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

TRACKERS = ("tensorboard", "wandb")
INSTALL_HINT = "pip install 'sparsecode[trackers]'"


class Tracker(Protocol):
    def log(self, row: dict[str, float], step: int) -> None:
        """Record one metrics row (the numbers of a metrics.jsonl line) at ``step``."""
        ...

    def close(self) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"--log tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")

    def log(self, row: dict[str, Any], step: int) -> None:
        for name, value in _scalars(row).items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool):
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"--log wandb needs the wandb package: {INSTALL_HINT}") from None
        id_file = run_dir / "wandb-id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would interleave with the progress bar
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "sparsecode"),
            name=run_dir.resolve().name,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
            reinit="create_new",  # several runs trained together from one pass log side by side
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str | None, run_dir: Path, config: dict[str, Any], resume: bool = False) -> Tracker | None:
    """The tracker ``kind`` ("tensorboard", "wandb") writing for ``run_dir``, or None without one."""
    if kind is None:
        return None
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if kind == "wandb":
        return WandbTracker(run_dir, config, resume)
    raise ConfigError(f"train.log must be one of {', '.join(TRACKERS)}, got {kind!r}")
