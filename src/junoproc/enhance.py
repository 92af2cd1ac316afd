"""Enhancement: photometric correction, colour balance, tone curves, local contrast, presets.

A linear map (float32 ``(H, W, B)``, one band per filter *name*, NaN where nothing was
seen, plus backplanes on the same grid) becomes a :class:`Composite` (16-bit and 8-bit
RGB on the same pixel grid, a validity mask and the fully resolved parameters).

Dtype rules (scikit-image style)
--------------------------------
- Inputs of any real dtype are read as float32; the input array is never modified.
- Photometric models and gains are float32 arrays of the backplanes' shape.
- Work is float32 throughout; outputs are ``uint16`` (0..65535) and ``uint8`` (0..255),
  rounded to nearest. Invalid pixels (NaN in any band) are 0 with ``alpha`` False.

Order of operations (every step can be switched off by its parameters)::

    linear -> bands in display order, by name (R, G, B or the single band)
           -> photometric gain (backplanes) x flatten gain (low-pass luminance)
           -> band gains (perijove weights | grey world | region | a shared balance)
           -> black/white levels                     (one fused pass, NaN -> 0)
           -> [illumination level: edge-preserving low-pass of the luminance; with
               lat/lon/incidence/emission backplanes and a night side lit by Jupiter,
               a fitted light model (Minnaert sunlight + Lambert Jupiter-light) times a
               low-pass of the albedo, the night side keeping all its albedo patterns]
           -> [denoise: dark regions' luminance from all bands by SNR, guided filter
               with the local noise variance as eps; added as a grey shift]
           -> [lift: a monotone curve of the illumination level (sunlit asinh, lifted
               night floor, smooth maximum): no seam at the terminator]
           -> no local operation: gamma per channel (natural)
              else CIELAB from linear RGB, gamma applied on L, then
                   L:   CLAHE, unsharp mask
                   a,b: chroma denoise (dark-weighted, blurred at 1/3 size),
                        saturation (faded in the dark)
                   -> sRGB
           -> display range: negative channels moved towards luma (hue kept), soft
              shoulder on the brightest channel (all three scaled: hue kept)
           -> uint16 / uint8, 0 where invalid

Speed: float32 throughout, OpenCV for everything whole-image, and the pointwise steps in
strips of ~1 Mpx so temporaries stay small (fresh full-size arrays cost page faults on
every call); see benchmarks/bench_enhance.py.

Bands are mapped to colours **by name** (RED->R, GREEN->G, BLUE->B); a single band (e.g.
METHANE) is rendered grey or through a colour map. Positions are never assumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from .errors import EnhanceError
from .io import LinearMap
from .runtime import thread_map

__all__ = [
    "COLOUR_WEIGHT_ERAS",
    "ENHANCE_BACKPLANES",
    "PRESETS",
    "BalanceParams",
    "BandValues",
    "ClaheParams",
    "ColourBalance",
    "Composite",
    "DenoiseParams",
    "EnhanceParams",
    "FlattenParams",
    "HighlightParams",
    "LiftParams",
    "PhotometryParams",
    "SharpenParams",
    "StretchParams",
    "WeightEra",
    "apply_overrides",
    "colour_balance_from",
    "colour_weights_for",
    "enhance",
    "enhance_file",
    "fit_minnaert_k",
    "fit_photometric_poly",
    "fit_terminator_colour",
    "terminator_colour_gain",
    "guided_filter",
    "lambert",
    "lommel_seeliger",
    "minnaert",
    "params_from_dict",
    "params_to_dict",
    "photometric_gain",
    "poly_model",
    "preset_params",
    "smooth_floor",
]

#: Filter names junoproc knows.
KNOWN_BANDS = ("RED", "GREEN", "BLUE", "METHANE")
#: Rec.709 luminance of linear R, G, B.
LUMA_RGB = (0.2126, 0.7152, 0.0722)
_F32 = np.float32

# --------------------------------------------------------------------------- photometry


def smooth_floor(x: np.ndarray, floor: float) -> np.ndarray:
    """A smooth ``max(x, floor)``: ~x well above ``floor``, ~floor below it, C-infinity.

    ``0.5 * (x + floor + sqrt((x - floor)**2 + (floor/2)**2))``: equals ``1.25 * floor`` at
    ``x = floor``, is within 1.1% of ``x`` for ``x >= 3 * floor`` and tends to ``floor`` for
    ``x -> -inf``. Used to damp photometric corrections near the terminator and limb
    without the visible contour a hard clamp leaves after local contrast enhancement.
    """
    x = np.asarray(x, _F32)
    f = _F32(floor)
    d = np.array(x, dtype=_F32, copy=True)  # an array even for 0-d input (in-place ops below)
    d -= f
    d *= d
    d += _F32(0.25) * f * f
    np.sqrt(d, out=d)
    d += x
    d += f
    d *= _F32(0.5)
    return d


def lambert(mu0: np.ndarray) -> np.ndarray:
    """Lambert model brightness ``mu0`` (= cos i). Corrected image = image / model."""
    return np.asarray(mu0, _F32).copy()


def lommel_seeliger(mu0: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Lommel-Seeliger model brightness ``mu0 / (mu0 + mu)`` (mu0 = cos i, mu = cos e)."""
    mu0 = np.asarray(mu0, _F32)
    mu = np.asarray(mu, _F32)
    return mu0 / (mu0 + mu)


def minnaert(mu0: np.ndarray, mu: np.ndarray, k: float) -> np.ndarray:
    """Minnaert model brightness ``mu0**k * mu**(k - 1)``; k = 1 is Lambert."""
    mu0 = np.asarray(mu0, _F32)
    mu = np.asarray(mu, _F32)
    return np.power(mu0, _F32(k)) * np.power(mu, _F32(k - 1.0))


def _poly_terms(degree: int, with_mu: bool) -> list[tuple[int, int]]:
    """Exponents (i, j) of mu0**i * mu**j with i + j <= degree (j = 0 without mu)."""
    return [
        (i, j)
        for total in range(degree + 1)
        for i in range(total, -1, -1)
        for j in [total - i]
        if with_mu or j == 0
    ]


def poly_model(mu0: np.ndarray, mu: np.ndarray | None, coeffs: Sequence[float], degree: int) -> np.ndarray:
    """Evaluate ``sum c_ij mu0**i mu**j`` (i + j <= degree; terms ordered by total degree,
    then by descending i; without ``mu`` only the mu0 terms)."""
    mu0 = np.asarray(mu0, _F32)
    terms = _poly_terms(degree, mu is not None)
    if len(coeffs) != len(terms):
        raise EnhanceError(f"{len(coeffs)} polynomial coefficients for {len(terms)} terms")
    p0: list[np.ndarray] = [mu0] * (degree + 1)
    for i in range(2, degree + 1):
        p0[i] = p0[i - 1] * mu0
    p1: list[np.ndarray] = []
    if mu is not None:
        mu = np.asarray(mu, _F32)
        p1 = [mu] * (degree + 1)
        for j in range(2, degree + 1):
            p1[j] = p1[j - 1] * mu
    out = np.full(mu0.shape, _F32(coeffs[0]), _F32)  # the (0, 0) term comes first
    for c, (i, j) in zip(coeffs[1:], terms[1:], strict=True):
        term = p0[i] if j == 0 else (p1[j] if i == 0 else p0[i] * p1[j])
        if term.ndim == 0 or term.size < 64:
            out += _F32(c) * term
        else:
            cv2.scaleAdd(term, float(c), out, dst=out)
    return out


def fit_photometric_poly(
    brightness: np.ndarray,
    mu0: np.ndarray,
    mu: np.ndarray | None = None,
    *,
    degree: int = 2,
    mu0_floor: float = 0.1,
    mu_floor: float = 0.1,
    lower_bound: np.ndarray | None = None,
) -> tuple[float, ...]:
    """Least-squares polynomial in (mu0, mu) fitted to the image's own brightness.

    Uses finite pixels with ``mu0 > mu0_floor`` and ``mu > mu_floor`` (arrays of any equal
    shape; pass a subsample for speed), refits once without residuals beyond 3 robust
    sigmas (storms, moons). Returns coefficients in :func:`poly_model` order.

    ``lower_bound`` (bool, same shape) marks samples that are only lower bounds (sensor
    saturated): they never pull the model down, they only keep it from passing below
    them (censored least squares: squared residuals of the exact samples plus squared
    shortfalls ``max(0, b - model)`` of the bounds, minimised by refitting on the violated
    bounds until that set settles).
    """
    b = np.asarray(brightness, np.float64).ravel()
    m0 = np.asarray(mu0, np.float64).ravel()
    ok = np.isfinite(b) & np.isfinite(m0) & (m0 > mu0_floor)
    bound = np.zeros(b.shape, bool) if lower_bound is None else np.asarray(lower_bound, bool).ravel()
    m1 = None
    if mu is not None:
        m1 = np.asarray(mu, np.float64).ravel()
        ok &= np.isfinite(m1) & (m1 > mu_floor)
    terms = _poly_terms(degree, mu is not None)
    if ok.sum() < 4 * len(terms):
        raise EnhanceError(
            f"too few lit pixels ({int(ok.sum())}) to fit a degree-{degree} photometric polynomial",
            hint="use photometry=lambert or photometry=none",
        )
    cols = [m0[ok] ** i * (m1[ok] ** j if m1 is not None else 1.0) for i, j in terms]
    a = np.stack(cols, axis=1)
    y = b[ok]
    censored = bound[ok]
    exact = ~censored
    if exact.sum() < 4 * len(terms):
        raise EnhanceError(
            f"too few unsaturated lit pixels ({int(exact.sum())}) to fit a degree-{degree} "
            "photometric polynomial",
            hint="use photometry=lambert or photometry=none",
        )
    keep = exact.copy()
    coef = np.zeros(len(terms))
    for _ in range(2):
        active = np.zeros(y.shape, bool)
        for _ in range(20):  # Newton steps: refit on the bounds the fit violates
            use = keep | active
            coef = np.linalg.lstsq(a[use], y[use], rcond=None)[0]
            now = censored & (y > a @ coef)
            if np.array_equal(now, active):
                break
            active = now
        resid = y - a @ coef
        sigma = 1.4826 * np.median(np.abs(resid[keep])) + 1e-30
        new_keep = exact & (np.abs(resid) < 3 * sigma)
        if new_keep.sum() < 4 * len(terms):
            break
        keep = new_keep
    return tuple(float(c) for c in coef)


def fit_minnaert_k(
    brightness: np.ndarray,
    mu0: np.ndarray,
    mu: np.ndarray,
    *,
    mu0_floor: float = 0.1,
    mu_floor: float = 0.1,
    k_range: tuple[float, float] = (0.3, 1.5),
) -> float:
    """Minnaert k from the image: slope of ``ln(I mu)`` against ``ln(mu0 mu)`` (clamped)."""
    b = np.asarray(brightness, np.float64).ravel()
    m0 = np.asarray(mu0, np.float64).ravel()
    m1 = np.asarray(mu, np.float64).ravel()
    ok = np.isfinite(b) & (b > 0) & (m0 > mu0_floor) & (m1 > mu_floor)
    if ok.sum() < 16:
        raise EnhanceError("too few lit pixels to fit Minnaert k", hint="set photometry.k.<BAND>=0.9")
    x = np.log(m0[ok] * m1[ok])
    y = np.log(b[ok] * m1[ok])
    if np.ptp(x) < 1e-6:
        return 1.0
    k = float(np.polyfit(x, y, 1)[0])
    return float(min(max(k, k_range[0]), k_range[1]))


#: cos(incidence) grid of the gain tables: -1 .. 1, step 0.001.
_GAIN_TABLE_MU0 = 2049
_MU0_GRID = np.linspace(-1.0, 1.0, _GAIN_TABLE_MU0)
#: cos(incidence) bin edges of the terminator colour fit: fine where the colour changes.
_COLOUR_EDGES = np.concatenate([np.arange(0.0, 0.2, 0.005), np.arange(0.2, 1.0001, 0.025)])


#: Latitude zones of the terminator colour fit: centres every 20 deg, each fitted on the
#: samples within +-20 deg of its centre (the drift differs: at PJ44 the blue share near
#: the terminator halves at mid-latitudes but drops by a quarter only near the pole).
_COLOUR_ZONE_DEG = 20.0


def fit_terminator_colour(
    bands: np.ndarray,
    mu0: np.ndarray,
    lat_deg: np.ndarray | None = None,
    *,
    strength: float = 1.0,
    min_samples: int = 40,
    max_gain: float = 2.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-band gains in (cos(incidence), latitude) that remove the image's terminator
    colour drift: ``(Z, C, 2049)`` tables, one per latitude zone (centres
    ``info["zones_deg"]``, every 20 deg; a single zone without ``lat_deg``), on mu0 = -1 .. 1
    (step 0.001). A zone with too few samples of its own, or none where the sun is high,
    takes the nearest fitted zone's table. See :func:`_fit_colour_zone` for the fit.
    """
    x = np.asarray(bands, np.float64)
    m0 = np.asarray(mu0, np.float64).ravel()
    kw = {"strength": strength, "min_samples": min_samples, "max_gain": max_gain}
    table, info = _fit_colour_zone(x, m0, **kw)
    if lat_deg is None or not info["bins"]:
        return table[None], {**info, "zones_deg": [0.0]}
    lat = np.asarray(lat_deg, np.float64).ravel()
    centres = np.arange(-90.0 + _COLOUR_ZONE_DEG / 2, 90.0, _COLOUR_ZONE_DEG)
    fitted: dict[int, np.ndarray] = {}
    for z, c in enumerate(centres):
        sel = np.abs(lat - c) < _COLOUR_ZONE_DEG
        if sel.sum() >= 20 * min_samples:
            zt, zi = _fit_colour_zone(x[sel], m0[sel], **kw)
            if zi["bins"] and zi["ref_mu0"] >= 0.2:
                fitted[z] = zt
    if not fitted:
        return table[None], {**info, "zones_deg": [0.0]}
    # a zone without a fit of its own takes the nearest fitted zone's table
    tables = [fitted[min(fitted, key=lambda k: abs(k - z))] for z in range(len(centres))]
    own = [round(float(centres[z]), 1) for z in sorted(fitted)]
    return np.stack(tables), {**info, "zones_deg": centres.tolist(), "zones_fitted_deg": own}


def _fit_colour_zone(
    x: np.ndarray,
    m0: np.ndarray,
    *,
    strength: float = 1.0,
    min_samples: int = 40,
    max_gain: float = 2.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-band gains, as a function of cos(incidence), that remove the colour drift.

    ``bands``: ``(N, C)`` linear samples, ``mu0``: ``(N,)`` their cos(incidence). In bins of
    mu0 (0.005 wide below 0.2) the chromaticity ``c_b = median(x_b / sum x)`` is compared
    with the reference ``r_b``, the chromaticity where the sun is high (mu0 >= 0.5, or the
    image's top 30 % of mu0 on a crescent); gain ``(r_b / c_b)**strength`` keeps each
    pixel's band sum. A bin counts when it has ``min_samples`` samples and its median band
    sum is above both 0.3 % of the lit level and 10 night-side noise sigmas (mu0 < -0.17);
    below the lowest such bin the gain is held, and it fades to 1 over mu0 = 0 .. -0.03
    (night side untouched). Returns ``(C, 2049)`` gains on mu0 = -1 .. 1 (step 0.001),
    clamped to ``[1/max_gain, max_gain]``, and fit statistics.
    """
    nb = x.shape[1]
    ones = np.ones((nb, _GAIN_TABLE_MU0))
    ok = np.isfinite(x).all(axis=1) & np.isfinite(m0)
    x, m0 = x[ok], m0[ok]
    total = x.sum(axis=1)
    lit = m0 > 0
    info: dict[str, Any] = {"bins": 0}
    if np.count_nonzero(lit) < 10 * min_samples or strength <= 0:
        return ones, info
    level = float(np.percentile(total[lit], 90))
    night = total[m0 < -0.17]
    noise = 1.4826 * float(np.median(np.abs(night - np.median(night)))) if night.size >= 100 else 0.0
    floor = max(0.003 * level, 10.0 * noise, 1e-30)
    use = lit & (total > floor)
    ref_lo = min(0.5, float(np.percentile(m0[use], 70))) if np.any(use) else 0.5
    ref_sel = use & (m0 >= ref_lo)
    if np.count_nonzero(ref_sel) < min_samples:
        return ones, info
    ref = np.median(x[ref_sel] / total[ref_sel, None], axis=0)
    # samples sorted by bin once: each bin is a slice (medians do not depend on order)
    idx = np.digitize(m0, _COLOUR_EDGES) - 1
    order = np.argsort(idx, kind="stable")
    idx, x_b, total_b = idx[order], x[order], total[order]
    starts = np.searchsorted(idx, np.arange(len(_COLOUR_EDGES)))
    centres, logs = [], []
    for b in range(len(_COLOUR_EDGES) - 1):
        xb, tb = x_b[starts[b] : starts[b + 1]], total_b[starts[b] : starts[b + 1]]
        if tb.size < min_samples or np.median(tb) < floor:
            continue
        pos = tb > 0
        chroma = np.median(xb[pos] / tb[pos, None], axis=0)
        if np.all(chroma > 0):
            centres.append(0.5 * (_COLOUR_EDGES[b] + _COLOUR_EDGES[b + 1]))
            logs.append(np.log(ref / chroma))
    if len(centres) < 3:
        return ones, info
    lg = np.asarray(logs).T  # (C, n)
    if lg.shape[1] >= 3:  # light smoothing along mu0 (3-bin running mean, ends kept)
        lg[:, 1:-1] = (lg[:, :-2] + lg[:, 1:-1] + lg[:, 2:]) / 3.0
    lim = math.log(max_gain)
    lg = np.clip(lg * strength, -lim, lim)
    grid = np.clip(_MU0_GRID, centres[0], centres[-1])  # held beyond the measured range
    table = np.stack([np.interp(grid, centres, lg[c]) for c in range(nb)])
    t = np.clip((_MU0_GRID + 0.03) / 0.03, 0.0, 1.0)
    table *= t * t * (3.0 - 2.0 * t)  # fades to no correction on the night side
    info = {
        "bins": len(centres),
        "ref_mu0": round(ref_lo, 4),
        "mu0_range": [round(centres[0], 4), round(centres[-1], 4)],
        "reference_chromaticity": [round(float(v), 4) for v in ref],
        "gain_min": [round(float(v), 4) for v in np.exp(lg.min(axis=1))],
        "gain_max": [round(float(v), 4) for v in np.exp(lg.max(axis=1))],
    }
    return np.exp(table), info


def terminator_colour_gain(
    incidence_deg: np.ndarray, table: np.ndarray, lat_deg: np.ndarray | None = None
) -> np.ndarray:
    """Per-band gains ``(..., C)`` of a :func:`fit_terminator_colour` table at each pixel:
    linear in cos(incidence) and, between the centres of latitude zones, in latitude
    (``lat_deg`` is needed when there is more than one zone); 1 where the incidence is NaN."""
    tables = np.asarray(table, _F32)
    tables = tables.reshape(-1, tables.shape[-2], _GAIN_TABLE_MU0)
    inc = np.asarray(incidence_deg, _F32)
    if tables.shape[0] == 1:
        return _colour_lookup(inc, tables[0])
    if lat_deg is None:
        raise EnhanceError("a terminator colour table with latitude zones needs lat_deg")
    pos = (np.asarray(lat_deg, np.float64) + 90.0) / _COLOUR_ZONE_DEG - 0.5  # zone index
    pos = np.clip(np.nan_to_num(pos, nan=0.0), 0, tables.shape[0] - 1)
    nz, nb = tables.shape[:2]
    if inc.ndim == 2 and max(inc.shape) < 32767 and nb <= 4:
        # images: ONE bilinear lookup (cv2.remap) in a (latitude, cos i) table with
        # _ZONE_ROWS rows per zone, linear in latitude between the zone centres
        t = np.linspace(0.0, 1.0, _ZONE_ROWS + 1, dtype=_F32)[:-1, None, None]
        rows = (tables[:-1, None] * (1 - t) + tables[1:, None] * t).reshape(-1, nb, _GAIN_TABLE_MU0)
        lut = np.concatenate([rows, tables[-1:]]).transpose(0, 2, 1)  # (rows, mu0, band)
        lut = np.ascontiguousarray(np.pad(lut, ((0, 1), (0, 1), (0, 0)), mode="edge"), _F32)
        map_x = _cos_deg(np.ascontiguousarray(inc))
        map_x += _F32(1)
        map_x *= _F32((_GAIN_TABLE_MU0 - 1) / 2)
        cv2.patchNaNs(map_x, -10.0)  # outside the table: the border value, 1
        map_y = (pos * _ZONE_ROWS).astype(_F32)
        out = cv2.remap(
            lut, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(1.0,) * 4
        )
        return out.reshape(*inc.shape, nb)
    out = np.zeros((*inc.shape, tables.shape[1]), _F32)
    # linear between zone centres: zone z weighs max(0, 1 - |pos - z|); each zone's
    # lookup runs on the whole array (one cv2.remap for an image) where it weighs > 0
    lo, hi = float(pos.min(initial=0.0)), float(pos.max(initial=0.0))
    for z in range(max(0, math.floor(lo)), min(tables.shape[0] - 1, math.ceil(hi)) + 1):
        w = (_F32(1) - np.abs(pos - z)).astype(_F32)
        np.maximum(w, _F32(0), out=w)
        out += _colour_lookup(inc, tables[z]) * w[..., None]
    return out


#: Rows per latitude zone of the 2-D terminator colour table (remap quantises positions
#: to 1/32 of a row, so latitude weights are exact to 1/(32 * _ZONE_ROWS) of a zone).
_ZONE_ROWS = 32


def _colour_lookup(inc: np.ndarray, table: np.ndarray) -> np.ndarray:
    """One zone's gains ``(..., C)`` at each incidence (1 where NaN)."""
    nb = table.shape[0]
    if inc.ndim != 2 or max(inc.shape) >= 32767 or nb > 4:  # samples: np.interp per band
        mu0 = np.nan_to_num(_cos_deg(inc), nan=-10.0)
        grid = _MU0_GRID.astype(_F32)
        return np.stack([np.interp(mu0, grid, row, left=1.0).astype(_F32) for row in table], axis=-1)
    # images: one multi-channel bilinear lookup (cv2.remap) in a 1-row table
    map_x = _cos_deg(np.ascontiguousarray(inc))
    map_x += _F32(1)
    map_x *= _F32((_GAIN_TABLE_MU0 - 1) / 2)
    cv2.patchNaNs(map_x, -10.0)  # outside the table: the border value, 1
    lut = np.ascontiguousarray(np.pad(table.T[None], ((0, 1), (0, 1), (0, 0)), mode="edge"), _F32)
    out = cv2.remap(
        lut,
        map_x,
        np.zeros_like(map_x),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(1.0,) * 4,
    )
    return out.reshape(*inc.shape, nb)


#: Above this many pixels the gain is interpolated from a table of (cos i, cos e).
_GAIN_TABLE_MIN_PIXELS = 1 << 18
_GAIN_TABLE_MU = 1025  # cos e from 0 to 1, step 0.001


def photometric_gain(
    method: str,
    incidence_deg: np.ndarray,
    emission_deg: np.ndarray | None = None,
    *,
    k: float = 1.0,
    coeffs: Sequence[float] | None = None,
    degree: int = 2,
    mu0_floor: float = 0.1,
    mu_floor: float = 0.1,
) -> np.ndarray:
    """Multiplicative gain that flattens the illumination, damped near the terminator.

    ``mu0 = cos(incidence)``, ``mu = cos(emission)``. The gain is ``model(1, 1) / model(mu0,
    mu)`` (1 at normal incidence and emission) with both cosines passed through
    :func:`smooth_floor`, so it never exceeds its value at the floors; below
    ``mu0_floor`` it blends (smoothstep in mu0) to 1, i.e. no correction: the terminator
    rolls off naturally and the night side is not amplified. ``method`` is ``lambert`` |
    ``lommel_seeliger`` | ``minnaert`` (``k``) | ``poly`` (``coeffs``, ``degree``, see
    :func:`poly_model`). NaN angles give NaN gains.

    Large arrays (more than 2**18 pixels) are not evaluated pixel by pixel: the gain is
    tabulated once on a 2049 x 1025 grid of (cos i, cos e), step 0.001, and interpolated
    bilinearly (``cv2.remap``): within 1e-3 relative of the exact value, several times faster.
    """
    if method in ("lommel_seeliger", "minnaert") and emission_deg is None:
        raise EnhanceError(f"photometry {method} needs an emission_deg backplane")
    kwargs: dict[str, Any] = {
        "k": k,
        "coeffs": coeffs,
        "degree": degree,
        "mu0_floor": mu0_floor,
        "mu_floor": mu_floor,
    }
    inc = np.asarray(incidence_deg)
    if inc.ndim != 2 or inc.size < _GAIN_TABLE_MIN_PIXELS:
        mu_raw = None if emission_deg is None else _cos_deg(emission_deg)
        return _gain_exact(method, _cos_deg(inc), mu_raw, **kwargs)
    # table of the exact function, then one bilinear lookup per pixel
    grid0 = _MU0_GRID.astype(_F32)[None, :]
    if emission_deg is None:
        table = np.repeat(_gain_exact(method, grid0, None, **kwargs), 2, axis=0)
    else:
        grid1 = np.linspace(0.0, 1.0, _GAIN_TABLE_MU, dtype=_F32)[:, None]
        g0, g1 = np.broadcast_arrays(grid0, grid1)
        table = _gain_exact(method, np.ascontiguousarray(g0), np.ascontiguousarray(g1), **kwargs)
    # one replicated row and column, so the last grid value is interpolated, not border
    table = np.ascontiguousarray(np.pad(table, ((0, 1), (0, 1)), mode="edge"), _F32)
    h, w = inc.shape
    out = np.empty((h, w), _F32)

    def strip(r0: int, r1: int) -> None:
        map_x = _cos_deg(inc[r0:r1])
        map_x += _F32(1)
        map_x *= _F32((_GAIN_TABLE_MU0 - 1) / 2)
        np.minimum(map_x, _F32(_GAIN_TABLE_MU0 - 1), out=map_x)
        if emission_deg is None:
            map_y = np.zeros_like(map_x)
        else:
            map_y = _cos_deg(np.asarray(emission_deg)[r0:r1])
            map_y *= _F32(_GAIN_TABLE_MU - 1)
            np.maximum(map_y, _F32(0), out=map_y)  # NaN stays NaN
            np.minimum(map_y, _F32(_GAIN_TABLE_MU - 1), out=map_y)
        cv2.remap(
            table,
            map_x,
            map_y,
            cv2.INTER_LINEAR,
            dst=out[r0:r1],
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=float("nan"),
        )

    _each_strip(h, w, strip)
    return out


def _each_strip(h: int, w: int, fn: typing.Callable[[int, int], None]) -> None:
    """``fn(r0, r1)`` over strips of ~1 Mpx of an (h, w) image (small temporaries, reused
    by the allocator), on the cores this process may use (:func:`junoproc.runtime.thread_map`:
    OpenCV and numpy release the interpreter lock). ``fn`` must only write rows
    r0:r1 of its outputs."""
    rows = max(1, min(h, (1 << 20) // max(w, 1)))
    thread_map(lambda strip: fn(*strip), [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)])


def _gain_exact(
    method: str,
    mu0_raw: np.ndarray,
    mu_raw: np.ndarray | None,
    *,
    k: float,
    coeffs: Sequence[float] | None,
    degree: int,
    mu0_floor: float,
    mu_floor: float,
) -> np.ndarray:
    """:func:`photometric_gain` from the cosines, evaluated at every element."""
    mu0 = smooth_floor(mu0_raw, mu0_floor)
    one = np.ones(1, _F32)
    mu0_ref = smooth_floor(one, mu0_floor)
    mu: np.ndarray | None = None
    mu_ref: np.ndarray | None = None
    if mu_raw is not None:
        mu = smooth_floor(mu_raw, mu_floor)
        mu_ref = smooth_floor(one, mu_floor)
    if method == "lambert":
        model, ref = lambert(mu0), lambert(mu0_ref)
    elif method in ("lommel_seeliger", "minnaert"):
        if mu is None or mu_ref is None:
            raise EnhanceError(f"photometry {method} needs an emission_deg backplane")
        if method == "lommel_seeliger":
            model, ref = lommel_seeliger(mu0, mu), lommel_seeliger(mu0_ref, mu_ref)
        else:
            model, ref = minnaert(mu0, mu, k), minnaert(mu0_ref, mu_ref, k)
    elif method == "poly":
        if coeffs is None:
            raise EnhanceError("photometry poly needs fitted coefficients")
        model = poly_model(mu0, mu, coeffs, degree)
        ref = poly_model(mu0_ref, mu_ref, coeffs, degree)
        if not float(ref[0]) > 0:
            raise EnhanceError(
                "fitted photometric polynomial is not positive at normal incidence",
                hint="use photometry=lambert or photometry=minnaert",
            )
        # a fitted polynomial may dip towards 0 at the edge of its domain: floor it
        np.maximum(model, _F32(0.02) * ref[0], out=model)
    else:
        raise EnhanceError(f"unknown photometric method {method!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.divide(_F32(ref[0]), model, dtype=_F32)
    blend = _smoothstep(0.0, mu0_floor, mu0_raw)
    gain -= _F32(1)
    gain *= blend
    gain += _F32(1)
    return gain


def _cos_deg(angle_deg: np.ndarray) -> np.ndarray:
    """cos of an angle in degrees, float32 (OpenCV, multithreaded; NaN stays NaN)."""
    a = np.ascontiguousarray(angle_deg, _F32)
    if a.ndim == 2 and a.size >= 4096:
        return cv2.polarToCart(None, a, angleInDegrees=True)[0]
    return np.cos(np.deg2rad(a.astype(np.float64))).astype(_F32)


# --------------------------------------------------------------------------- colour weights


@dataclass(frozen=True)
class WeightEra:
    """Per-band colour weights for raw-DN-scaled data from a range of perijoves."""

    first_pj: int
    last_pj: int | None
    weights: Mapping[str, float]
    source: str

    def covers(self, perijove: int) -> bool:
        return perijove >= self.first_pj and (self.last_pj is None or perijove <= self.last_pj)

    @property
    def label(self) -> str:
        last = "" if self.last_pj is None else str(self.last_pj)
        return f"PJ{self.first_pj}-{last}"


#: Colour weights (multiplying linear DN-scaled bands) by perijove range. They compensate
#: the camera's band response and its radiation-degraded blue; they apply to data whose
#: flat field does not already remove the band response. The split between the first two
#: eras is the midpoint between the calibration epochs of the two sources (PJ28-32, PJ43).
COLOUR_WEIGHT_ERAS: tuple[WeightEra, ...] = (
    WeightEra(
        1,
        37,
        MappingProxyType({"RED": 0.902, "GREEN": 1.0, "BLUE": 1.8879, "METHANE": 1.0}),
        "K. Gill, kmgill/junocam_processing src/calib/config.toml [defaults] "
        "red/green/blue_weight, used with its PJ28 darks and PJ32 blemish masks",
    ),
    WeightEra(
        38,
        55,
        MappingProxyType({"RED": 0.768, "GREEN": 1.0, "BLUE": 2.630, "METHANE": 1.0}),
        "G. Eichstaedt's PJ43 weights (R, G, B = 0.768, 1.000, 2.630), docs/junocam.md",
    ),
    WeightEra(
        56,
        None,
        MappingProxyType({"RED": 0.768, "GREEN": 1.0, "BLUE": 2.630, "METHANE": 1.0}),
        "Eichstaedt's PJ43 weights carried forward: the blue keeps degrading from ~PJ56 "
        "and no later published value is known here; measure one with colour_balance_from "
        "or set weights.BLUE",
    ),
)


def colour_weights_for(perijove: int | None) -> WeightEra:
    """The weight era of ``perijove`` (the latest era when the perijove is unknown)."""
    if perijove is None:
        return COLOUR_WEIGHT_ERAS[-1]
    for era in COLOUR_WEIGHT_ERAS:
        if era.covers(int(perijove)):
            return era
    raise EnhanceError(f"perijove {perijove} is outside every colour-weight era", hint="PJ >= 1")


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class BandValues:
    """One optional number per filter name; ``None`` means "the default for that band"."""

    RED: float | None = None
    GREEN: float | None = None
    BLUE: float | None = None
    METHANE: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise EnhanceError(f"band value {f.name}={v} must be a positive number")

    def get(self, band: str) -> float | None:
        return getattr(self, band, None)


@dataclass(frozen=True)
class PhotometryParams:
    """Illumination correction from the incidence/emission backplanes. ``colour``: 0..1,
    how far the drift of the colour with cos(incidence) (Jupiter reddens towards the
    terminator: the blue falls to half its share) is removed, measured on the image
    itself (:func:`fit_terminator_colour`); without it, a brightness-flattened terminator
    shows as a yellow band. Needs R, G, B and a photometry method other than ``none``."""

    method: str = "none"
    mu0_floor: float = 0.1
    mu_floor: float = 0.1
    degree: int = 2
    k: BandValues = field(default_factory=BandValues)
    colour: float = 0.0

    def __post_init__(self) -> None:
        _check_range("photometry.mu0_floor", self.mu0_floor, 1e-3, 0.9)
        _check_range("photometry.mu_floor", self.mu_floor, 1e-3, 0.9)
        _check_range("photometry.degree", self.degree, 1, 4)
        _check_range("photometry.colour", self.colour, 0.0, 1.0)


@dataclass(frozen=True)
class FlattenParams:
    """Divide by a low-pass of the luminance: ``strength`` 0 (off) .. 1 (fully flat)."""

    strength: float = 0.0
    sigma_frac: float = 0.06

    def __post_init__(self) -> None:
        _check_range("flatten.strength", self.strength, 0.0, 1.0)
        _check_range("flatten.sigma_frac", self.sigma_frac, 1e-3, 1.0)


@dataclass(frozen=True)
class BalanceParams:
    """How band gains are found: ``weights`` (per-perijove table or ``weights.*``),
    ``greyworld`` (robust band means made equal), ``region`` (a pixel box made neutral:
    ``region=row0,row1,col0,col1``) or ``none``."""

    method: str = "weights"
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class StretchParams:
    """Linear levels. ``black_pct``: percentile of luminance mapped to 0 (``none``: true
    zero); ``white_pct``: percentile of the brightest channel mapped to 1. ``linked``: one
    level for all bands (keeps the balance) or one per band. ``night_pct``: with a
    ``black_pct`` and an incidence backplane, the black level is at least this percentile
    of the night side (incidence > 100 deg; per band, the largest when linked), so the
    unlit side's read noise and readout streaks map to black instead of being lifted by
    the gamma and local contrast (``none`` = off). A percentile, not median + k sigma:
    streaks are whole rows of outliers that a robust sigma does not see."""

    black_pct: float | None = None
    white_pct: float = 99.8
    linked: bool = True
    night_pct: float | None = 99.5

    def __post_init__(self) -> None:
        _check_range("stretch.white_pct", self.white_pct, 50.0, 100.0)
        if self.night_pct is not None:
            _check_range("stretch.night_pct", self.night_pct, 50.0, 100.0)
        if self.black_pct is not None:
            _check_range("stretch.black_pct", self.black_pct, 0.0, 50.0)


@dataclass(frozen=True)
class LiftParams:
    """Dark-region lift on luminance: ``asinh(Y/soft)/asinh(1/soft)`` times a gain of up to
    ``dark_gain`` where the low-passed luminance is below ``dark_level`` (fractions of the
    white level). ``soft``: ``none`` = a tenth of the median dark luminance.
    ``dark_saturation``: chroma multiplier in the dark regions (their colour is mostly
    noise at night-side signal levels; 0 = grey). ``flatten``: 0..1, how far the dark
    regions' illumination level is pulled to one constant (1: only their texture is left).
    ``scale``: window radius of the illumination level, as a fraction of the longer side
    (larger than the texture, smaller than the illumination's variation).

    The curve acts on an illumination level (a guided filter of log luminance; with
    latitude, longitude, incidence and emission backplanes and a night side that a
    Jupiter-light model explains, that model times a low-pass of the albedo) and is a
    monotone function of it alone, so the lifted night side and the sunlit side join
    without a seam; the resulting gain multiplies every pixel, so texture keeps its
    relative contrast and no halo forms along the terminator."""

    method: str = "none"
    soft: float | None = None
    dark_level: float = 0.03
    dark_gain: float = 1.0
    dark_saturation: float = 1.0
    flatten: float = 0.0
    scale: float = 0.08

    def __post_init__(self) -> None:
        _check_range("lift.dark_level", self.dark_level, 1e-6, 1.0)
        _check_range("lift.dark_gain", self.dark_gain, 1.0, 20.0)
        _check_range("lift.dark_saturation", self.dark_saturation, 0.0, 2.0)
        _check_range("lift.flatten", self.flatten, 0.0, 1.0)
        _check_range("lift.scale", self.scale, 0.005, 0.5)
        if self.soft is not None:
            _check_range("lift.soft", self.soft, 1e-9, 10.0)


@dataclass(frozen=True)
class DenoiseParams:
    """Denoising of the dark regions (weighted by darkness), in the linear domain: the
    luminance is estimated from every band by its measured signal-to-noise ratio, and its
    texture (luminance / illumination level) goes through a guided filter (window radius
    ``radius_px``, guide smoothed by ``radius_px/2``) whose ``eps`` is ``strength^2`` times
    the local noise variance (a shot + read noise model fitted on the image).
    ``strength``: 0 = off; ``chroma``: blur a/b in the dark regions (0 = off, 1 = full)."""

    strength: float = 0.0
    radius_px: int = 3
    chroma: float = 0.0

    def __post_init__(self) -> None:
        _check_range("denoise.strength", self.strength, 0.0, 20.0)
        _check_range("denoise.radius_px", self.radius_px, 1, 64)
        _check_range("denoise.chroma", self.chroma, 0.0, 1.0)


@dataclass(frozen=True)
class ClaheParams:
    """Contrast-limited adaptive histogram equalisation of the CIELAB L channel (16-bit).
    ``clip``: OpenCV clip limit (0 = off); ``tiles``: number of tiles along the longer
    side (the look does not depend on the map's resolution); ``mix``: blend with the input
    lightness (1 = CLAHE only)."""

    clip: float = 0.0
    tiles: int = 12
    mix: float = 1.0

    def __post_init__(self) -> None:
        _check_range("clahe.clip", self.clip, 0.0, 100.0)
        _check_range("clahe.tiles", self.tiles, 1, 64)
        _check_range("clahe.mix", self.mix, 0.0, 1.0)


@dataclass(frozen=True)
class SharpenParams:
    """Unsharp mask on lightness: ``L + amount * (L - gauss(L, sigma_px))``."""

    amount: float = 0.0
    sigma_px: float = 1.5

    def __post_init__(self) -> None:
        _check_range("sharpen.amount", self.amount, 0.0, 10.0)
        _check_range("sharpen.sigma_px", self.sigma_px, 0.3, 50.0)


@dataclass(frozen=True)
class HighlightParams:
    """Soft shoulder above ``knee`` (display units): values approach 1 instead of clipping;
    1 = off."""

    knee: float = 1.0

    def __post_init__(self) -> None:
        _check_range("highlight.knee", self.knee, 0.5, 1.0)


@dataclass(frozen=True)
class EnhanceParams:
    """The full recipe of a look. Override key by key with :func:`apply_overrides`.

    ``gamma``: display encoding ``v**(1/gamma)`` (per channel without local operations;
    on CIELAB lightness, chroma following sRGB, when there are); ``saturation``: CIELAB
    chroma multiplier; ``dark_floor``: CIELAB lightness (0-100) below which the CLAHE and
    saturation boosts fade out, so dark noise (night side, sky) is not equalised into
    texture or coloured; ``colormap``: rendering of a single-band map (``grey`` or an
    OpenCV colour map name)."""

    preset: str = "custom"
    photometry: PhotometryParams = field(default_factory=PhotometryParams)
    flatten: FlattenParams = field(default_factory=FlattenParams)
    weights: BandValues = field(default_factory=BandValues)
    balance: BalanceParams = field(default_factory=BalanceParams)
    stretch: StretchParams = field(default_factory=StretchParams)
    lift: LiftParams = field(default_factory=LiftParams)
    gamma: float = 2.2
    denoise: DenoiseParams = field(default_factory=DenoiseParams)
    clahe: ClaheParams = field(default_factory=ClaheParams)
    sharpen: SharpenParams = field(default_factory=SharpenParams)
    saturation: float = 1.0
    dark_floor: float = 0.0
    highlight: HighlightParams = field(default_factory=HighlightParams)
    colormap: str = "grey"

    def __post_init__(self) -> None:
        _check_range("gamma", self.gamma, 0.2, 5.0)
        _check_range("saturation", self.saturation, 0.0, 5.0)
        _check_range("dark_floor", self.dark_floor, 0.0, 50.0)
        for key, value in _choice_values(self):
            allowed = _CHOICES[key]
            if value not in allowed:
                raise EnhanceError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _colormaps() -> dict[str, int]:
    return {
        name[len("COLORMAP_") :].lower(): int(getattr(cv2, name))
        for name in dir(cv2)
        if name.startswith("COLORMAP_")
    }


_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "photometry.method": ("none", "lambert", "lommel_seeliger", "minnaert", "poly"),
        "balance.method": ("weights", "greyworld", "region", "none"),
        "lift.method": ("none", "asinh"),
        "colormap": ("grey", *sorted(_colormaps())),
    }
)


def _choice_values(p: EnhanceParams) -> Iterator[tuple[str, str]]:
    yield "photometry.method", p.photometry.method
    yield "balance.method", p.balance.method
    yield "lift.method", p.lift.method
    yield "colormap", p.colormap


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        raise EnhanceError(f"{key}={value!r} is out of range [{lo}, {hi}]")


PRESETS: Mapping[str, EnhanceParams] = MappingProxyType(
    {
        # linear colour, white-balanced, gamma only
        "natural": EnhanceParams(preset="natural"),
        # the citizen-science look: illumination flattened, strong local contrast and colour
        "enhanced": EnhanceParams(
            preset="enhanced",
            photometry=PhotometryParams(method="poly", mu0_floor=0.2, degree=2, colour=1.0),
            flatten=FlattenParams(strength=0.6, sigma_frac=0.06),
            stretch=StretchParams(black_pct=0.5, white_pct=99.8),
            gamma=2.2,
            clahe=ClaheParams(clip=4.0, tiles=12, mix=1.0),
            dark_floor=12.0,
            sharpen=SharpenParams(amount=0.7, sigma_px=1.5),
            saturation=2.0,
            highlight=HighlightParams(knee=0.85),
        ),
        # night side lit by Jupiter: dark regions lifted and denoised, sunlit parts kept
        "jupitershine": EnhanceParams(
            preset="jupitershine",
            lift=LiftParams(
                method="asinh",
                soft=None,
                dark_level=0.03,
                dark_gain=2.0,
                dark_saturation=0.25,
                flatten=0.85,
                scale=0.05,
            ),
            gamma=1.0,
            denoise=DenoiseParams(strength=0.7, radius_px=2, chroma=1.0),
            saturation=1.2,
            highlight=HighlightParams(knee=0.8),
        ),
    }
)


def preset_params(name: str) -> EnhanceParams:
    """The parameters of a named preset (``natural``, ``enhanced``, ``jupitershine``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise EnhanceError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}") from None


# --- override parsing ---------------------------------------------------------------


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type = EnhanceParams, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, tp in _hints(cls).items():
        if name == "preset" and cls is EnhanceParams:
            continue
        if _is_section(tp):
            keys.extend(_valid_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(key: str) -> EnhanceError:
    keys = _valid_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return EnhanceError(f"unknown enhancement key {key!r}", hint=f"{hint}valid keys: {', '.join(keys)}")


_NONE_WORDS = {"none", "null", "auto", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def _parse_value(key: str, tp: Any, raw: Any) -> Any:
    """Convert ``raw`` (a string from ``--set`` or a JSON value) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE_WORDS):
            return None
        return _parse_value(key, args[0], raw)
    text = raw.strip() if isinstance(raw, str) else raw
    try:
        if tp is bool:
            if isinstance(text, bool):
                return text
            if str(text).lower() in _TRUE_WORDS:
                return True
            if str(text).lower() in _FALSE_WORDS:
                return False
            raise ValueError
        if tp is int:
            if isinstance(text, float) and not text.is_integer():
                raise ValueError
            return int(float(text)) if isinstance(text, str) and "." in text else int(text)
        if tp is float:
            if isinstance(text, bool):
                raise ValueError
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if tp is str:
            if not isinstance(text, str):
                raise ValueError
            return text.lower()
        if origin is tuple:
            items = text.split(",") if isinstance(text, str) else list(text)
            item_types = typing.get_args(tp)
            if len(items) != len(item_types):
                raise ValueError
            return tuple(_parse_value(key, t, v) for t, v in zip(item_types, items, strict=True))
    except (TypeError, ValueError):
        pass
    else:
        raise EnhanceError(f"{key}: unsupported parameter type {tp}")  # pragma: no cover
    want = getattr(tp, "__name__", str(tp))
    raise EnhanceError(f"{key}={raw!r} is not a valid {want}")


def _set_path(obj: Any, parts: list[str], raw: Any, key: str) -> Any:
    hints = _hints(type(obj))
    name = parts[0]
    if name not in hints or (name == "preset" and isinstance(obj, EnhanceParams)):
        raise _unknown_key(key)
    tp = hints[name]
    if _is_section(tp):
        if len(parts) == 1:
            if isinstance(raw, Mapping):
                section = getattr(obj, name)
                for sub_key, sub_value in raw.items():
                    section = _set_path(section, [str(sub_key)], sub_value, f"{key}.{sub_key}")
                return dataclasses.replace(obj, **{name: section})
            if "method" in _hints(tp):  # "photometry=minnaert" -> photometry.method
                parts = [name, "method"]
            else:
                raise EnhanceError(
                    f"{key} is a section; set one of its keys ({key}.<key>=...)",
                    hint="valid: " + ", ".join(_valid_keys(tp, f"{key}.")),
                )
        return dataclasses.replace(obj, **{name: _set_path(getattr(obj, name), parts[1:], raw, key)})
    if len(parts) > 1:
        raise _unknown_key(key)
    return dataclasses.replace(obj, **{name: _parse_value(key, tp, raw)})


def apply_overrides(
    params: EnhanceParams, overrides: Sequence[str] | Mapping[str, Any] | None
) -> EnhanceParams:
    """Return ``params`` with overrides applied, validated.

    ``overrides`` is a sequence of ``"key=value"`` strings (``"clahe.clip=3"``,
    ``"gamma=2.2"``, ``"weights.BLUE=2.1"``, ``"photometry=minnaert"`` - a section given a
    bare value sets its ``method``; ``none``/``auto`` clear optional values) or a mapping
    ``{"clahe.clip": 3, ...}``. Unknown keys raise :class:`EnhanceError` listing the valid
    keys; bad values raise it naming the key.
    """
    if not overrides:
        return params
    items: list[tuple[str, Any]]
    if isinstance(overrides, Mapping):
        items = [(str(k), v) for k, v in overrides.items()]
    else:
        items = []
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise EnhanceError(f"override {text!r} is not key=value", hint="e.g. clahe.clip=3")
            items.append((key.strip(), value))
    for key, value in items:
        parts = [p.strip() for p in key.split(".")]
        if any(not p for p in parts):
            raise _unknown_key(key)
        if (len(parts) == 2 and parts[0] == "weights") or (len(parts) == 3 and parts[1] == "k"):
            parts[-1] = parts[-1].upper()  # band names are upper case
        params = _set_path(params, parts, value, key)
    return params


def params_to_dict(params: EnhanceParams) -> dict[str, Any]:
    """Plain nested dict (JSON-able) of ``params``."""
    return dataclasses.asdict(params)


def params_from_dict(mapping: Mapping[str, Any]) -> EnhanceParams:
    """Inverse of :func:`params_to_dict`, validated (unknown keys raise EnhanceError)."""
    mapping = dict(mapping)
    preset = str(mapping.pop("preset", "custom"))
    base = PRESETS.get(preset, EnhanceParams())
    return dataclasses.replace(apply_overrides(base, mapping), preset=preset)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ColourBalance:
    """Image-adaptive levels that make a look repeatable across images.

    For band ``b``: ``out_b = (x_b * gains[b] - black[b]) * G / white[b]`` where ``G`` is
    the per-pixel photometric x flatten gain; ``lift_soft`` is the asinh softening and
    ``lift_white`` the level mapped to 1 after the ``lift`` step (None: not used, or to be
    measured on each image). Compute one for a whole perijove with
    :func:`colour_balance_from` and pass it to :func:`enhance` for every image.
    """

    gains: Mapping[str, float]
    black: Mapping[str, float]
    white: Mapping[str, float]
    method: str = "weights"
    lift_soft: float | None = None
    lift_white: float | None = None
    n_images: int = 1

    def __post_init__(self) -> None:
        for name in ("gains", "black", "white"):
            object.__setattr__(
                self, name, MappingProxyType({str(k): float(v) for k, v in getattr(self, name).items()})
            )
        for band, w in self.white.items():
            if not (math.isfinite(w) and w > 0):
                raise EnhanceError(f"balance white level of {band} is {w}, must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "gains": dict(self.gains),
            "black": dict(self.black),
            "white": dict(self.white),
            "method": self.method,
            "lift_soft": self.lift_soft,
            "lift_white": self.lift_white,
            "n_images": self.n_images,
        }

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ColourBalance:
        try:
            return cls(
                gains=mapping["gains"],
                black=mapping["black"],
                white=mapping["white"],
                method=str(mapping.get("method", "weights")),
                lift_soft=mapping.get("lift_soft"),
                lift_white=mapping.get("lift_white"),
                n_images=int(mapping.get("n_images", 1)),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise EnhanceError(
                f"not a colour balance (missing {err})", hint="needs gains, black and white per band"
            ) from None

    def _check_bands(self, bands: Sequence[str]) -> None:
        missing = [b for b in bands if b not in self.gains or b not in self.black or b not in self.white]
        if missing:
            raise EnhanceError(
                f"colour balance has no levels for band(s) {', '.join(missing)}",
                hint=f"it was made for {', '.join(self.gains)}",
            )


@dataclass(frozen=True, eq=False)
class Composite:
    """An enhanced image on the input's pixel grid.

    ``rgb16``/``rgb8``: ``(H, W, 3)`` uint16/uint8, R,G,B; 0 where ``alpha`` is False.
    ``alpha``: ``(H, W)`` bool, True where every band was finite. ``params``: the fully
    resolved recipe (JSON-able; pass it back as ``preset=`` to get the same look).
    ``balance``: the levels measured (or given) for this image. ``stats``: measured
    numbers (clipped fractions, fitted photometry, ...). ``timings_s``: per step.
    """

    rgb16: np.ndarray
    rgb8: np.ndarray
    alpha: np.ndarray
    params: Mapping[str, Any]
    balance: ColourBalance
    stats: Mapping[str, Any]
    timings_s: Mapping[str, float]
    #: a single band shown in grey: R, G and B are equal
    grey: bool = False

    def image8(self) -> np.ndarray:
        """What to save at 8 bits: ``rgb8``, or ``(H, W)`` of a grey composite (a third of
        the bytes to encode and write; readers show it the same)."""
        return np.ascontiguousarray(self.rgb8[:, :, 0]) if self.grey else self.rgb8

    def image16(self) -> np.ndarray:
        """What to save at 16 bits: ``rgb16``, or ``(H, W)`` of a grey composite."""
        return np.ascontiguousarray(self.rgb16[:, :, 0]) if self.grey else self.rgb16

    def rgba8(self) -> np.ndarray:
        """``(H, W, 4)`` uint8 with alpha 255 on valid pixels, 0 elsewhere."""
        return np.dstack([self.rgb8, self.alpha.astype(np.uint8) * np.uint8(255)])

    def rgba16(self) -> np.ndarray:
        """``(H, W, 4)`` uint16 with alpha 65535 on valid pixels, 0 elsewhere."""
        return np.dstack([self.rgb16, self.alpha.astype(np.uint16) * np.uint16(65535)])


# --------------------------------------------------------------------------- helpers


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """``3t^2 - 2t^3`` of ``t = clip((x - lo) / (hi - lo), 0, 1)``, float32, new array."""
    t = np.subtract(x, _F32(lo), dtype=_F32)
    t *= _F32(1.0 / max(hi - lo, 1e-12))
    np.minimum(t, _F32(1), out=t)
    np.maximum(t, _F32(0), out=t)
    t2 = t * t
    t *= _F32(-2)
    t += _F32(3)
    t *= t2
    return t


def guided_filter(
    image: np.ndarray, radius_px: int, eps: float | np.ndarray, guide: np.ndarray | None = None
) -> np.ndarray:
    """Guided filter (He et al. 2010) of a float32 ``(H, W)`` image, O(1) per pixel.

    Where the guide's local variance is << ``eps`` the image is averaged over
    ``(2r+1)^2`` pixels; where it is >> ``eps`` (edges, texture) the image's structure is
    kept. ``eps`` may be an ``(H, W)`` array (e.g. the local noise variance): each window
    then uses its mean. ``guide`` defaults to the image itself; a lightly smoothed copy of
    a noisy image is a better guide (its variance measures structure, not noise).
    """
    p = np.asarray(image, _F32)
    i = p if guide is None else np.asarray(guide, _F32)
    k = (2 * radius_px + 1, 2 * radius_px + 1)

    def box(z: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(z, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i = box(i)
    var = np.maximum(box(i * i) - mean_i * mean_i, _F32(0))
    if guide is None:
        mean_p, cov = mean_i, var
    else:
        mean_p = box(p)
        cov = box(i * p) - mean_i * mean_p
    a = cov / (var + (box(np.asarray(eps, _F32)) if np.ndim(eps) else _F32(eps)))
    b = mean_p - a * mean_i
    return box(a) * i + box(b)


def _shoulder_inplace(v: np.ndarray, knee: float) -> None:
    """Soft shoulder on a flat float32 array: identity below ``knee``, then
    ``knee + (1-knee)(1 - exp(-(v-knee)/(1-knee)))`` (C1, approaches 1)."""
    if knee >= 1.0:
        return
    idx = np.flatnonzero(v > knee)
    if idx.size:
        span = _F32(1.0 - knee)
        d = (v[idx] - _F32(knee)) / span
        v[idx] = _F32(knee) + span * (_F32(1) - np.exp(-d))


def _fit_strip(rgb: np.ndarray, knee: float) -> None:
    """Bring display RGB ``(h, W, 3)`` into [0, 1] in place, hue kept.

    Negative channels (out of gamut after a saturation boost) are fixed by moving the
    pixel towards its own luma (chroma reduced, luma kept) instead of clipping channels
    one by one. Then the brightest channel passes through the soft shoulder above
    ``knee`` (``knee`` = 1: a hard limit at 1) and all three channels are scaled by the
    same factor. Max and min channel come from one HSV conversion (V = max, S = 1 - min/V).
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    v2 = cv2.extractChannel(hsv, 2)
    if cv2.minMaxLoc(cv2.extractChannel(hsv, 1))[1] > 1.0:  # S > 1 <=> a negative channel
        flat = rgb.reshape(-1, 3)
        v = v2.reshape(-1)
        mn = v * (_F32(1) - cv2.extractChannel(hsv, 1).reshape(-1))
        neg = np.flatnonzero(mn < 0)
        if neg.size:
            sub = flat[neg]
            y = np.maximum(sub @ np.asarray(LUMA_RGB, _F32), 0)[:, None]
            lo = np.minimum(mn[neg], 0)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.nan_to_num(np.clip(y / (y - lo), 0, 1), nan=0.0).astype(_F32)
            sub = np.maximum(y + t * (sub - y), 0)
            flat[neg] = sub
            v[neg] = sub.max(axis=1)
    thr = min(knee, 1.0)
    if cv2.minMaxLoc(v2)[1] <= thr:
        return
    d = cv2.subtract(v2, thr)
    np.maximum(d, _F32(0), out=d)  # v - knee above the knee, else 0
    target = cv2.subtract(v2, d)  # min(v, knee)
    if knee < 1.0:
        span = 1.0 - knee
        e = cv2.exp(cv2.multiply(d, -1.0 / span))
        cv2.addWeighted(e, -span, target, 1.0, span, dst=target)  # + span (1 - e)
    factor = cv2.divide(target, v2)  # shoulder(v) / v; 0 where v == 0
    cv2.multiply(rgb, cv2.merge([factor, factor, factor]), dst=rgb)  # numpy broadcasting: 2.5x slower


def _convert(src: np.ndarray, factor: float, depth: int) -> np.ndarray:
    """``src * factor`` converted to an OpenCV depth (rounded, saturated), one pass."""
    scalar: Any = (float(factor),) * 4
    return cv2.multiply(src, scalar, dtype=depth)


def _to_u16(rgb: np.ndarray) -> np.ndarray:
    return _convert(rgb, 65535.0, cv2.CV_16U)


def _fade_lut(lo: float, hi: float, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """256-entry float32 table of ``a + (b - a) * smoothstep(lo, hi, L)`` for L = i / 2.55."""
    ramp = _smoothstep(lo, hi, np.arange(256, dtype=_F32) / _F32(2.55))
    return (_F32(a) + _F32(b - a) * ramp).astype(_F32)


def _lab_gamma(L: np.ndarray, gamma: float) -> np.ndarray:
    """CIELAB lightness (from *linear* RGB) with the display gamma ``gamma``.

    Lab -> RGB encodes sRGB (about gamma 2.2). ``(L + 16) / 116`` is the cube root of the
    luminance, so raising it to ``2.2 / gamma`` makes the displayed luminance follow
    ``Y ** (1 / gamma)``; gamma 2.2 leaves L unchanged. Applied as a table lookup.
    """
    if abs(gamma - 2.2) < 1e-6:
        return L
    f = cv2.addWeighted(L, 1.0 / 116.0, L, 0.0, 16.0 / 116.0)
    np.maximum(f, _F32(0), out=f)
    cv2.pow(f, 2.2 / gamma, dst=f)
    cv2.addWeighted(f, 116.0, f, 0.0, -16.0, dst=f)
    np.maximum(f, _F32(0), out=f)
    return f


def _find_perijove(sidecar: Mapping[str, Any], depth: int = 0) -> int | None:
    """A perijove number from a sidecar: keys perijove / PJ / ORBIT_NUMBER, or a JunoCam
    product id (``JNCE_2022229_44C00032_V01`` -> 44), searched a few levels deep."""
    if depth > 3:
        return None
    for key in ("perijove", "PJ", "pj", "ORBIT_NUMBER"):
        if key in sidecar:
            try:
                return int(str(sidecar[key]).strip())
            except ValueError:
                pass
    for key in ("product_id", "PRODUCT_ID"):
        m = re.match(r"JN[CR][ER]_\d{7}_(\d{2})[A-Z]", str(sidecar.get(key, "")))
        if m:
            return int(m.group(1))
    for value in sidecar.values():
        if isinstance(value, Mapping):
            pj = _find_perijove(value, depth + 1)
            if pj is not None:
                return pj
    return None


def _calibrated_units(sidecar: Mapping[str, Any]) -> str | None:
    """The sidecar's radiometric unit when it says I/F or radiance (weights then default to 1)."""
    stack: list[Mapping[str, Any]] = [sidecar]
    while stack:
        cur = stack.pop()
        for key, value in cur.items():
            if isinstance(value, Mapping):
                stack.append(value)
            elif str(key).lower() in ("units", "unit", "radiometric_units") and isinstance(value, str):
                if re.search(r"I/F|radiance|reflectance|W\s*/?\s*m", value, re.IGNORECASE):
                    return value
    return None


# --------------------------------------------------------------------------- core


@dataclass(frozen=True)
class _Plan:
    """Which input band feeds which display channel, resolved from the band names."""

    names: tuple[str, ...]  # input band names
    channels: tuple[int, ...]  # input band index per display channel (3 for RGB, 1 for grey)
    out_names: tuple[str, ...]  # band name per display channel
    dropped: tuple[str, ...]


def _plan(band_names: Sequence[str]) -> _Plan:
    names = tuple(str(n).upper() for n in band_names)
    if len(set(names)) != len(names):
        raise EnhanceError(f"duplicate band names {names}")
    if all(b in names for b in ("RED", "GREEN", "BLUE")):
        chans = tuple(names.index(b) for b in ("RED", "GREEN", "BLUE"))
        dropped = tuple(n for n in names if n not in ("RED", "GREEN", "BLUE"))
        return _Plan(names, chans, ("RED", "GREEN", "BLUE"), dropped)
    if len(names) == 1:
        return _Plan(names, (0,), names, ())
    raise EnhanceError(
        f"cannot make a composite from bands {', '.join(names)}",
        hint="need RED, GREEN and BLUE (any order) or a single band such as METHANE",
    )


def _display_order(data: np.ndarray, plan: _Plan) -> tuple[np.ndarray, _Plan]:
    """The bands in display order (R, G, B, or the single band), by name, as a copy
    without arithmetic (``cv2.mixChannels``), so that every later step sees the same
    array whatever the input order was. Unused bands (a METHANE beside R, G, B) are
    dropped, and their NaN do not invalidate a pixel."""
    nb = len(plan.channels)
    if plan.channels == tuple(range(nb)) and data.shape[2] == nb:
        return data, plan
    out = np.empty((*data.shape[:2], nb), _F32)
    pairs = [v for i, c in enumerate(plan.channels) for v in (c, i)]

    def strip(r0: int, r1: int) -> None:
        cv2.mixChannels([data[r0:r1]], [out[r0:r1]], pairs)

    _each_strip(data.shape[0], data.shape[1], strip)
    return out, _Plan(plan.out_names, tuple(range(nb)), plan.out_names, plan.dropped)


@dataclass
class _Prepared:
    """Linear data after the per-pixel gains, as samples (for levels) or at full size."""

    gain: np.ndarray | None  # (H, W) or (H, W, C) per display channel; None = no gain
    stats: dict[str, Any]
    notes: list[str]
    #: terminator colour gains ``(h, w, C)`` on a grid spanning the image (bilinear, as
    #: cv2.resize to ``shape``; the full size itself when small); None = none
    colour: np.ndarray | None = None
    shape: tuple[int, int] = (0, 0)  # (H, W) of the image

    def colour_gain(
        self, rows: slice, cols: slice = slice(None), pick: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Terminator colour gains ``(h, w, C)`` of a window (``(N, C)`` with ``pick``),
        interpolated from the coarse grid for that window only (no full-size array)."""
        if self.colour is None:
            return None
        low = self.colour
        h, w = self.shape
        r, c = range(h)[rows], range(w)[cols]
        if low.shape[:2] == (h, w) or not (r and c) or max(h, w) >= 32767 or r.step < 0 or c.step < 0:
            if low.shape[:2] != (h, w):  # once: the full-size array
                low = self.colour = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
            window = low[rows, cols]
        else:  # cv2.resize's mapping, src = (dst + 0.5) * scale - 0.5, of this window
            sy, sx = low.shape[0] / h, low.shape[1] / w
            m = np.array(
                [
                    [c.step * sx, 0.0, (c.start + 0.5) * sx - 0.5],
                    [0.0, r.step * sy, (r.start + 0.5) * sy - 0.5],
                ]
            )
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            window = cv2.warpAffine(low, m, (len(c), len(r)), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            window = window.reshape(len(r), len(c), -1)
        return window if pick is None else window[pick]


def _resolve(
    params: EnhanceParams, plan: _Plan, sidecar: Mapping[str, Any], perijove: int | None
) -> tuple[EnhanceParams, dict[str, Any]]:
    """Fill the table-driven defaults (weights) and return (params, extra resolved info)."""
    info: dict[str, Any] = {}
    pj = perijove if perijove is not None else _find_perijove(sidecar)
    info["perijove"] = pj
    units = _calibrated_units(sidecar)
    era = colour_weights_for(pj)
    weights = {}
    for band in KNOWN_BANDS:
        given = params.weights.get(band)
        if given is not None:
            weights[band] = given
        elif units is not None or len(plan.channels) == 1:
            weights[band] = 1.0
        else:
            weights[band] = era.weights[band]
    if units is not None:
        info["weights_source"] = f"1.0 (data already in {units})"
    elif len(plan.channels) == 1:
        info["weights_source"] = "1.0 (single band)"
    else:
        info["weights_source"] = f"{era.label}: {era.source}" + (
            "" if pj is not None else " (perijove unknown)"
        )
    resolved = dataclasses.replace(params, weights=BandValues(**weights))
    return resolved, info


def _photometry_gain(
    params: EnhanceParams,
    plan: _Plan,
    data: np.ndarray,
    valid: np.ndarray,
    backplanes: Mapping[str, np.ndarray],
    stride: int,
    explicit: bool,
    stats: dict[str, Any],
    notes: list[str],
    bound: np.ndarray | None = None,
) -> np.ndarray | None:
    """Per-pixel photometric gain for every display channel ((H, W) or (H, W, C)), or None.
    The fits use the pixels of ``valid``; those of ``bound`` (sensor-saturated) enter the
    polynomial fit as lower bounds only."""
    ph = params.photometry
    if ph.method == "none":
        return None
    inc = backplanes.get("incidence_deg")
    emi = backplanes.get("emission_deg")
    need_emission = ph.method in ("lommel_seeliger", "minnaert")
    if inc is None or (need_emission and emi is None):
        missing = "incidence_deg" if inc is None else "emission_deg"
        if explicit:
            raise EnhanceError(
                f"photometry={ph.method} needs the {missing} backplane",
                hint="enhance a map written with backplanes, or set photometry=none",
            )
        notes.append(f"photometry {ph.method} skipped: no {missing} backplane")
        stats["photometry_applied"] = "none"
        return None
    stats["photometry_applied"] = ph.method
    h, w = valid.shape
    fit_stride = max(stride, int(math.sqrt(h * w / 60_000)))  # ~60k samples fit a few coefficients
    s = (slice(None, None, fit_stride), slice(None, None, fit_stride))
    if ph.method == "minnaert":
        mu0s = np.cos(np.deg2rad(np.asarray(inc[s], np.float64)))
        mus = np.cos(np.deg2rad(np.asarray(emi[s], np.float64))) if emi is not None else None
        ks = {}
        gains = []
        for c, band in zip(plan.channels, plan.out_names, strict=True):
            k = ph.k.get(band)
            if k is None:
                samples = np.where(valid[s], data[s][..., c], np.nan)
                k = fit_minnaert_k(samples, mu0s, mus, mu0_floor=ph.mu0_floor, mu_floor=ph.mu_floor)
            ks[band] = round(k, 4)
            gains.append(k)
        stats["minnaert_k"] = ks
        if len(set(gains)) == 1:
            return photometric_gain(
                "minnaert", inc, emi, k=gains[0], mu0_floor=ph.mu0_floor, mu_floor=ph.mu_floor
            )
        return cv2.merge(
            [
                photometric_gain("minnaert", inc, emi, k=k, mu0_floor=ph.mu0_floor, mu_floor=ph.mu_floor)
                for k in gains
            ]
        )
    if ph.method == "poly":
        seen = valid[s] if bound is None else valid[s] | bound[s]
        lum = np.where(seen, data[s][..., list(plan.channels)].mean(axis=2), np.nan)
        mu0s = np.cos(np.deg2rad(np.asarray(inc[s], np.float64)))
        mus = None if emi is None else np.cos(np.deg2rad(np.asarray(emi[s], np.float64)))
        coeffs = fit_photometric_poly(
            lum,
            mu0s,
            mus,
            degree=ph.degree,
            mu0_floor=ph.mu0_floor,
            mu_floor=ph.mu_floor,
            lower_bound=None if bound is None else bound[s],
        )
        stats["poly_coeffs"] = [round(c, 8) for c in coeffs]
        stats["poly_uses_emission"] = emi is not None
        return photometric_gain(
            "poly",
            inc,
            emi,
            coeffs=coeffs,
            degree=ph.degree,
            mu0_floor=ph.mu0_floor,
            mu_floor=ph.mu_floor,
        )
    return photometric_gain(ph.method, inc, emi, mu0_floor=ph.mu0_floor, mu_floor=ph.mu_floor)


def _mean_gain(gain: np.ndarray | None) -> np.ndarray | None:
    if gain is None or gain.ndim == 2:
        return gain
    return gain.mean(axis=2).astype(_F32)


def _prepare(
    data: np.ndarray,
    valid: np.ndarray,
    plan: _Plan,
    backplanes: Mapping[str, np.ndarray],
    params: EnhanceParams,
    explicit_photometry: bool,
    timer: _Timer,
    fit: np.ndarray | None = None,
) -> _Prepared:
    """Photometric x flatten gain of every pixel. The fits (photometric model, flatten
    low-pass, terminator colour) use the pixels of ``fit`` (default: ``valid``): the
    valid ones without a sensor-saturated band, whose values are only lower bounds."""
    stats: dict[str, Any] = {}
    notes: list[str] = []
    h, w = valid.shape
    fit = valid if fit is None else fit
    stride = max(1, int(math.sqrt(h * w / 250_000)))
    with timer("photometry"):
        gain = _photometry_gain(
            params,
            plan,
            data,
            fit,
            backplanes,
            stride,
            explicit_photometry,
            stats,
            notes,
            None if fit is valid else valid & ~fit,
        )
        if gain is not None:
            # a pixel seen but without geometry (NaN angle) gets the typical gain; pixels
            # outside the footprint get it too (harmless: they are masked)
            bad = ~np.isfinite(gain if gain.ndim == 2 else gain[:, :, 0])
            bad &= valid
            if bad.any():
                sv = gain[::stride, ::stride][valid[::stride, ::stride]]
                sv = sv[np.isfinite(sv)]
                fill = float(np.median(sv)) if sv.size else 1.0
                gain[bad] = fill
    fl = params.flatten
    if fl.strength > 0:
        with timer("flatten"):
            # low-pass luminance at <= 512 px (normalised convolution over valid pixels);
            # the gain is computed there and only the result is brought to full size
            mean_m = np.zeros((1, data.shape[2]), _F32)
            mean_m[0, list(plan.channels)] = 1.0 / len(plan.channels)
            lum = np.empty((h, w), _F32)

            def lum_strip(r0: int, r1: int) -> None:
                lum[r0:r1] = cv2.transform(data[r0:r1], mean_m).reshape(r1 - r0, w)

            _each_strip(h, w, lum_strip)
            g = _mean_gain(gain)
            if g is not None:
                np.multiply(lum, g, out=lum)
            np.copyto(lum, _F32(0), where=~fit)  # NaN and inf of unseen pixels, saturated ones
            factor = max(1, math.ceil(max(h, w) / 512))
            lh, lw = max(1, h // factor), max(1, w // factor)
            m_low = cv2.resize(fit.view(np.uint8).astype(_F32), (lw, lh), interpolation=cv2.INTER_AREA)
            y_low = cv2.resize(lum, (lw, lh), interpolation=cv2.INTER_AREA)
            sigma = max(0.5, fl.sigma_frac * max(h, w) / factor)
            num = cv2.GaussianBlur(y_low, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            den = cv2.GaussianBlur(m_low, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            low = num / np.maximum(den, _F32(1e-6))
            lit_low = low[m_low > 0.5]
            # reference: the lit level (90th percentile), not the median, which may be night
            ref = float(np.percentile(lit_low, 90)) if lit_low.size else 1.0
            ratio = low / _F32(max(ref, 1e-30))
            flat_low = np.power(np.maximum(ratio, _F32(0.3)), _F32(-fl.strength))
            # a residual correction: at most a factor 0.3**-strength, and regions far below
            # the lit level (twilight, night side, sky) are left alone, not lifted
            flat_low = _F32(1) + _smoothstep(0.1, 0.3, ratio) * (flat_low - _F32(1))
            sel = flat_low[m_low > 0.5]
            stats["flatten_gain_range"] = [
                round(float(sel.min()), 4) if sel.size else 1.0,
                round(float(sel.max()), 4) if sel.size else 1.0,
            ]
            flat_gain = (
                cv2.resize(flat_low, (w, h), interpolation=cv2.INTER_LINEAR) if factor > 1 else flat_low
            )
            if gain is None:
                gain = flat_gain
            elif gain.ndim == 2:
                gain *= flat_gain
            else:
                gain *= flat_gain[..., None]
    colour = None
    inc = backplanes.get("incidence_deg")
    if (
        params.photometry.colour > 0
        and len(plan.channels) == 3
        and stats.get("photometry_applied") not in (None, "none")
        and inc is not None
    ):
        with timer("photometry"):
            cs = max(stride, int(math.sqrt(h * w / 100_000)))  # ~100k samples: medians per bin
            s = (slice(None, None, cs), slice(None, None, cs))
            v = fit[s]
            lat = backplanes.get("lat_centric_deg")
            colour, cinfo = fit_terminator_colour(
                data[s][v][:, list(plan.channels)],
                _cos_deg(np.asarray(inc[s]))[v],
                None if lat is None else np.asarray(lat[s])[v],
                strength=params.photometry.colour,
            )
            stats["terminator_colour"] = cinfo
            colour = (
                _colour_map(np.asarray(inc), None if lat is None else np.asarray(lat), colour)
                if cinfo["bins"]
                else None
            )
    return _Prepared(gain, stats, notes, colour, (h, w))


def _colour_map(incidence_deg: np.ndarray, lat_deg: np.ndarray | None, table: np.ndarray) -> np.ndarray:
    """Terminator colour gains ``(h, w, C)`` on a grid spanning the image. The gains are
    smooth functions of cos(incidence) and latitude, so above 1024 px they are evaluated on
    a grid of 1/f the size (pixels without incidence take their neighbours' gains), to be
    brought to full size bilinearly window by window (:meth:`_Prepared.colour_gain`):
    several times cheaper than a per-pixel lookup."""
    h, w = incidence_deg.shape
    f = max(1, math.ceil(max(h, w) / 1024))
    if f == 1:
        return terminator_colour_gain(incidence_deg, table, lat_deg)
    inc_low = np.ascontiguousarray(incidence_deg[f // 2 :: f, f // 2 :: f])
    lat_low = None if lat_deg is None else np.ascontiguousarray(lat_deg[f // 2 :: f, f // 2 :: f])
    low = terminator_colour_gain(inc_low, table, lat_low)
    seen = np.isfinite(inc_low)
    if not seen.all() and seen.any():  # normalised convolution fills the unseen cells
        m = seen.astype(_F32)
        blur_m = cv2.GaussianBlur(m, (0, 0), 2.0)
        filled = cv2.GaussianBlur(low * m[..., None], (0, 0), 2.0) / np.maximum(blur_m, _F32(1e-6))[..., None]
        low = np.where(seen[..., None] | (blur_m[..., None] < 1e-3), low, filled).astype(_F32)
    return low


#: Incidence beyond which a pixel is night side (Jupiter's haze scatters light a few
#: degrees past the terminator).
_NIGHT_INCIDENCE_DEG = 100.0


def _sample(
    data: np.ndarray,
    valid: np.ndarray,
    prep: _Prepared,
    plan: _Plan,
    stride: int,
    backplanes: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(raw, gain, night) samples of the valid pixels: ``(N, C)`` per display channel and
    ``(N,)`` True on the night side (None without an incidence backplane)."""
    s = (slice(None, None, stride), slice(None, None, stride))
    v = valid[s]
    raw = data[s][v][:, list(plan.channels)].astype(_F32)
    gain = prep.gain
    if gain is None:
        g = np.ones_like(raw)
    elif gain.ndim == 2:
        g = np.repeat(gain[s][v][:, None], raw.shape[1], axis=1)
    else:
        g = gain[s][v]
    cg = prep.colour_gain(s[0], s[1], v)
    if cg is not None:
        g = g * cg
    inc = None if backplanes is None else backplanes.get("incidence_deg")
    night = None
    if inc is not None:
        with np.errstate(invalid="ignore"):
            night = np.asarray(inc[s])[v] > _NIGHT_INCIDENCE_DEG
    return raw, g, night


def _night_black(gained_raw: np.ndarray, night: np.ndarray | None, pct: float | None) -> np.ndarray | None:
    """Per band: the ``pct`` percentile of the night-side samples (None when off or when
    there are fewer than 500 of them)."""
    if night is None or pct is None or np.count_nonzero(night) < 500:
        return None
    return np.asarray(np.percentile(gained_raw[night], pct, axis=0))


def _measure_balance(
    raw: np.ndarray,
    g: np.ndarray,
    plan: _Plan,
    params: EnhanceParams,
    region_samples: np.ndarray | None,
    night: np.ndarray | None = None,
) -> ColourBalance:
    """Band gains and black/white levels from samples ``raw`` (N, C) and their gains ``g``."""
    names = plan.out_names
    method = params.balance.method
    if raw.shape[0] == 0:
        raise EnhanceError("no valid pixels to measure levels on", hint="the map is all NaN")
    corrected = raw * g
    if method == "weights" or len(names) == 1:
        gains = np.array([params.weights.get(n) or 1.0 for n in names], np.float64)
        method = "weights" if len(names) > 1 else "none"
    elif method == "none":
        gains = np.ones(len(names))
    elif method == "greyworld":
        lum = corrected.mean(axis=1)
        lo, hi = np.percentile(lum, [5, 95])
        mid = (lum >= lo) & (lum <= hi)
        means = corrected[mid].mean(axis=0) if mid.sum() >= 10 else corrected.mean(axis=0)
        gains = means[names.index("GREEN")] / np.maximum(means, 1e-30)
    elif method == "region":
        if region_samples is None or region_samples.shape[0] == 0:
            raise EnhanceError(
                "balance.region has no valid pixels", hint="balance.region=row0,row1,col0,col1"
            )
        means = region_samples.mean(axis=0)
        gains = means[names.index("GREEN")] / np.maximum(means, 1e-30)
    else:  # pragma: no cover - validated in EnhanceParams
        raise EnhanceError(f"unknown balance method {method!r}")
    gained_raw = raw * gains
    st = params.stretch
    lum_w = np.asarray(LUMA_RGB if len(names) == 3 else (1.0,), np.float64)
    if st.black_pct is None:
        black = np.zeros(len(names))
    elif st.linked:
        black = np.full(len(names), np.percentile(gained_raw @ lum_w, st.black_pct))
    else:
        black = np.percentile(gained_raw, st.black_pct, axis=0)
    if st.black_pct is not None:
        night_black = _night_black(gained_raw, night, st.night_pct)
        if night_black is not None:
            black = np.maximum(black, night_black.max() if st.linked else night_black)
    lit = (gained_raw - black) * g
    if st.linked:
        white = np.full(len(names), np.percentile(lit.max(axis=1), st.white_pct))
    else:
        white = np.percentile(lit, st.white_pct, axis=0)
    if not np.all(white > 0):
        white = np.where(white > 0, white, max(float(np.max(lit)), 1e-30))
    lift_soft = None
    if params.lift.method == "asinh":
        if params.lift.soft is not None:
            lift_soft = params.lift.soft
        else:
            y = (lit / white) @ lum_w
            dark = y[(y < params.lift.dark_level) & (y > 0)]
            level = float(np.median(dark)) if dark.size > max(10, 0.01 * y.size) else params.lift.dark_level
            lift_soft = max(level / 10.0, 1e-6)
    return ColourBalance(
        gains=dict(zip(names, gains.tolist(), strict=True)),
        black=dict(zip(names, black.tolist(), strict=True)),
        white=dict(zip(names, white.tolist(), strict=True)),
        method=method,
        lift_soft=lift_soft,
    )


def _region_samples(
    data: np.ndarray,
    valid: np.ndarray,
    prep: _Prepared,
    plan: _Plan,
    region: tuple[int, int, int, int] | None,
) -> np.ndarray | None:
    if region is None:
        return None
    r0, r1, c0, c1 = region
    h, w = valid.shape
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise EnhanceError(f"balance.region {region} is outside the {h} x {w} map")
    sub = data[r0:r1, c0:c1][..., list(plan.channels)]
    v = valid[r0:r1, c0:c1]
    out = sub[v].astype(_F32)
    if prep.gain is not None:
        gs = prep.gain[r0:r1, c0:c1][v]
        out = out * (gs[:, None] if gs.ndim == 1 else gs)
    cg = prep.colour_gain(slice(r0, r1), slice(c0, c1), v)
    if cg is not None:
        out = out * cg
    return out


def _as_inputs(
    linear: LinearMap | np.ndarray,
    band_names: Sequence[str] | None,
    backplanes: Mapping[str, np.ndarray] | None,
) -> tuple[np.ndarray, tuple[str, ...], Mapping[str, np.ndarray], Mapping[str, Any]]:
    if isinstance(linear, LinearMap):
        data = linear.data
        names = tuple(band_names) if band_names is not None else linear.band_names
        planes = backplanes if backplanes is not None else linear.backplanes
        sidecar: Mapping[str, Any] = linear.sidecar
    else:
        data = np.asarray(linear)
        if band_names is None:
            raise EnhanceError(
                "band_names are required with a bare array", hint="e.g. band_names=('BLUE','GREEN','RED')"
            )
        names = tuple(band_names)
        planes = backplanes or {}
        sidecar = {}
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or data.shape[2] != len(names):
        raise EnhanceError(f"data of shape {data.shape} does not match band names {names}")
    if data.shape[0] < 2 or data.shape[1] < 2:
        raise EnhanceError(f"map of shape {data.shape[:2]} is too small to enhance")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise EnhanceError(f"data dtype {data.dtype} is not real")
    data = np.ascontiguousarray(data, dtype=_F32)
    for key, plane in planes.items():
        if np.shape(plane) != data.shape[:2]:
            raise EnhanceError(f"backplane {key!r} has shape {np.shape(plane)}, map is {data.shape[:2]}")
    return data, names, planes, sidecar


def _resolve_preset(preset: str | EnhanceParams | Mapping[str, Any]) -> EnhanceParams:
    if isinstance(preset, EnhanceParams):
        return preset
    if isinstance(preset, Mapping):
        return params_from_dict(preset)
    return preset_params(str(preset))


def _valid_mask(data: np.ndarray) -> np.ndarray:
    """True where every band is finite."""
    h, w, nb = data.shape
    valid = np.empty((h, w), bool)
    ones = np.ones((1, nb), _F32)

    def strip(r0: int, r1: int) -> None:
        total = data[r0:r1, :, 0] if nb == 1 else cv2.transform(data[r0:r1], ones).reshape(r1 - r0, w)
        np.isfinite(total, out=valid[r0:r1])

    _each_strip(h, w, strip)
    return valid


#: Backplane of a linear map: per pixel, how many of the map's bands had a sensor-saturated
#: sample blended in (junoproc.projection); such a value is a lower bound of the signal.
SATURATED_BACKPLANE = "saturated_bands"
#: Every backplane enhancement reads (photometry and its fit, terminator colour zones, the
#: night-side black level and Jupiter-light model, sensor saturation); others are ignored.
ENHANCE_BACKPLANES = ("incidence_deg", "emission_deg", "lat_centric_deg", "lon_east_deg", SATURATED_BACKPLANE)


def _saturated_channels(data: np.ndarray, planes: Mapping[str, np.ndarray], plan: _Plan) -> np.ndarray | None:
    """``(H, W, C)`` True where a display channel's band was saturated by the sensor, or
    None when nothing was (or the map has no ``saturated_bands`` backplane).

    The backplane counts the saturated bands (k) of each pixel, not which: they are taken
    to be the pixel's k brightest bands in the map's calibrated values. All of JunoCam's
    filters share one exposure and one saturation level in DN, so the band that reached the
    ceiling is the one with the most signal; ties differ by the flat field only (a few %).
    ``data`` is the map in its own band order (all its bands, before display order)."""
    count = planes.get(SATURATED_BACKPLANE)
    if count is None:
        return None
    count = np.asarray(count)
    if count.dtype in (np.uint8, np.uint16) and not cv2.countNonZero(count.reshape(count.shape[0], -1)):
        return None  # the usual case, told without a float copy of the plane (0.1 s at 12 Mpx)
    k = np.nan_to_num(count.astype(np.float32), nan=0.0)
    rr, cc = np.nonzero(k > 0.5)
    if rr.size == 0:
        return None
    nb = data.shape[2]
    kk = np.minimum(np.rint(k[rr, cc]).astype(np.int64), nb)
    vals = np.nan_to_num(data[rr, cc].astype(np.float64), nan=-np.inf)
    rank = np.argsort(np.argsort(-vals, axis=1, kind="stable"), axis=1)  # 0 = brightest
    sat_in = rank < kk[:, None]
    out = np.zeros((*data.shape[:2], len(plan.channels)), bool)
    out[rr, cc] = sat_in[:, list(plan.channels)]
    return out if out.any() else None


def _saturated_to_top(rgb: np.ndarray, sat: np.ndarray) -> None:
    """Sensor-saturated pixels to the top of the display range, in place (display values
    in [0, 1], ``(h, W, C)``): a saturated value is "at least this bright", so the pixel
    is scaled until its brightest channel is 1 and every saturated channel is set to 1:
    white where all are, elsewhere the unsaturated channels keep their ratios to each
    other (the hue they measured; the saturated one's is unknown)."""
    rr, cc = np.nonzero(sat.any(axis=2))
    if rr.size == 0:
        return
    px = rgb[rr, cc]
    s = sat[rr, cc]
    scale = _F32(1) / np.maximum(px.max(axis=1), _F32(1e-6))
    px = np.minimum(px * scale[:, None], _F32(1))
    px[s] = 1.0
    rgb[rr, cc] = px


def _fit_mask(valid: np.ndarray, sat: np.ndarray | None) -> tuple[np.ndarray, str | None]:
    """The pixels the statistics (fits, balance, levels) use: valid and without a
    sensor-saturated band, unless that leaves fewer than 1 % of the valid ones (then all
    valid pixels, with a note)."""
    if sat is None:
        return valid, None
    fit = valid & ~sat.any(axis=2)
    n_fit, n_valid = int(np.count_nonzero(fit)), int(np.count_nonzero(valid))
    if n_fit < max(100, 0.01 * n_valid):
        return valid, f"{n_valid - n_fit} of {n_valid} pixels saturated: levels measured on all of them"
    return fit, None


def _lab_ops_needed(p: EnhanceParams) -> bool:
    return p.clahe.clip > 0 or p.sharpen.amount > 0 or p.saturation != 1.0 or p.denoise.chroma > 0


#: Incidence bins of the lightness profile that CLAHE works around (deg).
_PROFILE_STEP_DEG = 0.5
#: Fewest samples in an incidence bin of the lightness profile.
_PROFILE_MIN_SAMPLES = 30


def _incidence_profile(
    lightness: np.ndarray, valid: np.ndarray, incidence_deg: np.ndarray, floor: float
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The shading that local contrast must not see: ``q = profile(i) / plateau`` per pixel.

    ``profile(i)`` is the median lightness of the pixels at incidence ``i`` (0.5 deg bins,
    a 3-bin running mean), ``plateau`` its largest value; ``q`` (<= 1, at least ``floor``)
    is the fall-off towards the terminator that the photometric correction leaves (it
    fades to no correction there, on purpose). A function of the incidence alone, so it
    follows a curved terminator exactly and leaves belts, storms and texture untouched.
    Returns ``(q, info)``; ``q`` is None where the profile cannot be measured."""
    h, w = lightness.shape
    inc = np.asarray(incidence_deg, _F32)
    stride = max(1, int(math.sqrt(h * w / 250_000)))
    s = (slice(None, None, stride), slice(None, None, stride))
    sv = valid[s] & np.isfinite(inc[s])
    a, v = inc[s][sv].astype(np.float64), lightness[s][sv].astype(np.float64)
    if a.size < 10 * _PROFILE_MIN_SAMPLES:
        return None, {}
    lo = math.floor(float(a.min()) / _PROFILE_STEP_DEG) * _PROFILE_STEP_DEG
    nbin = int((float(a.max()) - lo) / _PROFILE_STEP_DEG) + 1
    idx = np.minimum(((a - lo) / _PROFILE_STEP_DEG).astype(np.int64), nbin - 1)
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=nbin)
    starts = np.concatenate([[0], np.cumsum(counts)])
    sorted_v = v[order]
    centres, med = [], []
    for b in np.flatnonzero(counts >= _PROFILE_MIN_SAMPLES):
        centres.append(lo + (b + 0.5) * _PROFILE_STEP_DEG)
        med.append(float(np.median(sorted_v[starts[b] : starts[b + 1]])))
    if len(centres) < 3:
        return None, {}
    prof = np.asarray(med)
    prof[1:-1] = (prof[:-2] + prof[1:-1] + prof[2:]) / 3.0
    plateau = float(prof.max())
    if not plateau > 0:
        return None, {}
    ratio = np.clip(prof / plateau, floor, 1.0)
    info = {"profile_plateau_L": round(plateau, 2), "profile_min_q": round(float(ratio.min()), 4)}
    if float(ratio.min()) > 0.98:  # nothing to unroll
        return None, info
    # one bilinear lookup per pixel in a 1-row table (1 where the incidence is NaN)
    step = _PROFILE_STEP_DEG
    grid = np.arange(centres[0], centres[-1] + 0.5 * step, step)
    table = np.interp(grid, centres, ratio).astype(_F32)[None, :]
    table = np.ascontiguousarray(np.pad(table, ((0, 1), (0, 1)), mode="edge"))
    q = np.empty((h, w), _F32)

    def strip(r0: int, r1: int) -> None:
        map_x = cv2.subtract(inc[r0:r1], float(centres[0]))
        map_x *= _F32(1.0 / step)
        np.clip(map_x, _F32(0), _F32(table.shape[1] - 2), out=map_x)  # held beyond the ends
        cv2.patchNaNs(map_x, -10.0)
        cv2.remap(table, map_x, np.zeros_like(map_x), cv2.INTER_LINEAR, dst=q[r0:r1],
                  borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)

    _each_strip(h, w, strip)
    return q, info


def _lightness_ops(
    lightness: np.ndarray,
    valid: np.ndarray,
    dark: np.ndarray | None,
    lit: np.ndarray | None,
    p: EnhanceParams,
    stats: dict[str, Any],
    timer: _Timer,
    incidence_deg: np.ndarray | None = None,
) -> np.ndarray:
    """Denoise, CLAHE, unsharp and shoulder on a lightness plane in 0..100 (float32).

    With an ``incidence_deg`` backplane, CLAHE equalises the lightness divided by its
    fall-off with incidence (:func:`_incidence_profile`) and the result is multiplied by
    it again: the terminator ramp is then no rare lightness range in the tiles it crosses,
    which the equalisation would flatten into a pale, textureless band whose edge follows
    the tile grid, and the texture in the ramp gets the same gain as on the rest of the
    disc."""
    L = lightness
    if not valid.all():  # neutral fill so tiles and kernels at the edge see no black cliff
        fill = _F32(np.median(L[::3, ::3][valid[::3, ::3]])) if valid.any() else _F32(50)
        np.copyto(L, fill, where=~valid)
    if p.clahe.clip > 0:
        with timer("clahe"):
            h, w = L.shape
            tile = max(h, w) / p.clahe.tiles
            grid = (max(1, round(w / tile)), max(1, round(h / tile)))
            q = None
            if incidence_deg is not None:
                # the unrolled ramp reaches down to the dark floor, where the CLAHE fades
                floor = min(0.9, max(0.1, 1.5 * p.dark_floor / 100.0))
                q, pinfo = _incidence_profile(L, valid, incidence_deg, floor)
                stats["clahe_profile"] = pinfo
            # 4096 levels spaced 16 apart in 16 bits, clip limit x16: OpenCV's 16-bit CLAHE
            # has 65536 bins and truncates the per-bin limit to an integer, which with the
            # full 16-bit spread makes any clip < ~4 the same; this way the limit means what
            # it means for 8-bit CLAHE, at any image size, without 8-bit banding
            clahe = cv2.createCLAHE(clipLimit=16.0 * p.clahe.clip, tileGridSize=grid)
            l16 = np.empty((h, w), np.uint16)

            def to_levels(r0: int, r1: int) -> None:
                src = L[r0:r1] if q is None else cv2.divide(L[r0:r1], q[r0:r1])
                part = l16[r0:r1]
                cv2.multiply(src, (4095 / 100,) * 4, dst=part, dtype=cv2.CV_16U)  # type: ignore[call-overload]
                np.minimum(part, np.uint16(4095), out=part)  # L > 100 would wrap in the shift
                np.left_shift(part, 4, out=part)

            _each_strip(h, w, to_levels)
            l16 = clahe.apply(l16)

            def mixed_back(r0: int, r1: int) -> None:
                eq = _convert(l16[r0:r1], 100 / 65535, cv2.CV_32F)
                Ls = L[r0:r1]
                if q is not None:  # back to the shaded lightness
                    cv2.multiply(eq, q[r0:r1], dst=eq)
                if lit is not None:  # fade out below the dark floor
                    np.subtract(eq, Ls, out=eq)
                    eq *= lit[r0:r1]
                    if p.clahe.mix < 1.0:
                        eq *= _F32(p.clahe.mix)
                    Ls += eq
                elif p.clahe.mix >= 1.0:
                    Ls[...] = eq
                else:
                    cv2.addWeighted(eq, p.clahe.mix, Ls, 1.0 - p.clahe.mix, 0.0, dst=Ls)

            _each_strip(h, w, mixed_back)
    if p.sharpen.amount > 0:
        with timer("sharpen"):
            blur = cv2.GaussianBlur(L, (0, 0), p.sharpen.sigma_px, borderType=cv2.BORDER_REFLECT)
            cv2.addWeighted(L, 1.0 + p.sharpen.amount, blur, -p.sharpen.amount, 0.0, dst=L)
    np.minimum(L, _F32(100), out=L)
    np.maximum(L, _F32(0), out=L)
    return L


def _blur_coarse_grid(z: np.ndarray, sigma: float, f: int) -> np.ndarray:
    """Gaussian blur (``sigma`` px) of an image at 1/f of its size (area-averaged down),
    to be read back with :func:`_upsample_rows`."""
    h, w = z.shape[:2]
    if f > 1 and min(h, w) >= 2 * f:  # whole cells only (the last < f rows/columns: border)
        hc, wc = h // f, w // f
        z = cv2.resize(z[: hc * f, : wc * f], (wc, hc), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(z, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)


def _upsample_rows(low: np.ndarray, f: int, r0: int, rows: int, w: int) -> np.ndarray:
    """Rows ``r0 .. r0 + rows`` of ``low`` (an image at 1/f of the size, cell ``i`` centred
    on full-size pixel ``f i + (f - 1) / 2``) interpolated bilinearly to full size."""
    if f == 1:
        return np.array(low[r0 : r0 + rows], copy=True)
    m = np.array([[1.0 / f, 0.0, 0.5 / f - 0.5], [0.0, 1.0 / f, (r0 + 0.5) / f - 0.5]])
    return cv2.warpAffine(
        low, m, (w, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _illumination_base(
    y: np.ndarray, valid: np.ndarray, floor: float, radius_frac: float = 0.02
) -> np.ndarray:
    """Edge-preserving illumination level of a luminance plane (float32, same units).

    A guided filter of ``log(y)`` with a large window and ``eps`` = 1 (log units)^2: the
    texture (a few tenths in log) is averaged away while the terminator and limb (several
    units) stay sharp, so gains derived from it leave no halos. Computed as a "fast
    guided filter": coefficients at <= 512 px, applied at full resolution.
    """
    h, w = y.shape
    logy = cv2.log(cv2.max(y, floor))
    if not valid.all():
        sub = logy[::7, ::7][valid[::7, ::7]]
        if sub.size == 0 and valid.any():
            sub = logy[valid]
        np.copyto(logy, _F32(np.median(sub)) if sub.size else _F32(math.log(floor)), where=~valid)
    factor = max(1, math.ceil(max(h, w) / 512))
    small = (
        logy
        if factor == 1
        else cv2.resize(logy, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    )
    r = max(2, round(radius_frac * max(h, w) / factor))
    k = (2 * r + 1, 2 * r + 1)
    mean = cv2.boxFilter(small, -1, k, borderType=cv2.BORDER_REFLECT)
    var = np.maximum(cv2.boxFilter(small * small, -1, k, borderType=cv2.BORDER_REFLECT) - mean * mean, 0)
    a = var / (var + _F32(1.0))
    b = mean - a * mean
    a = cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT)
    b = cv2.boxFilter(b, -1, k, borderType=cv2.BORDER_REFLECT)
    if factor > 1:
        a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    cv2.multiply(a, logy, dst=a)
    cv2.add(a, b, dst=a)
    return cv2.exp(a, dst=a)


#: Incidence (deg) over which the illumination level passes from the measured one (sunlit
#: side) to the fitted light of the night side: no sunlight at all beyond 90 deg.
_NIGHT_BLEND_DEG = (90.0, 100.0)
#: The night-side model is used when the luminance is within this factor of its level on
#: all but this fraction of the night side.
_NIGHT_MODEL_RATIO = 4.0
_NIGHT_MODEL_MAX_OUTSIDE = 0.02
#: Incidence (deg) beyond which pixels are used to fit the night side's light.
_NIGHT_FIT_DEG = 92.0


#: Longest side of the grid the modelled illumination level is made on.
_COARSE_PX = 1024


def _coarse_grid(
    y: np.ndarray, valid: np.ndarray, planes: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int] | None:
    """``(y, valid, backplanes, factor)`` on a grid ``factor`` times coarser (longest side
    <= 1024 px): ``y`` averaged over the valid part of each cell, a cell valid when more
    than half of it is, backplanes sampled at the cells' centres (longitude wraps, so it
    is not averaged). None without the backplanes the night-side model needs."""
    keys = ("incidence_deg", "emission_deg", "lat_centric_deg", "lon_east_deg")
    if any(k not in planes for k in keys):
        return None
    h, w = y.shape
    factor = max(1, math.ceil(max(h, w) / _COARSE_PX))
    if factor == 1:
        return y, valid, {k: np.asarray(planes[k]) for k in keys}, 1
    size = (max(1, w // factor), max(1, h // factor))
    frac = cv2.resize(valid.view(np.uint8).astype(_F32), size, interpolation=cv2.INTER_AREA)
    y_c = cv2.resize(y, size, interpolation=cv2.INTER_AREA)
    y_c = cv2.divide(y_c, cv2.max(frac, 1e-6))
    valid_c = frac > 0.5
    y_c[~valid_c] = 0.0
    o = factor // 2
    planes_c = {
        k: np.ascontiguousarray(np.asarray(planes[k])[o::factor, o::factor][: size[1], : size[0]], _F32)
        for k in keys
    }
    return y_c, valid_c, planes_c, factor


def _night_light(
    y: np.ndarray, valid: np.ndarray, planes: Mapping[str, np.ndarray], stride: int
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The light on the side the Sun does not reach, as a smooth function of the surface
    normal: ``I = n . v + c`` (Lambert from one distant source, Jupiter for its moons, of
    unknown direction ``v``, plus an offset), fitted (robust least squares) to the
    luminance ``y`` where the incidence is > 92 deg. ``n`` is the radial unit vector from
    the ``lat_centric_deg`` / ``lon_east_deg`` backplanes. Returns ``I`` at full size
    (smoothly floored at a tenth of its median on the fitted pixels) and fit statistics,
    or None without those backplanes or with fewer than 400 night pixels.

    Unlike a low-pass of the image, the model has no freedom at the scale of the surface
    features (4 parameters for the whole night side), so dividing by it removes the fall-off
    of the light without flattening the large albedo patterns it lit.
    """
    lat, lon, inc = (planes.get(k) for k in ("lat_centric_deg", "lon_east_deg", "incidence_deg"))
    if lat is None or lon is None or inc is None:
        return None
    s = (slice(None, None, stride), slice(None, None, stride))
    inc_s = np.asarray(inc[s], _F32)
    with np.errstate(invalid="ignore"):
        sel = (
            valid[s]
            & (inc_s > _NIGHT_FIT_DEG)
            & np.isfinite(np.asarray(lat[s]))
            & np.isfinite(np.asarray(lon[s]))
        )
    if np.count_nonzero(sel) < 400:
        return None
    la = np.radians(np.asarray(lat[s], np.float64)[sel])
    lo = np.radians(np.asarray(lon[s], np.float64)[sel])
    a = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la), np.ones_like(la)], axis=1)
    b = np.asarray(y[s], np.float64)[sel]
    keep = np.ones(b.shape, bool)
    coef = np.zeros(4)
    for _ in range(3):
        coef = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        resid = b - a @ coef
        sigma = 1.4826 * float(np.median(np.abs(resid[keep]))) + 1e-30
        keep = np.abs(resid) < 3 * sigma
    model = a @ coef
    med = float(np.median(model))
    if not med > 0:
        return None
    # full size: cos/sin of the angles with OpenCV (multithreaded), n . v + c
    cl, sl = cv2.polarToCart(None, np.ascontiguousarray(lat, _F32), angleInDegrees=True)
    nx, ny = cv2.polarToCart(cl, np.ascontiguousarray(lon, _F32), angleInDegrees=True)
    light = cv2.addWeighted(nx, float(coef[0]), ny, float(coef[1]), float(coef[3]))
    cv2.scaleAdd(sl, float(coef[2]), light, dst=light)
    cv2.patchNaNs(light, med)
    light = smooth_floor(light, 0.1 * med)
    info = {
        "night_light_coeffs": [round(float(c), 6) for c in coef],
        "night_light_median": med,
        "night_light_fit_rms": round(float(np.sqrt(np.mean(resid[keep] ** 2))), 6),
        "night_light_samples": int(keep.sum()),
    }
    return light, info


def _modelled_base(
    y: np.ndarray,
    valid: np.ndarray,
    planes: Mapping[str, np.ndarray],
    light: np.ndarray,
    stride: int,
    floor: float,
    radius_frac: float,
) -> np.ndarray | None:
    """Illumination level from a model of the light times a low-pass of what the model
    leaves: ``M = c mu0^k mu^(k-1) + I`` (Minnaert sunlight, k and c fitted on the lit
    side, plus the night side's light ``I`` of :func:`_night_light`), ``R = y / M`` (the
    albedo: it has no terminator edge, so its edge-preserving low-pass leaves no halo
    there), and the level ``M lowpass(R)`` on the sunlit side, ``M median(R)`` beyond
    100 deg of incidence (the night side keeps all its albedo patterns), blended over
    90..100 deg. None without incidence/emission or lit pixels to fit, or when the model
    does not explain the night side (more than 2 % of it off by a factor > 4)."""
    inc, emi = planes.get("incidence_deg"), planes.get("emission_deg")
    if inc is None or emi is None:
        return None
    mu0 = _cos_deg(inc)
    cv2.patchNaNs(mu0, 0.0)
    mu = _cos_deg(emi)
    cv2.patchNaNs(mu, 1.0)
    np.clip(mu, _F32(0.1), _F32(1.0), out=mu)
    s = (slice(None, None, stride), slice(None, None, stride))
    lit = valid[s] & (mu0[s] > 0.3)
    if np.count_nonzero(lit) < 100:
        return None
    try:
        k = fit_minnaert_k(y[s][lit], mu0[s][lit], mu[s][lit], mu0_floor=0.3)
    except EnhanceError:
        k = 1.0
    sun = np.maximum(mu0, _F32(0))
    cv2.pow(sun, k, dst=sun)
    if k != 1.0:
        sun *= cv2.pow(mu, k - 1.0)
    scale = float(np.median(y[s][lit] / np.maximum(sun[s][lit], _F32(1e-6))))
    if not scale > 0:
        return None
    model = cv2.scaleAdd(sun, scale, light)
    ratio = cv2.divide(y, model)
    low = _illumination_base(ratio, valid, floor=floor / scale, radius_frac=radius_frac)
    night = valid[s] & (np.nan_to_num(np.asarray(inc[s], _F32), nan=0.0) > _NIGHT_BLEND_DEG[1])
    r_night = float(np.median(ratio[s][night])) if np.count_nonzero(night) >= 100 else None
    if r_night is not None and r_night > 0:
        w = _smoothstep(*_NIGHT_BLEND_DEG, np.asarray(inc, _F32))
        cv2.patchNaNs(w, 0.0)
        lg = cv2.log(cv2.divide(_F32(r_night), low))  # low^(1-w) r^w = low (r/low)^w
        lg *= w
        low *= cv2.exp(lg)
    low *= model
    # the model must explain the night side: the local mean luminance within a factor 4 of
    # the level almost everywhere there (it is on an airless moon lit by Jupiter at a few times the
    # noise; on Jupiter itself, twilight and noise put a quarter of the night outside)
    if r_night is not None:
        vf = valid.astype(_F32)  # local means over ~2 px (the per-pixel noise is not the test)
        ym = cv2.divide(
            cv2.GaussianBlur(y * vf, (0, 0), 2.0), cv2.max(cv2.GaussianBlur(vf, (0, 0), 2.0), 1e-6)
        )
        q = np.divide(ym[s], low[s])[night]
        outside = float(np.mean((q > _NIGHT_MODEL_RATIO) | (q < 1.0 / _NIGHT_MODEL_RATIO)))
        if outside > _NIGHT_MODEL_MAX_OUTSIDE:
            return None
    return low


def _lift_level(base: np.ndarray, soft: float, night_level: float | None, p: LiftParams) -> np.ndarray:
    """The displayed illumination level of a pixel, a smooth, monotone function of its
    illumination level ``base`` alone (so the sunlit side and the lifted night side join
    without a seam): the larger (smoothly) of the sunlit curve ``c = asinh(base / soft) /
    asinh(1 / soft)`` and the night curve ``n = (1 - flatten) dark_gain c + flatten t``,
    ``t = dark_gain c(night_level)`` the night side's level. Both curves rise with
    ``base``, so their smooth maximum does too."""
    norm = _F32(1.0 / math.asinh(1.0 / soft))
    c = np.arcsinh(base * _F32(1.0 / soft))
    c *= norm
    dg, f = p.dark_gain, p.flatten if night_level is not None else 0.0
    if dg <= 1.0 and f <= 0.0:
        return c
    t = math.asinh((night_level or 0.0) / soft) * float(norm) * dg
    n = cv2.addWeighted(c, (1.0 - f) * dg, c, 0.0, f * t)
    # smooth maximum: 0.5 (c + n + sqrt((c - n)^2 + e^2)), e a fifth of the night level
    e = _F32(0.2 * t) if t > 0 else _F32(0.05) * n
    d = cv2.subtract(c, n)
    d *= d
    d += e * e
    cv2.sqrt(d, dst=d)
    d += c
    d += n
    d *= _F32(0.5)
    return d


def _denoise_dark(
    x: np.ndarray,
    y: np.ndarray,
    base: np.ndarray,
    dark: np.ndarray,
    valid: np.ndarray,
    p: DenoiseParams,
    stats: dict[str, Any],
) -> None:
    """Denoise the luminance of the dark regions of ``x`` (linear, ``(H, W, C)``) in place,
    weighted by ``dark``; the chroma is left alone (the change is added to every band).

    1. Luminance from every band, each weighted by its measured signal-to-noise ratio
       (inverse variance; the luma weights put 72 % on green alone, but at night-side
       levels every band carries the same texture and independent noise).
    2. The texture ``T = Y / base`` (``base``: the illumination level) goes through a
       guided filter whose ``eps`` is the *local* noise variance times ``strength^2``:
       the variance is modelled as ``alpha base + beta`` (shot + read noise; fitted on
       the image, robust variances of ``Y - box3(Y)`` in bins of ``base``) and is
       ``(alpha base + beta) / base^2`` in ``T``, so the filter smooths hardest where the
       light is faintest. ``Y`` is then ``base`` times the filtered ``T``.

    Works on the bounding box of ``dark > 0.02``, in strips of ~1 Mpx (small temporaries).
    """
    h, w = y.shape
    r = p.radius_px
    nb = x.shape[2]
    sel = cv2.compare(dark, 0.02, cv2.CMP_GT)
    sel &= valid.view(np.uint8)
    rows = np.flatnonzero(cv2.reduce(sel, 1, cv2.REDUCE_MAX).ravel())
    if rows.size == 0:
        return
    cols = np.flatnonzero(cv2.reduce(sel, 0, cv2.REDUCE_MAX).ravel())
    halo = 4 * r + 2  # guided filter (2 r) + its guide's Gaussian (4 sigma = 2 r)
    r0, r1 = max(0, int(rows[0]) - halo), min(h, int(rows[-1]) + 1 + halo)
    c0, c1 = max(0, int(cols[0]) - halo), min(w, int(cols[-1]) + 1 + halo)
    width = c1 - c0
    # noise samples: strips of 16 rows spread over the box, ~1 Mpx in all; the first and
    # last row of each strip are not used (their 3x3 neighbourhood crosses a join)
    n_strips = max(1, (r1 - r0) // 16)
    picks = np.unique(
        np.linspace(0, n_strips - 1, min(n_strips, max(1, 1_000_000 // (16 * width)))).astype(int)
    )
    strips = [slice(r0 + 16 * i, min(r1, r0 + 16 * i + 16)) for i in picks]

    def stack(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[s, c0:c1] for s in strips])

    keep_rows = np.concatenate(
        [
            (np.arange(s.stop - s.start) > 0) & (np.arange(s.stop - s.start) < s.stop - s.start - 1)
            for s in strips
        ]
    )
    dsel = (stack(dark) > 0.5) & stack(valid) & keep_rows[:, None]
    if np.count_nonzero(dsel) < 100:
        return
    kappa = 1.4826 / math.sqrt(1.0 - 1.0 / 9.0)  # MAD of z - box3(z) -> sigma of z

    def resid(z: np.ndarray) -> np.ndarray:
        return cv2.subtract(z, cv2.blur(z, (3, 3), borderType=cv2.BORDER_REFLECT))[dsel]

    xs, ys = stack(x), stack(y)
    yd = float(np.mean(ys[dsel]))
    wts = None
    if nb > 1 and yd > 0:
        share = np.array([float(np.mean(xs[:, :, b][dsel])) / yd for b in range(nb)])
        sig = np.array(
            [kappa * float(np.median(np.abs(resid(np.ascontiguousarray(xs[:, :, b]))))) for b in range(nb)]
        )
        snr2 = np.where((sig > 0) & (share > 0), (share / np.maximum(sig, 1e-30)) ** 2, 0.0)
        if snr2.sum() > 0:
            wts = (snr2 / snr2.sum() / np.maximum(share, 1e-30)).astype(_F32)[None]  # sum_b w_b x_b / share_b
            stats["denoise_band_weights"] = [round(float(v), 3) for v in snr2 / snr2.sum()]
    yc = cv2.transform(xs, wts) if wts is not None else ys
    # noise variance against the illumination level: robust variances in 8 bins, a line
    res = resid(yc)
    lvl = stack(base)[dsel]
    edges = np.quantile(lvl, np.linspace(0, 1, 9))
    centre, var = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inb = (lvl >= lo) & (lvl <= hi)
        if np.count_nonzero(inb) >= 50:
            centre.append(float(np.median(lvl[inb])))
            var.append((kappa * float(np.median(np.abs(res[inb])))) ** 2)
    if not var or max(var) <= 0:
        return
    alpha, beta = 0.0, float(np.median(var))
    if len(var) >= 3 and np.ptp(centre) > 0:
        alpha, beta = (float(v) for v in np.polyfit(centre, var, 1))
        if alpha < 0:
            alpha, beta = 0.0, float(np.median(var))
        elif beta < 0:
            alpha, beta = float(np.dot(centre, var) / np.dot(centre, centre)), 0.0
    stats["denoise_noise_model"] = {"alpha": alpha, "beta": beta}
    k2 = p.strength**2
    step = max(8, (1 << 20) // max(width, 1))
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        ha, hb = max(0, a - halo), min(h, b + halo)
        bs = base[ha:hb, c0:c1]
        yw = x[ha:hb, c0:c1]
        yc = cv2.transform(yw, wts) if wts is not None else np.ascontiguousarray(y[ha:hb, c0:c1])
        inv = cv2.divide(1.0, bs)
        t = cv2.multiply(yc, inv)
        eps = cv2.addWeighted(bs, alpha * k2, bs, 0.0, beta * k2)
        cv2.multiply(eps, inv, dst=eps)
        cv2.multiply(eps, inv, dst=eps)
        guide = cv2.GaussianBlur(t, (0, 0), 0.5 * r, borderType=cv2.BORDER_REFLECT)
        that = guided_filter(t, r, eps, guide=guide)[a - ha : b - ha]
        cv2.multiply(that, bs[a - ha : b - ha], dst=that)
        cv2.subtract(that, y[a:b, c0:c1], dst=that)  # the change of luminance
        cv2.multiply(that, dark[a:b, c0:c1], dst=that)
        x[a:b, c0:c1] += that[:, :, None]


def enhance(
    linear: LinearMap | np.ndarray,
    *,
    band_names: Sequence[str] | None = None,
    backplanes: Mapping[str, np.ndarray] | None = None,
    preset: str | EnhanceParams | Mapping[str, Any] = "enhanced",
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    perijove: int | None = None,
    balance: ColourBalance | Mapping[str, Any] | None = None,
) -> Composite:
    """Make a display composite from a linear map.

    ``linear``: a :class:`~junoproc.io.LinearMap`, or a float array ``(H, W, B)`` with
    ``band_names`` (and optional ``backplanes``: ``incidence_deg``, ``emission_deg`` ...).
    ``preset``: a name (``natural``, ``enhanced``, ``jupitershine``), an
    :class:`EnhanceParams`, or a ``params`` dict from an earlier composite's sidecar.
    ``overrides``: ``["clahe.clip=3", "weights.BLUE=2.1", ...]`` (see
    :func:`apply_overrides`). ``perijove`` picks the colour-weight era (default: from the
    map's sidecar). ``balance``: levels to reuse (from :func:`colour_balance_from` or an
    earlier composite) instead of measuring them on this image.

    The input is never modified. NaN pixels come out black with ``alpha`` False.
    """
    timer = _Timer()
    t_start = time.perf_counter()
    data, names, planes, sidecar = _as_inputs(linear, band_names, backplanes)
    plan0 = _plan(names)
    sat = _saturated_channels(data, planes, plan0)
    data, plan = _display_order(data, plan0)
    base = _resolve_preset(preset)
    params = apply_overrides(base, overrides)
    explicit_photometry = bool(overrides) and any(
        str(k).split("=")[0].strip().startswith("photometry") for k in (overrides or [])
    )
    params, info = _resolve(params, plan, sidecar, perijove)
    h, w = data.shape[:2]

    with timer("valid"):
        valid = _valid_mask(data)
        n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        raise EnhanceError("the map has no valid pixel (all NaN)", hint="check the projection footprint")
    fit, sat_note = _fit_mask(valid, sat)
    prep = _prepare(data, valid, plan, planes, params, explicit_photometry, timer, fit)
    stats: dict[str, Any] = {**prep.stats, **info}
    notes = prep.notes
    if sat_note:
        notes.append(sat_note)
    if plan.dropped:
        notes.append(f"band(s) {', '.join(plan.dropped)} not used in the RGB composite")

    with timer("levels"):
        stride = max(1, int(math.sqrt(h * w / 250_000)))
        if balance is None:
            raw, g, night = _sample(data, fit, prep, plan, stride, planes)
            region = (
                _region_samples(data, fit, prep, plan, params.balance.region)
                if params.balance.method == "region"
                else None
            )
            bal = _measure_balance(raw, g, plan, params, region, night)
        else:
            bal = balance if isinstance(balance, ColourBalance) else ColourBalance.from_dict(balance)
            bal._check_bands(plan.out_names)
            if params.lift.method == "asinh" and bal.lift_soft is None:
                raw, g, _ = _sample(data, fit, prep, plan, stride)
                bal = dataclasses.replace(
                    bal, lift_soft=_measure_balance(raw, g, plan, params, None).lift_soft
                )

    nb = len(plan.channels)
    with timer("linear"):
        # one fused pass: reorder by name, band gain, black, white; zeros where invalid.
        # One black level for R, G, B is taken off the luminance, every channel scaled
        # by the same factor max(0, 1 - black / Y): subtracting it channel by channel
        # would turn colours red where the signal is a few times the black level
        # (towards the terminator the blue is the weakest band)
        levels = [(bal.black[b] / bal.white[b]) for b in plan.out_names]
        hue_black = nb == 3 and levels[0] > 0 and len({*levels, *(bal.white[b] for b in plan.out_names)}) == 2
        m = np.zeros((nb, data.shape[2] + 1), _F32)
        for row, (c, band) in enumerate(zip(plan.channels, plan.out_names, strict=True)):
            m[row, c] = bal.gains[band] / bal.white[band]
            m[row, -1] = 0.0 if hue_black else -bal.black[band] / bal.white[band]
        luma_m = np.asarray([LUMA_RGB], _F32)
        x = np.empty((h, w, nb), _F32)
        gain3 = None if prep.gain is None else prep.gain.reshape(h, w, -1)

        def linear_strip(r0: int, r1: int) -> None:
            xs = x[r0:r1]
            if nb > 1:
                cv2.transform(data[r0:r1], m, dst=xs)
            else:
                xs[...] = cv2.transform(data[r0:r1], m).reshape(xs.shape)
            if hue_black:
                y = cv2.transform(xs, luma_m)
                np.maximum(y, _F32(1e-30), out=y)  # Y <= 0 (night noise): factor 0
                f = cv2.divide(levels[0], y)  # black / Y (NaN where unseen)
                np.subtract(_F32(1), f, out=f)
                np.maximum(f, _F32(0), out=f)  # NaN -> 0 as well
                cv2.multiply(xs, cv2.merge([f] * nb), dst=xs)  # same products as numpy broadcasting, faster
            if gain3 is not None:
                g = gain3[r0:r1]
                cv2.multiply(xs, g if g.shape[2] == nb else cv2.merge([g[:, :, 0]] * nb), dst=xs)
            cg = prep.colour_gain(slice(r0, r1))
            if cg is not None:
                cv2.multiply(xs, cg, dst=xs)
            # NaN -> 0 (invalid pixels; partly valid ones keep their finite bands and are
            # masked at the end), +-inf -> [0, 1e6]
            cv2.patchNaNs(xs, 0)
            np.maximum(xs, _F32(0), out=xs)
            np.minimum(xs, _F32(1e6), out=xs)

        _each_strip(h, w, linear_strip)

    dark = None
    if params.lift.method == "asinh" or params.denoise.strength > 0 or params.denoise.chroma > 0:
        with timer("lift"):
            # the illumination level: edge-preserving low-pass of the luminance on the
            # sunlit side; on the night side, where a moon is lit by Jupiter, a fitted
            # model of that light (no freedom at the scale of surface features)
            y = x[:, :, 0].copy() if nb == 1 else cv2.transform(x, np.asarray([LUMA_RGB], _F32))
            level = params.lift.dark_level
            floor = max(level * 1e-4, 1e-9)
            base = None
            # with the backplanes of a model, the level is smooth: made on a grid of
            # <= 1024 px and interpolated (every full-size pass costs ~30 ms at 4000^2)
            # (a moon's night side; Jupiter's own is lit by nothing of that kind)
            target = sidecar.get("map", {}).get("target") if isinstance(sidecar.get("map"), Mapping) else None
            lit_by_jupiter = str(target or "").upper() not in ("JUPITER", "599")
            coarse = (
                _coarse_grid(y, valid, planes) if params.lift.method == "asinh" and lit_by_jupiter else None
            )
            if not lit_by_jupiter:
                stats["night_light_used"] = False
            if coarse is not None:
                y_c, valid_c, planes_c, factor = coarse
                stride_c = max(1, int(math.sqrt(y_c.size / 250_000)))
                night_light = _night_light(y_c, valid_c, planes_c, stride_c)
                if night_light is not None:
                    stats.update(night_light[1])
                    base = _modelled_base(
                        y_c, valid_c, planes_c, night_light[0], stride_c, floor, params.lift.scale
                    )
                    stats["night_light_used"] = base is not None
            if base is None:
                coarse = None
                valid_c, factor = valid, 1
                base = _illumination_base(y, valid, floor=floor, radius_frac=params.lift.scale)
            dark = _F32(1) - _smoothstep(0.5 * level, 2.0 * level, base)
            if params.lift.method == "asinh":
                soft = float(bal.lift_soft or 0.01)
                night = (dark > 0.9) & valid_c
                night_level = None
                if params.lift.flatten > 0 and np.count_nonzero(night) > 16:
                    night_level = float(np.median(base[night][::7]))
                    stats["lift_night_level"] = night_level
                gain = _lift_level(base, soft, night_level, params.lift)
                gain /= base
            if factor > 1:
                size = (w, h)
                base = cv2.resize(base, size, interpolation=cv2.INTER_LINEAR)
                dark = cv2.resize(dark, size, interpolation=cv2.INTER_LINEAR)
                if params.lift.method == "asinh":
                    gain = cv2.resize(gain, size, interpolation=cv2.INTER_LINEAR)
            if params.lift.method == "asinh":
                if bal.lift_white is None:  # texture rides on the lifted level: re-measure white
                    # on the lit part when there is one (lifted noise must not set the scale)
                    # (the sunlit area proper: base >= 0.25 of white; thin bright features on
                    # a dark base get large gains and are left to the highlight shoulder)
                    sv = fit[::stride, ::stride]
                    for lit_s in (
                        sv & (base[::stride, ::stride] >= 0.25),
                        sv & (dark[::stride, ::stride] < 0.5),
                    ):
                        if np.count_nonzero(lit_s) >= max(100, 0.01 * np.count_nonzero(sv)):
                            sv = lit_s
                            break
                    top = (x[::stride, ::stride] * gain[::stride, ::stride, None]).max(axis=2)[sv]
                    white = float(np.percentile(top, params.stretch.white_pct)) if top.size else 1.0
                    bal = dataclasses.replace(bal, lift_white=max(white, 1e-6))
                gain *= _F32(1.0 / (bal.lift_white or 1.0))
                stats["lift_soft"] = soft
                stats["lift_gain_max"] = round(cv2.minMaxLoc(gain, valid.view(np.uint8))[1], 3)
        if params.denoise.strength > 0:
            with timer("denoise"):
                # luminance of the dark regions from every band and a noise-aware
                # edge-preserving filter; put back as a grey shift (chroma untouched)
                _denoise_dark(x, y, base, dark, valid, params.denoise, stats)
        if params.lift.method == "asinh":
            np.multiply(x, gain[..., None], out=x)

    use_lab = nb == 3 and _lab_ops_needed(params)
    rgb16: np.ndarray | None = None
    if use_lab:
        with timer("lab"):
            # linear RGB -> CIELAB in place; the Lab -> RGB step at the end encodes sRGB,
            # so the display gamma is applied on L (exact for the cube-root part of L*)
            cv2.cvtColor(x, cv2.COLOR_LRGB2Lab, dst=x)
            L = _lab_gamma(cv2.extractChannel(x, 0), params.gamma)
            lit = l8 = None
            if params.dark_floor > 0:  # fades as table lookups on an 8-bit copy of L
                l8 = cv2.convertScaleAbs(L, alpha=2.55)
                lit = cv2.LUT(l8, _fade_lut(0.5 * params.dark_floor, 1.5 * params.dark_floor))
        L = _lightness_ops(L, valid, dark, lit, params, stats, timer, planes.get("incidence_deg"))
        chroma_low = None
        if params.denoise.chroma > 0 and dark is not None:
            with timer("denoise"):  # a wide blur of a, b: at 1/f of the size, interpolated
                # back strip by strip in the finish loop (no full-size temporaries)
                chroma_f = max(1, int(params.denoise.radius_px * 3 // 2))
                if min(h, w) < 2 * chroma_f:
                    chroma_f = 1
                chroma_low = _blur_coarse_grid(x, 3.0 * params.denoise.radius_px, chroma_f)
    elif nb == 3:
        L = lit = l8 = None
    if nb == 3:
        with timer("finish"):
            # pointwise to the end, in strips of ~1 Mpx (small temporaries, reused by the
            # allocator): L back in, chroma, Lab -> sRGB, display range, mask, 16 bits
            sat_lut = None
            if l8 is not None and params.saturation != 1.0:
                f = params.dark_floor
                sat_lut = _fade_lut(0.5 * f, 1.5 * f, 1.0, params.saturation)
            dark_sat = params.lift.dark_saturation if dark is not None else 1.0
            rgb16 = np.empty((h, w, 3), np.uint16)
            valid8 = valid.view(np.uint8)

            def finish_strip(r0: int, r1: int) -> None:
                xs = x[r0:r1]
                if use_lab:
                    assert L is not None
                    cv2.insertChannel(np.ascontiguousarray(L[r0:r1]), xs, 0)
                    if chroma_low is not None and dark is not None:
                        # a, b towards their wide blur where dark (the luminance stays)
                        ab = _upsample_rows(chroma_low, chroma_f, r0, r1 - r0, w)
                        cv2.subtract(ab, xs, dst=ab)
                        d = dark[r0:r1] * _F32(params.denoise.chroma)
                        cv2.multiply(ab, cv2.merge([np.zeros_like(d), d, d]), dst=ab)
                        cv2.add(xs, ab, dst=xs)
                    gain_s: np.ndarray | None = None
                    if sat_lut is not None and l8 is not None:
                        gain_s = cv2.LUT(l8[r0:r1], sat_lut)
                    if dark is not None and dark_sat != 1.0:
                        dg = _F32(1) + _F32(dark_sat - 1.0) * dark[r0:r1]
                        gain_s = dg * (gain_s if gain_s is not None else _F32(params.saturation))
                    if gain_s is not None:
                        ones = np.ones_like(gain_s)
                        cv2.multiply(xs, cv2.merge([ones, gain_s, gain_s]), dst=xs)
                    elif params.saturation != 1.0:
                        scalar: Any = (1.0, params.saturation, params.saturation, 0.0)
                        cv2.multiply(xs, scalar, dst=xs)
                    cv2.cvtColor(xs, cv2.COLOR_Lab2RGB, dst=xs)
                elif params.gamma != 1.0:
                    cv2.pow(xs, 1.0 / params.gamma, dst=xs)
                _fit_strip(xs, params.highlight.knee)
                if sat is not None:
                    _saturated_to_top(xs, sat[r0:r1])
                cv2.multiply(xs, (65535.0,) * 4, dst=rgb16[r0:r1], dtype=cv2.CV_16U)  # type: ignore[call-overload]
                if n_valid < h * w:  # 0 where invalid (a masked copy: 15x faster than x * valid)
                    unseen = cv2.compare(valid8[r0:r1], 0, cv2.CMP_EQ)
                    cv2.copyTo(np.zeros((r1 - r0, w, 3), np.uint16), unseen, rgb16[r0:r1])

            _each_strip(h, w, finish_strip)
        rgb = x
    else:
        with timer("gamma"):
            if params.gamma != 1.0:
                cv2.pow(x, 1.0 / params.gamma, dst=x)
        L = x[:, :, 0] * _F32(100)
        if _lab_ops_needed(params):
            lit = None
            if params.dark_floor > 0:
                f = params.dark_floor
                lit = cv2.LUT(cv2.convertScaleAbs(L, alpha=2.55), _fade_lut(0.5 * f, 1.5 * f))
            L = _lightness_ops(L, valid, dark, lit, params, stats, timer, planes.get("incidence_deg"))
        g1 = np.maximum(L * _F32(0.01), _F32(0))
        _shoulder_inplace(g1.reshape(-1), params.highlight.knee)
        np.minimum(g1, _F32(1), out=g1)
        if sat is not None:
            g1[sat[:, :, 0]] = 1.0
        if params.colormap == "grey":
            rgb = g1  # one channel to the end, made R = G = B there
        else:
            lut8 = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], _colormaps()[params.colormap])
            lut = cv2.cvtColor(lut8, cv2.COLOR_BGR2RGB).reshape(256, 3).astype(_F32) / _F32(255)
            pos = g1 * _F32(255)
            i0 = np.minimum(pos.astype(np.int32), 254)
            f = (pos - i0)[..., None]
            rgb = (lut[i0] * (1 - f) + lut[i0 + 1] * f).astype(_F32)

    with timer("output"):
        if rgb16 is None:
            rgb16 = _to_u16(rgb)  # (H, W) when grey: converted once, then made R = G = B
            if n_valid < h * w:
                rgb16 = cv2.copyTo(rgb16, valid.view(np.uint8))  # zeros where invalid
        rgb8 = cv2.convertScaleAbs(rgb16, alpha=1.0 / 257.0)
        stride_c = max(1, int(math.sqrt(h * w / 1_000_000)))
        sub16 = rgb16[::stride_c, ::stride_c]
        vsub = valid[::stride_c, ::stride_c]
        if rgb16.ndim == 2:
            top = low = sub16
            rgb16, rgb8 = cv2.merge([rgb16] * 3), cv2.merge([rgb8] * 3)
        else:
            top = cv2.reduce(sub16.reshape(-1, 3), 1, cv2.REDUCE_MAX).reshape(vsub.shape)
            low = cv2.reduce(sub16.reshape(-1, 3), 1, cv2.REDUCE_MIN).reshape(vsub.shape)
        nv = max(1, int(vsub.sum()))
        # clipping the enhancement caused; pixels the sensor saturated are counted apart
        # (they are put at the top of the range on purpose)
        ssub = np.zeros_like(vsub) if sat is None else sat[::stride_c, ::stride_c].any(axis=2) & vsub
        stats["clipped_high_fraction"] = float(np.count_nonzero((top == 65535) & vsub & ~ssub)) / nv
        stats["saturated_fraction"] = float(np.count_nonzero(ssub)) / nv
        stats["clipped_low_fraction"] = float(np.count_nonzero((low == 0) & vsub)) / nv
        stats["valid_fraction"] = n_valid / float(h * w)
    timings = dict(timer.times)
    timings["total"] = time.perf_counter() - t_start
    stats["notes"] = notes
    resolved = params_to_dict(params)
    return Composite(
        rgb16=rgb16,
        rgb8=rgb8,
        alpha=valid,
        params=resolved,
        balance=bal,
        stats=stats,
        timings_s=timings,
        grey=nb == 1 and params.colormap == "grey",
    )


def colour_balance_from(
    maps: Sequence[
        LinearMap
        | tuple[np.ndarray, Sequence[str]]
        | tuple[np.ndarray, Sequence[str], Mapping[str, np.ndarray]]
    ],
    *,
    preset: str | EnhanceParams | Mapping[str, Any] = "natural",
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    perijove: int | None = None,
) -> ColourBalance:
    """ONE colour balance (band gains, black/white levels, lift softening) for several maps.

    Samples of every map (after its own photometric and flatten gains) are pooled and the
    preset's balance and stretch rules are applied to the pool, except the white level:
    that is the largest of the maps' own ``white_pct`` levels (under the pooled gains and
    black), so no map clips more than its own percentile and the brightest sets the
    scale for all. Pass the result as
    ``balance=`` to :func:`enhance` for each map so all share one colour and tone scale;
    it is recorded in each composite's sidecar and can be read back with
    :meth:`ColourBalance.from_dict`.
    """
    if not maps:
        raise EnhanceError("colour_balance_from needs at least one map")
    base = apply_overrides(_resolve_preset(preset), overrides)
    raws, gs, regions, nights = [], [], [], []
    plan0: _Plan | None = None
    params = base
    timer = _Timer()
    for item in maps:
        if isinstance(item, LinearMap):
            data, names, planes, sidecar = _as_inputs(item, None, None)
        else:
            data, names, planes, sidecar = _as_inputs(item[0], item[1], item[2] if len(item) > 2 else None)  # type: ignore[misc]
        sat = _saturated_channels(data, planes, _plan(names))
        data, plan = _display_order(data, _plan(names))
        if plan0 is None:
            plan0 = plan
            params, _ = _resolve(base, plan, sidecar, perijove)
        elif plan.out_names != plan0.out_names:
            raise EnhanceError(f"maps mix band sets {plan0.out_names} and {plan.out_names}")
        valid = _valid_mask(data)
        if not valid.any():
            continue
        explicit = bool(overrides) and any(
            str(k).split("=")[0].strip().startswith("photometry") for k in overrides or []
        )
        fit, _ = _fit_mask(valid, sat)
        prep = _prepare(data, valid, plan, planes, params, explicit, timer, fit)
        h, w = valid.shape
        stride = max(1, int(math.sqrt(h * w / 250_000)))
        raw, g, night = _sample(data, fit, prep, plan, stride, planes)
        raws.append(raw)
        gs.append(g)
        nights.append(np.zeros(raw.shape[0], bool) if night is None else night)
        if params.balance.method == "region":
            r = _region_samples(data, fit, prep, plan, params.balance.region)
            if r is not None:
                regions.append(r)
    if plan0 is None or not raws:
        raise EnhanceError("no valid pixels in any map")
    bal = _measure_balance(
        np.concatenate(raws),
        np.concatenate(gs),
        plan0,
        params,
        np.concatenate(regions) if regions else None,
        np.concatenate(nights),
    )
    gains = np.array([bal.gains[n] for n in plan0.out_names])
    black = np.array([bal.black[n] for n in plan0.out_names])
    whites = []
    for raw, g in zip(raws, gs, strict=True):
        lit = (raw * gains - black) * g
        if params.stretch.linked:
            whites.append(np.full(len(gains), np.percentile(lit.max(axis=1), params.stretch.white_pct)))
        else:
            whites.append(np.percentile(lit, params.stretch.white_pct, axis=0))
    white = np.max(whites, axis=0)
    white = np.where(white > 0, white, [bal.white[n] for n in plan0.out_names])
    return dataclasses.replace(
        bal, white=dict(zip(plan0.out_names, white.tolist(), strict=True)), n_images=len(raws)
    )


# --------------------------------------------------------------------------- files


def _load_json_params(path: Path) -> dict[str, Any]:
    from .io import read_sidecar

    side = read_sidecar(path)
    enh = side.get("enhance", side)
    if not isinstance(enh, Mapping) or "params" not in enh:
        raise EnhanceError(
            "no enhancement parameters in this JSON", hint="use a composite's sidecar", path=path
        )
    return dict(enh["params"])


def _load_json_balance(path: Path) -> ColourBalance:
    from .io import read_sidecar

    side = read_sidecar(path)
    for candidate in (
        side.get("enhance", {}).get("balance") if isinstance(side.get("enhance"), Mapping) else None,
        side.get("balance"),
        side,
    ):
        if isinstance(candidate, Mapping) and "gains" in candidate:
            return ColourBalance.from_dict(candidate)
    raise EnhanceError("no colour balance in this JSON", path=path, hint="use a composite's sidecar")


def enhance_file(
    linear_path: str | Path,
    out_path: str | Path,
    *,
    preset: str = "enhanced",
    overrides: Sequence[str] | None = None,
    perijove: int | None = None,
    balance: str | Path | ColourBalance | None = None,
    alpha: bool = True,
) -> tuple[Composite, list[Path]]:
    """Read a linear map (with its backplanes and sidecar), enhance, write OUT + OUT.json.

    ``out_path`` ending in ``.png`` gets 8-bit, ``.tif``/``.tiff`` 16-bit; with ``alpha``
    and invalid pixels present an alpha channel is added. ``preset`` may be a preset name
    or the path of an earlier composite's JSON sidecar (same look); ``balance`` a
    ColourBalance or the path of a JSON holding one. Returns the composite and the paths
    written.
    """
    from . import __version__
    from .io import read_linear_map, write_png, write_sidecar, write_tiff

    src = Path(linear_path)
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise EnhanceError("output must end in .png (8-bit) or .tif (16-bit)", path=out)
    if out.resolve() == src.resolve():
        raise EnhanceError("output would overwrite the linear input", path=out)
    lm = read_linear_map(src)
    preset_arg: str | Mapping[str, Any] = preset
    if str(preset).lower().endswith(".json"):
        preset_arg = _load_json_params(Path(preset))
    bal = _load_json_balance(Path(balance)) if isinstance(balance, (str, Path)) else balance
    comp = enhance(lm, preset=preset_arg, overrides=overrides, perijove=perijove, balance=bal)
    with_alpha = alpha and not bool(comp.alpha.all())
    if suffix == ".png":
        written = [write_png(out, comp.rgba8() if with_alpha else comp.image8())]
    else:
        written = [
            write_tiff(
                out,
                comp.rgba16() if with_alpha else comp.image16(),
                description=f"junoproc {__version__} composite, preset {comp.params['preset']}",
            )
        ]
    side = {
        "junoproc_version": __version__,
        "kind": "junoproc.composite",
        "output": {"path": out.name, "bits": 8 if suffix == ".png" else 16, "alpha": with_alpha},
        "input": {
            "path": str(src),
            "band_names": list(lm.band_names),
            "shape": list(lm.data.shape),
            "backplanes": sorted(lm.backplanes),
            "sidecar": dict(lm.sidecar),
        },
        "enhance": {
            "params": comp.params,
            "balance": comp.balance.to_dict(),
            "stats": dict(comp.stats),
            "timings_s": {k: round(v, 4) for k, v in comp.timings_s.items()},
        },
    }
    written.append(write_sidecar(out, side))
    return comp, written
