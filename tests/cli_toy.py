"""What the command-line tests share: a tiny synthetic training run's arguments, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOY_DATA = "features=64,dim=16,active=3"
"""64 planted features in 16 dimensions, 3 active per row: trains in seconds."""


def toy_train(out: Path | None, *sae_flags: str, latents: int = 64, tokens: str = "20k", batch: int = 256) -> list:
    """``sparsecode train`` arguments for a quiet run on :data:`TOY_DATA` into ``out`` (no ``--out`` when None);
    ``sae_flags`` choose the dictionary (default ``--k 3``, a TopK SAE)."""
    args = ["train", "--synthetic", TOY_DATA, *(sae_flags or ("--k", "3"))]
    args += ["--latents", str(latents), "--tokens", tokens, "--batch-size", str(batch), "--quiet"]
    return args if out is None else [*args, "--out", str(out)]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m sparsecode ARGS`` in a fresh process (offline), its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sparsecode", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """The command failed as bad input should: exit 2, one ``error: …`` line holding every needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("train:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
