"""Where junoproc finds things outside the package: the shared real data, caches."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the location of the real-data folder.
DATA_ENV = "JUNOPROC_DATA"


def repo_root() -> Path:
    """The source checkout (``src/junoproc`` -> repository root)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The real-data folder: ``$JUNOPROC_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root().parent / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Per-user cache (downloaded kernels, derived calibration files)."""
    env = os.environ.get("JUNOPROC_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "junoproc"
