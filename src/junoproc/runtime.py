"""Process-wide settings that make junoproc fast on small (2-core, virtual) machines.

:func:`configure` runs when ``junoproc`` is imported. Every setting only changes speed,
never a result, and each gives way to the user's own choice (its environment variable).

- OpenCV's thread pool: after each parallel call its worker threads spin in
  ``sched_yield`` for up to 2000 rounds waiting for the next one. On 2 cores that spinning
  takes the core the other thread or build worker needs: in the full-resolution PJ44
  equirectangular map on one thread it was 17 % of all CPU samples, and the projection's
  system time fell from 1.1-1.4 s to 0.45-0.56 s without it. Workers now sleep at once
  (``OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER`` / ``..._MAIN`` = 0). OpenCV reads these when
  it loads, so they take effect only where junoproc is imported before ``cv2``.
- numpy's transparent huge pages: numpy asks the kernel for 2 MB pages on its large
  arrays. On these virtual machines a fresh huge page, first touched, costs far more than
  512 small ones: allocating and filling 0.67 GB took 0.05-1.8 s (erratic) with them and
  0.26-0.41 s without. Set ``NUMPY_MADVISE_HUGEPAGE=1`` to keep them.
"""

from __future__ import annotations

import os
import sys

#: OpenCV thread-pool busy-wait rounds (read by OpenCV when it loads).
OPENCV_POOL_WAIT = {"OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER": "0",
                    "OPENCV_THREAD_POOL_ACTIVE_WAIT_MAIN": "0"}


def configure() -> None:
    """Apply the settings above (idempotent)."""
    if "cv2" not in sys.modules:
        for name, value in OPENCV_POOL_WAIT.items():
            os.environ.setdefault(name, value)
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    import importlib

    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, numpy 1
        try:
            setter = getattr(importlib.import_module(module), "_set_madvise_hugepage", None)
        except ImportError:
            continue
        if setter is not None:
            setter(False)
            return
