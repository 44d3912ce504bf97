"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A crash or Ctrl-C at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DataError

# Temporary names carry the writer's process id (".NAME.pid123.RANDOM.tmp", ".split.partial-pid123-RANDOM"), so
# that the leftovers of a writer killed mid-write (SIGKILL, power loss: no cleanup runs) can be told apart from
# the live temporaries of a concurrent writer, and swept at the next write into the same folder.
_TEMP_NAME = re.compile(r"^\..*[.-]pid(\d+)[.-][^/]*$")


def temp_prefix(stem: str) -> str:
    """The prefix of a temporary file or folder named after ``stem``, tagged with this process's id."""
    return f".{stem}.pid{os.getpid()}."


def sweep_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries in ``folder`` left by writers that no longer run; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another sweeper got there first
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _read_umask() -> int:
    # the only portable way to read the umask is to set it: done once, at import (os.umask is process-wide)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def new_file_mode(directory: bool = False) -> int:
    """The permissions a newly created file (or folder) gets under this process's umask."""
    return (0o777 if directory else 0o666) & ~_UMASK


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move ``tmp_path`` onto ``path``.

    The file gets the permissions of any newly created file (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, new_file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def user_cache_dir(env_var: str, name: str) -> Path:
    """``$env_var`` if set, else ``$XDG_CACHE_HOME/sparsecode/<name>``, else ``~/.cache/sparsecode/<name>``."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsecode" / name


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> dict:
    """Read a JSON object, turning a missing or malformed file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(obj).__name__}")
    return obj


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(cpu, str(p), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing, truncated or corrupt file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: truncated or corrupt safetensors file ({first})") from None
    return {k: v.to(device) for k, v in tensors.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: truncated or corrupt safetensors file ({first})") from None
