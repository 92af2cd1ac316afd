"""Shared fixtures: the real-data folder (skip without it, fail under CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from junoproc.paths import shared_data_dir


def _require_data() -> Path:
    root = shared_data_dir()
    if not (root / "kernels").is_dir():
        msg = f"real data not found at {root} (set JUNOPROC_DATA or put ../shared/data beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real JunoCam data folder (../shared/data or $JUNOPROC_DATA)."""
    return _require_data()


@pytest.fixture(scope="session")
def kernel_dir(data_dir: Path) -> Path:
    return data_dir / "kernels"


def _furnish_dir(folder: Path) -> list[str]:
    import spiceypy

    loaded = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp", ".bc"}:
            spiceypy.furnsh(str(path))
            loaded.append(str(path))
    return loaded


@pytest.fixture()
def real_kernels(kernel_dir: Path):
    """All real kernels of ../shared/data/kernels furnished for one test, then cleared."""
    import spiceypy

    spiceypy.kclear()
    loaded = _furnish_dir(kernel_dir)
    yield loaded
    spiceypy.kclear()
