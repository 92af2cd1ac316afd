"""The simulator: products that load, kernels that round-trip, timing offsets that show."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import spiceypy
from click.testing import CliRunner

from junoproc.camera import FrameTiming
from junoproc.cli import main
from junoproc.geometry import CkAttitude, frame_state, image_geometry, intersect_rays
from junoproc.products import parse_metadata
from junoproc.simulate import SpinAttitude, compand_sqroot, decompand_sqroot_table, simulate


@pytest.fixture(scope="module")
def jupiter_rgb(tmp_path_factory, kernel_dir):
    """A full 22-frame RGB Jupiter product (the benchmark case), made once."""
    out = tmp_path_factory.mktemp("sim_jupiter")
    t0, c0 = time.perf_counter(), time.process_time()
    product = simulate(out, kernel_dir=kernel_dir, seed=3)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nbenchmark: simulate 22-frame RGB Jupiter product: {wall:.2f} s wall, {cpu:.2f} s CPU")
    return product, cpu


@pytest.fixture(scope="module")
def offset_product(tmp_path_factory, kernel_dir):
    out = tmp_path_factory.mktemp("sim_offset")
    return simulate(out, kernel_dir=kernel_dir, n_frames=8, texture_width=2048, time_offset_s=0.030,
                    noise=False, seed=5)


def _load_meta(product):
    return parse_metadata(json.loads(product.metadata_path.read_text()), path=product.metadata_path)


def _pixel_errors(product, timing_offset_s: float, step: int = 4) -> np.ndarray:
    """Truth (analytic spin) surface points -> px through the written kernels (CK + label timing)."""
    meta = _load_meta(product)
    spiceypy.kclear()
    try:
        for path in product.kernel_files:
            spiceypy.furnsh(str(path))
        timing = FrameTiming.for_product(meta).with_offsets(timing_offset_s, 0.0)
        geo = image_geometry(meta, CkAttitude(), timing=timing)
        yy, xx = np.mgrid[0:128:step, 0:1648:step] + 0.5
        errors = []
        for f in range(meta.n_frames):
            et = product.frame_ets[f]
            state = frame_state(geo.target, et)
            for band in meta.filters:
                rays = geo.cameras[band].framelet_rays_cam[::step, ::step]
                pts = intersect_rays(state, product.attitude.rot_j2000_to_cam(et), rays, geo.target)
                if pts.hit.any():
                    x, y = geo.surface_to_px(f, band, pts.pos_body_km[pts.hit])
                    errors.append(np.hypot(x - xx[pts.hit], y - yy[pts.hit]))
        return np.concatenate(errors)
    finally:
        spiceypy.kclear()


def test_sqroot_compander_inverts_calibrate_table():
    table = decompand_sqroot_table()
    assert table[255] == 2879 and table[23] == 23 and table[43] == 63
    dn = np.arange(0, 3100, dtype=np.float64)
    v = compand_sqroot(dn)
    assert v[2879] == 255 and v[3099] == 255 and v[0] == 0
    assert np.all(table[v] <= np.minimum(dn, 2879))  # truncation into the bin
    assert np.array_equal(compand_sqroot(table), np.arange(256))  # every bin's lower edge maps home


def test_spin_attitude_is_a_rotation_about_its_axis():
    att = SpinAttitude(spin_axis_ra_deg=30.0, spin_axis_dec_deg=-10.0, phase0_deg=5.0, rate_deg_s=12.0,
                       t_ref_et=100.0, rot_sc_to_cam=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    r0, r1 = att.rot_j2000_to_sc(100.0), att.rot_j2000_to_sc(101.0)
    assert np.allclose(r0 @ r0.T, np.eye(3), atol=1e-12)
    assert np.allclose(r0[2], att.axis_j2000)
    angle = np.degrees(np.arccos((np.trace(r1 @ r0.T) - 1) / 2))
    assert angle == pytest.approx(12.0, abs=1e-9)


def test_simulator_renders_with_the_solvers_spin_model():
    """One SpinAttitude: the simulator's is the pointing solver's class, not a look-alike."""
    from junoproc import pointing

    assert SpinAttitude is pointing.SpinAttitude


def test_product_layout_and_metadata(jupiter_rgb):
    product, _ = jupiter_rgb
    assert product.raw_path.parent.name == "ImageSet"
    assert product.raw_path.parent.parent.name.endswith("-ImageSet")
    assert product.metadata_path.name.endswith("-Metadata.json")
    label = json.loads(product.metadata_path.read_text())
    assert label["INTERFRAME_DELAY"].endswith(" <s>") and label["EXPOSURE_DURATION"] == "3.200000 <ms>"
    assert label["SAMPLE_BIT_MODE_ID"] == "SQROOT" and label["SAMPLING_FACTOR"] == 1
    meta = _load_meta(product)
    assert meta.filters == ("BLUE", "GREEN", "RED")
    assert meta.n_frames == 22 and meta.lines == 22 * 3 * 128 and meta.target == "JUPITER"
    import cv2

    raw = cv2.imread(str(product.raw_path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.shape == (meta.lines, 1648)
    framelets = raw.reshape(22, 3, 128, 1648)
    lit = (framelets > 40).mean(axis=(2, 3))
    assert lit.max() > 0.5  # the planet fills framelets mid-image
    assert lit[0].max() < lit[11].max()  # ... and enters/leaves the strip
    assert np.median(framelets[..., :23]) < 3  # dark columns carry only noise
    truth = json.loads((product.truth_dir / "truth.json").read_text())
    assert truth["timing"]["time_offset_s"] == 0.0 and truth["kernels"]["ck_written"]
    assert truth["spin"]["rate_deg_s"] == 12.0
    assert (product.truth_dir / truth["texture"]["files"]["GREEN"]).is_file()
    assert len(truth["noise"]["hot_pixels"]) == 6 and len(truth["noise"]["particle_hits"]) == 12


def test_simulates_22_frame_rgb(jupiter_rgb):
    # Its speed (goal < 10 s) is measured by benchmarks/bench_simulate.py, not asserted here.
    product, _ = jupiter_rgb
    assert product.n_frames == 22 and tuple(product.filters) == ("BLUE", "GREEN", "RED")


def test_round_trip_through_written_kernels(jupiter_rgb):
    product, _ = jupiter_rgb
    err = _pixel_errors(product, 0.0, step=6)
    print(f"\nround trip: {err.size} px, max {err.max():.2e} px, median {np.median(err):.2e} px")
    assert err.size > 50_000
    assert err.max() < 0.01


def test_time_offset_shows_and_is_recovered(offset_product):
    label_err = _pixel_errors(offset_product, 0.0)
    fixed_err = _pixel_errors(offset_product, 0.030)
    print(f"\n30 ms offset: label timing median {np.median(label_err):.2f} px; "
          f"with_offsets(0.030) max {fixed_err.max():.2e} px")
    expected_px = 12.0 * 0.030 / np.degrees(0.0074 / 10.95637)  # spin x dt / IFOV
    assert np.median(label_err) == pytest.approx(expected_px, rel=0.15)
    assert fixed_err.max() < 0.01


def test_methane_only_and_no_ck(tmp_path, kernel_dir):
    product = simulate(tmp_path, kernel_dir=kernel_dir, filters=("METHANE",), n_frames=4, write_ck=False,
                       texture_width=1024, noise=False)
    meta = _load_meta(product)
    assert meta.filters == ("METHANE",) and meta.lines == 4 * 128 and meta.sampling_factor == 1
    assert "M" in product.product_id.split("_")[2]
    assert not list((tmp_path / "kernels").rglob("*.bc"))
    truth = json.loads((product.truth_dir / "truth.json").read_text())
    assert truth["kernels"]["ck_written"] is False and "spin_axis_ra_deg" in truth["spin"]


def test_moon_with_jupitershine(tmp_path, kernel_dir):
    common = dict(target="io", kernel_dir=kernel_dir, n_frames=10, noise=False, n_hot_pixels=0,
                  n_particle_hits=0, texture_width=1024, filters=("GREEN",))
    dark = simulate(tmp_path / "dark", **common)
    shine = simulate(tmp_path / "shine", jupitershine=True, **common)
    import cv2

    a = cv2.imread(str(dark.raw_path), cv2.IMREAD_UNCHANGED).astype(int)
    b = cv2.imread(str(shine.raw_path), cv2.IMREAD_UNCHANGED).astype(int)
    assert (a > 30).sum() > 2000  # the sunlit disc is there
    night = (a == 0) & (b > 0)
    print(f"\njupitershine: {night.sum()} night-side px lit, mean raw {b[night].mean():.1f}")
    assert night.sum() > 300
    assert b[night].mean() < 0.1 * a[a > 30].mean()  # faint
    truth = json.loads((shine.truth_dir / "truth.json").read_text())
    assert truth["illumination"]["jupitershine_fraction"] > 0


def test_cli_simulate_and_bad_options(tmp_path, kernel_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", str(tmp_path / "cli"), "--target", "europa", "--frames", "3",
                                  "--filters", "RED", "--time-offset-ms", "10", "--kernels", str(kernel_dir)])
    assert result.exit_code == 0, result.output
    assert "product:" in result.output and Path(result.output.split()[1]).is_file()
    bad = runner.invoke(main, ["simulate", str(tmp_path / "bad"), "--filters", "BLUE,UV"])
    assert bad.exit_code != 0
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    assert "UV" in bad.output
    missing = runner.invoke(main, ["simulate", str(tmp_path / "bad2"), "--kernels", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and len(missing.output.strip().splitlines()) == 1


def test_offline_synthetic_kernels_round_trip(tmp_path, monkeypatch):
    """No local kernels at all: self-contained synthetic text kernels, still exact."""
    monkeypatch.setenv("JUNOPROC_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("JUNOPROC_KERNELS", str(tmp_path / "no-kernels"))
    monkeypatch.setenv("JUNOPROC_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("JUNOPROC_CONFIG", str(tmp_path / "no-config.toml"))
    product = simulate(tmp_path / "sim", n_frames=4, texture_width=1024, noise=False, filters=("RED",),
                       time_offset_s=-0.02)
    assert product.synthetic_kernels
    names = [p.name for p in product.kernel_files]
    assert "synthetic_naif.tls" in names and any(n.endswith(".bc") for n in names)
    assert "SYNTHETIC" in (product.kernel_dir / "fk" / "synthetic_juno.tf").read_text()
    truth = json.loads((product.truth_dir / "truth.json").read_text())
    assert truth["kernels"]["synthetic_text_kernels"] is True
    err = _pixel_errors(product, -0.02)
    assert err.size > 1000 and err.max() < 0.01


def test_bad_band_boresight_is_refused(tmp_path, kernel_dir):
    from junoproc.simulate import SimulationError

    with pytest.raises(SimulationError, match="band boresight"):
        simulate(tmp_path, kernel_dir=kernel_dir, filters=("GREEN",),
                 band_boresight_rad={"RED": (0.0, 1e-4, 0.0)})
    with pytest.raises(SimulationError, match="band boresight"):
        simulate(tmp_path, kernel_dir=kernel_dir, filters=("GREEN",), band_boresight_rad={"GREEN": (1e-4,)})


def test_simulated_pass_shares_one_trajectory_and_spin_axis(tmp_path, kernel_dir):
    """simulate_pass: the images of a pass share Juno's line, the Sun, Jupiter and the spin
    axis (their SPKs agree where they overlap), and the line of sight turns between them."""
    import spiceypy

    from junoproc.pointing import _angle_deg
    from junoproc.simulate import simulate_pass

    products = simulate_pass(tmp_path, n_images=2, spacing_s=600.0, kernel_dir=kernel_dir, n_frames=2,
                             altitude_km=200_000.0, texture_width=256, write_ck=False, seed=3,
                             n_particle_hits=0, n_hot_pixels=0)
    a, b = products
    assert a.product_id != b.product_id
    assert _angle_deg(a.attitude.axis_j2000, b.attitude.axis_j2000) < 1e-9
    assert a.attitude.rate_deg_s == b.attitude.rate_deg_s
    assert b.frame_ets[0] - a.frame_ets[0] == pytest.approx(600.0, abs=1e-3)
    los = []
    et = float(np.mean(a.frame_ets))
    for product in (a, b):  # each product's own kernels give the same states at a's time
        spiceypy.kclear()
        for path in product.kernel_files:
            spiceypy.furnsh(str(path))
        los.append([np.asarray(spiceypy.spkezr("JUNO", e, "J2000", "NONE", "JUPITER")[0])
                    for e in (et, float(np.mean(b.frame_ets)))])
    spiceypy.kclear()
    assert np.allclose(los[0][0], los[1][0], atol=1e-6)  # Juno's state at a's mid-time, from both SPKs
    turn = _angle_deg(los[1][0][:3], los[1][1][:3])
    assert 3.0 < turn < 15.0, turn  # ~atan(50 km/s x 600 s / 270,000 km)


def test_textures_are_the_same_in_every_process():
    """A texture depends on its seed and target only: a moon's was seeded from Python's str
    hash, which changes per process (PYTHONHASHSEED), so the same simulate() call gave Io
    different craters and hot pixels from run to run."""
    import hashlib
    import subprocess
    import sys

    code = ("import hashlib; from junoproc.simulate import moon_texture, jupiter_texture; "
            "m = moon_texture('IO', 3, 256, ('GREEN',))[0]['GREEN']; "
            "j = jupiter_texture(3, 256, ('GREEN',))[0]['GREEN']; "
            "print(hashlib.md5(m.tobytes() + j.tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(k)}).stdout.strip() for k in (1, 2, 3)}
    assert len(digests) == 1, digests
    from junoproc.simulate import moon_texture

    here = moon_texture("IO", 3, 256, ("GREEN",))[0]["GREEN"]
    assert hashlib.md5(here.tobytes()).hexdigest() != hashlib.md5(
        moon_texture("EUROPA", 3, 256, ("GREEN",))[0]["GREEN"].tobytes()).hexdigest()


@pytest.mark.parametrize("sigma_px", [0.2, 0.45, 0.7, 2.0])
def test_optical_blur_has_the_stated_width(sigma_px):
    """The simulator's optics: the discrete kernel that blurs the disc's inside has variance
    sigma^2 (a sampled Gaussian of 0.45 px has 0.146 px^2), and the limb's pixel samples
    follow the pixel's area convolved with the Gaussian (variance 1/12 + sigma^2)."""
    from junoproc.simulate import _box_gauss_quantile, psf_kernel

    k = psf_kernel(sigma_px)
    n = np.arange(k.size) - k.size // 2
    assert k.sum() == pytest.approx(1.0, abs=1e-6) and np.allclose(k, k[::-1])
    assert float((k * n * n).sum()) == pytest.approx(sigma_px**2, rel=0.02)
    x = _box_gauss_quantile((np.arange(20000) + 0.5) / 20000, sigma_px)
    assert abs(x.mean()) < 1e-6 and x.var() == pytest.approx(1 / 12 + sigma_px**2, rel=1e-3)
