"""Per-framelet SPICE geometry and per-pixel backplanes.

SPICE is called once per *frame* (all framelets of one frame share the instant); the
per-pixel work (ray-ellipsoid intersection, angles) is numpy on (3, n) arrays: each frame's
rotations and velocities are folded into a few 3x3 matrices (:class:`FrameKernel`) applied
with matmul, the unit rays of a band are computed once and cut into cache-sized tiles
(:attr:`CameraModel.framelet_ray_tiles`), tiles that see only sky are skipped, partly-sky
tiles are computed only for the rays that come near the target, and the framelets are
spread over threads.

Aberration model (matches spiceypy ``sincpt``/``ilumin`` with ``LT+S``):

* Camera rays are *apparent* directions. Stellar aberration (observer velocity ``v``
  relative to the solar-system barycentre, ``beta = v / c``) is removed by inverting
  the classical formula ``u_app = normalise(u + beta)``.
* The target is placed where it was when the light left it: the centre at ``et - lt``
  (one ``spkezr`` per frame) and, per surface point, a first-order correction for that
  point's own extra light time ``delta = (range_point - range_centre) / c`` (up to
  ~0.25 s near perijove): the target's barycentric velocity and the body frame's rotation
  over ``delta``. ``delta`` is iterated ``light_time_iterations`` times (default 1; more
  change nothing measurable). Positions agree with ``sincpt`` to < 1e-4 px in angle
  (3e-5 px measured), < 6e-4 px as a distance on the surface at grazing emission.
* Emission and phase use the apparent observer->point direction; incidence and phase
  the Sun as ``ilumin`` sees it: from the surface point at the point's epoch, with
  stellar aberration for the point's own velocity (the target's plus the rotation,
  12.6 km/s at Jupiter's equator: a 0.0024 deg effect). Angles agree with ``ilumin``
  to < 5e-5 deg.

Frames and units are in the names: ``_j2000``, ``_body`` (IAU_<TARGET>), ``_cam``
(JUNO_JUNOCAM), ``_km``, ``_deg``. Latitudes are planetocentric unless named
``graphic``; longitudes are east unless named ``west`` (System III for Jupiter).
"""

from __future__ import annotations

import contextlib
import math
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
from .runtime import in_forked_copy
from .runtime import workers as _workers

#: The observing spacecraft.
OBSERVER = "JUNO"
#: Speed of light from SPICE (km/s), not a copied constant.
C_KM_S = float(spiceypy.clight())
#: Points per chunk of the vectorised kernels: ~40 float64 temporaries stay in L2/L3.
CHUNK_POINTS = 8192
#: A tile whose rays come near the target for fewer than this fraction is computed only
#: for those rays (gathered, then scattered back); a tile with none is skipped.
COMPACT_BELOW = 0.85
#: Default number of per-point light-time corrections (1 leaves ~1e-5 px).
LIGHT_TIME_ITERATIONS = 1
_RAD2DEG = 180.0 / np.pi


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
        _not_in_forked_copy()
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


def _not_in_forked_copy() -> None:
    """SPICE reads its kernel files through descriptors a forked copy shares with its
    parent (one file offset for both): the ephemeris and attitude are read before work is
    handed to copies (:func:`junoproc.runtime.fork_map`), never in them."""
    if in_forked_copy():
        raise RuntimeError("SPICE called in a forked copy; compute the frame states before forking")


def frame_state(target: Target, et: float, observer: str = OBSERVER) -> FrameState:
    """SPICE calls for one frame time; a coverage gap is a KernelCoverageError."""
    _not_in_forked_copy()
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


def norm3(v: np.ndarray) -> np.ndarray:
    """Euclidean length of vectors (..., 3) along the last axis: ``np.linalg.norm(v, axis=-1)``,
    3-6x faster (numpy reduces a last axis of 3 element by element)."""
    return np.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2])


# ---------------------------------------------------------------------------------------
# stellar aberration (classical, exactly invertible)
# ---------------------------------------------------------------------------------------
def aberrate(u_geo: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Geometric unit directions (..., 3) -> apparent: normalise(u + v/c)."""
    v = u_geo + beta
    return v / norm3(v)[..., None]


def unaberrate(u_app: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`aberrate`: find unit u with normalise(u + beta) = u_app."""
    u_app = u_app / norm3(u_app)[..., None]
    ub = u_app @ beta
    k = ub + np.sqrt(ub * ub - float(beta @ beta) + 1.0)
    return k[..., None] * u_app - beta


# ---------------------------------------------------------------------------------------
# the per-frame constants of the vectorised kernels
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameKernel:
    """Everything the per-point maths of one frame needs, folded into small matrices.

    Notation: ``R`` J2000 -> cam, ``M`` J2000 -> body at the centre epoch ``et - lt``,
    ``Md`` = dM/dt, ``W = Md M^T`` the body's (antisymmetric) rotation-rate matrix,
    ``S = diag(1 / radii)`` (the ellipsoid becomes the unit sphere), ``beta`` = observer
    velocity / c (J2000), ``P`` the target centre from the observer, ``Vc`` the target's
    velocity relative to the SSB, ``delta`` a point's extra light time (its epoch is
    ``et - lt - delta``). float64 arrays: vectors (3,), matrices (3, 3).
    """

    #: A = M R^T: apparent camera ray -> body frame (centre epoch), and S A.
    cam_to_body: np.ndarray
    cam_to_body_scaled: np.ndarray
    #: W, and S W S^-1 (the rate of scaled directions).
    body_rate: np.ndarray
    body_rate_scaled: np.ndarray
    #: (W[0, 1], W[1, 0]) and the same of S W S^-1 when the body spins about its z axis
    #: (the other entries of W, pole precession, below 1e-9 of the spin: < 1e-8 km), else None.
    spin_z: tuple[float, float] | None
    spin_z_scaled: tuple[float, float] | None
    #: R beta and S M beta (unaberration: u_geo = (1 + u_app.beta) u_app - beta, exact to
    #: O(beta^2) ~ 1e-8 in the length of u_geo only; its direction to ~1e-12 rad).
    beta_cam: np.ndarray
    beta_body_scaled: np.ndarray
    #: Observer relative to the target centre, body frame, scaled: o(delta) = o0 + delta e.
    observer_scaled: np.ndarray
    observer_rate_scaled: np.ndarray
    #: Sun relative to the target centre, body frame (centre epoch), and |sun| / c (the
    #: Sun's aberration for a surface point's rotation velocity -W p).
    sun_body_km: np.ndarray
    sun_light_time_s: float
    #: R M^T, R Md^T, R P, R Vc: body point -> camera frame (inverse path).
    body_to_cam: np.ndarray
    body_to_cam_rate: np.ndarray
    centre_cam_km: np.ndarray
    centre_vel_cam_km_s: np.ndarray
    range_centre_km: float
    radii_km: np.ndarray
    inv_radii: np.ndarray
    #: Rays passing the ellipsoid farther than this are misses whatever their light time:
    #: ``disc / a > -skip_margin`` keeps rays whose closest approach is within ~skip_margin/2
    #: radii, 3x the largest light-time shift of a point, |delta| (|Vc| + omega R) with
    #: |delta| <= R / c (6 km at Jupiter, 0.4 km at Io).
    skip_margin: float = 1e-3

    @classmethod
    def build(cls, state: FrameState, rot_j2000_to_cam: np.ndarray, target: Target) -> FrameKernel:
        r = np.asarray(rot_j2000_to_cam, dtype=np.float64)
        m = state.rot_j2000_to_body
        md = state.drot_j2000_to_body
        w = md @ m.T
        beta = state.beta_j2000
        p = state.target_pos_j2000_km
        vc = state.target_vel_ssb_j2000_km_s
        radii = target.radii
        inv_r = 1.0 / radii
        a = m @ r.T
        sun_body = m @ state.sun_pos_j2000_km
        w_scaled = inv_r[:, None] * w * radii[None, :]
        tiny = 1e-9 * float(np.abs(w).max())
        spin = bool(np.all(np.abs(w[[0, 0, 1, 1, 2, 2, 2], [0, 2, 1, 2, 0, 1, 2]]) <= tiny))
        return cls(
            cam_to_body=a, cam_to_body_scaled=inv_r[:, None] * a,
            body_rate=w, body_rate_scaled=w_scaled,
            spin_z=(float(w[0, 1]), float(w[1, 0])) if spin else None,
            spin_z_scaled=(float(w_scaled[0, 1]), float(w_scaled[1, 0])) if spin else None,
            beta_cam=r @ beta, beta_body_scaled=inv_r * (m @ beta),
            observer_scaled=inv_r * -(m @ p), observer_rate_scaled=inv_r * (m @ vc + md @ p),
            sun_body_km=sun_body, sun_light_time_s=float(np.linalg.norm(sun_body)) / C_KM_S,
            body_to_cam=r @ m.T, body_to_cam_rate=r @ md.T,
            centre_cam_km=r @ p, centre_vel_cam_km_s=r @ vc,
            range_centre_km=float(np.linalg.norm(p)), radii_km=radii, inv_radii=inv_r,
            skip_margin=_skip_margin(target.radii_km, float(np.linalg.norm(vc)), float(np.abs(w).max())),
        )


def _skip_margin(radii_km: Sequence[float], target_speed_km_s: float, spin_rad_s: float) -> float:
    r_max, r_min = max(radii_km), min(radii_km)
    shift_km = (r_max / C_KM_S) * (target_speed_km_s + spin_rad_s * r_max)
    return max(2.0 * 3.0 * shift_km / r_min, 1e-4)


def _plus_rate(w: np.ndarray, spin: tuple[float, float] | None, base: np.ndarray, v: np.ndarray,
               coef: np.ndarray | float) -> np.ndarray:
    """``base + coef * (w @ v)`` for (3, n) arrays, ``coef`` per point or a number; ``spin``:
    w's (0, 1) and (1, 0) entries when those are its only ones (two products, no matmul)."""
    if spin is None:
        out = w @ v
        out *= coef
        out += base
        return out
    out = np.empty_like(base)
    for row, src, rate in ((0, 1, spin[0]), (1, 0, spin[1])):
        np.multiply(v[src], rate, out=out[row])
        out[row] *= coef
        out[row] += base[row]
    out[2] = base[2]
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-point dot product of (3, n) arrays."""
    return np.einsum("in,in->n", a, b)


def _lt_delta(t: np.ndarray, range_centre_km: float) -> np.ndarray:
    delta = t - range_centre_km
    delta *= 1.0 / C_KM_S
    return delta


@dataclass(frozen=True)
class _Hits:
    """Per-point results of the forward kernel (float64, NaN where missed)."""

    pos: np.ndarray    # (3, n) surface point, body frame at the point's epoch (km)
    t: np.ndarray      # (n,) range (km)
    delta: np.ndarray  # (n,) extra light time (s)
    app: np.ndarray    # (3, n) M u_app: apparent direction, body frame at the centre epoch
    obs: np.ndarray    # (3, n) or (3, 1): observer per point (body, km)
    #: Which of the input rays these are (None: all of them, in order).
    index: np.ndarray | None = None


def _intersect_soa(k: FrameKernel, rays: np.ndarray, iterations: int, *,
                   compact_below: float | None = None) -> _Hits | None:
    """Unit apparent camera rays (3, n) -> points on the target ellipsoid, body frame.

    Works in coordinates scaled by the radii (the ellipsoid becomes the unit sphere).
    With ``compact_below``: returns None when no ray comes near the target, and continues
    with the rays that do (``_Hits.index``) when they are fewer than that fraction.
    """
    kk = k.beta_cam @ rays
    kk += 1.0
    app = k.cam_to_body @ rays
    s = app * k.inv_radii[:, None]  # scaled geometric direction: kk S A r - S M beta
    s *= kk
    s -= k.beta_body_scaled[:, None]
    o0 = k.observer_scaled
    c0 = float(o0 @ o0 - 1.0)
    a = _dot(s, s)
    b = o0 @ s
    disc = b * b
    disc -= a * c0
    index = None
    if compact_below is not None:
        near = disc + k.skip_margin * a > 0.0
        n_near = int(np.count_nonzero(near))
        if n_near == 0:
            return None
        if n_near < compact_below * near.size:
            index = np.flatnonzero(near)
            app, s, b, disc = app[:, index], s[:, index], b[index], disc[index]
    o: np.ndarray = o0[:, None]
    c: np.ndarray | float = c0
    delta = np.zeros_like(b)
    if iterations:
        s0 = s
        e = k.observer_rate_scaled
        oe2, ee = 2.0 * float(o0 @ e), float(e @ e)
    for _ in range(iterations):
        # near root, with the tangent point standing in for rays that graze past the limb
        np.maximum(disc, 0.0, out=disc)
        np.sqrt(disc, out=disc)
        disc -= b
        delta = _lt_delta(np.divide(c, disc, out=disc), k.range_centre_km)
        # the corrected ray: observer and direction at the point's own epoch
        o = np.multiply.outer(e, delta)
        o += o0[:, None]
        s = _plus_rate(k.body_rate_scaled, k.spin_z_scaled, s0, s0, -delta)  # the body's rotation
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
    pos = s * t
    pos += o
    pos *= k.radii_km[:, None]
    return _Hits(pos=pos, t=t, delta=delta, app=app, obs=o * k.radii_km[:, None], index=index)


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

    pos, delta, t = h.pos, h.delta, h.t
    x, y, z = pos
    if "hit" in out:
        np.greater(t.reshape(shape), 0.0, out=out["hit"])
    if "range_km" in out:
        emit("range_km", t)
    if "resolution_km_per_px" in out:
        emit("resolution_km_per_px", t, ifov_rad)
    radii = k.radii_km
    if {"incidence_deg", "emission_deg", "phase_deg"} & out.keys():
        # The observer direction (apparent) and the Sun are known in the body frame at the
        # centre epoch, the point and its normal at the point's epoch, delta later: rotate
        # the point and normal by (1 + delta W) rather than the two directions back.
        # The Sun as ``ilumin`` sees it: from the surface point, aberrated for the point's own
        # velocity, the target's plus the rotation -W p (12.6 km/s at Jupiter's equator,
        # 0.0024 deg): to_sun = sun0 - p - (|sun0| / c) W p.
        inv_r2 = (k.inv_radii * k.inv_radii)[:, None]
        if radii[0] == radii[1] and k.spin_z is not None:  # W commutes with diag(1 / r^2)
            normal = _plus_rate(k.body_rate, k.spin_z, pos, pos, delta)
            normal *= inv_r2
        else:  # rotate the normal itself
            n0 = pos * inv_r2
            normal = _plus_rate(k.body_rate, k.spin_z, n0, n0, delta)
        n_norm = np.sqrt(_dot(normal, normal))
        to_sun = _plus_rate(k.body_rate, k.spin_z, pos, pos, delta + k.sun_light_time_s)
        np.subtract(k.sun_body_km[:, None], to_sun, out=to_sun)
        sun_norm = np.sqrt(_dot(to_sun, to_sun))

        def angle(name: str, cos: np.ndarray, both_sides: bool, scale: float, offset: float | None) -> None:
            # |cos| may exceed 1 by rounding at 0 (and 180) deg
            if both_sides:
                np.clip(cos, -1.0, 1.0, out=cos)
            else:
                np.minimum(cos, 1.0, out=cos)
            np.arccos(cos, out=cos)
            emit(name, cos, scale, offset)

        if "incidence_deg" in out:
            cos = _dot(normal, to_sun)
            cos /= n_norm * sun_norm
            angle("incidence_deg", cos, True, _RAD2DEG, None)
        # emission and phase: the observer seen from the point is -app (unit)
        if "emission_deg" in out:
            cos = _dot(normal, h.app)
            cos /= n_norm
            np.negative(cos, out=cos)
            angle("emission_deg", cos, False, _RAD2DEG, None)
        if "phase_deg" in out:  # arccos(-c) = 180 - arccos(c)
            cos = _dot(to_sun, h.app)
            cos /= sun_norm
            angle("phase_deg", cos, True, -_RAD2DEG, 180.0)
    if {"lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg"} & out.keys():
        rho = x * x
        rho += y * y
        np.sqrt(rho, out=rho)
        tan_lat = z / rho
        if "lat_graphic_deg" in out:
            if radii[0] == radii[1]:  # spheroid: tan(graphic) = (a/c)^2 tan(centric)
                tan_g = tan_lat * float(radii[0] * radii[0] / (radii[2] * radii[2]))
            else:
                tan_g = z / (radii[2] * radii[2])
                tan_g /= np.hypot(x / (radii[0] * radii[0]), y / (radii[1] * radii[1]))
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


def _surface_to_cam_soa(k: FrameKernel, pos: np.ndarray, iterations: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed points (3, n) -> apparent camera directions (3, n; NOT normalised) and
    range (km).

    In the camera frame the point seen from the observer at the point's own epoch is
    ``y = q - delta * dq`` with ``q = R P + R M^T s`` and ``dq = R Vc + R Md^T s``; the
    apparent direction is ``y / |y| + R beta``, here returned times ``|y|``.
    """
    q = k.body_to_cam @ pos
    q += k.centre_cam_km[:, None]
    yv = q
    rng = np.sqrt(_dot(q, q))
    if iterations:
        dq = k.body_to_cam_rate @ pos
        dq += k.centre_vel_cam_km_s[:, None]
    for _ in range(iterations):
        delta = _lt_delta(rng, k.range_centre_km)
        yv = dq * delta
        np.subtract(q, yv, out=yv)
        rng = np.sqrt(_dot(yv, yv))
    cam = np.multiply.outer(k.beta_cam, rng)
    cam += yv
    return cam, rng


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


def _unit_soa(ray: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Rays (..., 3) of any length -> unit rays (3, n) contiguous, and the leading shape."""
    ray = np.asarray(ray, dtype=np.float64)
    shape = ray.shape[:-1]
    soa = np.ascontiguousarray(ray.reshape(-1, 3).T)
    soa /= np.sqrt(_dot(soa, soa))
    return soa, shape


def intersect_rays(
    state: FrameState, rot_j2000_to_cam: np.ndarray, ray_cam: np.ndarray, target: Target,
    *, light_time_iterations: int = LIGHT_TIME_ITERATIONS,
) -> SurfacePoints:
    """Apparent camera rays (..., 3), any length, -> surface points on the target ellipsoid."""
    rays, shape = _unit_soa(ray_cam)
    k = FrameKernel.build(state, rot_j2000_to_cam, target)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = _intersect_soa(k, rays, light_time_iterations)
        assert h is not None
        app = h.app - (k.body_rate @ h.app) * h.delta
    hit = h.t > 0
    return SurfacePoints(
        pos_body_km=h.pos.T.reshape(*shape, 3),
        observer_pos_body_km=np.broadcast_to(h.obs, h.pos.shape).T.reshape(*shape, 3),
        hit=hit.reshape(shape), range_km=h.t.reshape(shape),
        apparent_dir_body=app.T.reshape(*shape, 3),
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
    k = _inverse_kernel(state, rot_j2000_to_cam)
    cam, rng = _surface_to_cam_soa(k, pos.reshape(-1, 3).T, light_time_iterations)
    cam /= np.sqrt(_dot(cam, cam))
    return cam.T.reshape(*shape, 3), rng.reshape(shape)


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
    cross = norm3(np.cross(a, b))
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


def graphic_from_centric_lat_f32(lat_centric_deg: np.ndarray, lon_east_deg: np.ndarray,
                                 radii_km: Sequence[float], out: np.ndarray | None = None) -> np.ndarray:
    """Planetographic latitude (deg, float32) of surface points given by their
    planetocentric latitude and east longitude (float32 planes; the longitude matters on
    a triaxial body only): tan(graphic) = tan(centric) / (c**2 sqrt(cos(lon)**2 / a**4 +
    sin(lon)**2 / b**4)). Within ~1e-5 deg of :func:`lonlat_from_body`; a map's backplane
    is computed by this very function, so a file may leave it out (see
    :func:`junoproc.io.write_linear_map`) and get it back exactly."""
    a, b, c = (float(v) for v in radii_km)
    rad = np.float32(math.pi / 180.0)
    t = np.multiply(lat_centric_deg, rad, out=out)
    np.tan(t, out=t)
    if a == b:  # a spheroid
        t *= np.float32((a / c) ** 2)
    else:
        lon = np.multiply(lon_east_deg, rad)
        cos2 = np.cos(lon)
        cos2 *= cos2
        sin2 = np.float32(1.0) - cos2
        cos2 *= np.float32(1.0 / a**4)
        sin2 *= np.float32(1.0 / b**4)
        cos2 += sin2
        np.sqrt(cos2, out=cos2)
        cos2 *= np.float32(c**2)
        t /= cos2
    np.arctan(t, out=t)
    t *= np.float32(180.0 / math.pi)
    # at a pole the float32 angle lies past pi / 2, where the tangent changes sign
    np.copyto(t, lat_centric_deg, where=np.abs(lat_centric_deg) >= np.float32(90.0))
    return t


def west_from_east_lon_f32(lon_east_deg: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """West longitude (deg, float32, in [0, 360)) from east longitude (float32 in [0, 360)):
    360 - lon, 0 for 0 (and for what rounds to 360); NaN stays NaN. A map's backplane is
    computed by this very function, so a file may leave it out and get it back exactly."""
    w = np.subtract(np.float32(360.0), lon_east_deg, out=out)
    np.subtract(w, np.float32(360.0), out=w, where=w >= np.float32(360.0))
    return w


def body_from_lonlat(lat_centric_deg: np.ndarray, lon_east_deg: np.ndarray,
                     target: Target) -> np.ndarray:
    """Surface point (..., 3) of the ellipsoid at planetocentric lat / east lon (broadcast;
    the sines and cosines are taken before broadcasting, once per row of a map's grid)."""
    lat = np.radians(lat_centric_deg)
    lon = np.radians(lon_east_deg)
    cos_lat = np.cos(lat)
    u = np.stack(np.broadcast_arrays(cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)), axis=-1)
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
    """A task computing points ``sl`` of unit rays (3, n) into flat ``out`` arrays
    (backplanes, ``hit``, and optionally ``pos_x_km``, ``pos_y_km``, ``pos_z_km``)."""

    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for part in _chunks(sl.stop - sl.start):
                s = slice(sl.start + part.start, sl.start + part.stop)
                h = _intersect_soa(k, rays[:, s], iterations)
                assert h is not None
                _backplanes_soa(k, h, ifov_rad, {n: v[s] for n, v in out.items() if not n.startswith("pos_")})
                for i, name in enumerate(("pos_x_km", "pos_y_km", "pos_z_km")):
                    if name in out:
                        out[name][s] = h.pos[i]

    return run


def _framelet_task(k: FrameKernel, cam: CameraModel, out: Mapping[str, np.ndarray], ifov_rad: float,
                   iterations: int) -> Callable[[], None]:
    """A task computing a whole framelet into the 2-D (rows, samples) views ``out``, tile by
    tile; tiles whose rays all pass far from the target are filled with NaN / False, and
    of the others only the rays that come near the target are computed."""

    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for tile in cam.framelet_ray_tiles:
                views = {name: view[tile.rows, tile.cols] for name, view in out.items()}
                h = _intersect_soa(k, tile.rays, iterations, compact_below=COMPACT_BELOW)
                if h is None:
                    for name, view in views.items():
                        view[...] = False if name == "hit" else np.nan
                elif h.index is None:
                    _backplanes_soa(k, h, ifov_rad, views)
                else:  # few rays near the target: computed densely, scattered into the tile
                    dense = {name: np.empty(h.index.size, view.dtype) for name, view in views.items()}
                    _backplanes_soa(k, h, ifov_rad, dense)
                    for name, view in views.items():
                        full = np.zeros(view.size, view.dtype) if name == "hit" else np.full(
                            view.size, np.nan, view.dtype)
                        full[h.index] = dense[name]
                        view[...] = full.reshape(view.shape)

    return run


def _inverse_task(k: FrameKernel, cam: CameraModel, pos: tuple[np.ndarray, np.ndarray, np.ndarray],
                  sl: slice, x_out: np.ndarray, y_out: np.ndarray, iterations: int
                  ) -> Callable[[], None]:
    def run() -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            for part in _chunks(sl.stop - sl.start):
                s = slice(sl.start + part.start, sl.start + part.stop)
                cam_dir, _ = _surface_to_cam_soa(k, np.stack([pos[0][s], pos[1][s], pos[2][s]]), iterations)
                x_out[s], y_out[s] = cam.cam_to_px_xyz(cam_dir[0], cam_dir[1], cam_dir[2])

    return run


def _split(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of range(n), multiples of the chunk size."""
    if n <= 0:
        return [slice(0, 0)]
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
    #: Frame kernels built so far (a copy made with ``dataclasses.replace`` starts empty).
    _kernels: dict[int, FrameKernel] = field(default_factory=dict, init=False, repr=False, compare=False)

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
        """The per-frame constants of the vectorised kernels (a few 3x3 products, ~70 us;
        kept: the band alignment asks for single points thousands of times)."""
        kernel = self._kernels.get(frame)
        if kernel is None:
            kernel = FrameKernel.build(self.states[frame], self.rotations_j2000_to_cam[frame], self.target)
            self._kernels[frame] = kernel
        return kernel

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
            rays, _ = _unit_soa(cam.px_to_cam(x_px, y_px))
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
        ray = ray / norm3(ray)[..., None]
        return ray @ self.rotations_j2000_to_cam[frame]

    def all_backplanes(self, names: Sequence[str] | None = None, *, workers: int | None = None,
                       out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every backplane for every framelet: float32 arrays (n_frames, n_filters, rows, samples),
        NaN where the ray misses, plus ``hit`` (bool).

        ``names`` limits the planes computed (default :data:`BACKPLANE_NAMES`); the work is
        spread over ``workers`` threads (default: ``$JUNOPROC_THREADS``, else the CPUs this
        process may use). ``out``: arrays to write into (float32 planes and a bool ``hit``
        of that shape), e.g. those of a previous image, to save ~0.5 GB of fresh pages.
        """
        names = tuple(BACKPLANE_NAMES if names is None else names)
        unknown = sorted(set(names) - set(BACKPLANE_NAMES) - {"hit"})
        if unknown:
            raise ValueError(f"unknown backplanes {unknown}; choose from {BACKPLANE_NAMES}")
        filters = self.meta.filters
        rows, samples = self.cameras[filters[0]].shape
        shape = (self.n_frames, len(filters), rows, samples)
        wanted = {name: np.dtype(bool) if name == "hit" else np.dtype(np.float32) for name in (*names, "hit")}
        if out is not None:
            for name, dtype in wanted.items():
                arr = out.get(name)
                if arr is None or arr.shape != shape or arr.dtype != dtype:
                    raise ValueError(f"out[{name!r}] must be a {dtype} array of shape {shape}")
            out = {name: out[name] for name in wanted}
        else:
            out = {name: np.empty(shape, dtype) for name, dtype in wanted.items()}
        for band in filters:  # the cached rays, once, before the threads start
            _ = self.cameras[band].framelet_ray_tiles
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
    rays, _ = _unit_soa(cam.px_to_cam(x, y))
    k = FrameKernel.build(state, rot, target)
    n = x.size
    names = (*BACKPLANE_NAMES, "pos_x_km", "pos_y_km", "pos_z_km")
    out = {name: np.empty(n, np.float64) for name in names}
    out["hit"] = np.empty(n, bool)
    _points_task(k, rays, slice(0, n), out, cam.sampling_factor / cam.focal_px, iterations)()
    ray_j2000 = rays.T @ rot
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
    cameras = {band: CameraModel.for_product(meta, band, attitude=attitude) for band in meta.filters}
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
    cam = CameraModel.for_product(meta, band, attitude=attitude)
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
