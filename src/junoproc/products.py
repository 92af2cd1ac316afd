"""Raw JunoCam products: metadata records and framelet layout.

A product is one raw image (8-bit PNG from the mission site, or a PDS3 IMG) plus its
metadata (the site's ``<id>-Metadata.json`` or a PDS3 label). Pixels are framelets
stacked top to bottom: for each frame, one framelet per entry of FILTER_NAME, in that
order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingMetadataError, ShapeMismatchError

#: Rows of one framelet on the CCD before summing.
FRAMELET_ROWS = 128
#: Columns of the CCD (photoactive and not) before summing.
CCD_SAMPLES = 1648

_UNIT_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*(?:<\s*([^>]*)\s*>)?\s*$")
_DISTORTION_Y_RE = re.compile(r"INS-(615\d\d)_DISTORTION_Y\s*=\s*([-+0-9.eE]+)")
_BAND_NAIF_ID = {"BLUE": -61501, "GREEN": -61502, "RED": -61503, "METHANE": -61504}


def parse_quantity(value: Any, *, unit: str | None = None, key: str = "", path: Any = None) -> float:
    """Parse ``"0.373 <s>"`` / ``"3.2 <ms>"`` / ``0.373`` into a float.

    ``unit`` (when given) is the unit the caller wants; ``ms`` and ``s`` convert.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:  # pvl Quantity-like
        value = f"{value[0]} <{value[1]}>"
    if hasattr(value, "value") and hasattr(value, "units"):  # pvl.collections.Quantity
        value = f"{value.value} <{value.units}>"
    m = _UNIT_RE.match(str(value))
    if not m:
        raise MissingMetadataError(
            f"{key or 'value'} {value!r} is not a number with an optional <unit>",
            path=path,
            hint="check the metadata file is a JunoCam EDR label",
        )
    number = float(m.group(1))
    have = (m.group(2) or "").strip().lower()
    want = (unit or "").lower()
    if want and have and have != want:
        factors = {("ms", "s"): 1e-3, ("s", "ms"): 1e3}
        if (have, want) not in factors:
            raise MissingMetadataError(
                f"{key} has unit <{have}>, expected <{want}>", path=path, hint="unexpected label"
            )
        number *= factors[(have, want)]
    return number


@dataclass(frozen=True)
class ProductMeta:
    """The label fields junoproc uses, typed and with units stated in the names."""

    product_id: str
    perijove: int | None
    target: str
    start_time_utc: str
    stop_time_utc: str | None
    interframe_delay_s: float
    exposure_ms: float
    tdi_stages: int
    filters: tuple[str, ...]
    bit_mode: str
    sampling_factor: int
    lines: int
    line_samples: int
    spacecraft_clock_start: str | None = None
    rationale_desc: str = ""
    #: DISTORTION_Y overrides found in RATIONALE_DESC: band name -> cy in px.
    distortion_y_overrides: Mapping[str, float] = field(default_factory=dict)
    sub_spacecraft_lat_deg: float | None = None
    sub_spacecraft_lon_deg: float | None = None
    spacecraft_altitude_km: float | None = None
    title: str = ""
    file_name: str = ""
    metadata_path: str = ""
    #: The whole label as read (for the sidecar).
    raw_label: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_filters(self) -> int:
        return len(self.filters)

    @property
    def framelet_rows(self) -> int:
        """Rows of one framelet in the product (128 / SAMPLING_FACTOR)."""
        return FRAMELET_ROWS // self.sampling_factor

    @property
    def framelet_samples(self) -> int:
        return self.line_samples

    @property
    def n_frames(self) -> int:
        rows_per_frame = self.framelet_rows * self.n_filters
        return self.lines // rows_per_frame


def _label_get(label: Mapping[str, Any], key: str, path: Any, default: Any = ...) -> Any:
    if key in label and label[key] not in (None, ""):
        return label[key]
    if default is not ...:
        return default
    raise MissingMetadataError(
        f"metadata lacks {key}", path=path, hint="use the product's -Metadata.json or PDS3 label"
    )


def _optional_float(label: Mapping[str, Any], key: str) -> float | None:
    try:
        return parse_quantity(label[key])
    except (KeyError, MissingMetadataError, TypeError):
        return None


def distortion_y_overrides(rationale: str) -> dict[str, float]:
    """``INS-61504_DISTORTION_Y = 311.48`` inside RATIONALE_DESC -> {"METHANE": 311.48}."""
    by_id = {v: k for k, v in _BAND_NAIF_ID.items()}
    out: dict[str, float] = {}
    for naif, value in _DISTORTION_Y_RE.findall(rationale or ""):
        band = by_id.get(-int(naif))
        if band:
            out[band] = float(value)
    return out


def parse_metadata(label: Mapping[str, Any], *, path: str | Path | None = None) -> ProductMeta:
    """Typed record from the site's JSON or a PDS3 label (as a mapping)."""
    label = {str(k).upper(): v for k, v in label.items()}
    filters_raw = _label_get(label, "FILTER_NAME", path)
    if isinstance(filters_raw, str):
        filters = tuple(f.strip().upper() for f in filters_raw.strip("(){}").split(",") if f.strip())
    else:
        filters = tuple(str(f).strip().upper() for f in filters_raw)
    if not filters:
        raise MissingMetadataError("FILTER_NAME is empty", path=path, hint="label is incomplete")
    for f in filters:
        if f not in _BAND_NAIF_ID:
            raise MissingMetadataError(
                f"unknown filter {f!r} in FILTER_NAME", path=path,
                hint="JunoCam filters are BLUE, GREEN, RED, METHANE",
            )
    pj_raw = label.get("PJ", label.get("ORBIT_NUMBER"))
    try:
        perijove = int(str(pj_raw)) if pj_raw not in (None, "", "N/A") else None
    except ValueError:
        perijove = None
    rationale = str(label.get("RATIONALE_DESC", "") or "")
    sampling = int(parse_quantity(label.get("SAMPLING_FACTOR", 1), key="SAMPLING_FACTOR", path=path))
    if sampling not in (1, 2, 4, 8):
        raise ShapeMismatchError(f"SAMPLING_FACTOR {sampling} is not 1, 2, 4 or 8", path=path)
    stop = label.get("STOP_TIME")
    return ProductMeta(
        product_id=str(_label_get(label, "PRODUCT_ID", path)).strip(),
        perijove=perijove,
        target=str(_label_get(label, "TARGET_NAME", path)).strip().upper(),
        start_time_utc=str(_label_get(label, "START_TIME", path)).strip().rstrip("Z"),
        stop_time_utc=str(stop).strip().rstrip("Z") if stop not in (None, "", "N/A") else None,
        interframe_delay_s=parse_quantity(
            _label_get(label, "INTERFRAME_DELAY", path), unit="s", key="INTERFRAME_DELAY", path=path
        ),
        exposure_ms=parse_quantity(
            _label_get(label, "EXPOSURE_DURATION", path), unit="ms", key="EXPOSURE_DURATION",
            path=path,
        ),
        tdi_stages=int(parse_quantity(label.get("JNO:TDI_STAGES_COUNT", 1) or 1)),
        filters=filters,
        bit_mode=str(_label_get(label, "SAMPLE_BIT_MODE_ID", path)).strip().upper(),
        sampling_factor=sampling,
        lines=int(parse_quantity(_label_get(label, "LINES", path), key="LINES", path=path)),
        line_samples=int(
            parse_quantity(label.get("LINE_SAMPLES", CCD_SAMPLES // sampling), key="LINE_SAMPLES")
        ),
        spacecraft_clock_start=(str(label["SPACECRAFT_CLOCK_START_COUNT"]).strip()
                                if label.get("SPACECRAFT_CLOCK_START_COUNT") else None),
        rationale_desc=rationale,
        distortion_y_overrides=distortion_y_overrides(rationale),
        sub_spacecraft_lat_deg=_optional_float(label, "SUB_SPACECRAFT_LATITUDE"),
        sub_spacecraft_lon_deg=_optional_float(label, "SUB_SPACECRAFT_LONGITUDE"),
        spacecraft_altitude_km=_optional_float(label, "SPACECRAFT_ALTITUDE"),
        title=str(label.get("TITLE", "") or ""),
        file_name=str(label.get("FILE_NAME", "") or ""),
        metadata_path=str(path) if path is not None else "",
        raw_label=label,
    )


def check_shape(meta: ProductMeta, shape: tuple[int, ...], *, path: Any = None) -> None:
    """Pixels must be LINES x LINE_SAMPLES and a whole number of frames."""
    if len(shape) != 2:
        raise ShapeMismatchError(f"expected a 2-D grey image, got shape {shape}", path=path)
    lines, samples = shape
    if samples != meta.line_samples or samples * meta.sampling_factor != CCD_SAMPLES:
        raise ShapeMismatchError(
            f"image is {samples} samples wide; label says LINE_SAMPLES={meta.line_samples}, "
            f"SAMPLING_FACTOR={meta.sampling_factor}", path=path,
            hint="the raw and metadata files belong to different products",
        )
    if lines != meta.lines:
        raise ShapeMismatchError(
            f"image has {lines} lines; label says LINES={meta.lines}", path=path,
            hint="the raw file may be truncated or the metadata belongs to another product",
        )
    per_frame = meta.framelet_rows * meta.n_filters
    if lines % per_frame:
        raise ShapeMismatchError(
            f"{lines} lines is not a whole number of frames of {meta.n_filters} "
            f"x {meta.framelet_rows}-row framelets", path=path,
        )


@dataclass(frozen=True)
class RawImage:
    """A decoded raw product: 8-bit companded pixels, still in the product's layout."""

    meta: ProductMeta
    pixels: np.ndarray = field(repr=False)  # uint8 (lines, samples)
    raw_path: str = ""

    @property
    def framelets(self) -> np.ndarray:
        """View shaped (n_frames, n_filters, rows, samples), bands in FILTER_NAME order."""
        m = self.meta
        return self.pixels.reshape(m.n_frames, m.n_filters, m.framelet_rows, m.framelet_samples)

    def band_index(self, band: str) -> int:
        try:
            return self.meta.filters.index(band.upper())
        except ValueError:
            raise ShapeMismatchError(
                f"band {band} not in FILTER_NAME {list(self.meta.filters)}", path=self.raw_path
            ) from None
