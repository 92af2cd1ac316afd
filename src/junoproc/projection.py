"""Output grids, inverse mapping of framelets onto them, blending, and mosaics.

Grids (:class:`MapGrid`) give, for every output pixel, the body-fixed surface point it
shows (NaN where none):

* ``equirectangular``: rows uniform in latitude (planetocentric or planetographic), columns
  uniform in longitude. Whatever the longitude convention, east is to the right: a System
  III *west* longitude map runs from its largest west longitude on the left to its smallest
  on the right (360 W ... 0 W for a global map), an *east* map from its smallest east
  longitude on the left. Pixel ``[r, c]`` covers ``lat_top - (r + 0.5) / ppd`` and
  ``lon_left_east + (c + 0.5) / ppd``.
* ``polar``: centred on the north or south pole, azimuthal equidistant (``kind="equidistant"``,
  radius proportional to the planetocentric colatitude) or stereographic on the sphere of
  the equatorial radius (``kind="stereographic"``). Seen from above the pole: east longitude
  increases counter-clockwise at the north pole and clockwise at the south pole; longitude
  0 is straight down (north) or straight up (south).
* ``orthographic``: the ellipsoid seen from infinitely far along the surface normal... of
  the centre point (any planetocentric centre); north is up.
* ``perspective``: a distortion-free pinhole camera at Juno's position at the image's
  mid-time, looking at the centre of the swept area, body north up; the surface points come
  from :func:`geometry.intersect_rays` with the mid-time :class:`FrameState` (so the same
  light-time and aberration model as the framelets).

Projection is inverse only: for each output pixel, each framelet that may see it (pruned by
its footprint's bounding box in the output grid) is asked for the sub-pixel position
(:func:`geometry.surface_to_cam` once per frame for all bands, then each band's camera
model), the framelet is sampled with :func:`cv2.remap` (array index = px - 0.5), and samples
that touch an invalid pixel are dropped (the validity mask is eroded by the interpolation
kernel's support and remapped too).

Blending weight of a sample (documented, order-independent, accumulated as
``sum(w v) / sum(w)``)::

    w = feather(d_edge_px / ramp_px) * cos(emission) * (1 / resolution_km_per_px) ** k

``d_edge_px`` is the distance of the sample from the nearest edge of the framelet's
photoactive area, ``feather`` a smoothstep from 0 to 1 over ``ramp_px`` (default 6.5 px,
half the ~13-row overlap of consecutive framelets), emission is measured at the frame's own
observer position, and ``k`` (default 1) favours the sharper view.

Backplanes of a projected map are computed at the grid's surface points with the frame
state at the image's mid-time (the middle frame): ``lat_centric_deg``, ``lat_graphic_deg``,
``lon_east_deg``, ``lon_west_deg``, ``incidence_deg``, ``emission_deg``, ``phase_deg``,
``range_km``, ``resolution_km_per_px``, plus ``weight`` (sum of blending weights, mean over
bands) and ``n_samples`` (framelet samples blended, summed over bands).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .errors import ProjectionError
from .geometry import (
    BACKPLANE_NAMES,
    FrameState,
    ImageGeometry,
    SurfacePoints,
    Target,
    _intersect_ellipsoid,
    body_from_lonlat,
    frame_state,
    graphic_to_centric_deg,
    intersect_rays,
    lonlat_from_body,
    surface_to_cam,
)
from .io import LinearMap

__all__ = [
    "INTERPOLATIONS",
    "PROJECTIONS",
    "MapGrid",
    "grid_surface_points",
    "grid_xy_from_body",
    "make_grid",
    "mosaic",
    "project",
]

PROJECTIONS = ("equirectangular", "polar", "orthographic", "perspective")
#: Interpolation name -> (OpenCV flag, support half-width in px for the mask erosion).
INTERPOLATIONS: Mapping[str, tuple[int, int]] = {
    "nearest": (cv2.INTER_NEAREST, 0),
    "bilinear": (cv2.INTER_LINEAR, 0),
    "bicubic": (cv2.INTER_CUBIC, 1),
    "lanczos": (cv2.INTER_LANCZOS4, 3),
}
_INTERP_ALIASES = {"linear": "bilinear", "cubic": "bicubic", "lanczos4": "lanczos"}
#: Largest side of an output grid (a guard against absurd resolutions).
MAX_GRID_SIDE = 20000
#: Relative weight of samples that touch invalid pixels (filled values): a last resort.
FALLBACK_WEIGHT = 1e-4
_BACKPLANE_CHUNK = 1 << 20
_REMAP_COLS = 1024  # cv2.remap wants sides < 32767: sample vectors are folded to this width


# ---------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapGrid:
    """An output pixel grid on a target body; ``to_dict()`` places it for other tools."""

    projection: str
    shape: tuple[int, int]  # (rows, columns)
    target: Target
    lon_convention: str  # "west" (System III) or "east"
    lat_convention: str  # "centric" or "graphic"
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able definition: projection, shape, conventions, parameters, body radii."""
        params = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in self.params.items()}
        return {
            "projection": self.projection,
            "rows": self.shape[0],
            "columns": self.shape[1],
            "target": self.target.name,
            "target_naif_id": self.target.naif_id,
            "body_frame": self.target.frame,
            "radii_km": list(self.target.radii_km),
            "longitude": "System III west" if self.lon_convention == "west" else "east",
            "latitude": "planetocentric" if self.lat_convention == "centric" else "planetographic",
            "pixel_convention": "pixel [r, c] covers its cell; centres at index + 0.5 from the edges",
            **params,
        }


def _centric_to_graphic_deg(lat_centric_deg: np.ndarray, target: Target) -> np.ndarray:
    a, _, c = target.radii_km
    return np.degrees(np.arctan((a / c) ** 2 * np.tan(np.radians(lat_centric_deg))))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    value = str(value).lower()
    if value not in choices:
        raise ProjectionError(f"unknown {name} {value!r}", hint=f"one of {', '.join(choices)}")
    return value


def _grid_side(n: float, what: str) -> int:
    side = int(math.ceil(n - 1e-9))
    if not 1 <= side <= MAX_GRID_SIDE:
        raise ProjectionError(f"{what} would be {side} px wide",
                              hint=f"choose a resolution giving 1..{MAX_GRID_SIDE} px")
    return side


def _perspective_camera(params: Mapping[str, Any]) -> tuple[np.ndarray, float, float, float]:
    rot = np.asarray(params["rot_j2000_to_cam"], dtype=np.float64)
    return rot, float(params["focal_px"]), float(params["cx_px"]), float(params["cy_px"])


def grid_surface_points(grid: MapGrid, *, state: FrameState | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed surface point (H, W, 3) of every output pixel centre, and its hit mask.

    Perspective grids need the mid-time :class:`FrameState` (computed when not given).
    """
    h, w = grid.shape
    target = grid.target
    p = grid.params
    cols = np.arange(w, dtype=np.float64) + 0.5
    rows = np.arange(h, dtype=np.float64) + 0.5
    if grid.projection == "equirectangular":
        ppd = float(p["px_per_deg"])
        lon_e = np.mod(float(p["lon_left_east_deg"]) + cols / ppd, 360.0)
        lat = float(p["lat_top_deg"]) - rows / ppd
        if grid.lat_convention == "graphic":
            lat = graphic_to_centric_deg(lat, target)
        lat2, lon2 = np.meshgrid(lat, lon_e, indexing="ij")
        pos = body_from_lonlat(lat2, lon2, target)
        return pos, np.ones((h, w), bool)
    if grid.projection == "polar":
        ppd = float(p["px_per_deg"])
        x = (cols - w / 2.0)[None, :] / ppd
        y = (rows - h / 2.0)[:, None] / ppd
        rho_deg = np.hypot(x, y)
        if p["kind"] == "stereographic":
            colat = np.degrees(2.0 * np.arctan(np.radians(rho_deg) / 2.0))
        else:
            colat = rho_deg
        north = p["pole"] == "north"
        lon_e = np.degrees(np.arctan2(x, y if north else -y))
        if not north:
            lon_e = -lon_e
        lat = 90.0 - colat if north else colat - 90.0
        hit = colat <= float(p["radius_deg"])
        lat = np.where(hit, lat, 0.0)
        pos = body_from_lonlat(lat, np.mod(lon_e, 360.0) + 0.0 * lat, target)
        pos[~hit] = np.nan
        return pos, hit
    if grid.projection == "orthographic":
        e_n, e_e, e_u = _ortho_axes(p, target)
        km_per_px = float(p["km_per_px"])
        x = (cols - w / 2.0)[None, :, None] * km_per_px
        y = (rows - h / 2.0)[:, None, None] * km_per_px
        far = 10.0 * max(target.radii_km)
        origin = far * e_u + x * e_e - y * e_n
        direction = np.broadcast_to(-e_u, origin.shape)
        t, hit = _intersect_ellipsoid(origin, direction, target.radii)
        pos = origin + t[..., None] * direction
        return pos, hit
    if grid.projection == "perspective":
        rot, f, cx, cy = _perspective_camera(p)
        if state is None:
            state = frame_state(target, float(p["et"]))
        xx, yy = np.meshgrid(cols - cx, rows - cy)
        rays = np.stack([xx, yy, np.full_like(xx, f)], axis=-1)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        pts = intersect_rays(state, rot, rays, target)
        return pts.pos_body_km, pts.hit
    raise ProjectionError(f"unknown projection {grid.projection!r}", hint=f"one of {PROJECTIONS}")


def _ortho_axes(p: Mapping[str, Any], target: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(north, east, up) unit vectors of the orthographic view (body frame)."""
    centre = body_from_lonlat(np.float64(p["centre_lat_centric_deg"]),
                              np.float64(p["centre_lon_east_deg"]), target)
    up = centre / target.radii**2
    up /= np.linalg.norm(up)
    east = np.cross([0.0, 0.0, 1.0], up)
    if np.linalg.norm(east) < 1e-9:  # looking down a pole: east = +y at lon 0
        east = np.array([0.0, 1.0, 0.0]) * np.sign(up[2])
    east /= np.linalg.norm(east)
    north = np.cross(up, east)
    return north, east, up


def grid_xy_from_body(grid: MapGrid, pos_body_km: np.ndarray, *,
                      state: FrameState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed surface points -> continuous output *array index* coordinates (col, row).

    Pixel ``[r, c]``'s centre is at ``(c, r)``. Used to find footprints.
    """
    target = grid.target
    p = grid.params
    h, w = grid.shape
    if grid.projection == "equirectangular":
        ll = lonlat_from_body(pos_body_km, target)
        ppd = float(p["px_per_deg"])
        col = np.mod(ll["lon_east_deg"] - float(p["lon_left_east_deg"]), 360.0) * ppd - 0.5
        lat = ll["lat_graphic_deg" if grid.lat_convention == "graphic" else "lat_centric_deg"]
        row = (float(p["lat_top_deg"]) - lat) * ppd - 0.5
        return col, row
    if grid.projection == "polar":
        ll = lonlat_from_body(pos_body_km, target)
        north = p["pole"] == "north"
        colat = 90.0 - ll["lat_centric_deg"] if north else 90.0 + ll["lat_centric_deg"]
        if p["kind"] == "stereographic":
            rho = np.degrees(2.0 * np.tan(np.radians(colat) / 2.0))
        else:
            rho = colat
        lon = np.radians(ll["lon_east_deg"])
        ppd = float(p["px_per_deg"])
        x = rho * np.sin(lon) * (1.0 if north else -1.0)
        y = rho * np.cos(lon) * (1.0 if north else -1.0)
        return x * ppd + w / 2.0 - 0.5, y * ppd + h / 2.0 - 0.5
    if grid.projection == "orthographic":
        e_n, e_e, _ = _ortho_axes(p, target)
        km = float(p["km_per_px"])
        return pos_body_km @ e_e / km + w / 2.0 - 0.5, -(pos_body_km @ e_n) / km + h / 2.0 - 0.5
    if grid.projection == "perspective":
        rot, f, cx, cy = _perspective_camera(p)
        if state is None:
            state = frame_state(target, float(p["et"]))
        ray, _ = surface_to_cam(state, rot, pos_body_km)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(ray[..., 2] > 0, ray[..., 2], np.nan)
            return f * ray[..., 0] / z + cx - 0.5, f * ray[..., 1] / z + cy - 0.5
    raise ProjectionError(f"unknown projection {grid.projection!r}", hint=f"one of {PROJECTIONS}")


# ---------------------------------------------------------------------------------------
# footprints
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """Surface points of a coarse lattice of one framelet's pixels (incl. its border)."""

    frame: int
    band: str
    points: SurfacePoints  # (ny, nx) lattice


def _lattice(n0: float, n1: float, step: float) -> np.ndarray:
    n = max(2, int(math.ceil((n1 - n0) / step)) + 1)
    return np.linspace(n0, n1, n)


def framelet_footprints(geometry: ImageGeometry, *, step_px: float = 16.0) -> list[Footprint]:
    """Surface points of a lattice (every ``step_px``, border included) of every framelet."""
    out = []
    for band in geometry.meta.filters:
        cam = geometry.cameras[band]
        rows, _ = cam.shape
        cols = cam.photoactive_columns()
        x = _lattice(cols.start + 0.5, cols.stop - 0.5, step_px)
        y = _lattice(0.5, rows - 0.5, step_px / 2.0)
        xx, yy = np.meshgrid(x, y)
        for frame in range(geometry.n_frames):
            out.append(Footprint(frame, band, geometry.surface_points(frame, band, xx, yy)))
    return out


def _hit_points(footprints: Sequence[Footprint]) -> np.ndarray:
    pts = [fp.points.pos_body_km[fp.points.hit] for fp in footprints]
    pts = [p for p in pts if len(p)]
    if not pts:
        raise ProjectionError("the target is not seen in any framelet",
                              hint="check the pointing solution and the kernels")
    return np.concatenate(pts)


def _best_resolution_km(geometry: ImageGeometry, footprints: Sequence[Footprint]) -> float:
    best = math.inf
    for fp in footprints:
        if fp.points.hit.any():
            best = min(best, float(np.nanmin(fp.points.range_km[fp.points.hit]))
                       * geometry.ifov_rad(fp.band))
    return best


def _lon_span_east(lon_east_deg: np.ndarray) -> tuple[float, float]:
    """Smallest arc (left edge, width) covering east longitudes: complement of the largest gap."""
    lon = np.sort(np.mod(lon_east_deg, 360.0))
    gaps = np.diff(np.concatenate([lon, [lon[0] + 360.0]]))
    i = int(np.argmax(gaps))
    left = float(lon[(i + 1) % len(lon)])
    width = 360.0 - float(gaps[i])
    return left, width


# ---------------------------------------------------------------------------------------
# grid construction
# ---------------------------------------------------------------------------------------
def make_grid(
    geometry: ImageGeometry, projection: str = "equirectangular", *,
    bounds: Sequence[float] | str | None = None, lon: str = "west", lat: str = "centric",
    resolution_px_per_deg: float | None = None, pole: str | None = None,
    polar_kind: str = "equidistant", centre_lat_lon_deg: Sequence[float] | None = None,
    fov_deg: Sequence[float] | None = None, footprints: Sequence[Footprint] | None = None,
) -> MapGrid:
    """The output grid of ``projection`` for an image (defaults cover the image at native scale).

    ``bounds`` (equirectangular): ``(lon_min, lon_max, lat_min, lat_max)`` in the chosen
    conventions (``lon`` "west"/"east", ``lat`` "centric"/"graphic"; a longitude range may
    wrap through 0, e.g. 350..10), or ``"global"``. ``resolution_px_per_deg``: pixels per
    degree of latitude (map projections; default: the image's best ground resolution) or
    per degree of field (perspective; default: JunoCam's IFOV). Polar: ``pole``
    north/south (default: the hemisphere seen most), ``polar_kind``
    equidistant/stereographic. Orthographic: ``centre_lat_lon_deg`` in the chosen
    conventions (default: centre of the swept area). Perspective: ``fov_deg`` (width,
    height) (default: covers the swept area).
    """
    projection = _check_choice("projection", projection, PROJECTIONS)
    lon = _check_choice("longitude convention", lon, ("west", "east"))
    lat = _check_choice("latitude convention", lat, ("centric", "graphic"))
    target = geometry.target
    if footprints is None:
        footprints = framelet_footprints(geometry)
    pts = _hit_points(footprints)
    ll = lonlat_from_body(pts, target)
    deg_km = math.radians(1.0) * target.radii_km[0]
    if resolution_px_per_deg is not None and not (resolution_px_per_deg > 0):
        raise ProjectionError(f"resolution must be positive, got {resolution_px_per_deg}")
    native_ppd = deg_km / _best_resolution_km(geometry, footprints)
    ppd = float(resolution_px_per_deg or native_ppd)
    lat_key = "lat_graphic_deg" if lat == "graphic" else "lat_centric_deg"
    base = {"px_per_deg": ppd, "native_px_per_deg": native_ppd}

    if projection == "equirectangular":
        if isinstance(bounds, str):
            if bounds.lower() != "global":
                raise ProjectionError(f"unknown bounds {bounds!r}", hint="4 numbers or 'global'")
            bounds = (0.0, 360.0, -90.0, 90.0)
        if bounds is None:
            left_e, width = _lon_span_east(ll["lon_east_deg"])
            pad = 1.0 / ppd
            left_e, width = left_e - pad, min(360.0, width + 2 * pad)
            lat_min = max(-90.0, float(ll[lat_key].min()) - pad)
            lat_max = min(90.0, float(ll[lat_key].max()) + pad)
        else:
            if len(bounds) != 4:
                raise ProjectionError("bounds want 4 numbers: LON_MIN LON_MAX LAT_MIN LAT_MAX")
            lon_min, lon_max, lat_min, lat_max = (float(b) for b in bounds)
            if not -90.0 <= lat_min < lat_max <= 90.0:
                raise ProjectionError(f"bad latitude bounds {lat_min}..{lat_max}",
                                      hint="need -90 <= LAT_MIN < LAT_MAX <= 90")
            width = lon_max - lon_min
            width = 360.0 if abs(width - 360.0) < 1e-9 else np.mod(width, 360.0)
            if width <= 0:
                raise ProjectionError(f"empty longitude range {lon_min}..{lon_max}")
            left_e = lon_min if lon == "east" else -lon_max
        left_e = float(np.mod(left_e, 360.0))
        w = _grid_side(width * ppd, "the map")
        h = _grid_side((lat_max - lat_min) * ppd, "the map")
        left_conv = left_e if lon == "east" else float(np.mod(-left_e, 360.0) or 360.0)
        right_e = left_e + w / ppd
        right_conv = float(np.mod(right_e, 360.0)) if lon == "east" else float(np.mod(-right_e, 360.0))
        params = {**base, "lon_left_east_deg": left_e, "lat_top_deg": lat_min + h / ppd,
                  "lon_left_deg": left_conv, "lon_right_deg": right_conv,
                  "lat_bottom_deg": lat_min}
        return MapGrid(projection, (h, w), target, lon, lat, params)

    if projection == "polar":
        north_share = float(np.mean(ll["lat_centric_deg"] > 0))
        pole = _check_choice("pole", pole or ("north" if north_share >= 0.5 else "south"),
                             ("north", "south"))
        kind = _check_choice("polar kind", polar_kind, ("equidistant", "stereographic"))
        colat = 90.0 - ll["lat_centric_deg"] if pole == "north" else 90.0 + ll["lat_centric_deg"]
        cap = 120.0 if kind == "stereographic" else 180.0  # stereographic blows up towards 180
        radius = float(min(cap, colat.max() + 1.0 / ppd)) if bounds is None else float(bounds[0])
        rho = math.degrees(2 * math.tan(math.radians(min(radius, 179.0)) / 2)) \
            if kind == "stereographic" else radius
        side = _grid_side(2 * rho * ppd, "the polar map")
        params = {**base, "pole": pole, "kind": kind, "radius_deg": radius,
                  "latitude_used": "planetocentric colatitude"}
        return MapGrid(projection, (side, side), target, lon, lat, params)

    if projection == "orthographic":
        if centre_lat_lon_deg is None:
            mean = pts.mean(axis=0)
            cl = lonlat_from_body(mean, target)
            clat_c, clon_e = float(cl["lat_centric_deg"]), float(cl["lon_east_deg"])
        else:
            clat, clon = (float(v) for v in centre_lat_lon_deg)
            clat_c = float(graphic_to_centric_deg(clat, target)) if lat == "graphic" else clat
            clon_e = clon if lon == "east" else float(np.mod(-clon, 360.0))
        km = deg_km / ppd
        grid0 = MapGrid(projection, (1, 1), target, lon, lat,
                        {**base, "centre_lat_centric_deg": clat_c, "centre_lon_east_deg": clon_e,
                         "km_per_px": km})
        x, y = grid_xy_from_body(grid0, pts)
        half_w = float(np.abs(x + 0.5).max()) + 2.0
        half_h = float(np.abs(y + 0.5).max()) + 2.0
        w = _grid_side(2 * half_w, "the orthographic view")
        h = _grid_side(2 * half_h, "the orthographic view")
        return MapGrid(projection, (h, w), target, lon, lat, dict(grid0.params))

    # perspective
    mid = geometry.n_frames // 2
    state = geometry.states[mid]
    band0 = geometry.meta.filters[0]
    focal_native = 1.0 / geometry.ifov_rad(band0)
    focal = focal_native if resolution_px_per_deg is None \
        else float(resolution_px_per_deg) / math.radians(1.0)
    look_body = pts.mean(axis=0) - state.observer_pos_body_km
    look_j2000 = state.rot_j2000_to_body.T @ look_body
    z = look_j2000 / np.linalg.norm(look_j2000)
    north_j2000 = state.rot_j2000_to_body.T @ np.array([0.0, 0.0, 1.0])
    # Image axes: x right, y down (rows), z forward; x = y cross z. North up means
    # y = -north (projected), so x = z cross north: east appears on the right, as seen
    # from outside the body.
    x_axis = np.cross(z, north_j2000)
    if np.linalg.norm(x_axis) < 1e-9:
        x_axis = np.cross(z, [1.0, 0.0, 0.0])
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z, x_axis)
    rot = np.stack([x_axis, y_axis, z])  # rows: cam axes in J2000 -> J2000 to cam
    params = {"px_per_deg": focal * math.radians(1.0), "native_px_per_deg":
              focal_native * math.radians(1.0), "et": float(state.et), "frame": mid,
              "focal_px": focal, "rot_j2000_to_cam": rot.tolist(),
              "observer_pos_body_km": state.observer_pos_body_km.tolist(),
              "model": "distortion-free pinhole at Juno (mid-time frame), body north up"}
    if fov_deg is None:
        grid0 = MapGrid(projection, (1, 1), target, lon, lat,
                        {**params, "cx_px": 0.5, "cy_px": 0.5})
        x, y = grid_xy_from_body(grid0, pts, state=state)
        ok = np.isfinite(x) & np.isfinite(y)
        x0, x1 = float(x[ok].min()) - 2, float(x[ok].max()) + 2
        y0, y1 = float(y[ok].min()) - 2, float(y[ok].max()) + 2
        w = _grid_side(x1 - x0, "the perspective view")
        h = _grid_side(y1 - y0, "the perspective view")
        cx, cy = 0.5 - x0, 0.5 - y0
    else:
        fw, fh = (float(v) for v in fov_deg)
        w = _grid_side(2 * focal * math.tan(math.radians(fw) / 2), "the perspective view")
        h = _grid_side(2 * focal * math.tan(math.radians(fh) / 2), "the perspective view")
        cx, cy = w / 2.0, h / 2.0
    params.update(cx_px=cx, cy_px=cy,
                  fov_deg=[2 * math.degrees(math.atan(w / 2 / focal)),
                           2 * math.degrees(math.atan(h / 2 / focal))])
    return MapGrid(projection, (h, w), target, lon, lat, params)


# ---------------------------------------------------------------------------------------
# inverse mapping
# ---------------------------------------------------------------------------------------
def _fold(v: np.ndarray) -> np.ndarray:
    """A vector -> a (rows, _REMAP_COLS) float32 array for cv2.remap (padded with -1e4)."""
    n = len(v)
    rows = max(1, -(-n // _REMAP_COLS))
    out = np.full(rows * _REMAP_COLS, -1e4, np.float32)
    out[:n] = v
    return out.reshape(rows, _REMAP_COLS)


def _remap(src: np.ndarray, x_idx: np.ndarray, y_idx: np.ndarray, flag: int,
           border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    n = len(x_idx)
    out = cv2.remap(src, _fold(x_idx), _fold(y_idx), flag, borderMode=border, borderValue=0.0)
    return out.reshape(-1)[:n]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _interp(name: str) -> tuple[int, int]:
    key = _INTERP_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in INTERPOLATIONS:
        raise ProjectionError(f"unknown interpolation {name!r}", hint=f"one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[key]


def _chunk_boxes(grid: MapGrid, fp: Footprint, state: FrameState | None
                 ) -> list[tuple[int, int, int, int]]:
    """Output-pixel boxes (r0, r1, c0, c1) covering a framelet's footprint.

    One box per cell of the footprint lattice (corners + 2 px; cells whose corners do not all
    hit get the largest neighbour gap as margin), so a tilted or curved strip is covered
    tightly. Equirectangular cells that wrap in longitude or contain a pole get the full width
    up to the map's top or bottom edge.
    """
    hit = fp.points.hit
    if not hit.any():
        return []
    col, row = grid_xy_from_body(grid, fp.points.pos_body_km, state=state)
    ok = hit & np.isfinite(col) & np.isfinite(row)
    if not ok.any():
        return []
    h, w = grid.shape
    c = np.where(ok, col, np.nan)
    r = np.where(ok, row, np.nan)
    quads_c = np.stack([c[:-1, :-1], c[1:, :-1], c[:-1, 1:], c[1:, 1:]])
    quads_r = np.stack([r[:-1, :-1], r[1:, :-1], r[:-1, 1:], r[1:, 1:]])
    full = np.isfinite(quads_c).all(axis=0)
    some = np.isfinite(quads_c).any(axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells are dropped below
        cmin, cmax = np.nanmin(quads_c, axis=0), np.nanmax(quads_c, axis=0)
        rmin, rmax = np.nanmin(quads_r, axis=0), np.nanmax(quads_r, axis=0)
    # cells cut by the limb: the missing corners lie towards the limb, within about the cell's
    # own extent (capped: at grazing emission the weight is ~0 anyway)
    own = np.nan_to_num(np.maximum(cmax - cmin, rmax - rmin))
    margin = np.where(full, 2.0, np.clip(own, 4.0, 64.0) + 2.0)
    wrap = np.zeros_like(full)
    if grid.projection == "equirectangular":
        wrap = some & (cmax - cmin > 0.25 * 360.0 * float(grid.params["px_per_deg"]))
    cmin, cmax, rmin, rmax = (np.nan_to_num(a, nan=-1.0) for a in (cmin, cmax, rmin, rmax))
    c0 = np.clip(np.floor(cmin - margin), 0, w).astype(int)
    c1 = np.clip(np.ceil(cmax + margin) + 1, 0, w).astype(int)
    r0 = np.clip(np.floor(rmin - margin), 0, h).astype(int)
    r1 = np.clip(np.ceil(rmax + margin) + 1, 0, h).astype(int)
    if wrap.any():
        c0[wrap], c1[wrap] = 0, w
        north = rmin < h / 2
        r0[wrap & north] = 0
        r1[wrap & ~north] = h
    keep = some & (c0 < c1) & (r0 < r1)
    return list(zip(r0[keep].tolist(), r1[keep].tolist(), c0[keep].tolist(), c1[keep].tolist(), strict=True))


def _candidates(boxes: Sequence[tuple[int, int, int, int]], hit_grid: np.ndarray) -> np.ndarray:
    """Flat grid indices (sorted, unique) of hit pixels inside any of the boxes."""
    r0, r1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    c0, c1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    sub = np.zeros((r1 - r0, c1 - c0), bool)
    for a, b, c, d in boxes:
        sub[a - r0:b - r0, c - c0:d - c0] = True
    sub &= hit_grid[r0:r1, c0:c1]
    rr, cc = np.nonzero(sub)
    return (rr + r0) * hit_grid.shape[1] + (cc + c0)


def _equirectangular_soa(grid: MapGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat float32 x, y, z (km) of an equirectangular grid's pixel centres, built from one
    row and one column (what :func:`grid_surface_points` gives, in a quarter of the memory)."""
    h, w = grid.shape
    p = grid.params
    ppd = float(p["px_per_deg"])
    lon = np.radians(np.mod(float(p["lon_left_east_deg"]) + (np.arange(w) + 0.5) / ppd, 360.0))
    lat = float(p["lat_top_deg"]) - (np.arange(h) + 0.5) / ppd
    if grid.lat_convention == "graphic":
        lat = graphic_to_centric_deg(lat, grid.target)
    lat = np.radians(lat)
    a, b, c = grid.target.radii_km
    cl, sl = np.cos(lat)[:, None], np.sin(lat)[:, None]
    co, so = np.cos(lon)[None, :], np.sin(lon)[None, :]
    inv = (cl * co / a) ** 2
    inv += (cl * so / b) ** 2
    inv += (sl / c) ** 2
    scale = (1.0 / np.sqrt(inv)).astype(np.float32)
    del inv
    x = (cl * co).astype(np.float32) * scale
    y = (cl * so).astype(np.float32) * scale
    z = sl.astype(np.float32) * scale
    return x.reshape(-1), y.reshape(-1), z.reshape(-1)


def _surface_to_px(geometry: ImageGeometry, frame: int, band: str, x_km: np.ndarray,
                   y_km: np.ndarray, z_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fast = getattr(geometry, "surface_to_px_xyz", None)
    if fast is not None:
        return fast(frame, band, x_km, y_km, z_km)
    return geometry.surface_to_px(frame, band, np.stack([x_km, y_km, z_km], axis=-1))


def _filled(data: np.ndarray, ok_px: np.ndarray, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """A framelet with invalid pixels filled by normalised Gaussian convolution of valid ones,
    and where the fill is usable (float32 1/0), photoactive columns only."""
    src = np.where(ok_px, data, np.float32(0.0)).astype(np.float32)
    okf = ok_px.astype(np.float32)
    if ok_px[:, cols].all():
        return src, okf
    filled = src.copy()
    todo = ~ok_px
    for sigma in (1.5, 6.0):
        num = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        wsum = cv2.GaussianBlur(okf, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        take = todo & (wsum > 1e-3)
        filled[take] = num[take] / wsum[take]
        todo &= ~take
    usable = ~todo
    usable[:, :cols.start] = False
    usable[:, cols.stop:] = False
    return filled, usable.astype(np.float32)


def _image_arrays(image: Any) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(image.data, dtype=np.float32)
    valid = getattr(image, "valid", None)
    valid = np.isfinite(data) if valid is None else np.asarray(valid, bool) & np.isfinite(data)
    if data.ndim != 4:
        raise ProjectionError(f"calibrated data must be (frames, filters, rows, samples), got {data.shape}")
    return data, valid


def project(
    image: Any, geometry: ImageGeometry, *, projection: str = "equirectangular",
    bounds: Sequence[float] | str | None = None, lon: str = "west", lat: str = "centric",
    resolution_px_per_deg: float | None = None, interpolation: str = "bilinear",
    grid: MapGrid | None = None, feather_px: float = 6.5, resolution_exponent: float = 1.0,
    frame_order: Sequence[int] | None = None, fill_invalid: bool = True,
    timings: dict[str, float] | None = None, **grid_options: Any,
) -> LinearMap:
    """Map-project a calibrated image (``image.data`` (frames, filters, rows, samples) float32,
    ``image.valid`` bool) onto ``grid`` (or a new :func:`make_grid`) -> :class:`io.LinearMap`.

    Bands are in FILTER_NAME order; NaN where no valid framelet sample sees the pixel.
    ``frame_order`` only reorders the accumulation (the result does not depend on it).
    Samples touching an invalid pixel (particle hit, bad column, saturation) are dropped;
    with ``fill_invalid`` (default) they are kept as a fallback with weight x
    :data:`FALLBACK_WEIGHT` on values filled from valid neighbours, so they only show where
    no valid sample of that band exists (backplane ``filled_bands`` counts such bands).
    ``timings``, when given, receives the seconds spent per step.
    """
    clock = time.perf_counter()
    tm = timings if timings is not None else {}
    data, valid = _image_arrays(image)
    meta = geometry.meta
    n_frames, n_bands = geometry.n_frames, meta.n_filters
    if data.shape[:2] != (n_frames, n_bands):
        raise ProjectionError(f"image has {data.shape[:2]} (frames, filters), geometry "
                              f"({n_frames}, {n_bands})", hint="use the geometry of this image")
    flag, support = _interp(interpolation)
    footprints = framelet_footprints(geometry)
    if grid is None:
        grid = make_grid(geometry, projection, bounds=bounds, lon=lon, lat=lat,
                         resolution_px_per_deg=resolution_px_per_deg, footprints=footprints,
                         **grid_options)
    target = geometry.target
    mid_state = geometry.states[n_frames // 2]
    grid_state = None
    if grid.projection == "perspective":
        grid_state = frame_state(target, float(grid.params["et"]))
    h, w = grid.shape
    # structure of arrays, float32 (4 m at Jupiter's radius; the mapping maths runs in float64
    # on the candidates): contiguous x, y, z and the unit normal
    if grid.projection == "equirectangular":
        px, py, pz = _equirectangular_soa(grid)
        hit_grid = np.ones((h, w), bool)
    else:
        pos_grid, hit_grid = grid_surface_points(grid, state=grid_state)
        pos_flat = pos_grid.reshape(-1, 3)
        px, py, pz = (pos_flat[:, i].astype(np.float32) for i in range(3))
        del pos_grid, pos_flat
    ra, rb, rc = target.radii_km
    nx, ny, nz = px / np.float32(ra**2), py / np.float32(rb**2), pz / np.float32(rc**2)
    inv = 1.0 / np.sqrt(nx * nx + ny * ny + nz * nz)
    nx *= inv
    ny *= inv
    nz *= inv
    del inv
    tm["grid_s"] = time.perf_counter() - clock

    num = np.zeros((n_bands, h * w), np.float32)
    den = np.zeros((n_bands, h * w), np.float32)
    seen_valid = np.zeros((n_bands, h * w), bool)
    count = np.zeros((n_bands, h * w), np.uint16)
    by_key = {(fp.frame, fp.band): fp for fp in footprints}
    kernel = None if support == 0 else np.ones((2 * support + 1, 2 * support + 1), np.uint8)
    order = range(n_frames) if frame_order is None else frame_order
    t_map = t_sample = 0.0
    n_cand = n_used = 0
    for frame in order:
        obs = geometry.states[frame].observer_pos_body_km
        for b, band in enumerate(meta.filters):
            t0 = time.perf_counter()
            boxes = _chunk_boxes(grid, by_key[(frame, band)], grid_state)
            if not boxes:
                continue
            idx = _candidates(boxes, hit_grid)
            n_cand += len(idx)
            sx, sy, sz = (c[idx].astype(np.float64) for c in (px, py, pz))
            ox, oy, oz = obs[0] - sx, obs[1] - sy, obs[2] - sz
            dist = np.sqrt(ox * ox + oy * oy + oz * oz)
            cos_e = (nx[idx] * ox + ny[idx] * oy + nz[idx] * oz) / dist
            front = cos_e > 0
            idx, cos_e, dist = idx[front], cos_e[front], dist[front]
            if not len(idx):
                continue
            x_px, y_px = _surface_to_px(geometry, frame, band, sx[front], sy[front], sz[front])
            t1 = time.perf_counter()
            t_map += t1 - t0
            cam = geometry.cameras[band]
            rows, _ = cam.shape
            cols = cam.photoactive_columns()
            x_i, y_i = x_px - 0.5, y_px - 0.5  # array index coordinates
            inside = (x_i >= cols.start) & (x_i <= cols.stop - 1) & (y_i >= 0) & (y_i <= rows - 1)
            if not inside.any():
                continue
            sel = np.flatnonzero(inside)
            x_i, y_i = x_i[sel].astype(np.float32), y_i[sel].astype(np.float32)
            ok_px = valid[frame, b].copy()
            ok_px[:, :cols.start] = False
            ok_px[:, cols.stop:] = False
            mask = ok_px.astype(np.uint8)
            if kernel is not None:
                mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            m = _remap(mask.astype(np.float32), x_i, y_i, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT)
            good = m >= 1.0 - 1e-4
            src, usable = _filled(data[frame, b], ok_px, cols)
            if fill_invalid:
                keep = good | (_remap(usable, x_i, y_i, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT) >= 1.0 - 1e-4)
                sel, x_i, y_i, good = sel[keep], x_i[keep], y_i[keep], good[keep]
            else:
                sel, x_i, y_i, good = sel[good], x_i[good], y_i[good], good[good]
            if not len(sel):
                continue
            value = _remap(src, x_i, y_i, flag)
            d_edge = np.minimum(np.minimum(y_i + 0.5, rows - 0.5 - y_i),
                                np.minimum(x_i - (cols.start - 0.5), (cols.stop - 0.5) - x_i))
            res_km = dist[sel] * geometry.ifov_rad(band)
            wgt = _smoothstep(d_edge / feather_px) * cos_e[sel] * res_km ** -resolution_exponent
            tgt = idx[sel]
            n_used += len(tgt)
            wgt = wgt * np.where(good, 1.0, FALLBACK_WEIGHT)
            num[b, tgt] += wgt * value
            den[b, tgt] += wgt
            seen_valid[b, tgt[good]] = True
            count[b, tgt] += 1
            t_sample += time.perf_counter() - t1
    tm["surface_to_px_s"] = t_map
    tm["candidates"] = n_cand
    tm["samples"] = n_used
    tm["sample_blend_s"] = t_sample
    t0 = time.perf_counter()
    data_out = np.full((h * w, n_bands), np.nan, np.float32)
    for b in range(n_bands):
        has = den[b] > 0
        data_out[has, b] = num[b, has] / den[b, has]
    data_out = data_out.reshape(h, w, n_bands)
    del num
    peak = float(den.max()) if den.size else 0.0
    weight = (den.mean(axis=0) / (peak if peak > 0 else 1.0)).reshape(h, w)
    backplanes = _backplanes(geometry, grid, (px, py, pz), (nx, ny, nz), hit_grid,
                             (den > 0).any(axis=0), mid_state)
    backplanes["weight"] = weight.astype(np.float32)
    backplanes["n_samples"] = count.sum(axis=0, dtype=np.uint16).reshape(h, w)
    backplanes["filled_bands"] = ((den > 0) & ~seen_valid).sum(axis=0, dtype=np.uint8).reshape(h, w)
    tm["backplanes_s"] = time.perf_counter() - t0
    sidecar = {
        "map": grid.to_dict(),
        "product_id": meta.product_id,
        "bands": list(meta.filters),
        "units": "calibrated linear values (as from calibrate), NaN where unseen",
        "projection": {
            "interpolation": interpolation,
            "blending": "w = smoothstep(d_edge_px / feather_px) * cos(emission) "
                        "* (1 / resolution_km_per_px) ** k; value = sum(w v) / sum(w)",
            "feather_px": feather_px, "resolution_exponent_k": resolution_exponent,
            "backplanes_state": f"mid-time frame {n_frames // 2} (et {mid_state.et:.3f})",
            "attitude": dict(geometry.attitude_description),
        },
    }
    tm["total_s"] = time.perf_counter() - clock
    return LinearMap(data_out, tuple(meta.filters), backplanes, sidecar)


def _backplanes(geometry: ImageGeometry, grid: MapGrid, pos: tuple[np.ndarray, np.ndarray, np.ndarray],
                normal: tuple[np.ndarray, np.ndarray, np.ndarray], hit_grid: np.ndarray,
                seen: np.ndarray, state: FrameState) -> dict[str, np.ndarray]:
    """Backplanes (float32) at the grid's surface points seen from the mid-time frame state.

    ``pos`` and ``normal`` (unit) are flat x, y, z arrays over the grid. Coordinates are given
    wherever the grid meets the target; angles, range and resolution only where ``seen``. Geometric (not
    aberration-corrected) directions to the observer and the Sun at the centre's epoch:
    differences from SPICE's ``ilumin`` are < 0.02 deg.
    """
    h, w = hit_grid.shape
    out = {name: np.full(h * w, np.nan, np.float32) for name in BACKPLANE_NAMES}
    if grid.projection == "equirectangular":  # separable: one row and one column
        row_pts = np.stack([c.reshape(h, w)[:, 0] for c in pos], axis=-1)
        col_pts = np.stack([c.reshape(h, w)[0, :] for c in pos], axis=-1)
        lat_row = lonlat_from_body(row_pts, grid.target)
        lon_col = lonlat_from_body(col_pts, grid.target)
        for name in ("lat_centric_deg", "lat_graphic_deg"):
            out[name].reshape(h, w)[:] = lat_row[name][:, None]
        for name in ("lon_east_deg", "lon_west_deg"):
            out[name].reshape(h, w)[:] = lon_col[name][None, :]
    else:
        sel = np.flatnonzero(hit_grid.reshape(-1))
        for name, v in lonlat_from_body(np.stack([c[sel] for c in pos], axis=-1), grid.target).items():
            out[name][sel] = v
    seen_idx = np.flatnonzero(seen.reshape(-1))  # angles only where the map has data
    ifov = geometry.ifov_rad(geometry.meta.filters[0])
    for part in range(0, len(seen_idx), _BACKPLANE_CHUNK):  # chunks bound the temporaries
        sel = seen_idx[part:part + _BACKPLANE_CHUNK]
        x, y, z = (c[sel].astype(np.float64) for c in pos)
        n = [c[sel] for c in normal]
        o = [c - p for c, p in zip(state.observer_pos_body_km, (x, y, z), strict=True)]
        rng = np.sqrt(o[0] * o[0] + o[1] * o[1] + o[2] * o[2])
        o = [c / rng for c in o]
        s = [c - p for c, p in zip(state.sun_pos_body_km, (x, y, z), strict=True)]
        s_len = np.sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2])
        s = [c / s_len for c in s]
        cos_e = n[0] * o[0] + n[1] * o[1] + n[2] * o[2]
        vis = cos_e > 0
        sv = sel[vis]

        def angle(dot: np.ndarray, vis: np.ndarray = vis) -> np.ndarray:
            return np.degrees(np.arccos(np.clip(dot[vis], -1.0, 1.0)))

        out["emission_deg"][sv] = angle(cos_e)
        out["incidence_deg"][sv] = angle(n[0] * s[0] + n[1] * s[1] + n[2] * s[2])
        out["phase_deg"][sv] = angle(o[0] * s[0] + o[1] * s[1] + o[2] * s[2])
        out["range_km"][sv] = rng[vis]
        out["resolution_km_per_px"][sv] = rng[vis] * ifov
    return {name: v.reshape(h, w) for name, v in out.items()}


# ---------------------------------------------------------------------------------------
# mosaics
# ---------------------------------------------------------------------------------------
def _grid_key(m: LinearMap) -> Any:
    g = dict(m.sidecar.get("map", {}))
    return {k: g.get(k) for k in ("projection", "rows", "columns", "target", "longitude", "latitude",
                                   "px_per_deg", "lon_left_east_deg", "lat_top_deg", "pole", "kind",
                                   "centre_lat_centric_deg", "centre_lon_east_deg", "km_per_px")}


def mosaic(maps: Sequence[LinearMap], *, match_exposure: bool = True, feather_px: float = 20.0,
           photometric: str = "none", min_overlap_px: int = 50, max_incidence_deg: float = 80.0
           ) -> LinearMap:
    """Blend maps on one grid into one, with per-band gain matching on the overlaps.

    Gains: the map with the largest total weight is the reference; every other map's band
    gain is the median of ``reference / map`` over pixels both see (after the optional
    ``photometric="lambert"`` correction, division by cos(incidence)), chained through
    already matched maps; only lit pixels count (incidence < ``max_incidence_deg`` and brighter
    than 10% of the map's 99th percentile). Blending: each map's ``weight`` backplane times a smoothstep
    feather over ``feather_px`` from the edge of its coverage; ``sum(w v) / sum(w)``.
    """
    if not maps:
        raise ProjectionError("no maps to mosaic")
    photometric = _check_choice("photometric correction", photometric, ("none", "lambert"))
    first = maps[0]
    for m in maps[1:]:
        if m.data.shape[:2] != first.data.shape[:2] or m.band_names != first.band_names:
            raise ProjectionError(
                f"maps differ in shape/bands: {first.data.shape} {first.band_names} vs "
                f"{m.data.shape} {m.band_names}", hint="project all images onto one grid")
        if first.sidecar.get("map") and m.sidecar.get("map") and _grid_key(m) != _grid_key(first):
            raise ProjectionError("maps are on different grids",
                                  hint="project them with the same --projection/--bounds/--resolution")
    h, w, nb = first.data.shape
    values = []
    weights = []
    lit_masks: list[np.ndarray] = []
    for m in maps:
        v = m.data.astype(np.float64)
        if photometric == "lambert" and "incidence_deg" in m.backplanes:
            mu0 = np.cos(np.radians(np.asarray(m.backplanes["incidence_deg"], np.float64)))
            v = np.where(mu0 > 0.05, v / np.maximum(mu0, 0.05)[..., None], np.nan)
        seen = np.isfinite(v).all(axis=-1)
        lit = seen.copy()  # where gains may be measured: lit, well above the dark level
        if "incidence_deg" in m.backplanes:
            lit &= np.asarray(m.backplanes["incidence_deg"], np.float64) < max_incidence_deg
        if lit.any():
            level = np.nanpercentile(v[lit].mean(axis=-1), 99)
            lit &= np.nan_to_num(v.mean(axis=-1)) > 0.1 * level
        lit_masks.append(lit)
        base = np.asarray(m.backplanes.get("weight", seen.astype(np.float32)), np.float64)
        base = np.where(seen & np.isfinite(base), base, 0.0)
        dist = cv2.distanceTransform(seen.astype(np.uint8), cv2.DIST_L2, 5)
        weights.append(base * _smoothstep(dist / feather_px))
        values.append(np.where(seen[..., None], v, np.nan))
    gains = np.ones((len(maps), nb))
    if match_exposure and len(maps) > 1:
        total = [float(wt.sum()) for wt in weights]
        ref = int(np.argmax(total))
        done = {ref}
        pending = set(range(len(maps))) - done
        while pending:
            best = None
            for i in pending:
                for j in done:
                    both = (weights[i] > 0) & (weights[j] > 0) & lit_masks[i] & lit_masks[j]
                    n = int(both.sum())
                    if n >= min_overlap_px and (best is None or n > best[2]):
                        best = (i, j, n, both)
            if best is None:
                break  # the rest do not overlap: gain 1
            i, j, _, both = best
            for b in range(nb):
                a, r = values[i][..., b][both], values[j][..., b][both] * gains[j, b]
                ok = (a > 0) & (r > 0)
                if ok.sum() >= min_overlap_px:
                    gains[i, b] = float(np.median(r[ok] / a[ok]))
            done.add(i)
            pending.discard(i)
    num = np.zeros((h, w, nb))
    den = np.zeros((h, w))
    for k, (v, wt) in enumerate(zip(values, weights, strict=True)):
        num += np.nan_to_num(v * gains[k]) * wt[..., None]
        den += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den[..., None] > 0, num / den[..., None], np.nan).astype(np.float32)
    backplanes = {"weight": den.astype(np.float32),
                  "n_maps": sum((wt > 0).astype(np.uint8) for wt in weights).astype(np.uint8)}
    for name in ("lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg"):
        if name in first.backplanes:
            backplanes[name] = np.asarray(first.backplanes[name], np.float32)
    sidecar = {
        "map": first.sidecar.get("map", {}),
        "mosaic": {
            "inputs": [m.sidecar.get("product_id", f"map{k}") for k, m in enumerate(maps)],
            "gains": gains.tolist(), "photometric": photometric, "feather_px": feather_px,
            "blending": "w = weight backplane * smoothstep(distance to coverage edge / feather_px)",
        },
        "bands": list(first.band_names),
    }
    return LinearMap(out, first.band_names, backplanes, sidecar)
