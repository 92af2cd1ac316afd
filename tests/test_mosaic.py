"""junoproc.projection mosaics: which view wins an overlap, seams, order, cropping.

Synthetic LinearMaps with a known truth, built in the tests themselves.
"""

from __future__ import annotations

import numpy as np

from junoproc.io import LinearMap
from junoproc.projection import map_coordinates, map_grid_from_dict, mosaic, perijove_mosaics

BANDS = ("BLUE", "GREEN", "RED")


def _albedo(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 2.0)
    return (1.0 + 0.1 * tex / tex.std()).astype(np.float64)


def _view(albedo: np.ndarray, cols: slice, inc_deg: np.ndarray, weight: np.ndarray, name: str) -> LinearMap:
    """A view of ``albedo`` seen in ``cols``: radiance = albedo x cos(i) x (a Lambert error
    that darkens it by up to 35 % towards the terminator, as Jupiter's is)."""
    h, w = albedo.shape
    mu0 = np.cos(np.radians(inc_deg))
    under = 1.0 - 0.35 * np.clip((inc_deg - 60.0) / 28.0, 0.0, 1.0) ** 2
    rad = albedo * mu0 * under
    data = np.full((h, w, 3), np.nan, np.float32)
    data[:, cols] = (rad[..., None] * np.array([0.5, 1.0, 1.2]))[:, cols]
    inc = np.full((h, w), np.nan, np.float32)
    inc[:, cols] = inc_deg[:, cols]
    wt = np.zeros((h, w), np.float32)
    wt[:, cols] = weight[:, cols]
    return LinearMap(data, BANDS, {"incidence_deg": inc, "weight": wt}, {"product_id": name})


def test_mosaic_prefers_the_better_lit_view_without_a_seam_in_any_order() -> None:
    """Issue #6: the overlap of a view near its terminator (Lambert-corrected, still too
    dark) and a well-lit view. The well-lit one must win there, the blend must follow the
    albedo without a step or a line (the near-terminator view's weight backplane has
    framelet-seam steps, as the projection's does), whatever the order of the maps."""
    h, w = 60, 300
    alb = _albedo(h, w)
    x = np.tile(np.arange(w, dtype=np.float64), (h, 1))
    inc_a = 30.0 + 58.0 * x / 200.0  # 30 deg at column 0, 88 deg at column 200
    inc_b = np.full((h, w), 40.0)
    steps = 1.0 + 0.5 * ((x // 16) % 2)  # framelet-seam steps in the weight backplane
    a = _view(alb, slice(0, 200), inc_a, 2.0 * steps, "A")  # higher weight: closer, lower emission
    b = _view(alb, slice(120, 300), inc_b, np.ones((h, w)), "B")
    m = mosaic([a, b], photometric="lambert", feather_px=10.0)
    m_rev = mosaic([b, a], photometric="lambert", feather_px=10.0)
    np.testing.assert_array_equal(m.data, m_rev.data)  # order-free
    assert m.sidecar["mosaic"]["inputs"] == ["A", "B"] and m_rev.sidecar["mosaic"]["inputs"] == ["B", "A"]
    ratio = m.data[..., 1] / alb  # the truth up to one gain
    col = np.median(ratio, axis=0)
    col /= np.median(col[200:])  # B alone
    # where A is near its terminator (74-88 deg) B wins: within 3 % of the truth
    assert np.abs(col[150:200] - 1.0).max() < 0.03, np.round(col[140:200:5], 3)
    # no step or line anywhere: neighbouring columns agree to 1 %
    assert np.abs(np.diff(col)).max() < 0.01, np.round(np.abs(np.diff(col)).max(), 4)
    assert np.isfinite(m.data).all()  # every column seen by one view is kept


def _global_map(ppd: float, lon_e: tuple[float, float], lat: tuple[float, float]) -> LinearMap:
    """An all-longitude map (System III west) whose bands are latitude and cos/sin of east
    longitude, seen only inside the box ``lon_e`` x ``lat`` (which may cross 0 deg)."""
    rows, cols = int(180 * ppd), int(360 * ppd)
    lat_c = 90.0 - (np.arange(rows) + 0.5) / ppd
    lon_c = (np.arange(cols) + 0.5) / ppd
    la, lo = np.meshgrid(lat_c, lon_c, indexing="ij")
    data = np.stack([la, np.cos(np.radians(lo)), np.sin(np.radians(lo))], axis=-1).astype(np.float32)
    inside_lon = (
        (lo >= lon_e[0]) & (lo <= lon_e[1]) if lon_e[0] < lon_e[1] else (lo >= lon_e[0]) | (lo <= lon_e[1])
    )
    data[~(inside_lon & (la >= lat[0]) & (la <= lat[1]))] = np.nan
    grid = {"projection": "equirectangular", "rows": rows, "columns": cols, "target": "JUPITER",
            "target_naif_id": 599, "body_frame": "IAU_JUPITER", "radii_km": [71492.0, 71492.0, 66854.0],
            "longitude": "System III west", "latitude": "planetocentric", "px_per_deg": ppd,
            "lon_left_east_deg": 0.0, "lon_left_deg": 360.0, "lon_right_deg": 0.0, "lat_top_deg": 90.0,
            "lat_bottom_deg": -90.0}  # fmt: skip
    return LinearMap(data, BANDS, {"weight": np.ones((rows, cols), np.float32)}, {"map": grid})


def test_equirectangular_mosaic_is_cut_to_its_data_across_the_seam() -> None:
    """Issue #6b: data from 330 E to 30 E (across the map's 0 deg seam) and 20..50 N comes
    out as one contiguous 62 x 32 deg map (1 deg margin), not a 360 deg map with the data
    at both ends; every pixel is where its own map definition says (lat/lon read back)."""
    ppd = 2.0
    out = perijove_mosaics([_global_map(ppd, (330.0, 30.0), (20.0, 50.0))], max_emission_deg=90.0)
    eq = out["RGB-equirectangular"]
    d = eq.sidecar["map"]
    assert d["lon_left_east_deg"] == 329.0 and d["columns"] == 62 * ppd
    assert d["lat_top_deg"] == 51.0 and d["rows"] == 32 * ppd and d["lat_bottom_deg"] == 19.0
    assert d["lon_left_deg"] == 31.0 and d["lon_right_deg"] == 329.0  # System III west edges
    seen = np.isfinite(eq.data).all(axis=2)
    assert seen[:, 2:-2].any(axis=0).all()  # contiguous: no empty column inside
    coords = map_coordinates(map_grid_from_dict(d))
    np.testing.assert_allclose(eq.data[..., 0][seen], coords["lat_centric_deg"][seen], atol=1e-4)
    lon = np.degrees(np.arctan2(eq.data[..., 2], eq.data[..., 1]))[seen]
    dlon = (lon - coords["lon_east_deg"][seen] + 180.0) % 360.0 - 180.0
    assert np.abs(dlon).max() < 1e-3
    # the polar map still reaches the lowest latitude seen, around the pole
    polar = next(v for k, v in out.items() if "polar-north" in k)
    assert polar.sidecar["map"]["radius_deg"] == 70.0


def test_polar_mosaic_is_cut_to_its_data_and_places_every_pixel() -> None:
    """Issue #6: the polar mosaic of data from 330 E to 30 E, 20..50 N is the window of its
    data (plus 1 deg), not the 280 px disc out to 20 N with the data in one corner; the pole
    lies outside the window, and map_coordinates of the sidecar's definition gives every
    pixel the lat/lon its data says (bands = latitude, cos/sin of longitude)."""
    ppd = 2.0
    out = perijove_mosaics([_global_map(ppd, (330.0, 30.0), (20.0, 50.0))], max_emission_deg=90.0)
    polar = out["RGB-polar-north"]
    d = polar.sidecar["map"]
    h, w = polar.data.shape[:2]
    assert (d["rows"], d["columns"]) == (h, w) and d["radius_deg"] == 70.0
    assert h * w < 0.25 * (2 * 70 * ppd) ** 2, (h, w)
    assert not (0 <= d["pole_col_px"] <= w and 0 <= d["pole_row_px"] <= h)  # the pole is outside
    seen = np.isfinite(polar.data).all(axis=2)
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    margins = (rows[0], h - 1 - rows[-1], cols[0], w - 1 - cols[-1])
    # 1 deg (+ the pixel's own extent), unless the window stops at the disc's edge (20 N at
    # 0 E lies straight below the pole at the disc's rim)
    rim = 70.0 * ppd
    at_rim = (d["pole_row_px"] - rim >= 0, d["pole_row_px"] + rim <= h, d["pole_col_px"] - rim >= 0,
              d["pole_col_px"] + rim <= w)
    assert all(ppd <= k <= ppd + 3 or (k < ppd and edge) for k, edge in zip(margins, at_rim, strict=True)), \
        (margins, at_rim)
    assert margins[1] < ppd and at_rim[1]
    coords = map_coordinates(map_grid_from_dict(d))
    np.testing.assert_allclose(polar.data[..., 0][seen], coords["lat_centric_deg"][seen], atol=0.02)
    lon = np.degrees(np.arctan2(polar.data[..., 2], polar.data[..., 1]))[seen]
    dlon = (lon - coords["lon_east_deg"][seen] + 180.0) % 360.0 - 180.0
    assert np.abs(dlon).max() < 0.1
    for name in ("lat_centric_deg", "lon_east_deg"):  # the backplanes say the same
        np.testing.assert_allclose(polar.backplanes[name][seen], coords[name][seen], atol=1e-4)


def test_all_longitude_mosaic_is_cut_on_the_night_side() -> None:
    """Issue #6: a mosaic seen at every longitude (around the north pole, 60..90 N) keeps
    all 360 deg, cut in the middle of the longitudes without well-lit data (lit from 100 E
    to 250 E: the cut at 355 E), not at 0 E."""
    ppd = 2.0
    m = _global_map(ppd, (0.0, 360.0), (60.0, 90.0))
    lon = (np.arange(m.data.shape[1]) + 0.5) / ppd
    inc = np.where((lon > 100.0) & (lon < 250.0), 60.0, 95.0).astype(np.float32)
    planes = {**m.backplanes, "incidence_deg": np.broadcast_to(inc, m.data.shape[:2])}
    m = LinearMap(m.data, m.band_names, planes, m.sidecar)
    out = perijove_mosaics([m], max_emission_deg=90.0, photometric="none")
    d = out["RGB-equirectangular"].sidecar["map"]
    assert d["columns"] == 360 * ppd and d["lon_left_east_deg"] == 355.0, d
    coords = map_coordinates(map_grid_from_dict(d))
    eq = out["RGB-equirectangular"].data
    seen = np.isfinite(eq).all(axis=2)
    got = np.degrees(np.arctan2(eq[..., 2], eq[..., 1]))[seen]
    dlon = (got - coords["lon_east_deg"][seen] + 180.0) % 360.0 - 180.0
    assert np.abs(dlon).max() < 1e-3  # every pixel where its definition says
