"""Output grids, inverse mapping of framelets onto them, blending, and mosaics.

Grids (:class:`MapGrid`) give, for every output pixel, the body-fixed surface point it
shows (NaN where none):

* ``equirectangular``: rows uniform in latitude (planetocentric or planetographic), columns
  uniform in longitude. Whatever the longitude convention, east is to the right: a System
  III *west* longitude map runs from its largest west longitude on the left to its smallest
  on the right (360 W ... 0 W for a global map), an *east* map from its smallest east
  longitude on the left. Pixel ``[r, c]`` covers ``lat_top - (r + 0.5) / ppd`` and
  ``lon_left_east + (c + 0.5) / ppd``.
* ``polar``: about the north or south pole, azimuthal equidistant (``kind="equidistant"``,
  radius proportional to the planetocentric colatitude) or stereographic on the sphere of
  the equatorial radius (``kind="stereographic"``), out to ``radius_deg`` of colatitude.
  Seen from above the pole: east longitude increases counter-clockwise at the north pole
  and clockwise at the south pole; longitude 0 is straight down (north) or straight up
  (south). The grid is a window of that plane: the pole lies ``pole_col_px`` from the left
  edge and ``pole_row_px`` from the top edge (pixel units; the centre of the window when
  absent, as in old map definitions; it may lie outside the window), so pixel ``[r, c]``
  is at ``x = (c + 0.5 - pole_col_px) / px_per_deg``, ``y = (r + 0.5 - pole_row_px) /
  px_per_deg`` degrees (of colatitude for ``equidistant``) from the pole. Default grids
  and polar mosaics are cut to their data.
* ``orthographic``: the ellipsoid seen from infinitely far along the surface normal... of
  the centre point (any planetocentric centre); north is up.
* ``perspective``: a distortion-free pinhole camera at Juno's position at the image's
  mid-time, looking at the centre of the swept area, body north up; the surface points come
  from :func:`geometry.intersect_rays` with the mid-time :class:`FrameState` (so the same
  light-time and aberration model as the framelets).

Projection is inverse only. For speed the surface -> framelet mapping is evaluated exactly
(:meth:`ImageGeometry.surface_to_px_xyz`, light time and aberration included) on a lattice
of output pixels, one node every ``step`` px (a power of two chosen so that a lattice cell
spans at most :data:`LATTICE_CELL_PX` framelet pixels at the image's best resolution; half
that for perspective grids; an equirectangular grid's step raised up to 4x where a pilot of
the checks below finds it cheaper, its backplane angles kept on the rule's lattice), and
interpolated bilinearly in between. Every cell is checked
at its centre, where a bilinear error is largest: a cell whose interpolated framelet
position errs by more than ``max_interp_error_px`` (0.05 px), or whose grid point does, or
that straddles the edge of the grid's target, is computed exactly pixel by pixel. Framelets
are pruned per lattice cell by their footprint's boxes and by the interpolated position;
the output is processed in strips of rows (on threads) and column tiles, each framelet
sampled with one :func:`cv2.remap` of its values and one of a validity "gate" (array index =
px - 0.5); samples that touch an invalid pixel get the fallback rule (below), saturated
pixels are used as they are and marked (``saturated_bands``).

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

import json
import math
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .calibrate import FLAG_SATURATED
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
    graphic_from_centric_lat_f32,
    graphic_to_centric_deg,
    intersect_rays,
    lonlat_from_body,
    norm3,
    surface_to_cam,
    west_from_east_lon_f32,
)
from .io import LinearMap
from .runtime import cv2_serial, enter_copy, forking, note_helper_peak_mb, private_kb, shared_empty
from .runtime import workers as _workers

__all__ = [
    "INTERPOLATIONS",
    "PROJECTIONS",
    "MapGrid",
    "grid_points_at",
    "grid_surface_points",
    "grid_xy_from_body",
    "crop_grid",
    "make_grid",
    "map_coordinates",
    "map_grid_from_dict",
    "mosaic",
    "perijove_mosaics",
    "filter_set",
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
#: A footprint whose longitudes leave no gap wider than this (deg) spans all of them: the
#: footprint lattice leaves gaps around a pole (an image's default equirectangular map).
FULL_CIRCLE_GAP_DEG = 20.0
#: Margin (output px) around the footprint of an image's default polar grid.
POLAR_MARGIN_PX = 4
#: Largest side of an output grid (a guard against absurd resolutions).
MAX_GRID_SIDE = 20000
#: Relative weight of samples that touch invalid pixels (filled values): a last resort.
FALLBACK_WEIGHT = 1e-4
#: Largest side of an interpolation-lattice cell in framelet pixels at the best resolution
#: (the cell is a power of two, 1..16, in output pixels; see project).
LATTICE_CELL_PX = 8
#: Default largest error (framelet px) of the interpolated mapping before a cell goes exact
#: (0.02 before: the PJ44 perspective render had 469k exact pixels and took 0.78-0.84 s;
#: with 0.05, 223k and 0.57-0.67 s, its values within 0.005 at the 99.9th percentile).
MAX_INTERP_ERROR_PX = 0.05
#: Projections whose lattice step a pilot of the checks may raise (:meth:`_Projector._pilot_step`).
#: Polar and orthographic keep the resolution rule, so a framed polar map stays the window
#: of the whole disc's map (the same lattice: its offset is a multiple of that step only);
#: perspective too: the cells its limb cuts are exact, and on PJ43/44 its rule's step was
#: the fastest of 2, 4 and 8 (44C00032: 0.86, 0.76, 0.95 s).
PILOT_PROJECTIONS = ("equirectangular",)
#: Output pixels per framelet footprint the pilot checks.
PILOT_SAMPLES_PER_FRAMELET = 48
#: Cost of an exactly mapped output pixel in lattice nodes (one node costs ~0.32 us per band
#: on PJ44, an exact pixel ~0.5 us: its surface point and its framelet position).
EXACT_PX_COST = 1.5
#: Output rows per strip and columns per tile of the dense sampling (bound the temporaries).
STRIP_ROWS = 128
TILE_COLS = 256
#: Backplane angles whose interpolated cosine exceeds this (< 8.1 deg) are computed exactly
#: (arccos amplifies the ~1e-5 interpolation error of the cosine near 0 deg).
NEAR_ZERO_COS = 0.99


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


def map_grid_from_dict(definition: Mapping[str, Any]) -> MapGrid:
    """The :class:`MapGrid` of a ``MapGrid.to_dict()`` definition (a sidecar's ``map``)."""
    d = dict(definition)
    try:
        target = Target(str(d.pop("target")), int(d.pop("target_naif_id")), str(d.pop("body_frame")),
                        tuple(float(r) for r in d.pop("radii_km")))  # type: ignore[arg-type]
        projection = str(d.pop("projection"))
        shape = (int(d.pop("rows")), int(d.pop("columns")))
        lon = "west" if str(d.pop("longitude")).startswith("System III") else "east"
        lat = "graphic" if d.pop("latitude") == "planetographic" else "centric"
    except (KeyError, TypeError, ValueError) as err:
        raise ProjectionError(f"incomplete map definition ({err})",
                              hint="write it with MapGrid.to_dict()") from None
    d.pop("pixel_convention", None)
    return MapGrid(projection, shape, target, lon, lat, d)


def map_coordinates(grid: MapGrid) -> dict[str, np.ndarray]:
    """Exact ``lat_centric_deg``, ``lat_graphic_deg``, ``lon_east_deg``, ``lon_west_deg`` (H, W)
    float32 of every pixel centre of an equirectangular or polar grid, from its definition
    alone (map files need not store them). Equirectangular: read-only broadcasts of one
    column and one row; polar: NaN beyond ``radius_deg`` (longitude 0 at the pole itself)."""
    h, w = grid.shape
    if grid.projection == "polar":
        pos, hit = grid_surface_points(grid)
        ll = lonlat_from_body(pos, grid.target)
        return {name: np.where(hit, v, np.nan).astype(np.float32) for name, v in ll.items()}
    if grid.projection != "equirectangular":
        raise ProjectionError(f"{grid.projection} coordinates need the observation",
                              hint="read them from the backplanes")
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    lat_col = lonlat_from_body(grid_points_at(grid, rows, np.zeros(h))[0], grid.target)
    lon_row = lonlat_from_body(grid_points_at(grid, np.zeros(w), cols)[0], grid.target)
    out = {name: np.broadcast_to(lat_col[name].astype(np.float32)[:, None], (h, w))
           for name in ("lat_centric_deg", "lat_graphic_deg")}
    out.update({name: np.broadcast_to(lon_row[name].astype(np.float32)[None, :], (h, w))
                for name in ("lon_east_deg", "lon_west_deg")})
    return out


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
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    return grid_points_at(grid, rows[:, None], cols[None, :], state=state)


def grid_points_at(grid: MapGrid, row_idx: np.ndarray, col_idx: np.ndarray, *,
                   state: FrameState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Body-fixed surface points (..., 3) at output *array index* coordinates (row, col), any
    broadcastable shapes, and the hit mask (NaN points where the grid misses the target).

    Index ``(r, c)`` is the centre of pixel ``[r, c]``; non-integer and out-of-grid indices
    continue the projection's formulas (the interpolation lattice of :func:`project` uses it).
    """
    target = grid.target
    p = grid.params
    if grid.projection == "equirectangular":  # latitude by row, longitude by column: the
        # trigonometry on the unbroadcast indices (a lattice's rows x columns: once per line)
        ppd = float(p["px_per_deg"])
        rows, cols = np.asarray(row_idx, np.float64) + 0.5, np.asarray(col_idx, np.float64) + 0.5
        lon_e = np.mod(float(p["lon_left_east_deg"]) + cols / ppd, 360.0)
        lat = float(p["lat_top_deg"]) - rows / ppd
        if grid.lat_convention == "graphic":
            lat = graphic_to_centric_deg(lat, target)
        hit = np.ones(np.broadcast_shapes(rows.shape, cols.shape), bool)
        return body_from_lonlat(lat, lon_e, target), hit
    row_idx, col_idx = np.broadcast_arrays(np.asarray(row_idx, np.float64), np.asarray(col_idx, np.float64))
    h, w = grid.shape
    rows, cols = row_idx + 0.5, col_idx + 0.5
    if grid.projection == "polar":
        ppd = float(p["px_per_deg"])
        pole_col, pole_row = _pole_px(grid)
        x = (cols - pole_col) / ppd
        y = (rows - pole_row) / ppd
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
        pos = body_from_lonlat(np.where(hit, lat, 0.0), np.mod(lon_e, 360.0), target)
        pos[~hit] = np.nan
        return pos, hit
    if grid.projection == "orthographic":
        e_n, e_e, e_u = _ortho_axes(p, target)
        km_per_px = float(p["km_per_px"])
        x = (cols - w / 2.0)[..., None] * km_per_px
        y = (rows - h / 2.0)[..., None] * km_per_px
        far = 10.0 * max(target.radii_km)
        origin = far * e_u + x * e_e - y * e_n
        direction = np.broadcast_to(-e_u, origin.shape)
        t, hit = _intersect_ellipsoid(origin, direction, target.radii)
        return origin + t[..., None] * direction, hit
    if grid.projection == "perspective":
        rot, f, cx, cy = _perspective_camera(p)
        if state is None:
            state = frame_state(target, float(p["et"]))
        rays = np.stack([cols - cx, rows - cy, np.full_like(cols, f)], axis=-1)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        if rays.size == 0:
            return np.zeros(rows.shape + (3,)), np.zeros(rows.shape, bool)
        pts = intersect_rays(state, rot, rays, target)
        return pts.pos_body_km, pts.hit
    raise ProjectionError(f"unknown projection {grid.projection!r}", hint=f"one of {PROJECTIONS}")


def _pole_px(grid: MapGrid) -> tuple[float, float]:
    """(column, row) of a polar grid's pole in pixels from its left and top edges (the
    grid's centre when the definition predates windows)."""
    p = grid.params
    return float(p.get("pole_col_px", grid.width / 2.0)), float(p.get("pole_row_px", grid.height / 2.0))


def crop_grid(grid: MapGrid, rows: tuple[int, int], cols: tuple[int, int]) -> MapGrid:
    """The window ``[rows[0]:rows[1], cols[0]:cols[1]]`` (array indices, half-open; may
    reach past the grid) of an equirectangular or polar grid as a grid of its own: pixel
    ``[r, c]`` of the result shows what pixel ``[r + rows[0], c + cols[0]]`` of ``grid``
    shows (the same lattice; polar: the pole moves, equirectangular: the edges)."""
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    if r1 <= r0 or c1 <= c0:
        raise ProjectionError(f"empty window rows {r0}..{r1}, columns {c0}..{c1}")
    p = dict(grid.params)
    shape = (r1 - r0, c1 - c0)
    if grid.projection == "polar":
        pole_col, pole_row = _pole_px(grid)
        p.update(pole_col_px=pole_col - c0, pole_row_px=pole_row - r0)
    elif grid.projection == "equirectangular":  # edges as make_grid writes them
        ppd = float(p["px_per_deg"])
        left_e = float(np.mod(float(p["lon_left_east_deg"]) + c0 / ppd, 360.0))
        top = float(p["lat_top_deg"]) - r0 / ppd
        right_e = left_e + shape[1] / ppd
        east = grid.lon_convention == "east"
        p.update(lon_left_east_deg=left_e, lat_top_deg=top, lat_bottom_deg=top - shape[0] / ppd,
                 lon_left_deg=left_e if east else float(np.mod(-left_e, 360.0) or 360.0),
                 lon_right_deg=float(np.mod(right_e if east else -right_e, 360.0)))
    else:
        raise ProjectionError(f"{grid.projection} grids are not cropped",
                              hint="crop equirectangular or polar grids")
    return MapGrid(grid.projection, shape, grid.target, grid.lon_convention, grid.lat_convention, p)


def _window(col: np.ndarray, row: np.ndarray, margin_px: int, shape: tuple[int, int]
            ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, columns) half-open ranges of the pixels holding points at index coordinates
    (col, row), plus ``margin_px``, within a grid of ``shape`` (a point at index x lies in
    pixel floor(x + 0.5))."""
    ok = np.isfinite(col) & np.isfinite(row)
    col, row = col[ok], row[ok]
    if not len(col):
        raise ProjectionError("nothing to frame: no point falls on the grid")
    m = margin_px
    (r0, r1), (c0, c1) = (math.floor(float(row.min()) + 0.5), math.floor(float(row.max()) + 0.5)), \
        (math.floor(float(col.min()) + 0.5), math.floor(float(col.max()) + 0.5))
    return (max(0, r0 - m), min(shape[0], r1 + m + 1)), (max(0, c0 - m), min(shape[1], c1 + m + 1))


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
        pole_col, pole_row = _pole_px(grid)
        return x * ppd + pole_col - 0.5, y * ppd + pole_row - 0.5
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
    """Surface points of a coarse lattice of one framelet's pixels (incl. its border), and
    in the lattice cells cut by the limb the hit points found next to it."""

    frame: int
    band: str
    points: SurfacePoints  # (ny, nx) lattice
    #: (k, 3) body-fixed points within :data:`LIMB_SEARCH_PX` framelet px of the limb, on
    #: the edges and diagonals of the lattice cells whose corners do not all hit
    limb_pos_body_km: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    #: (k,) flat index of the lattice cell (of the (ny - 1, nx - 1) cells) each belongs to
    limb_cell: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _lattice(n0: float, n1: float, step: float) -> np.ndarray:
    n = max(2, int(math.ceil((n1 - n0) / step)) + 1)
    return np.linspace(n0, n1, n)


#: Framelet pixels within which the limb is located in footprint cells it cuts (bisection).
LIMB_SEARCH_PX = 0.25


def _limb_points(geometry: ImageGeometry, frame: int, band: str, xx: np.ndarray, yy: np.ndarray,
                 hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hit points next to the limb on the edges and diagonals of the lattice cells cut by it
    (bisection from the hit corner towards the missing one), and their cells' flat indices."""
    quads = _corner_stack(hit)
    cut = np.flatnonzero((quads.any(axis=0) & ~quads.all(axis=0)).ravel())
    if not len(cut):
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    n_c = hit.shape[1] - 1
    ci, cj = np.divmod(cut, n_c)
    corners = ((0, 0), (1, 0), (0, 1), (1, 1))
    inner, outer, cell = [], [], []
    for a in range(4):
        for b in range(a + 1, 4):
            ia, ja = ci + corners[a][0], cj + corners[a][1]
            ib, jb = ci + corners[b][0], cj + corners[b][1]
            ha, hb = hit[ia, ja], hit[ib, jb]
            for sel, (i_in, j_in, i_out, j_out) in ((ha & ~hb, (ia, ja, ib, jb)),
                                                    (hb & ~ha, (ib, jb, ia, ja))):
                inner.append(np.stack([xx[i_in, j_in][sel], yy[i_in, j_in][sel]], axis=-1))
                outer.append(np.stack([xx[i_out, j_out][sel], yy[i_out, j_out][sel]], axis=-1))
                cell.append(cut[sel])
    lo, hi, cells = np.concatenate(inner), np.concatenate(outer), np.concatenate(cell)
    length = float(np.max(np.hypot(*(hi - lo).T))) if len(lo) else 0.0
    for _ in range(max(1, math.ceil(math.log2(max(length, 1.0) / LIMB_SEARCH_PX)))):
        mid = 0.5 * (lo + hi)
        pts = geometry.surface_points(frame, band, mid[:, 0], mid[:, 1])
        lo = np.where(pts.hit[:, None], mid, lo)
        hi = np.where(pts.hit[:, None], hi, mid)
    pos = geometry.surface_points(frame, band, lo[:, 0], lo[:, 1])
    return pos.pos_body_km[pos.hit], cells[pos.hit]


#: Footprints of the geometries alive: (id, step) -> (weak reference, footprints).
_FOOTPRINTS: dict[tuple[int, float], tuple[weakref.ref[Any], list[Footprint]]] = {}


def framelet_footprints(geometry: ImageGeometry, *, step_px: float = 16.0) -> list[Footprint]:
    """Surface points of a lattice (every ``step_px``, border included) of every framelet,
    and next to the limb where it cuts a lattice cell (:func:`_limb_points`).

    Remembered while ``geometry`` lives (an :class:`ImageGeometry` is immutable): a
    product's grids and projections (make_grid, project, each projection) share them."""
    key = (id(geometry), float(step_px))
    known = _FOOTPRINTS.get(key)
    if known is not None and known[0]() is geometry:
        return known[1]
    out = _footprints(geometry, step_px)
    try:
        ref = weakref.ref(geometry, lambda _, key=key: _FOOTPRINTS.pop(key, None))  # type: ignore[misc]
    except TypeError:  # not weakly referable (a stand-in geometry): not remembered
        return out
    _FOOTPRINTS[key] = (ref, out)
    return out


def _footprints(geometry: ImageGeometry, step_px: float) -> list[Footprint]:
    out = []
    for band in geometry.meta.filters:
        cam = geometry.cameras[band]
        rows, _ = cam.shape
        cols = cam.photoactive_columns()
        x = _lattice(cols.start + 0.5, cols.stop - 0.5, step_px)
        y = _lattice(0.5, rows - 0.5, step_px / 2.0)
        xx, yy = np.meshgrid(x, y)
        for frame in range(geometry.n_frames):
            pts = geometry.surface_points(frame, band, xx, yy)
            limb, cells = _limb_points(geometry, frame, band, xx, yy, pts.hit)
            out.append(Footprint(frame, band, pts, limb, cells))
    return out


def _hit_points(footprints: Sequence[Footprint]) -> np.ndarray:
    pts = [fp.points.pos_body_km[fp.points.hit] for fp in footprints]
    pts = [p for p in pts if len(p)]
    if not pts:
        raise ProjectionError("the target is not seen in any framelet",
                              hint="check the pointing solution and the kernels")
    return np.concatenate(pts)


def _extent_points(footprints: Sequence[Footprint]) -> np.ndarray:
    """Body-fixed points bounding what the framelets see: the footprint lattice's hits and
    the points next to the limb in the cells it cuts (the lattice's last hit corner can lie
    far from the limb at grazing emission)."""
    limb = [fp.limb_pos_body_km for fp in footprints if len(fp.limb_pos_body_km)]
    return np.concatenate([_hit_points(footprints), *limb])


def _best_resolution_km(geometry: ImageGeometry, footprints: Sequence[Footprint]) -> float:
    best = math.inf
    for fp in footprints:
        if fp.points.hit.any():
            best = min(best, float(np.nanmin(fp.points.range_km[fp.points.hit]))
                       * geometry.ifov_rad(fp.band))
    return best


def _largest_gap_east(lon_east_deg: np.ndarray) -> tuple[float, float]:
    """(start, width) of the largest circular gap between east longitudes (deg)."""
    lon = np.sort(np.mod(np.asarray(lon_east_deg, np.float64).ravel(), 360.0))
    gaps = np.diff(np.concatenate([lon, [lon[0] + 360.0]]))
    i = int(np.argmax(gaps))
    return float(lon[i]), float(gaps[i])


#: Footprint points lit from higher than this (incidence below, deg) place the cut of an
#: all-longitude map: near a pole of Jupiter (axial tilt 3 deg) the Sun is always lower, so
#: the ring of points around a pole does not hide where the night side lies.
CUT_LIT_INCIDENCE_DEG = 84.0


def _lon_window_east(lon_east_deg: np.ndarray, incidence_deg: np.ndarray, pad_deg: float
                     ) -> tuple[float, float]:
    """Default longitude window (left edge east, width) of an equirectangular map of points
    at ``lon_east_deg``: the smallest arc covering them plus ``pad_deg`` on each side; when
    they leave no gap of :data:`FULL_CIRCLE_GAP_DEG` (an image around a pole), all 360 deg,
    cut where the image shows least: in the middle of the largest gap between the
    longitudes of the points lit from higher than :data:`CUT_LIT_INCIDENCE_DEG` (the middle
    of the night side), failing that of the points lit at all, failing that of all points."""
    lon = np.mod(np.asarray(lon_east_deg, np.float64).ravel(), 360.0)
    start, gap = _largest_gap_east(lon)
    if gap > FULL_CIRCLE_GAP_DEG:
        return float(np.mod(start + gap, 360.0)) - pad_deg, min(360.0, 360.0 - gap + 2.0 * pad_deg)
    inc = np.asarray(incidence_deg, np.float64).ravel()
    for sel in (inc < CUT_LIT_INCIDENCE_DEG, inc < 90.0, np.ones(lon.shape, bool)):
        if sel.any():
            start, gap = _largest_gap_east(lon[sel])
            break
    return float(np.mod(start + gap / 2.0, 360.0)), 360.0


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

    Native scale: one output pixel per framelet pixel at the image's *best* ground
    resolution, ``px_per_deg = (pi / 180) R_equatorial / min(range x IFOV)`` over the
    footprint (so nothing is undersampled in latitude; everywhere else, and in longitude
    towards a pole on an equirectangular map, the map oversamples the image). Perspective:
    JunoCam's focal length (one output pixel per IFOV).

    ``bounds`` (equirectangular): ``(lon_min, lon_max, lat_min, lat_max)`` in the chosen
    conventions (``lon`` "west"/"east", ``lat`` "centric"/"graphic"; a longitude range may
    wrap through 0, e.g. 350..10), or ``"global"``. ``resolution_px_per_deg``: pixels per
    degree of latitude (map projections; default: the image's best ground resolution) or
    per degree of field (perspective; default: JunoCam's IFOV). Polar: ``pole``
    north/south (default: the hemisphere seen most), ``polar_kind``
    equidistant/stereographic; by default out to the colatitude seen farthest from the pole
    and cut to the footprint plus :data:`POLAR_MARGIN_PX` (the pole may lie outside:
    ``pole_col_px``/``pole_row_px`` place it), ``bounds=(radius_deg,)`` or ``"global"``
    the whole disc of that radius. Orthographic: ``centre_lat_lon_deg`` in the chosen
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
            pad = 2.0 / ppd  # 1 px left a grazing limb pixel out (44M00040)
            ext = _extent_points(footprints)
            mid = geometry.states[geometry.n_frames // 2]
            incidence = np.degrees(np.arccos(np.clip(_view_angles(
                ext, target.radii, mid.observer_pos_body_km, mid.sun_pos_body_km)[:, 1], -1.0, 1.0)))
            ll_ext = lonlat_from_body(ext, target)
            left_e, width = _lon_window_east(ll_ext["lon_east_deg"], incidence, pad)
            lat_min = max(-90.0, float(ll_ext[lat_key].min()) - pad)
            lat_max = min(90.0, float(ll_ext[lat_key].max()) + pad)
            if width >= 360.0:  # all longitudes around a pole: it is seen, up to it
                if lat_max >= -lat_min:
                    lat_max = 90.0
                else:
                    lat_min = -90.0
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
        if lat_min + h / ppd > 90.0:  # rows past the pole would show its far side again
            lat_min = 90.0 - h / ppd
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
        if isinstance(bounds, str):
            if bounds.lower() != "global":
                raise ProjectionError(f"unknown bounds {bounds!r}", hint="a radius (deg) or 'global'")
            radius = cap
        elif bounds is None:
            radius = float(min(cap, colat.max() + 1.0 / ppd))
        else:
            radius = float(bounds[0])
            if not 0.0 < radius <= cap:
                raise ProjectionError(f"polar radius {radius} deg of colatitude is out of range",
                                      hint=f"give 0 < radius <= {cap:g}")
        rho = math.degrees(2 * math.tan(math.radians(min(radius, 179.0)) / 2)) \
            if kind == "stereographic" else radius
        side = _grid_side(2 * rho * ppd, "the polar map")
        params = {**base, "pole": pole, "kind": kind, "radius_deg": radius,
                  "latitude_used": "planetocentric colatitude",
                  "pole_col_px": side / 2.0, "pole_row_px": side / 2.0}
        disc = MapGrid(projection, (side, side), target, lon, lat, params)
        if bounds is not None:  # the radius asked for: the whole disc
            return disc
        # cut to the footprint (lattice and limb points) plus POLAR_MARGIN_PX
        col, row = grid_xy_from_body(disc, _extent_points(footprints))
        return crop_grid(disc, *_window(col, row, POLAR_MARGIN_PX, disc.shape))

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
    tightly. Equirectangular cells are unwrapped in longitude (a cell across the map's
    longitude seam gives a box on each side), grow towards the pole by the most an arc
    between their corners can bulge there, and only cells around a pole (or cut by the
    limb and wider than a quarter turn) get the full width up to the map's top or bottom edge.
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
    equirect = grid.projection == "equirectangular"
    if len(fp.limb_cell):  # cells cut by the limb reach (nearly) to it: its points join them
        lc, lr = grid_xy_from_body(grid, fp.limb_pos_body_km, state=state)
        good = np.isfinite(lc) & np.isfinite(lr)
        extra_c = np.full((len(fp.limb_cell),) + full.shape, np.nan).reshape(len(fp.limb_cell), -1)
        extra_r = extra_c.copy()
        k = np.flatnonzero(good)
        extra_c[k, fp.limb_cell[good]] = lc[good]
        extra_r[k, fp.limb_cell[good]] = lr[good]
        quads_c = np.concatenate([quads_c, extra_c.reshape((-1,) + full.shape)])
        quads_r = np.concatenate([quads_r, extra_r.reshape((-1,) + full.shape)])
    pole = np.zeros_like(full)
    bulge = np.zeros(full.shape)
    if equirect and some.any():
        ppd = float(grid.params["px_per_deg"])
        turn = 360.0 * ppd
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.fmax.reduce(quads_c, axis=0)  # a corner that hit (NaN where none)
            quads_c = ref + np.mod(quads_c - ref + turn / 2, turn) - turn / 2  # unwrapped
            cyc = quads_c[[0, 1, 3, 2]]  # around the cell
            winding = (np.mod(np.roll(cyc, -1, axis=0) - cyc + turn / 2, turn) - turn / 2).sum(axis=0)
        pole = full & (np.abs(np.nan_to_num(winding)) > turn / 2)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells are dropped below
        cmin, cmax = np.nanmin(quads_c, axis=0), np.nanmax(quads_c, axis=0)
        rmin, rmax = np.nanmin(quads_r, axis=0), np.nanmax(quads_r, axis=0)
    # cells cut by the limb: the missing corners lie towards the limb, within about the cell's
    # own extent (capped: at grazing emission the weight is ~0 anyway)
    own = np.nan_to_num(np.maximum(cmax - cmin, rmax - rmin))
    margin = np.where(full, 2.0, np.clip(own, 4.0, 64.0) + 2.0)
    wrap = pole
    north = rmin < h / 2
    if equirect:
        ppd = float(grid.params["px_per_deg"])
        wrap = pole | (some & ~full & (cmax - cmin > 0.25 * 360.0 * ppd))
        # an arc between corners at latitude <= lat spanning dlon reaches at most
        # atan(tan(lat) / cos(dlon / 2)) (a great circle on the sphere)
        top = float(grid.params["lat_top_deg"])
        with np.errstate(invalid="ignore"):
            lat = np.radians(np.clip(np.abs(top - (np.where(north, rmin, rmax) + 0.5) / ppd), 0.0, 90.0))
            half = np.radians(np.clip((cmax - cmin) / ppd, 0.0, 179.0)) / 2.0
            reach = np.arctan2(np.tan(np.minimum(lat, np.radians(89.999))), np.cos(half))
            bulge = np.nan_to_num(np.degrees(reach - lat) * ppd)
    cmin, cmax, rmin, rmax = (np.nan_to_num(a, nan=-1.0) for a in (cmin, cmax, rmin, rmax))
    c0 = np.floor(cmin - margin)
    c1 = np.ceil(cmax + margin) + 1
    r0 = np.clip(np.floor(rmin - margin - np.where(north, bulge, 0.0)), 0, h).astype(int)
    r1 = np.clip(np.ceil(rmax + margin + np.where(north, 0.0, bulge)) + 1, 0, h).astype(int)
    if wrap.any():
        c0[wrap], c1[wrap] = 0, w
        r0[wrap & north] = 0
        r1[wrap & ~north] = h
    keep = some & (r0 < r1)
    boxes = []
    shifts = (0.0, 360.0 * float(grid.params["px_per_deg"]), -360.0 * float(grid.params["px_per_deg"])) \
        if equirect else (0.0,)
    for shift in shifts:  # the parts of unwrapped boxes beyond the seam, on the other side
        a = np.clip(c0 + shift, 0, w).astype(int)
        b = np.clip(c1 + shift, 0, w).astype(int)
        k = keep & (a < b) & (~wrap if shift else True)
        boxes += list(zip(r0[k].tolist(), r1[k].tolist(), a[k].tolist(), b[k].tolist(), strict=True))
    return boxes


def _cell_box(boxes: Sequence[tuple[int, int, int, int]], step: int
              ) -> tuple[int, int, np.ndarray] | None:
    """Lattice cells touched by any output-pixel box (r0, r1, c0, c1), on the boxes' own
    bounding box only: ``(first cell row, first cell column, bool cells)``, None without boxes."""
    if not boxes:
        return None
    b = np.asarray(boxes, np.int64)
    r0, r1 = b[:, 0] // step, -(-b[:, 1] // step)
    c0, c1 = b[:, 2] // step, -(-b[:, 3] // step)
    i0, j0 = int(r0.min()), int(c0.min())
    n_r, n_c = int(r1.max()) - i0, int(c1.max()) - j0
    r0, r1, c0, c1 = r0 - i0, r1 - i0, c0 - j0, c1 - j0
    acc = np.zeros((n_r + 1, n_c + 1), np.int32)  # 2-D difference array
    np.add.at(acc, (r0, c0), 1)
    np.add.at(acc, (r0, c1), -1)
    np.add.at(acc, (r1, c0), -1)
    np.add.at(acc, (r1, c1), 1)
    return i0, j0, acc.cumsum(axis=0).cumsum(axis=1)[:n_r, :n_c] > 0


def _corners(cells: np.ndarray) -> np.ndarray:
    """Lattice nodes (bool (rows + 1, cols + 1)) at the corners of the given cells."""
    out = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), bool)
    out[:-1, :-1] |= cells
    out[1:, :-1] |= cells
    out[:-1, 1:] |= cells
    out[1:, 1:] |= cells
    return out


def _corner_stack(v: np.ndarray) -> np.ndarray:
    """Node values (rows + 1, cols + 1, ...) -> the 4 corners of every cell (4, rows, cols, ...)."""
    return np.stack([v[:-1, :-1], v[1:, :-1], v[:-1, 1:], v[1:, 1:]])


def _centre_error_px(p00: np.ndarray, p10: np.ndarray, p01: np.ndarray, p11: np.ndarray, centre: np.ndarray,
                     radius_km: float, step: int) -> np.ndarray:
    """How far (output px of the cell) the bilinear surface point at a lattice cell's centre
    lies from the true one ``centre``; corners (..., 3) body-fixed km: p10 one step down, p01
    one step right. Only the error across the line from the body centre counts: the radial
    part (the chord's sagitta) changes neither lat/lon nor, seen from afar, a framelet
    position. NaN where a point misses."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = 0.25 * (p00 + p10 + p01 + p11)
        err_km = radius_km * norm3(centre / norm3(centre)[..., None] - mean / norm3(mean)[..., None])
        # the cell's own pixel size (km): the shorter of its mean row and column steps
        along_row = 0.5 * (norm3(p01 - p00) + norm3(p11 - p10))
        along_col = 0.5 * (norm3(p10 - p00) + norm3(p11 - p01))
        return err_km * step / np.minimum(along_row, along_col)


def _surface_to_px(geometry: ImageGeometry, frame: int, band: str, x_km: np.ndarray,
                   y_km: np.ndarray, z_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fast = getattr(geometry, "surface_to_px_xyz", None)
    if fast is not None:
        return fast(frame, band, x_km, y_km, z_km, workers=1)
    return geometry.surface_to_px(frame, band, np.stack([x_km, y_km, z_km], axis=-1))


#: A framelet's fill: flat indices of its invalid photoactive pixels (int32), the values
#: filled in there (float32) and whether each is usable (bool).
_Fill = tuple[np.ndarray, np.ndarray, np.ndarray]


def _filled(data: np.ndarray, ok_px: np.ndarray, cols: slice, known: _Fill | None = None
            ) -> tuple[np.ndarray, np.ndarray, _Fill | None]:
    """A framelet with invalid pixels filled by normalised Gaussian convolution of valid ones,
    where the fill is usable (float32 1/0), photoactive columns only, and the fill itself
    (None without invalid pixels). ``known``: the fill of an earlier call for the same
    framelet, used when its invalid pixels are the same (the convolutions are skipped)."""
    src = np.where(ok_px, data, np.float32(0.0)).astype(np.float32)
    okf = ok_px.astype(np.float32)
    if ok_px[:, cols].all():
        return src, okf, None
    photo = np.zeros(ok_px.shape, bool)
    photo[:, cols] = True
    idx = np.flatnonzero(~ok_px & photo).astype(np.int32)
    if known is not None and np.array_equal(known[0], idx):
        fill = known
    else:
        filled = src.copy()
        todo = ~ok_px
        for sigma in (1.5, 6.0):
            num = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            wsum = cv2.GaussianBlur(okf, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            take = todo & (wsum > 1e-3)
            filled[take] = num[take] / wsum[take]
            todo &= ~take
        fill = (idx, filled.reshape(-1)[idx], ~todo.reshape(-1)[idx])
    out = src.copy()
    out.reshape(-1)[fill[0]] = fill[1]
    usable = ok_px & photo
    usable.reshape(-1)[fill[0]] = fill[2]
    return out, usable.astype(np.float32), fill


#: Fills of the images alive: id -> (weak reference, {(frame, band index): fill}).
_FILLS: dict[int, tuple[weakref.ref[Any], dict[tuple[int, int], _Fill]]] = {}


def _fills_of(image: Any) -> dict[tuple[int, int], _Fill]:
    """The framelet fills computed for ``image`` while it lives (each projection of a
    product fills the same invalid pixels; a fill is reused only where the framelet's
    invalid pixels are the same). Images are records: their arrays are not changed in
    place. An image that cannot be weakly referenced gets a fresh dict."""
    key = id(image)
    known = _FILLS.get(key)
    if known is not None and known[0]() is image:
        return known[1]
    fills: dict[tuple[int, int], _Fill] = {}
    try:
        ref = weakref.ref(image, lambda _, key=key: _FILLS.pop(key, None))  # type: ignore[misc]
    except TypeError:
        return fills
    _FILLS[key] = (ref, fills)
    return fills


def _image_arrays(image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data, usable, saturated): saturated pixels with no other flag are usable as they are
    (a lower bound of the signal, never replaced by a neighbour's value)."""
    data = np.asarray(image.data, dtype=np.float32)
    if data.ndim != 4:
        raise ProjectionError(f"calibrated data must be (frames, filters, rows, samples), got {data.shape}")
    valid = getattr(image, "valid", None)
    valid = np.isfinite(data) if valid is None else np.asarray(valid, bool) & np.isfinite(data)
    saturated = getattr(image, "saturated", None)
    flags = getattr(image, "flags", None)
    if saturated is None or not np.asarray(saturated).any():
        return data, valid, None
    saturated = np.asarray(saturated, bool) & np.isfinite(data)
    if flags is not None:
        saturated &= np.asarray(flags) == FLAG_SATURATED
    return data, valid | saturated, saturated


def _view_angles(pos: np.ndarray, radii: np.ndarray, observer: np.ndarray, sun: np.ndarray
                 ) -> np.ndarray:
    """(n, 4) float64 cos(emission), cos(incidence), cos(phase), range (km) of surface points
    (n, 3) seen from ``observer`` and lit from ``sun`` (body frame, geometric directions)."""
    normal = pos / radii**2
    normal /= norm3(normal)[:, None]
    to_obs = observer - pos
    rng = norm3(to_obs)
    to_obs /= rng[:, None]
    to_sun = sun - pos
    to_sun /= norm3(to_sun)[:, None]
    return np.stack([np.einsum("ij,ij->i", normal, to_obs), np.einsum("ij,ij->i", normal, to_sun),
                     np.einsum("ij,ij->i", to_obs, to_sun), rng], axis=-1)


def _warp_nodes(nodes: np.ndarray, step: int, node_r0: int, node_c0: int, rows: tuple[int, int],
                cols: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of node values (n_r, n_c[, ch]; node [i, j] at output index
    ((node_r0 + i) * step, (node_c0 + j) * step)) at the output pixels rows x cols (half-open
    ranges) -> (rows, cols[, ch]) float32. The lattice step is a power of two, so the source
    positions (multiples of 1/step) are exact in OpenCV's 1/32 px interpolation table."""
    m = np.array([[1.0 / step, 0.0, cols[0] / step - node_c0],
                  [0.0, 1.0 / step, rows[0] / step - node_r0]])
    return cv2.warpAffine(nodes, m, (cols[1] - cols[0], rows[1] - rows[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class _Band:
    """Per-band constants of the inverse mapping."""

    name: str
    rows: int
    cols: slice
    ifov_rad: float
    feather: np.ndarray  # (rows, samples) float32 smoothstep(d_edge / feather_px), 0 off the photoactive area
    mask: np.ndarray     # (rows, samples) float32 1 on the photoactive area eroded by the kernel's support


@dataclass
class _Source:
    """One framelet ready for sampling.

    ``gate`` is the feather where the sample's interpolation support is valid, -:data:`_GATE_INVALID`
    at invalid photoactive pixels and -:data:`_GATE_OUTSIDE` off the photoactive area, so that one
    bilinear sample of it is >= 0 exactly when the sample may be used as is; samples with
    -:data:`_GATE_FALLBACK` < gate < 0 touch invalid pixels and get the fallback rule.
    """

    value: np.ndarray
    gate: np.ndarray
    has_invalid: bool
    usable: np.ndarray  # 1 where the filled value may serve as a fallback
    saturated: np.ndarray | None = None  # float32 1 at saturated pixels (used as they are, marked)
    full: np.ndarray | None = None  # (rows, samples, 4) [value, eroded valid mask, usable fill, feather]


_GATE_INVALID = 1e4
_GATE_OUTSIDE = 1e8
_GATE_FALLBACK = 1e6


class _Projector:
    """The lattice-interpolated inverse mapping of one image onto one grid, strip by strip.

    See :func:`project` for the model; this class holds what the strips share.
    """

    def __init__(self, data: np.ndarray, valid: np.ndarray, saturated: np.ndarray | None,
                 geometry: ImageGeometry, grid: MapGrid,
                 grid_state: FrameState | None, footprints: Sequence[Footprint], *, flag: int,
                 support: int, feather_px: float, resolution_exponent: float, fill_invalid: bool,
                 max_error_px: float, frame_order: Sequence[int],
                 fills: dict[tuple[int, int], _Fill] | None = None) -> None:
        self.data, self.valid, self.geometry, self.grid = data, valid, geometry, grid
        self.fills: dict[tuple[int, int], _Fill] = {} if fills is None else fills
        self.saturated = saturated
        self.grid_state = grid_state
        self.flag, self.support, self.fill_invalid = flag, support, fill_invalid
        self.k_res = float(resolution_exponent)
        self.max_error_px = float(max_error_px)
        self.frame_order = list(frame_order)
        h, w = grid.shape
        p = grid.params
        if grid.projection == "orthographic":
            px_km = float(p["km_per_px"])
        elif grid.projection == "perspective":  # at the nearest surface point
            px_km = float(np.linalg.norm(p["observer_pos_body_km"]) - max(grid.target.radii_km)) \
                / float(p["focal_px"])
        else:
            px_km = math.radians(1.0) * grid.target.radii_km[0] / float(p["px_per_deg"])
        # lattice cells of at most ~LATTICE_CELL_PX framelet pixels (a power of two in output px)
        ratio = LATTICE_CELL_PX * _best_resolution_km(geometry, footprints) / max(px_km, 1e-9)
        if grid.projection == "perspective":  # foreshortened towards the limb: half the cell
            ratio /= 2.0                        # (2.7x faster than the full one on PJ44)
        s = int(2 ** np.clip(math.floor(math.log2(max(ratio, 1.0))), 0, 4))
        self.radii = grid.target.radii
        # the backplanes' angles keep the rule's lattice: they bend more than the mapping
        # (44C00032 at twice the step: 0.05 instead of 0.014 deg at the cell centres)
        self.backplane_step = s
        if grid.projection in PILOT_PROJECTIONS:
            s = self._pilot_step(geometry, footprints, s)
        self.step = s
        self.n_cells = (-(-h // s), -(-w // s))
        self.col_nodes = np.arange(self.n_cells[1] + 1, dtype=np.float64) * s
        self.kernel = None if support == 0 else np.ones((2 * support + 1, 2 * support + 1), np.uint8)
        self.bands: list[_Band] = []
        for band in geometry.meta.filters:
            cam = geometry.cameras[band]
            rows, samples = cam.shape
            cols = cam.photoactive_columns()
            yy, xx = np.mgrid[0:rows, 0:samples].astype(np.float32)
            d_edge = np.minimum(np.minimum(yy + 0.5, rows - 0.5 - yy),
                                np.minimum(xx + 0.5 - cols.start, cols.stop - 0.5 - xx))
            feather = _smoothstep(d_edge / np.float32(feather_px)).astype(np.float32)
            feather[:, :cols.start] = 0.0
            feather[:, cols.stop:] = 0.0
            mask = np.zeros((rows, samples), np.uint8)
            mask[:, cols] = 1
            self.bands.append(_Band(band, rows, cols, geometry.ifov_rad(band), feather,
                                    self._erode(mask).astype(np.float32)))
        by_key = {(fp.frame, fp.band): fp for fp in footprints}
        # per frame, per band: the lattice cells its footprint may reach, on their bounding
        # box (b, first cell row, first cell column, cells); the bands of one frame see
        # different strips of the surface, so each is mapped on its own cells only
        self.band_cells: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
        for frame in range(geometry.n_frames):
            entries = []
            for b, band in enumerate(geometry.meta.filters):
                fp = by_key.get((frame, band))
                found = None if fp is None else _cell_box(_chunk_boxes(grid, fp, grid_state), s)
                if found is not None and found[2].any():
                    entries.append((b, *found))
            if entries:
                self.band_cells[frame] = entries
        self.mid_state = geometry.states[geometry.n_frames // 2]
        #: the backplane resolution_km_per_px is range_km x this (the first band's IFOV)
        self.resolution_ifov_rad = float(np.float32(geometry.ifov_rad(geometry.meta.filters[0])))
        self._sources: dict[tuple[int, int], _Source] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all_stats: list[dict[str, float]] = []
        self._in_copy = False  # set in a forked copy: it samples its own memory
        self._private_peak_kb = 0

    @property
    def stats(self) -> dict[str, float]:
        """This thread's step timings (s) and counts; :meth:`totals` sums the threads'."""
        st: dict[str, float] | None = getattr(self._local, "stats", None)
        if st is None:
            st = dict.fromkeys(("lattice_s", "exact_s", "sample_blend_s", "output_s", "backplanes_s",
                                "samples", "fallback_samples", "dense_px", "exact_px", "nodes"), 0)
            self._local.stats = st
            with self._lock:
                self._all_stats.append(st)
        return st

    def totals(self) -> dict[str, float]:
        keys = self._all_stats[0] if self._all_stats else {}
        return {k: sum(st[k] for st in self._all_stats) for k in keys}

    def run(self, out: _Outputs, workers: int) -> None:
        """All strips (on ``workers`` threads; strips write disjoint rows); a framelet's
        prepared source is dropped once the last strip that needs it is done."""
        step = STRIP_ROWS // self.step
        strips = [(k0, min(k0 + step, self.n_cells[0])) for k0 in range(0, self.n_cells[0], step)]
        needs = {f: [k0 for k0, k1 in strips
                     if any(cells[max(k0 - i0, 0):max(k1 - i0, 0)].any() for _, i0, _, cells in entries)]
                 for f, entries in self.band_cells.items()}
        remaining = {f: len(v) for f, v in needs.items()}

        def task(k0: int, k1: int) -> float:
            peak = self.strip(k0, k1, out)
            with self._lock:
                for f, starts in needs.items():
                    if k0 in starts:
                        remaining[f] -= 1
                        if not remaining[f]:
                            for key in [key for key in self._sources if key[0] == f]:
                                del self._sources[key]
            return peak

        n = min(workers, len(strips))
        if n <= 1:
            peaks = [task(k0, k1) for k0, k1 in strips]
        elif out.shared:
            with cv2_serial():
                peaks = self._run_forked(strips, needs, out, n)
        else:
            with cv2_serial(), ThreadPoolExecutor(max_workers=n) as pool:
                peaks = list(pool.map(lambda ks: task(*ks), strips))
        out.peak = max(peaks, default=0.0)

    def _run_forked(self, strips: Sequence[tuple[int, int]], needs: Mapping[int, Sequence[int]],
                    out: _Outputs, n: int) -> list[float]:
        """The strips on this process and ``n - 1`` forked copies of it, each single-threaded
        (threads share one interpreter lock: on 2 cores two strip threads ran only ~1.3x
        faster than one). The output arrays are shared memory; every process takes the next
        strip index from one pipe (4-byte reads of a pipe are atomic) until it is empty, and
        marks each strip it finishes. A copy sends its timings back and exits; strips a copy
        did not finish (it failed or was killed) are projected here afterwards, so an error
        is raised from this process with its own traceback."""
        last_need = {f: max(v) for f, v in needs.items() if v}
        done = shared_empty((len(strips),), np.uint8)
        done[:] = 0
        queue_r, queue_w = os.pipe()
        os.write(queue_w, np.arange(len(strips), dtype=np.int32).tobytes())
        os.close(queue_w)

        def work() -> float:
            peak = 0.0
            while True:
                got = os.read(queue_r, 4)
                if len(got) < 4:
                    return peak
                i = int(np.frombuffer(got, np.int32)[0])
                k0, k1 = strips[i]
                for f in [f for f, last in last_need.items() if last < k0]:
                    del last_need[f]  # no later strip needs this frame: drop its sources
                    for key in [key for key in self._sources if key[0] == f]:
                        del self._sources[key]
                peak = max(peak, self.strip(k0, k1, out))
                done[i] = 1

        children: list[tuple[int, int]] = []
        try:
            for _ in range(n - 1):
                result_r, result_w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the copy: project, report, exit without any cleanup
                    code = 1
                    try:
                        enter_copy()
                        self._in_copy = True
                        os.close(result_r)
                        peak = work()
                        private_mb = max(self._private_peak_kb, private_kb()) / 1024.0
                        report = {"peak": peak, "stats": self.totals(), "private_peak_mb": private_mb}
                        os.write(result_w, json.dumps(report).encode())
                        code = 0
                    finally:
                        os._exit(code)
                os.close(result_w)
                children.append((pid, result_r))
            peaks = [work()]
            for pid, result_r in children:
                with os.fdopen(result_r, "rb") as f:
                    text = f.read()
                os.waitpid(pid, 0)
                if text:
                    report = json.loads(text)
                    peaks.append(float(report["peak"]))
                    self._all_stats.append(report["stats"])
                    note_helper_peak_mb(float(report["private_peak_mb"]))
            children = []
        finally:
            for pid, _ in children:  # interrupted here: stop the copies
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
            os.close(queue_r)
        for i in np.flatnonzero(done == 0):  # a copy failed: its strips, here
            k0, k1 = strips[i]
            peaks.append(self.strip(k0, k1, out))
        return peaks

    def _erode(self, mask: np.ndarray) -> np.ndarray:
        if self.kernel is None:
            return mask
        return cv2.erode(mask, self.kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)

    # -- framelet sources --------------------------------------------------------------
    def _source(self, frame: int, b: int) -> _Source:
        key = (frame, b)
        with self._lock:
            src = self._sources.get(key)
        if src is None:
            band = self.bands[b]
            ok_px = self.valid[frame, b].copy()
            ok_px[:, :band.cols.start] = False
            ok_px[:, band.cols.stop:] = False
            has_invalid = not ok_px[:, band.cols].all()
            value, usable, fill = _filled(self.data[frame, b], ok_px, band.cols, self.fills.get(key))
            if fill is not None:
                self.fills[key] = fill
            if has_invalid:
                good = self._erode(ok_px.astype(np.uint8)).astype(bool)
                gate = np.where(good, band.feather, np.float32(-_GATE_INVALID)).astype(np.float32)
            else:
                gate = np.where(band.mask > 0, band.feather, np.float32(-_GATE_INVALID)).astype(np.float32)
            gate[:, :band.cols.start] = -_GATE_OUTSIDE
            gate[:, band.cols.stop:] = -_GATE_OUTSIDE
            sat = None
            if self.saturated is not None and self.saturated[frame, b][:, band.cols].any():
                sat = self.saturated[frame, b].astype(np.float32)
            src = _Source(value, gate, has_invalid, usable, sat)
            with self._lock:
                src = self._sources.setdefault(key, src)
        return src

    def _full_source(self, frame: int, b: int, src: _Source) -> np.ndarray:
        """[value, eroded valid mask, usable fill, feather] for the exact fallback rule."""
        if src.full is None:
            band = self.bands[b]
            mask = (src.gate >= 0).astype(np.float32)  # the eroded valid photoactive pixels
            src.full = cv2.merge([src.value, mask, src.usable, band.feather])
        return src.full

    # -- one strip of lattice cells ------------------------------------------------------
    def strip(self, k0: int, k1: int, out: _Outputs) -> float:
        """Project cell rows [k0, k1) into ``out``; returns the largest single-band weight sum."""
        s = self.step
        t0 = time.perf_counter()
        node_rows = (k0 + np.arange(k1 - k0 + 1, dtype=np.float64)) * s
        pos_n, hit_n = grid_points_at(self.grid, node_rows[:, None], self.col_nodes[None, :],
                                      state=self.grid_state)
        if s == 1:  # every pixel is a node: nothing is interpolated
            pos_c = pos_n[:-1, :-1]
            any_hit = hit_n[:-1, :-1]
            exact_grid = np.zeros_like(any_hit)
            smooth_grid = any_hit
        else:
            pos_c, hit_c = grid_points_at(self.grid, node_rows[:-1, None] + s // 2,
                                          self.col_nodes[None, :-1] + s // 2, state=self.grid_state)
            any_hit, exact_grid, smooth_grid = self._check_grid(pos_n, hit_n, pos_c, hit_c)
        ex_grid = self._exact_pixels(exact_grid, k0)  # (rows, cols, pos) of hit pixels in those cells
        self.stats["lattice_s"] += time.perf_counter() - t0
        return self._blend_strip(k0, k1, out, any_hit, exact_grid, smooth_grid, ex_grid, pos_n, hit_n, pos_c)

    def _check_grid(self, pos_n: np.ndarray, hit_n: np.ndarray, pos_c: np.ndarray, hit_c: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cells meeting the target, cells to compute exactly (the grid misses at some corner,
        or the bilinear surface point at the cell centre is off by more than the tolerance in
        output pixels of that cell), and the others."""
        corner_hit = _corner_stack(hit_n)
        any_hit = corner_hit.any(axis=0) | hit_c
        all_hit = corner_hit.all(axis=0) & hit_c
        p00, p10, p01, p11 = _corner_stack(pos_n)
        err_px = _centre_error_px(p00, p10, p01, p11, pos_c, self.radii[0], self.step)
        exact_grid = any_hit & ~(all_hit & (err_px <= self.max_error_px))
        return any_hit, exact_grid, all_hit & ~exact_grid

    def _pilot_step(self, geometry: ImageGeometry, footprints: Sequence[Footprint], step0: int) -> int:
        """The lattice step (a power of two: ``step0``, 2 ``step0`` or 4 ``step0``, at most 16)
        that costs least on a sample of the map: up to PILOT_SAMPLES_PER_FRAMELET output
        pixels under each framelet's footprint lattice. For each candidate step the cell
        around every sample gets the checks of a strip (the bilinear surface point and
        framelet position at the cell centre); a cell failing one is computed pixel by pixel.
        Cost per output pixel: 1 / step ** 2 (the nodes) + EXACT_PX_COST x the failing
        fraction. How far the mapping bends within a cell decides, not the resolution rule:
        PJ44's 44C00032 equirectangular map passes every check at twice the rule's step (0.80
        s instead of 1.45 s on one core), 43C00078's fails two cells in three there."""
        if step0 >= 16:
            return step0
        grid, state = self.grid, self.grid_state
        h, w = grid.shape
        samples: list[tuple[int, str, np.ndarray, np.ndarray]] = []
        for fp in footprints:
            col, row = grid_xy_from_body(grid, fp.points.pos_body_km[fp.points.hit], state=state)
            ok = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            if ok.any():
                pick = np.linspace(0, int(ok.sum()) - 1, min(int(ok.sum()), PILOT_SAMPLES_PER_FRAMELET))
                sel = np.flatnonzero(ok)[pick.astype(np.int64)]
                samples.append((fp.frame, fp.band, np.floor(row[sel]), np.floor(col[sel])))
        if not samples:
            return step0
        corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]])  # (row, col) in cells
        best = (math.inf, step0)
        for cand in (step0, 2 * step0, 4 * step0):
            if cand > 16:
                break
            n_bad = n_all = 0
            for frame, band, rr, cc in samples:
                r_org, c_org = np.floor(rr / cand) * cand, np.floor(cc / cand) * cand
                pos, hit = grid_points_at(grid, r_org[:, None] + cand * corners[:, 0],
                                          c_org[:, None] + cand * corners[:, 1], state=state)
                all_hit = hit.all(axis=1)
                bad = ~all_hit
                if cand > 1 and all_hit.any():
                    pts = pos[all_hit]  # (n, 5, 3): corners (r, c), (r+1, c), (r, c+1), (r+1, c+1), centre
                    grid_err = _centre_error_px(pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3], pts[:, 4],
                                                self.radii[0], cand)
                    x, y = _surface_to_px(geometry, frame, band, pts[..., 0], pts[..., 1], pts[..., 2])
                    err = np.hypot(x[:, :4].mean(axis=1) - x[:, 4], y[:, :4].mean(axis=1) - y[:, 4])
                    bad[all_hit] = ~(grid_err <= self.max_error_px) \
                        | ~(np.nan_to_num(err, nan=np.inf) <= self.max_error_px)
                n_bad += int(bad.sum())
                n_all += len(bad)
            cost = 1.0 / cand**2 + EXACT_PX_COST * n_bad / max(n_all, 1)
            if cost < best[0]:
                best = (cost, cand)
        return best[1]

    def _blend_strip(self, k0: int, k1: int, out: _Outputs, any_hit: np.ndarray, exact_grid: np.ndarray,
                     smooth_grid: np.ndarray, ex_grid: tuple[np.ndarray, np.ndarray, np.ndarray],
                     pos_n: np.ndarray, hit_n: np.ndarray, pos_c: np.ndarray) -> float:
        s = self.step
        h, w = self.grid.shape
        nb = len(self.bands)
        r0, r1 = k0 * s, min(k1 * s, h)
        sr = r1 - r0
        num = np.zeros((nb, sr, w), np.float32)
        den = np.zeros((nb, sr, w), np.float32)
        count = np.zeros((sr, w), np.uint16)
        seen_valid = np.zeros((nb, sr, w), bool)
        touched = np.zeros((nb, sr, w), bool)  # a saturated sample was blended in
        for frame in self.frame_order:
            for b, i0, j0, cells in self.band_cells.get(frame, ()):
                part = cells[max(k0 - i0, 0):max(k1 - i0, 0)]
                if not part.any():
                    continue
                cand = np.zeros_like(any_hit)
                a = max(i0 - k0, 0)
                cand[a:a + part.shape[0], j0:j0 + part.shape[1]] = part
                cand &= any_hit
                if cand.any():
                    self._frame_band(frame, b, k0, cand, smooth_grid, exact_grid, ex_grid, pos_n, pos_c,
                                     (num, den, count, seen_valid, touched))

        t0 = time.perf_counter()
        rows = slice(r0, r1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for b in range(nb):
                out.data[rows, :, b] = num[b] / den[b]  # 0 / 0 = NaN where unseen
        has = den > 0
        out.weight[rows] = den.mean(axis=0)
        peak = float(den.max()) if den.size else 0.0
        out.n_samples[rows] = count
        out.filled[rows] = (has & ~seen_valid).sum(axis=0, dtype=np.uint8)
        out.saturated[rows] = touched.sum(axis=0, dtype=np.uint8)
        self.stats["samples"] += int(count.sum(dtype=np.int64))
        if self._in_copy and not self._private_peak_kb:  # a forked copy's own memory, at its
            self._private_peak_kb = private_kb()  # largest now (once: reading it takes ~10 ms)
        t1 = time.perf_counter()
        self.stats["output_s"] += t1 - t0
        self._backplanes(k0, r0, r1, has.any(axis=0), pos_n, hit_n, smooth_grid, exact_grid, ex_grid, out)
        self.stats["backplanes_s"] += time.perf_counter() - t1
        return peak

    def _exact_pixels(self, cells: np.ndarray, k0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels (global row, col indices and body positions) of the given strip cells that hit."""
        s = self.step
        h, w = self.grid.shape
        ci, cj = np.nonzero(cells)
        if not len(ci):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
        dr, dc = np.divmod(np.arange(s * s), s)
        rr = ((k0 + ci)[:, None] * s + dr[None, :]).ravel()
        cc = (cj[:, None] * s + dc[None, :]).ravel()
        inside = (rr < h) & (cc < w)
        rr, cc = rr[inside], cc[inside]
        pos, hit = grid_points_at(self.grid, rr, cc, state=self.grid_state)
        self.stats["exact_px"] += len(rr)
        return rr[hit], cc[hit], pos[hit]

    def _view_weight(self, pts: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """cos(emission) * range_km ** -k (times ifov ** -k per band: resolution ** -k)."""
        normal = pts / self.radii**2
        normal /= norm3(normal)[:, None]
        d = obs - pts
        dist = norm3(d)
        cos_e = np.einsum("ij,ij->i", normal, d) / dist
        return cos_e * dist ** -self.k_res

    def _frame_band(self, frame: int, b: int, k0: int, cand: np.ndarray, smooth_grid: np.ndarray,
                    exact_grid: np.ndarray, ex_grid: tuple[np.ndarray, np.ndarray, np.ndarray],
                    pos_n: np.ndarray, pos_c: np.ndarray, acc: tuple[np.ndarray, ...]) -> None:
        """Sample band ``b`` of ``frame`` over the candidate cells ``cand`` of a strip."""
        s = self.step
        h, w = self.grid.shape
        geometry = self.geometry
        band = self.bands[b]
        obs = geometry.states[frame].observer_pos_body_km
        k_band = band.ifov_rad ** -self.k_res
        t0 = time.perf_counter()
        # nodes are needed on the bounding box of the candidate cells only
        rows_any = np.flatnonzero(cand.any(axis=1))
        cols_any = np.flatnonzero(cand.any(axis=0))
        ia, ib = int(rows_any[0]), int(rows_any[-1]) + 1
        ja, jb = int(cols_any[0]), int(cols_any[-1]) + 1
        cand = cand[ia:ib, ja:jb]
        smooth = cand & smooth_grid[ia:ib, ja:jb]
        node_sel = np.flatnonzero(_corners(smooth))
        shape_n = (ib - ia + 1, jb - ja + 1)
        xy = np.zeros(shape_n + (2,), np.float32)  # (x, y) index nodes
        vw_n = np.zeros(shape_n, np.float32)  # view-weight nodes
        if len(node_sel):
            pts = pos_n[ia:ib + 1, ja:jb + 1].reshape(-1, 3)[node_sel]
            x, y = _surface_to_px(geometry, frame, band.name, pts[:, 0], pts[:, 1], pts[:, 2])
            flat = xy.reshape(-1, 2)
            flat[node_sel, 0] = x - 0.5
            flat[node_sel, 1] = y - 0.5
            vw_n.reshape(-1)[node_sel] = self._view_weight(pts, obs) * k_band
            self.stats["nodes"] += len(node_sel)
        exact_cells = cand & exact_grid[ia:ib, ja:jb]
        ci, cj = np.nonzero(smooth)
        if len(ci) and s > 1:  # the bilinear error is largest at the cell centres
            pts_c = pos_c[ia:ib, ja:jb][ci, cj]
            xc, yc = _surface_to_px(geometry, frame, band.name, pts_c[:, 0], pts_c[:, 1], pts_c[:, 2])
            mean = 0.25 * (xy[:-1, :-1] + xy[1:, :-1] + xy[:-1, 1:] + xy[1:, 1:])[ci, cj]
            err = np.nan_to_num(np.hypot(mean[:, 0] - (xc - 0.5), mean[:, 1] - (yc - 0.5)), nan=np.inf)
            bad = err > self.max_error_px
            exact_cells[ci[bad], cj[bad]] = True
        smooth &= ~exact_cells
        self.stats["lattice_s"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        # exact pixels: the grid's own (cached per strip) and those of cells failing the check
        e_rr, e_cc, e_pos = ex_grid
        if len(e_rr):
            ei, ej = e_rr // s - k0 - ia, e_cc // s - ja
            keep = (ei >= 0) & (ei < ib - ia) & (ej >= 0) & (ej < jb - ja)
            keep[keep] = cand[ei[keep], ej[keep]]
            e_rr, e_cc, e_pos = e_rr[keep], e_cc[keep], e_pos[keep]
        extra = exact_cells & ~exact_grid[ia:ib, ja:jb]
        if extra.any():
            full = np.zeros(exact_grid.shape, bool)
            full[ia:ib, ja:jb] = extra
            more = self._exact_pixels(full, k0)
            e_rr, e_cc = np.concatenate([e_rr, more[0]]), np.concatenate([e_cc, more[1]])
            e_pos = np.concatenate([e_pos, more[2]])

        margin = 1.0 + self.support
        # active cells: the interpolated position can fall on the framelet and be visible
        x4 = (xy[:-1, :-1, 0], xy[1:, :-1, 0], xy[:-1, 1:, 0], xy[1:, 1:, 0])
        y4 = (xy[:-1, :-1, 1], xy[1:, :-1, 1], xy[:-1, 1:, 1], xy[1:, 1:, 1])
        v4 = (vw_n[:-1, :-1], vw_n[1:, :-1], vw_n[:-1, 1:], vw_n[1:, 1:])
        active = smooth & (np.maximum.reduce(x4) >= band.cols.start - margin) \
            & (np.minimum.reduce(x4) <= band.cols.stop - 1 + margin) \
            & (np.maximum.reduce(y4) >= -margin) & (np.minimum.reduce(y4) <= band.rows - 1 + margin) \
            & (np.maximum.reduce(v4) > 0)
        ecell = np.zeros_like(active)
        er = ec = np.zeros(0, np.int64)
        if len(e_rr):
            ex, ey = _surface_to_px(geometry, frame, band.name, e_pos[:, 0], e_pos[:, 1], e_pos[:, 2])
            ex, ey = ex - 0.5, ey - 0.5
            ev = self._view_weight(e_pos, obs) * k_band
            on = (ev > 0) & (ex >= band.cols.start - margin) & (ex <= band.cols.stop - 1 + margin) \
                & (ey >= -margin) & (ey <= band.rows - 1 + margin)
            order = np.argsort(e_cc[on], kind="stable")
            er, ec = e_rr[on][order], e_cc[on][order]
            e_xy = np.stack([ex[on], ey[on]], axis=-1)[order].astype(np.float32)
            ev = ev[on][order].astype(np.float32)
            ecell[er // s - k0 - ia, ec // s - ja] = True
        any_cell = active | ecell
        self.stats["exact_s"] += time.perf_counter() - t0
        if not any_cell.any():
            return
        tile_cells = TILE_COLS // s
        for t_j in range(0, any_cell.shape[1], tile_cells):
            sub = any_cell[:, t_j:t_j + tile_cells]
            if not sub.any():
                continue
            t0 = time.perf_counter()
            sub_rows = np.flatnonzero(sub.any(axis=1))
            sub_cols = np.flatnonzero(sub.any(axis=0))
            i0, i1 = int(sub_rows[0]), int(sub_rows[-1]) + 1
            j0, j1 = t_j + int(sub_cols[0]), t_j + int(sub_cols[-1]) + 1
            ra, rb = (k0 + ia + i0) * s, min((k0 + ia + i1) * s, h)
            ca, cb = (ja + j0) * s, min((ja + j1) * s, w)
            node_org = (k0 + ia + i0, ja + j0)
            maps = _warp_nodes(xy[i0:i1 + 1, j0:j1 + 1], s, *node_org, (ra, rb), (ca, cb))
            vw = _warp_nodes(vw_n[i0:i1 + 1, j0:j1 + 1], s, *node_org, (ra, rb), (ca, cb))
            cells_here = active[i0:i1, j0:j1]
            if not cells_here.all():
                vw *= np.repeat(np.repeat(cells_here, s, axis=0), s, axis=1)[:rb - ra, :cb - ca]
            if len(er):
                lo_i, hi_i = np.searchsorted(ec, [ca, cb])
                if hi_i > lo_i:
                    sel = np.arange(lo_i, hi_i)
                    sel = sel[(er[sel] >= ra) & (er[sel] < rb)]
                    pr, pc = er[sel] - ra, ec[sel] - ca
                    maps[pr, pc] = e_xy[sel]
                    vw[pr, pc] = ev[sel]
            self.stats["exact_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self._sample(frame, b, maps, vw, (slice(ra - k0 * s, rb - k0 * s), slice(ca, cb)), acc)
            self.stats["dense_px"] += vw.size
            self.stats["sample_blend_s"] += time.perf_counter() - t0

    def _sample(self, frame: int, b: int, maps: np.ndarray, vw: np.ndarray,
                box: tuple[slice, slice], acc: tuple[np.ndarray, ...]) -> None:
        """Sample framelet (frame, b) at ``maps`` (x, y array indices) and blend into ``acc``."""
        src = self._source(frame, b)
        gate = cv2.remap(src.gate, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=-_GATE_OUTSIDE)
        border = cv2.BORDER_CONSTANT if self.flag == cv2.INTER_LINEAR else cv2.BORDER_REPLICATE
        value = cv2.remap(src.value, maps, None, self.flag, borderMode=border, borderValue=0.0)
        np.maximum(vw, 0.0, out=vw)
        fallback = None
        if src.has_invalid:
            touch = (gate < 0) & (gate > -_GATE_FALLBACK)
            if touch.any():
                fallback = np.nonzero(touch)
        wgt = np.maximum(gate, 0.0, out=gate)
        wgt *= vw
        num, den, count, seen_valid, touched = acc
        pos = wgt > 0
        num[b][box] += wgt * value
        den[b][box] += wgt
        count[box] += pos
        seen_valid[b][box] |= pos
        if src.saturated is not None:
            sat = cv2.remap(src.saturated, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            touched[b][box] |= pos & (sat > 0)
        if fallback is not None:
            self._fallback(frame, b, src, maps, vw, fallback, box, acc)

    def _fallback(self, frame: int, b: int, src: _Source, maps: np.ndarray, vw: np.ndarray,
                  where: tuple[np.ndarray, np.ndarray], box: tuple[slice, slice],
                  acc: tuple[np.ndarray, ...]) -> None:
        """Samples touching invalid pixels: kept when every pixel of the support is valid
        after all (weight below 1e-4) or, with ``fill_invalid``, usable (filled), at
        weight x :data:`FALLBACK_WEIGHT`; dropped otherwise."""
        full = self._full_source(frame, b, src)
        xy = maps[where].reshape(1, -1, 2)
        sampled = cv2.remap(full, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(0, 0, 0, 0)).reshape(-1, 4)
        value, m, u, f = sampled.T
        if self.flag != cv2.INTER_LINEAR:
            value = cv2.remap(src.value, xy, None, self.flag, borderMode=cv2.BORDER_REPLICATE).reshape(-1)
        thr = 1.0 - 1e-4
        good = m >= thr
        keep = good | (u >= thr) if self.fill_invalid else good
        wgt = (f * vw[where] * np.where(good, 1.0, FALLBACK_WEIGHT)).astype(np.float32)
        wgt[~keep] = 0.0
        pos = wgt > 0
        if not pos.any():
            return
        rr, cc = where[0][pos] + box[0].start, where[1][pos] + box[1].start
        num, den, count, seen_valid, _ = acc
        num[b][rr, cc] += wgt[pos] * value[pos]
        den[b][rr, cc] += wgt[pos]
        count[rr, cc] += 1
        seen_valid[b][rr, cc] |= good[pos]
        self.stats["fallback_samples"] += int(pos.sum())

    def _backplanes(self, k0: int, r0: int, r1: int, seen: np.ndarray, pos_n: np.ndarray,
                    hit_n: np.ndarray, smooth_grid: np.ndarray, exact_grid: np.ndarray,
                    ex_grid: tuple[np.ndarray, np.ndarray, np.ndarray], out: _Outputs) -> None:
        s = self.step
        grid = self.grid
        h, w = grid.shape
        rows = slice(r0, r1)
        state = self.mid_state
        sr = r1 - r0
        e_r, e_c, e_pos = ex_grid[0] - r0, ex_grid[1], ex_grid[2]
        if smooth_grid.all():
            hit_px = None  # every pixel of the strip meets the target
        else:
            hit_px = np.repeat(np.repeat(smooth_grid, s, axis=0), s, axis=1)[:sr, :w]
            hit_px[e_r, e_c] = True
        nan = np.float32(np.nan)
        if grid.projection != "equirectangular":  # coordinates wherever the grid meets the target
            nodes = np.nan_to_num(pos_n).astype(np.float32)
            xyz = [_warp_nodes(np.ascontiguousarray(nodes[..., i]), s, k0, 0, (r0, r1), (0, w))
                   for i in range(3)]
            if len(e_r):
                for i in range(3):
                    xyz[i][e_r, e_c] = e_pos[:, i]
            miss = None if hit_px is None else ~hit_px
            names = ("lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg")
            _lonlat_f32(xyz[0], xyz[1], xyz[2], grid.target,
                        {name: out.backplanes[name][rows] for name in names}, miss)
        vis = seen if hit_px is None else seen & hit_px
        angle_names = ("emission_deg", "incidence_deg", "phase_deg", "range_km", "resolution_km_per_px")
        seen_cols = np.flatnonzero(vis.any(axis=0))
        if not len(seen_cols):
            for name in angle_names:
                out.backplanes[name][rows] = nan
            return
        # the angles only between the strip's first and last seen column (NaN beyond)
        c0, c1 = int(seen_cols[0]), int(seen_cols[-1]) + 1
        for name in angle_names:
            out.backplanes[name][rows, :c0] = nan
            out.backplanes[name][rows, c1:] = nan
        vis = vis[:, c0:c1]
        sb, kb = s, k0
        if self.backplane_step != s:  # the angles on their own, finer lattice
            sb, kb = self.backplane_step, r0 // self.backplane_step
            pos_n, hit_n = grid_points_at(grid, (r0 + np.arange(-(-sr // sb) + 1) * sb)[:, None],
                                          (np.arange(-(-w // sb) + 1) * sb)[None, :], state=self.grid_state)
        angles_n = np.zeros(pos_n.shape[:2] + (4,), np.float32)
        sel_n = np.flatnonzero(hit_n)
        angles_n.reshape(-1, 4)[sel_n] = _view_angles(pos_n.reshape(-1, 3)[sel_n], self.radii,
                                                       state.observer_pos_body_km, state.sun_pos_body_km)
        planes = [_warp_nodes(np.ascontiguousarray(angles_n[..., i]), sb, kb, 0, (r0, r1), (c0, c1))
                  for i in range(4)]
        inside = (e_c >= c0) & (e_c < c1)
        if inside.any():
            exact = _view_angles(e_pos[inside], self.radii, state.observer_pos_body_km, state.sun_pos_body_km)
            for i in range(4):
                planes[i][e_r[inside], e_c[inside] - c0] = exact[:, i]
        cos_e, cos_i, cos_p, rng = planes
        vis &= cos_e > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            visf = vis.astype(np.float32)
            nan_mask = visf / visf  # 1 where visible, NaN elsewhere
        # arccos amplifies the interpolation error near 0 deg: exact float64 angles there
        near = np.nonzero(vis & ((cos_e > NEAR_ZERO_COS) | (cos_i > NEAR_ZERO_COS) | (cos_p > NEAR_ZERO_COS)))
        exact_near = None
        if len(near[0]):
            pos, _ = grid_points_at(grid, near[0] + r0, near[1] + c0, state=self.grid_state)
            exact_near = np.degrees(np.arccos(np.clip(_view_angles(
                pos, self.radii, state.observer_pos_body_km, state.sun_pos_body_km)[:, :3], -1.0, 1.0)))
        deg = np.float32(180.0 / math.pi)
        named = (("emission_deg", cos_e), ("incidence_deg", cos_i), ("phase_deg", cos_p))
        for i, (name, c) in enumerate(named):
            plane = out.backplanes[name][rows, c0:c1]  # a view: computed in place
            np.arccos(np.clip(c, -1.0, 1.0, out=c), out=plane)
            plane *= deg
            plane *= nan_mask
            if exact_near is not None:
                plane[near] = exact_near[:, i]
        range_km = out.backplanes["range_km"][rows, c0:c1]
        np.multiply(rng, nan_mask, out=range_km)
        ifov = np.float32(self.resolution_ifov_rad)  # (io.computed_backplane's formula)
        np.multiply(range_km, ifov, out=out.backplanes["resolution_km_per_px"][rows, c0:c1])


def _hypot_f32(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sqrt(x**2 + y**2) of float32 planes (no overflow at body-fixed km): 3x faster than
    ``np.hypot``, and unlike ``cv2.magnitude`` the same in every column (its vector and
    tail loops round differently, and a cropped map must equal its window of the whole)."""
    r = x * x
    r += y * y
    return np.sqrt(r, out=r)


def _lonlat_f32(x: np.ndarray, y: np.ndarray, z: np.ndarray, target: Target,
                out: Mapping[str, np.ndarray], miss: np.ndarray | None) -> None:
    """:func:`geometry.lonlat_from_body` of float32 body-fixed points (planes ``x, y, z``
    (H, W)) in float32 (within ~1e-5 deg of it), into the (H, W) float32 views ``out``; NaN
    where ``miss``. Longitudes wrapped by adding 360 deg where negative (``np.mod`` of
    float32 is a scalar loop: 3x slower than everything else here). The planetographic
    latitude and west longitude are computed from the planetocentric latitude and east
    longitude (:data:`junoproc.io.COMPUTED_BACKPLANES`): a map file leaves them out."""
    deg = np.float32(180.0 / math.pi)
    lat_c, lon_e = out["lat_centric_deg"], out["lon_east_deg"]
    np.arctan2(z, _hypot_f32(x, y), out=lat_c)
    np.arctan2(y, x, out=lon_e)  # (-180, 180] deg
    for plane in (lat_c, lon_e):
        plane *= deg
    np.add(lon_e, np.float32(360.0), out=lon_e, where=lon_e < 0)
    if miss is not None:
        lat_c[miss] = np.nan
        lon_e[miss] = np.nan
    graphic_from_centric_lat_f32(lat_c, lon_e, target.radii_km, out=out["lat_graphic_deg"])
    west_from_east_lon_f32(lon_e, out=out["lon_west_deg"])


@dataclass
class _Outputs:
    data: np.ndarray
    weight: np.ndarray
    n_samples: np.ndarray
    filled: np.ndarray
    saturated: np.ndarray
    backplanes: dict[str, np.ndarray]
    peak: float = 0.0
    shared: bool = False  # the arrays are shared memory: strips may run in forked processes


def project(
    image: Any, geometry: ImageGeometry, *, projection: str = "equirectangular",
    bounds: Sequence[float] | str | None = None, lon: str = "west", lat: str = "centric",
    resolution_px_per_deg: float | None = None, interpolation: str = "bilinear",
    grid: MapGrid | None = None, feather_px: float = 6.5, resolution_exponent: float = 1.0,
    frame_order: Sequence[int] | None = None, fill_invalid: bool = True,
    max_interp_error_px: float = MAX_INTERP_ERROR_PX, workers: int | None = None,
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
    ``max_interp_error_px``: largest error of the interpolated surface -> framelet mapping
    (0 computes every pixel exactly). ``workers``: processes (forked copies of this one on
    Linux, see :data:`junoproc.runtime.FORK_ENV`; threads elsewhere) over strips of output rows (default
    ``$JUNOPROC_THREADS`` or the CPU count); the result does not depend on it. ``timings``,
    when given, receives seconds per step (summed over threads and copies) and counts.
    """
    clock = time.perf_counter()
    tm = timings if timings is not None else {}
    data, valid, saturated = _image_arrays(image)
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
    grid_state = None
    if grid.projection == "perspective":
        grid_state = frame_state(geometry.target, float(grid.params["et"]))
    h, w = grid.shape
    order = list(range(n_frames)) if frame_order is None else [int(f) for f in frame_order]
    proj = _Projector(data, valid, saturated, geometry, grid, grid_state, footprints, flag=flag,
                      support=support,
                      feather_px=feather_px, resolution_exponent=resolution_exponent,
                      fill_invalid=fill_invalid, max_error_px=max_interp_error_px, frame_order=order,
                      fills=_fills_of(image))
    n_workers = _workers(workers)
    shared = n_workers > 1 and forking()
    backplanes: dict[str, np.ndarray] = {}
    if grid.projection == "equirectangular":
        backplanes.update(map_coordinates(grid))
    for name in BACKPLANE_NAMES:  # every strip writes all its rows
        if name not in backplanes:
            backplanes[name] = shared_empty((h, w), np.float32, shared)
    out = _Outputs(shared_empty((h, w, n_bands), np.float32, shared),
                   shared_empty((h, w), np.float32, shared), shared_empty((h, w), np.uint16, shared),
                   shared_empty((h, w), np.uint8, shared), shared_empty((h, w), np.uint8, shared),
                   backplanes, shared=shared)
    tm["grid_s"] = time.perf_counter() - clock
    proj.run(out, n_workers)
    tm.update(proj.totals())
    if out.peak > 0:  # relative to the largest single-band sum of weights
        out.weight /= np.float32(out.peak)
    backplanes["weight"] = out.weight
    backplanes["n_samples"] = out.n_samples
    backplanes["filled_bands"] = out.filled
    backplanes["saturated_bands"] = out.saturated
    mid = n_frames // 2
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
            "mapping": f"exact on a lattice every {proj.step} output px, bilinear between, "
                       f"exact per pixel where that errs by more than {max_interp_error_px} framelet px",
            "lattice_step_px": proj.step,
            "backplane_angles": f"exact on a lattice every {proj.backplane_step} output px, bilinear "
                                f"cosines between, exact where an angle's cosine exceeds {NEAR_ZERO_COS}",
            "backplanes_state": f"mid-time frame {mid} (et {geometry.states[mid].et:.3f})",
            "attitude": dict(geometry.attitude_description),
        },
        # backplanes computed from others by io.computed_backplane's formulas (a file
        # leaves them out); an equirectangular grid gives its coordinates itself
        "computed_backplanes": {
            "resolution_km_per_px": {"ifov_rad": proj.resolution_ifov_rad},
            **({} if grid.projection == "equirectangular" else {
                "lat_graphic_deg": {"radii_km": [float(r) for r in grid.target.radii_km]},
                "lon_west_deg": {}}),
        },
    }
    tm["total_s"] = time.perf_counter() - clock
    return LinearMap(out.data, tuple(meta.filters), backplanes, sidecar)


# ---------------------------------------------------------------------------------------
# mosaics
# ---------------------------------------------------------------------------------------
def _grid_key(m: LinearMap) -> Any:
    g = dict(m.sidecar.get("map", {}))
    return {k: g.get(k) for k in ("projection", "rows", "columns", "target", "longitude", "latitude",
                                   "px_per_deg", "lon_left_east_deg", "lat_top_deg", "pole", "kind",
                                   "centre_lat_centric_deg", "centre_lon_east_deg", "km_per_px")}


#: Weights of views lit from lower than this (deg) are all but zero in a mosaic.
MOSAIC_FADE_INCIDENCE_DEG = 85.0
#: A view's weight never falls below this share where it is the only one (it is kept).
_MOSAIC_MIN_LIGHT_WEIGHT = 1e-3


def _light_weight(incidence_deg: np.ndarray, fade_incidence_deg: float = MOSAIC_FADE_INCIDENCE_DEG
                 ) -> np.ndarray:
    """How well a view is lit, for blending: ``((cos i - cos i_fade) / (1 - cos i_fade))**2``,
    1 at normal incidence, falling smoothly to 0 at ``i_fade`` (squared: a view darkened
    towards its terminator by an inexact Lambert correction gives way early to a better
    lit one; at 74 deg it weighs 0.05 of an overhead view), plus ``1e-3 cos(i) /
    cos(i_fade)`` (clipped to 0..1e-3): beyond ``i_fade`` a pixel only a low-sun view sees is
    kept, and of two such views the one lit from higher still wins; 1 where the incidence
    is unknown (NaN)."""
    inc = np.asarray(incidence_deg, np.float64)
    c_fade = math.cos(math.radians(fade_incidence_deg))
    mu0 = np.cos(np.radians(inc))
    w = np.clip((mu0 - c_fade) / (1.0 - c_fade), 0.0, 1.0) ** 2
    w += _MOSAIC_MIN_LIGHT_WEIGHT * np.clip(mu0 / c_fade, 1e-3, 1.0)
    return np.where(np.isfinite(inc), w, 1.0)


def _map_name(m: LinearMap, k: int) -> str:
    return str(m.sidecar.get("product_id", f"map{k}"))


def mosaic(maps: Sequence[LinearMap], *, match_exposure: bool = True, feather_px: float = 20.0,
           photometric: str = "none", min_overlap_px: int = 50, max_incidence_deg: float = 70.0,
           fade_incidence_deg: float = MOSAIC_FADE_INCIDENCE_DEG) -> LinearMap:
    """Blend maps on one grid into one, with per-band gain matching on the overlaps.

    Gains: the map with the largest total weight is the reference; every other map's band
    gain is the median of ``reference / map`` over pixels both see (after the optional
    ``photometric="lambert"`` correction, division by cos(incidence)), chained through
    already matched maps; only pixels lit well in both count (incidence <
    ``max_incidence_deg`` in both and brighter than 10% of the map's 99th percentile: the
    Lambert correction is not exact, so views lit differently disagree most near a
    terminator). Blending: ``sum(w v) / sum(w)``, each map's ``w`` = its ``weight``
    backplane (cos(emission) / resolution) x :func:`_light_weight` of its incidence (zero
    by ``fade_incidence_deg``: the better lit view wins, smoothly) x a smoothstep feather
    over ``feather_px`` from the edge of its coverage; the backplane is first low-passed
    (sigma ``feather_px / 2``) so that its steps at framelet seams draw no lines. The
    result does not depend on the order of ``maps``: they are matched and summed in the
    order of their product ids.
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
    # a canonical order (product id, then the data itself) makes the result order-free
    order = sorted(range(len(maps)), key=lambda k: (_map_name(maps[k], k) if "product_id" in
                                                     maps[k].sidecar else "", float(np.nansum(maps[k].data))))
    values: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray] = {}
    lit_masks: dict[int, np.ndarray] = {}
    for k in order:
        m = maps[k]
        v = m.data.astype(np.float64)
        inc = m.backplanes.get("incidence_deg")
        if photometric == "lambert" and inc is not None:
            mu0 = np.cos(np.radians(np.asarray(inc, np.float64)))
            v = np.where((mu0 > 0.05)[..., None], v / np.maximum(mu0, 0.05)[..., None], np.nan)
        seen = np.isfinite(v).all(axis=-1)
        lit = seen.copy()  # where gains may be measured: lit, well above the dark level
        if inc is not None:
            lit &= np.asarray(inc, np.float64) < max_incidence_deg
        if lit.any():
            level = np.nanpercentile(v[lit].mean(axis=-1), 99)
            lit &= np.nan_to_num(v.mean(axis=-1)) > 0.1 * level
        lit_masks[k] = lit
        base = np.asarray(m.backplanes.get("weight", seen.astype(np.float32)), np.float64)
        base = np.where(seen & np.isfinite(base), base, 0.0)
        if "weight" in m.backplanes and feather_px > 0:
            # the backplane counts the framelet samples, so it steps at framelet seams; a
            # step where two views disagree draws the seam into the blend: low-passed
            # (normalised over the coverage) it keeps only cos(emission) / resolution
            sigma = feather_px / 2.0
            cover = cv2.GaussianBlur(seen.astype(np.float32), (0, 0), sigma)
            low = cv2.GaussianBlur(base.astype(np.float32), (0, 0), sigma)
            base = np.where(seen, low / np.maximum(cover, 1e-6), 0.0).astype(np.float64)
        if inc is not None:
            base = base * _light_weight(inc, fade_incidence_deg)
        dist = cv2.distanceTransform(seen.astype(np.uint8), cv2.DIST_L2, 5)
        weights[k] = base * _smoothstep(dist / feather_px)
        values[k] = np.where(seen[..., None], v, np.nan)
    gains = np.ones((len(maps), nb))
    if match_exposure and len(maps) > 1:
        total = {k: float(weights[k].sum()) for k in order}
        ref = max(order, key=lambda k: total[k])  # the first of the canonical order on a tie
        done = [ref]
        pending = [k for k in order if k != ref]
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
            done.append(i)
            pending.remove(i)
    num = np.zeros((h, w, nb))
    den = np.zeros((h, w))
    n_maps = np.zeros((h, w), np.uint8)
    for k in order:
        num += np.nan_to_num(values[k] * gains[k]) * weights[k][..., None]
        den += weights[k]
        n_maps += weights[k] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den[..., None] > 0, num / den[..., None], np.nan).astype(np.float32)
    backplanes = {"weight": den.astype(np.float32), "n_maps": n_maps}
    for name in ("lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg"):
        if name in first.backplanes:
            backplanes[name] = np.asarray(first.backplanes[name], np.float32)
    sidecar = {
        "map": first.sidecar.get("map", {}),
        "mosaic": {
            "inputs": [_map_name(m, k) for k, m in enumerate(maps)],
            "gains": gains.tolist(), "photometric": photometric, "feather_px": feather_px,
            "gain_max_incidence_deg": max_incidence_deg, "fade_incidence_deg": fade_incidence_deg,
            "blending": "w = weight backplane * _light_weight(incidence) "
                        "* smoothstep(distance to coverage edge / feather_px)",
        },
        "bands": list(first.band_names),
    }
    return LinearMap(out, first.band_names, backplanes, sidecar)


def filter_set(band_names: Sequence[str]) -> str:
    """The name of a map's filter set: ``RGB`` (BLUE, GREEN, RED), ``METHANE``, else the
    band names joined by ``+``."""
    names = tuple(str(n).upper() for n in band_names)
    if sorted(names) == ["BLUE", "GREEN", "RED"]:
        return "RGB"
    return "+".join(names)


def _lattice_of(definition: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(first column east of longitude 0, columns, first row from the north pole, rows) of an
    equirectangular map on the lattice of its px/deg; ProjectionError when it is off it."""
    ppd = float(definition["px_per_deg"])
    col = float(definition["lon_left_east_deg"]) * ppd
    row = (90.0 - float(definition["lat_top_deg"])) * ppd
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        raise ProjectionError("maps are not on one lattice of their resolution",
                              hint="give every image's grid edges on multiples of the pixel size "
                                   "(the build does)")
    return int(round(col)) % int(round(360 * ppd)), int(definition["columns"]), int(round(row)), \
        int(definition["rows"])


def _paste_global(maps: Sequence[LinearMap]) -> list[LinearMap]:
    """Equirectangular maps of one lattice -> the same maps on their union's all-longitude grid
    (data NaN and weight 0 elsewhere); the backplanes the mosaic needs only."""
    defs = [dict(m.sidecar["map"]) for m in maps]
    ppd = float(defs[0]["px_per_deg"])
    n_lon = int(round(360 * ppd))
    lattices = [_lattice_of(d) for d in defs]
    top = min(r0 for _, _, r0, _ in lattices)
    bottom = max(r0 + n for _, _, r0, n in lattices)
    union = dict(defs[0])
    union.update(rows=bottom - top, columns=n_lon, lon_left_east_deg=0.0, lat_top_deg=90.0 - top / ppd,
                 lat_bottom_deg=90.0 - bottom / ppd)
    west = str(union.get("longitude", "")).startswith("System III")
    union.update(lon_left_deg=360.0 if west else 0.0, lon_right_deg=0.0 if west else 360.0)
    out = []
    for m, (col0, n_cols, row0, n_rows) in zip(maps, lattices, strict=True):
        cols = (col0 + np.arange(n_cols)) % n_lon
        rows = slice(row0 - top, row0 - top + n_rows)
        data = np.full((bottom - top, n_lon, m.data.shape[2]), np.nan, np.float32)
        data[rows, cols] = m.data
        planes = {}
        for name, fill in (("weight", 0.0), ("incidence_deg", np.nan), ("emission_deg", np.nan)):
            if name in m.backplanes:
                plane = np.full(data.shape[:2], fill, np.float32)
                plane[rows, cols] = m.backplanes[name]
                planes[name] = plane
        out.append(LinearMap(data, m.band_names, planes, {**m.sidecar, "map": union}))
    return out


def _polar_from_global(m: LinearMap, pole: str, margin_px: int = 0) -> LinearMap:
    """An all-longitude equirectangular map resampled (bilinear, wrapping in longitude) onto
    the equidistant polar grid of the same px/deg, out to the covered latitude farthest from
    the pole, cut to the data plus ``margin_px`` (the pole may lie outside the window)."""
    grid = map_grid_from_dict(m.sidecar["map"])
    ppd = float(grid.params["px_per_deg"])
    h, w = grid.shape
    lat_top = float(grid.params["lat_top_deg"])
    seen = np.isfinite(m.data).any(axis=2)
    seen_rows = np.flatnonzero(seen.any(axis=1))
    if not len(seen_rows):
        raise ProjectionError("the mosaic is empty", hint="check the maps' footprints")
    far_lat = lat_top - (seen_rows.max() + 1) / ppd if pole == "north" else lat_top - seen_rows.min() / ppd
    radius = float(min(180.0, 90.0 - far_lat if pole == "north" else 90.0 + far_lat))
    side = _grid_side(2 * radius * ppd, "the polar mosaic")
    disc = MapGrid("polar", (side, side), grid.target, grid.lon_convention, grid.lat_convention,
                   {"px_per_deg": ppd, "native_px_per_deg": grid.params.get("native_px_per_deg", ppd),
                    "pole": pole, "kind": "equidistant", "radius_deg": radius,
                    "latitude_used": "planetocentric colatitude", "pole_col_px": side / 2.0,
                    "pole_row_px": side / 2.0})
    # the window: every seen pixel centre (an equirectangular pixel spans < 1 + pi px here)
    r_seen, c_seen = np.nonzero(seen)
    col, row = grid_xy_from_body(disc, grid_points_at(grid, r_seen, c_seen)[0])
    polar = crop_grid(disc, *_window(col, row, margin_px + 2, disc.shape))
    del r_seen, c_seen, col, row
    side_r, side_c = polar.shape
    pos, hit = grid_surface_points(polar)
    ll = lonlat_from_body(pos[hit], grid.target)
    lat = ll["lat_graphic_deg" if grid.lat_convention == "graphic" else "lat_centric_deg"]
    x = np.full((side_r, side_c), -1.0, np.float32)
    y = np.full((side_r, side_c), -1.0, np.float32)
    x[hit] = np.mod(ll["lon_east_deg"], 360.0) * ppd - 0.5 + 1  # +1: the wrap column padded left
    y[hit] = (lat_top - lat) * ppd - 0.5

    def resample(plane: np.ndarray, fill: float) -> np.ndarray:
        padded = np.concatenate([plane[:, -1:], plane, plane[:, :1]], axis=1).astype(np.float32)
        out = cv2.remap(padded, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        out[~hit] = fill
        return out

    data = np.stack([resample(m.data[..., b], np.nan) for b in range(m.data.shape[2])], axis=-1)
    planes = {"weight": resample(np.asarray(m.backplanes["weight"]), 0.0)} if "weight" in m.backplanes else {}
    for name, v in ll.items():
        plane = np.full((side_r, side_c), np.nan, np.float32)
        plane[hit] = v
        planes[name] = plane
    side_car = {**m.sidecar, "map": polar.to_dict(),
                "resampled_from": "the equirectangular mosaic (bilinear, wrapping in longitude)"}
    return LinearMap(data.astype(np.float32), m.band_names, planes, side_car)


def _crop_equirectangular(m: LinearMap, margin_px: int = 0, lit_columns: np.ndarray | None = None
                          ) -> LinearMap:
    """An all-longitude equirectangular map cut to its data (plus ``margin_px``): the rows
    from the northernmost to the southernmost seen pixel and the longitudes outside the
    widest run of unseen columns, wrapping, so data that crosses the map's seam comes out
    in one piece; data at every longitude (around a pole) keeps them all, cut in the
    middle of the widest run of columns without ``lit_columns`` (bool per column: well
    lit data there) as an image's default map is. The map definition is updated
    (``lon_left_east_deg``, ``lat_top_deg``, size, edges in the map's longitude
    convention): the crop lies on the same lattice."""
    d = dict(m.sidecar["map"])
    ppd = float(d["px_per_deg"])
    h, w = m.data.shape[:2]
    n_lon = int(round(360 * ppd))
    seen = np.isfinite(m.data).any(axis=2)
    rows_seen = np.flatnonzero(seen.any(axis=1))
    if not len(rows_seen):
        raise ProjectionError("the mosaic is empty", hint="check the maps' footprints")
    r0, r1 = max(0, rows_seen[0] - margin_px), min(h, rows_seen[-1] + 1 + margin_px)
    cols = np.arange(w)
    if w == n_lon:  # all longitudes: the widest circular gap of unseen columns is left out
        occupied = seen.any(axis=0)
        if margin_px > 0:
            k = np.ones(2 * margin_px + 1)
            padded = np.concatenate([occupied[-margin_px:], occupied, occupied[:margin_px]])
            occupied = np.convolve(padded.astype(float), k, mode="valid") > 0
        if not occupied.all():
            filled = np.flatnonzero(occupied)
            gaps = np.diff(np.concatenate([filled, [filled[0] + n_lon]])) - 1  # after each filled col
            g = int(np.argmax(gaps))
            start = (filled[g] + gaps[g] + 1) % n_lon
            cols = (start + np.arange(n_lon - int(gaps[g]))) % n_lon
        elif lit_columns is not None and np.any(lit_columns) and not np.all(lit_columns):
            filled = np.flatnonzero(lit_columns)
            gaps = np.diff(np.concatenate([filled, [filled[0] + n_lon]])) - 1
            g = int(np.argmax(gaps))
            cols = (filled[g] + 1 + int(gaps[g]) // 2 + np.arange(n_lon)) % n_lon
    left_e = round(float(np.mod(float(d["lon_left_east_deg"]) + cols[0] / ppd, 360.0)), 9)
    n_cols = len(cols)
    west = str(d.get("longitude", "")).startswith("System III")
    right_e = round(left_e + n_cols / ppd, 9)
    lat_top = round(float(d["lat_top_deg"]) - float(r0) / ppd, 9)
    d.update(rows=int(r1 - r0), columns=int(n_cols), lon_left_east_deg=left_e, lat_top_deg=lat_top,
             lat_bottom_deg=round(lat_top - float(r1 - r0) / ppd, 9),
             lon_left_deg=(round(float(np.mod(-left_e, 360.0)), 9) or 360.0) if west else left_e,
             lon_right_deg=round(float(np.mod(-right_e, 360.0)), 9) if west else
             (right_e if right_e <= 360.0 else round(float(np.mod(right_e, 360.0)), 9)))
    sl = (slice(r0, r1), cols)
    data = np.ascontiguousarray(m.data[sl])
    planes = {name: np.ascontiguousarray(np.asarray(p)[sl]) for name, p in m.backplanes.items()}
    return LinearMap(data, m.band_names, planes, {**m.sidecar, "map": d})


def perijove_mosaics(maps: Sequence[LinearMap], *, photometric: str = "lambert",
                     max_emission_deg: float = 75.0, **mosaic_options: Any) -> dict[str, LinearMap]:
    """A perijove's equirectangular maps -> per filter set one equirectangular mosaic, cut
    to the data (plus 1 deg; longitudes wrap, so data across 0 deg east stays in one
    piece; data at every longitude is cut in the middle of the widest run of longitudes
    without well-lit data, as an image's default map), and one polar mosaic of the pole
    seen most, out to the lowest latitude seen and cut to the data (plus 1 deg; the pole
    may lie outside the window) (keys ``RGB-equirectangular``, ``RGB-polar-north``,
    ``METHANE-equirectangular``, ...).

    Maps are grouped by filter set and grid lattice (mixed input is grouped, never
    skipped); each must lie on the lattice of its px/deg (edges on multiples of the pixel
    size: the build's grids). Samples seen at emission > ``max_emission_deg`` are dropped
    (the limb smears into streaks on a map). Blending is :func:`mosaic`: exposure gains
    matched on lit overlaps after the ``photometric`` correction (``"lambert"``: divided
    by cos(incidence), so that images lit differently agree), each map weighted by its own
    weight backplane (cos(emission) / resolution) and how well it is lit
    (:func:`_light_weight`), feathered from its coverage edge.
    ``mosaic_options`` go to :func:`mosaic`.
    """
    groups: dict[tuple[Any, ...], list[LinearMap]] = {}
    for m in maps:
        d = m.sidecar.get("map") or {}
        if d.get("projection") != "equirectangular":
            raise ProjectionError(f"{m.sidecar.get('product_id', 'a map')} is {d.get('projection')}, "
                                  "not equirectangular", hint="mosaic the equirectangular maps")
        key = (filter_set(m.band_names), tuple(m.band_names), float(d["px_per_deg"]), d.get("target"),
               d.get("latitude"), d.get("longitude"))
        groups.setdefault(key, []).append(m)
    out: dict[str, LinearMap] = {}
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        name = key[0] if not any(k.startswith(key[0] + "-") for k in out) else f"{key[0]}-{key[2]:g}ppd"
        pasted = []
        for m in _paste_global(members):
            if "emission_deg" in m.backplanes:
                grazing = ~(np.asarray(m.backplanes["emission_deg"]) <= max_emission_deg)
                data = m.data.copy()
                data[grazing] = np.nan
                m = LinearMap(data, m.band_names, m.backplanes, m.sidecar)
            pasted.append(m)
        # columns with well-lit data: an all-longitude mosaic is cut where none is
        lit_columns = np.zeros(pasted[0].data.shape[1], bool)
        for m in pasted:
            if "incidence_deg" in m.backplanes:
                with np.errstate(invalid="ignore"):
                    lit = (np.asarray(m.backplanes["incidence_deg"]) < CUT_LIT_INCIDENCE_DEG) \
                        & np.isfinite(m.data).all(axis=2)
                lit_columns |= lit.any(axis=0)
        blend = mosaic(pasted, photometric=photometric, **mosaic_options)
        blend = LinearMap(blend.data, blend.band_names, blend.backplanes,
                          {**blend.sidecar, "filter_set": key[0]})
        grid = map_grid_from_dict(blend.sidecar["map"])
        lat = map_coordinates(grid)["lat_centric_deg"][:, 0]
        area = np.isfinite(blend.data).all(axis=2).sum(axis=1) * np.cos(np.radians(lat))
        pole = "north" if area[lat > 0].sum() >= area[lat < 0].sum() else "south"
        polar = _polar_from_global(blend, pole, margin_px=int(round(key[2])))  # all longitudes: wraps
        out[f"{name}-equirectangular"] = _crop_equirectangular(
            blend, margin_px=int(round(key[2])), lit_columns=lit_columns)
        out[f"{name}-polar-{pole}"] = polar
    return out
