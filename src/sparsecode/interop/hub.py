"""Hub ids (``org/repo`` or ``org/repo/sub/folder``) -> a local folder, through huggingface_hub: downloaded when
online, read from the hub client's local cache when offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..sources.hf import _offline


def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return not text.startswith(("/", ".", "~")) and "\\" not in text and len(parts) >= 2 and all(parts)


def resolve(source: str, cache_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """(local path, hub id or None): an existing path as is; otherwise a hub id, fetched (only the subfolder's
    files) or found in the cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    if not looks_like_hub_id(source):
        raise DataError(f"{source} not found (give a folder, a file, or a hub id org/repo[/subfolder])")
    parts = source.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        root = snapshot_download(
            repo,
            allow_patterns=[f"{sub}/*"] if sub else None,
            local_files_only=_offline(),
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except HFValidationError as e:
        raise DataError(f"{source}: not a path, and not a valid hub id ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 -- the hub client raises many kinds (offline, 404, auth, network)
        offline = " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)" if _offline() else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{source}: not a local path and not fetched from the hub{offline}: {first}") from None
    folder = Path(root) / sub
    if not folder.exists():
        raise DataError(f"{source}: the hub repository {repo} has no folder {sub!r}")
    return folder, source
