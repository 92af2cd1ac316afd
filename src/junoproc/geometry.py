"""Per-framelet SPICE geometry and per-pixel backplanes.

SPICE is called once per *frame* (all framelets of one frame share the instant); the
per-pixel work (ray-ellipsoid intersection, angles) is numpy, structure-of-arrays (x, y, z
as separate contiguous float64 arrays), in cache-sized chunks, on all cores.

Aberration model (matches spiceypy ``sincpt``/``ilumin`` with ``LT+S`` to < 1e-4 px):

* Camera rays are *apparent* directions. Stellar aberration (observer velocity ``v``
  relative to the solar-system barycentre, ``beta = v / c``) is removed with the exact
  inverse of the classical formula ``u_app = normalise(u + beta)``.
* The target is placed where it was when the light left it: the centre at ``et - lt``
  (one ``spkezr`` per frame) and, per surface point, a first-order correction for that
  point's own extra light time ``delta = (range_point - range_centre) / c`` (up to
  ~0.25 s near perijove): the target's barycentric velocity and the body frame's rotation
  over ``delta``. ``delta`` is iterated ``light_time_iterations`` times (default 1: the
  residual is ~1e-5 px; SPICE converges the same equation).
* Emission and phase use the apparent observer->point direction; incidence and phase
  the Sun as ``ilumin`` sees it: from the surface point at the point's epoch, with
  stellar aberration for the point's own velocity (the target's plus the rotation,
  12.6 km/s at Jupiter's equator: a 0.0024 deg effect). Angles agree with ``ilumin``
  to ~3e-6 deg.

Frames and units are in the names: ``_j2000``, ``_body`` (IAU_<TARGET>), ``_cam``
(JUNO_JUNOCAM), ``_km``, ``_deg``. Latitudes are planetocentric unless named
``graphic``; longitudes are east unless named ``west`` (System III for Jupiter).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import spiceypy
from spiceypy.utils.exceptions import SpiceyError

from .camera import CAMERA_FRAME, CameraModel, FrameTiming
from .errors import KernelCoverageError, KernelMissingError, UnknownTargetError
from .products import ProductMeta

#: The observing spacecraft.
OBSERVER = "JUNO"
#: Speed of light from SPICE (km/s), not a copied constant.
C_KM_S = float(spiceypy.clight())
#: Points per chunk of the vectorised kernels: ~40 float64 temporaries stay in L2/L3.
CHUNK_POINTS = 8192
#: Default number of per-point light-time corrections (1 leaves ~1e-5 px).
LIGHT_TIME_ITERATIONS = 1
_RAD2DEG = 180.0 / np.pi


def _workers(workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_parallel(tasks: Sequence[Callable[[], None]], workers: int | None) -> None:
    """Run independent tasks on threads (numpy releases the GIL inside ufuncs)."""
    n = min(_workers(workers), len(tasks))
    if n <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=n) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def _chunks(n: int, size: int = CHUNK_POINTS) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


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

        The *body*, never the system barycentre: ``JUPITER`` is 599, not 5 (a barycentre
        name or id is mapped to its planet).
        """
        name = str(name).strip().upper()
        naif: int | None = None
        if name:
            try:
                naif = int(spiceypy.bods2c(name))
            except SpiceyError:
                naif = None
        if naif is None:
            raise UnknownTargetError(
                f"unknown target {name!r}", path=path,
                hint="TARGET_NAME must be a body known to SPICE (JUPITER, IO, EUROPA, GANYMEDE, ...)",
            )
        if 0 < naif < 10:  # a barycentre: use the planet itself (5 -> 599)
            naif = naif * 100 + 99
        try:
            name = str(spiceypy.bodc2n(naif))
        except SpiceyError:
            pass
        if not spiceypy.bodfnd(naif, "RADII"):
            raise UnknownTargetError(
                f"no radii for target {name} ({naif}) in the kernel pool", path=path,
                hint=f"load a PCK that defines BODY{naif}_RADII (pck00010.tpc)",
            )
        radii = spiceypy.bodvcd(naif, "RADII", 3)[1]
        try:
            frame = str(spiceypy.cidfrm(naif)[1])
        except SpiceyError:
            frame = f"IAU_{name}"
        return cls(name=name, naif_id=naif, frame=frame,
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
        except SpiceyError as err:
            raise KernelCoverageError(
                f"no attitude for {self.frame} at {_et_to_utc(float(et))} UTC ({_spice_short(err)})",
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

    @property
    def range_centre_km(self) -> float:
        return float(np.linalg.norm(self.target_pos_j2000_km))


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
    except SpiceyError as err:
        utc = _et_to_utc(et)
        short = _spice_short(err)
        if "NOLOADEDFILES" in short or "NOLEAPSECONDS" in short or "MISSINGTIMEINFO" in short:
            raise KernelMissingError(
                f"SPICE kernels not loaded for {utc} UTC ({short})",
                hint="pass --kernels DIR or run `junoproc kernels fetch`",
            ) from None
        raise KernelCoverageError(
            f"kernels do not cover {observer} -> {target.name} at {utc} UTC ({short})",
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
    except SpiceyError:
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
# the per-frame constants of the vectorised kernels
# ---------------------------------------------------------------------------------------
Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]


def _vec(v: np.ndarray) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _mat(m: np.ndarray) -> Mat3:
    return (_vec(m[0]), _vec(m[1]), _vec(m[2]))


@dataclass(frozen=True)
class FrameKernel:
    """Everything the per-point maths of one frame needs, folded into small constants.

    Notation: ``R`` J2000 -> cam, ``M`` J2000 -> body at the centre epoch ``et - lt``,
    ``Md`` = dM/dt, ``W = Md M^T`` the body's (antisymmetric) rotation-rate matrix,
    ``beta`` = observer velocity / c (J2000), ``P`` the target centre from the observer,
    ``Vc`` the target's velocity relative to the SSB, ``delta`` a point's extra light time
    (its epoch is ``et - lt - delta``). Values are Python floats (fast scalar ufunc path).
    """

    #: M R^T: apparent camera ray -> body frame (centre epoch).
    cam_to_body: Mat3
    #: W with entries below 1e-9 of its largest set to 0 (pole precession terms are
    #: ~1e-13 of the spin and skipped: the effect is < 1e-8 km).
    body_rate: Mat3
    #: R beta and 1 - |beta|^2 / 2 (second-order exact unaberration, error O(beta^4)).
    beta_cam: Vec3
    one_minus_half_beta2: float
    #: M beta and W M beta.
    beta_body: Vec3
    beta_body_rate: Vec3
    #: Observer relative to the target centre in the body frame at delta = 0, and
    #: d/d(delta) of it: obs(delta) = obs0 + delta * rate (first order).
    observer_body_km: Vec3
    observer_body_rate_km_s: Vec3
    #: Sun relative to the target centre, body frame: sun(delta) = sun0 - delta * W sun0.
    sun_body_km: Vec3
    sun_body_rate_km_s: Vec3
    #: |sun0| / c: scales the aberration of the Sun by a surface point's rotation velocity.
    sun_light_time_s: float
    #: R M^T, R Md^T, R P, R Vc: body point -> camera frame (inverse path).
    body_to_cam: Mat3
    body_to_cam_rate: Mat3
    centre_cam_km: Vec3
    centre_vel_cam_km_s: Vec3
    range_centre_km: float
    radii_km: Vec3

    @classmethod
    def build(cls, state: FrameState, rot_j2000_to_cam: np.ndarray, target: Target) -> FrameKernel:
        r = np.asarray(rot_j2000_to_cam, dtype=np.float64)
        m = state.rot_j2000_to_body
        md = state.drot_j2000_to_body
        w = md @ m.T
        w = np.where(np.abs(w) > 1e-9 * max(float(np.abs(w).max()), 1e-300), w, 0.0)
        beta = state.beta_j2000
        p = state.target_pos_j2000_km
        vc = state.target_vel_ssb_j2000_km_s
        sun_body = m @ state.sun_pos_j2000_km
        return cls(
            cam_to_body=_mat(m @ r.T), body_rate=_mat(w),
            beta_cam=_vec(r @ beta), one_minus_half_beta2=float(1.0 - 0.5 * (beta @ beta)),
            beta_body=_vec(m @ beta), beta_body_rate=_vec(w @ (m @ beta)),
            observer_body_km=_vec(-(m @ p)), observer_body_rate_km_s=_vec(m @ vc + md @ p),
            sun_body_km=_vec(sun_body), sun_body_rate_km_s=_vec(w @ sun_body),
            sun_light_time_s=float(np.linalg.norm(sun_body)) / C_KM_S,
            body_to_cam=_mat(r @ m.T), body_to_cam_rate=_mat(r @ md.T),
            centre_cam_km=_vec(r @ p), centre_vel_cam_km_s=_vec(r @ vc),
            range_centre_km=float(np.linalg.norm(p)), radii_km=target.radii_km,
        )


def _lin(coeffs: Sequence[float], xs: Sequence[np.ndarray], const: float = 0.0) -> np.ndarray | float:
    """sum(c_i * x_i) + const per point; zero coefficients are skipped (a float if all are)."""
    out: np.ndarray | None = None
    for c, x in zip(coeffs, xs, strict=True):
        if c == 0.0:
            continue
        if out is None:
            out = x * c
        else:
            out += x * c
    if out is None:
        return const
    if const != 0.0:
        out += const
    return out


def _dot(a: Sequence[np.ndarray | float], b: Sequence[np.ndarray | float]) -> np.ndarray:
    out = a[0] * b[0]
    out += a[1] * b[1]  # (a float + an array rebinds: still correct)
    out += a[2] * b[2]
    return out  # type: ignore[return-value]


def _lt_delta(t: np.ndarray, range_centre_km: float) -> np.ndarray:
    delta = t - range_centre_km
    delta *= 1.0 / C_KM_S
    return delta


#: Skip a tile when every ray passes the ellipsoid by more than this (squared, scaled
#: units: ~5e-4 of a radius, i.e. > 30 km, far beyond the per-point light-time shift).
_SKIP_MARGIN = 1e-3


@dataclass(frozen=True)
class _Hits:
    """Per-point results of the forward kernel (1-D float64 arrays, NaN where missed)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    t: np.ndarray
    delta: np.ndarray
    app: tuple[np.ndarray, np.ndarray, np.ndarray]  # M u_app (delta = 0), unit
    app_rate: tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]  # W M u_app
    obs: tuple[np.ndarray, np.ndarray, np.ndarray]  # observer per point (body, km)


def _intersect_soa(k: FrameKernel, rx: np.ndarray, ry: np.ndarray, rz: np.ndarray,
                   iterations: int, *, skip_if_all_miss: bool = False) -> _Hits | None:
    """Unit apparent camera rays (SoA) -> points on the target ellipsoid, body frame.

    Works in coordinates scaled by the radii (the ellipsoid becomes the unit sphere).
    Returns None when ``skip_if_all_miss`` and no ray comes near the target.
    """
    r = (rx, ry, rz)
    inv_r = tuple(1.0 / v for v in k.radii_km)
    # Unaberrate: u_geo = kk u_app - beta, kk = ub + sqrt(1 - beta^2 + ub^2), ub = u_app.beta.
    # kk = 1 + ub is exact to O(beta^2) ~ 1e-8 in the *length* of u_geo only: its direction
    # is off by ~1e-12 rad and the range by ~1 m.
    kk = _lin(k.beta_cam, r, 1.0)
    app = tuple(_lin(k.cam_to_body[i], r) for i in range(3))
    ks = tuple(kk * inv_r[i] for i in range(3))
    s = [app[i] * ks[i] for i in range(3)]  # scaled geometric direction, body frame
    for i in range(3):
        if k.beta_body[i] != 0.0:
            s[i] -= k.beta_body[i] * inv_r[i]
    o0 = tuple(k.observer_body_km[i] * inv_r[i] for i in range(3))
    c0 = o0[0] * o0[0] + o0[1] * o0[1] + o0[2] * o0[2] - 1.0
    a = _dot(s, s)
    b = _lin(o0, s)
    assert isinstance(b, np.ndarray)
    disc = b * b
    disc -= a * c0
    if skip_if_all_miss and not bool(np.any(disc + _SKIP_MARGIN * a > 0.0)):
        return None
    app_rate = tuple(_lin(k.body_rate[i], app) for i in range(3))
    o: tuple[np.ndarray | float, ...] = o0
    c: np.ndarray | float = c0
    delta = np.zeros_like(rx)
    if iterations:
        s0 = tuple(s)
        e = tuple(k.observer_body_rate_km_s[i] * inv_r[i] for i in range(3))
        oe2, ee = 2.0 * sum(o0[i] * e[i] for i in range(3)), sum(v * v for v in e)
        # d(scaled direction)/d(delta) = -(kk W app - W M beta) / radii
        f: list[np.ndarray | float] = []
        for i in range(3):
            fi: np.ndarray | float = app_rate[i] * ks[i] if not isinstance(app_rate[i], float) else 0.0
            if k.beta_body_rate[i] != 0.0:
                fi = fi - k.beta_body_rate[i] * inv_r[i]
            f.append(fi)
    for _ in range(iterations):
        # near root, with the tangent point standing in for rays that graze past the limb
        np.maximum(disc, 0.0, out=disc)
        np.sqrt(disc, out=disc)
        disc -= b
        delta = _lt_delta(np.divide(c, disc, out=disc), k.range_centre_km)
        # the corrected ray: observer and direction at the point's own epoch
        o = tuple(delta * e[i] + o0[i] for i in range(3))
        s = [s0[i] - delta * f[i] if not isinstance(f[i], float) or f[i] != 0.0 else s0[i]
             for i in range(3)]
        a = _dot(s, s)
        b = _dot(o, s)
        c = delta * ee  # |o0 + delta e|^2 - 1
        c += oe2
        c *= delta
        c += c0
        disc = b * b
        disc -= a * c
    # near root; NaN where there is none in front (disc < 0, or b > 0: both roots behind)
    np.sqrt(disc, out=disc)
    disc -= b
    np.sqrt(disc, out=disc)
    disc *= disc
    t = np.divide(c, disc, out=disc)
    radii = k.radii_km
    x, y, z = (((t * s[i] + o[i]) * radii[i]) for i in range(3))
    obs = tuple(np.broadcast_to(o[i] * radii[i], t.shape) for i in range(3))
    return _Hits(x=x, y=y, z=z, t=t, delta=delta, app=app, app_rate=app_rate, obs=obs)


def _backplanes_soa(k: FrameKernel, h: _Hits, ifov_rad: float, out: Mapping[str, np.ndarray]) -> None:
    """Angles, coordinates and range of hits, written into the (equally shaped) ``out`` views.

    Every plane is optional: only the names present in ``out`` are computed.
    """
    shape = next(iter(out.values())).shape

    def emit(name: str, value: np.ndarray, scale: float | None = None, offset: float | None = None
             ) -> None:
        view = out[name]
        value = value.reshape(shape)
        if scale is None:
            view[...] = value
        else:
            np.multiply(value, scale, out=view)
        if offset is not None:
            view += offset

    x, y, z, delta, t = h.x, h.y, h.z, h.delta, h.t
    if "hit" in out:
        np.greater(t.reshape(shape), 0.0, out=out["hit"])
    if "range_km" in out:
        emit("range_km", t)
    if "resolution_km_per_px" in out:
        emit("resolution_km_per_px", t, ifov_rad)
    radii = k.radii_km
    r2 = tuple(1.0 / (v * v) for v in radii)
    if {"incidence_deg", "emission_deg", "phase_deg"} & out.keys():
        # The observer direction (apparent) and the Sun are known in the body frame at the
        # centre epoch; the point and its normal at its own epoch, delta later: rotate the
        # point and normal by (1 + delta W) instead of rotating the two directions back.
        # The Sun as ``ilumin`` sees it: from the surface point, with stellar aberration
        # for the point's own velocity, which adds the rotation -W p (12.6 km/s at Jupiter's
        # equator, 0.0024 deg) to the centre's: to_sun = sun0 - p - (|sun0| / c) W p.
        w = k.body_rate
        pos = (x, y, z)
        wx = tuple(_lin(w[i], pos) for i in range(3))
        xr = tuple(pos[i] + delta * wx[i] if not isinstance(wx[i], float) else pos[i]
                   for i in range(3))
        sun_shift = delta + k.sun_light_time_s
        if all(w[i][j] == 0.0 or radii[i] == radii[j] for i in range(3) for j in range(3)):
            n = tuple(xr[i] * r2[i] for i in range(3))  # W commutes with diag(1 / radii^2)
        else:
            n0 = tuple(pos[i] * r2[i] for i in range(3))
            wn = tuple(_lin(w[i], n0) for i in range(3))
            n = tuple(n0[i] + delta * wn[i] if not isinstance(wn[i], float) else n0[i]
                      for i in range(3))
        n_norm = np.sqrt(_dot(n, n))
        to_sun = tuple(k.sun_body_km[i] - pos[i] - sun_shift * wx[i] if not isinstance(wx[i], float)
                       else k.sun_body_km[i] - pos[i] for i in range(3))
        sun_norm = np.sqrt(_dot(to_sun, to_sun))

        def angle(name: str, cos: np.ndarray, lower: bool, negate: bool) -> None:
            # |cos| may exceed 1 by rounding at 0 (and 180) deg
            np.minimum(cos, 1.0, out=cos) if not lower else np.clip(cos, -1.0, 1.0, out=cos)
            np.arccos(cos, out=cos)
            emit(name, cos, -_RAD2DEG if negate else _RAD2DEG, 180.0 if negate else None)

        if "incidence_deg" in out:
            cos = _dot(n, to_sun)
            cos /= n_norm * sun_norm
            angle("incidence_deg", cos, True, False)
        # emission and phase: the observer direction is -app (unit): arccos(-c) = 180 - arccos(c)
        if "emission_deg" in out:
            cos = _dot(n, h.app)
            cos /= n_norm
            np.negative(cos, out=cos)
            angle("emission_deg", cos, False, False)
        if "phase_deg" in out:
            cos = _dot(to_sun, h.app)
            cos /= sun_norm
            angle("phase_deg", cos, True, True)
    if {"lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg"} & out.keys():
        rho = x * x
        rho += y * y
        np.sqrt(rho, out=rho)
        tan_lat = z / rho
        if "lat_graphic_deg" in out:
            if radii[0] == radii[1]:  # spheroid: tan(graphic) = (a/c)^2 tan(centric)
                tan_g = tan_lat * (radii[0] * radii[0] / (radii[2] * radii[2]))
            else:
                tan_g = z * r2[2]
                tan_g /= np.hypot(x * r2[0], y * r2[1])
            emit("lat_graphic_deg", np.arctan(tan_g, out=tan_g), _RAD2DEG)
        if "lat_centric_deg" in out:
            emit("lat_centric_deg", np.arctan(tan_lat, out=tan_lat), _RAD2DEG)
        if "lon_east_deg" in out or "lon_west_deg" in out:
            # east longitude = 180 - 2 atan(y / (rho - x)), in (0, 360); 0/0 where y = 0 <= x
            # (and the poles): longitude 0 there, as SPICE's reclat
            den = rho - x
            half = np.divide(y, den, out=den)
            np.arctan(half, out=half)
            fix = None if half.all() or not np.isnan(half).any() else np.isnan(half) & ~np.isnan(x)
            if "lon_east_deg" in out:
                emit("lon_east_deg", half, -2.0 * _RAD2DEG, 180.0)
            if "lon_west_deg" in out:
                emit("lon_west_deg", half, 2.0 * _RAD2DEG, 180.0)
            if fix is not None and fix.any():
                for name in ("lon_east_deg", "lon_west_deg"):
                    if name in out:
                        out[name][fix.reshape(shape)] = 0.0


def _surface_to_cam_soa(k: FrameKernel, sx: np.ndarray, sy: np.ndarray, sz: np.ndarray,
                        iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Body-fixed points (SoA) -> apparent camera directions (NOT normalised) and range (km).

    In the camera frame the point seen from the observer at the point's own epoch is
    ``y = q - delta * dq`` with ``q = R P + R M^T s`` and ``dq = R Vc + R Md^T s``; the
    apparent direction is ``y / |y| + R beta``, here returned times ``|y|``.
    """
    src = (sx, sy, sz)
    q = tuple(_lin(k.body_to_cam[i], src, k.centre_cam_km[i]) for i in range(3))
    yv = q
    rng = np.sqrt(_dot(q, q))
    if iterations:
        dq = tuple(_lin(k.body_to_cam_rate[i], src, k.centre_vel_cam_km_s[i]) for i in range(3))
    for _ in range(iterations):
        delta = _lt_delta(rng, k.range_centre_km)
        yv = tuple(q[i] - delta * dq[i] for i in range(3))
        rng = np.sqrt(_dot(yv, yv))
    cx, cy, cz = (rng * k.beta_cam[i] + yv[i] for i in range(3))
    return cx, cy, cz, rng


def intersect_ellipsoid(origin: np.ndarray, direction: np.ndarray, radii: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Near intersection of rays ``origin + t * direction`` (..., 3) with the ellipsoid of
    ``radii`` centred at 0 (no light time, no aberration); returns (t, hit), t NaN on a miss."""
    radii = np.asarray(radii, dtype=np.float64)
    o = np.asarray(origin, dtype=np.float64) / radii
    d = np.asarray(direction, dtype=np.float64) / radii
    a = np.einsum("...i,...i->...", d, d)
    b = np.einsum("...i,...i->...", o, d)
    c = np.einsum("...i,...i->...", o, o) - 1.0
    disc = b * b - a * c
    hit = (disc >= 0.0) & (c > 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = c / (np.sqrt(np.where(hit, disc, np.nan)) - b)  # stable near root
    hit &= t > 0
    return np.where(hit, t, np.nan), hit


#: Former private name, kept for callers that import it.
_intersect_ellipsoid = intersect_ellipsoid


# ---------------------------------------------------------------------------------------
# forward: rays -> surface (public, array-of-vectors API)
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


def _unit_soa(ray: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[int, ...]]:
    ray = np.asarray(ray, dtype=np.float64)
    shape = ray.shape[:-1]
    flat = ray.reshape(-1, 3)
    inv = 1.0 / np.sqrt(np.einsum("ij,ij->i", flat, flat))
    return (flat[:, 0] * inv, flat[:, 1] * inv, flat[:, 2] * inv), shape


def intersect_rays(
    state: FrameState, rot_j2000_to_cam: np.ndarray, ray_cam: np.ndarray, target: Target,
    *, light_time_iterations: int = LIGHT_TIME_ITERATIONS,
) -> SurfacePoints:
    """Apparent camera rays (..., 3), any length, -> surface points on the target ellipsoid."""
    (rx, ry, rz), shape = _unit_soa(ray_cam)
    k = FrameKernel.build(state, rot_j2000_to_cam, target)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = _intersect_soa(k, rx, ry, rz, light_time_iterations)
        app = [h.app[i] - h.delta * h.app_rate[i] for i in range(3)]
    hit = h.t > 0
    return SurfacePoints(
        pos_body_km=np.stack([h.x, h.y, h.z], axis=-1).reshape(*shape, 3),
        observer_pos_body_km=np.stack(h.obs, axis=-1).reshape(*shape, 3),
        hit=hit.reshape(shape), range_km=h.t.reshape(shape),
        apparent_dir_body=np.stack(app, axis=-1).reshape(*shape, 3),
        delta_lt_s=np.where(hit, h.delta, 0.0).reshape(shape),
    )


# ---------------------------------------------------------------------------------------
# inverse: surface -> rays
# ---------------------------------------------------------------------------------------
def surface_to_cam(
    state: FrameState, rot_j2000_to_cam: np.ndarray, pos_body_km: np.ndarray,
    *, light_time_iterations: int = LIGHT_TIME_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed surface points (..., 3) -> apparent unit rays in JUNO_JUNOCAM, and range.

    The inverse of :func:`intersect_rays` (same light-time and aberration model; the
    round trip closes to < 1e-5 px). Needs no :class:`Target`: the point is given.
    """
    pos = np.asarray(pos_body_km, dtype=np.float64)
    shape = pos.shape[:-1]
    flat = pos.reshape(-1, 3)
    k = _inverse_kernel(state, rot_j2000_to_cam)
    cx, cy, cz, rng = _surface_to_cam_soa(k, flat[:, 0], flat[:, 1], flat[:, 2], light_time_iterations)
    ray = np.stack([cx, cy, cz], axis=-1)
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    return ray.reshape(*shape, 3), rng.reshape(shape)


def _inverse_kernel(state: FrameState, rot_j2000_to_cam: np.ndarray) -> FrameKernel:
    dummy = Target(name="", naif_id=0, frame="", radii_km=(1.0, 1.0, 1.0))
    return FrameKernel.build(state, rot_j2000_to_cam, dummy)


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
    (et - lt - delta), the Sun aberrated for the point's velocity; emission and phase
    use the apparent observer direction (differs from the geometric one by v/c, up to
    ~0.015 deg near perijove). The slow, array-of-vectors twin of the vectorised kernel
    behind :meth:`ImageGeometry.framelet_backplanes`.
    """
    pos = points.pos_body_km
    normal = pos / target.radii**2
    sun_j2000 = state.sun_pos_j2000_km
    sun_body = (sun_j2000 @ state.rot_j2000_to_body.T
                - points.delta_lt_s[..., None] * (sun_j2000 @ state.drot_j2000_to_body.T))
    # stellar aberration of the Sun for the surface point's rotation velocity (-W p)
    w = state.drot_j2000_to_body @ state.rot_j2000_to_body.T
    to_sun = sun_body - pos - (float(np.linalg.norm(sun_j2000)) / C_KM_S) * (pos @ w.T)
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


def _points_task(k: FrameKernel, rays: np.ndarray, sl: slice, out: Mapping[str, np.ndarray],
                 ifov_rad: float, iterations: int) -> Callable[[], None]:
    """A task computing points ``sl`` of flat SoA ``rays`` (3, n) into flat ``out`` arrays
    (backplanes, ``hit``, and optionally ``pos_x_km``, ``pos_y_km``, ``pos_z_km``)."""

    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for part in _chunks(sl.stop - sl.start):
                s = slice(sl.start + part.start, sl.start + part.stop)
                h = _intersect_soa(k, rays[0, s], rays[1, s], rays[2, s], iterations)
                assert h is not None
                _backplanes_soa(k, h, ifov_rad, {n: v[s] for n, v in out.items() if not n.startswith("pos_")})
                for name, value in (("pos_x_km", h.x), ("pos_y_km", h.y), ("pos_z_km", h.z)):
                    if name in out:
                        out[name][s] = value

    return run


def _framelet_task(k: FrameKernel, cam: CameraModel, out: Mapping[str, np.ndarray], ifov_rad: float,
                   iterations: int) -> Callable[[], None]:
    """A task computing a whole framelet into the 2-D (rows, samples) views ``out``, tile by
    tile; tiles whose rays all pass far from the target are filled with NaN / False."""

    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for tile in cam.framelet_ray_tiles:
                views = {name: view[tile.rows, tile.cols] for name, view in out.items()}
                h = _intersect_soa(k, tile.rays[0], tile.rays[1], tile.rays[2], iterations,
                                   skip_if_all_miss=True)
                if h is None:
                    for name, view in views.items():
                        view[...] = False if name == "hit" else np.nan
                else:
                    _backplanes_soa(k, h, ifov_rad, views)

    return run


def _inverse_task(k: FrameKernel, cam: CameraModel, pos: tuple[np.ndarray, np.ndarray, np.ndarray],
                  sl: slice, x_out: np.ndarray, y_out: np.ndarray, iterations: int
                  ) -> Callable[[], None]:
    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for part in _chunks(sl.stop - sl.start):
                s = slice(sl.start + part.start, sl.start + part.stop)
                cx, cy, cz, _ = _surface_to_cam_soa(k, pos[0][s], pos[1][s], pos[2][s], iterations)
                x_out[s], y_out[s] = cam.cam_to_px_xyz(cx, cy, cz)

    return run


def _split(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of range(n), multiples of the chunk size."""
    per = -(-n // max(1, parts))
    per = -(-per // CHUNK_POINTS) * CHUNK_POINTS
    return [slice(i, min(i + per, n)) for i in range(0, n, per)] or [slice(0, 0)]


# ---------------------------------------------------------------------------------------
# a whole image
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelGeometry:
    """Geometry of one pixel (like ISIS campt); NaN fields where the ray misses."""

    x_px: float
    y_px: float
    frame: int
    band: str
    et: float
    utc: str
    hit: bool
    lat_centric_deg: float
    lat_graphic_deg: float
    lon_east_deg: float
    lon_west_deg: float
    incidence_deg: float
    emission_deg: float
    phase_deg: float
    range_km: float
    resolution_km_per_px: float
    #: Apparent unit ray (observer -> scene) in J2000.
    ray_j2000: tuple[float, float, float]
    target: str = ""
    pos_body_km: tuple[float, float, float] = (float("nan"),) * 3

    def to_json(self) -> dict[str, object]:
        """Flat JSON-ready record (NaN -> None); keys as in ``junoproc locate --json``."""

        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else float(v)

        return {
            "x": self.x_px, "y": self.y_px, "frame": self.frame, "band": self.band,
            "et": self.et, "utc": self.utc, "hit": self.hit, "target": self.target,
            "lat_centric": num(self.lat_centric_deg), "lat_graphic": num(self.lat_graphic_deg),
            "lon_east": num(self.lon_east_deg), "lon_west": num(self.lon_west_deg),
            "incidence": num(self.incidence_deg), "emission": num(self.emission_deg),
            "phase": num(self.phase_deg), "range_km": num(self.range_km),
            "resolution_km_per_px": num(self.resolution_km_per_px),
            "ray_j2000": [float(v) for v in self.ray_j2000],
            "pos_body_km": [num(v) for v in self.pos_body_km],
        }


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
    light_time_iterations: int = LIGHT_TIME_ITERATIONS

    @property
    def n_frames(self) -> int:
        return len(self.states)

    @property
    def frame_ets(self) -> np.ndarray:
        return np.array([s.et for s in self.states])

    def ifov_rad(self, band: str) -> float:
        cam = self.cameras[band]
        return cam.sampling_factor / cam.focal_px

    def frame_kernel(self, frame: int) -> FrameKernel:
        """The per-frame constants of the vectorised kernels (cheap: a few 3x3 products)."""
        return FrameKernel.build(self.states[frame], self.rotations_j2000_to_cam[frame], self.target)

    def observer_pos_body_km(self, frame: int) -> np.ndarray:
        """Observer relative to the target centre in the body frame (for :func:`is_visible`)."""
        return self.states[frame].observer_pos_body_km

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
                              self.target, light_time_iterations=self.light_time_iterations)

    def framelet_backplanes(self, frame: int, band: str,
                            x_px: np.ndarray | None = None, y_px: np.ndarray | None = None
                            ) -> Backplanes:
        """Backplanes (float64) of a framelet's pixel centres or of given pixel coordinates."""
        cam = self.cameras[band]
        if x_px is None or y_px is None:
            rays = cam.framelet_unit_rays_xyz
            shape = cam.shape
        else:
            x_px, y_px = np.broadcast_arrays(np.asarray(x_px, np.float64), np.asarray(y_px, np.float64))
            shape = x_px.shape
            (rx, ry, rz), _ = _unit_soa(cam.px_to_cam(x_px, y_px))
            rays = np.stack([rx, ry, rz])
        n = rays.shape[1]
        names = (*BACKPLANE_NAMES, "pos_x_km", "pos_y_km", "pos_z_km")
        out = {name: np.empty(n, np.float64) for name in names}
        out["hit"] = np.empty(n, bool)
        _points_task(self.frame_kernel(frame), rays, slice(0, n), out, self.ifov_rad(band),
                     self.light_time_iterations)()
        pos = np.stack([out.pop("pos_x_km"), out.pop("pos_y_km"), out.pop("pos_z_km")], axis=-1)
        return Backplanes(pos_body_km=pos.reshape(*shape, 3),
                          **{name: v.reshape(shape) for name, v in out.items()})

    def surface_to_px(self, frame: int, band: str, pos_body_km: np.ndarray,
                      *, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Body-fixed points (..., 3) -> framelet pixel coordinates (x_px, y_px) of ``band``.

        Points on the far side of the target are not masked here; combine with
        :func:`is_visible` and :meth:`observer_pos_body_km`. Points behind the camera
        give NaN.
        """
        pos = np.asarray(pos_body_km, dtype=np.float64)
        shape = pos.shape[:-1]
        flat = pos.reshape(-1, 3)
        x, y = self.surface_to_px_xyz(frame, band, flat[:, 0], flat[:, 1], flat[:, 2], workers=workers)
        return x.reshape(shape), y.reshape(shape)

    def surface_to_px_xyz(self, frame: int, band: str, x_km: np.ndarray, y_km: np.ndarray,
                          z_km: np.ndarray, *, workers: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`surface_to_px` for separate body-frame x, y, z arrays (the fast path)."""
        x_km, y_km, z_km = np.broadcast_arrays(
            np.asarray(x_km, np.float64), np.asarray(y_km, np.float64), np.asarray(z_km, np.float64))
        shape = x_km.shape
        pos = (x_km.reshape(-1), y_km.reshape(-1), z_km.reshape(-1))
        n = pos[0].size
        x_out = np.empty(n, np.float64)
        y_out = np.empty(n, np.float64)
        k = self.frame_kernel(frame)
        cam = self.cameras[band]
        tasks = [_inverse_task(k, cam, pos, sl, x_out, y_out, self.light_time_iterations)
                 for sl in _split(n, _workers(workers) if n > 4 * CHUNK_POINTS else 1)]
        _run_parallel(tasks, workers)
        return x_out.reshape(shape), y_out.reshape(shape)

    def ray_j2000(self, frame: int, band: str, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Apparent unit rays in J2000 of framelet pixel coordinates."""
        ray = self.cameras[band].px_to_cam(x_px, y_px)
        ray = ray / np.linalg.norm(ray, axis=-1, keepdims=True)
        return ray @ self.rotations_j2000_to_cam[frame]

    def all_backplanes(self, names: Sequence[str] | None = None, *, workers: int | None = None
                       ) -> dict[str, np.ndarray]:
        """Every backplane for every framelet: float32 arrays (n_frames, n_filters, rows, samples),
        NaN where the ray misses, plus ``hit`` (bool).

        ``names`` limits the planes computed (default :data:`BACKPLANE_NAMES`); the work is
        spread over ``workers`` threads (default: the CPUs this process may use).
        """
        names = tuple(BACKPLANE_NAMES if names is None else names)
        unknown = sorted(set(names) - set(BACKPLANE_NAMES) - {"hit"})
        if unknown:
            raise ValueError(f"unknown backplanes {unknown}; choose from {BACKPLANE_NAMES}")
        filters = self.meta.filters
        rows, samples = self.cameras[filters[0]].shape
        shape = (self.n_frames, len(filters), rows, samples)
        out = {name: np.empty(shape, np.float32) for name in names if name != "hit"}
        out["hit"] = np.empty(shape, bool)
        tasks = []
        for f in range(self.n_frames):
            k = self.frame_kernel(f)
            for b, band in enumerate(filters):
                views = {name: arr[f, b] for name, arr in out.items()}
                tasks.append(_framelet_task(k, self.cameras[band], views, self.ifov_rad(band),
                                            self.light_time_iterations))
        _run_parallel(tasks, workers)
        return out

    def locate(self, frame: int, band: str, x_px: Sequence[float], y_px: Sequence[float]
               ) -> list[PixelGeometry]:
        """Geometry of individual pixels (continuous framelet coordinates)."""
        return _locate(self.states[frame], self.rotations_j2000_to_cam[frame], self.target,
                       self.cameras[band], frame, x_px, y_px, self.light_time_iterations)


def _locate(state: FrameState, rot: np.ndarray, target: Target, cam: CameraModel, frame: int,
            x_px: Sequence[float], y_px: Sequence[float], iterations: int) -> list[PixelGeometry]:
    x = np.asarray(x_px, np.float64).reshape(-1)
    y = np.asarray(y_px, np.float64).reshape(-1)
    (rx, ry, rz), _ = _unit_soa(cam.px_to_cam(x, y))
    k = FrameKernel.build(state, rot, target)
    n = x.size
    names = (*BACKPLANE_NAMES, "pos_x_km", "pos_y_km", "pos_z_km")
    out = {name: np.empty(n, np.float64) for name in names}
    out["hit"] = np.empty(n, bool)
    _points_task(k, np.stack([rx, ry, rz]), slice(0, n), out, cam.sampling_factor / cam.focal_px,
                 iterations)()
    ray_j2000 = np.stack([rx, ry, rz], axis=-1) @ rot
    utc = _et_to_utc(state.et)
    return [
        PixelGeometry(
            x_px=float(x[i]), y_px=float(y[i]), frame=frame, band=cam.band, et=state.et, utc=utc,
            hit=bool(out["hit"][i]), target=target.name,
            ray_j2000=(float(ray_j2000[i, 0]), float(ray_j2000[i, 1]), float(ray_j2000[i, 2])),
            pos_body_km=(float(out["pos_x_km"][i]), float(out["pos_y_km"][i]), float(out["pos_z_km"][i])),
            **{name: float(out[name][i]) for name in BACKPLANE_NAMES},
        )
        for i in range(n)
    ]


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


def _check_frame_band(meta: ProductMeta, frame: int, band: str) -> str:
    from .errors import ProductError

    band = band.upper()
    if band not in meta.filters:
        raise ProductError(f"band {band} is not in FILTER_NAME {list(meta.filters)}",
                           path=meta.metadata_path or None, hint="choose one of the product's bands")
    if not 0 <= int(frame) < meta.n_frames:
        raise ProductError(f"frame {frame} outside 0..{meta.n_frames - 1}",
                           path=meta.metadata_path or None, hint="frames are 0-based")
    return band


def locate_pixels(
    meta: ProductMeta, attitude: Attitude, frame: int, band: str,
    x_px: Sequence[float], y_px: Sequence[float], *, timing: FrameTiming | None = None,
    target: Target | None = None,
) -> list[PixelGeometry]:
    """Geometry of pixels of one framelet (SPICE for that frame only), like ISIS campt.

    ``frame`` is 0-based; ``x_px, y_px`` are continuous framelet coordinates (origin at
    the upper-left corner, pixel centres at index + 0.5, product pixels).
    """
    band = _check_frame_band(meta, frame, band)
    target = target or Target.from_name(meta.target, path=meta.metadata_path or None)
    timing = timing or FrameTiming.for_product(meta)
    cam = CameraModel.for_product(meta, band)
    et = float(timing.frame_et(int(frame)))
    state = frame_state(target, et)
    rot = attitude.rot_j2000_to_cam(et)
    return _locate(state, rot, target, cam, int(frame), x_px, y_px, LIGHT_TIME_ITERATIONS)


# ---------------------------------------------------------------------------------------
# locate: pixels of a product, from files (the library behind `junoproc locate`)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocateReport:
    """What :func:`locate_product` found, and with which kernels and attitude."""

    product_id: str
    frame: int
    band: str
    #: "ck" or "pointing solution <file> (<method>)".
    attitude: str
    kernel_names: tuple[str, ...]
    pixels: tuple[PixelGeometry, ...]


def read_product_meta(path: str | os.PathLike[str]) -> ProductMeta:
    """The metadata of a product from any form: ``-Metadata.json``, PDS3 ``.LBL``, a raw
    PNG / IMG (its metadata found nearby), a zip or a folder holding one product.

    A metadata file is read on its own (no pixels needed).
    """
    from pathlib import Path

    from . import products
    from .errors import ProductError

    p = Path(path)
    if not p.exists():
        raise ProductError("no such file or folder", path=p,
                           hint="pass a -Metadata.json, PDS3 .LBL, product file or folder")
    lower = p.name.lower()
    if p.is_file() and lower.endswith((".json", ".lbl")):
        data = products.read_bytes(products.Location(str(p)), limit=products.MAX_METADATA_BYTES)
        reader = products.read_site_json if lower.endswith(".json") else products.read_pds3_label
        return products.parse_metadata(reader(data, path=p), path=str(p))
    if p.is_dir() or lower.endswith(".zip"):
        entries = [e for e in products.find_products(p) if e.problem is None and e.metadata is not None]
        ids = sorted({e.product_id for e in entries})
        if len(ids) == 1:
            return products.load_metadata(entries[0])
        raise ProductError(
            "holds no product metadata" if not ids else f"holds {len(ids)} products ({', '.join(ids[:3])})",
            path=p, hint="pass one product's -Metadata.json or PDS3 .LBL",
        )
    return products.load(p).meta


def locate_product(
    meta_path: str | os.PathLike[str], frame: int, band: str, pixels: Sequence[tuple[float, float]],
    *, kernel_dirs: Sequence[str | os.PathLike[str]] = (),
    pointing_path: str | os.PathLike[str] | None = None,
) -> LocateReport:
    """Geometry of pixels of one framelet of a product, from files (like ISIS campt).

    Kernels: the folders ``kernel_dirs`` (default: ``--kernels`` precedence of
    :func:`junoproc.kernels.resolve_kernel_dir`), selected by coverage of the frame's time
    and loaded only for the call. Attitude: the pointing solution ``pointing_path`` when
    given (its attitude and fitted timing), else the CK when the kernels cover the time,
    else a :class:`KernelCoverageError` saying how to get one.
    """
    from . import kernels

    meta = read_product_meta(meta_path)
    band = _check_frame_band(meta, frame, band)
    dirs: list[str | os.PathLike[str]] = list(kernel_dirs) or [kernels.resolve_kernel_dir(None)[0]]
    solution = None
    if pointing_path is not None:
        from .pointing import load_solution

        solution = load_solution(pointing_path, meta)
    with kernels.load_generic_kernels(dirs):
        timing = solution.timing if solution is not None else FrameTiming.for_product(meta)
        frame_et = float(timing.frame_et(int(frame)))
    kset = kernels.select_kernels(dirs, frame_et, frame_et, meta.target, need_ck=False)
    with kernels.furnished(kset), _sun_epoch_spks(kset, dirs, meta.target, frame_et) as extra:
        if solution is not None:
            attitude: Attitude = solution.attitude
            source = f"pointing solution {pointing_path} ({solution.method})"
        elif kset.ck_covered:
            attitude, source = CkAttitude(), "ck"
        else:
            raise KernelCoverageError(
                f"no attitude for {meta.product_id} at {_et_to_utc(frame_et)} UTC: no CK covers it",
                path=meta.metadata_path or None,
                hint="solve it from the limb (`junoproc pointing PRODUCT -o sol.json`, then "
                "--pointing sol.json) or fetch the Juno CK (`junoproc kernels fetch`)",
            )
        xs = [float(px[0]) for px in pixels]
        ys = [float(px[1]) for px in pixels]
        found = locate_pixels(meta, attitude, int(frame), band, xs, ys, timing=timing)
    return LocateReport(product_id=meta.product_id, frame=int(frame), band=band, attitude=source,
                        kernel_names=tuple(f.name for f in (*kset.files, *extra)), pixels=tuple(found))


@contextlib.contextmanager
def _sun_epoch_spks(kset: object, dirs: Sequence[str | os.PathLike[str]], target: str, et: float
                    ) -> Iterator[tuple]:
    """Also load the SPKs that cover the Sun where the target saw it (~45 min earlier at
    Jupiter): ``ilumin``'s illumination needs it, and sliced kernels (NAIF's, or the PJ01
    sample) carry a separate segment for it that selection by the image's time leaves out."""
    from dataclasses import replace

    from . import kernels


    def sun_light_time(correction: str) -> float | None:
        try:
            return float(spiceypy.spkpos("SUN", et, "J2000", correction, target)[1])
        except SpiceyError:
            return None

    lt_sun = sun_light_time("NONE")
    if lt_sun is None or sun_light_time("LT+S") is not None:
        yield ()  # already covered, or a gap that frame_state reports
        return
    sun_et = et - lt_sun
    loaded = {f.path for f in kset.files}  # type: ignore[attr-defined]
    extra = tuple(f for f in kernels.find_kernel_files(dirs) if f.kind == "spk" and f.path not in loaded
                  and f.intersects(sun_et - 300.0, sun_et + 300.0))
    if not extra:
        yield ()
        return
    with kernels.furnished(replace(kset, files=extra)):  # type: ignore[type-var]
        yield extra
