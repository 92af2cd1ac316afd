"""Camera pointing from the images: the spin model, limb detection, the solver, CK export.

Juno is spin-stabilised, so over one image (a few seconds) its attitude is a spin about
a fixed axis::

    rot_j2000_to_sc(t)  = Rz(phase0 + rate * (t - t_ref)) @ B(axis)
    rot_j2000_to_cam(t) = rot_sc_to_cam @ rot_j2000_to_sc(t)

``Rz`` is SPICE's frame rotation ``rotate(angle, 3)`` (a positive rate is Juno's sense of
spin, checked against the reconstructed PJ01 CK: +11.72 deg/s), ``B`` has rows
``(e1, e2, axis)`` with ``e1 = normalise(Z_j2000 x axis)`` and ``rot_sc_to_cam`` is the
fixed JUNO_SPACECRAFT -> JUNO_JUNOCAM rotation of the frames kernel (no CK needed).

The limb of the target is detected in every framelet to sub-pixel precision and the
parameters are found by robust least squares on the limb residuals: the signed angle of
each limb ray from the target ellipsoid's limb, in pixels (the ellipsoid is scaled to a
unit sphere, which maps tangent rays to tangent rays, so the zero set is exact).

Degeneracies: for a pure spin, the frame-timing start offset is the same thing as the
spin phase and the interframe correction the same thing as the spin rate, so without a
CK both timing offsets are held at zero and absorbed by ``phase0`` and ``rate``. With a
CK (absolute attitude versus time) the two timing offsets and a small fixed rotation are
refined instead.

The limb of a near-sphere fixes the camera's orientation only up to a rotation about
the line of sight to the target's centre; Jupiter's oblateness and the spacecraft's
motion break that symmetry, strongly near perijove and weakly from over a pole. The
solver reports the 1-sigma uncertainty of the spin axis from the fit's covariance and
flags a weakly constrained axis.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import spiceypy
from scipy import ndimage, optimize, special

from .camera import CAMERA_FRAME, CameraModel, FrameTiming, frame_rotation
from .errors import NoLimbError, OutputError, PointingError, PointingQualityError
from .geometry import OBSERVER, Attitude, CkAttitude, FrameState, Target, frame_state, norm3
from .products import ProductMeta
from .runtime import fork_map

#: The spacecraft frame a CK describes, and its NAIF id.
SPACECRAFT_FRAME = "JUNO_SPACECRAFT"
SPACECRAFT_CK_ID = -61000
SPACECRAFT_CLOCK_ID = -61
#: The plausible range of Juno's spin rate (deg/s) searched for the start.
SPIN_RATE_RANGE_DEG_S = (11.3, 12.4)
#: Raw 8-bit values at or above this are saturated.
RAW_SATURATED = 240
#: An image's levels (sky, dark, bright percentiles) from every n-th framelet row: 4x
#: faster, and on every real product within 0.22 % of the sky-to-bright range of all rows.
LEVEL_ROW_STEP = 4

SOLUTION_FORMAT = "junoproc-pointing-1"


# ---------------------------------------------------------------------------------------
# rotations
# ---------------------------------------------------------------------------------------
def _rz(angle_rad: np.ndarray) -> np.ndarray:
    """SPICE ``rotate(angle, 3)`` for an array of angles: (..., 3, 3)."""
    a = np.asarray(angle_rad, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    out[..., 0, 0] = c
    out[..., 0, 1] = s
    out[..., 1, 0] = -s
    out[..., 1, 1] = c
    out[..., 2, 2] = 1.0
    return out


def _radec_to_vec(ra_rad: float, dec_rad: float) -> np.ndarray:
    return np.array([math.cos(dec_rad) * math.cos(ra_rad), math.cos(dec_rad) * math.sin(ra_rad),
                     math.sin(dec_rad)])


def _vec_to_radec(v: np.ndarray) -> tuple[float, float]:
    v = v / np.linalg.norm(v)
    return math.atan2(v[1], v[0]) % (2 * math.pi), math.asin(max(-1.0, min(1.0, v[2])))


def spin_basis(axis_j2000: np.ndarray) -> np.ndarray:
    """B(axis): rows (e1, e2, axis), e1 = normalise(Z_j2000 x axis), e2 = axis x e1."""
    a = np.asarray(axis_j2000, dtype=np.float64)
    a = a / np.linalg.norm(a)
    e1 = np.cross([0.0, 0.0, 1.0], a)
    n = np.linalg.norm(e1)
    if n < 1e-9:  # axis along J2000 Z: any e1 in the equator
        e1 = np.array([1.0, 0.0, 0.0])
    else:
        e1 /= n
    return np.stack([e1, np.cross(a, e1), a])


def _spin_bases(axes_j2000: np.ndarray) -> np.ndarray:
    """:func:`spin_basis` of many axes (m, 3) at once: (m, 3, 3)."""
    a = axes_j2000 / np.linalg.norm(axes_j2000, axis=1, keepdims=True)
    e1 = np.stack([-a[:, 1], a[:, 0], np.zeros(len(a))], axis=1)  # Z x a
    n = np.linalg.norm(e1, axis=1, keepdims=True)
    e1 = np.where(n > 1e-9, e1 / np.maximum(n, 1e-300), np.array([1.0, 0.0, 0.0]))
    return np.stack([e1, np.cross(a, e1), a], axis=1)


def _rotation_vector(frame_rot: np.ndarray) -> np.ndarray:
    """Rotation vector v of a frame rotation, the inverse of :func:`camera.frame_rotation`."""
    m = np.asarray(frame_rot, dtype=np.float64)
    axis = np.array([m[1, 2] - m[2, 1], m[2, 0] - m[0, 2], m[0, 1] - m[1, 0]]) / 2.0
    s = float(np.linalg.norm(axis))
    if s < 1e-15:
        return np.zeros(3)
    angle = math.atan2(s, (float(np.trace(m)) - 1.0) / 2.0)
    return axis * (angle / s)


def _frame_rotations(v: np.ndarray) -> np.ndarray:
    """:func:`camera.frame_rotation` of many rotation vectors (n, 3) at once: (n, 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=1)
    k = np.zeros((len(v), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    safe = np.where(theta > 1e-12, theta, 1.0)
    a = np.where(theta > 1e-12, np.sin(theta) / safe, 1.0)
    b = np.where(theta > 1e-12, (1 - np.cos(theta)) / safe**2, 0.5)
    return np.eye(3) - a[:, None, None] * k + b[:, None, None] * (k @ k)


def _as_tuple3x3(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(m))


def rot_sc_to_cam(et: float = 0.0) -> np.ndarray:
    """Fixed JUNO_SPACECRAFT -> JUNO_JUNOCAM rotation from the frames kernel (no CK)."""
    try:
        return np.asarray(spiceypy.pxform(SPACECRAFT_FRAME, CAMERA_FRAME, float(et)))
    except spiceypy.utils.exceptions.SpiceyError as err:
        from .errors import KernelMissingError

        raise KernelMissingError(
            f"cannot rotate {SPACECRAFT_FRAME} to {CAMERA_FRAME} ({getattr(err, 'short', err)})",
            hint="load the Juno frames kernel juno_v12.tf",
        ) from None


# ---------------------------------------------------------------------------------------
# attitude models
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpinAttitude:
    """A pure spin about a fixed axis (implements :class:`geometry.Attitude`)."""

    spin_axis_ra_deg: float
    spin_axis_dec_deg: float
    phase0_deg: float
    rate_deg_s: float
    t_ref_et: float
    rot_sc_to_cam: tuple[tuple[float, ...], ...]
    #: Per-band boresight corrections: pairs (band, rotation vector in rad) of the frame
    #: rotation JUNO_JUNOCAM -> the band's camera axes (see :func:`align_bands`); the
    #: camera models of :func:`camera.CameraModel.for_product` (``attitude=``) apply them.
    band_boresight_rad: tuple[tuple[str, tuple[float, float, float]], ...] = ()

    @classmethod
    def from_params(cls, axis_j2000: np.ndarray, phase0_rad: float, rate_rad_s: float,
                    t_ref_et: float, sc_to_cam: np.ndarray) -> SpinAttitude:
        ra, dec = _vec_to_radec(np.asarray(axis_j2000, dtype=np.float64))
        return cls(spin_axis_ra_deg=math.degrees(ra), spin_axis_dec_deg=math.degrees(dec),
                   phase0_deg=math.degrees(phase0_rad) % 360.0, rate_deg_s=math.degrees(rate_rad_s),
                   t_ref_et=float(t_ref_et), rot_sc_to_cam=_as_tuple3x3(sc_to_cam))

    @property
    def axis_j2000(self) -> np.ndarray:
        return _radec_to_vec(math.radians(self.spin_axis_ra_deg), math.radians(self.spin_axis_dec_deg))

    def rot_j2000_to_sc(self, et: float | np.ndarray) -> np.ndarray:
        theta = math.radians(self.phase0_deg) + math.radians(self.rate_deg_s) * (
            np.asarray(et, dtype=np.float64) - self.t_ref_et)
        return _rz(theta) @ spin_basis(self.axis_j2000)

    def rot_j2000_to_cam(self, et: float | np.ndarray) -> np.ndarray:
        return np.asarray(self.rot_sc_to_cam) @ self.rot_j2000_to_sc(et)

    def angular_velocity_j2000_rad_s(self, et: float | None = None) -> np.ndarray:
        """Angular velocity of JUNO_SPACECRAFT relative to J2000, in J2000 (rad/s)."""
        return math.radians(self.rate_deg_s) * self.axis_j2000

    def describe(self) -> Mapping[str, object]:
        return {"source": "spin", "spin_axis_ra_deg": self.spin_axis_ra_deg,
                "spin_axis_dec_deg": self.spin_axis_dec_deg, "phase0_deg": self.phase0_deg,
                "rate_deg_s": self.rate_deg_s, "t_ref_et": self.t_ref_et,
                "t_ref_utc": _utc(self.t_ref_et), **_describe_boresight(self.band_boresight_rad)}


@dataclass(frozen=True)
class RefinedCkAttitude:
    """CK attitude followed by a small fixed rotation in the camera frame.

    ``rot_j2000_to_cam(et) = R(delta_cam_rad) @ pxform(J2000, JUNO_JUNOCAM, et)``.
    """

    delta_cam_rad: tuple[float, float, float]
    frame: str = CAMERA_FRAME
    #: Per-band boresight corrections, as :attr:`SpinAttitude.band_boresight_rad`.
    band_boresight_rad: tuple[tuple[str, tuple[float, float, float]], ...] = ()

    @property
    def rot_delta(self) -> np.ndarray:
        return frame_rotation(self.delta_cam_rad)

    def rot_j2000_to_cam(self, et: float) -> np.ndarray:
        return self.rot_delta @ CkAttitude(self.frame).rot_j2000_to_cam(et)

    def describe(self) -> Mapping[str, object]:
        return {"source": "ck-refined", "frame": self.frame,
                "delta_cam_mrad": [1e3 * d for d in self.delta_cam_rad],
                **_describe_boresight(self.band_boresight_rad)}


BandBoresight = tuple[tuple[str, tuple[float, float, float]], ...]


def _describe_boresight(pairs: BandBoresight) -> dict[str, object]:
    if not pairs:
        return {}
    return {"band_boresight_mrad": {b: [round(1e3 * v, 6) for v in w] for b, w in pairs}}


def _boresight_pairs(by_band: Mapping[str, Sequence[float]]) -> BandBoresight:
    return tuple((b.upper(), (float(w[0]), float(w[1]), float(w[2]))) for b, w in by_band.items())


def _utc(et: float) -> str:
    try:
        return str(spiceypy.et2utc(float(et), "ISOC", 3))
    except spiceypy.utils.exceptions.SpiceyError:
        return f"ET {et:.3f}"


# ---------------------------------------------------------------------------------------
# limb detection
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LimbPoints:
    """Sub-pixel limb points; ``normal_*`` points from the target towards the sky."""

    bands: tuple[str, ...]
    frame: np.ndarray      # int (n,)
    band: np.ndarray       # int (n,) index into ``bands``
    x_px: np.ndarray       # float (n,) framelet pixel coordinates (corner origin)
    y_px: np.ndarray
    normal_x: np.ndarray
    normal_y: np.ndarray
    strength: np.ndarray   # contrast / edge width (DN per px)
    #: The edge model's blur (px) the points were fitted with (NaN: half-level points), and
    #: each point's move along its normal per px more blur (px/px), to refit them linearly
    #: under another blur (:func:`with_edge_blur`).
    edge_blur_px: float = math.nan
    shift_per_blur: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.frame.size)

    def subset(self, keep: np.ndarray) -> LimbPoints:
        return replace(self, frame=self.frame[keep], band=self.band[keep], x_px=self.x_px[keep],
                       y_px=self.y_px[keep], normal_x=self.normal_x[keep],
                       normal_y=self.normal_y[keep], strength=self.strength[keep],
                       shift_per_blur=None if self.shift_per_blur is None else self.shift_per_blur[keep])

    def with_edge_blur(self, blur_px: float) -> LimbPoints:
        """The points as the edge model would put them under ``blur_px`` (to first order)."""
        if self.shift_per_blur is None or not math.isfinite(self.edge_blur_px):
            return self
        move = self.shift_per_blur * (blur_px - self.edge_blur_px)
        return replace(self, x_px=self.x_px + move * self.normal_x, y_px=self.y_px + move * self.normal_y,
                       edge_blur_px=float(blur_px))

    def count_by_band(self) -> dict[str, int]:
        return {name: int(np.sum(self.band == i)) for i, name in enumerate(self.bands)}


def _image_arrays(image: Any) -> tuple[ProductMeta, np.ndarray, np.ndarray]:
    """(meta, data float32 (frames, filters, rows, samples), valid bool) of a raw or calibrated image."""
    meta = image.meta
    data = getattr(image, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:
        valid = getattr(image, "valid", None)
        if valid is None:
            valid = np.isfinite(data)
        data = data.astype(np.float32, copy=False)
        if not np.isfinite(data.sum()):  # a NaN or inf anywhere (4 ms; the copy takes 70 ms)
            data = np.nan_to_num(data)
        return meta, data, np.asarray(valid, bool)
    raw = np.asarray(image.framelets)
    # Edges are located at half the planet's level: that must be half the *radiance*.
    # Companded values are monotonic but not linear (SQROOT ~ sqrt), and on an edge that
    # the pixel area and the optics spread over a pixel or more, their half level lies
    # where the radiance is at a quarter: 0.2-0.3 px out into the sky (measured on
    # simulated limbs), i.e. tens of km of spurious limb altitude.
    from .calibrate import companding_table

    table = companding_table(meta.bit_mode or "SQROOT", path=getattr(meta, "metadata_path", None) or None)
    return meta, np.asarray(table, np.float32)[raw], raw < RAW_SATURATED


def detect_limb(
    image: Any, *, cell_px: int = 3, profile_half_px: float = 8.0, max_edge_width_px: float = 4.0,
    min_blob_px: int = 400, max_inside_slope: float = 0.1, max_edge_asymmetry_px: float = 0.5,
    max_width_over_median: float = 1.5, local_level: bool = True, edge_model: bool = True,
    edge_blur_px: float | None = None,
) -> LimbPoints:
    """Find the target's limb against dark sky in every framelet of every band.

    ``image`` is a :class:`~junoproc.products.RawImage` (decompanded to linear DN with
    the label's SAMPLE_BIT_MODE_ID table first) or a calibrated image with ``data`` and
    ``valid``. Candidates are
    the boundary of the bright region (median-filtered, so hot pixels do not count;
    bright blobs smaller than ``min_blob_px`` such as small moons are dropped); each is
    refined along the brightness gradient: the half-level crossing between the planet
    level inside and the sky level outside of a profile sampled every 0.25 px. The edge
    must fall from planet to sky within ``max_edge_width_px`` (20-80 %), which rejects
    the terminator's gradual fall-off; the profile must stay inside the photoactive
    area and avoid saturated or invalid pixels. One point per ``cell_px`` cell.

    Texture at the limb: a clean limb (a hard edge, or a haze limb thinner than a pixel,
    blurred by the optics) falls symmetrically about its half level and is as wide all
    along the limb; a dark or bright cloud within ~2 px of the limb makes a two-step or a
    stretched profile whose half level lies off the limb (on the simulated scene, 54
    points 0.46 px inside it under a bright oval, up to 2.5 px under a dark band). So a
    point is dropped when its 20-50 % and 50-80 % distances differ by more than
    ``max_edge_asymmetry_px``, or when its width exceeds ``max_width_over_median`` times
    its band's median. On the real PJ43/PJ44 limbs (widths 1.2-1.5 px median, 90th
    percentile below 1.5 x median) this keeps 91-100 % of the points; on the simulated
    scene it drops 129 of 1039 and the detector's error goes from 0.35 to 0.16 px sd.
    ``local_level``: the kept points' half level is then taken against the planet's level
    just inside the edge (:func:`_local_half_level`), not the plateau 4-7 px in: on a
    simulated pass of three images the error goes from 0.185 to 0.133 px sd (301 -> 98 of
    2401 points > 0.3 px off), and the real limb fits' RMS drops in every band. What is
    left is texture in the last pixel (a belt that only the limb pixel sees), which no
    profile shows: on a texture-free scene the error is 0.066 px sd.

    ``edge_model`` (default): the half-level points are the start of the edge model
    (:func:`_edge_model_refine`), which fits the pixel area of a straight-edged limb,
    blurred by the image's blur, to the limb's partly covered pixels and the sky around each
    point: the level is then what the last pixel itself shows, and the texture in it no
    longer moves the point (simulated pass: 0.12-0.16 -> 0.06-0.08 px sd). The blur is
    measured on the image (``edge_blur_px`` given: that one); above
    :data:`EDGE_MODEL_MAX_BLUR_PX` (a hazy methane limb) the half-level points are kept.
    The points record the blur (``edge_blur_px``, NaN for half-level points) and how they
    move with it, so that the images of a pass share one (:func:`solve_from_limbs`).
    A belt along the whole limb within a pixel of it fools the blur's measurement (0.51 px
    for none on a synthetic disc whose last pixel is 40 % darker all round, and the points
    0.35 px in, as the half level's); belts along parts of a limb do not (the median over
    the image's points).
    """
    meta, data, valid = _image_arrays(image)
    n_frames, n_filters, rows, samples = data.shape
    cam_cols = CameraModel(band="FULLCCD", naif_id=-61500, focal_px=1.0, cx_px=0.0, cy_px=0.0,
                           k1=0.0, k2=0.0, sampling_factor=meta.sampling_factor).photoactive_columns()
    col_lo, col_hi = cam_cols.start, cam_cols.stop  # [lo, hi)
    s = np.arange(-profile_half_px, profile_half_px + 1e-9, 0.25)
    inside_sel = (s <= -4.0) & (s >= -profile_half_px + 1)
    outside_sel = s >= 4.0
    near = s >= -1.5
    keys = ("f", "b", "x", "y", "nx", "ny", "st", "w")
    margin = profile_half_px + 1.5

    def one_band(b: int) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        band_data = data[:, b, ::LEVEL_ROW_STEP, col_lo:col_hi]
        # one partition of the band for the three levels (each alone took ~30 ms)
        sky, dark_level, bright = (float(v) for v in np.percentile(band_data, [2, 30, 99.5]))
        dark = band_data[band_data <= dark_level]
        # floor relative to the image's own contrast (0.5 on 8-bit raw), so the detector
        # behaves the same on raw values, DN, DN/ms or I/F
        noise = max(float(np.std(dark)), 0.0025 * (bright - sky))
        contrast_min = max(8.0 * noise, 0.08 * (bright - sky))
        if bright - sky < contrast_min:
            return out
        threshold = sky + max(0.5 * contrast_min + 2.0 * noise, 0.3 * (bright - sky))
        for f in range(n_frames):
            img = data[f, b]
            med = cv2.medianBlur(img, 3)
            mask = (med > threshold).astype(np.uint8)
            mask[:, :col_lo] = 0
            mask[:, col_hi:] = 0
            n_lab, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_blob_px)
            if small.size:
                mask[np.isin(labels, small)] = 0
            if not mask.any():
                continue
            edge = mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
            yy, xx = np.nonzero(edge)
            keep = ((yy >= margin) & (yy < rows - margin) & (xx >= col_lo + margin)
                    & (xx < col_hi - margin))
            yy, xx = yy[keep], xx[keep]
            if yy.size == 0:
                continue
            cell = (yy // cell_px) * (samples // cell_px + 1) + xx // cell_px
            _, first = np.unique(cell, return_index=True)
            yy, xx = yy[first], xx[first]
            smooth = cv2.GaussianBlur(med, (0, 0), 1.2)
            gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)[yy, xx]
            gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)[yy, xx]
            gn = np.hypot(gx, gy)
            ok = gn > 1e-6
            yy, xx, gx, gy, gn = yy[ok], xx[ok], gx[ok], gy[ok], gn[ok]
            nx, ny = -gx / gn, -gy / gn  # towards the sky
            # profile sample positions in array index coordinates (pixel centre = index)
            px = xx[:, None] + s[None, :] * nx[:, None]
            py = yy[:, None] + s[None, :] * ny[:, None]
            inb = ((py >= 0.5) & (py <= rows - 1.5) & (px >= col_lo + 0.5) & (px <= col_hi - 1.5)).all(1)
            prof = ndimage.map_coordinates(med, [py.ravel(), px.ravel()], order=1,
                                           mode="nearest").reshape(px.shape)
            # saturated pixels are allowed deep inside the planet, not near the edge
            vprof = valid[f, b][np.clip(np.rint(py[:, near]).astype(int), 0, rows - 1),
                                np.clip(np.rint(px[:, near]).astype(int), 0, samples - 1)].all(1)
            inside = np.median(prof[:, inside_sel], axis=1)
            outside = np.median(prof[:, outside_sel], axis=1)
            contrast = inside - outside
            good = (inb & vprof & (contrast > contrast_min)
                    & (outside - sky < 0.25 * (inside - sky) + 3.0 * noise))
            if not good.any():
                continue
            prof, inside, outside, contrast = prof[good], inside[good], outside[good], contrast[good]
            xx, yy, nx, ny = xx[good], yy[good], nx[good], ny[good]
            # the planet's level is not flat up to the edge (limb darkening, the fall-off
            # towards the terminator along an oblique profile, belts): a line fitted to
            # the inside samples, extrapolated to the edge, is the "1" of the edge
            si = s[inside_sel]
            pi = prof[:, inside_sel]
            sm = si.mean()
            slope = ((pi - pi.mean(axis=1, keepdims=True)) @ (si - sm)) / float(np.sum((si - sm) ** 2))
            flat_inside = np.abs(slope) <= max_inside_slope * contrast
            planet = inside[:, None] + slope[:, None] * (s[None, :] - sm)
            level = (prof - outside[:, None]) / np.maximum(planet - outside[:, None], 1e-6)  # 1 in, 0 out
            s_half = _last_crossing(level, s, 0.5)
            s_80 = _last_crossing(level, s, 0.8)
            s_20 = _last_crossing(level, s, 0.2)
            width = s_20 - s_80
            asym = (s_20 - s_half) - (s_half - s_80)
            fine = (flat_inside & np.isfinite(s_half) & np.isfinite(width) & (width > 0)
                    & (width < max_edge_width_px) & (np.abs(s_half) < 3.0)
                    & (np.abs(asym) <= max_edge_asymmetry_px))
            if not fine.any():
                continue
            sh = s_half[fine]
            if local_level:
                sh = _local_half_level(img, xx[fine], yy[fine], nx[fine], ny[fine], sh, width[fine], s,
                                       outside_sel)
            out["f"].append(np.full(sh.size, f))
            out["b"].append(np.full(sh.size, b))
            out["x"].append(xx[fine] + 0.5 + sh * nx[fine])
            out["y"].append(yy[fine] + 0.5 + sh * ny[fine])
            out["nx"].append(nx[fine])
            out["ny"].append(ny[fine])
            out["st"].append(contrast[fine] / width[fine])
            out["w"].append(width[fine])
        return out

    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for part in fork_map(one_band, range(n_filters)):  # the bands shared among the cores
        for k in keys:
            out[k] += part[k]

    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate(out[key]).astype(dtype) if out[key] else np.zeros(0, dtype)

    band, width = cat("b", np.int32), cat("w", np.float64)
    keep = np.ones(band.size, bool)
    for b in np.unique(band):
        sel = band == b
        keep[sel] = width[sel] <= max_width_over_median * float(np.median(width[sel]))
    for key in out:
        out[key] = [cat(key, np.float64)[keep]] if out[key] else []
    blur, slope = math.nan, None
    if edge_model and keep.any():
        x, y, good, blur, slope = _edge_model_refine(
            data, valid, cat("f", np.intp), cat("b", np.intp), cat("x", np.float64), cat("y", np.float64),
            cat("nx", np.float64), cat("ny", np.float64), col_lo, col_hi, blur_px=edge_blur_px)
        out["x"], out["y"] = [x], [y]
        for key in out:
            out[key] = [cat(key, np.float64)[good]]
        slope = None if slope is None else slope[good]
    return LimbPoints(bands=tuple(meta.filters), frame=cat("f", np.int32), band=cat("b", np.int32),
                      x_px=cat("x", np.float64), y_px=cat("y", np.float64),
                      normal_x=cat("nx", np.float64), normal_y=cat("ny", np.float64),
                      strength=cat("st", np.float64),
                      edge_blur_px=float(blur) if slope is not None else math.nan, shift_per_blur=slope)


def _no_limb_reason(image: Any, min_blob_px: int = 400) -> tuple[str, str]:
    """Why :func:`detect_limb` found nothing: (reason, hint) for the refusal's message."""
    _, data, _ = _image_arrays(image)
    lo, hi = float(np.percentile(data, 2)), float(np.percentile(data, 99.99))
    lit = data > lo + 0.3 * (hi - lo) if hi > lo else np.zeros(data.shape, bool)
    per_framelet = lit.mean(axis=(2, 3))
    if hi <= lo or not lit.any():
        return "nothing brighter than the sky", "check the product's pointing and exposure; a CK is needed"
    if per_framelet.min() > 0.5:
        return (f"the target fills every framelet (>= {100 * per_framelet.min():.0f} % lit)",
                "a CK is needed for this image")
    if lit.sum(axis=(2, 3)).max() < min_blob_px:
        return (f"only bright spots under {min_blob_px} px (a small moon, a star or a distant target), "
                "never taken for a limb", "a CK is needed for this image")
    return "no sharp edge from the lit target to dark sky", "a CK is needed for this image"


def _local_half_level(img: np.ndarray, xx: np.ndarray, yy: np.ndarray, nx: np.ndarray, ny: np.ndarray,
                      s_half: np.ndarray, width: np.ndarray, s: np.ndarray, outside_sel: np.ndarray,
                      *, iterations: int = 2) -> np.ndarray:
    """The half-level crossing against the planet's level just inside the edge.

    The plateau of :func:`detect_limb` (a line through the profile 4-7 px inside) stands
    for the planet's brightness at the edge; a cloud band or an oval between it and the
    limb moves the half level of the edge off the limb. Here the level is a line fitted
    to the profile of the unfiltered image on the 1.5 px just inside the edge's top
    (1.2 x its 20-80 % width inside the half level, where the ramp has reached the
    plateau), held flat from there to the sky; the crossing is then found again (twice,
    as the window follows it). The median filter of the candidate stage is not used
    here: next to the edge its 3x3 window mixes in the ramp's darker pixels.
    """
    px = xx[:, None] + s[None, :] * nx[:, None]
    py = yy[:, None] + s[None, :] * ny[:, None]
    prof = ndimage.map_coordinates(img, [py.ravel(), px.ravel()], order=1, mode="nearest").reshape(px.shape)
    outside = np.median(prof[:, outside_sel], axis=1)
    hi_off = -np.clip(1.2 * width, 0.9, 2.5)
    cur = s_half
    for _ in range(iterations):
        win = (s[None, :] >= (cur + hi_off - 1.5)[:, None]) & (s[None, :] <= (cur + hi_off)[:, None])
        n = np.maximum(win.sum(axis=1), 1)
        s_mean = (win * s[None, :]).sum(axis=1) / n
        p_mean = (win * prof).sum(axis=1) / n
        ds = s[None, :] - s_mean[:, None]
        slope = ((win * (prof - p_mean[:, None]) * ds).sum(axis=1)
                 / np.maximum((win * ds**2).sum(axis=1), 1e-9))
        top = p_mean + slope * (cur + hi_off - s_mean)
        planet = np.where(s[None, :] > (cur + hi_off)[:, None], top[:, None],
                          p_mean[:, None] + slope[:, None] * ds)
        level = (prof - outside[:, None]) / np.maximum(planet - outside[:, None], 1e-6)
        new = _last_crossing(level, s, 0.5)
        cur = np.where(np.isfinite(new) & (np.abs(new - s_half) < 1.5), new, cur)
    return cur


def _last_crossing(level: np.ndarray, s: np.ndarray, value: float) -> np.ndarray:
    """Per row, the s where ``level`` last falls through ``value`` before the sky (linear)."""
    above = level >= value
    # last index i with above[i] and not above[i+1], searching outwards from the inside
    fall = above[:, :-1] & ~above[:, 1:]
    has = fall.any(axis=1)
    idx = np.where(has, fall.shape[1] - 1 - np.argmax(fall[:, ::-1], axis=1), 0)
    rows = np.arange(level.shape[0])
    l0, l1 = level[rows, idx], level[rows, idx + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (l0 - value) / (l0 - l1)
    res = s[idx] + t * (s[1] - s[0])
    return np.where(has, res, np.nan)


# ---------------------------------------------------------------------------------------
# the limb edge model: pixel area and optical blur
# ---------------------------------------------------------------------------------------
#: The edge model's table: distances from the limb (px) and limb-normal angles (deg).
EDGE_TABLE_STEP_PX = 0.01
EDGE_TABLE_HALF_PX = 5.0
EDGE_TABLE_PHI_STEP_DEG = 1.0
#: The Gaussian blurs (sigma, px) of the optics and the haze tried for an image's edges,
#: and the one taken where it has too few limb points to measure it (PJ43/PJ44: 0.48-0.51).
EDGE_BLUR_GRID_PX = tuple(round(0.2 * k, 1) for k in range(8))
EDGE_BLUR_DEFAULT_PX = 0.45
#: The limb's pixels the edge model is fitted to: the sky and those the planet covers at
#: most this much (at the starting edge); fully covered pixels show the clouds inside.
EDGE_MAX_COVER = 0.7
#: Above this blur (px) the edge is a haze's slope, not a pixel-sharp limb: the half-level
#: points are kept (methane: 1.1-1.4 px on 43M00081 and 44M00040).
EDGE_MODEL_MAX_BLUR_PX = 1.0
#: The blur is measured on the sky, the limb's pixels and this far inside (px, - = inside
#: the starting edge): a blur spreads the edge over +-2 sigma, and with only the first pixel
#: inside, the level inside was free to trade against a wider blur (a simulated PSF of 0.7
#: px measured 0.90, 0.45 px 0.50; now 0.73 and 0.45).
EDGE_BLUR_INNER_PX = -2.0
#: The blur step (px) over which the points' move with the blur is measured.
EDGE_BLUR_STEP_PX = 0.05


@functools.lru_cache(maxsize=64)
def _edge_coverage_table(blur_px: float) -> np.ndarray:
    """(phi, d): the fraction of a pixel's light from the planet side of a straight limb at
    signed distance d (px, + = the pixel centre on the sky side) with its normal at phi
    (0-45 deg) from the pixel rows, after a Gaussian blur of ``blur_px``.

    The planet covers the unit pixel where u cos(phi) + v sin(phi) < -d for u, v uniform in
    [-1/2, 1/2]: the distribution function F of a sum of two boxes (widths a = cos(phi) >=
    b = sin(phi)), at -d. Blurred, F is the Gaussian's distribution function integrated
    twice (G2) and differenced over both boxes, in closed form.
    """
    d = np.arange(-EDGE_TABLE_HALF_PX, EDGE_TABLE_HALF_PX + 1e-9, EDGE_TABLE_STEP_PX)
    x = -d[None, :]
    phi = np.radians(np.arange(0.0, 45.0 + 1e-9, EDGE_TABLE_PHI_STEP_DEG))[:, None]
    a, b = np.cos(phi), np.sin(phi)
    if blur_px <= 0:
        lo, mid = (a + b) / 2.0, (a - b) / 2.0
        bb = np.maximum(b, 1e-12)
        ramp_up, ramp_top = (x + lo) ** 2 / (2.0 * a * bb), 1.0 - (lo - x) ** 2 / (2.0 * a * bb)
        cdf = np.where(x <= -mid, ramp_up, np.where(x < mid, bb / (2.0 * a) + (x + mid) / a, ramp_top))
        return np.where(x <= -lo, 0.0, np.where(x >= lo, 1.0, cdf))
    sig = float(blur_px)

    def g1(t: np.ndarray) -> np.ndarray:  # the integral of the Gaussian's distribution function
        return t * special.ndtr(t / sig) + sig * np.exp(-0.5 * (t / sig) ** 2) / math.sqrt(2.0 * math.pi)

    def g2(t: np.ndarray) -> np.ndarray:  # ... integrated once more
        return (0.5 * (t * t + sig * sig) * special.ndtr(t / sig)
                + 0.5 * t * sig * np.exp(-0.5 * (t / sig) ** 2) / math.sqrt(2.0 * math.pi))

    one_box = (g1(x + a / 2.0) - g1(x - a / 2.0)) / a  # b -> 0 (phi = 0)
    bb = np.maximum(b, 1e-12)
    two_boxes = (g2(x + (a + b) / 2.0) - g2(x + (a - b) / 2.0) - g2(x - (a - b) / 2.0)
                 + g2(x - (a + b) / 2.0)) / (a * bb)
    return np.clip(np.where(b < 1e-6, one_box, two_boxes), 0.0, 1.0)


def _edge_coverage(table: np.ndarray, phi_idx: np.ndarray, d_px: np.ndarray) -> np.ndarray:
    """Linear interpolation of :func:`_edge_coverage_table` at (phi index (n, 1), d (n, m))."""
    x = np.clip((d_px + EDGE_TABLE_HALF_PX) * (1.0 / EDGE_TABLE_STEP_PX), 0.0, table.shape[1] - 1.000001)
    i = x.astype(np.intp)
    t = x - i
    i += phi_idx * table.shape[1]
    flat = table.ravel()
    lo = flat.take(i)
    return lo + t * (flat.take(i + 1) - lo)


@dataclass(frozen=True)
class _EdgeWindows:
    """The pixels around each limb point (of one framelet, or several stacked), packed: their
    distances from the point's local limb curve (px, + = sky), values, and which of them are
    in the window."""

    d_px: np.ndarray       # (n, m)
    value: np.ndarray      # (n, m)
    inside: np.ndarray     # (n, m) bool: in the window, on the photoactive area, valid
    phi_idx: np.ndarray    # (n, 1) the limb normal's angle, table index
    curve_px: np.ndarray   # (n,) the local curve's offset from the point along its normal
    ok: np.ndarray         # (n,) bool: no invalid pixel from 1 px inside the limb out (for the blur)


def _edge_windows(img: np.ndarray, valid: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, nx: np.ndarray,
                  ny: np.ndarray, col_lo: int, col_hi: int, *, along_px: float = 6.0, inside_px: float = 3.0,
                  outside_px: float = 2.5, curve_px: float = 15.0) -> _EdgeWindows:
    """The window of each limb point (pixel centres at index + 0.5): pixels within
    ``along_px`` along the limb and from ``inside_px`` inside to ``outside_px`` outside of
    the limb's local curve, a parabola through the points of the framelet within
    ``curve_px`` along it (the limb's curvature moves its last pixels by ~0.03 px here)."""
    tx, ty = -ny, nx
    rel_x = x_px[None, :] - x_px[:, None]
    rel_y = y_px[None, :] - y_px[:, None]
    dt = rel_x * tx[:, None] + rel_y * ty[:, None]
    dn = rel_x * nx[:, None] + rel_y * ny[:, None]
    w = np.abs(dt) <= curve_px
    basis = np.stack([np.ones_like(dt), dt, dt * dt], axis=-1)
    normal = np.einsum("ij,ijk,ijl->ikl", w, basis, basis)
    rhs = np.einsum("ij,ijk,ij->ik", w, basis, dn)
    enough = w.sum(axis=1) >= 5  # else the point's own tangent (a short arc: ~0.03 px at its ends)
    normal[~enough] = np.eye(3)
    coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
    coef[~enough] = 0.0
    r = int(math.ceil(max(along_px, inside_px, outside_px))) + 2
    off = np.arange(-r, r + 1)
    ox, oy = (a.ravel() for a in np.meshgrid(off, off))
    ii = np.floor(x_px).astype(np.intp)[:, None] + ox[None, :]
    jj = np.floor(y_px).astype(np.intp)[:, None] + oy[None, :]
    cx, cy = ii + 0.5 - x_px[:, None], jj + 0.5 - y_px[:, None]
    pt = cx * tx[:, None] + cy * ty[:, None]
    d = cx * nx[:, None] + cy * ny[:, None] - (coef[:, :1] + coef[:, 1:2] * pt + coef[:, 2:] * pt * pt)
    rows, cols = img.shape
    inside = ((np.abs(pt) <= along_px) & (d >= -inside_px) & (d <= outside_px)
              & (ii >= col_lo) & (ii < col_hi) & (jj >= 0) & (jj < rows))
    m = int(inside.sum(axis=1).max()) if inside.size else 0
    order = np.argsort(~inside, axis=1, kind="stable")[:, :m]  # the window's pixels first
    ii = np.clip(np.take_along_axis(ii, order, 1), 0, cols - 1)
    jj = np.clip(np.take_along_axis(jj, order, 1), 0, rows - 1)
    inside = np.take_along_axis(inside, order, 1)
    phi = np.degrees(np.arctan2(np.abs(ny), np.abs(nx)))
    phi = np.where(phi > 45.0, 90.0 - phi, phi)
    d_packed = np.take_along_axis(d, order, 1)
    invalid = inside & ~valid[jj, ii]  # saturated or flagged: left out of the fits
    return _EdgeWindows(d_px=d_packed, value=img[jj, ii].astype(np.float64),
                        inside=inside & ~invalid,
                        phi_idx=np.rint(phi / EDGE_TABLE_PHI_STEP_DEG).astype(np.intp)[:, None],
                        curve_px=coef[:, 0], ok=~(invalid & (d_packed >= -1.0)).any(axis=1))


def _fit_edge(win: _EdgeWindows, table: np.ndarray, use: np.ndarray, *, reach_px: float = 0.8,
              start: np.ndarray | None = None, limit_px: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point, the limb's shift along its normal from the window's curve (px) that best
    fits value = sky + scale x coverage to the ``use`` pixels: (shift, scale, mean squared
    misfit / scale^2). A grid over ``start`` (default 0) +-``reach_px`` in 0.1 px steps
    (none for 0), then three finer rounds and a parabola; never beyond +-``limit_px`` (a
    wide blur would otherwise fit an edge deep inside the planet to the planet's slope)."""
    m = int(use.sum(axis=1).max()) if use.size else 0
    cols = np.argsort(~use, axis=1, kind="stable")[:, :m]  # the used pixels first, the rest cut
    wu = np.take_along_axis(use, cols, 1).astype(np.float64)
    v = np.take_along_axis(win.value, cols, 1) * wu
    d_px = np.take_along_axis(win.d_px, cols, 1)
    sw = np.maximum(wu.sum(axis=1), 1.0)
    sv, svv = v.sum(axis=1), (v * v).sum(axis=1)

    def misfit(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shift = np.clip(shift, -limit_px, limit_px)
        wc = _edge_coverage(table, win.phi_idx, d_px - shift[:, None])
        wc *= wu
        sc, scc, scv = wc.sum(axis=1), (wc * wc).sum(axis=1), (wc * v).sum(axis=1)
        det = sw * scc - sc * sc
        scale = (sw * scv - sc * sv) / np.where(np.abs(det) < 1e-12, 1e-12, det)
        sky = (sv - scale * sc) / sw
        # the residuals' sum of squares from the normal equations (weights 0 or 1)
        return np.maximum(svv - sky * sv - scale * scv, 0.0) / sw, scale

    n = v.shape[0]
    rows = np.arange(n)
    step = 0.1
    centre = np.zeros(n) if start is None else np.asarray(start, np.float64)
    if reach_px > 0:
        grid = np.arange(-reach_px, reach_px + 1e-9, step)
        costs = np.stack([misfit(centre + g)[0] for g in grid], axis=1)
        best = centre + grid[np.argmin(costs, axis=1)]
    else:
        best = centre
    for shrink in (0.4, 0.4, 0.4):  # 5 candidates a round; then a parabola through the last 3
        step *= shrink
        cand = best[:, None] + step * np.arange(-2, 3)[None, :]
        costs = np.stack([misfit(cand[:, j])[0] for j in range(cand.shape[1])], axis=1)
        k = np.clip(np.argmin(costs, axis=1), 1, 3)
        best = cand[rows, k]
    c0, c1, c2 = costs[rows, k - 1], costs[rows, k], costs[rows, k + 1]
    den = c0 - 2.0 * c1 + c2
    vertex = np.clip(0.5 * (c0 - c2) / np.where(den > 0, den, 1.0), -1.0, 1.0)
    best = best + np.where(den > 0, vertex, 0.0) * step
    best = np.clip(best, -limit_px, limit_px)
    cost, scale = misfit(best)
    return best, scale, cost / np.maximum(scale, 1e-12) ** 2


def _stack_windows(windows: Sequence[_EdgeWindows], take: Sequence[np.ndarray] | None = None) -> _EdgeWindows:
    """Several framelets' windows as one (rows ``take`` of each), padded to the widest."""
    take = take if take is not None else [np.arange(w.ok.size) for w in windows]
    m = max((w.d_px.shape[1] for w in windows), default=0)

    def pad(a: np.ndarray, rows: np.ndarray, fill: Any) -> np.ndarray:
        return np.pad(a[rows], ((0, 0), (0, m - a.shape[1])), constant_values=fill)

    return _EdgeWindows(
        d_px=np.concatenate([pad(w.d_px, t, 0.0) for w, t in zip(windows, take, strict=True)]),
        value=np.concatenate([pad(w.value, t, 0.0) for w, t in zip(windows, take, strict=True)]),
        inside=np.concatenate([pad(w.inside, t, False) for w, t in zip(windows, take, strict=True)]),
        phi_idx=np.concatenate([w.phi_idx[t] for w, t in zip(windows, take, strict=True)]),
        curve_px=np.concatenate([w.curve_px[t] for w, t in zip(windows, take, strict=True)]),
        ok=np.concatenate([w.ok[t] for w, t in zip(windows, take, strict=True)]))


def _edge_blur_px(win: _EdgeWindows, *, max_points: int = 120) -> float:
    """The image's edge blur (Gaussian sigma, px): the one under which the edge model fits
    the sky, the limb's pixels and two pixels inside (:data:`EDGE_BLUR_INNER_PX`) of up to
    ``max_points`` points best (median misfit) among those that put the model's edges within
    0.25 px of the starting (half-level) points: over :data:`EDGE_BLUR_GRID_PX`, then every
    0.1 px within 0.2 px of the best and a parabola through the least and its neighbours;
    infinite if none does. Measured: 0.0-0.06 on the simulator's edges without optics, 0.29,
    0.45 and 0.73 with a PSF of 0.3, 0.45 and 0.7 px, 0.13 on a simulated Io, 0.29/0.50/0.91
    on discs blurred by 0.3/0.5/0.9 px, 0.48-0.51 on 43C00078, 44C00029 and 44C00032, 1.4 on
    43M00081 and 44M00040 (methane: haze)."""
    ok = np.flatnonzero(win.ok)
    if ok.size < 10:
        return EDGE_BLUR_DEFAULT_PX
    sub = _stack_windows([win], [ok[:: max(1, ok.size // max_points)]])
    use = sub.inside & (sub.d_px >= EDGE_BLUR_INNER_PX)
    misfit: dict[float, float] = {}

    def at(blur: float) -> float:
        # A symmetric blur leaves a uniform edge's half level on the edge, so under the right
        # blur the model's edges lie about where the half-level points are; a wide blur with
        # its edges a pixel inside can fit the disc's shading better (Io, Lambert shading:
        # 2.44e-3 at 1.2 px, edges 0.87 px in, against 2.53e-3 at 0.2 px, 0.02 px in).
        blur = round(float(blur), 3)
        if blur not in misfit:
            shift, _, rel = _fit_edge(sub, _edge_coverage_table(blur), use)
            misfit[blur] = float(np.median(rel)) if abs(float(np.median(shift))) <= 0.25 else math.inf
        return misfit[blur]

    grid = EDGE_BLUR_GRID_PX
    best = min(grid, key=at)
    if not math.isfinite(at(best)):
        return math.inf  # no blur puts the model's edges on the limb: no edge model
    step = 0.5 * (grid[1] - grid[0])
    near = [b for b in best + step * np.arange(-2, 3) if grid[0] - 1e-9 <= b <= grid[-1] + 1e-9]
    cost = [at(b) for b in near]
    j = int(np.argmin(cost))
    if j == 0 or j == len(near) - 1 or not math.isfinite(cost[j - 1] + cost[j + 1]):
        return float(near[j])
    c0, c1, c2 = cost[j - 1], cost[j], cost[j + 1]
    den = c0 - 2.0 * c1 + c2
    return float(near[j] + (0.5 * (c0 - c2) / den if den > 0 else 0.0) * step)


def _edge_model_refine(data: np.ndarray, valid: np.ndarray, frame: np.ndarray, band: np.ndarray,
                       x_px: np.ndarray, y_px: np.ndarray, nx: np.ndarray, ny: np.ndarray, col_lo: int,
                       col_hi: int, *, max_cover: float | None = None, blur_px: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray | None]:
    """Limb points (``data``/``valid`` (frames, bands, rows, samples)) moved onto the edge
    that the pixel-area model, blurred by the image's measured blur, fits best to the sky
    and the limb's partly covered pixels (coverage <= ``max_cover`` at the start; ``blur_px``
    given: that blur, not measured):
    (x, y, ok, blur px, each point's move per px of blur; None where the blur is too wide
    for the model and the points are returned as they came).

    The half-level crossing compares the limb's last pixel with the planet's level inside
    it, but foreshortening puts 3-4 deg of latitude in that pixel (at 200,000 km): a belt or
    a zone there moves the point by 0.1-0.5 px, and along a belt the error is systematic
    (the simulated pass: sd 0.115-0.161 px; the spin solution 0.18-0.21 px off the truth).
    Here the level is the one the pixels at the very edge show themselves: their value
    grows with the area the planet covers, which the limb's position fixes, pixel by pixel
    along the limb (a slanted edge crosses the pixel grid at every phase). On that pass the
    points' error is 0.065-0.067 px sd and the solution 0.04-0.08 px off. The pixels used
    reach ``EDGE_MAX_COVER`` (0.7): with an optical blur the partly covered pixels span
    more of the edge. On the simulated pass with a 0.45 px PSF (seeds 11/12/16, worst
    image): 0.124/0.110/0.218 px off with 0.5, 0.155/0.086/0.175 with 0.7, 0.155/0.079/0.157
    with 0.85; no value serves every texture. One
    blur for all bands: a blur 0.05 px off in one band moves its points by ~0.01-0.04 px
    against the others', which no limb altitude absorbs.
    """
    keys = np.unique(np.stack([band, frame], axis=1), axis=0)
    groups = [np.flatnonzero((band == b) & (frame == f)) for b, f in keys]
    win = _stack_windows([_edge_windows(data[f, b], valid[f, b], x_px[g], y_px[g], nx[g], ny[g], col_lo,
                                        col_hi) for (b, f), g in zip(keys, groups, strict=True)])
    order = np.concatenate(groups)  # the stacked windows' points in the input's order
    blur = _edge_blur_px(win) if blur_px is None else float(blur_px)
    if blur > EDGE_MODEL_MAX_BLUR_PX:
        return x_px, y_px, np.ones(x_px.size, bool), blur, None
    table = _edge_coverage_table(round(blur, 3))
    start = _edge_coverage(table, win.phi_idx, win.d_px)
    use = win.inside & (start <= (EDGE_MAX_COVER if max_cover is None else max_cover))
    shift, scale, _ = _fit_edge(win, table, use)
    # the same pixels under a little more blur: how the points move with it
    more, _, _ = _fit_edge(win, _edge_coverage_table(round(blur + EDGE_BLUR_STEP_PX, 3)), use, start=shift,
                           reach_px=0.0)
    good = ((use.sum(axis=1) >= 8) & ((use & (start > 0.05)).sum(axis=1) >= 4)
            & (scale > 0) & (np.abs(shift) < 0.75))
    move = np.empty(x_px.size)
    slope = np.empty(x_px.size)
    ok = np.zeros(x_px.size, bool)
    move[order], ok[order] = win.curve_px + shift, good
    slope[order] = (more - shift) / EDGE_BLUR_STEP_PX
    return x_px + move * nx, y_px + move * ny, ok, blur, slope


# ---------------------------------------------------------------------------------------
# the limb residual model
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LimbModel:
    """Everything the residuals need that does not depend on the attitude parameters."""

    frame: np.ndarray            # (n,)
    band: np.ndarray             # (n,) index into the product's bands
    ray_cam: np.ndarray          # (n, 3) unit
    ifov_rad: np.ndarray         # (n,)
    beta_j2000: np.ndarray       # (n_frames, 3)
    rot_j2000_to_body: np.ndarray  # (n_frames, 3, 3)
    obs_body_km: np.ndarray      # (n_frames, 3) observer relative to the target, body frame
    radii_km: np.ndarray

    def subset(self, keep: np.ndarray) -> _LimbModel:
        return replace(self, frame=self.frame[keep], band=self.band[keep], ray_cam=self.ray_cam[keep],
                       ifov_rad=self.ifov_rad[keep])

    def _limb_terms(self, rot_j2000_to_cam: np.ndarray, limb_alt_km: float | np.ndarray) -> dict[str, Any]:
        """The residuals' intermediate terms: J2000 ray u, aberration factor k, the ray d and
        observer o scaled by the (altitude-raised) radii, their lengths, cos of their angle."""
        f = self.frame
        u = np.einsum("nij,ni->nj", rot_j2000_to_cam[f], self.ray_cam)  # cam -> J2000
        beta = self.beta_j2000[f]
        ub = np.einsum("ni,ni->n", u, beta)
        sq = np.sqrt(ub * ub - np.einsum("ni,ni->n", beta, beta) + 1.0)
        k = ub + sq
        rot_body = self.rot_j2000_to_body[f]
        u_body = np.einsum("nij,nj->ni", rot_body, k[:, None] * u - beta)
        alt = np.asarray(limb_alt_km, dtype=np.float64)
        radii = self.radii_km + (alt[self.band][:, None] if alt.ndim else alt)
        d = u_body / radii
        o = self.obs_body_km[f] / radii
        d_norm = norm3(d)
        o_norm = norm3(o)
        cos_raw = -np.einsum("ni,ni->n", d, o) / (d_norm * o_norm)
        return {"u": u, "beta": beta, "ub": ub, "sq": sq, "k": k, "rot_body": rot_body, "radii": radii,
                "d": d, "o": o, "d_norm": d_norm, "o_norm": o_norm, "cos_raw": cos_raw,
                "cos": np.clip(cos_raw, -1.0, 1.0)}

    def _residuals(self, t: Mapping[str, Any]) -> np.ndarray:
        alpha = np.arcsin(np.clip(1.0 / t["o_norm"], -1.0, 1.0))
        return (np.arccos(t["cos"]) - alpha) / self.ifov_rad

    def residuals_px(self, rot_j2000_to_cam: np.ndarray, limb_alt_km: float | np.ndarray = 0.0) -> np.ndarray:
        """Signed angular distance of each limb ray from the limb (px; + = sky side).

        The limb is that of the ellipsoid ``radii + limb_alt_km`` (the visible haze limb
        lies above the 1-bar ellipsoid of the PCK); ``limb_alt_km`` is one altitude or
        one per band (indexed by :attr:`band`): the haze limb is higher in blue light.
        """
        return self._residuals(self._limb_terms(rot_j2000_to_cam, limb_alt_km))

    def residuals_and_gradients(self, rot_j2000_to_cam: np.ndarray, limb_alt_km: float | np.ndarray = 0.0
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`residuals_px` (n,), the J2000 ray directions u (n, 3), and the residuals'
        derivatives by u (n, 3) and by the limb altitude (n,), analytically (the chain rule
        through the aberration, the ellipsoid scaling and the angle from the limb)."""
        t = self._limb_terms(rot_j2000_to_cam, limb_alt_km)
        u, d, o, radii, cos_ang = t["u"], t["d"], t["o"], t["radii"], t["cos"]
        d_norm, o_norm = t["d_norm"], t["o_norm"]
        with np.errstate(divide="ignore", invalid="ignore"):
            dang = np.where(np.abs(t["cos_raw"]) < 1.0, -1.0 / np.sqrt(1.0 - cos_ang**2), 0.0) / self.ifov_rad
            dalpha_do = np.where(o_norm > 1.0, -1.0 / (o_norm * np.sqrt(o_norm**2 - 1.0)), 0.0)
            dalpha_do /= self.ifov_rad
        dc_dd = -o / (d_norm * o_norm)[:, None] - (cos_ang / d_norm**2)[:, None] * d
        dc_do = -d / (d_norm * o_norm)[:, None] - (cos_ang / o_norm**2)[:, None] * o
        g_ugeo = np.einsum("nji,nj->ni", t["rot_body"], dang[:, None] * dc_dd / radii)
        dk_du = (1.0 + t["ub"] / t["sq"])[:, None] * t["beta"]
        g_u = t["k"][:, None] * g_ugeo + np.einsum("ni,ni->n", u, g_ugeo)[:, None] * dk_du
        dc_dalt = -np.einsum("ni,ni->n", dc_dd, d / radii) - np.einsum("ni,ni->n", dc_do, o / radii)
        do_dalt = -np.einsum("ni,ni->n", o, o / radii) / o_norm
        g_alt = dang * dc_dalt - dalpha_do * do_dalt
        return self._residuals(t), u, g_u, g_alt


#: d/da of SPICE's rotate(a, 3) is rotate(a, 3) @ _KZ (= _KZ @ rotate(a, 3)).
_KZ = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def _spin_jacobian(model: _LimbModel, x: np.ndarray, dt_s: np.ndarray, sc_to_cam: np.ndarray,
                   alts: np.ndarray, extra_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (n,) and their Jacobian (n, 6 + extras) by the spin parameters x = (ra, dec,
    phase0, rate, twist, limb altitude, extra band altitudes) of :func:`_spin_rotations`,
    analytically: R = T Z B with T = rotate(twist, 3) sc_to_cam, Z = rotate(phase0 + rate dt,
    3) and B = :func:`spin_basis` (rows e1, e2, axis); u = R^T ray."""
    ra, dec = float(x[0]), float(x[1])
    twisted = _twisted(sc_to_cam, x[4])
    r, u, g_u, g_alt = model.residuals_and_gradients(_spin_rotations(x, dt_s, sc_to_cam), alts)
    cr, sr, cd, sd = math.cos(ra), math.sin(ra), math.cos(dec), math.sin(dec)
    # e1 and e2 turn over where cos(dec) < 0
    flip = np.array([[1.0], [1.0], [0.0]]) * (math.copysign(1.0, cd) - 1.0) + 1.0
    basis = flip * np.array([[-sr, cr, 0.0], [-sd * cr, -sd * sr, cd], [cd * cr, cd * sr, sd]])
    d_ra = flip * np.array([[-cr, -sr, 0.0], [sd * sr, -sd * cr, 0.0], [-cd * sr, cd * cr, 0.0]])
    d_dec = flip * np.array([[0.0, 0.0, 0.0], [-cd * cr, -cd * sr, -sd], [-sd * cr, -sd * sr, cd]])
    bu = u @ basis.T  # B u (n, 3)
    jac = np.zeros((len(r), 6 + len(extra_idx)))
    # dR/dp = R (B^T dB/dp) for the axis: du/dp = (dB/dp)^T B u
    jac[:, 0] = np.einsum("ni,ni->n", g_u, bu @ d_ra)
    jac[:, 1] = np.einsum("ni,ni->n", g_u, bu @ d_dec)
    # in the camera frame: dr/dp = (R g_u) . (X^T ray) with dR/dp = X R
    w = np.einsum("nij,nj->ni", _spin_rotations(x, dt_s, sc_to_cam)[model.frame], g_u)
    phase_x = twisted @ _KZ @ twisted.T  # dR/dphase0 = T K T^T R
    jac[:, 2] = np.einsum("ni,ni->n", w, model.ray_cam @ phase_x)
    jac[:, 3] = jac[:, 2] * dt_s[model.frame]
    jac[:, 4] = np.einsum("ni,ni->n", w, model.ray_cam @ _KZ)  # dR/dtwist = K R
    jac[:, 5] = g_alt
    for j, b in enumerate(extra_idx):
        jac[:, 6 + j] = np.where(model.band == b, g_alt, 0.0)
    return r, jac


def _limb_model(points: LimbPoints, meta: ProductMeta, states: Sequence[FrameState],
                target: Target, boresight: BandBoresight = ()) -> _LimbModel:
    rays = np.zeros((len(points), 3))
    ifov = np.zeros(len(points))
    for i, band in enumerate(points.bands):
        sel = points.band == i
        if not sel.any():
            continue
        cam = CameraModel.for_product(meta, band, boresight_rad=dict(boresight).get(band))
        r = cam.px_to_cam(points.x_px[sel], points.y_px[sel])
        rays[sel] = r / np.linalg.norm(r, axis=1, keepdims=True)
        ifov[sel] = cam.sampling_factor / cam.focal_px
    return _LimbModel(
        frame=points.frame.astype(np.intp), band=points.band.astype(np.intp), ray_cam=rays, ifov_rad=ifov,
        beta_j2000=np.stack([s.beta_j2000 for s in states]),
        rot_j2000_to_body=np.stack([s.rot_j2000_to_body for s in states]),
        obs_body_km=np.stack([s.observer_pos_body_km for s in states]),
        radii_km=np.asarray(target.radii, dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------
# the solution record
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointingSolution:
    """A solved (or refined) camera pointing for one product."""

    product_id: str
    method: str                       # "spin" | "ck-refined" | "ck"
    attitude: Attitude
    timing: FrameTiming
    quality: str  # "good" | "fair" | "prior-dependent roll" | "ck-fallback" (GOOD_AXIS_SIGMA_DEG)
    residuals_px_by_band: Mapping[str, float]   # RMS of inliers per band
    n_points_by_band: Mapping[str, int]
    max_abs_residual_px: float
    n_rejected: int
    solve_time_s: float
    fixed_parameters: tuple[str, ...] = ()
    parameter_sigma: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: Fitted altitude of the visible limb above the PCK ellipsoid (km).
    limb_alt_km: float = 0.0
    #: Spin axis vs the physics prior: angles (deg), prior sigma, "prior_dependent_roll".
    axis: Mapping[str, Any] = field(default_factory=dict)
    #: Fitted rotation of the camera about its boresight relative to the frames kernel's
    #: mounting (rad; already included in a spin attitude's ``rot_sc_to_cam``). It aligns
    #: the framelets' rows with the spin: without it the bands misregister across the
    #: sweep by ~twist x band separation (155 px per band step).
    camera_twist_rad: float = 0.0
    #: Fitted limb altitude per band (km); ``limb_alt_km`` is their mean weighted by points.
    limb_alt_km_by_band: Mapping[str, float] = field(default_factory=dict)
    #: The texture band-alignment stage's record (:meth:`BandAlignment.to_dict`); the
    #: corrections themselves are in the attitude (``band_boresight_rad``).
    band_alignment: Mapping[str, Any] = field(default_factory=dict)
    #: The joint solve (:func:`solve_from_limbs`): ``products`` that shared this spin axis
    #: (this one included), ``spin_axis_shared``, ``span_s`` between their mid-times,
    #: ``axis_tension_sigma``/``_deg`` (how far this image alone would pull the axis),
    #: ``separate`` (products of the pass solved alone, and why). Empty for a CK solve.
    joint: Mapping[str, Any] = field(default_factory=dict)
    #: The blur (px) of the edge model the limb points were fitted with (shared by the
    #: images of a joint solve); None: half-level points (a haze edge too wide for the model).
    limb_edge_blur_px: float | None = None

    @property
    def rms_px(self) -> float:
        n = sum(self.n_points_by_band.values())
        if n == 0:
            return float("nan")
        return math.sqrt(sum(self.residuals_px_by_band[b] ** 2 * k
                             for b, k in self.n_points_by_band.items() if k) / n)

    def to_dict(self) -> dict[str, Any]:
        att = self.attitude
        if isinstance(att, SpinAttitude):
            att_d: dict[str, Any] = {"model": "spin", **{k: getattr(att, k) for k in (
                "spin_axis_ra_deg", "spin_axis_dec_deg", "phase0_deg", "rate_deg_s", "t_ref_et")},
                "rot_sc_to_cam": [list(r) for r in att.rot_sc_to_cam], "t_ref_utc": _utc(att.t_ref_et),
                "band_boresight_rad": {b: list(w) for b, w in att.band_boresight_rad}}
        elif isinstance(att, RefinedCkAttitude):
            att_d = {"model": "ck-refined", "delta_cam_rad": list(att.delta_cam_rad), "frame": att.frame,
                     "band_boresight_rad": {b: list(w) for b, w in att.band_boresight_rad}}
        else:
            att_d = {"model": "ck", **dict(att.describe())}
        t = self.timing
        return {
            "format": SOLUTION_FORMAT, "product_id": self.product_id, "method": self.method,
            "attitude": att_d,
            "timing": {k: getattr(t, k) for k in (
                "start_et", "interframe_delay_s", "start_time_bias_s", "interframe_delta_s",
                "exposure_s", "start_offset_s", "interframe_correction_s", "mid_exposure")},
            "quality": self.quality,
            "limb_residual_rms_px_by_band": dict(self.residuals_px_by_band),
            "limb_points_by_band": dict(self.n_points_by_band),
            "limb_residual_rms_px": self.rms_px,
            "limb_residual_max_px": self.max_abs_residual_px,
            "n_rejected": self.n_rejected, "solve_time_s": self.solve_time_s,
            "fixed_parameters": list(self.fixed_parameters),
            "parameter_sigma": dict(self.parameter_sigma), "notes": list(self.notes),
            "limb_alt_km": self.limb_alt_km, "limb_alt_km_by_band": dict(self.limb_alt_km_by_band),
            "axis": dict(self.axis),
            "camera_twist_mrad": 1e3 * self.camera_twist_rad,
            "band_alignment": dict(self.band_alignment),
            "joint": dict(self.joint),
            "limb_edge_blur_px": self.limb_edge_blur_px,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def summary(self) -> str:
        lines = [f"{self.product_id}: pointing {self.method}, quality {self.quality}, "
                 f"solved in {self.solve_time_s:.2f} s"]
        for band, rms in self.residuals_px_by_band.items():
            lines.append(f"  {band:8s} limb RMS {rms:6.3f} px  ({self.n_points_by_band.get(band, 0)} points)")
        lines.append(f"  max |residual| {self.max_abs_residual_px:.2f} px, {self.n_rejected} rejected")
        for k, v in self.attitude.describe().items():
            if k != "source":
                lines.append(f"  {k}: {v}")
        lines.append(f"  timing: start offset {1e3 * self.timing.start_offset_s:+.2f} ms, "
                     f"interframe correction {1e3 * self.timing.interframe_correction_s:+.3f} ms")
        lines.append(f"  limb altitude above the ellipsoid: {self.limb_alt_km:.1f} km"
                     + "".join(f", {b} {h:.1f}" for b, h in self.limb_alt_km_by_band.items()))
        blur = self.limb_edge_blur_px
        lines.append("  limb points: " + ("half level of the edge (no edge model)" if blur is None
                                          else f"edge model, blur {blur:.2f} px"))
        lines.append(f"  camera twist about the boresight: {1e3 * self.camera_twist_rad:+.2f} mrad")
        al = self.band_alignment
        for pair, shift in al.get("shift_px_by_pair", {}).items():
            lines.append(f"  band alignment {pair}: shift ({shift[0]:+.3f}, {shift[1]:+.3f}) px from "
                         f"{al['n_windows_by_pair'][pair]} windows (peak {al['peak_by_pair'][pair]:.2f}), "
                         f"held-out residual {al['check_px_by_pair'][pair]:.3f} px")
        if len(self.joint.get("products", ())) > 1:
            others = ", ".join(p for p in self.joint["products"] if p != self.product_id)
            lines.append(f"  spin axis shared with {others} (this image alone would pull it "
                         f"{self.joint.get('axis_tension_deg', 0.0):.2f} deg, "
                         f"{self.joint.get('axis_tension_sigma', 0.0):.1f} sigma)")
        for k, v in self.axis.items():
            lines.append(f"  axis {k}: {v:.3g}" if isinstance(v, float) else f"  axis {k}: {v}")
        for k, v in self.parameter_sigma.items():
            lines.append(f"  sigma {k}: {v:.4g}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def save_solution(sol: PointingSolution, path: str | Path) -> Path:
    """Write the solution JSON atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(sol.to_json())
        tmp.replace(path)
    except OSError as err:
        raise OutputError(f"cannot write pointing solution ({err.strerror})", path=path) from None
    return path


def load_solution(path: str | Path, meta: ProductMeta | None = None) -> PointingSolution:
    """Read a solution written by :func:`save_solution` (no kernels needed for a spin)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OutputError(f"cannot read pointing solution ({err})", path=path) from None
    if not isinstance(d, dict) or d.get("format") != SOLUTION_FORMAT:
        raise OutputError("not a junoproc pointing solution", path=path,
                          hint="write one with `junoproc pointing PRODUCT -o FILE`")
    if meta is not None and d.get("product_id") != meta.product_id:
        raise PointingError(f"solution is for {d.get('product_id')}, not {meta.product_id}", path=path)
    a = d["attitude"]
    att: Attitude
    boresight = _boresight_pairs(a.get("band_boresight_rad", {}))
    if a["model"] == "spin":
        att = SpinAttitude(spin_axis_ra_deg=a["spin_axis_ra_deg"], spin_axis_dec_deg=a["spin_axis_dec_deg"],
                           phase0_deg=a["phase0_deg"], rate_deg_s=a["rate_deg_s"], t_ref_et=a["t_ref_et"],
                           rot_sc_to_cam=tuple(tuple(float(x) for x in r) for r in a["rot_sc_to_cam"]),
                           band_boresight_rad=boresight)
    elif a["model"] == "ck-refined":
        att = RefinedCkAttitude(delta_cam_rad=tuple(a["delta_cam_rad"]), frame=a.get("frame", CAMERA_FRAME),
                                band_boresight_rad=boresight)
    else:
        att = CkAttitude(a.get("frame", CAMERA_FRAME))
    return PointingSolution(
        product_id=d["product_id"], method=d["method"], attitude=att, timing=FrameTiming(**d["timing"]),
        quality=d["quality"], residuals_px_by_band=d["limb_residual_rms_px_by_band"],
        n_points_by_band=d["limb_points_by_band"], max_abs_residual_px=d["limb_residual_max_px"],
        n_rejected=d["n_rejected"], solve_time_s=d["solve_time_s"],
        fixed_parameters=tuple(d.get("fixed_parameters", ())),
        parameter_sigma=d.get("parameter_sigma", {}), notes=tuple(d.get("notes", ())),
        limb_alt_km=float(d.get("limb_alt_km", 0.0)), axis=d.get("axis", {}),
        limb_alt_km_by_band={k: float(v) for k, v in d.get("limb_alt_km_by_band", {}).items()},
        camera_twist_rad=1e-3 * float(d.get("camera_twist_mrad", 0.0)),
        band_alignment=d.get("band_alignment", {}),
        joint=d.get("joint", {}),
        limb_edge_blur_px=d.get("limb_edge_blur_px"),
    )


# ---------------------------------------------------------------------------------------
# band alignment from the texture
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandAlignment:
    """Per-band boresight corrections measured from the texture (see :func:`align_bands`).

    Pairs are named ``"A-B"`` (A's content against B's, in A's framelet pixels).
    ``shift_px_by_pair``: the mean shift (x, y) before the correction, on the windows of
    the fit; ``check_px_by_pair``: the size of the mean shift left on the held-out windows
    after it. ``boresight_rad_by_band``: the corrections (rotation vectors, rad), gauged
    so that their mean weighted by limb points is zero (the limb keeps the absolute
    pointing). ``peak_by_pair``: the median phase-correlation peak of the windows.
    """

    boresight_rad_by_band: Mapping[str, tuple[float, float, float]]
    shift_px_by_pair: Mapping[str, tuple[float, float]]
    n_windows_by_pair: Mapping[str, int]
    peak_by_pair: Mapping[str, float]
    spread_px_by_pair: Mapping[str, float]
    check_px_by_pair: Mapping[str, float]
    n_check_by_pair: Mapping[str, int]
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"boresight_mrad_by_band": {b: [1e3 * v for v in w]
                                           for b, w in self.boresight_rad_by_band.items()},
                "shift_px_by_pair": {k: list(v) for k, v in self.shift_px_by_pair.items()},
                "n_windows_by_pair": dict(self.n_windows_by_pair), "peak_by_pair": dict(self.peak_by_pair),
                "spread_px_by_pair": dict(self.spread_px_by_pair),
                "check_px_by_pair": dict(self.check_px_by_pair),
                "n_check_by_pair": dict(self.n_check_by_pair), "time_s": self.time_s}


#: Texture windows (band framelet pixels): side, margin around it, high-pass scale.
ALIGN_WINDOW_PX = 48
ALIGN_MARGIN_PX = 6
ALIGN_HIGHPASS_SIGMA_PX = 3.0
#: Windows whose phase-correlation peak is below this are not used.
ALIGN_MIN_PEAK = 0.15
#: At most this fraction of a window's pixels may be invalid (filled from their neighbours).
ALIGN_MAX_INVALID = 0.02


def _highpass(a: np.ndarray) -> np.ndarray:
    a = np.sqrt(np.clip(a, 0.0, None)).astype(np.float32)  # ~photon-noise-flat, as the eye sees it
    return a - cv2.GaussianBlur(a, (0, 0), ALIGN_HIGHPASS_SIGMA_PX)


def _window_shift(a: np.ndarray, c_big: np.ndarray, m: int, hann: np.ndarray) -> np.ndarray:
    """(dx, dy, peak, info_xx, info_xy, info_yy): ``a(x) ~ g c(x + d) + o`` for the (W, W)
    window ``a`` inside ``c_big``; ``info`` is the inverse covariance of d (1/px^2).

    Phase correlation (gain-invariant) gives the start and its peak; Gauss-Newton on
    gain, offset and shift (Lucas-Kanade) removes the sub-pixel bias of its centroid. Its
    normal matrix says which directions the texture fixes: belts running along x fix y
    and leave x to the spots (the aperture problem), so windows are combined by it.
    """
    w = a.shape[0]
    nan = np.full(6, np.nan)
    (dx, dy), peak = cv2.phaseCorrelate(a.astype(np.float64), c_big[m:m + w, m:m + w].astype(np.float64),
                                        hann)
    d = np.clip([dx, dy], -(m - 1.5), m - 1.5)
    grid = np.arange(w, dtype=np.float32) + m
    gx_big = cv2.Sobel(c_big, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy_big = cv2.Sobel(c_big, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    sw = np.sqrt(hann.astype(np.float32)).ravel()
    av = a.ravel() * sw
    for _ in range(6):
        mx, my = np.meshgrid(grid + np.float32(d[0]), grid + np.float32(d[1]))
        ck, gx, gy = (cv2.remap(v, mx, my, cv2.INTER_CUBIC) for v in (c_big, gx_big, gy_big))
        design = np.stack([ck.ravel(), np.ones(ck.size, np.float32), gx.ravel(), gy.ravel()], axis=1)
        design = design.astype(np.float64) * sw[:, None]
        normal = design.T @ design
        # a weak pull of the step to zero keeps a direction the texture does not fix in place
        normal[2:, 2:] += 1e-3 * np.trace(normal[2:, 2:]) * np.eye(2)
        p = np.linalg.solve(normal, design.T @ av)
        if not p[0] > 1e-6:  # no correlation, or anti-correlated texture
            return nan
        step = p[2:] / p[0]
        d = d + np.clip(step, -1.0, 1.0)
        if np.abs(d).max() > m - 1:
            return nan
        if np.hypot(*step) < 1e-3:
            break
    resid = av - design @ p
    sigma2 = float(resid @ resid) / max(av.size - 4, 1)
    cov_p = sigma2 * np.linalg.inv(normal)
    cov_d = cov_p[2:, 2:] / p[0] ** 2
    info = np.linalg.inv(cov_d + 1e-8 * np.eye(2))
    return np.array([d[0], d[1], peak, info[0, 0], info[0, 1], info[1, 1]])


def _alignment_windows(geo: Any, data: np.ndarray, valid: np.ndarray, band: str, lit_level: float,
                       n_max: int, max_emission_deg: float = 75.0) -> list[tuple[float, int, int, int]]:
    """The most textured windows (score, frame, y0, x0) of ``band``, best first: fully lit and
    valid in the image, and, by the geometry of their corners, on the target and away
    from the limb (emission < ``max_emission_deg``: foreshortened, and the haze differs
    between bands; the limb's own edge would otherwise be the strongest "texture")."""
    b = geo.meta.filters.index(band)
    cols = geo.cameras[band].photoactive_columns()
    w, m = ALIGN_WINDOW_PX, ALIGN_MARGIN_PX
    n_frames, _, rows, _ = data.shape
    big = w + 2 * m
    out = []
    ys = range(0, rows - big + 1, w // 2)
    xs = range(cols.start, cols.stop - big + 1, w // 2)
    for f in range(n_frames):
        img = data[f, b]
        lit = (img > lit_level).astype(np.float32)
        hp = _highpass(img)
        energy = cv2.boxFilter(hp * hp, -1, (w, w), normalize=True, borderType=cv2.BORDER_CONSTANT)
        full = cv2.boxFilter(lit, -1, (big, big), normalize=True, borderType=cv2.BORDER_CONSTANT)
        bad = cv2.boxFilter((~valid[f, b]).astype(np.float32), -1, (big, big), normalize=True,
                            borderType=cv2.BORDER_CONSTANT)
        for y0 in ys:
            for x0 in xs:
                yc, xc = y0 + big // 2, x0 + big // 2
                if full[yc, xc] > 0.9999 and bad[yc, xc] <= ALIGN_MAX_INVALID:
                    out.append((float(energy[y0 + m + w // 2, x0 + m + w // 2]), f, y0 + m, x0 + m))
    out.sort(reverse=True)
    chosen: list[tuple[float, int, int, int]] = []
    for score, f, y0, x0 in out:
        yy, xx = np.meshgrid([y0 - m + 0.5, y0 + w + m - 0.5], [x0 - m + 0.5, x0 + w + m - 0.5],
                             indexing="ij")
        bp = geo.framelet_backplanes(f, band, xx, yy)
        if bp.hit.all() and np.all(bp.emission_deg < max_emission_deg):
            chosen.append((score, f, y0, x0))
            if len(chosen) >= n_max:
                break
    return chosen


def _measure_windows(geo: Any, data: np.ndarray, valid: np.ndarray, band: str, ref: str,
                     windows: Sequence[tuple[float, int, int, int]]) -> np.ndarray:
    """Per window (x_centre, y_centre, dx, dy, peak, info_xx, info_xy, info_yy) of ``band``
    against ``ref`` (:func:`_window_shift`; rows of NaN
    where the window is not usable): the reference band resampled onto the band's pixels
    through the surface (the reference framelet that sees each pixel best)."""
    w, m = ALIGN_WINDOW_PX, ALIGN_MARGIN_PX
    big = w + 2 * m
    filters = geo.meta.filters
    b, r = filters.index(band), filters.index(ref)
    n_frames, _, rows, _ = data.shape
    cols = geo.cameras[ref].photoactive_columns()
    hann = cv2.createHanningWindow((w, w), cv2.CV_64F)
    out = np.full((len(windows), 8), np.nan)
    for i, (_, f, y0, x0) in enumerate(windows):
        out[i, :2] = x0 + 0.5 * w, y0 + 0.5 * w
        yy, xx = np.mgrid[y0 - m:y0 + w + m, x0 - m:x0 + w + m].astype(np.float64) + 0.5
        pts = geo.surface_points(f, band, xx, yy)
        if not pts.hit.all():
            continue
        # the reference frame that sees the window's centre nearest its middle row, and its neighbours
        centre = pts.pos_body_km[big // 2, big // 2]
        cand = [(abs(float(geo.surface_to_px(f2, ref, centre)[1]) - rows / 2), f2)
                for f2 in range(max(0, f - 4), min(n_frames, f + 5))]
        f_best = min((c for c in cand if np.isfinite(c[0])), default=(np.inf, -1))[1]
        if f_best < 0:
            continue
        sampled = np.full((big, big), np.nan, np.float32)
        bad = np.zeros((big, big), bool)
        depth = np.full((big, big), -np.inf)
        for f2 in range(max(0, f_best - 1), min(n_frames, f_best + 2)):
            x2, y2 = geo.surface_to_px(f2, ref, pts.pos_body_km)
            inner = np.minimum(np.minimum(y2, rows - y2), np.minimum(x2 - cols.start, cols.stop - x2))
            use = (inner > 2.0) & (inner > depth)
            if not use.any():
                continue
            ix = np.clip(np.rint(x2 - 0.5).astype(int), 0, data.shape[3] - 1)
            iy = np.clip(np.rint(y2 - 0.5).astype(int), 0, rows - 1)
            v = cv2.remap(data[f2, r], (x2 - 0.5).astype(np.float32), (y2 - 0.5).astype(np.float32),
                          cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
            sampled[use] = v[use]
            bad[use] = ~valid[f2, r][iy, ix][use]
            depth[use] = inner[use]
        if not np.isfinite(sampled).all() or bad.mean() > ALIGN_MAX_INVALID:
            continue
        a = _highpass(data[f, b, y0 - m:y0 + w + m, x0 - m:x0 + w + m])[m:m + w, m:m + w]
        out[i, 2:] = _window_shift(a, _highpass(sampled), m, hann)
    return out


def _shift_jacobian(cam: CameraModel, x_px: np.ndarray, y_px: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d(x_px, y_px)/d(boresight rotation about cam x, y) of fixed rays at these pixels: (n, 2, 2)."""
    rays = cam.px_to_cam(x_px, y_px)
    jac = np.empty((len(x_px), 2, 2))
    for k in range(2):
        step = np.array(cam.boresight_rad, dtype=np.float64)
        step[k] += eps
        x1, y1 = cam.with_boresight(step).cam_to_px(rays)
        jac[:, 0, k] = (x1 - x_px) / eps
        jac[:, 1, k] = (y1 - y_px) / eps
    return jac


def _info(meas: np.ndarray) -> np.ndarray:
    """The windows' 2x2 information matrices (n, 2, 2) from their rows."""
    return np.stack([np.stack([meas[:, 5], meas[:, 6]], -1), np.stack([meas[:, 6], meas[:, 7]], -1)], -2)


def _usable(meas: np.ndarray) -> np.ndarray:
    return np.isfinite(meas).all(axis=1) & (meas[:, 4] >= ALIGN_MIN_PEAK)


def _mean_shift(meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Information-weighted mean shift (2,) of windows and its covariance (2, 2), windows
    more than 3 robust sigmas away dropped."""
    ok = _usable(meas)
    if not ok.any():
        return np.full(2, np.nan), np.full((2, 2), np.nan)
    info, d = _info(meas[ok]), meas[ok, 2:4]
    use = np.ones(len(d), bool)
    for _ in range(3):
        total = info[use].sum(axis=0)
        mean = np.linalg.solve(total, np.einsum("nij,nj->i", info[use], d[use]))
        r = d - mean
        chi = np.sqrt(np.einsum("ni,nij,nj->n", r, info, r))
        scale = max(1.4826 * float(np.median(chi[use])), 1e-9)
        new = chi < 3.0 * scale
        if np.array_equal(new, use) or new.sum() < 1:
            break
        use = new
    return mean, np.linalg.inv(total) * max(scale, 1.0) ** 2


def _fit_boresight(cam: CameraModel, meas: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The rotation (about cam x, y, in px: rad x focal) that undoes the windows' shifts:
    (omega_px (2,), its information matrix (2, 2), mean shift (2,), used mask, spread px).

    A band pixel x sees what the model puts at x + d: the corrected model must map the
    ray of x + d to x, ``J omega = -d``, solved with each window's information matrix
    (robust: windows > 3 sigma dropped)."""
    ok = _usable(meas)
    if ok.sum() < 3:
        return np.zeros(2), np.zeros((2, 2)), np.full(2, np.nan), ok, float("nan")
    jac = _shift_jacobian(cam, meas[:, 0], meas[:, 1]) / cam.focal_px  # px per px of rotation
    info = np.zeros((len(meas), 2, 2))
    info[ok] = _info(meas[ok])
    use = ok.copy()
    omega = np.zeros(2)
    scale = 1.0
    normal = np.eye(2)
    for _ in range(4):
        normal = np.einsum("nki,nkl,nlj->ij", jac[use], info[use], jac[use])
        omega = np.linalg.solve(normal, -np.einsum("nki,nkl,nl->i", jac[use], info[use], meas[use, 2:4]))
        r = meas[:, 2:4] + np.einsum("nij,j->ni", jac, omega)
        chi = np.sqrt(np.abs(np.einsum("ni,nij,nj->n", r, info, r)))
        scale = max(1.4826 * float(np.median(chi[use])), 1e-9)
        new = ok & (chi < 3.0 * scale)
        if np.array_equal(new, use) or new.sum() < 3:
            break
        use = new
    spread = 1.4826 * float(np.median(np.hypot(*r[use].T)))
    mean, _ = _mean_shift(np.where(use[:, None], meas, np.nan))
    return omega, normal / max(scale, 1.0) ** 2, mean, use, spread


def align_bands(image: Any, sol: PointingSolution, *, n_windows: int = 12,
                weights: Mapping[str, float] | None = None, target: Target | None = None) -> BandAlignment:
    """Measure the bands' sub-pixel offsets against each other from the texture and turn
    them into per-band boresight corrections (small rotations of each band's camera).

    For every pair of bands (A, B) the image of B is resampled onto A's own framelet
    pixels through the surface of the current solution, on A's most textured windows that
    are fully lit, unsaturated in both and away from the limb (emission < 75 deg); per
    window the shift comes from phase correlation refined by Gauss-Newton (gain, offset,
    shift) on high-passed sqrt images. Per pair the rotation about the camera's x and y
    axes that undoes the shifts is fitted robustly (the CCD is rigid: no per-band twist)
    on every other window by texture rank; the windows in between measure what is left.
    The pairs are combined by least squares into one rotation per band (a pair with no
    usable windows, e.g. where one band is saturated, is bridged by the others), gauged
    so that the mean weighted by ``weights`` (limb points per band) is zero: the bands'
    relative offsets come from the texture, the absolute pointing stays the limb's.
    Corrections already in ``sol.attitude`` are the starting point.
    """
    return _align_bands(image, sol.attitude, sol.timing, n_windows=n_windows, weights=weights, target=target)


def _align_bands(image: Any, attitude: Attitude, timing: FrameTiming, *, n_windows: int = 12,
                 weights: Mapping[str, float] | None = None, target: Target | None = None) -> BandAlignment:
    from .geometry import image_geometry

    t0 = time.perf_counter()
    meta, data, valid = _image_arrays(image)
    if not valid.all():  # isolated bad pixels (hot, blemish, hits) take their neighbours' median
        data = data.copy()
        for f, b in zip(*np.nonzero(~valid.all(axis=(2, 3))), strict=True):
            bad = ~valid[f, b]
            data[f, b][bad] = cv2.medianBlur(data[f, b], 5)[bad]
    filters = tuple(meta.filters)
    target = target or Target.from_name(meta.target, path=meta.metadata_path or None)
    cams = {band: CameraModel.for_product(meta, band, attitude=attitude) for band in filters}
    geo = replace(image_geometry(meta, attitude, timing=timing, target=target), cameras=cams)
    cols = cams[filters[0]].photoactive_columns()
    sky, bright = (float(v) for v in np.percentile(data[:, :, ::LEVEL_ROW_STEP, cols], [2, 99.5]))
    lit_level = sky + 0.15 * (bright - sky)
    # both ways round: windows of A against B, and of B against A (one may be saturated
    # where the other has its texture)
    pairs = [(a, b) for a in filters for b in filters if a != b]
    # the bands' windows, then the pairs' measurements, each shared among the cores
    found = fork_map(lambda c: _alignment_windows(geo, data, valid, c, lit_level, 2 * n_windows), filters)
    windows = dict(zip(filters, found, strict=True))
    fitting = fork_map(lambda ab: _measure_windows(geo, data, valid, *ab, windows[ab[0]][0::2]), pairs)
    shift, n_used, peak, spread = {}, {}, {}, {}
    nb = len(filters)
    normal = np.zeros((2 * nb, 2 * nb))
    rhs = np.zeros(2 * nb)
    for (a, b), meas in zip(pairs, fitting, strict=True):
        name = f"{a}-{b}"
        omega_px, info_pair, mean_shift, used, spr = _fit_boresight(cams[a], meas)
        good = np.isfinite(meas[:, 4])
        if filters.index(a) < filters.index(b):
            shift[name] = (float(mean_shift[0]), float(mean_shift[1]))
            n_used[name] = int(used.sum())
            peak[name] = float(np.median(meas[good, 4])) if good.any() else float("nan")
            spread[name] = spr
        else:  # reported under "b-a", with the shift turned round
            name = f"{b}-{a}"
            n0 = n_used.get(name, 0)
            n_used[name] = n0 + int(used.sum())
            if used.sum() and (n0 == 0 or not np.isfinite(shift[name][0])):
                shift[name] = (-float(mean_shift[0]), -float(mean_shift[1]))
            elif used.sum():  # the two directions, weighted by their windows
                both = (n0 * np.asarray(shift[name]) - used.sum() * mean_shift) / (n0 + used.sum())
                shift[name] = (float(both[0]), float(both[1]))
            if good.any():
                peak[name] = float(np.nanmedian([peak[name], float(np.median(meas[good, 4]))]))
            if np.isfinite(spr):
                spread[name] = float(np.nanmedian([spread[name], spr]))
        if used.sum() >= 3:  # omega_a - omega_b = omega_px, with its information matrix
            sel = np.zeros((2, 2 * nb))
            sel[:, 2 * filters.index(a):2 * filters.index(a) + 2] = np.eye(2)
            sel[:, 2 * filters.index(b):2 * filters.index(b) + 2] = -np.eye(2)
            normal += sel.T @ info_pair @ sel
            rhs += sel.T @ info_pair @ omega_px
    wts = np.array([float((weights or {}).get(band, 1.0)) for band in filters])
    wts = wts / max(float(wts.sum()), 1e-12)
    gauge = np.zeros((2, 2 * nb))  # sum of weights x omega = 0
    for k in range(2):
        gauge[k, k::2] = wts
    big_w = 1e3 * max(float(np.trace(normal)), 1.0)
    normal += big_w * gauge.T @ gauge + 1e-2 * np.eye(2 * nb)  # and a weak pull to 0 (10 px)
    omega_all = np.linalg.solve(normal, rhs).reshape(nb, 2)
    corrected = {band: np.asarray(cams[band].boresight_rad) + np.r_[omega_all[i] / cams[band].focal_px, 0.0]
                 for i, band in enumerate(filters)}
    geo2 = replace(geo, cameras={band: cams[band].with_boresight(corrected[band]) for band in filters})
    left: dict[str, list[np.ndarray]] = {}
    checking = fork_map(lambda ab: _measure_windows(geo2, data, valid, *ab, windows[ab[0]][1::2]), pairs)
    for (a, b), meas in zip(pairs, checking, strict=True):
        if filters.index(b) < filters.index(a):
            meas[:, 2:4] *= -1.0  # as b's shift against a
        left.setdefault("-".join(sorted((a, b), key=filters.index)), []).append(meas)
    n_check = {k: int(_usable(np.concatenate(vs)).sum()) for k, vs in left.items()}
    check = {k: float(np.hypot(*_mean_shift(np.concatenate(vs))[0])) for k, vs in left.items()}
    return BandAlignment(
        boresight_rad_by_band={b: (float(v[0]), float(v[1]), float(v[2])) for b, v in corrected.items()},
        shift_px_by_pair=shift, n_windows_by_pair=n_used, peak_by_pair=peak, spread_px_by_pair=spread,
        check_px_by_pair=check, n_check_by_pair=n_check, time_s=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------
def _twisted(sc_to_cam: np.ndarray, twist_rad: float) -> np.ndarray:
    """The spacecraft -> camera rotation followed by a rotation about the camera boresight (+z)."""
    return frame_rotation([0.0, 0.0, float(twist_rad)]) @ sc_to_cam


def _spin_rotations(x: np.ndarray, dt_s: np.ndarray, sc_to_cam: np.ndarray) -> np.ndarray:
    """Per-frame J2000 -> camera rotations of spin parameters x = (ra, dec, phase0, rate[, twist, ...]).

    ``x[4]``, when given, is the camera's twist about its boresight relative to the frames
    kernel's mounting (rad).
    """
    basis = spin_basis(_radec_to_vec(x[0], x[1]))
    if len(x) > 5:
        sc_to_cam = _twisted(sc_to_cam, x[4])
    return sc_to_cam @ _rz(x[2] + x[3] * dt_s) @ basis


def _robust_cost(r: np.ndarray, f_scale: float = 1.0) -> float:
    z = (r / f_scale) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def _fit_robust(fun, x0: np.ndarray, n_points: int, *, extra=None, jac=None, extra_jac=None,
                f_scale: float = 1.0,
                rounds: int = 3, x_scale: Any = "jac", bounds: Any = (-np.inf, np.inf),
                diff_step: float | None = None, sparsity: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """soft_l1 least squares, then reject > 3 sigma (floor 0.5 px) and refit. Returns x, inliers.

    ``fun(x)`` gives the point residuals (px), ``extra(x)`` optional prior residuals (in
    sigmas) that are always kept. ``jac(x)``: the point residuals' Jacobian, ``extra_jac(x)``
    that of ``extra`` (else finite differences of both). ``sparsity`` (n_points, n_params)
    bool: which parameters each point depends on (several images in one fit), for a grouped
    finite-difference Jacobian.
    """
    inl = np.ones(n_points, bool)
    x = np.asarray(x0, dtype=np.float64)
    for _ in range(rounds):
        keep = inl.copy()

        def f(p: np.ndarray, keep: np.ndarray = keep) -> np.ndarray:
            r = fun(p)[keep]
            return r if extra is None else np.r_[r, extra(p)]

        def j(p: np.ndarray, keep: np.ndarray = keep) -> np.ndarray:
            jm = jac(p)[keep]
            if extra is None:
                return jm
            extra_rows = extra_jac(p) if extra_jac else _numeric_jacobian(extra, p, np.full(p.size, 1e-7))
            return np.vstack([jm, extra_rows])

        jac_sparsity = None
        if sparsity is not None and jac is None:
            n_extra = 0 if extra is None else len(extra(x))
            jac_sparsity = np.vstack([sparsity[keep], np.ones((n_extra, x.size), bool)])
        x = optimize.least_squares(f, x, jac=j if jac is not None else "2-point", loss="soft_l1",
                                   f_scale=f_scale, x_scale=x_scale, method="trf", max_nfev=200,
                                   bounds=bounds, diff_step=diff_step, jac_sparsity=jac_sparsity).x
        r = fun(x)
        sigma = 1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep]))))
        new = np.abs(r) < max(3.0 * sigma, 0.5)
        if np.array_equal(new, inl):
            break
        inl = new
    return x, inl


def _axis_prior_jacobian(prior_res, x: np.ndarray) -> np.ndarray:
    """Jacobian of the axis prior's residuals by x, which depend on (ra, dec) = x[:2] only
    (central differences in those two)."""
    r0 = prior_res(x[:2])
    jac = np.zeros((r0.size, x.size))
    for i in range(2):
        xp, xm = x[:2].copy(), x[:2].copy()
        xp[i] += 1e-7
        xm[i] -= 1e-7
        jac[:, i] = (prior_res(xp) - prior_res(xm)) / 2e-7
    return jac


def _numeric_jacobian(fun, x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    f0 = fun(x)
    jac = np.empty((f0.size, x.size))
    for i, h in enumerate(steps):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        jac[:, i] = (fun(xp) - fun(xm)) / (2 * h)
    return jac


@dataclass(frozen=True)
class AxisPrior:
    """Where Juno's spin axis (s/c +Z, the HGA boresight) may be, in J2000.

    ``centre_j2000``: the mean of a Gaussian prior of ``sigma_deg`` on the axis (a weak
    residual in the same least-squares problem); ``gates``: named directions, the axis
    must lie within ``gate_deg`` of one of them (candidates beyond are never tried and a
    solution beyond is refused: an anti-Earth axis is a mirror solution).
    """

    centre_j2000: np.ndarray
    sigma_deg: float = 5.0
    gates: tuple[tuple[str, np.ndarray], ...] = ()
    gate_deg: float = 30.0
    source: str = "earth"

    def residuals(self, axis_j2000: np.ndarray) -> np.ndarray:
        """Tangent-plane offset of the axis from the centre, in prior sigmas (2,)."""
        e = spin_basis(self.centre_j2000)
        return np.array([axis_j2000 @ e[0], axis_j2000 @ e[1]]) / math.radians(self.sigma_deg)

    def gate_distances_deg(self, axis_j2000: np.ndarray) -> dict[str, float]:
        return {name: _angle_deg(axis_j2000, d) for name, d in self.gates}

    def within_gate(self, axis_j2000: np.ndarray) -> bool:
        return not self.gates or min(self.gate_distances_deg(axis_j2000).values()) <= self.gate_deg


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(a @ b)))


def juno_axis_prior(et: float, *, sigma_deg: float = 5.0, gate_deg: float = 30.0) -> AxisPrior | None:
    """The physics prior near perijove: +Z at Earth (HGA) or near the orbit normal.

    Earth as seen from Juno (LT+S) is the prior's centre; the gates are Earth and the
    orbit normal of Juno about Jupiter, signed to the side of +Z: r x v turned towards
    Earth, or the Sun where the kernels have no Earth (the solar arrays face +Z as the
    HGA does, and the Sun and Earth are < 12 deg apart seen from Jupiter). The orbit
    plane is nearly fixed while Jupiter circles the Sun, so r x v itself points either
    way: at PJ01 the CK's +Z is 177 deg from r x v and 4 deg from the Sun, at PJ44 r x v
    is 11 deg from Earth. Unsigned, the gate would admit the mirror solution (the axis
    flipped, the map mirrored, the night side lit). The orbit normal is left as r x v
    only when the kernels give neither Earth nor the Sun. None when they give no gate.
    """
    gates: list[tuple[str, np.ndarray]] = []
    towards_z: np.ndarray | None = None
    for body in ("EARTH", "SUN"):
        try:
            pos = np.asarray(spiceypy.spkpos(body, et, "J2000", "LT+S", OBSERVER)[0])
        except spiceypy.utils.exceptions.SpiceyError:
            continue
        towards_z = pos / np.linalg.norm(pos)
        if body == "EARTH":
            gates.append(("earth", towards_z))
        break
    try:
        st = np.asarray(spiceypy.spkezr(OBSERVER, et, "J2000", "NONE", "JUPITER")[0])
        h = np.cross(st[:3], st[3:])
        h /= np.linalg.norm(h)
        if towards_z is not None and float(h @ towards_z) < 0.0:
            h = -h
        gates.append(("orbit_normal", h))
    except spiceypy.utils.exceptions.SpiceyError:
        pass
    if not gates:
        return None
    return AxisPrior(centre_j2000=gates[0][1], sigma_deg=sigma_deg, gates=tuple(gates), gate_deg=gate_deg,
                     source=gates[0][0])


def _axis_grid(centres: Sequence[np.ndarray], radius_deg: float, step_deg: float) -> np.ndarray:
    """Unit axes on a square grid (gnomonic) within ``radius_deg`` of each centre: (m, 3)."""
    k = int(radius_deg // step_deg)
    a, b = np.meshgrid(np.arange(-k, k + 1) * step_deg, np.arange(-k, k + 1) * step_deg)
    keep = np.hypot(a, b) <= radius_deg
    ta, tb = np.tan(np.radians(a[keep])), np.tan(np.radians(b[keep]))
    out = []
    for c in centres:
        e = spin_basis(c)
        v = e[2][None] + ta[:, None] * e[0][None] + tb[:, None] * e[1][None]
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.concatenate(out)


def _batch_residuals_px(model: _LimbModel, ray_sc: np.ndarray, dt_pt: np.ndarray, axes: np.ndarray,
                        phase0: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Limb residuals (K, n) of K spin candidates (zero limb altitude), vectorised."""
    theta = phase0[:, None] + rate[:, None] * dt_pt[None, :]            # (K, n)
    c, s = np.cos(theta), np.sin(theta)
    # Rz(theta)^T applied to ray_sc: the spinning frame's vector in the axis basis
    vx = c * ray_sc[None, :, 0] - s * ray_sc[None, :, 1]
    vy = s * ray_sc[None, :, 0] + c * ray_sc[None, :, 1]
    vz = np.broadcast_to(ray_sc[None, :, 2], vx.shape)
    basis = _spin_bases(axes)                                            # (K, 3, 3) rows e1, e2, axis
    u = (vx[..., None] * basis[:, None, 0] + vy[..., None] * basis[:, None, 1]
         + vz[..., None] * basis[:, None, 2])                           # (K, n, 3) J2000
    f = model.frame
    beta = model.beta_j2000[f][None]
    ub = np.einsum("kni,kni->kn", u, np.broadcast_to(beta, u.shape))
    kk = ub + np.sqrt(ub * ub - np.sum(beta * beta, axis=-1) + 1.0)
    u_geo = kk[..., None] * u - beta
    u_body = np.einsum("nij,knj->kni", model.rot_j2000_to_body[f], u_geo)
    d = u_body / model.radii_km
    o = (model.obs_body_km / model.radii_km)[f][None]
    cos_ang = -np.einsum("...i,...i->...", d, o) / (norm3(d) * norm3(o))
    ang = np.arccos(np.clip(cos_ang, -1.0, 1.0))
    alpha = np.arcsin(np.clip(1.0 / norm3(o), -1.0, 1.0))
    return (ang - alpha) / model.ifov_rad[None]


def _small_circle_phases(model: _LimbModel, dt_s: np.ndarray, sc_to_cam: np.ndarray,
                         rates_rad_s: np.ndarray) -> list[tuple[float, float, float]]:
    """Per trial rate: (rate, elevation sin, azimuth) of the target in the spinning frame.

    For a trial rate, the limb rays in the spinning frame (phase0 = 0) lie on a small
    circle around the target direction: ``q . w = 1`` is linear in ``w``.
    """
    ray_sc = model.ray_cam @ sc_to_cam  # cam -> sc (row vectors)
    t = dt_s[model.frame]
    out = []
    for rate in rates_rad_s:
        q = np.einsum("nji,nj->ni", _rz(rate * t), ray_sc)  # Rz^T v
        w = np.linalg.lstsq(q, np.ones(len(q)), rcond=None)[0]
        for _ in range(2):  # two IRLS passes against outliers
            rr = q @ w - 1.0
            wt = 1.0 / np.maximum(np.abs(rr), np.median(np.abs(rr)) + 1e-12)
            w = np.linalg.lstsq(q * np.sqrt(wt)[:, None], np.sqrt(wt), rcond=None)[0]
        j_spin = w / np.linalg.norm(w)
        out.append((float(rate), float(j_spin[2]), math.atan2(j_spin[1], j_spin[0])))
    return out


def _spin_starts(model: _LimbModel, dt_s: np.ndarray, sc_to_cam: np.ndarray, target_dir_j2000: np.ndarray,
                 prior: AxisPrior | None, rng: np.random.Generator, *, radius_deg: float = 15.0,
                 step_deg: float = 2.0, n_best: int = 4) -> list[np.ndarray]:
    """The best few start vectors (ra, dec, phase0, rate) of a gridded search.

    Axes: a grid of ``radius_deg`` around Earth and the orbit normal (the prior's gates),
    or, with no prior, every 3 deg on the cone of the target's small-circle elevation.
    Rates: 11.3-12.4 deg/s. Phase: where the target's azimuth in the spinning frame
    (small-circle fit of the limb rays) says. Scored by the robust limb cost on a
    subsample, plus the prior.
    """
    rates = np.radians(np.arange(SPIN_RATE_RANGE_DEG_S[0], SPIN_RATE_RANGE_DEG_S[1] + 1e-9, 0.1))
    sub = rng.choice(len(model.frame), size=min(len(model.frame), 300), replace=False)
    sm = model.subset(sub)
    circles = _small_circle_phases(sm, dt_s, sc_to_cam, rates)
    j = target_dir_j2000 / np.linalg.norm(target_dir_j2000)
    if prior is not None and prior.gates:
        axes = _axis_grid([d for _, d in prior.gates], radius_deg, step_deg)
        axes_by_rate = [axes] * len(rates)
    else:  # the cone of the small circle's elevation around the target direction
        e = spin_basis(j)
        psi = np.radians(np.arange(0.0, 360.0, 3.0))
        axes_by_rate = []
        for _, sin_e, _ in circles:
            cos_e = math.sqrt(max(0.0, 1 - sin_e * sin_e))
            axes_by_rate.append(sin_e * j[None] + cos_e * (np.cos(psi)[:, None] * e[0] + np.sin(psi)[:, None]
                                                           * e[1]))
    ray_sc = sm.ray_cam @ sc_to_cam
    dt_pt = dt_s[sm.frame]

    def scored(rate_axes: tuple[tuple[float, float, float], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (rate, _, az_spin), axes = rate_axes
        bj = np.einsum("kij,j->ki", _spin_bases(axes), j)
        phase0 = np.arctan2(bj[:, 1], bj[:, 0]) - az_spin
        r = _batch_residuals_px(sm, ray_sc, dt_pt, axes, phase0, np.full(len(axes), rate))
        z = (r / 3.0) ** 2
        cost = np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0), axis=1)
        if prior is not None:
            e = spin_basis(prior.centre_j2000)
            cost = cost + ((axes @ e[0]) ** 2 + (axes @ e[1]) ** 2) / math.radians(prior.sigma_deg) ** 2
        ra_dec = np.column_stack([np.arctan2(axes[:, 1], axes[:, 0]) % (2 * math.pi),
                                  np.arcsin(np.clip(axes[:, 2], -1.0, 1.0))])
        return np.column_stack([ra_dec, phase0, np.full(len(axes), rate)]), cost

    found = fork_map(scored, list(zip(circles, axes_by_rate, strict=True)))  # the rates among the cores
    xs = np.concatenate([x for x, _ in found])
    costs = np.concatenate([c for _, c in found])
    chosen: list[np.ndarray] = []
    for i in np.argsort(costs):
        ax = _radec_to_vec(xs[i][0], xs[i][1])
        if any(_angle_deg(ax, _radec_to_vec(c[0], c[1])) < 4.0 and abs(xs[i][3] - c[3]) < math.radians(0.2)
               for c in chosen):
            continue
        chosen.append(xs[i])
        if len(chosen) >= n_best:
            break
    return chosen


def _band_stats(points: LimbPoints, r: np.ndarray,
                inl: np.ndarray) -> tuple[dict[str, float], dict[str, int]]:
    rms, cnt = {}, {}
    for i, band in enumerate(points.bands):
        sel = (points.band == i) & inl
        cnt[band] = int(sel.sum())
        rms[band] = float(np.sqrt(np.mean(r[sel] ** 2))) if sel.any() else float("nan")
    return rms, cnt


def _check_coverage(points: LimbPoints, meta: ProductMeta, min_points: int, *, spin: bool = True) -> None:
    """Refuse limb points too few or too short for a fit; the spin solve (``spin``) also needs
    them spread across the image (a CK refinement holds the attitude, the limb moves it)."""
    if len(points) < min_points:
        raise PointingQualityError(
            f"{meta.product_id}: only {len(points)} limb points (need {min_points})",
            hint="the limb is barely visible; use a CK or another image of the sequence")
    frames = np.unique(points.frame)
    if frames.size < 2:
        raise PointingQualityError(
            f"{meta.product_id}: limb in a single frame only ({frames.size}), the spin cannot be solved",
            hint="use a CK or another image")
    x_span = float(np.ptp(points.x_px)) * meta.sampling_factor
    if spin and (x_span < 100 or frames.size < 3 and x_span < 300):
        raise PointingQualityError(
            f"{meta.product_id}: limb points span only {x_span:.0f} px across {frames.size} frames, "
            "too little to constrain the spin axis", hint="use a CK or another image")


def _axis_sigma_deg(cov_radec: np.ndarray, dec_rad: float) -> float:
    """1-sigma of the axis direction along its worst direction (deg) from the (ra, dec) covariance."""
    s = np.diag([math.cos(dec_rad), 1.0])
    c = s @ cov_radec @ s
    return math.degrees(math.sqrt(max(float(np.max(np.linalg.eigvalsh(c))), 0.0)))


#: Bounds of the fitted limb altitude above the PCK ellipsoid (km).
LIMB_ALT_BOUNDS_KM = (-200.0, 800.0)
#: A spin solution is "good" only when several images share its axis and their limbs alone
#: pin it to better than this (deg, formal 1-sigma). One image's limb never does: its
#: formal 1-sigma (0.05-0.1 deg on PJ44's RGB images) understates the error from small
#: systematic limb errors. Measured: alone, 44C00029 and 44C00032 came out 4.5 and 6.2
#: deg from their pass's joint axis (30 and 54 px median on the image), simulated single
#: images 0.2-0.85 deg from the truth (1.5-3.5 px); jointly, the pass's axis has a formal
#: 1-sigma of 0.0026 deg, and the simulated pass 0.006 deg from the truth.
GOOD_AXIS_SIGMA_DEG = 0.03
#: Bound of the fitted camera twist about the boresight relative to the frames kernel (rad).
TWIST_BOUND_RAD = 0.02
_AUTO = "auto"


#: Images of one pass whose mid-times lie within this span share one spin axis by default
#: (Juno does not manoeuvre during a perijove imaging pass: its spin axis is inertially fixed).
JOINT_MAX_SPAN_S = 3 * 3600.0
#: An image whose own limb pulls the shared axis away by more than this many of its own
#: framelet-clustered sigmas (see :func:`_axis_tension_sigma`) is solved alone (a
#: manoeuvre, or a limb fit gone wrong). Measured on PJ44: 44C00029 10.2, 44C00032 6.4
#: (3.9 and 5.1 deg; the shared axis aligns their maps 15 px -> 1.2 px median, so they are
#: consistent: the clustered sigma still ignores errors common to all framelets of an
#: image, e.g. its haze altitude). The sigmas shrink as the limb points get better (8.7 and
#: 6.3 with the plateau-level detector, 5.4 and 2.3 before it) while the pull in degrees
#: stays: hence 1.5x the largest. The gate does not catch a PJ43 image forced onto a PJ44
#: axis (43C00078 with 44C00029: 1.7 and 2.5 sigma, its crescent leaves the axis loose).
JOINT_AXIS_GATE_SIGMA = 15.0


@dataclass(frozen=True)
class LimbObservation:
    """One image's limb points and frame timing: all the spin solve needs of the image.

    Made by :func:`detect_limbs` (no pixels, small and picklable: detect in worker
    processes), consumed by :func:`solve_from_limbs` in one process with the kernels loaded.
    """

    meta: ProductMeta
    points: LimbPoints
    timing: FrameTiming
    #: (reason, hint) when no limb was found, for the refusal's message.
    no_limb: tuple[str, str] | None = None

    @property
    def product_id(self) -> str:
        return self.meta.product_id


def detect_limbs(image: Any, *, timing: FrameTiming | None = None) -> LimbObservation:
    """:func:`detect_limb` of ``image`` packed with its timing (LSK and IK loaded) for
    :func:`solve_from_limbs`."""
    points = detect_limb(image)
    return LimbObservation(meta=image.meta, points=points,
                           timing=timing or FrameTiming.for_product(image.meta),
                           no_limb=_no_limb_reason(image) if len(points) == 0 else None)


@dataclass(frozen=True)
class _Options:
    min_points: int = 30
    max_rms_px: float = 1.5
    max_axis_sigma_deg: float = 2.0
    seed: int = 0
    refuse_ambiguous: bool = True
    allow_prior_dependent: bool = True
    fit_limb_altitude: bool = True
    fit_camera_twist: bool = True
    per_band_limb_altitude: bool = False
    band_alignment: bool = True
    share_camera_twist: bool = False
    share_limb_altitude: bool = True
    share_spin_rate: bool = True


@dataclass
class _Case:
    """One image's limb model and geometry (no attitude parameters)."""

    obs: LimbObservation
    target: Target
    states: list[FrameState]
    model: _LimbModel
    ets: np.ndarray
    alt_bands: list[int]
    extra_idx: np.ndarray
    n_extra: int
    lo_h: float
    hi_h: float

    @property
    def meta(self) -> ProductMeta:
        return self.obs.meta

    @property
    def points(self) -> LimbPoints:
        return self.obs.points

    @property
    def t_ref(self) -> float:
        return float(self.ets[self.meta.n_frames // 2])

    @property
    def dt_s(self) -> np.ndarray:
        return self.ets - self.t_ref

    def alts(self, x: np.ndarray) -> np.ndarray:
        """Limb altitude per band: x[5] for the first band with points, x[6:] relative to it."""
        v = np.full(len(self.points.bands), float(x[5]))
        v[self.extra_idx] += x[6:6 + self.n_extra]
        return v


def _make_case(obs: LimbObservation, target: Target | None, opts: _Options, *, ck: Attitude | None = None,
               image: Any = None) -> _Case:
    meta, points = obs.meta, obs.points
    target = target or Target.from_name(meta.target, path=meta.metadata_path or None)
    if len(points) == 0 and ck is None:
        why, hint = obs.no_limb or (_no_limb_reason(image) if image is not None
                                    else ("no limb points", "a CK is needed for this image"))
        raise NoLimbError(f"{meta.product_id}: no limb of {target.name} against sky in any framelet ({why})",
                          hint=hint)
    ets = obs.timing.frame_et(np.arange(meta.n_frames))
    states = [frame_state(target, float(et)) for et in ets]
    alt_bands = [i for i in range(len(points.bands)) if np.any(points.band == i)]
    n_extra = len(alt_bands) - 1 if opts.fit_limb_altitude and opts.per_band_limb_altitude else 0
    lo_h, hi_h = LIMB_ALT_BOUNDS_KM if opts.fit_limb_altitude else (-1e-6, 1e-6)
    return _Case(obs=obs, target=target, states=states, model=_limb_model(points, meta, states, target),
                 ets=ets, alt_bands=alt_bands, extra_idx=np.array(alt_bands[1:1 + n_extra], dtype=np.intp),
                 n_extra=n_extra, lo_h=lo_h, hi_h=hi_h)


@dataclass
class _Fitted:
    """One image's fitted parameters (local vector ``x``) before the covariance and checks."""

    case: _Case
    x: np.ndarray
    inl: np.ndarray
    rotations: Any          # local x -> per-frame J2000 -> camera rotations (n_frames, 3, 3)
    make_attitude: Any      # local x -> Attitude
    timing: FrameTiming
    steps: np.ndarray
    held: np.ndarray
    method: str
    fixed: tuple[str, ...]
    notes: list[str]
    t_start: float
    camera_twist: float = 0.0
    attitude: Any = None
    model: _LimbModel | None = None
    alignment: Mapping[str, Any] = field(default_factory=dict)
    jac: np.ndarray | None = None
    r: np.ndarray | None = None
    rms: float = float("nan")
    ambiguous: list[tuple[float, float]] = field(default_factory=list)  # (sep deg, cost ratio)
    gidx: np.ndarray | None = None  # local -> joint vector index (spin groups)

    def residuals(self, x: np.ndarray, model: _LimbModel | None = None) -> np.ndarray:
        return (model or self.model or self.case.model).residuals_px(self.rotations(x), self.case.alts(x))


def _align_and_jacobian(fit: _Fitted, image: Any, opts: _Options) -> None:
    """Band alignment from the texture (``image`` given), then the residuals and the limb
    Jacobian (rows scaled by the RMS) of the fitted image."""
    c = fit.case
    fit.attitude = fit.make_attitude(fit.x)
    fit.model = c.model
    if opts.band_alignment and image is not None and c.meta.n_filters > 1 and len(c.points):
        _, counts = _band_stats(c.points, fit.residuals(fit.x), fit.inl)
        found = _align_bands(image, fit.attitude, fit.timing, weights=counts, target=c.target)
        fit.alignment = found.to_dict()
        if any(n >= 3 for n in found.n_windows_by_pair.values()):
            boresight = _boresight_pairs(found.boresight_rad_by_band)
            fit.attitude = replace(fit.attitude, band_boresight_rad=boresight)
            fit.model = _limb_model(c.points, c.meta, c.states, c.target, boresight)
        else:
            fit.notes.append("band alignment: too few textured windows; the IK's band boresights kept")
    fit.r = fit.residuals(fit.x)
    n_in = int(fit.inl.sum())
    fit.rms = float(np.sqrt(np.mean(fit.r[fit.inl] ** 2))) if n_in else float("nan")
    jac = _numeric_jacobian(lambda p: fit.residuals(p)[fit.inl], fit.x, fit.steps) / max(fit.rms, 1e-3)
    jac[:, fit.held] = 0.0  # parameters held at a value are not uncertain
    fit.jac = jac if opts.fit_limb_altitude else jac[:, :5]


def _solution(fit: _Fitted, cov: np.ndarray, axis_sigmas: tuple[float, float], prior: AxisPrior | None,
              opts: _Options, joint: Mapping[str, Any]) -> PointingSolution:
    """The checks and the record of one fitted image; ``cov``: its local covariance,
    ``axis_sigmas``: (posterior, limb-only) 1-sigma of the (possibly shared) spin axis."""
    c, x, inl, r = fit.case, fit.x, fit.inl, fit.r
    assert r is not None
    meta, points = c.meta, c.points
    notes = list(fit.notes)
    n, n_in = len(points), int(inl.sum())
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    rms_band, cnt_band = _band_stats(points, r, inl)
    alts = c.alts(x)
    alt_by_band = {points.bands[i]: float(alts[i]) for i in c.alt_bands}
    limb_alt = float(np.average([alt_by_band[points.bands[i]] for i in c.alt_bands],
                                weights=[max(cnt_band[points.bands[i]], 1) for i in c.alt_bands]))
    axis_info: dict[str, Any] = {}
    sigma: dict[str, float]
    axis_sigma, axis_sigma_limb = axis_sigmas if fit.method == "spin" else (0.0, 0.0)
    if fit.method == "spin":
        axis = _radec_to_vec(x[0], x[1])
        sigma = {"spin_axis_deg": axis_sigma, "spin_axis_limb_only_deg": axis_sigma_limb,
                 "phase0_deg": math.degrees(sd[2]), "rate_deg_s": math.degrees(sd[3])}
        if opts.fit_camera_twist:
            sigma["camera_twist_mrad"] = 1e3 * float(sd[4])
        if prior is not None:
            axis_info = {"prior": prior.source, "prior_sigma_deg": prior.sigma_deg,
                         "prior_gate_deg": prior.gate_deg,
                         "axis_from_prior_deg": _angle_deg(axis, prior.centre_j2000),
                         **{f"axis_from_{k}_deg": v for k, v in prior.gate_distances_deg(axis).items()}}
            if not prior.within_gate(axis):
                raise PointingQualityError(
                    f"{meta.product_id}: solved spin axis is more than {prior.gate_deg:.0f} deg from Earth "
                    "and the orbit normal", hint="the limb fit is wrong (mirror solution?); use a CK")
    else:
        names = ("start_offset_s", "interframe_correction_s", "delta_spin_rad", "delta_across_rad",
                 "delta_line_of_sight_rad")
        sigma = {k: float(v) for k, v, h in zip(names, sd, fit.held, strict=False) if not h}
    if opts.fit_limb_altitude:
        sigma["limb_alt_km"] = float(sd[5])
        for j, i in enumerate(c.extra_idx):
            sigma[f"limb_alt_{points.bands[i]}_minus_{points.bands[c.alt_bands[0]]}_km"] = float(sd[6 + j])
    shared = len(joint.get("products", ())) > 1
    for sep, ratio in fit.ambiguous:
        if shared and axis_sigma_limb < sep / 4.0:
            notes.append(f"alone, another spin axis {sep:.1f} deg away would fit almost as well (cost "
                         f"ratio {ratio:.2f}); the shared axis ({axis_sigma_limb:.2f} deg limb-only "
                         "1-sigma) decides")
        else:
            notes.append(f"another spin axis {sep:.1f} deg away fits almost as well")
    # the limb alone would not pass the axis gate: the roll rests on the prior
    prior_dependent = prior is not None and axis_sigma_limb >= opts.max_axis_sigma_deg
    axis_info["prior_dependent_roll"] = bool(prior_dependent)
    elapsed = time.perf_counter() - fit.t_start
    if n_in < opts.min_points:
        raise PointingQualityError(f"{meta.product_id}: only {n_in} limb points fit the solution",
                                   hint="the limb detection found mostly outliers")
    if not fit.rms <= opts.max_rms_px:
        raise PointingQualityError(
            f"{meta.product_id}: limb residual RMS {fit.rms:.2f} px exceeds {opts.max_rms_px} px",
            hint="the limb fit failed; check the target and timing, or use a CK")
    accepted_by_prior = prior_dependent and opts.allow_prior_dependent
    if fit.method == "spin" and not axis_sigma < opts.max_axis_sigma_deg and not accepted_by_prior:
        raise PointingQualityError(
            f"{meta.product_id}: spin axis undetermined (1-sigma {axis_sigma:.2f} deg)",
            hint="the limb is nearly circular from here; use a CK")
    if opts.refuse_ambiguous and any(n.startswith("another spin axis") for n in notes):
        raise PointingQualityError(f"{meta.product_id}: ambiguous solution ({notes[-1]})",
                                   hint="use a CK, or solve it with the other images of its pass "
                                        "(solve_pointing_joint)")
    quality = "good" if fit.rms < 0.5 and axis_sigma < 0.2 else "fair"
    axis_pinned = shared and axis_sigma_limb < GOOD_AXIS_SIGMA_DEG
    if fit.method == "spin" and not prior_dependent and not axis_pinned:
        quality = "fair"
        if shared:
            notes.append(f"the shared spin axis is weakly constrained by the images' limbs (limb-only "
                         f"1-sigma {axis_sigma_limb:.3f} deg, 'good' needs < {GOOD_AXIS_SIGMA_DEG} deg)")
        else:
            notes.append("spin axis from one image's limb: its roll about the line of sight rests on the "
                         "limb's shape, which small systematic limb errors bias by a degree or more (formal "
                         f"1-sigma {axis_sigma:.3f} deg understates it); features far from the limb may be "
                         "pixels off. Solve the pass's images together (junoproc build, "
                         "solve_pointing_joint) or use a CK")
    if prior_dependent:
        quality = "prior-dependent roll"
        notes.append(f"the limb leaves the spin axis free (limb-only 1-sigma {axis_sigma_limb:.1f} deg): "
                     f"it rests on the {getattr(prior, 'source', '')} prior (sigma "
                     f"{getattr(prior, 'sigma_deg', 0.0):.0f} deg), posterior 1-sigma {axis_sigma:.1f} deg; "
                     "features far from the limb may be rotated about the sub-spacecraft point")
    if opts.fit_limb_altitude and min(abs(limb_alt - c.lo_h), abs(limb_alt - c.hi_h)) < 1.0:
        notes.append(f"limb altitude at its bound ({limb_alt:.0f} km): something else is wrong")
    if len([b for b, k in cnt_band.items() if k]) == 1 and meta.n_filters > 1:
        notes.append("limb found in one band only")
    return PointingSolution(
        product_id=meta.product_id, method=fit.method, attitude=fit.attitude, timing=fit.timing,
        quality=quality, residuals_px_by_band=rms_band, n_points_by_band=cnt_band,
        max_abs_residual_px=float(np.max(np.abs(r[inl]))) if n_in else float("nan"),
        n_rejected=int(n - n_in), solve_time_s=elapsed, fixed_parameters=fit.fixed,
        parameter_sigma=sigma, notes=tuple(notes), limb_alt_km=limb_alt, axis=axis_info,
        limb_alt_km_by_band=alt_by_band, camera_twist_rad=fit.camera_twist, band_alignment=fit.alignment,
        joint=dict(joint),
        limb_edge_blur_px=(float(fit.case.points.edge_blur_px)
                           if math.isfinite(fit.case.points.edge_blur_px) else None),
    )


def _rephase(x: np.ndarray, axis_radec: np.ndarray, target_dir: np.ndarray) -> np.ndarray:
    """Spin parameters ``x`` moved to another axis, the target keeping its azimuth in the spinning frame."""
    def az(radec: np.ndarray) -> float:
        b = spin_basis(_radec_to_vec(radec[0], radec[1])) @ target_dir
        return math.atan2(b[1], b[0])

    out = np.array(x, dtype=np.float64)
    out[2] += az(axis_radec) - az(x[:2])
    out[:2] = axis_radec
    return out


def _fit_spin_group(cases: Sequence[_Case], prior: AxisPrior | None, opts: _Options,
                    t_start: float) -> list[_Fitted]:
    """Robust least squares of the limbs of ``cases`` with ONE spin axis (ra, dec) and, per
    image, phase0, rate, camera twist and limb altitude(s). One case: the single-image solve."""
    rng = np.random.default_rng(opts.seed)
    x_scale = np.array([1e-3, 1e-3, 1e-3, 1e-5, 1e-3, 10.0])
    lo_tw, hi_tw = (-TWIST_BOUND_RAD, TWIST_BOUND_RAD) if opts.fit_camera_twist else (-1e-9, 1e-9)

    def prior_res(ax: np.ndarray) -> np.ndarray:
        return prior.residuals(_radec_to_vec(ax[0], ax[1])) if prior is not None else np.zeros(0)

    geo = []  # per case: sc_to_cam, target direction at mid-image
    refined_by_case: list[list[tuple[float, np.ndarray]]] = []
    subs = []
    for c in cases:
        sc_to_cam = rot_sc_to_cam(c.t_ref)
        st = c.states[c.meta.n_frames // 2]
        target_dir = st.target_pos_j2000_km / np.linalg.norm(st.target_pos_j2000_km) + st.beta_j2000
        geo.append((sc_to_cam, target_dir))
        dt_s = c.dt_s
        starts = _spin_starts(c.model, dt_s, sc_to_cam, target_dir, prior, rng)
        n = len(c.points)
        sub_model = c.model.subset(rng.choice(n, size=min(n, 1500), replace=False))
        subs.append(sub_model)
        bounds = ([-np.inf] * 4 + [lo_tw, c.lo_h], [np.inf] * 4 + [hi_tw, c.hi_h])

        def refine(x0: np.ndarray, sm: _LimbModel = sub_model, dt: np.ndarray = dt_s,
                   sc: np.ndarray = sc_to_cam, bounds: Any = bounds) -> tuple[float, np.ndarray] | None:
            def jac(x: np.ndarray) -> np.ndarray:
                limb = _spin_jacobian(sm, x, dt, sc, np.full(len(sm.radii_km), x[5]), np.zeros(0, np.intp))[1]
                return np.vstack([limb, _axis_prior_jacobian(prior_res, x)])

            res = optimize.least_squares(
                lambda x: np.r_[sm.residuals_px(_spin_rotations(x, dt, sc), x[5]), prior_res(x)],
                np.r_[x0, 0.0, 0.0], jac=jac, loss="soft_l1", f_scale=2.0, x_scale=x_scale, bounds=bounds,
                max_nfev=60)
            if prior is not None and not prior.within_gate(_radec_to_vec(res.x[0], res.x[1])):
                return None
            r_sub = sm.residuals_px(_spin_rotations(res.x, dt, sc), res.x[5])
            return _robust_cost(r_sub, 1.0) + 0.5 * float(np.sum(prior_res(res.x) ** 2)), res.x

        # the starts shared among the cores
        refined = [cr for cr in fork_map(refine, starts) if cr is not None]
        if not refined:
            raise PointingQualityError(
                f"{c.meta.product_id}: no spin axis within {getattr(prior, 'gate_deg', 0.0):.0f} deg of "
                "Earth or the orbit normal fits the limb", hint="check the target and kernels, or use a CK")
        refined.sort(key=lambda cr: cr[0])
        refined_by_case.append(refined)
    if len(cases) == 1:
        x_starts = [refined_by_case[0][0][1]]
    else:  # the shared axis: each image's best axis tried, the others' phase etc. refitted to it
        best: tuple[float, list[np.ndarray]] | None = None
        for k in range(len(cases)):
            axis_radec = refined_by_case[k][0][1][:2]
            total = 0.5 * float(np.sum(prior_res(axis_radec) ** 2))
            xs = []
            for c, refined, sm, (sc_to_cam, target_dir) in zip(cases, refined_by_case, subs, geo,
                                                                strict=True):
                x0 = _rephase(refined[0][1], axis_radec, target_dir)
                res = optimize.least_squares(
                    lambda p, sm=sm, dt=c.dt_s, sc=sc_to_cam, a=axis_radec: sm.residuals_px(
                        _spin_rotations(np.r_[a, p], dt, sc), p[3]),
                    x0[2:], loss="soft_l1", f_scale=2.0, x_scale=x_scale[2:],
                    bounds=([-np.inf, -np.inf, lo_tw, c.lo_h], [np.inf, np.inf, hi_tw, c.hi_h]), max_nfev=60)
                xs.append(np.r_[axis_radec, res.x])
                r_sub = sm.residuals_px(_spin_rotations(xs[-1], c.dt_s, sc_to_cam), res.x[3])
                total += _robust_cost(r_sub, 1.0)
            if best is None or total < best[0]:
                best = (total, xs)
        assert best is not None
        x_starts = best[1]
    # the joint vector: one entry per distinct key of the images' local parameters (ra, dec,
    # phase0, rate, twist, altitude, extra altitudes); a key shared by several images is one
    # parameter of the pass: the spin axis always; the spin rate of images with the same
    # interframe delay (the rate absorbs the interframe correction) and filter set (44M00040,
    # 102 ms exposures, fits 12.010 deg/s alone where its RGB pass fits 11.913-11.917:
    # shared with them, it pulls 44C00029 off the axis at 10.3 sigma); the camera twist (a
    # mounting angle) when asked; the limb altitude(s) of images of the same filter set
    def key(k: int, c: _Case, j: int) -> tuple[Any, ...]:
        if j < 2:
            return ("axis", j)
        if j == 3 and opts.share_spin_rate:
            return ("rate", c.obs.timing.interframe_delay_s, tuple(c.meta.filters))
        if j == 4 and opts.share_camera_twist and opts.fit_camera_twist:
            return ("twist",)
        if j >= 5 and opts.share_limb_altitude and opts.fit_limb_altitude:
            return ("alt", tuple(c.meta.filters), tuple(c.extra_idx), j)
        return ("own", k, j)

    keys: dict[tuple[Any, ...], int] = {}
    idx = []
    for k, c in enumerate(cases):
        idx.append(np.array([keys.setdefault(key(k, c, j), len(keys)) for j in range(6 + c.n_extra)],
                            np.intp))
    off = len(keys)
    xg = np.zeros(off)
    count = np.zeros(off)
    lo_g, hi_g, scale_g = np.full(off, -np.inf), np.full(off, np.inf), np.zeros(off)
    for c, ix, xs in zip(cases, idx, x_starts, strict=True):
        np.add.at(xg, ix, np.r_[xs[:6], np.zeros(c.n_extra)])  # shared: the images' mean start
        np.add.at(count, ix, 1.0)
        scale_g[ix] = np.r_[x_scale, np.full(c.n_extra, 10.0)]
        lo_g[ix] = np.r_[[-np.inf] * 4, lo_tw, c.lo_h, np.full(c.n_extra, -300.0)]
        hi_g[ix] = np.r_[[np.inf] * 4, hi_tw, c.hi_h, np.full(c.n_extra, 300.0)]
    xg /= count
    xg[:2] = x_starts[0][:2]  # the same axis in every start (not a mean of angles)
    sizes = [len(c.points) for c in cases]
    rows = np.repeat(np.arange(len(cases)), sizes)
    sparsity = np.zeros((sum(sizes), off), bool)
    for k, ix in enumerate(idx):
        sparsity[np.ix_(rows == k, ix)] = True

    def fun(xv: np.ndarray) -> np.ndarray:
        return np.concatenate([c.model.residuals_px(_spin_rotations(xv[ix], c.dt_s, g[0]), c.alts(xv[ix]))
                               for c, ix, g in zip(cases, idx, geo, strict=True)])

    def jac(xv: np.ndarray) -> np.ndarray:
        out = np.zeros((sum(sizes), off))
        for k, (c, ix, g) in enumerate(zip(cases, idx, geo, strict=True)):
            x = xv[ix]
            out[np.ix_(rows == k, ix)] = _spin_jacobian(c.model, x, c.dt_s, g[0], c.alts(x), c.extra_idx)[1]
        return out

    xg, inl = _fit_robust(fun, xg, sum(sizes), jac=jac,
                          extra=(lambda xv: prior_res(xv[:2])) if prior is not None else None,
                          extra_jac=lambda xv: _axis_prior_jacobian(prior_res, xv),
                          x_scale=scale_g, bounds=(lo_g, hi_g))
    axis = _radec_to_vec(xg[0], xg[1])
    fits = []
    for k, (c, ix, (sc_to_cam, _)) in enumerate(zip(cases, idx, geo, strict=True)):
        x = xg[ix]
        refined = refined_by_case[k]
        # alone, the image's limb fits another axis as well (from its own best, or from the
        # final axis when alone): reported once, the nearest-cost one
        own_axis = axis if len(cases) == 1 else _radec_to_vec(refined[0][1][0], refined[0][1][1])
        ambiguous = []
        for cost, xr in refined[1:]:
            sep = _angle_deg(own_axis, _radec_to_vec(xr[0], xr[1]))
            if sep > 2.0 and cost < 1.1 * refined[0][0]:
                ambiguous.append((sep, cost / refined[0][0]))
        ambiguous = ambiguous[:1] if len(cases) > 1 else ambiguous
        held = np.zeros(6 + c.n_extra, bool)
        held[4] = not opts.fit_camera_twist
        fits.append(_Fitted(
            case=c, x=x, inl=inl[rows == k], t_start=t_start,
            rotations=lambda p, dt=c.dt_s, sc=sc_to_cam: _spin_rotations(p, dt, sc),
            make_attitude=lambda p, t_ref=c.t_ref, sc=sc_to_cam: SpinAttitude.from_params(
                _radec_to_vec(p[0], p[1]), p[2], p[3], t_ref, _twisted(sc, p[4])),
            timing=c.obs.timing, steps=np.r_[1e-5, 1e-5, 1e-5, 1e-7, 1e-5, np.ones(1 + c.n_extra)],
            held=held, method="spin",
            fixed=("start_offset_s (absorbed by phase0)", "interframe_correction_s (absorbed by rate)"),
            notes=[] if prior is not None else [
                "no spin-axis prior (no Earth or orbit normal in the kernels): the limb alone"],
            camera_twist=float(x[4]), ambiguous=ambiguous, gidx=ix))
    return fits


def _group_covariance(fits: Sequence[_Fitted], prior: AxisPrior | None
                      ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(posterior covariance, limb-only information, per-image joint indices) of the joint
    vector ((ra, dec) first) from the images' Jacobians."""
    idx = []
    for f in fits:
        assert f.jac is not None and f.gidx is not None
        idx.append(f.gidx[:f.jac.shape[1]])
    off = int(max(int(ix.max()) for ix in idx)) + 1
    info_limb = np.zeros((off, off))
    for f, ix in zip(fits, idx, strict=True):
        assert f.jac is not None
        info_limb[np.ix_(ix, ix)] += f.jac.T @ f.jac
    info = info_limb.copy()
    if prior is not None:
        x0 = fits[0].x
        jp = _numeric_jacobian(lambda p: prior.residuals(_radec_to_vec(p[0], p[1])), x0[:2],
                               fits[0].steps[:2])
        info[:2, :2] += jp.T @ jp
    return np.linalg.pinv(info), info_limb, idx


def _axis_tension_sigma(fit: _Fitted, prior: AxisPrior | None) -> tuple[float, float, float]:
    """How far this image alone would pull the shared axis, from one Gauss-Newton step from
    the joint solution on this image's limb and the axis prior: (sigmas, deg, formal sigmas).

    The sigmas are framelet-clustered (sandwich covariance, clusters = one band of one
    frame, residuals at the image's own linearised optimum): the limb residuals along a
    framelet share its haze altitude, terminator and timing, so they are not independent,
    and the formal covariance that treats them so is far too small (on PJ44 the images'
    own axes are 2 deg apart at 0.05-0.1 deg formal sigma). ``formal``: the
    independent-points figure, for the record.
    """
    assert fit.jac is not None and fit.r is not None
    jac = fit.jac
    r = fit.r[fit.inl] / max(fit.rms, 1e-3)
    jp = np.zeros((0, jac.shape[1]))
    rp = np.zeros(0)
    if prior is not None:  # a weakly constrained image rests on it (as when solved alone)
        jp = np.zeros((2, jac.shape[1]))
        jp[:, :2] = _numeric_jacobian(lambda p: prior.residuals(_radec_to_vec(p[0], p[1])), fit.x[:2],
                                      fit.steps[:2])
        rp = prior.residuals(_radec_to_vec(fit.x[0], fit.x[1]))
    h_inv = np.linalg.pinv(jac.T @ jac + jp.T @ jp)
    step = -h_inv @ (jac.T @ r + jp.T @ rp)
    r_own = r + jac @ step
    pts = fit.case.points
    cluster = (pts.frame.astype(np.int64) * len(pts.bands) + pts.band)[fit.inl]
    _, inverse = np.unique(cluster, return_inverse=True)
    scores = np.zeros((int(inverse.max()) + 1 if inverse.size else 0, jac.shape[1]))
    np.add.at(scores, inverse, jac * r_own[:, None])
    if prior is not None:  # the prior's rows: one more cluster
        scores = np.vstack([scores, jp.T @ (rp + jp @ step)])
    cov_clustered = (h_inv @ (scores.T @ scores) @ h_inv)[:2, :2]
    d = step[:2]
    chi2 = float(d @ np.linalg.pinv(cov_clustered) @ d)
    chi2_formal = float(d @ np.linalg.pinv(h_inv[:2, :2]) @ d)
    deg = math.degrees(math.hypot(d[0] * math.cos(fit.x[1]), d[1]))
    return math.sqrt(max(chi2, 0.0)), deg, math.sqrt(max(chi2_formal, 0.0))


def _solve_spin_group(cases: Sequence[_Case], images: Sequence[Any], prior: AxisPrior | None, opts: _Options,
                      t_start: float, gate_sigma: float, dropped: Mapping[str, str]
                      ) -> list[PointingSolution | Exception]:
    fits = _fit_spin_group(cases, prior, opts, t_start)
    for f, image in zip(fits, images, strict=True):
        _align_and_jacobian(f, image, opts)
    tension = [_axis_tension_sigma(f, prior) if len(fits) > 1 else (0.0, 0.0, 0.0) for f in fits]
    worst = int(np.argmax([t[0] for t in tension]))
    if len(fits) > 1 and tension[worst][0] > gate_sigma:
        pid = cases[worst].meta.product_id
        why = (f"its limb pulls the shared spin axis {tension[worst][1]:.2f} deg "
               f"({tension[worst][0]:.1f} sigma > {gate_sigma:g}): solved alone")
        rest = [k for k in range(len(cases)) if k != worst]
        out_rest = _solve_spin_group([cases[k] for k in rest], [images[k] for k in rest], prior, opts,
                                     t_start, gate_sigma, {**dropped, pid: why})
        out_one = _solve_spin_group([cases[worst]], [images[worst]], prior, opts, t_start, gate_sigma,
                                    {**dropped, **{cases[k].meta.product_id: "" for k in rest}, pid: why})
        out: list[PointingSolution | Exception] = [out_one[0]] * len(cases)
        for k, s in zip(rest, out_rest, strict=True):
            out[k] = s
        return out
    cov, info_limb, idx = _group_covariance(fits, prior)
    cov_limb = np.linalg.pinv(info_limb)
    axis_sigmas = (_axis_sigma_deg(cov[:2, :2], fits[0].x[1]),
                   _axis_sigma_deg(cov_limb[:2, :2], fits[0].x[1]))
    products = [c.meta.product_id for c in cases]
    joint_base: dict[str, Any] = {
        "products": products, "spin_axis_shared": len(products) > 1,
        "span_s": float(max(c.t_ref for c in cases) - min(c.t_ref for c in cases)),
        "axis_gate_sigma": gate_sigma,
        "separate": {k: v for k, v in dropped.items() if v and k not in products}}
    out = []
    for f, ix, tn in zip(fits, idx, tension, strict=True):
        own = {"axis_tension_sigma": tn[0], "axis_tension_deg": tn[1], "axis_tension_formal_sigma": tn[2]}
        if f.case.meta.product_id in dropped:
            own["solved_alone_because"] = dropped[f.case.meta.product_id]
        try:
            out.append(_solution(f, cov[np.ix_(ix, ix)], axis_sigmas, prior, opts, {**joint_base, **own}))
        except PointingQualityError as err:
            out.append(err)
    return out


def _share_edge_blur(observations: Sequence[LimbObservation]) -> list[LimbObservation]:
    """The images of one filter set with their limb points refitted (to first order) under
    one blur, their blurs' mean weighted by points: the same camera and haze minutes apart.
    Each image's own blur puts its points on its own edge: 44C00029 and 44C00032 measure
    0.43 and 0.48 px, and their maps' north-south misalignment is +0.26 px mean with their
    own blurs, +0.10 px with one (measured before the blur was fitted two pixels inside:
    now 0.48 and 0.50 px, +0.13 px with one)."""
    out = list(observations)
    by_set: dict[tuple[str, ...], list[int]] = {}
    for k, obs in enumerate(out):
        pts = obs.points
        if len(pts) and pts.shift_per_blur is not None and math.isfinite(pts.edge_blur_px):
            by_set.setdefault(tuple(obs.meta.filters), []).append(k)
    for members in by_set.values():
        if len(members) < 2:
            continue
        weights = np.array([len(out[k].points) for k in members], np.float64)
        blur = float(np.average([out[k].points.edge_blur_px for k in members], weights=weights))
        for k in members:
            out[k] = replace(out[k], points=out[k].points.with_edge_blur(blur))
    return out


def solve_from_limbs(
    observations: Sequence[LimbObservation], *, images: Sequence[Any] | None = None,
    target: Target | None = None, max_span_s: float = JOINT_MAX_SPAN_S,
    axis_gate_sigma: float = JOINT_AXIS_GATE_SIGMA, axis_prior: AxisPrior | str | None = _AUTO,
    on_error: str = "raise", min_points: int = 30, max_rms_px: float = 1.5, max_axis_sigma_deg: float = 2.0,
    seed: int = 0, refuse_ambiguous: bool = True, allow_prior_dependent: bool = True,
    fit_limb_altitude: bool = True, fit_camera_twist: bool = True, per_band_limb_altitude: bool = False,
    band_alignment: bool = True, share_camera_twist: bool = False, share_spin_rate: bool = True,
    share_limb_altitude: bool = True,
) -> list[PointingSolution | Exception]:
    """Spin attitudes (no CK) of several images, one spin axis shared by the images of a pass.

    Juno is spin-stabilised and its spin axis is inertially fixed during an imaging pass,
    while the line of sight to the target turns from image to image: one shared axis fixes
    each image's rotation about its line of sight, which one image's limb barely fixes.
    Images are grouped by mid-time (a group spans at most ``max_span_s``); in a group the
    least squares has one (ra, dec) and per image phase0 and camera twist; the spin rate is
    one per interframe delay and filter set (``share_spin_rate``: Juno's rate is constant
    over a pass, and the fitted rate also absorbs the interframe correction)
    and the limb altitude one per filter set (``share_limb_altitude``: the same haze layer
    minutes apart). With its own rate and altitude, each image's phase trades against
    them: on 44C00029/44C00032 the fitted rates were 11.9128 and 11.9169 deg/s (5 formal
    sigma apart), the altitudes 238 and 291 km, and the maps 0.90 px apart in latitude in
    every window; both shared, 0.16 px (the rate alone 0.65, the altitude alone 0.30).
    An image whose own limb would pull the shared axis by more than
    ``axis_gate_sigma`` of its limb-only sigmas is solved alone (and says so). Each
    solution's ``joint`` (and JSON) lists the products that shared its axis.

    ``observations`` come from :func:`detect_limbs` (e.g. in worker processes); kernels
    (LSK, PCK, FK, IK, SPK) must be loaded here. ``images`` (same order; optional): the
    images themselves, for the texture band alignment (see :func:`solve_pointing`); without
    them no band alignment is done (``align_bands`` can add it later per image).
    ``on_error``: "raise" the first image's error, or "return" it in that image's slot.
    ``share_camera_twist``: the camera's twist about its boresight (a mounting angle, fitted
    per image) is one parameter of the group too; off by default: on 44C00029/44C00032 the
    map misalignment is 1.58 px median with it, 1.21 px without.
    The other options are :func:`solve_pointing`'s.
    """
    if on_error not in ("raise", "return"):
        raise ValueError("on_error must be 'raise' or 'return'")
    t_start = time.perf_counter()
    opts = _Options(min_points=min_points, max_rms_px=max_rms_px, max_axis_sigma_deg=max_axis_sigma_deg,
                    seed=seed, refuse_ambiguous=refuse_ambiguous, allow_prior_dependent=allow_prior_dependent,
                    fit_limb_altitude=fit_limb_altitude, fit_camera_twist=fit_camera_twist,
                    per_band_limb_altitude=per_band_limb_altitude, band_alignment=band_alignment,
                    share_camera_twist=share_camera_twist, share_limb_altitude=share_limb_altitude,
                    share_spin_rate=share_spin_rate)
    imgs = list(images) if images is not None else [None] * len(observations)
    if len(imgs) != len(observations):
        raise ValueError("images must match observations one to one")
    observations = _share_edge_blur(observations)
    out: list[PointingSolution | Exception | None] = [None] * len(observations)
    cases: list[tuple[int, _Case]] = []
    for k, (obs, image) in enumerate(zip(observations, imgs, strict=True)):
        try:
            case = _make_case(obs, target, opts, image=image)
            _check_coverage(obs.points, obs.meta, min_points)
            cases.append((k, case))
        except PointingError as err:
            out[k] = err
    cases.sort(key=lambda kc: kc[1].t_ref)
    groups: list[list[tuple[int, _Case]]] = []
    for kc in cases:
        if groups and kc[1].t_ref - groups[-1][0][1].t_ref <= max_span_s:
            groups[-1].append(kc)
        else:
            groups.append([kc])
    for group in groups:
        t_mid = float(np.mean([c.t_ref for _, c in group]))
        prior = juno_axis_prior(t_mid) if isinstance(axis_prior, str) else axis_prior
        try:
            sols = _solve_spin_group([c for _, c in group], [imgs[k] for k, _ in group], prior, opts, t_start,
                                     axis_gate_sigma, {})
        except PointingError as err:
            if len(group) > 1:  # the group failed as a whole: each image alone
                sols = []
                for k, c in group:
                    try:
                        sols += _solve_spin_group([c], [imgs[k]], prior, opts, t_start, axis_gate_sigma, {})
                    except PointingError as err1:
                        sols.append(err1)
            else:
                sols = [err]
        for (k, _), s in zip(group, sols, strict=True):
            out[k] = s
    n_img = max(len(observations), 1)
    result: list[PointingSolution | Exception] = []
    for s in out:
        assert s is not None
        if isinstance(s, Exception) and on_error == "raise":
            raise s
        if isinstance(s, PointingSolution):  # the work of the call, split evenly
            s = replace(s, solve_time_s=s.solve_time_s / n_img)
        result.append(s)
    return result


def solve_pointing_joint(images: Sequence[Any], *, ck: Sequence[Attitude | None] | None = None,
                         **options: Any) -> list[PointingSolution | Exception]:
    """:func:`solve_pointing` of several images of a pass with one shared spin axis.

    Images with a CK (``ck``: one per image, or None) are refined against it alone; the
    others are solved together by :func:`solve_from_limbs` (detect limbs here, in this
    process; for workers use :func:`detect_limbs` + :func:`solve_from_limbs`). ``options``:
    :func:`solve_from_limbs`'s (``on_error``, ``max_span_s``, ``axis_gate_sigma``, ...).
    """
    cks = list(ck) if ck is not None else [None] * len(images)
    out: list[PointingSolution | Exception | None] = [None] * len(images)
    spin = [k for k, c in enumerate(cks) if c is None]
    ck_keys = ("target", "min_points", "max_rms_px", "seed", "fit_limb_altitude", "per_band_limb_altitude",
               "band_alignment")
    for k, c in enumerate(cks):
        if c is not None:
            try:
                out[k] = solve_pointing(images[k], ck=c, **{a: v for a, v in options.items() if a in ck_keys})
            except PointingError as err:
                if options.get("on_error", "raise") == "raise":
                    raise
                out[k] = err
    if spin:
        sols = solve_from_limbs([detect_limbs(images[k]) for k in spin], images=[images[k] for k in spin],
                                **options)
        for k, s in zip(spin, sols, strict=True):
            out[k] = s
    return [s for s in out if s is not None]


def solve_pointing_with_pass(image: Any, others: Sequence[Any], **options: Any) -> PointingSolution:
    """:func:`solve_pointing` of ``image`` (no CK) with the spin axis shared by ``others``,
    images of its pass (e.g. :func:`junoproc.products.pass_siblings`): the one solution of
    ``image``, "good" only from a shared axis (:data:`GOOD_AXIS_SIGMA_DEG`). A neighbour that
    fails alone is left out of the group, not fatal. ``options``: :func:`solve_from_limbs`'s."""
    if not others:
        return solve_pointing(image, **options)
    observations = [detect_limbs(image)]
    images = [image]
    for other in others:
        try:
            observations.append(detect_limbs(other))
            images.append(other)
        except PointingError:
            continue
    sol = solve_from_limbs(observations, images=images, **{**options, "on_error": "return"})[0]
    if isinstance(sol, Exception):
        raise sol
    return sol


def solve_pointing(
    image: Any, *, ck: Attitude | None = None, target: Target | None = None,
    points: LimbPoints | None = None, timing: FrameTiming | None = None,
    min_points: int = 30, max_rms_px: float = 1.5, max_axis_sigma_deg: float = 2.0, seed: int = 0,
    refuse_ambiguous: bool = True, axis_prior: AxisPrior | str | None = _AUTO,
    allow_prior_dependent: bool = True, fit_limb_altitude: bool = True, fit_camera_twist: bool = True,
    fit_interframe_correction: bool = False, per_band_limb_altitude: bool = False,
    band_alignment: bool = True, hold_ck_roll: bool = True,
) -> PointingSolution:
    """Solve the spin attitude from the limb (no CK) or refine a CK's timing and rotation.

    Kernels (LSK, PCK, FK, IK, SPK; SCLK and CK for ``ck``) must be loaded. ``image`` is
    a RawImage or a calibrated image. ``axis_prior``: "auto" (Earth / orbit normal from
    the kernels, :func:`juno_axis_prior`), an :class:`AxisPrior`, or None (no prior, no
    gate: the limb alone). Raises :class:`NoLimbError` when no limb is visible and there
    is no CK to fall back to, :class:`PointingQualityError` when the solution cannot be
    trusted (too few points, a single frame, too small a span, RMS > ``max_rms_px``, an
    axis outside the prior's gate, an axis the limb leaves free beyond
    ``max_axis_sigma_deg`` without a prior or with ``allow_prior_dependent=False``).
    Without a CK this is :func:`solve_from_limbs` of one image; several images of a pass
    are better solved together (:func:`solve_pointing_joint`: one spin axis for all).

    ``band_alignment``: after the limb fit, measure the bands' relative offsets from the
    texture (:func:`align_bands`) and carry them as per-band boresight corrections in the
    attitude (``band_boresight_rad``; the limb residuals are then those of the corrected
    cameras). Off, every band uses the IK's camera model as is.
    """
    t_start = time.perf_counter()
    meta = image.meta
    if points is None:
        points = detect_limb(image)
    timing0 = timing or FrameTiming.for_product(meta)
    obs = LimbObservation(meta=meta, points=points, timing=timing0)
    if ck is None:
        sol = solve_from_limbs(
            [obs], images=[image], target=target, axis_prior=axis_prior, min_points=min_points,
            max_rms_px=max_rms_px, max_axis_sigma_deg=max_axis_sigma_deg, seed=seed,
            refuse_ambiguous=refuse_ambiguous, allow_prior_dependent=allow_prior_dependent,
            fit_limb_altitude=fit_limb_altitude, fit_camera_twist=fit_camera_twist,
            per_band_limb_altitude=per_band_limb_altitude, band_alignment=band_alignment)[0]
        assert isinstance(sol, PointingSolution)
        return sol
    opts = _Options(min_points=min_points, max_rms_px=max_rms_px, seed=seed,
                    fit_limb_altitude=fit_limb_altitude, per_band_limb_altitude=per_band_limb_altitude,
                    band_alignment=band_alignment, refuse_ambiguous=refuse_ambiguous)
    if len(points) == 0:
        return PointingSolution(
            product_id=meta.product_id, method="ck", attitude=ck, timing=timing0,
            quality="ck-fallback", residuals_px_by_band={b: float("nan") for b in meta.filters},
            n_points_by_band={b: 0 for b in meta.filters}, max_abs_residual_px=float("nan"),
            n_rejected=0, solve_time_s=time.perf_counter() - t_start,
            notes=("no limb visible: CK attitude with the IK's timing, not refined",))
    _check_coverage(points, meta, min_points, spin=False)
    case = _make_case(obs, target, opts, ck=ck, image=image)
    n_frames, n_extra, states, frame_idx = meta.n_frames, case.n_extra, case.states, np.arange(meta.n_frames)
    ets = case.ets
    # The CK fixes the spin axis, so a start offset and a rotation about that axis are
    # the same thing: the rotation's component along the spin is held at the CK's value
    # and the offset (the IK's 20 ms jitter) takes it. The small rotation is fitted in
    # the basis (spin, e1, e2) of the camera frame. The interframe correction is held at
    # the IK's value unless asked for: over a few frames the albedo biases of the limb
    # pass for a drift of the phase (8 simulated frames at 200,000 km: -85 +- 21 us
    # fitted where the truth is 0, 0.3 px at the last frame).
    # Per frame the CK's rotation and angular velocity (camera frame, from +-50 ms):
    # a time offset turns the frame by w * dt. (Evaluating the CK at et + dt instead
    # would lose dt below ~1e-7 s, the resolution of an ET near 7e8 s, and a finite-
    # difference Jacobian steps by ~1e-8.)
    rot_ck = np.stack([ck.rot_j2000_to_cam(float(e)) for e in ets])
    h_s = 0.05
    w_cam = np.stack([_rotation_vector(ck.rot_j2000_to_cam(float(e) + h_s) @ ck.rot_j2000_to_cam(
        float(e) - h_s).T) / (2 * h_s) for e in ets])
    spin_cam = np.mean(w_cam, axis=0)
    # the small rotation in the basis (spin, across, line of sight): the line of sight to
    # the target's centre at mid-image, made perpendicular to the spin
    mid_f = n_frames // 2
    los_cam = rot_ck[mid_f] @ (states[mid_f].target_pos_j2000_km
                               / np.linalg.norm(states[mid_f].target_pos_j2000_km))
    u_spin = spin_cam / np.linalg.norm(spin_cam)
    u_los = los_cam - (los_cam @ u_spin) * u_spin
    u_los /= np.linalg.norm(u_los)
    basis_delta = np.column_stack([u_spin, np.cross(u_los, u_spin), u_los])

    def rotations(x: np.ndarray) -> np.ndarray:
        dt = x[0] + frame_idx * x[1]
        return frame_rotation(basis_delta @ x[2:5]) @ _frame_rotations(w_cam * dt[:, None]) @ rot_ck

    def fun(x: np.ndarray) -> np.ndarray:
        return case.model.residuals_px(rotations(x), case.alts(x))

    rotations(np.zeros(6))  # checks the CK's coverage before fitting
    held = np.zeros(6 + n_extra, bool)
    held[1], held[2], held[4] = not fit_interframe_correction, True, hold_ck_roll
    free = ~held
    units = np.r_[1e-3, 1e-6, 1e-3, 1e-3, 1e-3, np.ones(1 + n_extra)]  # in ms, us, mrad, km

    def full(xf: np.ndarray) -> np.ndarray:
        xx = np.zeros(6 + n_extra)
        xx[free] = xf
        return xx * units

    lo_b = np.r_[[-np.inf] * 5, case.lo_h, np.full(n_extra, -300.0)]
    hi_b = np.r_[[np.inf] * 5, case.hi_h, np.full(n_extra, 300.0)]
    xf, inl = _fit_robust(lambda xf: fun(full(xf)), np.zeros(int(free.sum())), len(points),
                          x_scale=np.r_[1.0, 10.0, 0.1, 0.1, 0.1, np.full(1 + n_extra, 10.0)][free],
                          bounds=(lo_b[free], hi_b[free]))
    x = full(xf)

    def make_attitude(p: np.ndarray) -> RefinedCkAttitude:
        delta = basis_delta @ p[2:5]
        return RefinedCkAttitude(delta_cam_rad=(float(delta[0]), float(delta[1]), float(delta[2])))

    fixed = ("rotation about the spin axis (the CK's; the start offset takes it)",) + (
        ("rotation about the line of sight to the target (the CK's: the limb barely fixes it)",)
        if hold_ck_roll else ()) + (
        () if fit_interframe_correction else ("interframe_correction_s (the IK's INTERFRAME_DELTA)",))
    fit = _Fitted(case=case, x=x, inl=inl, rotations=rotations, make_attitude=make_attitude,
                  timing=timing0.with_offsets(timing0.start_offset_s + float(x[0]),
                                              timing0.interframe_correction_s + float(x[1])),
                  steps=np.r_[1e-5, 1e-7, 1e-6, 1e-6, 1e-6, np.ones(1 + n_extra)], held=held,
                  method="ck-refined", fixed=fixed, notes=[], t_start=t_start)
    _align_and_jacobian(fit, image, opts)
    assert fit.jac is not None
    cov = np.linalg.pinv(fit.jac.T @ fit.jac)
    return _solution(fit, cov, (0.0, 0.0), None, opts, {})


# ---------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------
def predicted_limb_mask(meta: ProductMeta, sol: PointingSolution, band: str, *,
                        target: Target | None = None) -> np.ndarray:
    """Bool (n_frames, rows, samples): pixels whose rays hit the target (the solution's view)."""
    target = target or Target.from_name(meta.target)
    cam = CameraModel.for_product(meta, band, attitude=sol.attitude)
    rows, samples = cam.shape
    rays = cam.framelet_rays_cam.reshape(-1, 3)
    ets = sol.timing.frame_et(np.arange(meta.n_frames))
    out = np.zeros((meta.n_frames, rows, samples), bool)
    for f, et in enumerate(ets):
        st = frame_state(target, float(et))
        m = _LimbModel(frame=np.zeros(len(rays), np.intp), band=np.zeros(len(rays), np.intp), ray_cam=rays,
                       ifov_rad=np.full(len(rays), 1.0 / cam.focal_px),
                       beta_j2000=st.beta_j2000[None], rot_j2000_to_body=st.rot_j2000_to_body[None],
                       obs_body_km=st.observer_pos_body_km[None], radii_km=np.asarray(target.radii, float))
        rot = sol.attitude.rot_j2000_to_cam(float(et))[None]
        alt = sol.limb_alt_km_by_band.get(band, sol.limb_alt_km)
        out[f] = (m.residuals_px(rot, alt) < 0).reshape(rows, samples)
    return out


def write_diagnostic(image: Any, sol: PointingSolution, points: LimbPoints, path: str | Path,
                     *, band: str | None = None, max_frames: int = 40) -> Path:
    """PNG of one band's framelets stacked: predicted limb (red), limb points used (green)."""
    meta, data, _ = _image_arrays(image)
    band = band or max(points.count_by_band().items(), key=lambda kv: kv[1])[0]
    b = meta.filters.index(band)
    inside = predicted_limb_mask(meta, sol, band)
    tiles = []
    for f in range(min(meta.n_frames, max_frames)):
        img = data[f, b]
        hi = float(np.percentile(data[:, b], 99.5)) or 1.0
        grey = np.clip(np.sqrt(np.clip(img, 0, None) / hi) * 255, 0, 255).astype(np.uint8)
        vis = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        m = inside[f].astype(np.uint8)
        edge = (m ^ cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)
        vis[edge] = (0, 0, 255)
        sel = (points.frame == f) & (points.band == b)
        for x, y in zip(points.x_px[sel], points.y_px[sel], strict=False):
            cv2.circle(vis, (int(round(x - 0.5)), int(round(y - 0.5))), 1, (0, 255, 0), -1)
        vis[-1, :] = (80, 80, 80)
        tiles.append(vis)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(tiles, axis=0)):
        raise OutputError("cannot write diagnostic PNG", path=path)
    return path


# ---------------------------------------------------------------------------------------
# CK export
# ---------------------------------------------------------------------------------------
def export_ck(sol: PointingSolution, path: str | Path, meta: ProductMeta, *, margin_s: float = 10.0,
              step_s: float = 0.05) -> Path:
    """Write the solution's attitude as a type-3 CK of JUNO_SPACECRAFT (-61000) relative to J2000.

    Samples every ``step_s`` over the image span +- ``margin_s`` (quaternions from
    ``m2q`` of the J2000 -> spacecraft C-matrix, angular velocity in J2000); needs the
    LSK, SCLK and FK loaded. The CK holds attitude versus time only: a solution's fitted
    frame-timing offsets are not in it (the comment area says so) and stay in the
    solution JSON. Written to a temporary file and renamed.
    """
    path = Path(path)
    ets = sol.timing.frame_et(np.arange(meta.n_frames))
    t0, t1 = float(ets[0]) - margin_s, float(ets[-1]) + sol.timing.exposure_s + margin_s
    sample_ets = np.linspace(t0, t1, int(math.ceil((t1 - t0) / step_s)) + 1)
    att = sol.attitude
    try:
        sc_to_cam = rot_sc_to_cam(float(ets[0]))
        sclk = np.array([spiceypy.sce2c(SPACECRAFT_CLOCK_ID, float(e)) for e in sample_ets])
    except spiceypy.utils.exceptions.SpiceyError as err:
        from .errors import KernelMissingError

        raise KernelMissingError(f"cannot convert times to Juno's clock ({getattr(err, 'short', err)})",
                                 hint="load the Juno SCLK and LSK kernels") from None
    cmats = np.stack([sc_to_cam.T @ att.rot_j2000_to_cam(float(e)) for e in sample_ets])
    quats = np.stack([np.asarray(spiceypy.m2q(m)) for m in cmats])
    if isinstance(att, SpinAttitude):
        avvs = np.tile(att.angular_velocity_j2000_rad_s(), (len(sample_ets), 1))
    else:  # numerically: d(C)/dt = -[w]x C with w in the instrument frame; expressed in J2000
        h = 1e-3
        avvs = np.empty((len(sample_ets), 3))
        for i, e in enumerate(sample_ets):
            cp = sc_to_cam.T @ att.rot_j2000_to_cam(float(e) + h)
            cm = sc_to_cam.T @ att.rot_j2000_to_cam(float(e) - h)
            w_skew = -(cp - cm) / (2 * h) @ cmats[i].T  # instrument frame
            w_ins = np.array([w_skew[2, 1] - w_skew[1, 2], w_skew[0, 2] - w_skew[2, 0],
                              w_skew[1, 0] - w_skew[0, 1]]) / 2
            avvs[i] = cmats[i].T @ w_ins
    t = sol.timing
    att_desc = {k: v for k, v in att.describe().items() if k != "band_boresight_mrad"}
    boresight = getattr(att, "band_boresight_rad", ())
    comments = [
        f"junoproc pointing CK for {sol.product_id}: JUNO_SPACECRAFT ({SPACECRAFT_CK_ID}) relative to J2000,",
        f"type 3 with angular velocity, every {step_s} s from {_utc(t0)} to {_utc(t1)} "
        f"(image +- {margin_s} s).",
        f"Solved from the image's limb: method {sol.method}, quality {sol.quality}, limb RMS "
        f"{sol.rms_px:.3f} px, limb altitude {sol.limb_alt_km:.1f} km.",
        f"Attitude: {json.dumps(att_desc, default=str)[:240]}",
        "This CK holds attitude versus time only. The frame timing used with it in the fit",
        f"(start offset {1e3 * t.start_offset_s:+.3f} ms, interframe correction "
        f"{1e3 * t.interframe_correction_s:+.4f} ms on top of the label and IK timing) is NOT in this",
        "file: it stays in the junoproc solution JSON; use both together.",
        *(["Nor are the per-band boresight corrections measured from the texture (rotation vectors",
           "JUNO_JUNOCAM -> band, mrad), which also stay in the solution JSON:"]
          + [f"  {b}: {', '.join(f'{1e3 * v:+.5f}' for v in w)}" for b, w in boresight]
          if boresight else []),
        "Not a NAIF product.",
    ]
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()
        ncomch = sum(len(c) + 1 for c in comments) + 512
        handle = spiceypy.ckopn(str(tmp), "junoproc pointing CK", ncomch)
        try:
            spiceypy.dafac(handle, comments)
            spiceypy.ckw03(handle, float(sclk[0]), float(sclk[-1]), SPACECRAFT_CK_ID, "J2000", True,
                           f"JUNOPROC {sol.product_id}"[:40], len(sclk), sclk, quats, avvs, 1,
                           np.array([sclk[0]]))
        finally:
            spiceypy.ckcls(handle)
        tmp.replace(path)
    except spiceypy.utils.exceptions.SpiceyError as err:
        raise OutputError(f"cannot write CK ({getattr(err, 'short', err)})", path=path) from None
    except OSError as err:
        raise OutputError(f"cannot write CK ({err.strerror})", path=path) from None
    return path
