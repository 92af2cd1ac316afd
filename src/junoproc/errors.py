"""One exception family for everything junoproc refuses to do.

Each error carries *what* went wrong, *which file* it concerns and *what to do*, so the
CLI can print a single line (``str(err)``) with no traceback.
"""

from __future__ import annotations

from pathlib import Path


class JunoprocError(Exception):
    """Base class. ``str()`` is one line: "<path>: <what> (<fix>)"."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.path:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())


class ProductError(JunoprocError):
    """A raw product cannot be read."""


class MissingMetadataError(ProductError):
    """A raw image without its metadata (JSON or PDS3 label)."""


class MissingRawError(ProductError):
    """Metadata whose raw image was never downloaded."""


class CorruptProductError(ProductError):
    """Truncated, unreadable or absurd file (including decompression bombs)."""


class ShapeMismatchError(ProductError):
    """Pixels do not match LINES / LINE_SAMPLES / FILTER_NAME / SAMPLING_FACTOR."""


class UnsupportedBitModeError(ProductError):
    """SAMPLE_BIT_MODE_ID that junoproc has no decompanding table for."""


class UnsafeArchiveError(ProductError):
    """A zip entry that would write outside the working folder."""


class CalibrationError(JunoprocError):
    """A calibration step cannot be applied (twice, or missing files)."""


class KernelError(JunoprocError):
    """SPICE kernels are missing, unreadable or do not cover the time."""


class KernelMissingError(KernelError):
    """A kernel kind (IK, FK, SPK, ...) is not available."""


class KernelCoverageError(KernelError):
    """Kernels are loaded but do not cover the time span of an image."""


class KernelDownloadError(KernelError):
    """A kernel or a kernel listing cannot be downloaded, or its checksum is wrong."""


class UnknownTargetError(JunoprocError):
    """TARGET_NAME that has no radii in the PCK."""


class PointingError(JunoprocError):
    """The pointing cannot be solved or refined."""


class NoLimbError(PointingError):
    """No usable limb in the image."""


class PointingQualityError(PointingError):
    """A solution was found but its quality is too poor to trust."""


class ProjectionError(JunoprocError):
    """A map cannot be made (nothing visible, bad bounds, ...)."""


class EnhanceError(JunoprocError):
    """Bad enhancement preset or parameter."""


class OutputError(JunoprocError):
    """An output file cannot be written, or a file junoproc wrote cannot be read back."""
