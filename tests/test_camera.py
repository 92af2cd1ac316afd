"""The JunoCam camera model and frame timing against the IK text and the label."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import spiceypy

from junoproc.camera import BAND_NAIF_ID, PHOTOACTIVE_COLUMNS, CameraModel, FrameTiming
from junoproc.errors import KernelMissingError
from junoproc.products import parse_metadata

BANDS = ("METHANE", "BLUE", "GREEN", "RED")


def _ik_path(kernel_dir: Path) -> Path:
    return kernel_dir / "ik" / "juno_junocam_v03.ti"


def _ik_values(path: Path) -> dict[str, float]:
    """``INS-615xx_KEY = value`` assignments of the IK's data blocks, read from its text."""
    text = path.read_text()
    blocks = re.findall(r"\\begindata(.*?)(?:\\begintext|\Z)", text, flags=re.S)
    values: dict[str, float] = {}
    for block in blocks:
        for key, value in re.findall(r"(INS-615\d\d_\w+)\s*=\s*\(?\s*([-+0-9.eE]+)\s*\)?", block):
            values[key] = float(value)
    return values


def _label(**over: object) -> dict[str, object]:
    label: dict[str, object] = {
        "PRODUCT_ID": "JNCE_2022229_44C00032_V01", "TARGET_NAME": "JUPITER",
        "START_TIME": "2022-08-17T13:44:55.603", "INTERFRAME_DELAY": "0.371 <s>",
        "EXPOSURE_DURATION": "3.200000 <ms>", "FILTER_NAME": ["BLUE", "GREEN", "RED"],
        "SAMPLE_BIT_MODE_ID": "SQROOT", "SAMPLING_FACTOR": 1, "LINES": 22 * 384, "LINE_SAMPLES": 1648,
        "JNO:TDI_STAGES_COUNT": 1,
    }
    label.update(over)
    return label


@pytest.fixture()
def ik_only(kernel_dir: Path):
    """Only the LSK and the JunoCam IK in the pool (the camera needs nothing else)."""
    spiceypy.kclear()
    spiceypy.furnsh(str(kernel_dir / "lsk" / "naif0012.tls"))
    spiceypy.furnsh(str(_ik_path(kernel_dir)))
    yield
    spiceypy.kclear()


# ---------------------------------------------------------------------------------------
# pixel <-> ray
# ---------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.parametrize("sampling_factor", [1, 2])
def test_pixel_ray_pixel_round_trip_whole_photoactive_area(ik_only, sampling_factor: int) -> None:
    first, last = PHOTOACTIVE_COLUMNS
    for band in BANDS:
        cam = CameraModel.from_pool(band, sampling_factor=sampling_factor)
        rows, samples = cam.shape
        # every pixel centre of the photoactive area, plus its corners (continuous coords)
        y, x = np.mgrid[0:rows, first // sampling_factor:(last + 1) // sampling_factor] + 0.5
        x = np.concatenate([x.ravel(), [first / sampling_factor, (last + 1) / sampling_factor]])
        y = np.concatenate([y.ravel(), [0.0, float(rows)]])
        ray = cam.px_to_cam(x, y)
        assert ray.shape == (x.size, 3)
        np.testing.assert_allclose(ray[:, 2], cam.focal_px)  # z = focal length in pixels
        x2, y2 = cam.cam_to_px(ray * 7.3)  # any positive length
        err = np.hypot(x2 - x, y2 - y)
        assert err.max() < 1e-6, (band, sampling_factor, err.max())
        # the structure-of-arrays inverse is the same function
        x3, y3 = cam.cam_to_px_xyz(ray[:, 0], ray[:, 1], ray[:, 2])
        np.testing.assert_allclose(x3, x2, rtol=0, atol=1e-9)
        np.testing.assert_allclose(y3, y2, rtol=0, atol=1e-9)


@pytest.mark.realdata
def test_distortion_is_large_and_matches_the_ik_recipe(ik_only, kernel_dir: Path) -> None:
    """The IK's own Python recipe (5 fixed-point iterations) applied literally."""
    ik = _ik_values(_ik_path(kernel_dir))
    for band in BANDS:
        n = -BAND_NAIF_ID[band] - 61500
        cx, cy = ik[f"INS-6150{n}_DISTORTION_X"], ik[f"INS-6150{n}_DISTORTION_Y"]
        k1, k2 = ik[f"INS-6150{n}_DISTORTION_K1"], ik[f"INS-6150{n}_DISTORTION_K2"]
        fl = ik[f"INS-6150{n}_FOCAL_LENGTH"] / ik[f"INS-6150{n}_PIXEL_SIZE"]
        cam = CameraModel.from_pool(band)
        x = np.array([23.5, 23.5, 1630.5, 1630.5, 827.0])
        y = np.array([0.5, 127.5, 127.5, 0.5, 64.0])
        c0, c1 = x - cx, y - cy
        xd, yd = c0.copy(), c1.copy()
        for _ in range(5):
            r2 = xd**2 + yd**2
            dr = 1 + k1 * r2 + k2 * r2 * r2
            xd, yd = c0 / dr, c1 / dr
        ours = cam.px_to_cam(x, y)
        # the IK's 5 iterations converge to ~1e-6 px at the corners
        np.testing.assert_allclose(ours[:, 0], xd, atol=1e-4)
        np.testing.assert_allclose(ours[:, 1], yd, atol=1e-4)
        np.testing.assert_allclose(ours[:, 2], fl)
        # ignoring the distortion would be a large error at the framelet corners
        assert np.hypot(ours[:4, 0] - c0[:4], ours[:4, 1] - c1[:4]).min() > 15.0


@pytest.mark.realdata
def test_unit_rays_and_tiles_cover_the_framelet(ik_only) -> None:
    cam = CameraModel.from_pool("GREEN")
    rays = cam.framelet_rays_cam
    assert rays.shape == (128, 1648, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, atol=1e-15)
    soa = cam.framelet_unit_rays_xyz
    np.testing.assert_array_equal(soa, rays.reshape(-1, 3).T)
    seen = np.zeros(cam.shape, int)
    for tile in cam.framelet_ray_tiles:
        seen[tile.rows, tile.cols] += 1
        expected = np.moveaxis(rays[tile.rows, tile.cols], -1, 0).reshape(3, -1)
        np.testing.assert_array_equal(tile.rays, expected)
    assert (seen == 1).all()
    # the pixel centre convention: the centre of element [64, 824] is (824.5, 64.5)
    np.testing.assert_allclose(rays[64, 824], cam.px_to_cam(824.5, 64.5) / np.linalg.norm(
        cam.px_to_cam(824.5, 64.5)), atol=1e-15)


# ---------------------------------------------------------------------------------------
# values from the pool == the IK's text
# ---------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_pool_values_equal_the_ik_text(ik_only, kernel_dir: Path) -> None:
    ik = _ik_values(_ik_path(kernel_dir))
    assert len(ik) >= 40  # 5 ids x (focal, pixel, K1, K2, X, Y, bias, delta)
    meta = parse_metadata(_label())
    for band, naif in BAND_NAIF_ID.items():
        p = f"INS{naif}_"
        cam = CameraModel.from_pool(band)
        assert cam.naif_id == naif
        assert cam.focal_px == ik[p + "FOCAL_LENGTH"] / ik[p + "PIXEL_SIZE"]
        assert cam.cx_px == ik[p + "DISTORTION_X"]
        assert cam.cy_px == ik[p + "DISTORTION_Y"]
        assert cam.k1 == ik[p + "DISTORTION_K1"]
        assert cam.k2 == ik[p + "DISTORTION_K2"]
    timing = FrameTiming.for_product(meta)
    assert timing.start_time_bias_s == ik["INS-61501_START_TIME_BIAS"]
    assert timing.interframe_delta_s == ik["INS-61501_INTERFRAME_DELTA"]
    # and the numbers are the documented ones (a check on the parser, not a source)
    assert abs(CameraModel.from_pool("METHANE").focal_px - 1480.5905) < 1e-3


@pytest.mark.realdata
def test_rationale_desc_override_changes_methane_cy_only(ik_only) -> None:
    rationale = "Methane framelets; INS-61504_DISTORTION_Y = 311.0 per MSSS for this image."
    meta = parse_metadata(_label(FILTER_NAME=["METHANE"], LINES=22 * 128, RATIONALE_DESC=rationale))
    assert meta.distortion_y_overrides == {"METHANE": 311.0}
    cam = CameraModel.for_product(meta, "METHANE")
    plain = CameraModel.from_pool("METHANE")
    assert cam.cy_px == 311.0 != plain.cy_px
    assert cam.overrides == {"INS-61504_DISTORTION_Y": 311.0}
    assert (cam.cx_px, cam.k1, cam.k2, cam.focal_px) == (plain.cx_px, plain.k1, plain.k2, plain.focal_px)
    # the whole framelet moves by the cy change (4.48 px), less the distortion's gradient
    dy = cam.cam_to_px(plain.px_to_cam(824.0, 64.0))[1] - 64.0
    assert dy == pytest.approx(311.0 - plain.cy_px, abs=0.05)
    # other bands keep the IK value
    meta_rgb = parse_metadata(_label(RATIONALE_DESC=rationale))
    assert CameraModel.for_product(meta_rgb, "BLUE").cy_px == CameraModel.from_pool("BLUE").cy_px


@pytest.mark.realdata
def test_sampling_factor_scales_pixels(ik_only) -> None:
    full = CameraModel.from_pool("RED")
    half = CameraModel.from_pool("RED", sampling_factor=2)
    assert half.shape == (64, 824)
    np.testing.assert_allclose(half.px_to_cam(412.0, 32.0), full.px_to_cam(824.0, 64.0))
    assert half.photoactive_columns() == slice(12, 815)


# ---------------------------------------------------------------------------------------
# frame timing
# ---------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_frame_timing_model(ik_only, kernel_dir: Path) -> None:
    ik = _ik_values(_ik_path(kernel_dir))
    meta = parse_metadata(_label())
    timing = FrameTiming.for_product(meta)
    start = spiceypy.str2et("2022-08-17T13:44:55.603")
    bias, delta = ik["INS-61502_START_TIME_BIAS"], ik["INS-61502_INTERFRAME_DELTA"]
    n = np.arange(22)  # (1 us tolerances below: the ET ulp is 1.2e-7 s)
    expected = start + bias + n * (0.371 + delta)
    np.testing.assert_allclose(timing.frame_et(n), expected, rtol=0, atol=1e-6)
    assert float(timing.frame_et(0)) == pytest.approx(start + 0.06188, abs=1e-6)
    # fitted offsets: a start offset and an interframe correction
    fitted = timing.with_offsets(-0.028, 2e-4)
    np.testing.assert_allclose(fitted.frame_et(n), expected - 0.028 + n * 2e-4, rtol=0, atol=1e-6)
    assert fitted.frame_period_s == pytest.approx(0.371 + delta + 2e-4)
    # ISIS's convention: mid-exposure
    isis = FrameTiming.for_product(meta, mid_exposure=True)
    np.testing.assert_allclose(isis.frame_et(n) - timing.frame_et(n), 0.5 * 3.2e-3, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_missing_ik_names_the_ik(kernel_dir: Path) -> None:
    spiceypy.kclear()
    spiceypy.furnsh(str(kernel_dir / "lsk" / "naif0012.tls"))
    try:
        with pytest.raises(KernelMissingError) as err:
            CameraModel.from_pool("GREEN")
        text = str(err.value)
        assert "INS-61502_FOCAL_LENGTH" in text and "juno_junocam" in text and "\n" not in text
        with pytest.raises(KernelMissingError, match="juno_junocam"):
            FrameTiming.for_product(parse_metadata(_label()))
    finally:
        spiceypy.kclear()


def test_unknown_band_is_refused() -> None:
    with pytest.raises(KernelMissingError, match="no JunoCam band 'UV'"):
        CameraModel.from_pool("UV")


# ---------------------------------------------------------------------------------------
# per-band boresight correction
# ---------------------------------------------------------------------------------------
def test_boresight_correction_turns_rays_and_round_trips(ik_only) -> None:
    """A rotation about cam x moves pixels along y by angle x focal; px -> ray -> px stays exact."""
    from types import SimpleNamespace

    cam = CameraModel.from_pool("GREEN")
    omega = (0.3 / cam.focal_px, -0.2 / cam.focal_px, 0.0)
    turned = cam.with_boresight(omega)
    x = np.array([100.5, 824.0, 1600.5])
    y = np.array([0.5, 64.0, 127.5])
    # a fixed ray, seen by the turned camera, lands (dx, dy) ~ (-0.2, +0.3) px away at the centre
    xt, yt = turned.cam_to_px(cam.px_to_cam(x, y))
    assert xt[1] - x[1] == pytest.approx(0.2, abs=2e-3) and yt[1] - y[1] == pytest.approx(0.3, abs=2e-3)
    # a rotation, not a shift: ~(1 + tan^2) more at the framelet's ends (0.23-0.26 px there)
    assert np.all(np.abs(xt - x - 0.2) < 0.06) and np.all(np.abs(yt - y - 0.3) < 0.02)
    # round trip through the turned model, all three entry points
    xb, yb = turned.cam_to_px(turned.px_to_cam(x, y))
    assert np.abs(xb - x).max() < 1e-9 and np.abs(yb - y).max() < 1e-9
    ray = turned.px_to_cam(x, y)
    xs, ys = turned.cam_to_px_xyz(ray[:, 0], ray[:, 1], ray[:, 2])
    assert np.abs(xs - x).max() < 1e-9 and np.abs(ys - y).max() < 1e-9
    centre = turned.px_to_cam(np.array(824.5), np.array(64.5))  # array element [64, 824]
    assert np.allclose(turned.framelet_rays_cam[64, 824], centre / np.linalg.norm(centre), atol=1e-12)
    # a pointing solution's attitude hands the correction to for_product
    meta = parse_metadata(_label())
    att = SimpleNamespace(band_boresight_rad=(("GREEN", omega),))
    assert CameraModel.for_product(meta, "GREEN", attitude=att).boresight_rad == pytest.approx(omega)
    assert CameraModel.for_product(meta, "RED", attitude=att).boresight_rad == (0.0, 0.0, 0.0)
    assert CameraModel.for_product(meta, "GREEN").boresight_rad == (0.0, 0.0, 0.0)
