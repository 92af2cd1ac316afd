"""Pointing: spin model, limb detection and the solver on real data (no CK)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import spiceypy

from junoproc import pointing
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
    assert all(counts[b] > 50 for b in ("BLUE", "GREEN", "RED"))
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
    assert sol.solve_time_s < 15
    path = pointing.save_solution(sol, tmp_path / "sol.json")
    back = pointing.load_solution(path, rgb43.meta)
    et = float(sol.timing.frame_et(3))
    assert np.allclose(back.attitude.rot_j2000_to_cam(et), sol.attitude.rot_j2000_to_cam(et), atol=1e-12)
    assert back.timing == sol.timing


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
