"""Per-framelet SPICE geometry and per-pixel backplanes.

SPICE is called once per *frame* (all framelets of one frame share the instant); the
per-pixel work (ray-ellipsoid intersection, angles) is numpy.

Aberration model (matches spiceypy ``sincpt``/``ilumin`` with ``LT+S``):

* Camera rays are *apparent* directions. Stellar aberration (observer velocity ``v``
  relative to the solar-system barycentre) is removed with the exact inverse of the
  classical formula ``u_app = normalise(u + v/c)``.
* The target is placed where it was when the light left it: the centre at
  ``et - lt`` and, per surface point, a first-order correction for that point's own
  light time (the target's barycentric velocity and the body frame's rotation rate
  over the extra ``delta = (range_point - range_centre) / c``). Two iterations.

Frames and units are in the names: ``_j2000``, ``_body`` (IAU_<TARGET>), ``_cam``
(JUNO_JUNOCAM), ``_km``, ``_deg``. Latitudes are planetocentric unless named
``graphic``; longitudes are east unless named ``west``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import spiceypy

from .camera import CAMERA_FRAME, CameraModel, FrameTiming
from .errors import KernelCoverageError, KernelMissingError, UnknownTargetError
from .products import ProductMeta

#: The observing spacecraft.
OBSERVER = "JUNO"
#: Speed of light from SPICE (km/s), not a copied constant.
C_KM_S = float(spiceypy.clight())


# ---------------------------------------------------------------------------------------
# target bodies
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A target body: NAIF id, body-fixed frame and tri-axial radii from the PCK."""

    name: str
    naif_id: int
    frame: str
    radii_km: tuple[float, float, float]

    @classmethod
    def from_name(cls, name: str, *, path: str | None = None) -> Target:
        """Target from TARGET_NAME (JUPITER, IO, EUROPA, GANYMEDE, CALLISTO, ...).

        The *body*, never the system barycentre: ``JUPITER`` is 599, not 5.
        """
        name = name.strip().upper()
        found = spiceypy.bodn2c(name) if name else None
        naif = found if isinstance(found, int) else None
        if naif is None:
            try:
                naif = int(spiceypy.bods2c(name))
            except spiceypy.utils.exceptions.SpiceyError:
                naif = None
        if naif is None:
            raise UnknownTargetError(
                f"unknown target {name!r}", path=path,
                hint="TARGET_NAME must be a body known to SPICE (JUPITER, IO, EUROPA, ...)",
            )
        if 0 < naif < 10:  # a barycentre: use the planet itself (5 -> 599)
            naif = naif * 100 + 99
            name = spiceypy.bodc2n(naif)
        if not spiceypy.bodfnd(naif, "RADII"):
            raise UnknownTargetError(
                f"no radii for target {name} ({naif}) in the kernel pool", path=path,
                hint=f"load a PCK that defines BODY{naif}_RADII (pck00010.tpc)",
            )
        radii = spiceypy.bodvcd(naif, "RADII", 3)[1]
        return cls(name=name, naif_id=naif, frame=f"IAU_{name}",
                   radii_km=(float(radii[0]), float(radii[1]), float(radii[2])))

    @property
    def radii(self) -> np.ndarray:
        return np.asarray(self.radii_km, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# attitude sources
# ---------------------------------------------------------------------------------------
@runtime_checkable
class Attitude(Protocol):
    """Anything that gives the camera's orientation at a time (CK, spin model, ...)."""

    def rot_j2000_to_cam(self, et: float) -> np.ndarray:
        """3x3 rotation taking J2000 vectors into JUNO_JUNOCAM at ``et``."""
        ...

    def describe(self) -> Mapping[str, object]:
        ...


def _spice_short(err: Exception) -> str:
    return getattr(err, "short", "") or str(err).splitlines()[0]


@dataclass(frozen=True)
class CkAttitude:
    """Attitude from loaded CK + SCLK + FK kernels (``pxform`` J2000 -> JUNO_JUNOCAM)."""

    frame: str = CAMERA_FRAME

    def rot_j2000_to_cam(self, et: float) -> np.ndarray:
        try:
            return np.asarray(spiceypy.pxform("J2000", self.frame, float(et)))
        except spiceypy.utils.exceptions.SpiceyError as err:
            raise KernelCoverageError(
                f"no attitude for {self.frame} at {spiceypy.et2utc(float(et), 'ISOC', 3)} "
                f"({_spice_short(err)})",
                hint="load a Juno CK (juno_sc_rec_*.bc) and SCLK covering the image, "
                "or solve the pointing from the limb (junoproc pointing)",
            ) from None

    def describe(self) -> Mapping[str, object]:
        return {"source": "ck", "frame": self.frame}


@dataclass(frozen=True)
class FixedAttitude:
    """A given rotation per frame time (tests, simulations, refined solutions)."""

    ets: tuple[float, ...]
    rotations_j2000_to_cam: tuple[tuple[tuple[float, ...], ...], ...]

    def rot_j2000_to_cam(self, et: float) -> np.ndarray:
        idx = int(np.argmin(np.abs(np.asarray(self.ets) - et)))
        return np.asarray(self.rotations_j2000_to_cam[idx], dtype=np.float64)

    def describe(self) -> Mapping[str, object]:
        return {"source": "fixed", "n": len(self.ets)}


# ---------------------------------------------------------------------------------------
# SPICE state of one frame
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameState:
    """Attitude-free SPICE geometry at one frame time (observer at ``et``)."""

    et: float
    lt_s: float
    #: Target centre relative to the observer, geometric, target at et - lt (J2000, km).
    target_pos_j2000_km: np.ndarray
    #: Target centre velocity relative to the SSB at et - lt (J2000, km/s).
    target_vel_ssb_j2000_km_s: np.ndarray
    #: Observer velocity relative to the SSB at et (J2000, km/s) - for stellar aberration.
    observer_vel_ssb_j2000_km_s: np.ndarray
    #: J2000 -> body-fixed rotation at et - lt, and its time derivative (1/s).
    rot_j2000_to_body: np.ndarray
    drot_j2000_to_body: np.ndarray
    #: Sun relative to the target centre in J2000 at et - lt (LT+S as seen from the target).
    sun_pos_j2000_km: np.ndarray

    @property
    def sun_pos_body_km(self) -> np.ndarray:
        """Sun relative to the target centre in the body frame (centre epoch)."""
        return self.rot_j2000_to_body @ self.sun_pos_j2000_km

    @property
    def observer_pos_body_km(self) -> np.ndarray:
        """Observer relative to the target centre in the body frame (centre light time)."""
        return -self.rot_j2000_to_body @ self.target_pos_j2000_km

    @property
    def beta_j2000(self) -> np.ndarray:
        return self.observer_vel_ssb_j2000_km_s / C_KM_S


def frame_state(target: Target, et: float, observer: str = OBSERVER) -> FrameState:
    """SPICE calls for one frame time; a coverage gap is a KernelCoverageError."""
    et = float(et)
    try:
        state, lt = spiceypy.spkezr(target.name, et, "J2000", "LT", observer)
        et_target = et - lt
        target_ssb = spiceypy.spkezr(target.name, et_target, "J2000", "NONE", "SSB")[0]
        observer_ssb = spiceypy.spkezr(observer, et, "J2000", "NONE", "SSB")[0]
        xform = np.asarray(spiceypy.sxform("J2000", target.frame, et_target))
        sun_j2000 = spiceypy.spkpos("SUN", et_target, "J2000", "LT+S", target.name)[0]
    except spiceypy.utils.exceptions.SpiceyError as err:
        utc = _et_to_utc(et)
        short = _spice_short(err)
        if "NOLOADEDFILES" in short or "NOLEAPSECONDS" in short or "MISSINGTIMEINFO" in short:
            raise KernelMissingError(
                f"SPICE kernels not loaded for {utc} ({short})",
                hint="pass --kernels DIR or run `junoproc kernels fetch`",
            ) from None
        raise KernelCoverageError(
            f"kernels do not cover {observer} -> {target.name} at {utc} ({short})",
            hint="load an SPK covering this time (junoproc kernels check/fetch)",
        ) from None
    return FrameState(
        et=et, lt_s=float(lt),
        target_pos_j2000_km=np.asarray(state[:3], dtype=np.float64),
        target_vel_ssb_j2000_km_s=np.asarray(target_ssb[3:], dtype=np.float64),
        observer_vel_ssb_j2000_km_s=np.asarray(observer_ssb[3:], dtype=np.float64),
        rot_j2000_to_body=xform[:3, :3].copy(),
        drot_j2000_to_body=xform[3:, :3].copy(),
        sun_pos_j2000_km=np.asarray(sun_j2000, dtype=np.float64),
    )


def _et_to_utc(et: float) -> str:
    try:
        return str(spiceypy.et2utc(et, "ISOC", 3))
    except spiceypy.utils.exceptions.SpiceyError:
        return f"ET {et:.3f}"


# ---------------------------------------------------------------------------------------
# stellar aberration (classical, exactly invertible)
# ---------------------------------------------------------------------------------------
def aberrate(u_geo: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Geometric unit directions (..., 3) -> apparent: normalise(u + v/c)."""
    v = u_geo + beta
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def unaberrate(u_app: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`aberrate`: find unit u with normalise(u + beta) = u_app."""
    u_app = u_app / np.linalg.norm(u_app, axis=-1, keepdims=True)
    ub = u_app @ beta
    k = ub + np.sqrt(ub * ub - float(beta @ beta) + 1.0)
    return k[..., None] * u_app - beta


# ---------------------------------------------------------------------------------------
# forward: rays -> surface
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SurfacePoints:
    """Where rays meet the target ellipsoid (NaN where they miss)."""

    pos_body_km: np.ndarray        # (..., 3) surface point, body frame
    observer_pos_body_km: np.ndarray  # (..., 3) observer, body frame, per point's light time
    hit: np.ndarray                # (...) bool
    range_km: np.ndarray           # (...) observer -> point
    #: Apparent (aberrated) unit direction observer -> point, body frame: SPICE's
    #: ``ilumin`` measures emission and phase with it.
    apparent_dir_body: np.ndarray  # (..., 3)
    #: Extra light time of each point beyond the centre's (s); its epoch is et - lt - delta.
    delta_lt_s: np.ndarray         # (...)


def _intersect_ellipsoid(origin: np.ndarray, direction: np.ndarray, radii: np.ndarray):
    """Near intersection of rays with the ellipsoid; returns (t, hit). Vectorised."""
    o = origin / radii
    d = direction / radii
    a = np.einsum("...i,...i->...", d, d)
    b = np.einsum("...i,...i->...", o, d)
    c = np.einsum("...i,...i->...", o, o) - 1.0
    disc = b * b - a * c
    hit = (disc >= 0.0) & (c > 0.0)
    with np.errstate(invalid="ignore"):
        sq = np.sqrt(np.where(hit, disc, np.nan))
        # numerically stable near root: t = c / (-b + sqrt(disc))
        t = c / (-b + sq)
    hit &= t > 0
    t = np.where(hit, t, np.nan)
    return t, hit


def intersect_rays(
    state: FrameState, rot_j2000_to_cam: np.ndarray, ray_cam: np.ndarray, target: Target,
    *, light_time_iterations: int = 2,
) -> SurfacePoints:
    """Apparent camera rays (..., 3) -> surface points on the target ellipsoid."""
    radii = target.radii
    u_app_j2000 = ray_cam @ rot_j2000_to_cam  # R^T v for row vectors: cam -> J2000
    u_geo_j2000 = unaberrate(u_app_j2000, state.beta_j2000)
    rot = state.rot_j2000_to_body
    drot = state.drot_j2000_to_body
    dir0_body = u_geo_j2000 @ rot.T
    ddir_body = u_geo_j2000 @ drot.T  # d/dt of direction in the body frame
    obs0_body = state.observer_pos_body_km
    # d/d(delta) of observer position in body frame, delta = extra light time (s):
    # obs(delta) = -(M - Mdot delta)(P - Vc delta) = obs0 + delta (M Vc + Mdot P) + O(delta^2)
    dobs_body = rot @ state.target_vel_ssb_j2000_km_s + drot @ state.target_pos_j2000_km
    range_centre = float(np.linalg.norm(state.target_pos_j2000_km))

    delta = np.zeros(ray_cam.shape[:-1])
    for iteration in range(light_time_iterations + 1):
        obs = obs0_body + delta[..., None] * dobs_body
        direction = dir0_body - delta[..., None] * ddir_body
        t, hit = _intersect_ellipsoid(obs, direction, radii)
        pos = obs + t[..., None] * direction
        rng = t * np.linalg.norm(direction, axis=-1)
        if iteration < light_time_iterations:
            delta = np.where(hit, (rng - range_centre) / C_KM_S, 0.0)
    apparent_dir_body = u_app_j2000 @ rot.T - delta[..., None] * (u_app_j2000 @ drot.T)
    return SurfacePoints(pos_body_km=pos, observer_pos_body_km=obs, hit=hit, range_km=rng,
                         apparent_dir_body=apparent_dir_body, delta_lt_s=delta)


# ---------------------------------------------------------------------------------------
# inverse: surface -> rays
# ---------------------------------------------------------------------------------------
def surface_to_cam(
    state: FrameState, rot_j2000_to_cam: np.ndarray, pos_body_km: np.ndarray,
    *, light_time_iterations: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed surface points (..., 3) -> apparent unit rays in JUNO_JUNOCAM, and range.

    The exact inverse of :func:`intersect_rays` (same light-time and aberration model).
    """
    rot = state.rot_j2000_to_body
    drot = state.drot_j2000_to_body
    p_j2000 = pos_body_km @ rot  # M^T s
    dp_j2000 = pos_body_km @ drot  # Mdot^T s
    centre = state.target_pos_j2000_km
    vel = state.target_vel_ssb_j2000_km_s
    range_centre = float(np.linalg.norm(centre))
    delta = np.zeros(pos_body_km.shape[:-1])
    for _ in range(light_time_iterations + 1):
        x = centre + p_j2000 - delta[..., None] * (vel + dp_j2000)
        rng = np.linalg.norm(x, axis=-1)
        delta = (rng - range_centre) / C_KM_S
    # Same first-order light-time model as intersect_rays, written for the point instead
    # of the observer (they differ by O(delta^2) terms, < 1e-3 km).
    u_geo = x / rng[..., None]
    u_app = aberrate(u_geo, state.beta_j2000)
    return u_app @ rot_j2000_to_cam.T, rng


def is_visible(pos_body_km: np.ndarray, observer_pos_body_km: np.ndarray,
               target: Target) -> np.ndarray:
    """Surface points that face the observer (emission < 90 deg)."""
    normal = pos_body_km / target.radii**2
    to_obs = observer_pos_body_km - pos_body_km
    return np.einsum("...i,...i->...", normal, to_obs) > 0


# ---------------------------------------------------------------------------------------
# backplanes
# ---------------------------------------------------------------------------------------
BACKPLANE_NAMES = (
    "lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg",
    "incidence_deg", "emission_deg", "phase_deg", "range_km", "resolution_km_per_px",
)


@dataclass(frozen=True)
class Backplanes:
    """Per-pixel geometry; NaN where the ray misses the target."""

    hit: np.ndarray
    lat_centric_deg: np.ndarray
    lat_graphic_deg: np.ndarray
    lon_east_deg: np.ndarray
    lon_west_deg: np.ndarray
    incidence_deg: np.ndarray
    emission_deg: np.ndarray
    phase_deg: np.ndarray
    range_km: np.ndarray
    resolution_km_per_px: np.ndarray
    pos_body_km: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in BACKPLANE_NAMES}


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between vectors (..., 3), robust near 0 and 180 deg."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.einsum("...i,...i->...", a, b)
    return np.degrees(np.arctan2(cross, dot))


def lonlat_from_body(pos_body_km: np.ndarray, target: Target) -> dict[str, np.ndarray]:
    """Planetocentric/planetographic latitude, east/west longitude (deg) of surface points."""
    x, y, z = pos_body_km[..., 0], pos_body_km[..., 1], pos_body_km[..., 2]
    lat_c = np.degrees(np.arctan2(z, np.hypot(x, y)))
    a, b, c = target.radii_km
    nx, ny, nz = x / a**2, y / b**2, z / c**2
    lat_g = np.degrees(np.arctan2(nz, np.hypot(nx, ny)))
    lon_e = np.mod(np.degrees(np.arctan2(y, x)), 360.0)
    lon_w = np.mod(-lon_e, 360.0)
    return {"lat_centric_deg": lat_c, "lat_graphic_deg": lat_g,
            "lon_east_deg": lon_e, "lon_west_deg": lon_w}


def body_from_lonlat(lat_centric_deg: np.ndarray, lon_east_deg: np.ndarray,
                     target: Target) -> np.ndarray:
    """Surface point (..., 3) of the ellipsoid at planetocentric lat / east lon."""
    lat = np.radians(lat_centric_deg)
    lon = np.radians(lon_east_deg)
    u = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
    scale = 1.0 / np.sqrt(np.sum((u / target.radii) ** 2, axis=-1))
    return u * scale[..., None]


def graphic_to_centric_deg(lat_graphic_deg: np.ndarray, target: Target) -> np.ndarray:
    """Planetographic -> planetocentric latitude on the (a, c) meridian ellipse."""
    a, _, c = target.radii_km
    return np.degrees(np.arctan((c / a) ** 2 * np.tan(np.radians(lat_graphic_deg))))


def backplanes_from_points(points: SurfacePoints, state: FrameState, target: Target,
                           ifov_rad: float) -> Backplanes:
    """Angles and coordinates at surface points, with ``ilumin``'s conventions.

    The Sun and the body orientation are taken at each point's own epoch
    (et - lt - delta); emission and phase use the apparent observer direction
    (differs from the geometric one by v/c, up to ~0.015 deg near perijove).
    """
    pos = points.pos_body_km
    normal = pos / target.radii**2
    sun_j2000 = state.sun_pos_j2000_km
    sun_body = (sun_j2000 @ state.rot_j2000_to_body.T
                - points.delta_lt_s[..., None] * (sun_j2000 @ state.drot_j2000_to_body.T))
    to_sun = sun_body - pos
    to_obs = -points.apparent_dir_body
    ll = lonlat_from_body(pos, target)
    rng = points.range_km
    return Backplanes(
        hit=points.hit,
        incidence_deg=_angle_deg(normal, to_sun),
        emission_deg=_angle_deg(normal, to_obs),
        phase_deg=_angle_deg(to_sun, to_obs),
        range_km=rng,
        resolution_km_per_px=rng * ifov_rad,
        pos_body_km=pos,
        **ll,
    )


# ---------------------------------------------------------------------------------------
# a whole image
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageGeometry:
    """Geometry of every framelet of one product: SPICE per frame, numpy per pixel."""

    meta: ProductMeta
    target: Target
    timing: FrameTiming
    cameras: Mapping[str, CameraModel]
    states: Sequence[FrameState]
    rotations_j2000_to_cam: np.ndarray  # (n_frames, 3, 3)
    attitude_description: Mapping[str, object] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.states)

    @property
    def frame_ets(self) -> np.ndarray:
        return np.array([s.et for s in self.states])

    def ifov_rad(self, band: str) -> float:
        cam = self.cameras[band]
        return cam.sampling_factor / cam.focal_px

    def surface_points(self, frame: int, band: str,
                       x_px: np.ndarray | None = None, y_px: np.ndarray | None = None
                       ) -> SurfacePoints:
        """Surface points of a framelet's pixel centres (or of given pixel coordinates)."""
        cam = self.cameras[band]
        if x_px is None or y_px is None:
            ray = cam.framelet_rays_cam
        else:
            ray = cam.px_to_cam(x_px, y_px)
        return intersect_rays(self.states[frame], self.rotations_j2000_to_cam[frame], ray,
                              self.target)

    def framelet_backplanes(self, frame: int, band: str,
                            x_px: np.ndarray | None = None, y_px: np.ndarray | None = None
                            ) -> Backplanes:
        pts = self.surface_points(frame, band, x_px, y_px)
        return backplanes_from_points(pts, self.states[frame], self.target, self.ifov_rad(band))

    def surface_to_px(self, frame: int, band: str, pos_body_km: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Body-fixed points -> framelet pixel coordinates (x_px, y_px) of ``band``.

        Points on the far side of the target are not masked here; combine with
        :func:`is_visible`.
        """
        ray, _ = surface_to_cam(self.states[frame], self.rotations_j2000_to_cam[frame],
                                pos_body_km)
        return self.cameras[band].cam_to_px(ray)

    def ray_j2000(self, frame: int, band: str, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Apparent unit rays in J2000 of framelet pixel coordinates."""
        ray = self.cameras[band].px_to_cam(x_px, y_px)
        ray = ray / np.linalg.norm(ray, axis=-1, keepdims=True)
        return ray @ self.rotations_j2000_to_cam[frame]

    def all_backplanes(self) -> dict[str, np.ndarray]:
        """Every backplane for every framelet: arrays (n_frames, n_filters, rows, samples)."""
        filters = self.meta.filters
        rows, samples = self.cameras[filters[0]].shape
        out = {name: np.full((self.n_frames, len(filters), rows, samples), np.nan, np.float32)
               for name in BACKPLANE_NAMES}
        hit = np.zeros((self.n_frames, len(filters), rows, samples), bool)
        for f in range(self.n_frames):
            for b, band in enumerate(filters):
                bp = self.framelet_backplanes(f, band)
                hit[f, b] = bp.hit
                for name in BACKPLANE_NAMES:
                    out[name][f, b] = getattr(bp, name)
        out["hit"] = hit
        return out


def image_geometry(
    meta: ProductMeta, attitude: Attitude, *, timing: FrameTiming | None = None,
    target: Target | None = None,
) -> ImageGeometry:
    """Geometry of a product from loaded kernels and an attitude source.

    ``timing`` defaults to the label + IK timing with no fitted offsets; a pointing
    solution supplies its own (fitted) timing and attitude.
    """
    target = target or Target.from_name(meta.target, path=meta.metadata_path or None)
    timing = timing or FrameTiming.for_product(meta)
    cameras = {band: CameraModel.for_product(meta, band) for band in meta.filters}
    ets = timing.frame_et(np.arange(meta.n_frames))
    states = [frame_state(target, et) for et in ets]
    rotations = np.stack([attitude.rot_j2000_to_cam(float(et)) for et in ets])
    return ImageGeometry(meta=meta, target=target, timing=timing, cameras=cameras,
                         states=states, rotations_j2000_to_cam=rotations,
                         attitude_description=dict(attitude.describe()))
