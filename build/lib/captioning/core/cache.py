"""Where derived files live: weights, features and the generated dataset. Everything here can be deleted."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """$CAPTIONING_CACHE, else ~/.cache/captioning."""
    root = Path(os.environ.get("CAPTIONING_CACHE") or Path.home() / ".cache" / "captioning").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename into place, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
