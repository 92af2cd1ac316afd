"""The JunoCam camera model and frame timing, read from the SPICE kernel pool.

Pixel convention (``px``): continuous framelet coordinates, origin at the upper-left
*corner* of the framelet, x along columns and y along rows, full-resolution (unsummed)
pixels. The centre of array element ``[row j, column i]`` is ``(i + 0.5, j + 0.5)``
(times SAMPLING_FACTOR for summed products). This is the convention of the IK's
distortion recipe, whose FOV corners are computed for pixel centres (23.5, 0.5) etc.

Ray convention (``cam``): vectors in the JUNO_JUNOCAM frame, +z along the optical axis,
scaled so that z equals the focal length in pixels.

Per-band boresight correction (``boresight_rad``): a small rotation vector (rad) of the
frame rotation from JUNO_JUNOCAM to the band's own camera axes, measured by the pointing
stage from the image texture (the filter strips need not sit exactly where the IK's
per-band DISTORTION_X/Y put them). ``px_to_cam`` and ``cam_to_px`` apply it, so every
consumer of the model (rays, backplanes, inverse mapping) uses it without knowing.

The distortion model is the IK's: ``(x - cx, y - cy)`` are distorted coordinates;
undistorted ``u`` relate by ``d = u (1 + k1 |u|^2 + k2 |u|^4)``. The IK inverts it with
five fixed-point iterations; here it is inverted with Newton's method on the radius to
machine precision (round trip < 1e-9 px).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import spiceypy

from .errors import KernelMissingError
from .products import CCD_SAMPLES, FRAMELET_ROWS, ProductMeta

#: NAIF instrument ids of the JunoCam filters (the IK's naming).
BAND_NAIF_ID: Mapping[str, int] = {
    "BLUE": -61501, "GREEN": -61502, "RED": -61503, "METHANE": -61504, "FULLCCD": -61500,
}
#: The SPICE frame of the camera rays.
CAMERA_FRAME = "JUNO_JUNOCAM"
#: First and last photoactive CCD column (0-based, inclusive), from the IK's FOV text.
PHOTOACTIVE_COLUMNS = (23, 1630)


def _pool_float(name: str, band: str) -> float:
    try:
        values = spiceypy.gdpool(name, 0, 1)
    except spiceypy.utils.exceptions.SpiceyError:
        values = []
    if len(values) == 0:
        raise KernelMissingError(
            f"kernel pool lacks {name} (JunoCam {band})",
            hint="load the JunoCam IK juno_junocam_v03.ti (junoproc kernels fetch, or --kernels DIR)",
        )
    return float(values[0])


#: Tile size of :attr:`CameraModel.framelet_ray_tiles`.
TILE_ROWS = 32
TILE_COLUMN_SPLIT = 2


def frame_rotation(rotvec_rad: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """The frame rotation of rotation vector ``rotvec_rad`` (Rodrigues; SPICE's sense:
    a frame turned by +a about z sees a fixed vector turned by -a)."""
    v = np.asarray(rotvec_rad, dtype=np.float64)
    theta = float(np.linalg.norm(v))
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) - k
    k /= theta
    return np.eye(3) - np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def boresight_of(attitude: object, band: str) -> tuple[float, float, float] | None:
    """The per-band boresight correction an attitude carries (``band_boresight_rad``:
    pairs (band, rotation vector)), or None."""
    pairs = getattr(attitude, "band_boresight_rad", None) or ()
    for name, rotvec in pairs:
        if name == band.upper():
            return (float(rotvec[0]), float(rotvec[1]), float(rotvec[2]))
    return None


@dataclass(frozen=True)
class RayTile:
    """A rectangle of a framelet and the unit rays (3, n) of its pixel centres, row-major."""

    rows: slice
    cols: slice
    rays: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole + radial distortion model of one JunoCam band (all values in pixels)."""

    band: str
    naif_id: int
    focal_px: float
    cx_px: float
    cy_px: float
    k1: float
    k2: float
    sampling_factor: int = 1
    #: Keys that were overridden from the label (e.g. DISTORTION_Y from RATIONALE_DESC).
    overrides: Mapping[str, float] = field(default_factory=dict)
    #: Rotation vector (rad) of the frame rotation JUNO_JUNOCAM -> this band's camera axes.
    boresight_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @cached_property
    def _rot_cam_to_band(self) -> np.ndarray | None:
        if not any(self.boresight_rad):
            return None
        return frame_rotation(self.boresight_rad)

    @classmethod
    def from_pool(
        cls, band: str, *, distortion_y_override: float | None = None, sampling_factor: int = 1
    ) -> CameraModel:
        """Read focal length, pixel size, K1, K2, cx, cy of ``band`` from the loaded IK."""
        band = band.upper()
        if band not in BAND_NAIF_ID:
            raise KernelMissingError(f"no JunoCam band {band!r}", hint=f"one of {list(BAND_NAIF_ID)}")
        naif = BAND_NAIF_ID[band]
        prefix = f"INS{naif}_"
        focal_mm = _pool_float(prefix + "FOCAL_LENGTH", band)
        pixel_mm = _pool_float(prefix + "PIXEL_SIZE", band)
        cy = _pool_float(prefix + "DISTORTION_Y", band)
        overrides: dict[str, float] = {}
        if distortion_y_override is not None:
            overrides[prefix + "DISTORTION_Y"] = float(distortion_y_override)
            cy = float(distortion_y_override)
        return cls(
            band=band, naif_id=naif, focal_px=focal_mm / pixel_mm,
            cx_px=_pool_float(prefix + "DISTORTION_X", band), cy_px=cy,
            k1=_pool_float(prefix + "DISTORTION_K1", band),
            k2=_pool_float(prefix + "DISTORTION_K2", band),
            sampling_factor=int(sampling_factor), overrides=overrides,
        )

    @classmethod
    def for_product(cls, meta: ProductMeta, band: str, *, attitude: object | None = None,
                    boresight_rad: tuple[float, float, float] | None = None) -> CameraModel:
        """The model of ``band`` with the label's overrides and summing applied.

        The band's boresight correction is ``boresight_rad`` or, when not given, the one
        ``attitude`` carries (a pointing solution's, see :func:`boresight_of`).
        """
        model = cls.from_pool(
            band, distortion_y_override=meta.distortion_y_overrides.get(band.upper()),
            sampling_factor=meta.sampling_factor,
        )
        if boresight_rad is None and attitude is not None:
            boresight_rad = boresight_of(attitude, band)
        return model.with_boresight(boresight_rad) if boresight_rad is not None else model

    def with_boresight(self, boresight_rad: tuple[float, float, float] | np.ndarray) -> CameraModel:
        """This model with the band's boresight correction replaced."""
        from dataclasses import replace

        b = tuple(float(v) for v in boresight_rad)
        return replace(self, boresight_rad=(b[0], b[1], b[2]))

    # -- distortion --------------------------------------------------------------
    def _radial_factor(self, r2: np.ndarray) -> np.ndarray:
        return 1.0 + self.k1 * r2 + self.k2 * r2 * r2

    def undistort(self, xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distorted offsets from (cx, cy) -> undistorted offsets (Newton on the radius)."""
        rd = np.hypot(xd, yd)
        ru = rd.copy()
        for _ in range(6):
            r2 = ru * ru
            f = ru * self._radial_factor(r2) - rd
            fprime = 1.0 + 3.0 * self.k1 * r2 + 5.0 * self.k2 * r2 * r2
            ru = ru - f / fprime
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(rd > 0, ru / np.where(rd > 0, rd, 1.0), 1.0)
        return xd * scale, yd * scale

    def distort(self, xu: np.ndarray, yu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted offsets -> distorted offsets (the IK's ``distort``)."""
        factor = self._radial_factor(xu * xu + yu * yu)
        return xu * factor, yu * factor

    # -- pixel <-> ray -------------------------------------------------------------
    def px_to_cam(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Framelet pixel coordinates (product pixels) -> rays in JUNO_JUNOCAM, shape (..., 3).

        The rays are not normalised: their length is that of ``(xu, yu, focal_px)`` (z
        is the focal length in pixels when there is no boresight correction).
        """
        sf = self.sampling_factor
        x = np.asarray(x_px, dtype=np.float64) * sf - self.cx_px
        y = np.asarray(y_px, dtype=np.float64) * sf - self.cy_px
        xu, yu = self.undistort(x, y)
        ray = np.stack([xu, yu, np.full_like(xu, self.focal_px)], axis=-1)
        rot = self._rot_cam_to_band
        return ray if rot is None else ray @ rot  # band -> cam: rot.T @ ray

    def cam_to_px(self, ray_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rays in JUNO_JUNOCAM (..., 3) -> framelet pixel coordinates (x_px, y_px).

        Rays pointing backwards (z <= 0) give NaN.
        """
        ray = np.asarray(ray_cam, dtype=np.float64)
        rot = self._rot_cam_to_band
        if rot is not None:
            ray = ray @ rot.T
        z = ray[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(z > 0, self.focal_px / z, np.nan)
        xd, yd = self.distort(ray[..., 0] * scale, ray[..., 1] * scale)
        sf = self.sampling_factor
        return (xd + self.cx_px) / sf, (yd + self.cy_px) / sf

    def cam_to_px_xyz(self, x_cam: np.ndarray, y_cam: np.ndarray, z_cam: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`cam_to_px` for separate x, y, z arrays (any length; z <= 0 gives NaN)."""
        rot = self._rot_cam_to_band
        if rot is not None:
            xb, yb, zb = [rot[i, 0] * x_cam + rot[i, 1] * y_cam + rot[i, 2] * z_cam for i in range(3)]
            x_cam, y_cam, z_cam = xb, yb, zb
        z = np.asarray(z_cam, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = self.focal_px / np.where(z > 0, z, np.nan)
        xu = x_cam * scale
        yu = y_cam * scale
        factor = xu * xu
        factor += yu * yu
        factor = self._radial_factor(factor)
        sf = self.sampling_factor
        xu *= factor
        xu += self.cx_px
        yu *= factor
        yu += self.cy_px
        if sf != 1:
            xu /= sf
            yu /= sf
        return xu, yu

    # -- the whole framelet ------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, samples) of one framelet in product pixels."""
        return FRAMELET_ROWS // self.sampling_factor, CCD_SAMPLES // self.sampling_factor

    @cached_property
    def framelet_rays_cam(self) -> np.ndarray:
        """Unit rays of every pixel centre of a framelet, (rows, samples, 3) float64.

        The same for every frame of the band: compute once, rotate per frame.
        """
        rows, samples = self.shape
        y, x = np.mgrid[0:rows, 0:samples].astype(np.float64) + 0.5
        ray = self.px_to_cam(x, y)
        ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
        ray.setflags(write=False)
        return ray

    @cached_property
    def framelet_unit_rays_xyz(self) -> np.ndarray:
        """:attr:`framelet_rays_cam` as structure of arrays: (3, rows * samples) float64,
        row-major over the framelet (x, y, z each contiguous)."""
        rays = np.ascontiguousarray(self.framelet_rays_cam.reshape(-1, 3).T)
        rays.setflags(write=False)
        return rays

    @cached_property
    def framelet_ray_tiles(self) -> tuple[RayTile, ...]:
        """The framelet's unit rays cut into tiles of ~26,000 pixels (32 rows x half the
        columns at full resolution), each (3, n) contiguous: work units whose temporaries
        stay in cache, large enough to amortise numpy's per-call cost, skipped whole when
        they see only sky."""
        rows, samples = self.shape
        tile_rows = min(TILE_ROWS, rows)
        tile_cols = -(-samples // TILE_COLUMN_SPLIT)
        tiles = []
        for r0 in range(0, rows, tile_rows):
            for c0 in range(0, samples, tile_cols):
                rs, cs = slice(r0, min(r0 + tile_rows, rows)), slice(c0, min(c0 + tile_cols, samples))
                rays = np.ascontiguousarray(np.moveaxis(self.framelet_rays_cam[rs, cs], -1, 0).reshape(3, -1))
                rays.setflags(write=False)
                tiles.append(RayTile(rows=rs, cols=cs, rays=rays))
        return tuple(tiles)

    def photoactive_columns(self) -> slice:
        """Columns of product pixels that are photoactive (others are dark/overscan)."""
        first, last = PHOTOACTIVE_COLUMNS
        sf = self.sampling_factor
        return slice(-(-first // sf), (last + 1) // sf)


@dataclass(frozen=True)
class FrameTiming:
    """When each frame was exposed (TDB seconds past J2000).

    ``frame_et(n) = start_et + start_time_bias_s + start_offset_s
    + n * (interframe_delay_s + interframe_delta_s + interframe_correction_s)``

    ``start_time_bias_s`` and ``interframe_delta_s`` come from the IK (MSSS's measured
    61.88 ms and 1 ms); ``start_offset_s`` and ``interframe_correction_s`` are the
    free parameters the pointing stage fits (the IK warns of ~20 ms jitter).

    Exposure: the IK's bias was measured for this very recipe, so by default the frame
    time is used as is (``mid_exposure=False``). ISIS adds half the exposure duration
    (``mid_exposure=True`` reproduces that). Under TDI the charge follows the scene
    across ``tdi_stages`` rows, so the spin-smear is compensated and the timing
    question is only the constant offset, which the pointing fit absorbs.
    """

    start_et: float
    interframe_delay_s: float
    start_time_bias_s: float
    interframe_delta_s: float
    exposure_s: float = 0.0
    start_offset_s: float = 0.0
    interframe_correction_s: float = 0.0
    mid_exposure: bool = False

    @classmethod
    def for_product(
        cls, meta: ProductMeta, *, start_offset_s: float = 0.0,
        interframe_correction_s: float = 0.0, mid_exposure: bool = False,
    ) -> FrameTiming:
        """Timing from the label and the IK (needs LSK and IK loaded)."""
        band = meta.filters[0]
        prefix = f"INS{BAND_NAIF_ID[band]}_"
        try:
            start_et = float(spiceypy.str2et(meta.start_time_utc))
        except spiceypy.utils.exceptions.SpiceyError as err:
            raise KernelMissingError(
                f"cannot convert START_TIME {meta.start_time_utc} to ET: {err.short}",
                path=meta.metadata_path or None, hint="load a leapseconds kernel (naif0012.tls)",
            ) from None
        return cls(
            start_et=start_et,
            interframe_delay_s=meta.interframe_delay_s,
            start_time_bias_s=_pool_float(prefix + "START_TIME_BIAS", band),
            interframe_delta_s=_pool_float(prefix + "INTERFRAME_DELTA", band),
            exposure_s=meta.exposure_ms * 1e-3,
            start_offset_s=start_offset_s,
            interframe_correction_s=interframe_correction_s,
            mid_exposure=mid_exposure,
        )

    @property
    def frame_period_s(self) -> float:
        return self.interframe_delay_s + self.interframe_delta_s + self.interframe_correction_s

    def frame_et(self, frame: np.ndarray | int) -> np.ndarray:
        """Time of frame ``frame`` (0-based), vectorised."""
        t0 = self.start_et + self.start_time_bias_s + self.start_offset_s
        if self.mid_exposure:
            t0 += 0.5 * self.exposure_s
        return t0 + np.asarray(frame, dtype=np.float64) * self.frame_period_s

    def with_offsets(self, start_offset_s: float, interframe_correction_s: float) -> FrameTiming:
        from dataclasses import replace

        return replace(
            self, start_offset_s=start_offset_s, interframe_correction_s=interframe_correction_s
        )
