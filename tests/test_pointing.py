"""Pointing: spin model, limb detection and the solver on real data (no CK)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import spiceypy

from junoproc import pointing
from junoproc.camera import CameraModel, FrameTiming
from junoproc.errors import NoLimbError, PointingQualityError
from junoproc.products import find_products, load_entry


def _raw(data_dir, key):
    entry = next(e for e in find_products(data_dir) if key in e.product_id)
    return load_entry(entry)


def test_spin_basis_and_rotation_are_orthonormal():
    axis = np.array([0.3, -0.8, 0.2])
    b = pointing.spin_basis(axis)
    assert np.allclose(b @ b.T, np.eye(3), atol=1e-12)
    assert np.allclose(b[2], axis / np.linalg.norm(axis))
    att = pointing.SpinAttitude.from_params(axis, 0.4, math.radians(11.8), 100.0, np.eye(3))
    r0, r1 = att.rot_j2000_to_sc(100.0), att.rot_j2000_to_sc(101.0)
    w = r1 @ r0.T  # frame rotation about +z by rate * 1 s (SPICE rotate convention)
    assert math.degrees(math.atan2(w[0, 1], w[0, 0])) == pytest.approx(11.8, abs=1e-9)
    assert np.allclose(r0.T @ [0, 0, 1], axis / np.linalg.norm(axis))


def test_real_ck_spin_sense_is_positive(data_dir, real_kernels):
    """Juno's spin in the reconstructed PJ01 CK is +11.7 deg/s in the model's convention."""
    for path in sorted((data_dir / "pj01-ck-geometry").glob("*.b*")):
        spiceypy.furnsh(str(path))
    et = spiceypy.str2et("2016-08-27T08:15:30")
    r1 = np.asarray(spiceypy.pxform("J2000", "JUNO_SPACECRAFT", et))
    r2 = np.asarray(spiceypy.pxform("J2000", "JUNO_SPACECRAFT", et + 0.5))
    w = r2 @ r1.T
    assert math.degrees(math.atan2(w[0, 1], w[0, 0])) / 0.5 == pytest.approx(11.72, abs=0.05)


@pytest.fixture(scope="module")
def rgb43(data_dir):
    return _raw(data_dir, "43C00078")


def test_detect_limb_on_real_rgb(rgb43):
    pts = pointing.detect_limb(rgb43)
    counts = pts.count_by_band()
    # measured 332/112/49 (RED's crescent is short; 53 half-level points, 2 more refused
    # by the edge model at the 0.51 px blur than at 0.47): enough for every band's solve
    assert all(counts[b] > 40 for b in ("BLUE", "GREEN", "RED"))
    assert np.all((pts.x_px > 23) & (pts.x_px < 1631))
    assert np.all((pts.y_px > 0) & (pts.y_px < 128))
    # lit crescent on the left of the framelets: limb normals point to -x (the sky) mostly
    assert np.median(pts.normal_x) < 0


def test_solve_real_rgb_without_ck(rgb43, real_kernels, tmp_path):
    sol = pointing.solve_pointing(rgb43, max_axis_sigma_deg=90.0, refuse_ambiguous=False)
    assert sol.method == "spin"
    for band, rms in sol.residuals_px_by_band.items():
        assert rms < 0.5, (band, rms)
        assert sol.n_points_by_band[band] > 30
    assert 11.6 < sol.attitude.rate_deg_s < 12.2
    path = pointing.save_solution(sol, tmp_path / "sol.json")
    back = pointing.load_solution(path, rgb43.meta)
    et = float(sol.timing.frame_et(3))
    assert np.allclose(back.attitude.rot_j2000_to_cam(et), sol.attitude.rot_j2000_to_cam(et), atol=1e-12)
    assert back.timing == sol.timing
    # the edge model's blur, measured on the image (0.47 px), recorded and read back
    assert sol.limb_edge_blur_px is not None and 0.35 < sol.limb_edge_blur_px < 0.6
    assert back.limb_edge_blur_px == sol.limb_edge_blur_px
    assert f"edge model, blur {sol.limb_edge_blur_px:.2f} px" in sol.summary()


def test_no_limb_is_refused(rgb43, real_kernels):
    from dataclasses import replace

    flat = np.full_like(rgb43.pixels, 120)  # target "fills every framelet"
    with pytest.raises(NoLimbError):
        pointing.solve_pointing(replace(rgb43, pixels=flat))


def test_too_few_points_are_refused(rgb43, real_kernels):
    pts = pointing.detect_limb(rgb43)
    one_frame = pts.subset(pts.frame == pts.frame[0])
    with pytest.raises(PointingQualityError):
        pointing.solve_pointing(rgb43, points=one_frame)
    with pytest.raises(PointingQualityError):
        pointing.solve_pointing(rgb43, points=pts.subset(np.arange(len(pts)) < 10))


def test_one_band_only_still_solves(rgb43, real_kernels):
    pts = pointing.detect_limb(rgb43)
    blue = pts.subset(pts.band == 0)
    sol = pointing.solve_pointing(rgb43, points=blue, max_axis_sigma_deg=90.0, refuse_ambiguous=False)
    assert sol.n_points_by_band["GREEN"] == 0
    assert sol.residuals_px_by_band["BLUE"] < 0.5
    assert "limb found in one band only" in sol.notes
    assert sol.quality in ("fair", "prior-dependent roll")  # one image, one band: never "good"


# --- simulated known truth --------------------------------------------------------------
def _ik_focal_px(kernel_dir) -> float:
    """JunoCam's focal length in pixels, from the instrument kernel in ``kernel_dir``."""
    iks = sorted(str(p) for p in kernel_dir.rglob("*.ti"))
    for ik in iks:
        spiceypy.furnsh(ik)
    try:
        return CameraModel.from_pool("GREEN").focal_px
    finally:
        for ik in iks:
            spiceypy.unload(ik)


def _furnish(files):
    spiceypy.kclear()
    for path in files:
        spiceypy.furnsh(str(path))


def _truth_vs_solution_px(product, sol, step: int = 8) -> np.ndarray:
    """Truth surface points (truth attitude, true frame times) -> px through the solved geometry."""
    from junoproc.geometry import frame_state, image_geometry, intersect_rays

    raw = load_entry(next(iter(find_products(product.out_dir))))
    geo = image_geometry(raw.meta, sol.attitude, timing=sol.timing)
    yy, xx = np.mgrid[0:128:step, 0:1648:step] + 0.5
    errors = []
    for f, et in enumerate(product.frame_ets):
        state = frame_state(geo.target, et)
        for band in raw.meta.filters:
            rays = geo.cameras[band].framelet_rays_cam[::step, ::step]
            pts = intersect_rays(state, product.attitude.rot_j2000_to_cam(et), rays, geo.target)
            if pts.hit.any():
                x, y = geo.surface_to_px(f, band, pts.pos_body_km[pts.hit])
                errors.append(np.hypot(x - xx[pts.hit], y - yy[pts.hit]))
    return np.concatenate(errors)


def _prior_6_deg_off(axis_j2000: np.ndarray) -> pointing.AxisPrior:
    """The simulator has no Earth: an axis prior 6 deg off the truth (sigma 5 deg), which the
    limb must pull home."""
    off = pointing.spin_basis(axis_j2000)[0]
    centre = axis_j2000 * math.cos(math.radians(6.0)) + off * math.sin(math.radians(6.0))
    return pointing.AxisPrior(centre_j2000=centre, sigma_deg=5.0, gates=(("test", centre),), source="test")


def _solved_alone_against_truth(product) -> tuple[pointing.PointingSolution, np.ndarray, float]:
    """A simulated product's no-CK spin solution (prior 6 deg off), its truth px errors and
    its axis's angle from the true one (deg)."""
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        axis = product.attitude.axis_j2000
        sol = pointing.solve_pointing(raw, axis_prior=_prior_6_deg_off(axis))
        return sol, _truth_vs_solution_px(product, sol), pointing._angle_deg(sol.attitude.axis_j2000, axis)
    finally:
        spiceypy.kclear()


def _simulated(tmp_path, kernel_dir, write_ck: bool):
    from junoproc.simulate import simulate

    return simulate(tmp_path, kernel_dir=kernel_dir, n_frames=8, altitude_km=200_000.0, texture_width=1024,
                    time_offset_s=0.030,
                    write_ck=write_ck, seed=11, n_particle_hits=0)


def _furnish_pass(products) -> None:
    """The generic kernels once (each product carries copies) and every product's SPK."""
    seen: set[str] = set()
    files = []
    for product in products:
        for path in product.kernel_files:
            if path.suffix.lower() in (".bsp", ".bc") or path.name not in seen:
                seen.add(path.name)
                files.append(path)
    _furnish(files)


@pytest.mark.parametrize("seed", [11, 12, 16])
def test_simulated_pass_joint_without_ck_matches_truth(tmp_path, kernel_dir, seed):
    """Issue #5 without a CK: three products of one pass 15 min apart (the line of sight turns
    9 and 18 deg), one spin axis solved from all their limbs, within 0.1 px of the truth.

    Measured, truth px error max per image (seeds 11-16, six textures; the test runs the
    worst, 12, and two others): 0.064/0.073/0.035, 0.089/0.098/0.085, 0.038/0.031/0.041,
    0.053/0.054/0.037, 0.038/0.044/0.067, 0.037/0.028/0.039.
    With the half-level limb points (``edge_model=False``), the worst image of each pass:
    0.207, 0.187, 0.105, 0.118, 0.133, 0.369 px. The clouds in the limb's last pixel
    moved each point by 0.12-0.16 px sd, systematically along a belt, and a noiseless
    render of the scene moved them as much (not noise). The edge model fits the limb's
    partly covered pixels themselves: sd 0.06-0.08 px. The simulator's limb is the pixel's
    area alone; for an optical blur see the next test."""
    from junoproc.simulate import simulate_pass

    products = simulate_pass(tmp_path, n_images=3, spacing_s=900.0, kernel_dir=kernel_dir, n_frames=8,
                             altitude_km=200_000.0, texture_width=1024, time_offset_s=0.030,
                             write_ck=False, seed=seed, n_particle_hits=0)
    _furnish_pass(products)
    try:
        raws = [load_entry(next(iter(find_products(p.out_dir)))) for p in products]
        axis = products[0].attitude.axis_j2000
        prior = _prior_6_deg_off(axis)  # as for one image
        sols = pointing.solve_from_limbs([pointing.detect_limbs(r) for r in raws], images=raws,
                                         axis_prior=prior)
        errors = [_truth_vs_solution_px(p, s) for p, s in zip(products, sols, strict=True)]
        sep = pointing._angle_deg(sols[0].attitude.axis_j2000, axis)
        print(f"\nsimulated pass (seed {seed}), joint no-CK: axis {sep:.4f} deg from truth, limb alt "
              f"{sols[0].limb_alt_km:.1f} km, truth px error max {[round(e.max(), 3) for e in errors]}")
        assert all(len(s.joint["products"]) == 3 and s.quality == "good" for s in sols)
        assert all(s.limb_edge_blur_px is not None and s.limb_edge_blur_px < 0.2 for s in sols)  # no optics
        assert sep < 0.02
        assert all(e.size > 1000 and e.max() < 0.1 for e in errors)
    finally:
        spiceypy.kclear()


def test_simulated_pass_with_optical_blur(tmp_path, kernel_dir):
    """The simulated pass of the test above with a Gaussian PSF of 0.45 px (``psf_sigma_px``;
    JunoCam's RGB limbs measure 0.48-0.51 px): the edge model measures the blur and stays
    nearer the truth than the half-level points, but not within 0.1 px on every texture.

    Measured, worst image per pass (seeds 11-16): 0.155, 0.086, 0.082, 0.097, 0.111, 0.175 px
    (half-level points 0.282, 0.216, 0.114, 0.168, 0.186, 0.393); blur 0.44-0.46 px. With
    0.7 px, seeds 11-12: 0.173, 0.097 (0.297, 0.284). With a CK, one image, 0.45 px (seeds
    11-14): 0.004-0.050 px. What is left is the scene: the blur carries the clouds inside
    the limb into its partly covered pixels, which no model of a uniform limb can tell from
    an edge a little further in (a noiseless render's points err as much; the points
    corrected by it give 0.02-0.04 px). A linear or square-root brightness profile fitted
    inside the limb helped some textures and hurt others (seed 11: 0.16-0.17 px)."""
    from junoproc.simulate import simulate_pass

    products = simulate_pass(tmp_path, n_images=3, spacing_s=900.0, kernel_dir=kernel_dir, n_frames=8,
                             altitude_km=200_000.0, texture_width=1024, time_offset_s=0.030,
                             write_ck=False, seed=11, n_particle_hits=0, psf_sigma_px=0.45)
    _furnish_pass(products)
    try:
        raws = [load_entry(next(iter(find_products(p.out_dir)))) for p in products]
        prior = _prior_6_deg_off(products[0].attitude.axis_j2000)
        worst = {}
        for edge_model in (True, False):
            obs = [pointing.LimbObservation(meta=r.meta, timing=FrameTiming.for_product(r.meta),
                                            points=pointing.detect_limb(r, edge_model=edge_model))
                   for r in raws]
            sols = pointing.solve_from_limbs(obs, images=raws, axis_prior=prior)
            worst[edge_model] = max(float(_truth_vs_solution_px(p, s).max())
                                    for p, s in zip(products, sols, strict=True))
            if edge_model:
                blurs = [o.points.edge_blur_px for o in obs]
        print(f"\nsimulated pass, 0.45 px blur: measured {np.round(blurs, 3)}, truth px error max "
              f"{worst[True]:.3f} (half level {worst[False]:.3f})")
        assert all(abs(b - 0.45) < 0.1 for b in blurs)
        assert worst[True] < 0.2 and worst[False] > 1.5 * worst[True]
    finally:
        spiceypy.kclear()


@pytest.mark.xfail(strict=True, reason=(
    "out of reach from one image's limb: the roll about the line of sight is barely fixed. "
    "Measured with the edge model (seeds 11-16): truth px error max 0.56, 0.46, 0.19, 0.45, "
    "0.38, 0.20 px; spin axis 0.023-0.069 deg off, formal 1-sigma 0.023-0.032 deg (~0.2 px at "
    "the image ends, 8 px/deg; with the edge fitted to less of the limb's pixels, 2 of the 6 "
    "met 0.1 px by chance). Half-level points: 1.52 px (seed 11). Three images of the pass "
    "solved jointly: 0.039-0.098 px (test_simulated_pass_joint_without_ck_matches_truth)"))
def test_simulated_rgb_without_ck_matches_truth(tmp_path, kernel_dir):
    """30 ms label-timing error, no CK, one image alone: the spin solve puts true surface
    points within 0.1 px, on four textures."""
    from junoproc.simulate import simulate

    worst = []
    for seed in (11, 12, 13, 14):
        product = simulate(tmp_path / str(seed), kernel_dir=kernel_dir, n_frames=8, altitude_km=200_000.0,
                           texture_width=1024, time_offset_s=0.030, write_ck=False, seed=seed,
                           n_particle_hits=0)
        sol, err, sep = _solved_alone_against_truth(product)
        print(f"\nsimulated no-CK (seed {seed}): RMS {max(sol.residuals_px_by_band.values()):.3f} px, axis "
              f"{sep:.4f} deg from truth (formal {sol.parameter_sigma['spin_axis_deg']:.4f}), limb alt "
              f"{sol.limb_alt_km:.1f} km, truth px error median {np.median(err):.3f} max {err.max():.3f} px")
        assert not sol.axis["prior_dependent_roll"] and err.size > 1000
        worst.append(float(err.max()))
    assert max(worst) < 0.1


def test_one_image_spin_solution_is_not_called_good(tmp_path, kernel_dir):
    """Issue #5, no confident wrong answer: from 400,000 km one image's limb fits to 0.07 px
    and the formal axis 1-sigma is 0.043 deg, yet the axis is 0.20 deg off (0.81 px at worst;
    with the half-level limb points 0.85 deg and 3.5 px, when the solution said "good").
    One image's spin solution is "fair" at best, and says why and what to do."""
    from junoproc.simulate import simulate

    product = simulate(tmp_path, kernel_dir=kernel_dir, n_frames=14, altitude_km=400_000.0,
                       texture_width=1024, time_offset_s=0.030, write_ck=False, seed=11, n_particle_hits=0)
    sol, err, sep = _solved_alone_against_truth(product)
    rms = max(sol.residuals_px_by_band.values())
    print(f"\none image at 400,000 km: quality {sol.quality}, RMS {rms:.3f} px, axis {sep:.3f} deg off "
          f"(formal {sol.parameter_sigma['spin_axis_deg']:.3f}), truth px error max {err.max():.2f}")
    assert rms < 0.15 and err.max() > 4 * rms  # the trap: a fine fit, wrong by several times its RMS
    assert sol.quality == "fair"
    assert any("one image's limb" in n and "solve_pointing_joint" in n for n in sol.notes), sol.notes
    assert "one image's limb" in sol.summary()


def test_simulated_rgb_refined_from_ck_matches_truth(tmp_path, kernel_dir):
    """With the CK: timing offset + small rotation refined; true surface points within 0.1 px.

    Measured 0.032 px max with the edge model's limb points (start offset 30.02 ms); 0.040 px
    with the half-level points (start offset 30.01 ms, limb altitude -0.5 km): the limb points
    under texture at the limb (a bright oval at the leading limb, 54 points -0.46 px) pulled
    the limb altitude to -16 km and the result to 0.167 px before the detector dropped them,
    0.093 px (altitude -2.9 km) before it took the half level just inside the limb."""
    from junoproc.geometry import CkAttitude

    product = _simulated(tmp_path, kernel_dir, write_ck=True)
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        sol = pointing.solve_pointing(raw, ck=CkAttitude())
        err = _truth_vs_solution_px(product, sol)
        print(f"\nsimulated CK refine: start offset {1e3 * sol.timing.start_offset_s:.2f} ms, "
              f"RMS {sol.residuals_px_by_band}, truth px error max {err.max():.3f} px")
        # the CK's spin leaves the start offset alone to absorb the 30 ms
        assert sol.timing.start_offset_s == pytest.approx(0.030, abs=1e-3)
        assert sol.method == "ck-refined" and err.max() < 0.1
    finally:
        spiceypy.kclear()


@pytest.mark.parametrize("scene", [
    dict(n_hot_pixels=60, n_particle_hits=150),  # hits and hot pixels, in the sky too
    dict(full_well_dn=6000.0),                   # 14 % of the pixels saturated, at the limb too
    dict(phase_angle_deg=110.0),                 # the terminator across the disc, a dark limb
    dict(exposure_ms=0.32),                      # 10x less light: the noise 3x larger
], ids=["hits", "saturated", "terminator", "faint"])
def test_limb_survives_hits_saturation_the_terminator_and_noise(tmp_path, kernel_dir, scene):
    """Issue #5's hazards on the simulated product of the CK test (30 ms start error): the
    limb points keep off particle hits, hot pixels, saturated pixels and the terminator, so
    the refined solution stays within 0.1 px of the truth. Measured: 0.029, 0.027, 0.049,
    0.029 px (clean: 0.032); points 905, 289 (saturated), 832 (terminator), 904 (clean 906)."""
    from junoproc.geometry import CkAttitude
    from junoproc.simulate import simulate

    product = simulate(tmp_path, kernel_dir=kernel_dir, n_frames=8, altitude_km=200_000.0, texture_width=1024,
                       time_offset_s=0.030, write_ck=True, seed=11, **{"n_particle_hits": 0, **scene})
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        pts = pointing.detect_limb(raw)
        sol = pointing.solve_pointing(raw, ck=CkAttitude(), points=pts)
        err = _truth_vs_solution_px(product, sol)
        print(f"\n{scene}: saturated {np.mean(raw.framelets >= pointing.RAW_SATURATED):.3f}, points "
              f"{pts.count_by_band()}, RMS {max(sol.residuals_px_by_band.values()):.3f} px, truth px error "
              f"max {err.max():.3f}")
        assert all(n >= 40 for n in pts.count_by_band().values())
        assert sol.quality == "good" and max(sol.residuals_px_by_band.values()) < 0.15
        assert sol.timing.start_offset_s == pytest.approx(0.030, abs=1e-3) and err.max() < 0.1
    finally:
        spiceypy.kclear()


def test_moon_with_a_ck_is_refined_from_a_short_limb(tmp_path, kernel_dir):
    """Io from 60,000 km (a 45 px disc; its limb spans under 100 px) with a CK and 30 ms of
    label-timing error: the CK refinement needs no limb spread across the image (the CK
    holds the attitude), so it is made, not refused as a spin solve would be, and puts true
    surface points within 0.1 px. Measured 0.015 px (blur 0.13 px); half-level points
    0.181 px. Ganymede from 30,000 km: 0.028 px (0.080)."""
    from junoproc.geometry import CkAttitude
    from junoproc.simulate import simulate

    product = simulate(tmp_path, target="io", kernel_dir=kernel_dir, altitude_km=60_000.0, texture_width=2048,
                       time_offset_s=0.030, write_ck=True, seed=11, n_particle_hits=0)
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        points = pointing.detect_limb(raw)
        assert np.ptp(points.x_px) < 100 and points.edge_blur_px < 0.3
        sol = pointing.solve_pointing(raw, ck=CkAttitude(), points=points)
        err = _truth_vs_solution_px(product, sol)
        print(f"\nIo with a CK: {len(points)} limb points, blur {points.edge_blur_px:.2f} px, start offset "
              f"{1e3 * sol.timing.start_offset_s:.2f} ms, truth px error max {err.max():.3f}")
        assert sol.method == "ck-refined" and err.max() < 0.1
        assert sol.timing.start_offset_s == pytest.approx(0.030, abs=1e-3)
        with pytest.raises(PointingQualityError, match="span only"):
            pointing.solve_pointing(raw, points=points)  # no CK: too short for the spin
    finally:
        spiceypy.kclear()


def test_exported_ck_reproduces_the_solution(tmp_path, kernel_dir):
    """A CK-refined solution written as a type-3 CK and read back: < 0.01 px at every frame time."""
    from junoproc.geometry import CkAttitude

    product = _simulated(tmp_path, kernel_dir, write_ck=True)
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        sol = pointing.solve_pointing(raw, ck=CkAttitude())
        assert sol.method == "ck-refined"  # (start offset ~ rotation about the spin axis: degenerate)
        # the simulator CK covers the true image span +- 10 s: a 9 s margin stays inside it
        ck_path = pointing.export_ck(sol, tmp_path / "out.bc", raw.meta, margin_s=9.0)
        ets = sol.timing.frame_et(np.arange(raw.meta.n_frames))
        expected = [sol.attitude.rot_j2000_to_cam(float(e)) for e in ets]
        for path in product.kernel_files:  # only the exported CK from here on
            if str(path).endswith(".bc"):
                spiceypy.unload(str(path))
        spiceypy.furnsh(str(ck_path))
        focal_px = CameraModel.from_pool("GREEN").focal_px
        for e, want in zip(ets, expected, strict=True):
            got = CkAttitude().rot_j2000_to_cam(float(e))
            angle = math.acos(min(1.0, (np.trace(got @ want.T) - 1) / 2))
            assert angle < 0.01 / focal_px
        handle = spiceypy.dafopr(str(ck_path))
        try:
            comments = " ".join(spiceypy.dafec(handle, 50)[1])
        finally:
            spiceypy.dafcls(handle)
        assert "NOT in this" in comments and raw.meta.product_id in comments
    finally:
        spiceypy.kclear()


def _geometry_with_cameras(meta, attitude, timing):
    """image_geometry with each band's camera as the attitude carries it (boresight corrections)."""
    from dataclasses import replace

    from junoproc.camera import CameraModel
    from junoproc.geometry import image_geometry

    geo = image_geometry(meta, attitude, timing=timing)
    cameras = {b: CameraModel.for_product(meta, b, attitude=attitude) for b in meta.filters}
    return replace(geo, cameras=cameras)


def _band_registration_px(meta, truth_attitude, truth_timing, sol, ref="GREEN", step=16):
    """Per band: median (solved - true) px error of true surface points minus the reference band's
    at the same points (what a map of the solution shows as colour misregistration)."""
    truth = _geometry_with_cameras(meta, truth_attitude, truth_timing)
    solved = _geometry_with_cameras(meta, sol.attitude, sol.timing)
    yy, xx = np.mgrid[8:128:step, 40:1600:step] + 0.5
    rel: dict[str, list[np.ndarray]] = {b: [] for b in meta.filters if b != ref}
    for f in range(meta.n_frames):
        pts = truth.surface_points(f, ref, xx, yy)
        if not pts.hit.any():
            continue
        p = pts.pos_body_km[pts.hit]
        xs, ys = solved.surface_to_px(f, ref, p)
        e_ref = np.stack([xs - xx[pts.hit], ys - yy[pts.hit]], -1)
        for band, acc in rel.items():
            for f2 in range(meta.n_frames):
                xt, yt = truth.surface_to_px(f2, band, p)
                seen = (yt > 2) & (yt < 126) & (xt > 30) & (xt < 1620)
                if seen.any():
                    xs2, ys2 = solved.surface_to_px(f2, band, p[seen])
                    acc.append(np.stack([xs2 - xt[seen], ys2 - yt[seen]], -1) - e_ref[seen])
    return {b: np.median(np.concatenate(v), axis=0) for b, v in rel.items()}


def test_simulated_band_boresights_are_found_from_the_texture(tmp_path, kernel_dir):
    """Bands rendered 0.3-0.35 px off the IK's model: the texture alignment registers them < 0.1 px."""
    import json

    from junoproc.camera import FrameTiming
    from junoproc.geometry import CkAttitude
    from junoproc.simulate import simulate

    focal_px = _ik_focal_px(kernel_dir)
    truth = {"BLUE": (0.3 / focal_px, -0.25 / focal_px, 0.0), "RED": (-0.2 / focal_px, 0.35 / focal_px, 0.0)}
    product = simulate(tmp_path, kernel_dir=kernel_dir, n_frames=8, altitude_km=200_000.0, texture_width=2048,
                       time_offset_s=0.030, write_ck=True, seed=11, n_particle_hits=0,
                       band_boresight_rad=truth)
    recorded = json.loads((product.truth_dir / "truth.json").read_text())["spin"]["band_boresight_rad"]
    assert recorded["RED"] == [pytest.approx(v) for v in truth["RED"]]
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        true_timing = FrameTiming.for_product(raw.meta).with_offsets(product.time_offset_s, 0.0)
        limb_only = pointing.solve_pointing(raw, ck=CkAttitude(), band_alignment=False)
        sol = pointing.solve_pointing(raw, ck=CkAttitude())
        before = _band_registration_px(raw.meta, product.attitude, true_timing, limb_only)
        after = _band_registration_px(raw.meta, product.attitude, true_timing, sol)
        al = sol.band_alignment
        print(f"\nsimulated band offsets: misregistration before {before}, after {after}; "
              f"held-out {al['check_px_by_pair']}, windows {al['n_windows_by_pair']}")
        assert max(np.hypot(*v) for v in before.values()) > 0.25  # the offsets show without the stage
        assert all(np.hypot(*v) < 0.1 for v in after.values()), after
        assert all(n >= 5 for n in al["n_windows_by_pair"].values())
        assert all(v < 0.1 for v in al["check_px_by_pair"].values())
        # the corrections travel in the attitude and the solution JSON
        back = pointing.load_solution(pointing.save_solution(sol, tmp_path / "sol.json"), raw.meta)
        assert back.attitude.band_boresight_rad == sol.attitude.band_boresight_rad
        assert set(dict(back.attitude.band_boresight_rad)) == {"BLUE", "GREEN", "RED"}
    finally:
        spiceypy.kclear()


def test_real_rgb_bands_align_on_held_out_windows(rgb43, real_kernels):
    """43C00078 (red ~0.4 px off the others after the limb fit): < 0.2 px left on windows not fitted."""
    sol = pointing.solve_pointing(rgb43, max_axis_sigma_deg=90.0, refuse_ambiguous=False)
    al = sol.band_alignment
    print(f"\n43C00078 band alignment: shifts {al['shift_px_by_pair']}, held-out {al['check_px_by_pair']} "
          f"({al['n_check_by_pair']} windows), peaks {al['peak_by_pair']}, {al['time_s']:.2f} s")
    assert math.hypot(*al["shift_px_by_pair"]["GREEN-RED"]) > 0.3  # what the limb alone leaves
    for pair, left in al["check_px_by_pair"].items():
        assert al["n_check_by_pair"][pair] >= 3 and left < 0.2, (pair, left)
    assert all(p > 0.5 for p in al["peak_by_pair"].values())
    assert max(sol.residuals_px_by_band.values()) < 0.5


def test_detector_halves_radiance_not_companded_values():
    """An area-integrated disc edge in SQROOT-companded raw values: points on the true limb.

    Halving the companded values (~sqrt) would put them at the quarter-radiance point,
    +0.2 px out into the sky on this 1-px ramp.
    """
    from types import SimpleNamespace

    from junoproc.calibrate import companding_table
    from junoproc.simulate import compand_sqroot

    k, radius, cx, cy = 8, 400.0, 900.0, 300.0
    yy, xx = np.mgrid[0:128, 0:1648] + 0.5
    cover = np.zeros((128, 1648))
    for i in range(k):
        for j in range(k):
            cover += np.hypot(xx + (i + 0.5) / k - 0.5 - cx, yy + (j + 0.5) / k - 0.5 - cy) < radius
    dn = 1500.0 * cover / k**2
    raw = compand_sqroot(dn)[None, None]
    assert companding_table("SQROOT")[raw].max() > 1400
    meta = SimpleNamespace(sampling_factor=1, filters=("RED",), bit_mode="SQROOT", metadata_path=None)
    pts = pointing.detect_limb(SimpleNamespace(meta=meta, framelets=raw))
    err = np.hypot(pts.x_px - cx, pts.y_px - cy) - radius
    print(f"\nideal disc: {len(pts)} points, radial error median {np.median(err):+.3f} px, "
          f"std {err.std():.3f}")
    assert len(pts) > 100
    assert abs(np.median(err)) < 0.05 and err.std() < 0.1


def _disc_raw(ring_gain: float, ring_px: float = 4.0, radius: float = 400.0, cx: float = 900.0,
              cy: float = 300.0):
    """A framelet (1, 1, 128, 1648) of SQROOT raw values: a disc area-integrated over 8 x 8
    sub-pixels, 1000 DN inside, ``ring_gain`` x that within ``ring_px`` of its edge."""
    from junoproc.simulate import compand_sqroot

    k = 8
    yy, xx = np.mgrid[0:128, 0:1648] + 0.5
    dn = np.zeros((128, 1648))
    for i in range(k):
        for j in range(k):
            r = np.hypot(xx + (i + 0.5) / k - 0.5 - cx, yy + (j + 0.5) / k - 0.5 - cy)
            dn += np.where(r < radius, np.where(r > radius - ring_px, ring_gain, 1.0), 0.0)
    return compand_sqroot(1000.0 * dn / k**2)[None, None]


@pytest.mark.parametrize("ring_gain", [1.3, 0.8])
def test_detector_takes_the_planet_level_just_inside_the_limb(ring_gain):
    """A band 4 px wide along the limb, 30 % brighter or 20 % darker than the disc inside it
    (a belt or an oval at the limb): the points stay on the limb, with the edge model and with
    the half level of the band (measured, half level: median +0.036 / +0.024 px against
    +0.034 without the band; the plateau 4-7 px in put them +0.133 / -0.084 px)."""
    from types import SimpleNamespace

    meta = SimpleNamespace(sampling_factor=1, filters=("RED",), bit_mode="SQROOT", metadata_path=None)

    def median_error(gain: float, **options: bool) -> float:
        image = SimpleNamespace(meta=meta, framelets=_disc_raw(gain))
        pts = pointing.detect_limb(image, **options)
        assert len(pts) > 100
        return float(np.median(np.hypot(pts.x_px - 900.0, pts.y_px - 300.0) - 400.0))

    edge_clean, edge_banded = median_error(1.0), median_error(ring_gain)
    half_clean = median_error(1.0, edge_model=False)
    half_banded = median_error(ring_gain, edge_model=False)
    plateau = median_error(ring_gain, edge_model=False, local_level=False)
    print(f"\nlimb band x{ring_gain}: median error edge model {edge_banded:+.3f} px "
          f"(clean {edge_clean:+.3f}), half level {half_banded:+.3f} (clean {half_clean:+.3f}), "
          f"plateau level {plateau:+.3f}")
    assert abs(edge_clean) < 0.02 and abs(edge_banded - edge_clean) < 0.02
    assert abs(half_clean) < 0.05 and abs(half_banded - half_clean) < 0.03
    assert abs(plateau - median_error(1.0, edge_model=False, local_level=False)) > 0.08  # the case bites


def test_edge_model_sees_the_last_pixel_not_the_level_inside():
    """A belt exactly in the limb's last pixel (the disc 40 % darker within 1 px of its edge),
    which foreshortening makes common on a real limb (the last pixel spans 3-4 deg of
    latitude at 200,000 km): the half level of the planet's level inside puts the points
    0.35 px inside the limb; the edge model, fitted to the partly covered pixels themselves,
    keeps them on it. A belt all round the limb fools the blur's measurement (0.51 px for
    none, and the points as far in as the half level's), hence the blur given here."""
    from types import SimpleNamespace

    meta = SimpleNamespace(sampling_factor=1, filters=("RED",), bit_mode="SQROOT", metadata_path=None)
    image = SimpleNamespace(meta=meta, framelets=_disc_raw(0.6, ring_px=1.0))
    errors = {}
    for label, options in (("edge", {"edge_blur_px": 0.0}), ("half", {"edge_model": False}), ("auto", {})):
        pts = pointing.detect_limb(image, **options)
        assert len(pts) > 100
        errors[label] = float(np.median(np.hypot(pts.x_px - 900.0, pts.y_px - 300.0) - 400.0))
    print(f"\nbelt in the last pixel: median error edge model {errors['edge']:+.3f} px, half level "
          f"{errors['half']:+.3f} px, blur measured {errors['auto']:+.3f} px")
    assert abs(errors["edge"]) < 0.03
    assert errors["half"] < -0.2
    assert errors["auto"] < -0.2  # the limitation: the measured blur is wrong on this disc


def test_edge_coverage_table_is_the_pixel_area():
    """The edge model's table against a pixel sub-sampled 400 x 400 (no blur), and its closed
    form blur against a numerical Gaussian filter of the sharp table."""
    from scipy import ndimage

    sharp = pointing._edge_coverage_table(0.0)
    half, step = pointing.EDGE_TABLE_HALF_PX, pointing.EDGE_TABLE_STEP_PX
    d = np.arange(-half, half + 1e-9, step)
    g = (np.arange(400) + 0.5) / 400 - 0.5
    for phi_deg in (0, 7, 30, 44):
        a, b = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
        proj = np.sort((a * g[:, None] + b * g[None, :]).ravel())
        covered = np.searchsorted(proj, -d, side="left") / proj.size  # the planet where proj < -d
        assert np.abs(covered - sharp[phi_deg]).max() < 3e-3, phi_deg
    assert sharp[:, 0].max() == 1.0 and sharp[:, -1].max() == 0.0
    for blur in (0.05, 0.4, 1.2):
        numeric = ndimage.gaussian_filter1d(sharp, blur / pointing.EDGE_TABLE_STEP_PX, axis=1, mode="nearest")
        assert np.abs(pointing._edge_coverage_table(blur) - numeric).max() < 2e-4, blur


@pytest.mark.parametrize("blur_px", [0.0, 0.5])
def test_edge_model_measures_the_blur(blur_px):
    """A disc blurred by the optics (before the pixels integrate it: rendered and blurred at
    8 x 8 sub-pixels): the edge model measures the blur (within 0.06 px) and puts the points
    on the edge. Measured: blur 0.000 and 0.517 px; points -0.003 and -0.026 px off (the
    blur's error times the points' move with it, ~-2 px/px: one offset for the whole limb,
    which the limb altitude takes up)."""
    from types import SimpleNamespace

    import cv2

    from junoproc.simulate import compand_sqroot

    k, radius, cx, cy = 8, 400.0, 900.0, 300.0
    yy, xx = (np.mgrid[0:128 * k, 0:1648 * k].astype(np.float32) + 0.5) / k
    fine = (np.hypot(xx - cx, yy - cy) < radius).astype(np.float32)
    del xx, yy
    if blur_px > 0:
        fine = cv2.GaussianBlur(fine, (0, 0), blur_px * k, borderType=cv2.BORDER_REFLECT)
    dn = 1500.0 * fine.reshape(128, k, 1648, k).mean(axis=(1, 3), dtype=np.float64)
    meta = SimpleNamespace(sampling_factor=1, filters=("RED",), bit_mode="SQROOT", metadata_path=None)
    pts = pointing.detect_limb(SimpleNamespace(meta=meta, framelets=compand_sqroot(dn)[None, None]))
    err = np.hypot(pts.x_px - cx, pts.y_px - cy) - radius
    print(f"\nblur {blur_px}: measured {pts.edge_blur_px:.3f} px, radial error median {np.median(err):+.3f} "
          f"sd {err.std():.3f} px ({len(pts)} points)")
    assert len(pts) > 100 and pts.shift_per_blur is not None
    assert abs(pts.edge_blur_px - blur_px) < 0.06
    assert abs(np.median(err)) < 0.05 and err.std() < 0.08


def test_images_of_a_pass_share_one_edge_blur():
    """Two observations fitted with their own blurs come out under their mean (weighted by
    points), each point moved along its normal by its own rate."""
    from types import SimpleNamespace

    def obs(n: int, blur: float, rate: float) -> pointing.LimbObservation:
        pts = pointing.LimbPoints(bands=("BLUE", "GREEN", "RED"), frame=np.zeros(n, np.int32),
                                  band=np.zeros(n, np.int32), x_px=np.full(n, 100.0), y_px=np.full(n, 50.0),
                                  normal_x=np.full(n, 0.6), normal_y=np.full(n, -0.8), strength=np.ones(n),
                                  edge_blur_px=blur, shift_per_blur=np.full(n, rate))
        return pointing.LimbObservation(meta=SimpleNamespace(filters=("BLUE", "GREEN", "RED")), points=pts,
                                        timing=None)  # type: ignore[arg-type]

    a, b = pointing._share_edge_blur([obs(300, 0.40, -1.0), obs(100, 0.60, -2.0)])
    assert a.points.edge_blur_px == pytest.approx(0.45) and b.points.edge_blur_px == pytest.approx(0.45)
    assert a.points.x_px[0] == pytest.approx(100.0 - 0.05 * 0.6)  # 0.05 px more blur, -1 px/px
    assert b.points.y_px[0] == pytest.approx(50.0 + 0.3 * -0.8)   # 0.15 px less blur, -2 px/px
    assert a.points.subset(np.arange(300) < 5).shift_per_blur.size == 5


@pytest.mark.parametrize("scene, why", [
    (dict(altitude_km=150.0, n_frames=3, phase_angle_deg=0.0), "fills every framelet"),
    (dict(altitude_km=400_000.0, n_frames=12, phase_angle_deg=20.0), "bright spots under"),
])
def test_simulated_scenes_without_a_limb_are_refused(tmp_path, kernel_dir, scene, why):
    """Io filling every framelet, or a speck of a moon: a NoLimbError that says which."""
    from junoproc.simulate import simulate

    product = simulate(tmp_path, target="io", kernel_dir=kernel_dir, filters=("GREEN",), texture_width=512,
                       write_ck=False, n_hot_pixels=0, n_particle_hits=0, **scene)
    _furnish(product.kernel_files)
    try:
        raw = load_entry(next(iter(find_products(product.out_dir))))
        assert len(pointing.detect_limb(raw)) == 0
        with pytest.raises(NoLimbError, match=why) as err:
            pointing.solve_pointing(raw)
        assert "\n" not in str(err.value) and "CK" in str(err.value)
    finally:
        spiceypy.kclear()


# --- joint solve: one spin axis per pass -------------------------------------------------
PJ44_PAIR = ("perijove44/13541-ImageSet", "perijove44/13544-ImageSet")  # 44C00029, 44C00032
#: Lit, textured part of their overlap (lon east, lat centric, deg) and the map scale.
PJ44_OVERLAP = (10.0, 80.0, 12.0, 70.0)
PJ44_PX_PER_DEG = 15.0
PJ44_WINDOW_PX = 96


def _pair_maps(cals, sols):
    """The two images' GREEN maps on one equirectangular grid (lon east, lat centric, north up):
    high-passed sqrt images, and where both are lit and seen at emission/incidence < 70/75 deg."""
    import cv2

    from junoproc.geometry import image_geometry
    from junoproc.projection import make_grid, project

    geoms = [image_geometry(c.meta, s.attitude, timing=s.timing) for c, s in zip(cals, sols, strict=True)]
    grid = make_grid(geoms[0], "equirectangular", lon="east", resolution_px_per_deg=PJ44_PX_PER_DEG,
                     bounds=PJ44_OVERLAP)
    ok = np.ones(grid.shape, bool)
    hp = []
    for c, g in zip(cals, geoms, strict=True):
        m = project(c, g, grid=grid)
        a = m.data[..., list(m.band_names).index("GREEN")]
        ok &= np.isfinite(a) & (m.backplanes["emission_deg"] < 70) & (m.backplanes["incidence_deg"] < 75)
        v = np.sqrt(np.clip(np.nan_to_num(a), 0, None)).astype(np.float32)
        hp.append(v - cv2.GaussianBlur(v, (0, 0), 4.0))
    return hp, ok


def _window_shifts_px(hp, ok=None, centres=None, window: int = PJ44_WINDOW_PX, margin: int = 8) -> np.ndarray:
    """Per textured window of the overlap: (x_centre, y_centre, dx, dy) in map px, the second
    map's content against the first's (phase correlation refined by Gauss-Newton on gain,
    offset and shift, ``pointing._window_shift``); +dx = east, +dy = south. Windows fully lit
    and seen in both, correlation peak > 0.1, the better-textured half (at least 8); or at
    the given ``centres``."""
    import cv2

    hann = cv2.createHanningWindow((window, window), cv2.CV_64F)
    h, w = hp[0].shape
    if centres is None:
        assert ok is not None
        step = window // 2
        centres = [(x + window // 2, y + window // 2) for y in range(margin, h - window - margin + 1, step)
                   for x in range(margin, w - window - margin + 1, step)
                   if ok[y - margin:y + window + margin, x - margin:x + window + margin].all()]
    found = []
    for xc, yc in centres:
        x, y = int(xc) - window // 2, int(yc) - window // 2
        a = hp[0][y:y + window, x:x + window]
        big = hp[1][y - margin:y + window + margin, x - margin:x + window + margin]
        dx, dy, peak = pointing._window_shift(a, big, margin, hann)[:3]
        found.append((float(np.std(a)), peak, xc, yc, dx, dy))
    res = np.array(found)
    if ok is not None:
        res = res[np.isfinite(res).all(axis=1) & (res[:, 1] > 0.1)]
        res = res[np.argsort(-res[:, 0])][: max(8, len(res) // 2)]
    return res[:, 2:]


def _geometric_misalignment_px(shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dy of every window, dx minus the mean dx of the windows on its latitude row), for
    rows with >= 2 windows: the map misalignment with the clouds' zonal drift taken out."""
    dys, dxs = [], []
    for row in np.unique(shifts[:, 1]):
        sel = shifts[:, 1] == row
        if sel.sum() >= 2:
            dys.append(shifts[sel, 3])
            dxs.append(shifts[sel, 2] - shifts[sel, 2].mean())
    return np.concatenate(dys), np.concatenate(dxs)


@pytest.fixture(scope="module")
def pj44_pair(data_dir):
    from junoproc.calibrate import calibrate
    from junoproc.products import load

    return [calibrate(load(data_dir / p)) for p in PJ44_PAIR]


@pytest.fixture(scope="module")
def pj44_pair_shifts(pj44_pair, kernel_dir):
    """Map misalignment of 44C00029 vs 44C00032: each solved alone, solved jointly, and the
    joint solution with a 1-px phase error (3.3 ms of start time) injected into 44C00032."""
    from dataclasses import replace

    spiceypy.kclear()
    for path in sorted(kernel_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp", ".bc"}:
            spiceypy.furnsh(str(path))
    try:
        alone = [pointing.solve_pointing(c) for c in pj44_pair]
        joint = pointing.solve_pointing_joint(pj44_pair)
        hp, ok = _pair_maps(pj44_pair, joint)
        shifts = _window_shifts_px(hp, ok)
        one_px_deg = math.degrees(1.0 / CameraModel.from_pool("GREEN").focal_px)
        injected = {}
        for sign in (-1, 1):
            att = joint[1].attitude
            bad = replace(joint[1], attitude=replace(att, phase0_deg=att.phase0_deg + sign * one_px_deg))
            hp_bad = _pair_maps(pj44_pair, [joint[0], bad])[0]
            injected[sign] = _window_shifts_px(hp_bad, centres=shifts[:, :2])
        yield {"alone": _window_shifts_px(*_pair_maps(pj44_pair, alone), margin=32), "joint": shifts,
               "injected": injected, "joint_solutions": joint}
    finally:
        spiceypy.kclear()


@pytest.mark.slow
def test_real_pj44_joint_axis_aligns_overlapping_images(pj44_pair_shifts):
    """Issue #6: two PJ44 images 29 min apart, no CK. Alone, each image's roll about its line
    of sight is loose (axes 1.9 deg apart) and their maps disagree by ~15 px; one shared spin
    axis (and spin rate and limb altitude) brings them to ~2 px, most of it along longitude:
    the clouds' zonal drift (see the next test)."""
    alone, joint = (np.hypot(*pj44_pair_shifts[k][:, 2:].T) for k in ("alone", "joint"))
    print("\n|shift| px median/max: alone", np.percentile(alone, [50, 100]).round(2),
          "joint", np.percentile(joint, [50, 100]).round(2))
    assert len(joint) >= 8 and len(alone) >= 8
    assert np.median(alone) > 10.0, alone  # the metric sees the problem
    assert np.median(joint) < 3.0 and joint.max() < 4.0, joint
    sols = pj44_pair_shifts["joint_solutions"]
    assert all(s.joint["spin_axis_shared"] and len(s.joint["products"]) == 2 for s in sols)
    assert np.allclose(sols[0].attitude.axis_j2000, sols[1].attitude.axis_j2000, atol=1e-12)
    assert sols[0].attitude.rate_deg_s == sols[1].attitude.rate_deg_s
    assert sols[0].limb_alt_km == pytest.approx(sols[1].limb_alt_km, abs=1e-9)
    assert all(s.rms_px < 0.35 for s in sols), [s.rms_px for s in sols]


@pytest.mark.slow
def test_real_pj44_joint_axis_aligns_within_one_pixel(pj44_pair_shifts):
    """Issue #6 "two overlapping images ... align to within 1 px", as geometry, not weather.

    The clouds move in the 29 min between the images: zonal winds of up to ~150 m/s carry
    them east or west by up to ~4 px (15 px/deg, 83 km/px north-south), the same at one
    latitude, and an error of the cloud-top height above the PCK's 1-bar surface shifts
    them by parallax (measured: projecting on a surface 100 km higher moves dx by -1.5 px,
    dy by only -0.1 px: the two views differ mostly in longitude). Meridional winds are a
    few m/s (< 0.15 px). So the test takes dy of every window, and dx minus the mean dx of
    its latitude row. A 1-px phase error of one image (3.3 ms of start-time jitter, the
    error the label timing leaves) moves dy by 0.73 px: injected either way, it fails.

    Measured: the spin axis alone shared left dy +0.90 px in every window (0.11 sd; dx
    row-residual 0.80 px max); the spin rate (the same Juno, the same interframe delay)
    and the limb altitude (the same haze, 238 vs 291 km fitted apart) shared too: dy +0.13
    mean, 0.39 max, dx row-residual 0.98 max; with +-1 px injected, dy -0.57 / +0.86 mean.
    Not separable here: an error across the spin moves these maps mostly along longitude
    (1 px: dx +1.33, dy -0.48), like the winds.
    """
    def fails(shifts: np.ndarray) -> bool:
        dy, dx_res = _geometric_misalignment_px(shifts)
        return not (abs(np.mean(dy)) < 0.5 and np.abs(dy).max() < 1.0 and np.abs(dx_res).max() < 1.0)

    dy, dx_res = _geometric_misalignment_px(pj44_pair_shifts["joint"])
    inj = {k: _geometric_misalignment_px(v)[0].mean() for k, v in pj44_pair_shifts["injected"].items()}
    print(f"\ngeometric misalignment: dy mean {dy.mean():+.2f} max |dy| {np.abs(dy).max():.2f}, "
          f"dx row-residual max {np.abs(dx_res).max():.2f} px ({dy.size} windows); injected +-1 px "
          f"phase: dy mean {inj[-1]:+.2f} / {inj[1]:+.2f}")
    assert dy.size >= 8
    assert abs(np.mean(dy)) < 0.5 and np.abs(dy).max() < 1.0, dy
    assert np.abs(dx_res).max() < 1.0, dx_res
    assert all(fails(v) for v in pj44_pair_shifts["injected"].values())  # the test sees a 1 px error


@pytest.mark.slow
def test_joint_solve_from_limbs_gates_and_records(data_dir, real_kernels, tmp_path):
    """detect_limbs -> picklable observation; the span and consistency gates split a group and
    the solutions say why; 44M00040 (alone: a prior-dependent roll, once refused as ambiguous
    before the detector dropped texture-biased limb points) is solved with its pass."""
    import pickle

    from junoproc.calibrate import calibrate

    raws = [calibrate(_raw(data_dir, k)) for k in ("44C00029", "44C00032", "44M00040")]
    obs = [pickle.loads(pickle.dumps(pointing.detect_limbs(r))) for r in raws]
    assert obs[2].meta.product_id.endswith("44M00040_V01")
    # RGB limbs fitted with the edge model (blurs 0.43 and 0.49 px); methane's haze is too wide
    assert all(0.35 < o.points.edge_blur_px < 0.6 for o in obs[:2])
    assert math.isnan(obs[2].points.edge_blur_px) and obs[2].points.shift_per_blur is None
    # alone, its limb leaves the axis free (limb-only 1-sigma ~25 deg): never a confident answer.
    # Which of the two honest outcomes it gets depends on a few limb points (refused as ambiguous
    # with the plateau-level detector and again with the sky-only METHANE dark; flagged
    # "prior-dependent roll" in between), so the test takes either
    try:
        alone = pointing.solve_from_limbs([obs[2]], band_alignment=False)[0]
    except PointingQualityError as err:
        assert "ambiguous" in str(err) and "solve_pointing_joint" in str(err), err
    else:
        assert alone.quality == "prior-dependent roll" and alone.axis["prior_dependent_roll"]
        assert alone.parameter_sigma["spin_axis_limb_only_deg"] > 5.0
    sols = pointing.solve_from_limbs(obs, band_alignment=False)
    assert all(s.joint["products"] == [o.product_id for o in obs] for s in sols)
    assert sols[2].quality == "good" and sols[2].parameter_sigma["spin_axis_limb_only_deg"] < 0.2
    # the first and last are 44 min apart: a 10 min span solves each image alone
    alone = pointing.solve_from_limbs(obs[:2], band_alignment=False, max_span_s=600.0)
    assert [s.joint["products"] for s in alone] == [[obs[0].product_id], [obs[1].product_id]]
    # alone, their limbs fit (RMS < 0.5 px) with a formal axis 1-sigma of 0.05-0.1 deg, but the
    # axes land 4.5 and 6.2 deg from the pass's: never "good" (GOOD_AXIS_SIGMA_DEG)
    assert all(max(s.residuals_px_by_band.values()) < 0.5 and s.quality == "fair" for s in alone)
    assert all(any("one image's limb" in n for n in s.notes) for s in alone)
    assert all(s.quality == "good" for s in sols[:2])
    # an absurdly tight consistency gate: the image pulling hardest is solved alone, and says so
    split = pointing.solve_from_limbs(obs[:2], band_alignment=False, axis_gate_sigma=1.0)
    why = [s.joint.get("solved_alone_because", "") for s in split]
    assert sum("solved alone" in w for w in why) >= 1, why
    assert all(not s.joint["spin_axis_shared"] for s in split)
    back = pointing.load_solution(pointing.save_solution(sols[0], tmp_path / "s.json"))
    assert back.joint == sols[0].joint


def test_simulated_example_scene_without_ck_solves_the_true_axis_not_its_mirror(tmp_path):
    """`make example` offline: the simulated scene, synthetic kernels, no CK, the automatic
    prior. The kernels have the Sun but no Earth, and Juno's r x v points away from the
    simulated +Z (as at PJ01): the orbit-normal gate must be signed to the Sun's side, or
    the solver takes the mirror axis (measured before the fix: 180 deg off, limb RMS 0.16 px)."""
    from junoproc.simulate import simulate

    product = simulate(tmp_path, write_ck=False, synthetic_kernels=True, n_frames=8, texture_width=1024,
                       n_particle_hits=0)
    _furnish(product.kernel_files)
    try:
        truth = product.attitude.axis_j2000
        et = float(np.mean(product.frame_ets))
        state = np.asarray(spiceypy.spkezr("JUNO", et, "J2000", "NONE", "JUPITER")[0])
        assert pointing._angle_deg(np.cross(state[:3], state[3:]), truth) > 150.0  # r x v: the mirror
        prior = pointing.juno_axis_prior(et)
        assert prior is not None and [name for name, _ in prior.gates] == ["orbit_normal"]
        assert pointing._angle_deg(prior.gates[0][1], truth) < 1.0
        sol = pointing.solve_pointing(load_entry(next(iter(find_products(product.out_dir)))))
        sep = pointing._angle_deg(sol.attitude.axis_j2000, truth)
        assert sep < 1.0, f"solved axis {sep:.2f} deg from the truth"
        assert sol.rms_px < 0.5
    finally:
        spiceypy.kclear()


@pytest.mark.parametrize("dec_rad", [0.4, 1.4, 2.0, -1.9])  # beyond +-90 deg e1, e2 turn over
def test_spin_jacobian_matches_finite_differences(dec_rad):
    """The solver's analytic Jacobian of the limb residuals by (ra, dec, phase0, rate, twist,
    limb altitude, per-band altitudes) against central differences, on random geometry."""
    from junoproc.camera import frame_rotation

    rng = np.random.default_rng(1)
    n, n_frames = 400, 10
    rays = rng.normal(size=(n, 3))
    rays[:, 2] = np.abs(rays[:, 2]) + 20.0
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    model = pointing._LimbModel(
        frame=rng.integers(0, n_frames, n), band=rng.integers(0, 3, n), ray_cam=rays,
        ifov_rad=np.full(n, 6.7e-4), beta_j2000=rng.normal(size=(n_frames, 3)) * 2e-4,
        rot_j2000_to_body=np.stack([frame_rotation(rng.normal(size=3)) for _ in range(n_frames)]),
        obs_body_km=rng.normal(size=(n_frames, 3)) * 3e5, radii_km=np.array([71492.0, 71492.0, 66854.0]))
    sc_to_cam = frame_rotation(rng.normal(size=3))
    dt_s = np.linspace(-2.0, 2.0, n_frames)
    extra = np.array([1, 2])

    def alts(x):
        v = np.full(3, x[5])
        v[extra] += x[6:]
        return v

    def residuals(x):
        return model.residuals_px(pointing._spin_rotations(x, dt_s, sc_to_cam), alts(x))

    x = np.array([1.1, dec_rad, 0.3, 0.21, 0.002, 15.0, 5.0, -3.0])
    r, jac = pointing._spin_jacobian(model, x, dt_s, sc_to_cam, alts(x), extra)
    np.testing.assert_allclose(r, residuals(x), rtol=0, atol=1e-9)
    numeric = pointing._numeric_jacobian(residuals, x, np.r_[1e-6, 1e-6, 1e-6, 1e-7, 1e-6, 1e-2, 1e-2, 1e-2])
    scale = np.abs(numeric).max(axis=0)
    assert (scale > 0).all()
    assert (np.abs(jac - numeric).max(axis=0) / scale).max() < 1e-6


@pytest.mark.slow
def test_cli_pointing_shares_the_axis_with_its_pass(data_dir, kernel_dir, tmp_path):
    """`junoproc pointing PRODUCT` solves with the images of its pass beside it ("good", the
    shared axis); `--alone` gets one image's answer, "fair" with the reason and the fix."""
    from click.testing import CliRunner

    from junoproc.cli import main

    product = data_dir / "perijove44" / "13544-ImageSet"
    out = tmp_path / "sol.json"
    runner = CliRunner()
    res = runner.invoke(main, ["pointing", str(product), "--kernels", str(kernel_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert ("with 2 other image(s) of its pass: JNCE_2022229_44C00029_V01, JNCE_2022229_44M00040_V01"
            in res.output)
    assert "44C00032_V01: pointing spin, quality good" in res.output
    saved = pointing.load_solution(out)
    assert saved.quality == "good" and len(saved.joint["products"]) == 3
    res = runner.invoke(main, ["pointing", str(product), "--kernels", str(kernel_dir), "--alone"])
    assert res.exit_code == 0, res.output
    assert "quality fair" in res.output and "spin axis from one image's limb" in res.output
