"""The forward model: synthetic raw JunoCam products and kernels with known truth.

``simulate(out_dir, ...)`` writes, under ``out_dir``:

* ``<id>-ImageSet/ImageSet/JNCE_<yyyyddd>_<PJ>C<nnnnn>_V01-raw.png`` and
  ``<id>-ImageSet/DataSet/<id>-Metadata.json``: a product as the mission site hands it out
  (unzipped), 8-bit SQROOT-companded framelets stacked in FILTER_NAME order per frame;
* ``kernels/``: an SPK and a type-3 CK written here, plus the generic text kernels (LSK,
  PCK, FK, IK, SCLK) copied from a local kernel folder, or, when none exists, small
  *synthetic* text kernels written here (labelled so in their comments and in truth.json);
* ``truth/``: the texture per band (16-bit PNG, equirectangular, planetocentric latitude,
  east longitude) and ``truth.json`` (the spin, the timing offset, illumination, noise,
  hot pixels and particle hits, the kernels written).

Trajectory model (stated in truth.json): every body moves on a straight line at constant
velocity over the image span +/- a margin (the Sun at rest at the SSB; Jupiter, the moon
and Juno each relative to their centre). Over a ~10 s image the real curvature near
perijove (~5 m/s^2) moves Juno by < 0.3 km, far below a pixel; the point is a geometry
that is *exactly* known and written to the SPK.

Attitude model: a pure spin of JUNO_SPACECRAFT about a fixed axis (RA/Dec in J2000) at a
constant rate, phase measured at a reference time: :class:`junoproc.pointing.SpinAttitude`,
the very model the pointing solver fits (one definition, re-exported here). The camera's
fixed mounting is read from the FK (``pxform JUNO_SPACECRAFT -> JUNO_JUNOCAM``). The image
is rendered with this analytic attitude, never with the CK read back, so a round trip
through the written CK tests the kernel writing.

Rendering, per frame (true time) and band: the rays of every pixel centre
(:attr:`CameraModel.framelet_rays_cam`) meet the target ellipsoid
(:func:`junoproc.geometry.intersect_rays`, light time and stellar aberration); the
texture is sampled by **2x2 supersampling of each pixel** (sub-pixel positions
``(+-0.25, +-0.25)`` from the local pixel -> texel Jacobian, bilinear taps, averaged);
illumination is Minnaert (Lambert for k = 1) from the Sun, zero on the night side, plus
optional Jupitershine for moons; then DN for the exposure, photon noise (Poisson at
``gain_e_per_dn``), read noise, hot pixels and particle hits, SQROOT companding.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import spiceypy

from .camera import CAMERA_FRAME, PHOTOACTIVE_COLUMNS, CameraModel, FrameTiming
from .errors import JunoprocError, KernelMissingError
from .geometry import (
    Target,
    frame_state,
    intersect_rays,
    lonlat_from_body,
)
from .paths import cache_dir, shared_data_dir
from .pointing import SpinAttitude, spin_basis
from .products import CCD_SAMPLES, FRAMELET_ROWS

__all__ = [
    "SimulatedProduct",
    "PassGeometry",
    "SimulationError",
    "SpinAttitude",
    "compand_sqroot",
    "decompand_sqroot_table",
    "jupiter_texture",
    "moon_texture",
    "simulate",
    "simulate_pass",
]

#: The targets the simulator knows how to texture.
TARGETS = ("JUPITER", "IO", "EUROPA", "GANYMEDE", "CALLISTO")
#: Approximate orbital radii (km) of the Galilean moons, used only to place the synthetic scene.
_MOON_ORBIT_KM = {"IO": 421_700.0, "EUROPA": 671_034.0, "GANYMEDE": 1_070_412.0, "CALLISTO": 1_882_709.0}
_MOON_ORBIT_SPEED_KM_S = {"IO": 17.33, "EUROPA": 13.74, "GANYMEDE": 10.88, "CALLISTO": 8.20}
#: Jupiter's distance from the Sun (km): 5.2 au, a placement, not an ephemeris.
_JUPITER_SUN_KM = 5.2 * 149_597_870.7
_JUPITER_HELIO_SPEED_KM_S = 13.1
_SPACECRAFT_FRAME = "JUNO_SPACECRAFT"
_JUNO_ID = -61
_JUNO_CK_ID = -61000
_SSB_ID = 0
_SUN_ID = 10
_JUPITER_ID = 599



class SimulationError(JunoprocError):
    """The simulator cannot make the requested product."""


# ---------------------------------------------------------------------------------------
# companding
# ---------------------------------------------------------------------------------------
def decompand_sqroot_table() -> np.ndarray:
    """The SQROOT table: 8-bit value (index 0..255) -> lower 12-bit DN of its bin (256 entries).

    The one table of the project, :func:`junoproc.calibrate.companding_table` (``method="lower"``).
    """
    from .calibrate import companding_table

    return np.asarray(companding_table("SQROOT", method="lower"), dtype=np.float64)


def compand_sqroot(dn: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """12-bit DN (float array) -> 8-bit SQROOT values, as the flight software quantises.

    The DN is rounded to an integer (the ADC), then truncated into its bin: the largest
    ``v`` with ``table[v] <= DN`` (so ``calibrate``'s bin centre is unbiased). Negative DN
    give 0; DN at or above the top of the table saturate at 255.
    """
    table = decompand_sqroot_table() if table is None else np.asarray(table, dtype=np.float64)
    top = int(table[-1])
    lut = (np.searchsorted(table, np.arange(top + 1), side="right") - 1).astype(np.uint8)
    index = np.clip(np.rint(np.asarray(dn, dtype=np.float32)), 0, top).astype(np.int32)
    return lut[index]


# ---------------------------------------------------------------------------------------
# textures
# ---------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise (std ~1), periodic in longitude: ``cells`` (lat, lon) upsampled cubic."""
    h, w = cells
    height, width = shape
    base = rng.standard_normal((h, w)).astype(np.float32)
    pad = 2
    padded = np.pad(base, pad, mode="wrap")
    sy, sx = height / h, width / w
    big = cv2.resize(padded, (round((w + 2 * pad) * sx), round((h + 2 * pad) * sy)),
                     interpolation=cv2.INTER_CUBIC)
    oy, ox = round(pad * sy), round(pad * sx)
    out = big[oy:oy + height, ox:ox + width]
    out *= 1.0 / max(float(out[::7, ::7].std()), 1e-6)
    return out


def _grid_lat_deg(height: int) -> np.ndarray:
    return (90.0 - (np.arange(height, dtype=np.float32) + 0.5) * (180.0 / height))


def _stamp(canvas: np.ndarray, lat0: float, lon0: float, radius_deg: float, extent: float,
           profile: Any) -> None:
    """Add ``profile(r, theta)`` around (lat0, lon0) in place; r in units of ``radius_deg``.

    Distances are local-tangent (longitude scaled by cos(lat0)); the patch wraps in longitude.
    """
    _stamp_rows(canvas, 0, canvas.shape[0], lat0, lon0, radius_deg, extent, profile)


def _stamp_rows(canvas: np.ndarray, row_offset: int, height: int, lat0: float, lon0: float,
                radius_deg: float, extent: float, profile: Any) -> None:
    """:func:`_stamp` on a block of rows ``row_offset..`` of a map ``height`` rows tall."""
    width = canvas.shape[1]
    deg_per_px = 180.0 / height
    half_rows = int(math.ceil(extent * radius_deg / deg_per_px)) + 1
    coslat = max(math.cos(math.radians(lat0)), 0.05)
    half_cols = min(int(math.ceil(extent * radius_deg / coslat / deg_per_px)) + 1, width // 2 - 1)
    row0 = int((90.0 - lat0) / deg_per_px)
    col0 = int(lon0 / deg_per_px)
    rows = np.arange(row0 - half_rows, row0 + half_rows + 1)
    rows = rows[(rows >= row_offset) & (rows < min(height, row_offset + canvas.shape[0]))]
    if rows.size == 0:
        return
    cols = np.arange(col0 - half_cols, col0 + half_cols + 1)
    lat = (90.0 - (rows + 0.5) * deg_per_px)[:, None]
    lon = ((cols + 0.5) * deg_per_px)[None, :]
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0
    dy = (lat - lat0) / radius_deg
    dx = dlon * coslat / radius_deg
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    canvas[np.ix_(rows - row_offset, cols % width)] += profile(r, theta).astype(np.float32)


def _texture_shape(width: int) -> tuple[int, int]:
    width = int(max(256, min(width, 8192)))
    width -= width % 256
    return width // 2, width


def jupiter_texture(seed: int, width: int = 8192, bands: Sequence[str] = ("BLUE", "GREEN", "RED", "METHANE")
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Banded, turbulent Jupiter with ovals: reflectance (0..1) per band, (H, W) float32.

    Equirectangular, planetocentric latitude from +90 (row 0) to -90, east longitude from
    0 (column 0) to 360, pixel centres at (i + 0.5) * 360 / W. Returns (maps, description).
    """
    rng = np.random.default_rng([seed, 599])
    height, width = _texture_shape(width)
    lat = _grid_lat_deg(height)[:, None]
    # zonal profile: alternating zones (1) and belts (0) with random edges, smoothed
    edges = [0.0]
    while edges[-1] < 68.0:
        edges.append(edges[-1] + float(rng.uniform(4.0, 11.0)))
    prof_lat = np.arange(-90.0, 90.0001, 0.02)
    zone = np.full(prof_lat.shape, 0.45)
    for sign in (1.0, -1.0):
        for k in range(len(edges) - 1):
            value = float(rng.uniform(0.75, 1.0)) if k % 2 == 0 else float(rng.uniform(0.0, 0.3))
            lo, hi = sorted((sign * edges[k], sign * edges[k + 1]))
            zone[(prof_lat >= lo) & (prof_lat < hi)] = value
    sigma = int(0.5 / 0.02)
    kernel = np.exp(-0.5 * (np.arange(-4 * sigma, 4 * sigma + 1) / sigma) ** 2)
    zone = np.convolve(np.pad(zone, 4 * sigma, mode="edge"), kernel / kernel.sum(), mode="valid")
    # turbulence: latitude displaced by elongated noise (zonal shear stretches features),
    # summed at half resolution and upsampled once
    half = (height // 2, width // 2)
    dlat_half = (1.2 * _smooth_noise(rng, (32, 32), half) + 0.45 * _smooth_noise(rng, (128, 128), half)
                 + 0.15 * _smooth_noise(rng, (512, 512), half))
    dlat_half += _grid_lat_deg(half[0])[:, None] + 90.0
    dlat_half *= 1.0 / 0.02  # -> index into the profile table
    index = cv2.resize(dlat_half, (width, height), interpolation=cv2.INTER_LINEAR)
    del dlat_half
    profile = np.ascontiguousarray(zone.astype(np.float32)[None, :])
    albedo = cv2.remap(profile, index, np.zeros_like(index), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    del index
    cv2.scaleAdd(_smooth_noise(rng, (1024, 1024), (height, width)), 0.05, albedo, dst=albedo)
    polar_rows = np.nonzero(np.abs(lat[:, 0]) > 62.0)[0]
    for rows in (polar_rows[polar_rows < height // 2], polar_rows[polar_rows >= height // 2]):
        block = albedo[rows[0]:rows[-1] + 1]
        w_polar = np.clip((np.abs(lat[rows[0]:rows[-1] + 1]) - 62.0) / 6.0, 0.0, 1.0)
        hazy = 0.42 + 0.12 * _smooth_noise(rng, (64, 512), block.shape)
        block += w_polar * (hazy - block)
    # vortices: white ovals (anticyclones) and dark barges, a few px to tens of px
    n_ovals = 160
    ovals = []
    for _ in range(n_ovals):
        lat0 = float(rng.uniform(-70.0, 70.0))
        lon0 = float(rng.uniform(0.0, 360.0))
        radius = float(np.exp(rng.uniform(np.log(0.12), np.log(2.2))))
        ratio = float(rng.uniform(1.2, 2.2))
        white = bool(rng.random() < 0.7)
        amp = 0.55 if white else -0.45

        def oval(r: np.ndarray, theta: np.ndarray, amp: float = amp, ratio: float = ratio) -> np.ndarray:
            re = r * np.sqrt(np.cos(theta) ** 2 / ratio**2 + np.sin(theta) ** 2)
            core = amp / (1.0 + np.exp((re - 1.0) / 0.12))
            ring = -0.5 * amp * np.exp(-(((re - 1.25) / 0.15) ** 2))
            return core + ring

        _stamp(albedo, lat0, lon0, radius, 2.2 * ratio, oval)
        ovals.append({"lat_deg": lat0, "lon_east_deg": lon0, "radius_lat_deg": radius,
                      "lon_to_lat_ratio": ratio, "kind": "white" if white else "dark"})
    grs_lon = float(rng.uniform(0.0, 360.0))

    def grs(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
        re = r * np.sqrt(np.cos(theta) ** 2 / 4.0 + np.sin(theta) ** 2)
        return 1.0 / (1.0 + np.exp((re - 1.0) / 0.08))

    # the red oval lives on a patch of rows (-10..-34 deg), the rest of the map has no red
    red_rows = slice(int((90.0 + 10.0) * height / 180.0), int((90.0 + 34.0) * height / 180.0))
    red_block = np.zeros((red_rows.stop - red_rows.start, width), np.float32)
    _stamp_rows(red_block, red_rows.start, height, -22.0, grs_lon, 5.0, 4.4, grs)
    albedo[red_rows] += 0.25 * red_block
    np.clip(albedo, 0.0, 1.25, out=albedo)
    colours = {  # (belt, zone, red absorption) reflectance per band
        "BLUE": (0.30, 0.86, 0.45), "GREEN": (0.40, 0.90, 0.30), "RED": (0.52, 0.93, 0.05),
    }
    maps: dict[str, np.ndarray] = {}
    polar = np.clip((np.abs(lat) - 62.0) / 6.0, 0.0, 1.0).astype(np.float32)
    for band in bands:
        if band == "METHANE":  # dark except hazes: poles and the red oval
            m = albedo * np.float32(0.08)
            m += np.float32(0.10)
            m += 0.25 * polar
            m[red_rows] += 0.35 * red_block
        else:
            belt, zone_r, absorb = colours[band]
            m = albedo * np.float32(zone_r - belt)
            m += np.float32(belt)
            m[red_rows] *= 1.0 - absorb * red_block
        cv2.min(m, 1.0, dst=m)
        cv2.max(m, 0.0, dst=m)
        maps[band] = m
    desc = {"kind": "jupiter: zonal belts/zones, turbulent latitude displacement, ovals, a red oval",
            "band_edges_deg": [round(e, 3) for e in edges], "n_ovals": n_ovals,
            "red_oval": {"lat_deg": -22.0, "lon_east_deg": grs_lon, "radius_lat_deg": 5.0},
            "ovals_first_20": ovals[:20]}
    return maps, desc


_MOON_TINT = {  # reflectance scale per band (B, G, R, M)
    "IO": (0.55, 0.80, 0.90, 0.75), "EUROPA": (0.75, 0.85, 0.90, 0.80),
    "GANYMEDE": (0.38, 0.42, 0.46, 0.44), "CALLISTO": (0.18, 0.20, 0.22, 0.21),
}


def moon_texture(target: str, seed: int, width: int = 4096,
                 bands: Sequence[str] = ("BLUE", "GREEN", "RED", "METHANE")
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Mottled albedo with craters (dark floors, bright rims, a few rayed): per band, float32."""
    # a stable number per target: Python's str hash changes from process to process
    rng = np.random.default_rng([seed, zlib.crc32(target.strip().upper().encode()) % 10_000])
    height, width = _texture_shape(width)
    albedo = (0.75 + 0.10 * _smooth_noise(rng, (16, 32), (height, width))
              + 0.06 * _smooth_noise(rng, (64, 128), (height, width))
              + 0.03 * _smooth_noise(rng, (256, 512), (height, width)))
    n_craters = 500
    rayed = 0
    for _ in range(n_craters):
        lat0 = float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0))))
        lon0 = float(rng.uniform(0.0, 360.0))
        radius = float(0.4 * rng.pareto(1.6) + 0.4)
        radius = min(radius, 10.0)
        with_rays = bool(rng.random() < 0.06)
        rayed += with_rays
        phase = float(rng.uniform(0, 2 * np.pi))
        n_rays = int(rng.integers(5, 12))

        def crater(r: np.ndarray, theta: np.ndarray, with_rays: bool = with_rays,
                   phase: float = phase, n_rays: int = n_rays) -> np.ndarray:
            out = -0.18 / (1.0 + np.exp((r - 0.8) / 0.05))
            out += 0.22 * np.exp(-(((r - 1.0) / 0.12) ** 2))
            if with_rays:
                spokes = np.maximum(np.cos(n_rays * theta + phase), 0.0) ** 8
                out += 0.3 * spokes * np.exp(-np.maximum(r - 1.0, 0.0) / 2.0) * (r > 1.0)
            return out

        _stamp(albedo, lat0, lon0, radius, 6.0 if with_rays else 1.6, crater)
    tint = _MOON_TINT[target]
    index = {"BLUE": 0, "GREEN": 1, "RED": 2, "METHANE": 3}
    maps = {band: np.clip(albedo * tint[index[band]], 0.0, 1.0).astype(np.float32) for band in bands}
    return maps, {"kind": f"{target.lower()}: mottled albedo with craters", "n_craters": n_craters,
                  "n_rayed": rayed, "tint_bgrm": list(tint)}


# ---------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------
_GENERIC_KINDS = {"lsk": (".tls",), "pck": (".tpc",), "fk": (".tf",), "ik": (".ti",), "sclk": (".tsc",)}


def _find_generic_kernels(kernel_dir: Path | None) -> dict[str, Path] | None:
    """LSK, PCK, FK, IK and SCLK in a local folder; None when any kind is missing."""
    candidates: list[Path] = []
    if kernel_dir is not None:
        if not Path(kernel_dir).is_dir():
            raise KernelMissingError("kernel folder does not exist", path=kernel_dir,
                                     hint="pass a folder with LSK, PCK, FK, IK, SCLK or omit --kernels")
        candidates.append(Path(kernel_dir))
    else:  # the shared real-data folder, then junoproc's kernel folder ($JUNOPROC_KERNELS > config > cache)
        candidates.append(shared_data_dir() / "kernels")
        try:
            from .kernels import resolve_kernel_dir

            candidates.append(resolve_kernel_dir(None, must_exist=False)[0])
        except (ImportError, JunoprocError):
            pass
        candidates.append(cache_dir() / "kernels")
    for folder in candidates:
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        found: dict[str, Path] = {}
        for kind, suffixes in _GENERIC_KINDS.items():
            matches = [p for p in files if p.suffix.lower() in suffixes]
            if kind == "fk":
                matches = [p for p in matches if "juno" in p.name.lower()] or matches
            if kind == "ik":
                matches = [p for p in matches if "junocam" in p.name.lower()]
            if kind == "sclk":
                matches = [p for p in matches if "jno" in p.name.lower() or "juno" in p.name.lower()]
            if matches:
                found[kind] = matches[-1]
        if len(found) == len(_GENERIC_KINDS):
            return found
        if kernel_dir is not None:
            missing = sorted(set(_GENERIC_KINDS) - set(found))
            raise KernelMissingError(f"kernel folder lacks {', '.join(missing)} kernels", path=kernel_dir,
                                     hint="it needs an LSK, a PCK, the Juno FK, the JunoCam IK, a Juno SCLK")
    return None


_SYNTHETIC_NOTE = ("SYNTHETIC kernel written by the junoproc simulator for offline use: values modelled on "
                   "public NAIF kernels (naif0012, pck00010 without nutation terms, juno_v12, "
                   "juno_junocam_v03, jno_sclkscet); not for real data.")
_LEAP_SECONDS = (
    (10, "1972-JAN-1"), (11, "1972-JUL-1"), (12, "1973-JAN-1"), (13, "1974-JAN-1"), (14, "1975-JAN-1"),
    (15, "1976-JAN-1"), (16, "1977-JAN-1"), (17, "1978-JAN-1"), (18, "1979-JAN-1"), (19, "1980-JAN-1"),
    (20, "1981-JUL-1"), (21, "1982-JUL-1"), (22, "1983-JUL-1"), (23, "1985-JUL-1"), (24, "1988-JAN-1"),
    (25, "1990-JAN-1"), (26, "1991-JAN-1"), (27, "1992-JUL-1"), (28, "1993-JUL-1"), (29, "1994-JUL-1"),
    (30, "1996-JAN-1"), (31, "1997-JUL-1"), (32, "1999-JAN-1"), (33, "2006-JAN-1"), (34, "2009-JAN-1"),
    (35, "2012-JUL-1"), (36, "2015-JUL-1"), (37, "2017-JAN-1"),
)
#: (radii km, pole RA deg (a0, a1/century), pole Dec deg, prime meridian deg (W0, deg/day)).
_SYNTHETIC_BODIES = {
    599: ((71492.0, 71492.0, 66854.0), (268.056595, -0.006499), (64.495303, 0.002413), (284.95, 870.536)),
    501: ((1829.4, 1819.4, 1815.7), (268.05, -0.009), (64.50, 0.003), (200.39, 203.4889538)),
    502: ((1562.6, 1560.3, 1559.5), (268.08, -0.009), (64.51, 0.003), (36.022, 101.3747235)),
    503: ((2631.2, 2631.2, 2631.2), (268.20, -0.009), (64.57, 0.003), (44.064, 50.3176081)),
    504: ((2410.3, 2410.3, 2410.3), (268.72, -0.009), (64.83, 0.003), (259.51, 21.5710715)),
}
_SYNTHETIC_CAMERA_CY = {-61500: 78.48, -61501: 158.48, -61502: 3.48, -61503: -151.52, -61504: 315.48}


def _kernel_text(title: str, data: Sequence[str]) -> str:
    body = "\n".join(f"   {line}" for line in data)
    return (f"KPL/{title}\n\n{_SYNTHETIC_NOTE}\n\n\\begindata\n\n{body}\n\n\\begintext\n")


def _write_synthetic_text_kernels(kdir: Path, target: str) -> list[Path]:
    """Self-contained LSK, PCK, FK, IK and SCLK, so the simulator works offline anywhere.

    Labelled SYNTHETIC in their comments (and in truth.json). The camera and frame numbers
    are JunoCam-like (the published values); the bodies lack pck00010's nutation terms.
    """
    del target  # every Galilean body is written: the scene needs Jupiter for moons anyway
    leaps = ["DELTET/DELTA_T_A = 32.184", "DELTET/K = 1.657D-3", "DELTET/EB = 1.671D-2",
             "DELTET/M = ( 6.239996D0 1.99096871D-7 )", "DELTET/DELTA_AT = ( "
             + "\n     ".join(f"{n}, @{d}" for n, d in _LEAP_SECONDS) + " )"]
    pck = []
    for naif, (radii, ra, dec, pm) in _SYNTHETIC_BODIES.items():
        pck += [f"BODY{naif}_RADII = ( {radii[0]} {radii[1]} {radii[2]} )",
                f"BODY{naif}_POLE_RA = ( {ra[0]} {ra[1]} 0.0 )",
                f"BODY{naif}_POLE_DEC = ( {dec[0]} {dec[1]} 0.0 )",
                f"BODY{naif}_PM = ( {pm[0]} {pm[1]} 0.0 )"]
    fk = ["NAIF_BODY_NAME += ( 'JUNO' )", "NAIF_BODY_CODE += ( -61 )",
          "FRAME_JUNO_SPACECRAFT = -61000", "FRAME_-61000_NAME = 'JUNO_SPACECRAFT'",
          "FRAME_-61000_CLASS = 3", "FRAME_-61000_CLASS_ID = -61000", "FRAME_-61000_CENTER = -61",
          "CK_-61000_SCLK = -61", "CK_-61000_SPK = -61",
          "FRAME_JUNO_JUNOCAM_CUBE = -61505", "FRAME_-61505_NAME = 'JUNO_JUNOCAM_CUBE'",
          "FRAME_-61505_CLASS = 4", "FRAME_-61505_CLASS_ID = -61505", "FRAME_-61505_CENTER = -61",
          "TKFRAME_-61505_SPEC = 'MATRIX'", "TKFRAME_-61505_RELATIVE = 'JUNO_SPACECRAFT'",
          "TKFRAME_-61505_MATRIX = ( -0.0059163 -0.0142817 -0.9998805 0.0023828 -0.9998954 0.0142678 "
          "-0.9999797 -0.0022981 0.0059497 )",
          "FRAME_JUNO_JUNOCAM = -61500", "FRAME_-61500_NAME = 'JUNO_JUNOCAM'",
          "FRAME_-61500_CLASS = 4", "FRAME_-61500_CLASS_ID = -61500", "FRAME_-61500_CENTER = -61",
          "TKFRAME_-61500_SPEC = 'ANGLES'", "TKFRAME_-61500_RELATIVE = 'JUNO_JUNOCAM_CUBE'",
          "TKFRAME_-61500_ANGLES = ( 0.69 -0.469 0.583 )", "TKFRAME_-61500_AXES = ( 3 2 1 )",
          "TKFRAME_-61500_UNITS = 'DEGREES'"]
    ik = []
    for naif, cy in _SYNTHETIC_CAMERA_CY.items():
        ik += [f"INS{naif}_FOCAL_LENGTH = 10.95637", f"INS{naif}_PIXEL_SIZE = 0.0074",
               f"INS{naif}_DISTORTION_K1 = -5.9624209455667325D-08",
               f"INS{naif}_DISTORTION_K2 = 2.7381910042256151D-14",
               f"INS{naif}_DISTORTION_X = 814.21", f"INS{naif}_DISTORTION_Y = {cy}",
               f"INS{naif}_START_TIME_BIAS = 0.06188", f"INS{naif}_INTERFRAME_DELTA = 0.001"]
    # SCLK: one partition, 256 ticks per second, counting TDT seconds from J2000
    sclk = ["SCLK_KERNEL_ID = ( @2000-01-01/12:00:00 )", "SCLK_DATA_TYPE_61 = ( 1 )",
            "SCLK01_TIME_SYSTEM_61 = ( 2 )", "SCLK01_N_FIELDS_61 = ( 2 )",
            "SCLK01_MODULI_61 = ( 4294967296 256 )", "SCLK01_OFFSETS_61 = ( 0 0 )",
            "SCLK01_OUTPUT_DELIM_61 = ( 1 )", "SCLK_PARTITION_START_61 = ( 0.0 )",
            "SCLK_PARTITION_END_61 = ( 1.0995116277750E+12 )",
            "SCLK01_COEFFICIENTS_61 = ( 0.0 0.0 1.0 )"]
    files = [("lsk", "synthetic_naif.tls", "LSK", leaps), ("pck", "synthetic_galilean.tpc", "PCK", pck),
             ("fk", "synthetic_juno.tf", "FK", fk), ("ik", "synthetic_junocam.ti", "IK", ik),
             ("sclk", "synthetic_juno_sclk.tsc", "SCLK", sclk)]
    written = []
    for kind, name, title, data in files:
        (kdir / kind).mkdir(parents=True, exist_ok=True)
        path = kdir / kind / name
        _atomic_text(path, _kernel_text(title, data))
        written.append(path)
    return written


@contextmanager
def _furnished(paths: Sequence[Path]) -> Iterator[None]:
    loaded: list[str] = []
    try:
        for path in paths:
            spiceypy.furnsh(str(path))
            loaded.append(str(path))
        yield
    finally:
        for path in reversed(loaded):
            spiceypy.unload(path)


def _write_spk(path: Path, segments: Sequence[tuple[int, int, np.ndarray, np.ndarray]], comment: str) -> None:
    """Type-9 SPK (Lagrange, degree 3) from sampled states; exact for straight-line motion."""
    if path.exists():
        path.unlink()
    handle = spiceypy.spkopn(str(path), "junoproc simulator", 4096)
    try:
        spiceypy.dafac(handle, [line[:80] for line in comment.splitlines() if line.strip()])
        for body, centre, epochs, states in segments:
            spiceypy.spkw09(handle, body, centre, "J2000", float(epochs[0]), float(epochs[-1]),
                            f"SIM {body} wrt {centre}", 3, len(epochs), states.tolist(), epochs.tolist())
    finally:
        spiceypy.spkcls(handle)


def _write_ck(path: Path, attitude: SpinAttitude, et_first: float, et_last: float, step_s: float,
              comment: str) -> int:
    """Type-3 CK of JUNO_SPACECRAFT (-61000) with angular velocity, sampled every ``step_s``."""
    if path.exists():
        path.unlink()
    n = int(math.ceil((et_last - et_first) / step_s)) + 1
    ets = et_first + step_s * np.arange(n)
    sclk = np.array([spiceypy.sce2c(_JUNO_ID, float(et)) for et in ets])
    quats = np.array([spiceypy.m2q(attitude.rot_j2000_to_sc(float(et))) for et in ets])
    avvs = np.tile(attitude.angular_velocity_j2000_rad_s(), (n, 1))
    handle = spiceypy.ckopn(str(path), "junoproc simulator", 4096)
    try:
        spiceypy.dafac(handle, [line[:80] for line in comment.splitlines() if line.strip()])
        spiceypy.ckw03(handle, float(sclk[0]), float(sclk[-1]), _JUNO_CK_ID, "J2000", True,
                       "SIM JUNO SPIN", n, sclk, quats, avvs, 1, [float(sclk[0])])
    finally:
        spiceypy.ckcls(handle)
    return n


def _line_states(p0: np.ndarray, v: np.ndarray, et0: float, epochs: np.ndarray) -> np.ndarray:
    dt = (epochs - et0)[:, None]
    return np.hstack([p0[None, :] + dt * v[None, :], np.repeat(v[None, :], len(epochs), axis=0)])


# ---------------------------------------------------------------------------------------
# the product record
@dataclass(frozen=True)
class PassGeometry:
    """One imaging pass shared by several simulated products (:func:`simulate_pass`): the
    straight-line states of Juno relative to the target and of Jupiter relative to the Sun
    at ``et_ref`` (J2000, km and km/s; the SPKs of all products then hold the same lines),
    and the spin axis (J2000) and rate, inertially fixed over the pass as on Juno."""

    et_ref: float
    obs_pos_j2000_km: tuple[float, float, float]
    obs_vel_j2000_km_s: tuple[float, float, float]
    sun_dir_j2000: tuple[float, float, float]
    jupiter_pos_j2000_km: tuple[float, float, float]
    jupiter_vel_j2000_km_s: tuple[float, float, float]
    spin_axis_j2000: tuple[float, float, float]
    spin_rate_deg_s: float


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatedProduct:
    """What :func:`simulate` wrote, and the truth it was made from."""

    out_dir: Path
    product_dir: Path
    metadata_path: Path
    raw_path: Path
    kernel_dir: Path
    truth_dir: Path
    product_id: str
    target: str
    filters: tuple[str, ...]
    n_frames: int
    attitude: SpinAttitude
    #: Truth frame time = label-recipe frame time + this (s).
    time_offset_s: float
    #: True frame times (TDB s past J2000), frame 0 first.
    frame_ets: tuple[float, ...]
    kernel_files: tuple[Path, ...]
    synthetic_kernels: bool
    wrote_ck: bool
    elapsed_s: float
    #: The pass this product belongs to (its own when simulated alone).
    pass_geometry: PassGeometry | None = None

    @property
    def spin(self) -> Mapping[str, object]:
        return self.attitude.describe()


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------
def _texel_coords(lat_deg: np.ndarray, lon_deg: np.ndarray, shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Planetocentric lat / east lon -> (x, y) in the texture, pixel centres at integers."""
    height, width = shape
    x = lon_deg * (width / 360.0) - 0.5
    y = (90.0 - lat_deg) * (height / 180.0) - 0.5
    return x, y


def _sample_supersampled(texture: np.ndarray, shape: tuple[int, int], x: np.ndarray, y: np.ndarray
                         ) -> np.ndarray:
    """Average of 4 bilinear taps at pixel offsets (+-0.25, +-0.25) via the local Jacobian.

    The texture wraps (BORDER_WRAP): right in longitude; at the poles the half texel beyond
    the edge reads the opposite pole's row, below the pixel scale of any framelet.
    """
    width = shape[1]

    def grad(a: np.ndarray, axis: int, wrap: float | None) -> np.ndarray:
        """Central differences; neighbour differences wrapped first (longitude seam)."""
        d = np.diff(a, axis=axis)
        if wrap is not None:
            d = (d + wrap / 2) % wrap - wrap / 2
        d = np.nan_to_num(d, nan=0.0)
        if a.shape[axis] < 2:
            return np.zeros_like(a)
        first = np.take(d, [0], axis=axis)
        last = np.take(d, [-1], axis=axis)
        d = np.concatenate([first, d, last], axis=axis)
        n = d.shape[axis]
        return 0.5 * (np.take(d, range(0, n - 1), axis=axis) + np.take(d, range(1, n), axis=axis))

    dx_dcol, dx_drow = grad(x, 1, float(width)), grad(x, 0, float(width))
    dy_dcol, dy_drow = grad(y, 1, None), grad(y, 0, None)
    acc = np.zeros(x.shape, np.float32)
    for sc, sr in ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)):
        xs = x + sc * dx_dcol + sr * dx_drow
        ys = y + sc * dy_dcol + sr * dy_drow
        xs = np.mod(xs, width)
        acc += cv2.remap(texture, np.nan_to_num(xs, nan=0.0).astype(np.float32),
                         np.nan_to_num(ys, nan=0.0).astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return acc * 0.25


@dataclass(frozen=True)
class _Scene:
    target: Target
    attitude: SpinAttitude
    frame_ets: np.ndarray
    cameras: Mapping[str, CameraModel]
    textures: Mapping[str, np.ndarray]
    texture_shape: tuple[int, int]
    minnaert_k: float
    jupitershine: float
    psf_sigma_px: float = 0.0



#: Sub-pixel samples per axis of the pixels the limb crosses (stratified, jittered).
LIMB_SUBSAMPLES = 6


def _illumination(scene: _Scene, state: Any, pts: Any, jup_body: np.ndarray | None) -> np.ndarray:
    """Minnaert sunlight (+ Jupitershine) of surface points, zero on the night side."""
    target = scene.target
    k = scene.minnaert_k
    normal = pts.pos_body_km / target.radii**2
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    to_sun = state.sun_pos_body_km - pts.pos_body_km
    to_sun /= np.linalg.norm(to_sun, axis=-1, keepdims=True)
    mu0 = np.einsum("...i,...i->...", normal, to_sun)
    mu = np.einsum("...i,...i->...", normal, -pts.apparent_dir_body)
    mu = np.clip(mu, 1e-3, 1.0)
    light = np.where(mu0 > 0, np.clip(mu0, 0, 1) ** k * mu ** (k - 1.0), 0.0)
    if jup_body is not None:
        to_jup = jup_body - pts.pos_body_km
        to_jup /= np.linalg.norm(to_jup, axis=-1, keepdims=True)
        mu_j = np.einsum("...i,...i->...", normal, to_jup)
        light = light + scene.jupitershine * np.where(mu_j > 0, np.clip(mu_j, 0, 1) ** k
                                                      * mu ** (k - 1.0), 0.0)
    return light


def _limb_pixels(scene: _Scene, band: str, state: Any, rot: np.ndarray, jup_body: np.ndarray | None,
                 x_px: np.ndarray, y_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean radiance over the area of pixels centred at (x_px, y_px): K x K stratified,
    jittered samples, each a ray of its own that hits the target or the sky.

    The limb then falls inside a pixel as it does on a CCD (the pixel integrates the
    scene over its area), instead of where the pixel centre happens to be: a hard,
    centre-sampled edge puts every limb point up to 0.5 px off (0.34 px RMS on the truth
    attitude), with errors that follow the pixel grid and bias a limb fit. With an optical
    blur (``scene.psf_sigma_px``) the samples follow the pixel's area convolved with the
    Gaussian PSF (stratified in its distribution function along each axis).
    """
    k = LIMB_SUBSAMPLES
    n = x_px.size
    grid = (np.arange(k) + 0.0)[None, :]
    ox = (grid[:, None, :] + rng.random((n, k, k))) / k - 0.5   # (n, k, k) along x
    oy = (grid.T[None] + rng.random((n, k, k))) / k - 0.5        # along y
    if scene.psf_sigma_px > 0:  # the same strata, through the box * Gaussian quantiles
        sigma = scene.psf_sigma_px
        ox, oy = _box_gauss_quantile(ox + 0.5, sigma), _box_gauss_quantile(oy + 0.5, sigma)
    cam = scene.cameras[band]
    rays = cam.px_to_cam((x_px[:, None, None] + ox).ravel(), (y_px[:, None, None] + oy).ravel())
    pts = intersect_rays(state, rot, rays, scene.target)
    value = np.zeros(rays.shape[0], np.float64)
    if pts.hit.any():
        hit = pts.hit
        sub = type(pts)(pos_body_km=pts.pos_body_km[hit], observer_pos_body_km=pts.observer_pos_body_km[hit],
                        hit=hit[hit], range_km=pts.range_km[hit],
                        apparent_dir_body=pts.apparent_dir_body[hit], delta_lt_s=pts.delta_lt_s[hit])
        ll = lonlat_from_body(sub.pos_body_km, scene.target)
        tx, ty = _texel_coords(ll["lat_centric_deg"], ll["lon_east_deg"], scene.texture_shape)
        m = tx.size  # cv2.remap maps must stay below 32767 a side: (rows, 1024)
        cols = 1024
        pad = -m % cols
        mx = np.pad(np.mod(tx, scene.texture_shape[1]).astype(np.float32), (0, pad)).reshape(-1, cols)
        my = np.pad(ty.astype(np.float32), (0, pad)).reshape(-1, cols)
        refl = cv2.remap(scene.textures[band], mx, my, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_WRAP).ravel()[:m]
        value[hit] = refl * _illumination(scene, state, sub, jup_body)
    return value.reshape(n, k * k).mean(axis=1)


def _box_gauss_quantile(p: np.ndarray, sigma_px: float) -> np.ndarray:
    """Quantiles (px) of a pixel's unit box convolved with a Gaussian of ``sigma_px``
    at probabilities ``p``: the offsets of a pixel's samples under an optical blur."""
    from scipy.special import ndtr

    x = np.linspace(-0.5 - 6.0 * sigma_px, 0.5 + 6.0 * sigma_px, 4001)

    def g(z: np.ndarray) -> np.ndarray:  # the integral of the normal distribution function
        return z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    cdf = sigma_px * (g((x + 0.5) / sigma_px) - g((x - 0.5) / sigma_px))
    return np.interp(p, cdf, x)


def psf_kernel(sigma_px: float) -> np.ndarray:
    """The 1-D discrete Gaussian of variance ``sigma_px``^2 (Lindeberg's kernel
    exp(-t) I_n(t), t = sigma^2), float32, summing to 1.

    The renderer blurs the disc's inside with it (its texture is smooth on the pixel
    scale; the limb's pixels are sampled through the PSF itself): its variance is exactly
    sigma^2 and its spectrum exp(t (cos w - 1)) is the Gaussian's at low frequency. A
    sampled Gaussian is not, below ~1 px: cv2's for sigma 0.45 px has a variance of
    0.146 px^2 (sigma 0.38) and most of its weight in the centre tap.
    """
    from scipy.special import ive

    t = float(sigma_px) ** 2
    half = int(math.ceil(4.0 * sigma_px)) + 1
    k = ive(np.arange(-half, half + 1), t)
    return (k / k.sum()).astype(np.float32)


def _render_noiseless(scene: _Scene, filters: Sequence[str], seed: int = 0) -> np.ndarray:
    """Reflectance x illumination, (n_frames, n_filters, rows, samples) float32.

    Pixels inside the disc: 2x2 supersampled texture at the pixel centre's surface point
    (blurred by :func:`psf_kernel` under an optical blur). Pixels the limb crosses, or
    whose PSF reaches it: the area average of :func:`_limb_pixels`. Each framelet is
    blurred on its own (the rows beyond it unseen).
    """
    rows, samples = FRAMELET_ROWS, CCD_SAMPLES
    out = np.zeros((len(scene.frame_ets), len(filters), rows, samples), np.float32)
    target = scene.target
    radius_max = float(np.max(target.radii))
    rng = np.random.default_rng([seed, 7])
    reach = 1 + int(math.ceil(3.0 * scene.psf_sigma_px))  # px from the limb sampled by rays
    ring = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    kernel = psf_kernel(scene.psf_sigma_px) if scene.psf_sigma_px > 0 else None
    for f, et in enumerate(scene.frame_ets):
        state = frame_state(target, float(et))
        rot = scene.attitude.rot_j2000_to_cam(float(et))
        centre_cam = rot @ (state.target_pos_j2000_km / np.linalg.norm(state.target_pos_j2000_km))
        ang_radius = math.asin(min(radius_max / float(np.linalg.norm(state.target_pos_j2000_km)), 1.0))
        jup_body = None
        if scene.jupitershine > 0 and target.naif_id != _JUPITER_ID:
            jup_j2000 = spiceypy.spkpos("JUPITER", float(et) - state.lt_s, "J2000", "LT+S", target.name)[0]
            jup_body = state.rot_j2000_to_body @ np.asarray(jup_j2000)
        for b, band in enumerate(filters):
            cam = scene.cameras[band]
            # a cone around the target centre bounds the rows/columns worth intersecting
            near = (cam.framelet_rays_cam[::8, ::8] @ centre_cam) >= math.cos(
                min(ang_radius + (12.0 + 4.0 * (reach - 1)) / cam.focal_px, math.pi))
            if not near.any():
                continue  # the target is nowhere near this framelet
            rr, cc = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
            r0, r1 = max(int(rr[0]) * 8 - 8, 0), min(int(rr[-1]) * 8 + 9, rows)
            c0, c1 = max(int(cc[0]) * 8 - 8, 0), min(int(cc[-1]) * 8 + 9, samples)
            rays = np.ascontiguousarray(cam.framelet_rays_cam[r0:r1, c0:c1])
            pts = intersect_rays(state, rot, rays, target)
            hit = pts.hit
            if not hit.any():
                continue
            ll = lonlat_from_body(pts.pos_body_km, target)
            x, y = _texel_coords(ll["lat_centric_deg"], ll["lon_east_deg"], scene.texture_shape)
            refl = _sample_supersampled(scene.textures[band], scene.texture_shape, x, y)
            light = _illumination(scene, state, pts, jup_body)
            block = np.where(hit, refl * light, 0.0)
            if kernel is not None:
                block = cv2.sepFilter2D(block, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)
            # the pixels the limb crosses (a hit next to a miss) or whose PSF reaches it
            h8 = hit.astype(np.uint8)
            edge = cv2.dilate(h8, ring, borderType=cv2.BORDER_REPLICATE) != cv2.erode(
                h8, ring, borderType=cv2.BORDER_REPLICATE)
            if edge.any():
                jj, ii = np.nonzero(edge)
                block[jj, ii] = _limb_pixels(scene, band, state, rot, jup_body, c0 + ii + 0.5,
                                             r0 + jj + 0.5, rng)
            out[f, b, r0:r1, c0:c1] = block
    return out


# ---------------------------------------------------------------------------------------
# scene design
# ---------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotate(v: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = _unit(axis)
    return (v * math.cos(angle_rad) + np.cross(axis, v) * math.sin(angle_rad)
            + axis * float(axis @ v) * (1 - math.cos(angle_rad)))


def _tuple3(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _radec_deg(v: np.ndarray) -> tuple[float, float]:
    _, ra, dec = spiceypy.recrad(_unit(v))
    return math.degrees(ra), math.degrees(dec)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _utc_ms(et: float) -> str:
    return str(spiceypy.et2utc(et, "ISOC", 3))


def simulate(
    out_dir: str | os.PathLike[str],
    *,
    target: str = "JUPITER",
    altitude_km: float | None = None,
    n_frames: int | None = None,
    filters: Sequence[str] = ("BLUE", "GREEN", "RED"),
    seed: int = 0,
    write_ck: bool = True,
    time_offset_s: float = 0.0,
    kernel_dir: str | os.PathLike[str] | None = None,
    jupitershine: bool = False,
    jupitershine_fraction: float = 2e-3,
    start_time_utc: str = "2022-08-17T14:05:00.000",
    perijove: int = 44,
    interframe_delay_s: float = 0.373,
    exposure_ms: float | None = None,
    tdi_stages: int | None = None,
    spin_rate_deg_s: float = 12.0,
    sub_spacecraft_lat_deg: float = -25.0,
    sub_spacecraft_lon_deg: float = 40.0,
    phase_angle_deg: float | None = None,
    axis_tilt_deg: float = 0.0,
    relative_speed_km_s: float | None = None,
    minnaert_k: float | None = None,
    full_well_dn: float = 1400.0,
    noise: bool = True,
    gain_e_per_dn: float = 16.3,
    read_noise_dn: float = 1.2,
    n_hot_pixels: int = 6,
    n_particle_hits: int = 12,
    texture_width: int | None = None,
    synthetic_kernels: bool = False,
    band_boresight_rad: Mapping[str, Sequence[float]] | None = None,
    psf_sigma_px: float = 0.0,
    texture_seed: int | None = None,
    pass_geometry: PassGeometry | None = None,
) -> SimulatedProduct:
    """Write a synthetic raw product, its kernels and its truth under ``out_dir``.

    ``time_offset_s``: the true frame times are the label recipe's plus this offset
    (what the pointing stage must find). ``full_well_dn``: DN of a reflectance-1 surface
    lit and seen at normal incidence (per band scaled by the band's relative response).
    ``synthetic_kernels`` forces the self-contained synthetic text kernels even where
    real ones exist (they are used anyway when no local kernel folder is found).
    ``band_boresight_rad``: per band, the true camera's rotation vector (rad) away from the
    IK's model (JUNO_JUNOCAM -> band, see :class:`camera.CameraModel`): the bands then
    misregister by it unless the pointing stage finds it (the CK holds the spacecraft only).
    ``psf_sigma_px``: the sigma (px) of a Gaussian PSF of the optics (default none: the
    pixel's area alone, a sharper limb than JunoCam's, whose limbs fit a blur of 0.48-0.51
    px): the limb's pixels are sampled through it, the disc's inside blurred by
    :func:`psf_kernel`.
    ``texture_seed``: the planet's texture (default ``seed``, which also sets the noise and
    the product id). ``pass_geometry``: place Juno, Jupiter, the Sun and the spin axis as
    in that pass instead of from ``altitude_km``, ``sub_spacecraft_*``, ``phase_angle_deg``,
    ``relative_speed_km_s``, ``axis_tilt_deg`` and ``spin_rate_deg_s`` (see :func:`simulate_pass`).
    """
    t_start = time.perf_counter()
    target = target.strip().upper()
    if target not in TARGETS:
        raise SimulationError(f"unknown target {target!r}",
                              hint=f"one of {', '.join(t.lower() for t in TARGETS)}")
    filters = tuple(f.strip().upper() for f in filters)
    if not filters or len(set(filters)) != len(filters) or any(
            f not in ("BLUE", "GREEN", "RED", "METHANE") for f in filters):
        raise SimulationError(f"bad filter list {list(filters)}",
                              hint="distinct names from BLUE, GREEN, RED, METHANE")
    is_jupiter = target == "JUPITER"
    altitude_km = float(altitude_km if altitude_km is not None else (86_000.0 if is_jupiter else 30_000.0))
    n_frames = int(n_frames if n_frames is not None else (22 if is_jupiter else 14))
    if not 0.0 <= psf_sigma_px <= 5.0:
        raise SimulationError(f"psf_sigma_px {psf_sigma_px} out of range", hint="0 (none) .. 5 px")
    if not (altitude_km > 0 and 1 <= n_frames <= 200):
        raise SimulationError(f"altitude {altitude_km} km / {n_frames} frames out of range",
                              hint="altitude > 0, 1..200 frames")
    if phase_angle_deg is None:
        phase_angle_deg = 40.0 if is_jupiter else 75.0
    speed = float(relative_speed_km_s if relative_speed_km_s is not None else (50.0 if is_jupiter else 18.0))
    minnaert_k = float(minnaert_k if minnaert_k is not None else (0.9 if is_jupiter else 1.0))
    exposure_ms = float(exposure_ms if exposure_ms is not None else (3.2 if is_jupiter else 6.4))
    tdi_stages = int(tdi_stages if tdi_stages is not None else (1 if is_jupiter else 2))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kdir = out / "kernels"
    truth_dir = out / "truth"
    for d in (kdir, truth_dir):
        d.mkdir(parents=True, exist_ok=True)

    # --- generic text kernels ------------------------------------------------------
    generic = None if synthetic_kernels else _find_generic_kernels(
        Path(kernel_dir) if kernel_dir is not None else None)
    kernel_files: list[Path] = []
    if generic is not None:
        for kind, src in generic.items():
            (kdir / kind).mkdir(exist_ok=True)
            dst = kdir / kind / src.name
            shutil.copyfile(src, dst)
            kernel_files.append(dst)
        used_synthetic = False
    else:
        kernel_files = _write_synthetic_text_kernels(kdir, target)
        used_synthetic = True

    image_set_id = f"{90000 + seed % 10000:05d}"
    band_letter = "C" if any(f != "METHANE" for f in filters) else "M"

    with _furnished(kernel_files):
        tgt = Target.from_name(target)
        boresight = {b.upper(): tuple(float(v) for v in w) for b, w in (band_boresight_rad or {}).items()}
        if set(boresight) - set(filters) or any(len(w) != 3 for w in boresight.values()):
            raise SimulationError(f"bad band boresight {band_boresight_rad}",
                                  hint=f"rotation vectors (3 values, rad) for bands of {list(filters)}")
        cameras = {band: CameraModel.from_pool(band) for band in filters}
        cameras = {band: cam.with_boresight(boresight[band]) if band in boresight else cam
                   for band, cam in cameras.items()}
        ik_prefix = f"INS{cameras[filters[0]].naif_id}_"
        label_timing = FrameTiming(
            start_et=float(spiceypy.str2et(start_time_utc)), interframe_delay_s=interframe_delay_s,
            start_time_bias_s=float(spiceypy.gdpool(f"{ik_prefix}START_TIME_BIAS", 0, 1)[0]),
            interframe_delta_s=float(spiceypy.gdpool(f"{ik_prefix}INTERFRAME_DELTA", 0, 1)[0]),
            exposure_s=exposure_ms * 1e-3,
        )
        true_timing = label_timing.with_offsets(time_offset_s, 0.0)
        frame_ets = true_timing.frame_et(np.arange(n_frames))
        et_mid = float(0.5 * (frame_ets[0] + frame_ets[-1]))

        # --- scene geometry (J2000) at et_mid --------------------------------------
        rot_body = np.asarray(spiceypy.pxform("J2000", tgt.frame, et_mid))
        from .geometry import body_from_lonlat

        surf = body_from_lonlat(np.array(sub_spacecraft_lat_deg), np.array(sub_spacecraft_lon_deg), tgt)
        pole = rot_body.T @ np.array([0.0, 0.0, 1.0])
        if pass_geometry is None:
            obs_dir = _unit(rot_body.T @ _unit(surf))
            obs_pos = obs_dir * (float(np.linalg.norm(surf)) + altitude_km)  # Juno wrt target, J2000
            side = _unit(np.cross(obs_dir, pole))
            sun_dir = _rotate(obs_dir, np.cross(obs_dir, side), math.radians(phase_angle_deg))
            sun_dir = _unit(sun_dir)
            v_rel = speed * _unit(np.cross(obs_dir, sun_dir) if phase_angle_deg > 1 else side)
            jupiter_pos = -sun_dir * _JUPITER_SUN_KM  # wrt SSB (the Sun rests at the SSB)
            jupiter_vel = _JUPITER_HELIO_SPEED_KM_S * _unit(np.cross(pole, sun_dir))
        else:  # the pass's lines, moved to this image's mid-time
            pg = pass_geometry
            v_rel = np.asarray(pg.obs_vel_j2000_km_s, dtype=np.float64)
            obs_pos = np.asarray(pg.obs_pos_j2000_km, dtype=np.float64) + v_rel * (et_mid - pg.et_ref)
            obs_dir = _unit(obs_pos)
            sun_dir = np.asarray(pg.sun_dir_j2000, dtype=np.float64)
            jupiter_vel = np.asarray(pg.jupiter_vel_j2000_km_s, dtype=np.float64)
            jupiter_pos = (np.asarray(pg.jupiter_pos_j2000_km, dtype=np.float64)
                           + jupiter_vel * (et_mid - pg.et_ref))
            spin_rate_deg_s = pg.spin_rate_deg_s
            altitude_km = float(np.linalg.norm(obs_pos)) - float(np.mean(tgt.radii_km))
        moon_pos = moon_vel = None
        if not is_jupiter:
            # Jupiter seen from the moon ~110-130 deg from the Sun: lights part of the night side
            jup_from_moon = _unit(obs_dir - 0.6 * sun_dir)
            moon_pos = -jup_from_moon * _MOON_ORBIT_KM[target]
            moon_vel = _MOON_ORBIT_SPEED_KM_S[target] * _unit(np.cross(pole, -jup_from_moon))

        # --- spin: axis perpendicular to Juno->target, phase puts the target mid-image
        to_target = -obs_dir
        axis = _unit(np.cross(to_target, _unit(v_rel)))
        if axis_tilt_deg:
            axis = _unit(_rotate(axis, np.cross(axis, to_target), math.radians(axis_tilt_deg)))
        if pass_geometry is not None:
            axis = _unit(np.asarray(pass_geometry.spin_axis_j2000, dtype=np.float64))
        this_pass = pass_geometry or PassGeometry(
            et_ref=et_mid, obs_pos_j2000_km=_tuple3(obs_pos), obs_vel_j2000_km_s=_tuple3(v_rel),
            sun_dir_j2000=_tuple3(sun_dir), jupiter_pos_j2000_km=_tuple3(jupiter_pos),
            jupiter_vel_j2000_km_s=_tuple3(jupiter_vel), spin_axis_j2000=_tuple3(axis),
            spin_rate_deg_s=float(spin_rate_deg_s))
        ra, dec = _radec_deg(axis)
        rot_sc_to_cam = np.asarray(spiceypy.pxform(_SPACECRAFT_FRAME, CAMERA_FRAME, et_mid))
        look_cam = np.zeros(3)
        for band in filters:
            ray = cameras[band].px_to_cam(np.array(CCD_SAMPLES / 2), np.array(FRAMELET_ROWS / 2))
            look_cam += _unit(ray)
        look_sc = rot_sc_to_cam.T @ _unit(look_cam)
        x0, y0 = spin_basis(axis)[:2]
        az_target = math.atan2(float(to_target @ y0), float(to_target @ x0))
        az_cam = math.atan2(float(look_sc[1]), float(look_sc[0]))
        phase_deg = math.degrees(az_target - az_cam) % 360.0
        # the solver's own model (pointing.SpinAttitude): what is rendered is what is fitted
        attitude = SpinAttitude(
            spin_axis_ra_deg=ra, spin_axis_dec_deg=dec, phase0_deg=phase_deg, rate_deg_s=spin_rate_deg_s,
            t_ref_et=et_mid, rot_sc_to_cam=tuple(tuple(float(v) for v in row) for row in rot_sc_to_cam),
            band_boresight_rad=tuple((b, (w[0], w[1], w[2])) for b, w in boresight.items()),
        )

        # --- SPK and CK ----------------------------------------------------------------
        tag = f"sim_{image_set_id}"
        (kdir / "spk").mkdir(exist_ok=True)
        spk_path = kdir / "spk" / f"{tag}.bsp"
        long_ets = np.arange(frame_ets[0] - 4000.0, frame_ets[-1] + 4000.0 + 10.0, 10.0)
        short_ets = np.arange(frame_ets[0] - 600.0, frame_ets[-1] + 600.0 + 5.0, 5.0)
        zero = np.zeros(3)
        segments = [(_SUN_ID, _SSB_ID, long_ets, _line_states(zero, zero, et_mid, long_ets)),
                    (_JUPITER_ID, _SSB_ID, long_ets,
                     _line_states(jupiter_pos, jupiter_vel, et_mid, long_ets))]
        if moon_pos is not None and moon_vel is not None:
            segments.append((tgt.naif_id, _JUPITER_ID, long_ets,
                             _line_states(moon_pos, moon_vel, et_mid, long_ets)))
        segments.append((_JUNO_ID, tgt.naif_id, short_ets, _line_states(obs_pos, v_rel, et_mid, short_ets)))
        comment = (f"junoproc simulator SPK: straight-line constant-velocity states (J2000) of the Sun "
                   f"(at the SSB), Jupiter, {target} and Juno around {_utc_ms(et_mid)}; "
                   "synthetic, not an ephemeris.")
        _write_spk(spk_path, segments, comment)
        kernel_files.append(spk_path)
        ck_path = None
        n_ck = 0
        if write_ck:
            (kdir / "ck").mkdir(exist_ok=True)
            ck_path = kdir / "ck" / f"{tag}_sc.bc"
            n_ck = _write_ck(ck_path, attitude, float(frame_ets[0]) - 10.0, float(frame_ets[-1]) + 10.0, 0.05,
                             f"junoproc simulator CK: pure spin of JUNO_SPACECRAFT, axis RA {ra:.6f} "
                             f"Dec {dec:.6f} deg, rate {spin_rate_deg_s} deg/s; synthetic.")
            kernel_files.append(ck_path)

        with _furnished([spk_path]):
            # --- texture and rendering ---------------------------------------------
            bands_needed = tuple(filters)
            tex_seed = seed if texture_seed is None else int(texture_seed)
            if is_jupiter:
                width = texture_width or 8192
                textures, tex_desc = jupiter_texture(tex_seed, width, bands_needed)
            else:
                width = texture_width or 4096
                textures, tex_desc = moon_texture(target, tex_seed, width, bands_needed)
            tex_shape = textures[filters[0]].shape
            scene = _Scene(target=tgt, attitude=attitude, frame_ets=frame_ets, cameras=cameras,
                           textures=textures, texture_shape=(int(tex_shape[0]), int(tex_shape[1])),
                           minnaert_k=minnaert_k,
                           jupitershine=jupitershine_fraction if jupitershine and not is_jupiter else 0.0,
                           psf_sigma_px=psf_sigma_px)
            radiance = _render_noiseless(scene, filters, seed)
            nadir_km = altitude_km / cameras[filters[0]].focal_px
            sun_dist_km = float(np.linalg.norm(spiceypy.spkpos("SUN", et_mid, "J2000", "NONE", tgt.name)[0]))
            subpt, _, srfvec = spiceypy.subpnt("NEAR POINT/ELLIPSOID", tgt.name, float(frame_ets[0]),
                                               tgt.frame, "LT+S", "JUNO")
            sub_lat = lonlat_from_body(np.asarray(subpt), tgt)["lat_centric_deg"]
            sub_lon_w = float(lonlat_from_body(np.asarray(subpt), tgt)["lon_west_deg"])
            label_altitude = float(np.linalg.norm(srfvec))
            sclk_start = str(spiceypy.sce2s(_JUNO_ID, label_timing.start_et))
            start_utc = _utc_ms(label_timing.start_et)
            stop_utc = _utc_ms(float(label_timing.frame_et(n_frames - 1)) + exposure_ms * 1e-3)
            ref_utc = _utc_ms(et_mid)
            yyyyddd = str(spiceypy.et2utc(label_timing.start_et, "D", 0))[:8].replace("-", "")

    # --- radiometry and noise ----------------------------------------------------------
    rng = np.random.default_rng([seed, 4])
    band_response = {"BLUE": 0.75, "GREEN": 1.0, "RED": 0.9, "METHANE": 0.35}
    exposure_scale = (exposure_ms * tdi_stages) / 3.2 / (1.0 if is_jupiter else 4.0)
    scale = np.array([full_well_dn * band_response[b] * exposure_scale for b in filters], np.float32)
    dn = radiance * scale[None, :, None, None]
    first, last = PHOTOACTIVE_COLUMNS
    dn[..., :first] = 0.0
    dn[..., last + 1:] = 0.0
    if noise:  # photon noise where there is signal, read noise everywhere
        lit = dn > 0
        dn[lit] = rng.poisson(dn[lit] * gain_e_per_dn).astype(np.float32) / np.float32(gain_e_per_dn)
        dn += rng.standard_normal(dn.shape, dtype=np.float32) * np.float32(read_noise_dn)
    hot = []
    for _ in range(n_hot_pixels):
        b = int(rng.integers(len(filters)))
        row, col = int(rng.integers(FRAMELET_ROWS)), int(rng.integers(first, last + 1))
        extra = float(rng.uniform(150.0, 1500.0))
        dn[:, b, row, col] += extra
        hot.append({"band": filters[b], "row": row, "col": col, "extra_dn": round(extra, 2)})
    hits = []
    for _ in range(n_particle_hits):
        f, b = int(rng.integers(n_frames)), int(rng.integers(len(filters)))
        row, col = int(rng.integers(1, FRAMELET_ROWS - 1)), int(rng.integers(first + 1, last))
        length = int(rng.integers(1, 4))
        extra = float(rng.uniform(600.0, 2800.0))
        dn[f, b, row, col:col + length] += extra
        hits.append({"frame": f, "band": filters[b], "row": row, "col": col, "length_px": length,
                     "extra_dn": round(extra, 2)})
    raw = compand_sqroot(dn).reshape(n_frames * len(filters) * FRAMELET_ROWS, CCD_SAMPLES)

    # --- product files -------------------------------------------------------------------
    product_id = f"JNCE_{yyyyddd}_{perijove:02d}{band_letter}{seed % 100000:05d}_V01"
    product_dir = out / f"{image_set_id}-ImageSet"
    (product_dir / "ImageSet").mkdir(parents=True, exist_ok=True)
    (product_dir / "DataSet").mkdir(parents=True, exist_ok=True)
    from .io import write_png, write_tiff

    raw_path = product_dir / "ImageSet" / f"{product_id}-raw.png"
    write_png(raw_path, raw, compression=1)
    label = {
        "COMPRESSION_TYPE": "INTEGER COSINE TRANSFORM",
        "DATA_SET_ID": "JUNO-J-JUNOCAM-2-EDR-L0-V1.0",
        "DESCRIPTION": "SYNTHETIC product written by the junoproc simulator",
        "EXPOSURE_DURATION": f"{exposure_ms:.6f} <ms>",
        "FILE_NAME": raw_path.name,
        "FILE_RECORDS": int(raw.shape[0]),
        "FILTER_NAME": list(filters),
        "FOCAL_PLANE_TEMPERATURE": "273.0 <K>",
        "IMAGE_TIME": start_utc,
        "INSTRUMENT_HOST_NAME": "JUNO",
        "INSTRUMENT_ID": "JNC",
        "INSTRUMENT_NAME": "JUNO EPO CAMERA",
        "INTERFRAME_DELAY": f"{interframe_delay_s:.3f} <s>",
        "JNO:TDI_STAGES_COUNT": tdi_stages,
        "LINES": int(raw.shape[0]),
        "LINE_PREFIX_BYTES": 0,
        "LINE_SAMPLES": CCD_SAMPLES,
        "LINE_SUFFIX_BYTES": 0,
        "MISSION_PHASE_NAME": f"PERIJOVE {perijove}",
        "ORBIT_NUMBER": perijove,
        "PJ": str(perijove),
        "PROCESSING_LEVEL_ID": 2,
        "PRODUCER_ID": "JUNOPROC_SIMULATOR",
        "PRODUCT_CREATION_TIME": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "PRODUCT_ID": product_id,
        "PRODUCT_VERSION_ID": 1,
        "RATIONALE_DESC": f"Synthetic {target.title()} imaging (junoproc simulate, seed {seed})",
        "RECORD_BYTES": CCD_SAMPLES,
        "SAMPLE_BITS": 8,
        "SAMPLE_BIT_MASK": "2#11111111#",
        "SAMPLE_BIT_MODE_ID": "SQROOT",
        "SAMPLE_TYPE": "UNSIGNED_INTEGER",
        "SAMPLING_FACTOR": 1,
        "SEQUENCE_ID": f"jm{perijove:02d}",
        "SOFTWARE_NAME": "JUNOPROC SIMULATE",
        "SOLAR_DISTANCE": f"{sun_dist_km:.4e} <km>",
        "SOURCE_PRODUCT_ID": f"SIM-{image_set_id}",
        "SPACECRAFT_ALTITUDE": f"{label_altitude:.1f} <km>",
        "SPACECRAFT_CLOCK_START_COUNT": sclk_start.split("/")[-1].lstrip("0") or "0",
        "SPACECRAFT_CLOCK_STOP_COUNT": "N/A",
        "SPACECRAFT_NAME": "JUNO",
        "STANDARD_DATA_PRODUCT_ID": "JUNOCAM-EDR",
        "START_TIME": start_utc,
        "STOP_TIME": stop_utc,
        "SUB_SPACECRAFT_LATITUDE": f"{float(sub_lat):.4f}",
        "SUB_SPACECRAFT_LONGITUDE": f"{sub_lon_w:.3f}",
        "TARGET_NAME": target,
        "TITLE": f"SYNTHETIC {target.title()} (junoproc simulator)",
        "TOKEN_ID": [],
    }
    metadata_path = product_dir / "DataSet" / f"{image_set_id}-Metadata.json"
    _atomic_text(metadata_path, json.dumps(label, indent=2) + "\n")

    # --- truth -------------------------------------------------------------------------
    tex_files = {}
    for band in filters:  # uncompressed 16-bit TIFF: a 8192x4096 PNG costs seconds to encode
        path = truth_dir / f"texture_{band.lower()}.tif"
        scaled = textures[band] * np.float32(65535.0)
        scaled += np.float32(0.5)
        write_tiff(path, scaled.astype(np.uint16),
                   description={"kind": "junoproc.simulator.texture", "band": band,
                                "value": "reflectance * 65535"})
        tex_files[band] = path.name
    truth = {
        "synthetic": True,
        "product_id": product_id,
        "target": target,
        "filters": list(filters),
        "seed": seed,
        "texture": {
            "files": tex_files,
            "projection": "equirectangular (plate carree), global",
            "latitude": "planetocentric, +90 at row 0 (top edge) to -90 at the bottom edge",
            "longitude": "east, 0 at column 0 (left edge) to 360 at the right edge",
            "pixel_centres": "lon = (i + 0.5) * 360 / W, lat = 90 - (j + 0.5) * 180 / H",
            "shape_hw": list(tex_shape),
            "value": "reflectance = value / 65535 (uint16)",
            "lon_range_deg": [0.0, 360.0], "lat_range_deg": [-90.0, 90.0],
            "texel_km_at_equator": 2 * math.pi * float(tgt.radii_km[0]) / int(tex_shape[1]),
            "nadir_pixel_km": nadir_km,
            "sampling": "2x2 supersampling per pixel (offsets +-0.25 px via the local Jacobian), "
                        "bilinear taps averaged",
            "content": tex_desc,
        },
        "spin": {**attitude.describe(), "t_ref_utc": ref_utc,
                 "model": "junoproc.pointing.SpinAttitude: J2000->JUNO_SPACECRAFT = Rz(phase0 + "
                          "rate*(et-t_ref)) @ B(axis), B rows (e1, e2, axis), e1 = normalise(J2000 Z x axis)",
                 "rot_sc_to_cam": [list(r) for r in attitude.rot_sc_to_cam],
                 "band_boresight_rad": {b: list(w) for b, w in boresight.items()},
                 "band_boresight_model": "true camera of the band = the IK's model turned by this rotation "
                                         "vector (JUNO_JUNOCAM -> band frame); not in the CK"},
        "timing": {
            "time_offset_s": time_offset_s,
            "rule": "true frame et = str2et(START_TIME) + START_TIME_BIAS + n*(INTERFRAME_DELAY + "
                    "INTERFRAME_DELTA) + time_offset_s",
            "start_time_bias_s": label_timing.start_time_bias_s,
            "interframe_delta_s": label_timing.interframe_delta_s,
            "frame_ets": [float(e) for e in frame_ets],
        },
        "trajectory": {
            "model": "straight lines at constant velocity (J2000), Sun at rest at the SSB",
            "ref_et": et_mid,
            "juno_wrt_target_km": obs_pos.tolist(), "juno_wrt_target_km_s": v_rel.tolist(),
            "jupiter_wrt_ssb_km": jupiter_pos.tolist(), "jupiter_wrt_ssb_km_s": jupiter_vel.tolist(),
            "moon_wrt_jupiter_km": None if moon_pos is None else moon_pos.tolist(),
            "moon_wrt_jupiter_km_s": None if moon_vel is None else moon_vel.tolist(),
            "altitude_km_design": altitude_km, "phase_angle_deg_design": phase_angle_deg,
        },
        "illumination": {"model": "Minnaert" if minnaert_k != 1 else "Lambert", "minnaert_k": minnaert_k,
                         "night_side": "zero sunlight",
                         "jupitershine_fraction": scene.jupitershine},
        "optics": {"psf_gaussian_sigma_px": float(psf_sigma_px)},
        "radiometry": {"full_well_dn_reflectance_1": full_well_dn, "band_response": band_response,
                       "exposure_scale": exposure_scale,
                       "dn_per_reflectance": dict(zip(filters, scale.tolist(), strict=True)),
                       "companding": "SQROOT (calibrate's table): DN rounded, truncated into its bin, "
                                     "255 at >= 2879 DN",
                       "dark_columns_zero_signal": [first, last]},
        "noise": {"enabled": noise, "gain_e_per_dn": gain_e_per_dn, "read_noise_dn": read_noise_dn,
                  "hot_pixels": hot, "particle_hits": hits},
        "kernels": {"folder": "kernels", "files": [str(p.relative_to(out)) for p in kernel_files],
                    "synthetic_text_kernels": used_synthetic, "ck_written": bool(write_ck),
                    "ck_records": n_ck, "ck_step_s": 0.05},
    }
    _atomic_text(truth_dir / "truth.json", json.dumps(truth, indent=2) + "\n")
    return SimulatedProduct(
        out_dir=out, product_dir=product_dir, metadata_path=metadata_path, raw_path=raw_path,
        kernel_dir=kdir, truth_dir=truth_dir, product_id=product_id, target=target, filters=filters,
        n_frames=n_frames, attitude=attitude, time_offset_s=float(time_offset_s),
        frame_ets=tuple(float(e) for e in frame_ets), kernel_files=tuple(kernel_files),
        synthetic_kernels=used_synthetic, wrote_ck=bool(write_ck), elapsed_s=time.perf_counter() - t_start,
        pass_geometry=this_pass,
    )


def simulate_pass(out_dir: str | os.PathLike[str], *, n_images: int = 3, spacing_s: float = 900.0,
                  seed: int = 0, start_time_utc: str = "2022-08-17T14:05:00.000",
                  **options: Any) -> list[SimulatedProduct]:
    """``n_images`` products of ONE imaging pass, ``spacing_s`` apart, under
    ``out_dir/image<k>/`` (each a :func:`simulate` folder with its kernels and truth).

    The first is placed by ``options`` (:func:`simulate`'s); the others share its pass
    (:class:`PassGeometry`): Juno on the same straight line relative to the target, the
    same Sun and Jupiter lines, the same spin axis and rate, the same planet texture
    (``seed``), their own noise and product ids (seeds ``seed + k``). The SPKs of all
    products hold the same lines, so loading several together is consistent. A product
    whose mid-time falls after the first's sees the target from a point further along the
    line: the line of sight turns between images (by ~atan(speed x spacing / range)), and
    one spin axis for all fixes each image's rotation about its own line of sight, which
    its limb alone leaves loose.
    """
    if n_images < 1:
        raise SimulationError(f"{n_images} images in a pass", hint="n_images >= 1")
    if str(options.get("target", "JUPITER")).strip().upper() != "JUPITER":
        raise SimulationError("a simulated pass is of Jupiter only (a moon's own orbit is not shared)",
                              hint="target='jupiter'")
    out = Path(out_dir)
    products = [simulate(out / "image0", seed=seed, texture_seed=seed, start_time_utc=start_time_utc,
                         **options)]
    geometry = products[0].pass_geometry
    assert geometry is not None
    with _furnished([p for p in products[0].kernel_files if p.suffix.lower() == ".tls"]):
        et0 = float(spiceypy.str2et(start_time_utc))
        starts = [str(spiceypy.et2utc(et0 + k * spacing_s, "ISOC", 3)) for k in range(n_images)]
    for k in range(1, n_images):
        products.append(simulate(out / f"image{k}", seed=seed + k, texture_seed=seed,
                                 start_time_utc=starts[k], pass_geometry=geometry, **options))
    return products
