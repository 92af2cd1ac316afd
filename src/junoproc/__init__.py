"""junoproc: raw JunoCam framelets to registered maps and composites.

Stages, each importable on its own::

    raw = junoproc.load("perijove44/13544-ImageSet")      # products
    cal = junoproc.calibrate(raw)                          # calibrate
    sol = junoproc.solve_pointing(cal, kernels=...)        # pointing
    m = junoproc.project(cal, sol, projection="equirectangular")
    img = junoproc.enhance(m, preset="enhanced")
    junoproc.build("perijove44/", out="out/")              # everything

Nothing is imported (and no kernel loaded) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load": "products",
    "RawImage": "products",
    "ProductMeta": "products",
    "find_products": "products",
    "calibrate": "calibrate",
    "CalibratedImage": "calibrate",
    "CameraModel": "camera",
    "FrameTiming": "camera",
    "solve_pointing": "pointing",
    "project": "projection",
    "enhance": "enhance",
    "build": "pipeline",
    "simulate": "simulate",
    "JunoprocError": "errors",
}

__all__ = ["__version__", *_EXPORTS]

# Speed settings that must precede OpenCV's loading (see runtime).
from . import runtime as _runtime  # noqa: E402

_runtime.configure()

# Functions named like their module: bind them now, because importing the submodule
# (``from junoproc.calibrate import ...``) would otherwise leave the package attribute
# pointing at the module. These modules import numpy/OpenCV/spiceypy only: no kernels.
from .calibrate import calibrate as calibrate  # noqa: E402
from .enhance import enhance as enhance  # noqa: E402
from .simulate import simulate as simulate  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'junoproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
