"""junoproc.io: atomic writes, PNG/TIFF round trips, linear maps with backplanes, sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from junoproc.errors import JunoprocError, OutputError
from junoproc.io import (
    LinearMap,
    backplanes_path,
    read_image,
    read_linear_map,
    read_sidecar,
    read_tiff,
    sidecar_path,
    to_jsonable,
    update_sidecar,
    write_linear_map,
    write_png,
    write_sidecar,
    write_tiff,
)


def _ramp(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    n = int(np.prod(shape))
    return (np.arange(n, dtype=np.int64) * 7919 % (int(info.max) + 1)).astype(dtype).reshape(shape)


def test_sidecar_and_backplanes_paths() -> None:
    assert sidecar_path("out/map.tif") == Path("out/map.json")
    assert sidecar_path("x/y.png") == Path("x/y.json")
    assert sidecar_path("x/y.json") == Path("x/y.json")
    assert backplanes_path("out/map.tif") == Path("out/map-backplanes.tif")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_png_round_trip_exact_rgb_order(tmp_path: Path, dtype: type, shape: tuple[int, ...]) -> None:
    image = _ramp(shape, dtype)
    if len(shape) == 3:
        image[0, 0, :3] = (np.iinfo(dtype).max, 0, 0)  # pure red stays red (not BGR)
    path = write_png(tmp_path / "a.png", image)
    back = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)
    if len(shape) == 3:
        assert back[0, 0, 0] == np.iinfo(dtype).max and back[0, 0, 2] == 0


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint8, (4, 6, 3)), (np.uint16, (4, 6, 3)), (np.uint16, (4, 6, 4)), (np.uint16, (4, 6))],
)
def test_tiff_round_trip_integer(tmp_path: Path, dtype: type, shape: tuple[int, ...]) -> None:
    image = _ramp(shape, dtype)
    write_tiff(tmp_path / "a.tif", image, description="hello")
    back, desc = read_tiff(tmp_path / "a.tif")
    assert desc == "hello"
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_float32_planes_keep_nan_and_order(tmp_path: Path, compression: str | None) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    data[1, 2, 0] = np.nan
    data[0, 0, 3] = -np.inf
    write_tiff(tmp_path / "f.tif", data, description={"k": [1, 2]}, compression=compression)
    back, desc = read_tiff(tmp_path / "f.tif")
    assert json.loads(desc or "") == {"k": [1, 2]}
    assert back.dtype == np.float32 and back.shape == data.shape
    np.testing.assert_array_equal(back, data)  # NaN == NaN for assert_array_equal


def test_write_refuses_wrong_dtype_and_shape(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="uint8/uint16"):
        write_png(tmp_path / "a.png", np.zeros((3, 3), np.float32))
    with pytest.raises(OutputError, match=r"\(H, W, 3\)"):
        write_png(tmp_path / "a.png", np.zeros((3, 3, 2), np.uint8))
    with pytest.raises(OutputError, match="does not exist"):
        write_png(tmp_path / "nope" / "a.png", np.zeros((3, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_atomic_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.png"
    old = np.full((4, 4), 7, np.uint8)
    write_png(path, old)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    import junoproc.io as jio

    monkeypatch.setattr(jio.tifffile, "imwrite", boom)
    with pytest.raises(RuntimeError):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temp file, no partial tif
    np.testing.assert_array_equal(read_image(path), old)
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def _linear_map() -> LinearMap:
    rng = np.random.default_rng(3)
    data = rng.random((6, 5, 3), dtype=np.float32) * 40
    data[0, :, :] = np.nan
    data[3, 2, 1] = np.nan
    planes = {
        "lat_centric_deg": np.linspace(-80, 80, 30, dtype=np.float32).reshape(6, 5),
        "incidence_deg": rng.random((6, 5), dtype=np.float32) * 120,
        "weight": (np.arange(30).reshape(6, 5) % 3).astype(np.uint8),
        "footprint": np.arange(30).reshape(6, 5) % 2 == 0,
    }
    return LinearMap(data, ("RED", "GREEN", "BLUE"), planes, {"perijove": 44, "units": "DN/ms"})


def test_linear_map_round_trip_exact(tmp_path: Path) -> None:
    lm = _linear_map()
    written = write_linear_map(tmp_path / "map.tif", lm)
    assert [p.name for p in written] == ["map.tif", "map-backplanes.tif", "map.json"]
    back = read_linear_map(tmp_path / "map.tif")
    assert back.band_names == ("RED", "GREEN", "BLUE")
    np.testing.assert_array_equal(back.data, lm.data)
    assert back.data.dtype == np.float32 and back.data.shape == (6, 5, 3)
    assert list(back.backplanes) == list(lm.backplanes)
    for name, plane in lm.backplanes.items():
        assert back.backplanes[name].dtype == plane.dtype, name
        np.testing.assert_array_equal(back.backplanes[name], plane)
    assert back.sidecar == {"perijove": 44, "units": "DN/ms"}
    np.testing.assert_array_equal(back.band("GREEN"), lm.data[:, :, 1])


def test_linear_map_band_order_is_the_files_order(tmp_path: Path) -> None:
    """A (BLUE, GREEN, RED) map stays in that order: names travel with the planes."""
    data = np.stack([np.full((2, 2), v, np.float32) for v in (1.0, 2.0, 3.0)], axis=2)
    write_linear_map(tmp_path / "m.tif", data, ("BLUE", "GREEN", "RED"))
    back = read_linear_map(tmp_path / "m.tif")
    assert back.band_names == ("BLUE", "GREEN", "RED")
    assert float(back.band("RED")[0, 0]) == 3.0
    assert back.backplanes == {} and back.sidecar == {}
    assert not backplanes_path(tmp_path / "m.tif").exists()


def test_single_band_methane_map(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_linear_map(tmp_path / "ch4.tif", data[:, :, None], ["METHANE"])
    back = read_linear_map(tmp_path / "ch4.tif")
    assert back.band_names == ("METHANE",) and back.data.shape == (3, 4, 1)
    np.testing.assert_array_equal(back.data[:, :, 0], data)


def test_linear_map_validation() -> None:
    with pytest.raises(OutputError, match="float32"):
        LinearMap(np.zeros((2, 2, 1)), ("RED",))
    with pytest.raises(OutputError, match="band names"):
        LinearMap(np.zeros((2, 2, 2), np.float32), ("RED",))
    with pytest.raises(OutputError, match="duplicate"):
        LinearMap(np.zeros((2, 2, 2), np.float32), ("RED", "RED"))
    with pytest.raises(OutputError, match="backplane 'x'"):
        LinearMap(np.zeros((2, 2, 1), np.float32), ("RED",), {"x": np.zeros((3, 2))})
    lm = LinearMap(np.zeros((2, 2), np.float32), ["METHANE"])  # 2-D is one band
    assert lm.data.shape == (2, 2, 1) and lm.band_names == ("METHANE",)
    with pytest.raises(TypeError):
        lm.backplanes["x"] = np.zeros((2, 2))  # type: ignore[index]


def test_read_linear_map_refuses_foreign_tiff(tmp_path: Path) -> None:
    write_tiff(tmp_path / "x.tif", np.zeros((2, 2), np.float32), description="not json")
    with pytest.raises(OutputError, match="not a junoproc linear map"):
        read_linear_map(tmp_path / "x.tif")
    with pytest.raises(OutputError, match="file not found"):
        read_linear_map(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(JunoprocError, match="not a readable TIFF"):
        read_linear_map(tmp_path / "junk.tif")


def test_sidecar_converts_numpy_and_is_strict_json(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Rec:
        a: float
        b: tuple[int, ...]

    mapping = {
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "b": np.bool_(True),
        "arr": np.array([[1, 2], [3, 4]], np.uint16),
        "nan": float("nan"),
        "path": Path("a/b.tif"),
        "rec": Rec(1.5, (1, 2)),
        "nested": {3: (np.float64(2.25),)},
    }
    path = write_sidecar(tmp_path / "out.png", mapping)
    assert path == tmp_path / "out.json"
    text = path.read_text()
    assert "NaN" not in text
    back = read_sidecar(tmp_path / "out.png")
    assert back == {
        "f32": 0.5,
        "i64": 7,
        "b": True,
        "arr": [[1, 2], [3, 4]],
        "nan": None,
        "path": "a/b.tif",
        "rec": {"a": 1.5, "b": [1, 2]},
        "nested": {"3": [2.25]},
    }
    update_sidecar(tmp_path / "out.png", {"i64": 8, "new": [np.int8(1)]})
    merged = read_sidecar(path)
    assert merged["i64"] == 8 and merged["new"] == [1] and merged["f32"] == 0.5


def test_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="sidecar not found"):
        read_sidecar(tmp_path / "x.tif")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(OutputError, match="not valid JSON"):
        read_sidecar(tmp_path / "bad.json")
    with pytest.raises(OutputError, match="cannot write object"):
        to_jsonable({"x": object()})


def _equirect_map(tmp_path: Path, graphic: bool = False) -> LinearMap:
    """A small equirectangular map on Jupiter's PCK radii with data in a corner only."""
    h, w = 40, 90
    data = np.full((h, w, 3), np.nan, np.float32)
    data[5:20, 30:60] = np.random.default_rng(3).random((15, 30, 3), dtype=np.float32)
    seen = np.isfinite(data).all(axis=2)
    emission = np.where(seen, np.float32(33.0), np.float32(np.nan))
    definition = {"projection": "equirectangular", "rows": h, "columns": w, "target": "JUPITER",
                  "target_naif_id": 599, "body_frame": "IAU_JUPITER",
                  "radii_km": [71492.0, 71492.0, 66854.0], "longitude": "System III west",
                  "latitude": "planetographic" if graphic else "planetocentric",
                  "px_per_deg": 2.0, "lon_left_east_deg": 300.0, "lat_top_deg": 10.0,
                  "lat_bottom_deg": -10.0}
    from junoproc.projection import map_coordinates, map_grid_from_dict

    planes = {**map_coordinates(map_grid_from_dict(definition)), "emission_deg": emission,
              "weight": seen.astype(np.float32), "n_samples": (seen * 2).astype(np.uint16)}
    return LinearMap(data, ("BLUE", "GREEN", "RED"), planes, {"map": definition})


def test_backplanes_cropped_compressed_and_coordinates_derived(tmp_path: Path) -> None:
    import tifffile

    lm = _equirect_map(tmp_path)
    write_linear_map(tmp_path / "m.tif", lm)
    with tifffile.TiffFile(backplanes_path(tmp_path / "m.tif")) as tif:
        page = tif.pages.first
        desc = json.loads(page.description)
        assert page.predictor == 3 and page.compression == 50000  # zstd + floating-point predictor
        assert desc["crop"] == {"row": 5, "column": 30, "rows": 15, "columns": 30}
        assert desc["plane_names"] == ["emission_deg", "weight", "n_samples"]
        assert set(desc["derived_planes"]) == {"lat_centric_deg", "lat_graphic_deg", "lon_east_deg",
                                               "lon_west_deg"}
    back = read_linear_map(tmp_path / "m.tif")
    np.testing.assert_array_equal(back.data, lm.data)
    assert set(back.backplanes) == set(lm.backplanes)
    for name, plane in lm.backplanes.items():
        assert back.backplanes[name].dtype == plane.dtype, name
        np.testing.assert_array_equal(back.backplanes[name], plane)
    # pixel [0, 0] centre: 0.25 deg in from the top-left corner (300 E = 60 W, 10 N)
    assert back.backplanes["lon_west_deg"][0, 0] == pytest.approx(59.75)
    assert back.backplanes["lat_centric_deg"][0, 0] == pytest.approx(9.75)
    (tmp_path / "m.json").unlink()  # the coordinates need the map definition
    with pytest.raises(OutputError, match="map definition"):
        read_linear_map(tmp_path / "m.tif")


def test_backplane_selection_reads_only_the_named_planes_exactly(tmp_path: Path) -> None:
    """``backplanes=``: the named planes only (several strips, cropped, one derived), each
    bit-exact against reading everything; names the file lacks are left out."""
    rng = np.random.default_rng(5)
    h, w = 200, 70  # > 64 rows: several strips per plane
    data = rng.random((h, w, 3), dtype=np.float32)
    data[:7] = np.nan
    seen = np.isfinite(data).all(axis=2)
    planes = {name: np.where(seen, rng.random((h, w), dtype=np.float32) * 90, np.float32(np.nan))
              for name in ("incidence_deg", "emission_deg", "phase_deg", "range_km")}
    planes["n_samples"] = (seen * rng.integers(1, 4, (h, w))).astype(np.uint16)
    write_linear_map(tmp_path / "p.tif", LinearMap(data, ("BLUE", "GREEN", "RED"), planes, {"a": 1}))
    full = read_linear_map(tmp_path / "p.tif")
    some = read_linear_map(tmp_path / "p.tif", backplanes=("n_samples", "emission_deg", "weight"))
    assert set(some.backplanes) == {"n_samples", "emission_deg"}
    for name, plane in some.backplanes.items():
        assert plane.dtype == full.backplanes[name].dtype, name
        np.testing.assert_array_equal(plane, full.backplanes[name])
    np.testing.assert_array_equal(some.data, full.data)
    assert read_linear_map(tmp_path / "p.tif", backplanes=()).backplanes == {}
    lm = _equirect_map(tmp_path)
    write_linear_map(tmp_path / "e.tif", lm)
    eq = read_linear_map(tmp_path / "e.tif", backplanes=("lat_centric_deg", "weight"))
    assert set(eq.backplanes) == {"lat_centric_deg", "weight"}
    np.testing.assert_array_equal(eq.backplanes["lat_centric_deg"], lm.backplanes["lat_centric_deg"])
    np.testing.assert_array_equal(eq.backplanes["weight"], lm.backplanes["weight"])


@pytest.mark.parametrize("radii_km", [(71492.0, 71492.0, 66854.0), (1829.4, 1819.4, 1815.7)])
def test_computed_coordinates_match_the_float64_formulas(radii_km: tuple[float, float, float]) -> None:
    """The float32 planetographic latitude and west longitude computed from a map's stored
    planes (Jupiter; Io, triaxial) agree with :func:`geometry.lonlat_from_body` within
    2e-5 deg, poles and the 0/360 seam included."""
    from junoproc.geometry import Target, graphic_from_centric_lat_f32, lonlat_from_body
    from junoproc.geometry import west_from_east_lon_f32 as west_f32

    target = Target("T", 0, "IAU_T", radii_km)
    lat = np.linspace(-90.0, 90.0, 721)[:, None]
    lon = np.r_[0.0, 1e-6, np.linspace(0.0, 360.0, 480, endpoint=False)[1:], 360.0 - 1e-6][None, :]
    u = np.stack(np.broadcast_arrays(np.cos(np.radians(lat)) * np.cos(np.radians(lon)),
                                     np.cos(np.radians(lat)) * np.sin(np.radians(lon)),
                                     np.sin(np.radians(lat)) + 0 * lon), axis=-1)
    pos = u / np.sqrt(np.sum((u / np.asarray(radii_km)) ** 2, axis=-1))[..., None]
    truth = lonlat_from_body(pos, target)
    lat_c, lon_e = truth["lat_centric_deg"].astype(np.float32), truth["lon_east_deg"].astype(np.float32)
    lat_g = graphic_from_centric_lat_f32(lat_c, lon_e, radii_km)
    assert lat_g.dtype == np.float32
    assert np.abs(lat_g - truth["lat_graphic_deg"]).max() < 2e-5
    lon_w = west_f32(lon_e)
    assert ((lon_w >= 0) & (lon_w < 360)).all()
    assert np.abs((lon_w - truth["lon_west_deg"] + 180.0) % 360.0 - 180.0).max() < 2e-5
    nan = np.array([np.nan], np.float32)
    assert np.isnan(graphic_from_centric_lat_f32(nan, nan, radii_km)).all() and np.isnan(west_f32(nan)).all()


def test_computed_backplanes_are_left_out_and_come_back_exactly(tmp_path: Path) -> None:
    """Planes the sidecar says were computed by formula are not stored and are computed
    again on reading, bit for bit (also when read alone); a plane that no longer matches
    its formula (edited since) is stored as it is."""
    import tifffile

    from junoproc.geometry import graphic_from_centric_lat_f32, west_from_east_lon_f32

    rng = np.random.default_rng(2)
    h, w = 150, 90
    data = rng.random((h, w, 3), dtype=np.float32)
    seen = np.ones((h, w), bool)
    seen[:, :9] = False
    data[~seen] = np.nan
    radii = [71492.0, 71492.0, 66854.0]
    lat_c = np.where(seen, rng.uniform(-90, 90, (h, w)), np.nan).astype(np.float32)
    lon_e = np.where(seen, rng.uniform(0, 360, (h, w)), np.nan).astype(np.float32)
    rng_km = np.where(seen, rng.uniform(5e4, 9e4, (h, w)), np.nan).astype(np.float32)
    ifov = float(np.float32(6.9e-4))
    planes = {"lat_centric_deg": lat_c, "lon_east_deg": lon_e, "range_km": rng_km,
              "lat_graphic_deg": graphic_from_centric_lat_f32(lat_c, lon_e, radii),
              "lon_west_deg": west_from_east_lon_f32(lon_e),
              "resolution_km_per_px": rng_km * np.float32(ifov)}
    side = {"computed_backplanes": {"lat_graphic_deg": {"radii_km": radii}, "lon_west_deg": {},
                                    "resolution_km_per_px": {"ifov_rad": ifov}}}
    write_linear_map(tmp_path / "c.tif", LinearMap(data, ("BLUE", "GREEN", "RED"), planes, side))
    with tifffile.TiffFile(backplanes_path(tmp_path / "c.tif")) as tif:
        desc = json.loads(tif.pages.first.description)
    assert desc["plane_names"] == ["lat_centric_deg", "lon_east_deg", "range_km"]
    back = read_linear_map(tmp_path / "c.tif")
    assert set(back.backplanes) == set(planes)
    for name, plane in planes.items():
        np.testing.assert_array_equal(back.backplanes[name], plane)
    alone = read_linear_map(tmp_path / "c.tif", backplanes=("lat_graphic_deg",))
    assert set(alone.backplanes) == {"lat_graphic_deg"}
    np.testing.assert_array_equal(alone.backplanes["lat_graphic_deg"], planes["lat_graphic_deg"])
    edited = dict(planes, resolution_km_per_px=planes["resolution_km_per_px"] * np.float32(2))
    write_linear_map(tmp_path / "e.tif", LinearMap(data, ("BLUE", "GREEN", "RED"), edited, side))
    np.testing.assert_array_equal(read_linear_map(tmp_path / "e.tif").backplanes["resolution_km_per_px"],
                                  edited["resolution_km_per_px"])


@pytest.mark.parametrize("compression", ["deflate", "zstd"])
def test_floating_point_predictor_is_libtiffs(tmp_path: Path, compression: str) -> None:
    """Pillow decodes with libtiff: our predictor-3 encoding, with deflate (the maps) and
    Zstandard (the backplanes, libtiff >= 4.0.10 with zstd), must read back bit-exact."""
    image = pytest.importorskip("PIL.Image")
    plane = (np.random.default_rng(5).random((50, 77)) * 1e3).astype(np.float32)
    write_tiff(tmp_path / "p.tif", plane, compression=compression)
    with image.open(tmp_path / "p.tif") as im:
        assert im.info.get("compression") == {"deflate": "tiff_adobe_deflate", "zstd": "zstd"}[compression]
        np.testing.assert_array_equal(np.asarray(im), plane)


def test_backplanes_for_any_reader_on_request(tmp_path: Path) -> None:
    import tifffile

    lm = _equirect_map(tmp_path)
    write_linear_map(tmp_path / "m.tif", lm, backplanes_compression="deflate")
    for path in (tmp_path / "m.tif", backplanes_path(tmp_path / "m.tif")):
        with tifffile.TiffFile(path) as tif:
            assert tif.pages.first.compression == 8 and tif.pages.first.predictor == 3
    back = read_linear_map(tmp_path / "m.tif")
    for name, plane in lm.backplanes.items():
        np.testing.assert_array_equal(back.backplanes[name], plane)


@pytest.mark.parametrize("graphic", [False, True])
def test_geotiff_tags_place_the_map(tmp_path: Path, graphic: bool) -> None:
    import tifffile

    lm = _equirect_map(tmp_path, graphic)
    write_linear_map(tmp_path / "g.tif", lm)
    with tifffile.TiffFile(tmp_path / "g.tif") as tif:
        tags = tif.pages.first.tags
        assert tags["ModelPixelScaleTag"].value == (0.5, 0.5, 0.0)
        assert tags["ModelTiepointTag"].value == (0.0, 0.0, 0.0, 300.0, 10.0, 0.0)
        keys = tags["GeoKeyDirectoryTag"].value
        entries = {keys[i]: keys[i + 1:i + 4] for i in range(4, len(keys), 4)}
        assert entries[1024][2] == 2 and entries[2048][2] == 32767 and entries[2054][2] == 9102
        minor = 66854e3 if graphic else 71492e3
        assert tags["GeoDoubleParamsTag"].value == (71492e3, minor)
        assert "JUPITER".title() in tags["GeoAsciiParamsTag"].value
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(tmp_path / "g.tif") as ds:
        assert ds.transform.c == pytest.approx(300.0) and ds.transform.f == pytest.approx(10.0)
        assert ds.transform.a == pytest.approx(0.5) and ds.crs.is_geographic
        wkt = ds.crs.to_wkt()
    pyproj = pytest.importorskip("pyproj")
    assert pyproj.CRS.from_wkt(wkt).ellipsoid.semi_minor_metre == pytest.approx(minor)
