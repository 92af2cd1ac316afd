"""Calibration: 8-bit companded framelets -> DN -> DN/ms -> in-band radiance -> I/F.

``calibrate(raw)`` runs the steps below in order; each is also a public function that
takes a :class:`CalibratedImage` and returns a new one (the input is never modified),
and refuses to run twice (``steps`` records what was applied).

1. ``decompand``: one 256-entry table per SAMPLE_BIT_MODE_ID (SQROOT, LIN1/2/4/8/16).
   A companded value ``v`` stands for a bin of 12-bit DN ``[lower(v), lower(v) + step - 1]``
   (``lower`` is the table of ``docs/junocam.md``). ``method="centre"`` (default) returns
   the bin centre ``lower(v) + (step - 1) / 2``: unbiased for the truncating quantiser the
   flight software applies, where ``lower(v)`` is biased low by up to 15.5 DN (0.8 %) at
   the top of the SQROOT range. ``method="lower"`` returns the documented table exactly.
   Saturated: raw value >= 240. Non-photoactive columns (CCD 23..1630 are photoactive,
   scaled by SAMPLING_FACTOR) are flagged invalid.
2. ``mask_bad_pixels``: blemishes (kmgill masks + cosmas-heiss mask) and pixels hot in
   the PJ28 darks are flagged invalid (values are kept; flagging never changes data).
3. ``flag_particle_hits``: per framelet, in the companded domain (where square-root
   companding makes the noise nearly signal-independent): excess over the 5x5 median
   >= ``max(k_sigma * 1.4826 * MAD, min_excess)`` AND compact (at most 4 such pixels in
   the 5x5 window) AND sharp (the non-flagged 3x3 neighbours together hold at most
   ``sharpness`` x the excess of the pixel, which an optically blurred feature fails).
   Pixels flagged in >= 25 % of the frames of a band (at least 3) are hot pixels: flagged
   in all frames.
4. ``subtract_dark``: the bias is removed on board by the companding settings (MSSS
   calibration report, section 5.4), leaving 0.7-2.7 DN of residual dark with a fixed
   column pattern (0.1-0.4 DN rms) on the real PJ43/PJ44 images. It is estimated like an
   overscan, from the image itself: per band and column, the mean of the valid sky pixels
   (DN <= ``sky_max_dn``). Columns with too little sky get ``offset + scale * profile``
   fitted to the others, ``profile`` being the column profile of the public PJ28 darks
   (kmgill). Cross-validated on the real images (estimate on even frames, test on odd
   ones) this removes 57-86 % of the column pattern of the sky, where the PJ28 profile
   alone removes 0-2 %. METHANE sky pixels must also have a dim 15x15 local mean (its
   dark planet is under the 12-DN threshold: 44M00040's dark came out 3.34 DN, sky ~1 DN,
   sky frames at -2.3 DN, which the flat turned into framelet rectangles). Without enough
   sky (a planet filling the frame) the step subtracts nothing and says so in the provenance.
5. ``divide_flat``: per-band flat normalised to mean 1 over the photoactive area (band
   response is *not* in the flat; it is the explicit responsivity of step 7). BLUE, GREEN,
   RED: kmgill's v3 flats; METHANE: a radial vignetting model fitted to those (no public
   METHANE flat exists). See ``data/PROVENANCE.md``.
6. ``normalise_exposure``: DN -> DN/ms by EXPOSURE_DURATION. With TDI the label's
   EXPOSURE_DURATION is already the total integration time (TDI stages x 3.2 ms line
   time in every real label: TDI 1 -> 3.2 ms, 6 -> 19.2 ms, 32 -> 102.4 ms, 64 -> 204.8
   ms; the cal report compares TDI and non-TDI images "with equivalent exposure time"),
   so DN/ms divides by EXPOSURE_DURATION and never multiplies by the TDI count.
7. ``to_radiance``: DN/ms -> in-band radiance W/m^2/sr with the MSSS responsivities.
8. ``to_reflectance``: radiance -> I/F = pi L d^2 / F_band(1 AU), d in AU from the
   label's SOLAR_DISTANCE (or a parameter).

Flags (``CalibratedImage.flags``, uint8 bits): see :data:`FLAG_BITS`.
``valid = flags == 0``; ``saturated`` is the saturation bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from .camera import PHOTOACTIVE_COLUMNS
from .errors import CalibrationError, UnsupportedBitModeError
from .products import CCD_SAMPLES, FRAMELET_ROWS, ProductMeta, RawImage

# ---------------------------------------------------------------------------------------
# Constants (each defined once, with its source)
# ---------------------------------------------------------------------------------------

#: Shipped calibration file (derived by ``examples/derive_calibration.py``).
CALIBRATION_FILE = "junocam_calibration_v1.npz"
#: Flats are stored as uint16 with this value meaning 1.0.
FLAT_SCALE = 32768
#: A pixel of the PJ28 dark frames this many DN above the frame's median is a known hot pixel.
HOT_PIXEL_DARK_EXCESS_DN = 50.0

#: A raw (companded) value at or above this is saturated (docs/junocam.md).
SATURATION_RAW = 240
#: SQROOT companding: (first 8-bit value, its 12-bit DN, DN step) of each linear segment
#: (docs/junocam.md; MSSS). 8-bit 255 -> 2879 DN, the largest value the table returns.
SQROOT_SEGMENTS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1), (23, 23, 2), (43, 63, 4), (89, 247, 8), (184, 1007, 16), (209, 1407, 32),
)
#: Linear companding modes: DN = step x value (the cal report: divide by 1, 2, 4, 8 or 16).
LINEAR_MODES = {"LIN1": 1, "LIN2": 2, "LIN4": 4, "LIN8": 8, "LIN16": 16}
DECOMPAND_METHODS = ("centre", "lower")

#: Responsivity, DN/s per W/m^2/sr of in-band radiance. MSSS, "Junocam Calibration Report"
#: (August 2010), section 5.1 (integrating sphere, QTH lamp). Instrument constants that are
#: in no SPICE kernel.
RESPONSIVITY_DN_PER_S = MappingProxyType(
    {"RED": 217239.0, "GREEN": 332944.0, "BLUE": 262186.0, "METHANE": 57761.0}
)
#: Nominal band passes in nm (Hansen et al. 2017, Space Sci. Rev. 213, 475, "Junocam: Juno's
#: outreach camera"); used only to document the solar irradiance below.
BANDPASS_NM = MappingProxyType(
    {"BLUE": (420.0, 520.0), "GREEN": (500.0, 600.0), "RED": (600.0, 800.0), "METHANE": (880.0, 900.0)}
)
#: In-band solar irradiance at 1 AU, W/m^2: the ASTM E-490 AM0 solar spectrum integrated
#: over BANDPASS_NM (rectangular pass bands; about +-5 %, and the responsivities' own "in
#: band" convention is not stated in the report, so I/F is good to ~10 %, not better).
SOLAR_IRRADIANCE_1AU_W_M2 = MappingProxyType(
    {"BLUE": 193.0, "GREEN": 184.0, "RED": 308.0, "METHANE": 18.6}
)
#: IAU 2012 astronomical unit.
AU_KM = 149_597_870.7

#: Flag bits of ``CalibratedImage.flags``.
FLAG_SATURATED = 1
FLAG_NOT_PHOTOACTIVE = 2
FLAG_BLEMISH = 4
FLAG_KNOWN_HOT = 8
FLAG_HOT = 16
FLAG_PARTICLE_HIT = 32
FLAG_BITS = MappingProxyType({
    "saturated": FLAG_SATURATED, "not_photoactive": FLAG_NOT_PHOTOACTIVE, "blemish": FLAG_BLEMISH,
    "known_hot": FLAG_KNOWN_HOT, "hot": FLAG_HOT, "particle_hit": FLAG_PARTICLE_HIT,
})

#: Step names, in the order ``calibrate`` applies them.
STEPS = ("decompand", "bad_pixels", "particle_hits", "dark", "flat", "exposure", "radiance",
         "reflectance")
#: Units after each step that changes them.
UNITS = ("DN", "DN/ms", "W/m^2/sr", "I/F")

# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibratedImage:
    """Calibrated framelets of one product.

    ``data`` is float32 (n_frames, n_filters, rows, samples), bands in FILTER_NAME order;
    ``valid`` (bool: no flag set), ``saturated`` (bool) and ``flags`` (uint8 bits of
    :data:`FLAG_BITS`: why a pixel is invalid) have the same shape. ``units`` is one of
    :data:`UNITS`; ``steps`` the steps applied; ``provenance`` the calibration file with its
    sha256 and every step's parameters and measured values (JSON-serialisable).
    Records built by hand may leave ``flags`` out: it is then derived from ``valid`` and
    ``saturated``.
    """

    meta: ProductMeta
    data: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    saturated: np.ndarray = field(repr=False)
    steps: tuple[str, ...] = ()
    units: str = "DN"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    raw_path: str = ""
    flags: np.ndarray | None = field(default=None, repr=False)
    #: The raw image this came from (pixels shared, not copied); hit detection needs it.
    source: RawImage | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = self.data.shape
        if self.data.ndim != 4 or self.valid.shape != shape or self.saturated.shape != shape:
            raise CalibrationError(
                f"data {shape}, valid {self.valid.shape} and saturated {self.saturated.shape} must be "
                "one 4-D shape (n_frames, n_filters, rows, samples)", path=self.raw_path,
            )
        if self.flags is None:
            flags = np.where(self.valid, 0, FLAG_BLEMISH).astype(np.uint8)
            flags[self.saturated] |= FLAG_SATURATED
            object.__setattr__(self, "flags", flags)

    @property
    def filters(self) -> tuple[str, ...]:
        return self.meta.filters

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    def band_index(self, band: str) -> int:
        try:
            return self.meta.filters.index(band.upper())
        except ValueError:
            raise CalibrationError(
                f"band {band} not in FILTER_NAME {list(self.meta.filters)}", path=self.raw_path,
                hint="pick one of the product's filters",
            ) from None

    def band(self, band: str) -> np.ndarray:
        """View (n_frames, rows, samples) of one band."""
        return self.data[:, self.band_index(band)]

    def flag_counts(self) -> dict[str, int]:
        """How many pixels carry each flag."""
        assert self.flags is not None
        counts = np.bincount(self.flags.ravel(), minlength=256)
        values = np.arange(256)
        return {name: int(counts[(values & bit) != 0].sum()) for name, bit in FLAG_BITS.items()}


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration arrays for one SAMPLING_FACTOR, per band name (BLUE, GREEN, RED, METHANE)."""

    sampling_factor: int
    flat: Mapping[str, np.ndarray] = field(repr=False)          # float32 (rows, samples), mean 1
    dark_columns: Mapping[str, np.ndarray] = field(repr=False)  # float32 (samples,), mean 1
    blemish: Mapping[str, np.ndarray] = field(repr=False)       # bool (rows, samples)
    known_hot: Mapping[str, np.ndarray] = field(repr=False)     # bool (rows, samples)
    #: name -> sha256 of the files the arrays came from.
    files: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------
# Calibration files
# ---------------------------------------------------------------------------------------


def photoactive_columns(sampling_factor: int) -> slice:
    """Columns of a product whose every summed CCD column is photoactive."""
    first, last = PHOTOACTIVE_COLUMNS
    sf = int(sampling_factor)
    return slice(-(-first // sf), (last + 1) // sf)


@lru_cache(maxsize=8)
def _load_full_resolution() -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
    ref = resources.files("junoproc") / "data" / CALIBRATION_FILE
    try:
        blob = ref.read_bytes()
    except (FileNotFoundError, OSError) as err:
        raise CalibrationError(
            f"calibration file {CALIBRATION_FILE} is missing ({err})", path=str(ref),
            hint="reinstall junoproc, or regenerate it with examples/derive_calibration.py",
        ) from None
    import io

    with np.load(io.BytesIO(blob)) as npz:
        arrays = {key: npz[key] for key in npz.files}
    info = json.loads(arrays.pop("info_json").tobytes().decode())
    return arrays, hashlib.sha256(blob).hexdigest(), info


def _bin_mean(image: np.ndarray, sf: int) -> np.ndarray:
    rows, cols = image.shape
    return image.reshape(rows // sf, sf, cols // sf, sf).mean(axis=(1, 3))


def _bin_any(mask: np.ndarray, sf: int) -> np.ndarray:
    rows, cols = mask.shape
    return mask.reshape(rows // sf, sf, cols // sf, sf).any(axis=(1, 3))


@lru_cache(maxsize=8)
def load_calibration(sampling_factor: int = 1) -> CalibrationSet:
    """The shipped calibration, binned to ``sampling_factor`` (1, 2, 4, 8)."""
    if sampling_factor not in (1, 2, 4, 8):
        raise CalibrationError(f"SAMPLING_FACTOR {sampling_factor} is not 1, 2, 4 or 8",
                               hint="the label is damaged")
    arrays, sha, info = _load_full_resolution()
    sf = int(sampling_factor)
    shape = (FRAMELET_ROWS, CCD_SAMPLES)
    flats, darks, blemish, hot = {}, {}, {}, {}
    for band in RESPONSIVITY_DN_PER_S:
        flat = arrays[f"flat_{band}"].astype(np.float32) / FLAT_SCALE
        bl = np.unpackbits(arrays[f"blemish_{band}"])[: shape[0] * shape[1]].reshape(shape).astype(bool)
        kh = np.unpackbits(arrays[f"hot_{band}"])[: shape[0] * shape[1]].reshape(shape).astype(bool)
        dark = arrays[f"dark_columns_{band}"].astype(np.float32)
        if sf > 1:
            flat = _bin_mean(flat, sf).astype(np.float32)
            bl, kh = _bin_any(bl, sf), _bin_any(kh, sf)
            dark = dark.reshape(-1, sf).mean(axis=1).astype(np.float32)
        for arr in (flat, bl, kh, dark):
            arr.setflags(write=False)
        flats[band], darks[band], blemish[band], hot[band] = flat, dark, bl, kh
    return CalibrationSet(
        sampling_factor=sf, flat=MappingProxyType(flats), dark_columns=MappingProxyType(darks),
        blemish=MappingProxyType(blemish), known_hot=MappingProxyType(hot),
        files=MappingProxyType({CALIBRATION_FILE: sha}), info=MappingProxyType(info),
    )


# ---------------------------------------------------------------------------------------
# Decompanding
# ---------------------------------------------------------------------------------------


def companding_table(mode: str, *, method: str = "centre", path: Any = None) -> np.ndarray:
    """float32[256]: companded 8-bit value -> 12-bit DN for SAMPLE_BIT_MODE_ID ``mode``."""
    if method not in DECOMPAND_METHODS:
        raise CalibrationError(f"decompanding method {method!r} is not one of {DECOMPAND_METHODS}",
                               path=path, hint="use 'centre' (default) or 'lower'")
    return _companding_table(str(mode).strip().upper(), method, str(path) if path is not None else None)


@lru_cache(maxsize=32)
def _companding_table(mode: str, method: str, path: str | None) -> np.ndarray:
    v = np.arange(256, dtype=np.float64)
    if mode == "SQROOT":
        lower = np.zeros(256)
        step = np.ones(256)
        for v0, dn0, s in SQROOT_SEGMENTS:
            sel = v >= v0
            lower[sel] = dn0 + (v[sel] - v0) * s
            step[sel] = s
    elif mode in LINEAR_MODES:
        step = np.full(256, float(LINEAR_MODES[mode]))
        lower = v * step
    else:
        raise UnsupportedBitModeError(
            f"SAMPLE_BIT_MODE_ID {mode!r} has no decompanding table", path=path,
            hint=f"junoproc knows SQROOT and {', '.join(LINEAR_MODES)}",
        )
    table = lower + (step - 1.0) / 2.0 if method == "centre" else lower
    out = table.astype(np.float32)
    out.setflags(write=False)
    return out


def _require(cal: CalibratedImage, step: str, *, needs: tuple[str, ...] = ()) -> None:
    if not isinstance(cal, CalibratedImage):
        raise CalibrationError(f"{step} needs a CalibratedImage, got {type(cal).__name__}",
                               hint="start with junoproc.calibrate(raw) or calibrate.decompand(raw)")
    if step in cal.steps:
        raise CalibrationError(
            f"calibration step '{step}' was already applied (steps: {', '.join(cal.steps)})",
            path=cal.raw_path, hint="apply each step once",
        )
    for need in needs:
        if need not in cal.steps:
            raise CalibrationError(f"calibration step '{step}' needs '{need}' first", path=cal.raw_path,
                                   hint=f"run {need} before {step}")
    order = STEPS.index(step)
    later = [s for s in cal.steps if s in STEPS and STEPS.index(s) > order]
    if later:
        raise CalibrationError(f"calibration step '{step}' must come before {', '.join(later)}",
                               path=cal.raw_path, hint="apply the steps in the order of calibrate.STEPS")


def _decompand_arrays(raw: RawImage, method: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(data float32 DN, flags uint8, provenance) of a raw image, both (frames, filters, rows, samples)."""
    if isinstance(raw, CalibratedImage):
        raise CalibrationError("image is already calibrated (steps: " + ", ".join(raw.steps) + ")",
                               path=raw.raw_path, hint="calibrate the RawImage from junoproc.load once")
    if not isinstance(raw, RawImage):
        raise CalibrationError(f"calibration needs a RawImage, got {type(raw).__name__}",
                               hint="load the product with junoproc.load(path)")
    meta = raw.meta
    table = companding_table(meta.bit_mode, method=method, path=raw.raw_path or meta.metadata_path)
    shape4 = (meta.n_frames, meta.n_filters, meta.framelet_rows, meta.framelet_samples)
    pixels = np.ascontiguousarray(raw.pixels).reshape(-1, meta.framelet_samples)
    if pixels.size != math.prod(shape4):
        raise CalibrationError(f"raw image {raw.pixels.shape} does not hold {shape4} framelets",
                               path=raw.raw_path, hint="load it with junoproc.load (which checks LINES)")
    data = cv2.LUT(pixels, table).reshape(shape4)
    _, saturated = cv2.threshold(pixels, SATURATION_RAW - 1, FLAG_SATURATED, cv2.THRESH_BINARY)
    flags = saturated.reshape(shape4)
    cols = photoactive_columns(meta.sampling_factor)
    flags[..., : cols.start] |= FLAG_NOT_PHOTOACTIVE
    flags[..., cols.stop:] |= FLAG_NOT_PHOTOACTIVE
    info = {"bit_mode": meta.bit_mode, "method": method, "saturation_raw": SATURATION_RAW,
            "photoactive_columns": [cols.start, cols.stop - 1], "max_dn": float(table[-1])}
    return data, flags, info


def decompand(raw: RawImage, *, method: str = "centre") -> CalibratedImage:
    """8-bit companded pixels -> DN (float32), with saturation and non-photoactive flags."""
    data, flags, info = _decompand_arrays(raw, method)
    return CalibratedImage(meta=raw.meta, data=data, valid=flags == 0,
                           saturated=(flags & FLAG_SATURATED) != 0, steps=("decompand",), units="DN",
                           provenance=MappingProxyType({"decompand": info}), raw_path=raw.raw_path,
                           flags=flags, source=raw)


def _flags(cal: CalibratedImage) -> np.ndarray:
    assert cal.flags is not None  # __post_init__ fills it
    return cal.flags


def _with(cal: CalibratedImage, step: str, info: Mapping[str, Any], **changes: Any) -> CalibratedImage:
    """The record after ``step``: provenance and steps extended, valid/saturated from the flags."""
    provenance = dict(cal.provenance)
    provenance[step] = info
    flags = _flags(cal)
    return replace(cal, steps=(*cal.steps, step), provenance=MappingProxyType(provenance),
                   valid=flags == 0, saturated=(flags & FLAG_SATURATED) != 0, **changes)


def _copy(cal: CalibratedImage) -> CalibratedImage:
    """A record owning fresh copies of data and flags (so a step can work in place)."""
    return replace(cal, data=cal.data.copy(), flags=_flags(cal).copy())


def _calibration_for_meta(meta: ProductMeta, where: str,
                          calibration: CalibrationSet | None) -> CalibrationSet:
    cs = calibration if calibration is not None else load_calibration(meta.sampling_factor)
    if cs.sampling_factor != meta.sampling_factor:
        raise CalibrationError(
            f"calibration is for SAMPLING_FACTOR {cs.sampling_factor}, image has {meta.sampling_factor}",
            path=where, hint="use load_calibration(meta.sampling_factor)",
        )
    return cs


def _calibration_for(cal: CalibratedImage, calibration: CalibrationSet | None) -> CalibrationSet:
    return _calibration_for_meta(cal.meta, cal.raw_path, calibration)


def _files(cs: CalibrationSet) -> dict[str, str]:
    return dict(cs.files)


# ---------------------------------------------------------------------------------------
# Dark
# ---------------------------------------------------------------------------------------

#: Sky pixels for the dark fit: DN at or below this (companding is identity below 23 DN).
SKY_MAX_DN = 12.0
#: Bands whose planet signal reaches SKY_MAX_DN (METHANE, 889 nm, at TDI 32: dark methane
#: regions of 44M00040 are 3-6 DN): there a sky pixel must also have a local mean
#: (SKY_LOCAL_BOX_PX square) within SKY_LOCAL_MARGIN_DN of the band's darkest local means
#: (their SKY_LOCAL_BASE_PERCENTILE). On 44M00040 the plain threshold took dark planet for
#: sky: dark 3.58 DN where the sky is 1.0 DN, a 2.5 DN over-subtraction that the flat then
#: turned into framelet rectangles in the dark regions.
SKY_LOCAL_BANDS = frozenset({"METHANE"})
SKY_LOCAL_BOX_PX = 15
SKY_LOCAL_MARGIN_DN = 1.5
SKY_LOCAL_BASE_PERCENTILE = 2.0
#: A column takes part in the dark fit with at least this many sky pixels.
_MIN_SKY_PER_COLUMN = 32
#: ... and the fit needs at least this fraction of the photoactive columns.
_MIN_SKY_COLUMN_FRACTION = 0.25


def _local_sky_limit(framelets: np.ndarray, flags: np.ndarray, cols: slice) -> tuple[list[np.ndarray], float]:
    """Local means (SKY_LOCAL_BOX_PX box, per framelet) and the largest local mean that is sky."""
    box = (SKY_LOCAL_BOX_PX, SKY_LOCAL_BOX_PX)
    means = [cv2.blur(framelet, box, borderType=cv2.BORDER_REFLECT) for framelet in framelets]
    sample = np.concatenate([m[::4, cols][f[::4, cols] == 0] for m, f in zip(means, flags, strict=True)])
    base = float(np.percentile(sample, SKY_LOCAL_BASE_PERCENTILE)) if sample.size else 0.0
    return means, base + SKY_LOCAL_MARGIN_DN


def _sky_column_sums(framelets: np.ndarray, flags: np.ndarray, sky_max_dn: float,
                     local: tuple[list[np.ndarray], float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column: how many valid pixels are <= sky_max_dn, and their sum.

    ``framelets`` float32 and ``flags`` uint8, both (n, rows, samples). With ``local``
    (local means per framelet, limit) a pixel also needs its local mean <= limit.
    """
    count = np.zeros(framelets.shape[-1], np.float64)
    total = np.zeros(framelets.shape[-1], np.float64)
    for i, (framelet, flag) in enumerate(zip(framelets, flags, strict=True)):
        _, below = cv2.threshold(framelet, sky_max_dn, 1.0, cv2.THRESH_BINARY_INV)
        below[flag != 0] = 0.0
        if local is not None:
            below[local[0][i] > local[1]] = 0.0
        values = cv2.multiply(framelet, below)
        count += cv2.reduce(below, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()
        total += cv2.reduce(values, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()
    return count, total


def _dark_inplace(cal: CalibratedImage, cs: CalibrationSet, sky_max_dn: float) -> dict[str, Any]:
    cols = photoactive_columns(cal.meta.sampling_factor)
    out: dict[str, Any] = {
        "model": "per-column mean of valid sky pixels; columns without sky: offset + scale * "
                 "(PJ28 dark column profile - 1) fitted to the others",
        "sky_max_dn": sky_max_dn, "min_sky_per_column": _MIN_SKY_PER_COLUMN, "files": _files(cs), "bands": {},
    }
    flags = _flags(cal)
    for b, band in enumerate(cal.meta.filters):
        local = _local_sky_limit(cal.data[:, b], flags[:, b], cols) if band in SKY_LOCAL_BANDS else None
        count_all, total_all = _sky_column_sums(cal.data[:, b], flags[:, b], sky_max_dn, local)
        count, total = count_all[cols], total_all[cols]
        use = count >= _MIN_SKY_PER_COLUMN
        n_cols = int(use.sum())
        band_info: dict[str, Any] = {"sky_columns": n_cols, "columns": int(count.size),
                                     "sky_pixels": int(count.sum())}
        if local is not None:
            band_info["sky_local_mean_max_dn"] = round(local[1], 4)
        if n_cols < _MIN_SKY_COLUMN_FRACTION * count.size:
            band_info.update(applied=False, reason="too few sky pixels to estimate the dark")
            out["bands"][band] = band_info
            continue
        column_mean = np.zeros(count.size)
        column_mean[use] = total[use] / count[use]
        profile = cs.dark_columns[band][cols].astype(np.float64) - 1.0
        weights = np.sqrt(count[use])
        design = np.column_stack([np.ones(n_cols), profile[use]])
        (offset, scale), *_ = np.linalg.lstsq(design * weights[:, None], column_mean[use] * weights,
                                              rcond=None)
        if not scale > 0:  # no usable pattern (METHANE has none): constant only
            scale, offset = 0.0, float(np.average(column_mean[use], weights=count[use]))
        dark = np.where(use, column_mean, offset + scale * profile)
        dark_row = np.zeros(cal.data.shape[-1], np.float32)
        dark_row[cols] = dark
        cal.data[:, b] -= dark_row
        band_info.update(applied=True, mean_dn=round(float(dark.mean()), 4),
                         column_rms_dn=round(float(dark.std()), 4),
                         fallback_offset_dn=round(float(offset), 4), fallback_scale_dn=round(float(scale), 4))
        out["bands"][band] = band_info
    return out


def subtract_dark(cal: CalibratedImage, calibration: CalibrationSet | None = None, *,
                  sky_max_dn: float = SKY_MAX_DN) -> CalibratedImage:
    """Subtract the residual dark (see module doc); returns a new image."""
    _require(cal, "dark", needs=("decompand",))
    cs = _calibration_for(cal, calibration)
    new = _copy(cal)
    return _with(new, "dark", _dark_inplace(new, cs, sky_max_dn))


# ---------------------------------------------------------------------------------------
# Flat
# ---------------------------------------------------------------------------------------


def _flat_inplace(cal: CalibratedImage, cs: CalibrationSet) -> dict[str, Any]:
    for b, band in enumerate(cal.meta.filters):
        inverse = (1.0 / cs.flat[band]).astype(np.float32)
        np.multiply(cal.data[:, b], inverse, out=cal.data[:, b])
    return {"files": _files(cs), "normalisation": "mean 1 over the photoactive area, per band",
            "methane": "radial vignetting model (no public METHANE flat)"
            if "METHANE" in cal.meta.filters else None}


def divide_flat(cal: CalibratedImage, calibration: CalibrationSet | None = None) -> CalibratedImage:
    """Divide by the per-band flat (mean 1); returns a new image."""
    _require(cal, "flat", needs=("decompand",))
    cs = _calibration_for(cal, calibration)
    new = _copy(cal)
    return _with(new, "flat", _flat_inplace(new, cs))


# ---------------------------------------------------------------------------------------
# Bad pixels
# ---------------------------------------------------------------------------------------


def _bad_pixels_inplace(cal: CalibratedImage, cs: CalibrationSet) -> dict[str, Any]:
    counts = {}
    for b, band in enumerate(cal.meta.filters):
        bits = (cs.blemish[band].astype(np.uint8) * FLAG_BLEMISH) | (cs.known_hot[band].astype(np.uint8)
                                                                      * FLAG_KNOWN_HOT)
        _flags(cal)[:, b] |= bits
        counts[band] = {"blemish_px": int(cs.blemish[band].sum()),
                        "known_hot_px": int(cs.known_hot[band].sum())}
    return {"files": _files(cs), "per_framelet": counts}


def mask_bad_pixels(cal: CalibratedImage, calibration: CalibrationSet | None = None) -> CalibratedImage:
    """Flag blemishes and known hot pixels invalid (values untouched); returns a new image."""
    _require(cal, "bad_pixels", needs=("decompand",))
    cs = _calibration_for(cal, calibration)
    new = replace(cal, flags=_flags(cal).copy())
    return _with(new, "bad_pixels", _bad_pixels_inplace(new, cs))


# ---------------------------------------------------------------------------------------
# Particle hits and hot pixels
# ---------------------------------------------------------------------------------------

#: Defaults of the hit detector (companded 8-bit units; see the module doc).
HIT_K_SIGMA = 6.0
HIT_MIN_EXCESS = 8
HIT_MAX_PIXELS = 4
HIT_SHARPNESS = 2.0
#: A pixel flagged in at least this fraction of a band's frames is a hot pixel.
HOT_FRACTION = 0.25
#: Tracks (particles crossing the CCD at a slant): pixels of a connected component of the
#: candidates at this fraction of the hit threshold (hysteresis: the faint ends too) that
#: holds a full candidate, is thin (spread across its main axis <= HIT_TRACK_MAX_SD_PX,
#: i.e. about 2 px wide: a w-px band has sd w/sqrt(12)) and long (spread along it >=
#: HIT_TRACK_MIN_SD_PX, about 4 px), and sharp as a whole (the sharpness test summed over it).
HIT_TRACK_LOW_FRACTION = 0.5
HIT_TRACK_MAX_SD_PX = 0.7
HIT_TRACK_MIN_SD_PX = 1.0
HIT_TRACK_MAX_SHOULDER = 0.4
#: Fixed pattern: with TDI a hot pixel adds its dark charge to every line passing over it,
#: a streak TDI-stages long down its column, in every frame (44M00040, TDI 32: ~400 such
#: streaks per framelet, most too faint for the per-frame test). A pixel whose excess over
#: the 5x5 median has a median over the band's frames >= max(FIXED_MIN_EXCESS,
#: FIXED_K_SIGMA x the noise of that median) is hot, and so is the run of its column whose
#: median excess is >= half that (hysteresis: the faint tail of the streak). Needs at least
#: FIXED_MIN_FRAMES frames; the scene moves between frames, the fixed pattern does not.
FIXED_K_SIGMA = 4.5
FIXED_MIN_EXCESS = 2
FIXED_MIN_FRAMES = 5


def _neighbour_sum(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, rows: int, radius: int,
                   *, include_centre: bool) -> np.ndarray:
    """Sum of ``image`` (a stack of framelets as 2-D, ``rows`` rows each) over the
    (2 radius + 1)^2 window around each point, never crossing a framelet's edge."""
    total = np.zeros(ys.shape, np.int32)
    row_in_framelet = ys % rows
    height, width = image.shape
    for dy in range(-radius, radius + 1):
        y_ok = (row_in_framelet + dy >= 0) & (row_in_framelet + dy < rows)
        yy = np.clip(ys + dy, 0, height - 1)
        for dx in range(-radius, radius + 1):
            if dx == 0 and dy == 0 and not include_centre:
                continue
            ok = y_ok & (xs + dx >= 0) & (xs + dx < width)
            total += np.where(ok, image[yy, np.clip(xs + dx, 0, width - 1)], 0)
    return total


def _column_runs_touching(low: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The runs of ``low`` (rows, samples) along each column that hold a ``seed`` pixel."""
    rows, samples = low.shape
    by_column = np.zeros((samples, rows + 1), bool)  # a False row ends every column's runs
    by_column[:, :rows] = low.T
    flat = by_column.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]
    run_id = np.cumsum(starts, dtype=np.int32)
    run_id[~flat] = 0
    seeded = np.zeros(int(np.count_nonzero(starts)) + 1, bool)
    seeded[run_id.reshape(samples, rows + 1)[:, :rows][seed.T]] = True
    seeded[0] = False
    return seeded[run_id].reshape(samples, rows + 1)[:, :rows].T


def _fixed_pattern(excess: np.ndarray, sigma: np.ndarray, cols: slice) -> tuple[np.ndarray, list[int]]:
    """Hot pixels and their TDI streaks: bool (n_bands, rows, samples) from the uint8
    excess over the 5x5 median, (n_frames, n_bands, rows, samples)."""
    n_frames, n_bands, rows, samples = excess.shape
    hot = np.zeros((n_bands, rows, samples), bool)
    thresholds: list[int] = []
    if n_frames < FIXED_MIN_FRAMES:
        return hot, thresholds
    half = n_frames // 2  # median over frames >= t  <=>  more than half of the frames reach t
    for b in range(n_bands):
        sigma_median = 1.2533 * sigma[b] / math.sqrt(n_frames)
        high_t = max(FIXED_MIN_EXCESS, math.ceil(FIXED_K_SIGMA * sigma_median))
        low_t = max(1, high_t // 2)
        thresholds.append(high_t)
        band = excess[:, b, :, cols]
        # the median over frames, clipped at high_t + 2, by counting
        level = np.zeros(band.shape[1:], np.uint8)
        for t in range(1, high_t + 3):
            reached = np.count_nonzero(band >= t, axis=0) > half
            if not reached.any():
                break
            level += reached
        # less the column's median level: column offsets are the dark step's, not hot pixels
        column = np.median(level, axis=0).astype(np.uint8)
        level = cv2.subtract(level, np.broadcast_to(column, level.shape).copy())
        high = level >= high_t
        if high.any():
            hot[b, :, cols] = _column_runs_touching(level >= low_t, high)
    return hot, thresholds


def _tracks(stack: np.ndarray, excess: np.ndarray, low_thresholds: np.ndarray, high_ys: np.ndarray,
            high_xs: np.ndarray, rows: int, n_bands: int, cols: slice, skip: np.ndarray,
            sharpness: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Thin, long, sharp ridges among the low-threshold candidates that hold a full candidate.

    ``stack`` (raw) and ``excess`` (over the 5x5 median) are uint8 (n_frames * n_bands *
    rows, samples); ``skip`` bool (n_bands, rows, samples): pixels left out (the fixed
    pattern). A column's own median excess is added to its low threshold (a column
    brighter in every frame is the dark step's). Returns the (ys, xs) of the track pixels
    in stack coordinates and how many tracks.
    """
    n_framelets, samples = excess.shape[0] // rows, excess.shape[1]
    per_band = excess.reshape(-1, n_bands, rows, samples)
    low = np.zeros((n_framelets, rows + 1, samples), np.uint8)  # a blank row between framelets
    low4 = low.reshape(-1, n_bands, rows + 1, samples)
    for b in range(n_bands):
        sample = per_band[:, b, ::8, cols].reshape(-1, cols.stop - cols.start)
        column = np.partition(sample, sample.shape[0] // 2, axis=0)[sample.shape[0] // 2]
        level = np.minimum(column.astype(np.int64) + int(low_thresholds[b]), 255).astype(np.uint8)
        low4[:, b, :rows, cols] = (per_band[:, b, :, cols] >= level) & ~skip[b, :, cols]
    low2d = low.reshape(-1, samples)
    n_labels, labels = cv2.connectedComponents(low2d, connectivity=8)  # no stats: 6x faster
    empty = np.zeros(0, np.int64)
    if n_labels <= 1 or high_ys.size == 0:
        return empty, empty, 0
    seeded = np.zeros(n_labels, bool)
    seeded[labels[high_ys + high_ys // rows, high_xs]] = True
    seeded[0] = False
    points = cv2.findNonZero(low2d).reshape(-1, 2)
    xs, ys_sep = points[:, 0].astype(np.int64), points[:, 1].astype(np.int64)
    lab = labels[ys_sep, xs]
    seeded &= np.bincount(lab, minlength=n_labels) > 2
    if not seeded.any():
        return empty, empty, 0
    mine = seeded[lab]
    xs, ys_sep, lab = xs[mine], ys_sep[mine], lab[mine]
    ys = ys_sep - ys_sep // (rows + 1)  # back to stack rows
    # second moments of each component's pixels: thin across, long along its main axis
    safe = np.maximum(np.bincount(lab, minlength=n_labels), 1).astype(np.float64)
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)
    dx = fx - (np.bincount(lab, fx, n_labels) / safe)[lab]
    dy = fy - (np.bincount(lab, fy, n_labels) / safe)[lab]
    sxx = np.bincount(lab, dx * dx, n_labels) / safe
    syy = np.bincount(lab, dy * dy, n_labels) / safe
    sxy = np.bincount(lab, dx * dy, n_labels) / safe
    mean, diff = (sxx + syy) / 2.0, np.sqrt(((sxx - syy) / 2.0) ** 2 + sxy**2)
    minor_sd, major_sd = np.sqrt(np.maximum(mean - diff, 0.0)), np.sqrt(mean + diff)
    # sharp: the 3x3 neighbours outside the component hold little of its excess, summed over it
    calm = excess.copy()
    calm[ys, xs] = 0
    around = _neighbour_sum(calm, ys, xs, rows, 1, include_centre=False).astype(np.float64)
    value = excess[ys, xs].astype(np.float64)
    sharp = np.bincount(lab, around, n_labels) <= sharpness * np.bincount(lab, value, n_labels)
    # a ridge on a level background: brighter than the scene 2 px away on both sides across
    # its axis by at least the low threshold, and by more than twice the difference of the
    # two sides (an edge such as the limb, even with a bright haze line on it, is much
    # brighter on one side than on the other)
    across = 0.5 * np.arctan2(2.0 * sxy, sxx - syy) + np.pi / 2.0  # radians, image axes
    step_x = np.rint(2.0 * np.cos(across)).astype(np.int64)[lab]
    step_y = np.rint(2.0 * np.sin(across)).astype(np.int64)[lab]
    height = stack.shape[0]
    raw_sum = np.bincount(lab, stack[ys, xs].astype(np.float64), n_labels)
    side_mean = []
    for sign in (1, -1):
        y2, x2 = ys + sign * step_y, xs + sign * step_x
        inside = (y2 // rows == ys // rows) & (y2 >= 0) & (y2 < height) & (x2 >= 0) & (x2 < samples)
        side = stack[np.clip(y2, 0, height - 1), np.clip(x2, 0, samples - 1)].astype(np.float64)
        counted = np.bincount(lab, inside.astype(np.float64), n_labels)
        side_mean.append(np.where(counted > 0, np.bincount(lab, np.where(inside, side, 0.0), n_labels)
                                  / np.maximum(counted, 1.0), np.nan))
    side_a, side_b = side_mean  # NaN where a side lies wholly outside the framelet: no track
    need = np.bincount(lab, low_thresholds[(ys // rows) % n_bands].astype(np.float64), n_labels) / safe
    height_above = raw_sum / safe - np.maximum(side_a, side_b)
    with np.errstate(invalid="ignore"):
        ridge = (height_above >= need) & (height_above > 2.0 * np.abs(side_a - side_b))
    # sharper than the optics: the pixels 1 px across, outside the component, stand at most
    # HIT_TRACK_MAX_SHOULDER of its height above the sides (a blurred cloud band more)
    shoulder_sum = np.zeros(n_labels)
    shoulder_count = np.zeros(n_labels)
    for sign in (1, -1):
        dy1 = sign * np.rint(np.sin(across)).astype(np.int64)[lab]
        dx1 = sign * np.rint(np.cos(across)).astype(np.int64)[lab]
        y1s, x1 = ys_sep + dy1, np.clip(xs + dx1, 0, samples - 1)
        y1s = np.clip(y1s, 0, labels.shape[0] - 1)
        outside = labels[y1s, x1] != lab
        outside &= (y1s % (rows + 1) != rows) & (xs + dx1 >= 0) & (xs + dx1 < samples)
        y1 = y1s - y1s // (rows + 1)
        shoulder_sum += np.bincount(lab, np.where(outside, stack[y1, x1], 0).astype(np.float64), n_labels)
        shoulder_count += np.bincount(lab, outside.astype(np.float64), n_labels)
    shoulder = shoulder_sum / np.maximum(shoulder_count, 1.0) - (side_a + side_b) / 2.0
    ridge &= (shoulder_count == 0) | (shoulder <= HIT_TRACK_MAX_SHOULDER * height_above)
    track = seeded & (minor_sd <= HIT_TRACK_MAX_SD_PX) & (major_sd >= HIT_TRACK_MIN_SD_PX) & sharp & ridge
    keep = track[lab]
    return ys[keep], xs[keep], int(track.sum())


def detect_hits(framelets: np.ndarray, *, k_sigma: float = HIT_K_SIGMA, min_excess: int = HIT_MIN_EXCESS,
                max_pixels: int = HIT_MAX_PIXELS, sharpness: float = HIT_SHARPNESS,
                columns: slice | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Particle hits and hot pixels in companded uint8 framelets (n_frames, n_bands, rows, samples).

    Returns (hits, hot, info): ``hits`` bool per pixel (compact, sharp spikes), ``hot`` bool
    (n_bands, rows, samples): pixels spiking in >= HOT_FRACTION of a band's frames (at
    least 3). No neighbourhood reaches into another framelet: medians are taken framelet
    by framelet (edges replicated), and the 5x5 / 3x3 sums around the (sparse)
    candidates skip pixels outside the candidate's framelet.
    """
    if framelets.dtype != np.uint8 or framelets.ndim != 4:
        raise CalibrationError("hit detection needs uint8 framelets (n_frames, n_bands, rows, samples)")
    n_frames, n_bands, rows, samples = framelets.shape
    cols = columns if columns is not None else slice(0, samples)
    stack = np.ascontiguousarray(framelets).reshape(-1, samples)
    median = np.empty_like(stack)
    for i in range(n_frames * n_bands):
        cv2.medianBlur(stack[i * rows:(i + 1) * rows], 5, dst=median[i * rows:(i + 1) * rows])
    # robust noise per band: MAD of |raw - median| on every third row of the photoactive area
    deviation = cv2.absdiff(stack[::3, cols], median[::3, cols])
    band_of_row = (np.arange(0, stack.shape[0], 3) // rows) % n_bands
    mad = np.empty(n_bands)
    for b in range(n_bands):
        hist = np.bincount(deviation[band_of_row == b].ravel(), minlength=256)
        mad[b] = np.searchsorted(np.cumsum(hist), hist.sum() / 2.0)
    sigma = 1.4826 * np.maximum(mad, 1.0)
    thresholds = np.maximum(np.ceil(k_sigma * sigma), min_excess).astype(np.int64)
    excess = cv2.subtract(stack, median)  # uint8, saturating at 0
    if np.all(thresholds == thresholds[0]):
        _, candidate = cv2.threshold(excess, float(thresholds[0] - 1), 1, cv2.THRESH_BINARY)
    else:
        candidate = (excess.reshape(framelets.shape) >= thresholds[None, :, None, None].astype(np.uint8))
        candidate = candidate.reshape(excess.shape).view(np.uint8)
    candidate[:, : cols.start] = 0
    candidate[:, cols.stop:] = 0
    points = cv2.findNonZero(candidate)
    hits = np.zeros(framelets.shape, bool)
    hot = np.zeros((n_bands, rows, samples), bool)
    min_count = max(3, math.ceil(HOT_FRACTION * n_frames))
    n_candidates = 0 if points is None else len(points)
    if points is not None:
        points = points.reshape(-1, 2)  # (x, y) pairs; OpenCV versions differ in the shape
        xs = points[:, 0].astype(np.int64)
        ys = points[:, 1].astype(np.int64)
        # compact: at most max_pixels candidates in the 5x5 window
        compact = _neighbour_sum(candidate, ys, xs, rows, 2, include_centre=True) <= max_pixels
        # sharp: the non-candidate 3x3 neighbours hold little of the excess
        calm = cv2.subtract(excess, candidate * np.uint8(255))
        around = _neighbour_sum(calm, ys, xs, rows, 1, include_centre=False).astype(np.float64)
        sharp = around <= sharpness * excess[ys, xs].astype(np.float64)
        keep = compact & sharp
        hits.reshape(-1, samples)[ys[keep], xs[keep]] = True
        # hot: the same pixel is a candidate in >= min_count frames of a band
        band = (ys // rows) % n_bands
        flat_index = (band * rows + ys % rows) * samples + xs
        repeats = np.bincount(flat_index, minlength=n_bands * rows * samples)
        hot = (repeats >= min_count).reshape(n_bands, rows, samples)
    # the fixed pattern: hot pixels too faint for one frame, and their TDI streaks
    fixed, fixed_thresholds = _fixed_pattern(excess.reshape(framelets.shape), sigma, cols)
    hot |= fixed
    # tracks: thin, long and sharp, of any length and angle (the compact test misses them)
    n_tracks = 0
    if points is not None:
        low_thresholds = np.maximum(np.ceil(HIT_TRACK_LOW_FRACTION * thresholds), 1).astype(np.uint8)
        ty, tx, n_tracks = _tracks(stack, excess, low_thresholds, ys, xs, rows, n_bands, cols, hot,
                                   sharpness)
        hits.reshape(-1, samples)[ty, tx] = True
    info = {"mad_raw": mad.tolist(), "threshold_raw": thresholds.astype(int).tolist(), "k_sigma": k_sigma,
            "min_excess_raw": min_excess, "max_pixels_5x5": max_pixels, "sharpness": sharpness,
            "hot_min_frames": min_count, "candidates": n_candidates, "tracks": n_tracks,
            "track_low_fraction": HIT_TRACK_LOW_FRACTION, "track_max_sd_px": HIT_TRACK_MAX_SD_PX,
            "track_min_sd_px": HIT_TRACK_MIN_SD_PX, "fixed_pattern_threshold_raw": fixed_thresholds,
            "fixed_pattern_px": int(fixed.sum())}
    return hits, hot, info


def _hits_inplace(cal: CalibratedImage, **kwargs: Any) -> dict[str, Any]:
    if cal.source is None:
        raise CalibrationError("particle-hit detection needs the raw image this was decompanded from",
                               path=cal.raw_path, hint="calibrate a RawImage from junoproc.load")
    cols = photoactive_columns(cal.meta.sampling_factor)
    hits, hot, info = detect_hits(cal.source.framelets, columns=cols, **kwargs)
    info["mad_raw"] = dict(zip(cal.meta.filters, info["mad_raw"], strict=True))
    info["threshold_raw"] = dict(zip(cal.meta.filters, info["threshold_raw"], strict=True))
    flags = _flags(cal)
    flags[hits] |= FLAG_PARTICLE_HIT
    flags |= (hot * np.uint8(FLAG_HOT))[None]
    info.update(hits=int(hits.sum()),
                hot_px={band: int(hot[b].sum()) for b, band in enumerate(cal.meta.filters)})
    return info


def flag_particle_hits(cal: CalibratedImage, **kwargs: Any) -> CalibratedImage:
    """Flag particle hits and hot pixels invalid (values untouched); returns a new image.

    Keyword arguments are those of :func:`detect_hits` (k_sigma, min_excess, max_pixels, sharpness).
    """
    _require(cal, "particle_hits", needs=("decompand",))
    new = replace(cal, flags=_flags(cal).copy())
    return _with(new, "particle_hits", _hits_inplace(new, **kwargs))


def inpaint(cal: CalibratedImage, *, radius_px: float = 2.0) -> CalibratedImage:
    """A copy with invalid photoactive pixels (not saturated ones) filled from their neighbours.

    ``flags`` are kept, so ``valid`` still tells which values were invented.
    """
    if "inpaint" in cal.steps:
        raise CalibrationError("calibration step 'inpaint' was already applied", path=cal.raw_path,
                               hint="apply each step once")
    cols = photoactive_columns(cal.meta.sampling_factor)
    data = cal.data.copy()
    flags = _flags(cal)
    fill = (flags & ~np.uint8(FLAG_SATURATED | FLAG_NOT_PHOTOACTIVE)) != 0
    fill &= (flags & FLAG_SATURATED) == 0
    count = 0
    for f in range(data.shape[0]):
        for b in range(data.shape[1]):
            mask = fill[f, b, :, cols]
            if mask.any():
                region = np.ascontiguousarray(data[f, b, :, cols])
                data[f, b, :, cols] = cv2.inpaint(region, mask.astype(np.uint8), radius_px, cv2.INPAINT_TELEA)
                count += int(mask.sum())
    return _with(replace(cal, data=data), "inpaint", {"method": "cv2.INPAINT_TELEA", "radius_px": radius_px,
                                                      "filled_px": count})


# ---------------------------------------------------------------------------------------
# Exposure, radiance, reflectance
# ---------------------------------------------------------------------------------------


def _exposure_inplace(cal: CalibratedImage) -> dict[str, Any]:
    exposure = cal.meta.exposure_ms
    if not (math.isfinite(exposure) and exposure > 0):
        raise CalibrationError(f"EXPOSURE_DURATION {exposure} ms is not positive", path=cal.raw_path,
                               hint="the label is damaged")
    np.multiply(cal.data, np.float32(1.0 / exposure), out=cal.data)
    return {"exposure_ms": exposure, "tdi_stages": cal.meta.tdi_stages,
            "rule": "DN / EXPOSURE_DURATION; with TDI the label's exposure is already the total integration"}


def normalise_exposure(cal: CalibratedImage) -> CalibratedImage:
    """DN -> DN/ms (EXPOSURE_DURATION, which already includes TDI); returns a new image."""
    _require(cal, "exposure", needs=("decompand",))
    new = _copy(cal)
    info = _exposure_inplace(new)
    return _with(new, "exposure", info, units="DN/ms")


def _radiance_inplace(cal: CalibratedImage) -> dict[str, Any]:
    factors = {}
    for b, band in enumerate(cal.meta.filters):
        factor = 1000.0 / RESPONSIVITY_DN_PER_S[band]  # DN/ms -> DN/s -> W/m^2/sr
        cal.data[:, b] *= np.float32(factor)
        factors[band] = factor
    return {"responsivity_dn_per_s_per_w_m2_sr": {b: RESPONSIVITY_DN_PER_S[b] for b in cal.meta.filters},
            "source": "MSSS Junocam Calibration Report (2010), section 5.1", "factor_per_dn_per_ms": factors}


def to_radiance(cal: CalibratedImage) -> CalibratedImage:
    """DN/ms -> in-band radiance W/m^2/sr; returns a new image."""
    _require(cal, "radiance", needs=("exposure",))
    new = _copy(cal)
    info = _radiance_inplace(new)
    return _with(new, "radiance", info, units="W/m^2/sr")


def _solar_distance(cal: CalibratedImage, solar_distance_km: float | None) -> float:
    d = solar_distance_km if solar_distance_km is not None else cal.meta.solar_distance_km
    if d is None or not (math.isfinite(d) and d > 0):
        raise CalibrationError("no solar distance for I/F", path=cal.meta.metadata_path or cal.raw_path,
                               hint="the label lacks SOLAR_DISTANCE; pass solar_distance_km=")
    return float(d)


def reflectance_factor(band: str, solar_distance_km: float) -> float:
    """I/F per in-band radiance unit (W/m^2/sr) for ``band`` at ``solar_distance_km``."""
    d_au = solar_distance_km / AU_KM
    return math.pi * d_au * d_au / SOLAR_IRRADIANCE_1AU_W_M2[band.upper()]


def _reflectance_inplace(cal: CalibratedImage, solar_distance_km: float) -> dict[str, Any]:
    factors = {}
    for b, band in enumerate(cal.meta.filters):
        factors[band] = reflectance_factor(band, solar_distance_km)
        cal.data[:, b] *= np.float32(factors[band])
    return {"solar_distance_km": solar_distance_km, "solar_distance_au": solar_distance_km / AU_KM,
            "solar_irradiance_1au_w_m2": {b: SOLAR_IRRADIANCE_1AU_W_M2[b] for b in cal.meta.filters},
            "bandpass_nm": {b: list(BANDPASS_NM[b]) for b in cal.meta.filters},
            "source": "ASTM E-490 AM0 spectrum over nominal band passes (approximate, see calibrate.py)",
            "factor_per_radiance": factors}


def to_reflectance(cal: CalibratedImage, *, solar_distance_km: float | None = None) -> CalibratedImage:
    """In-band radiance -> I/F (solar distance from the label unless given); returns a new image."""
    _require(cal, "reflectance", needs=("radiance",))
    d = _solar_distance(cal, solar_distance_km)
    new = _copy(cal)
    info = _reflectance_inplace(new, d)
    return _with(new, "reflectance", info, units="I/F")


# ---------------------------------------------------------------------------------------
# The whole chain
# ---------------------------------------------------------------------------------------


def calibrate(raw: RawImage, *, units: str = "DN/ms", dark: bool = True, flat: bool = True,
              bad_pixels: bool = True, particle_hits: bool = True, decompand_method: str = "centre",
              calibration: CalibrationSet | None = None, solar_distance_km: float | None = None,
              sky_max_dn: float = SKY_MAX_DN,
              hit_options: Mapping[str, Any] | None = None) -> CalibratedImage:
    """Raw product -> calibrated framelets in ``units`` ("DN", "DN/ms", "W/m^2/sr" or "I/F").

    Runs the steps of :data:`STEPS` in order on one working copy (no per-step copies).
    ``calibrate`` on an already calibrated image raises :class:`CalibrationError`.
    """
    if units not in UNITS:
        raise CalibrationError(f"units {units!r} is not one of {UNITS}", hint="pick one of those")
    started = time.perf_counter()
    data, flags, info = _decompand_arrays(raw, decompand_method)
    provenance: dict[str, Any] = {"decompand": info}
    steps = ["decompand"]
    timings = {"decompand": time.perf_counter() - started}
    cs = _calibration_for_meta(raw.meta, raw.raw_path, calibration) if (dark or flat or bad_pixels) else None
    # a working record owning fresh arrays: every step below modifies it in place
    work = CalibratedImage(meta=raw.meta, data=data, valid=flags, saturated=flags, steps=(), units="DN",
                           raw_path=raw.raw_path, flags=flags, source=raw)

    def run(step: str, apply: Any, *args: Any, **kwargs: Any) -> None:
        tic = time.perf_counter()
        provenance[step] = apply(work, *args, **kwargs)
        steps.append(step)
        timings[step] = time.perf_counter() - tic

    if bad_pixels:
        run("bad_pixels", _bad_pixels_inplace, cs)
    if particle_hits:
        run("particle_hits", _hits_inplace, **dict(hit_options or {}))
    if dark:
        run("dark", _dark_inplace, cs, sky_max_dn)
    if flat:
        run("flat", _flat_inplace, cs)
    out_units = "DN"
    if units != "DN":
        run("exposure", _exposure_inplace)
        out_units = "DN/ms"
    if units in ("W/m^2/sr", "I/F"):
        run("radiance", _radiance_inplace)
        out_units = "W/m^2/sr"
    if units == "I/F":
        run("reflectance", _reflectance_inplace, _solar_distance(work, solar_distance_km))
        out_units = "I/F"
    tic = time.perf_counter()
    flags = _flags(work)
    valid, saturated = flags == 0, (flags & FLAG_SATURATED) != 0
    timings["masks"] = time.perf_counter() - tic
    provenance["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    return replace(work, steps=tuple(steps), units=out_units, provenance=MappingProxyType(provenance),
                   valid=valid, saturated=saturated)

