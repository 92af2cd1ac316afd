"""The full chain on a simulated product with known truth (issue #4).

``simulate`` writes a raw product, its SPK/CK and the truth texture; the product is decoded,
calibrated, located with the kernels the simulator wrote (``CkAttitude``: the written CK,
label timing) and map-projected onto the truth texture's own equirectangular grid. The map
must reproduce the texture times the simulator's illumination: correlation > 0.99 over the
covered area, registration < 0.05 px (phase correlation), and no seam where framelets
join (the residual near framelet edges, where consecutive frames blend, is no different
from the residual in framelet middles, to far below the noise).

The simulator applies neither a dark nor a flat field (``truth.json`` radiometry), so the
product is calibrated without them; noise, hot pixels and particle hits are on. Synthetic
text kernels keep the test independent of the real-data folder.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import spiceypy

N_FRAMES = 10
TEXTURE_WIDTH = 2048  # 5.7 texels per degree, ~4 framelet pixels per texel at 86,000 km


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from junoproc.calibrate import calibrate
    from junoproc.camera import FrameTiming
    from junoproc.geometry import CkAttitude, image_geometry
    from junoproc.io import read_tiff
    from junoproc.products import load
    from junoproc.projection import make_grid, project
    from junoproc.simulate import simulate

    out = tmp_path_factory.mktemp("fullchain")
    sim = simulate(out, n_frames=N_FRAMES, texture_width=TEXTURE_WIDTH, seed=11, synthetic_kernels=True)
    raw = load(sim.product_dir)
    cal = calibrate(raw, dark=False, flat=False)
    spiceypy.kclear()
    try:
        for path in sim.kernel_files:
            spiceypy.furnsh(str(path))
        geometry = image_geometry(raw.meta, CkAttitude(), timing=FrameTiming.for_product(raw.meta))
        textures = {b: read_tiff(sim.truth_dir / f"texture_{b.lower()}.tif")[0].astype(np.float32) / 65535
                    for b in raw.meta.filters}
        height, width = textures["GREEN"].shape
        grid = make_grid(geometry, "equirectangular", bounds="global", lon="east",
                         resolution_px_per_deg=width / 360.0)
        m = project(cal, geometry, grid=grid)
        truth = json.loads((sim.truth_dir / "truth.json").read_text())
        yield sim, geometry, grid, m, textures, truth
    finally:
        spiceypy.kclear()


def _light(m, truth) -> np.ndarray:
    """The simulator's illumination (Minnaert) at the map's mid-time backplanes."""
    k = truth["illumination"]["minnaert_k"]
    mu0 = np.cos(np.radians(m.backplanes["incidence_deg"]))
    mu = np.cos(np.radians(m.backplanes["emission_deg"]))
    with np.errstate(invalid="ignore"):
        return mu0**k * mu ** (k - 1.0)


def _covered(m) -> np.ndarray:
    """Seen in every band, lit and seen at < 70 deg (away from the terminator and the limb)."""
    return (np.isfinite(m.data).all(axis=-1) & (m.backplanes["incidence_deg"] < 70)
            & (m.backplanes["emission_deg"] < 70))


def test_map_is_the_truth_texture(chain):
    sim, geometry, grid, m, textures, truth = chain
    assert grid.shape == textures["GREEN"].shape  # the truth's own grid
    assert grid.params["lat_top_deg"] == 90.0 and grid.params["lon_left_east_deg"] == 0.0
    ok = _covered(m)
    assert ok.sum() > 50_000
    light = _light(m, truth)
    # the largest fully covered square window for the registration
    for size in (256, 192, 128):
        cover = cv2.boxFilter(ok.astype(np.float32), -1, (size, size), normalize=True,
                              borderType=cv2.BORDER_CONSTANT)
        if (cover > 0.9999).any():
            r, c = np.unravel_index(int(np.argmax(cover)), cover.shape)
            box = (slice(r - size // 2, r + size // 2), slice(c - size // 2, c + size // 2))
            break
    else:
        pytest.fail("no fully covered window of 128 px")
    win = cv2.createHanningWindow((size, size), cv2.CV_64F)
    for b, band in enumerate(m.band_names):
        model = textures[band] * light
        v = m.data[..., b]
        assert np.corrcoef(v[ok], model[ok])[0, 1] > 0.99, band
        (dx, dy), response = cv2.phaseCorrelate(model[box].astype(np.float64), v[box].astype(np.float64), win)
        assert response > 0.5 and np.hypot(dx, dy) < 0.05, (band, dx, dy, response)


def test_no_seams_at_framelet_joins(chain):
    """Residual against the truth, binned by the framelet row of the frame seeing each pixel
    nearest its middle: blends across joins happen at that frame's first and last rows."""
    from junoproc.projection import grid_surface_points

    sim, geometry, grid, m, textures, truth = chain
    ok = _covered(m)
    light = _light(m, truth)
    b = m.band_names.index("GREEN")
    model = textures["GREEN"] * light
    gain = np.median(m.data[..., b][ok] / model[ok])
    rows, cols = np.nonzero(ok)
    residual = (m.data[..., b] / gain - model)[rows, cols]
    noise = float(residual.std())
    assert noise < 0.02  # reflectance units: photon + read noise and companding, no structure
    pos, _ = grid_surface_points(grid)
    pts = pos[rows, cols]
    best = np.full(len(rows), np.inf)
    y_best = np.full(len(rows), np.nan)
    for frame in range(geometry.n_frames):
        _, y = geometry.surface_to_px(frame, "GREEN", pts)
        dist = np.abs(y - 64.0)
        take = (dist < best) & (y >= 0) & (y < 128)
        best[take], y_best[take] = dist[take], y[take]
    seen = np.isfinite(y_best)
    edge = seen & ((y_best < 13) | (y_best > 115))  # the ~13-row overlaps of consecutive frames
    middle = seen & ~edge
    assert edge.sum() > 5000 and middle.sum() > 5000
    step = abs(residual[edge].mean() - residual[middle].mean())
    assert step < 0.05 * noise, (step, noise)
    profile = [residual[seen & (y_best >= y0) & (y_best < y0 + 8)] for y0 in range(0, 128, 8)]
    worst = max(abs(p.mean()) for p in profile if len(p) > 1000)
    assert worst < 0.1 * noise, (worst, noise)
