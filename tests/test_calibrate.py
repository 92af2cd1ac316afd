"""Calibration: exact decompanding, flags, hit detection that spares real features, units, real data."""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources

import numpy as np
import pytest

from junoproc.calibrate import (
    AU_KM,
    CALIBRATION_FILE,
    FLAG_HOT,
    FLAG_NOT_PHOTOACTIVE,
    FLAG_PARTICLE_HIT,
    FLAG_SATURATED,
    RESPONSIVITY_DN_PER_S,
    SOLAR_IRRADIANCE_1AU_W_M2,
    STEPS,
    CalibratedImage,
    calibrate,
    companding_table,
    decompand,
    detect_hits,
    divide_flat,
    flag_particle_hits,
    inpaint,
    load_calibration,
    mask_bad_pixels,
    normalise_exposure,
    photoactive_columns,
    subtract_dark,
    to_radiance,
    to_reflectance,
)
from junoproc.errors import CalibrationError, UnsupportedBitModeError
from junoproc.products import RawImage, load, parse_metadata

# ----------------------------------------------------------------------------- helpers


def synthetic_raw(pixels: np.ndarray, *, filters=("BLUE", "GREEN", "RED"), bit_mode="SQROOT",
                  exposure_ms=3.2, sampling=1) -> RawImage:
    label = {
        "PRODUCT_ID": "JNCE_2022229_44C99999_V01", "FILE_NAME": "JNCE_2022229_44C99999_V01-raw.png",
        "TARGET_NAME": "JUPITER", "START_TIME": "2022-08-17T13:44:55.688", "INTERFRAME_DELAY": "0.373 <s>",
        "EXPOSURE_DURATION": f"{exposure_ms} <ms>", "JNO:TDI_STAGES_COUNT": 1, "FILTER_NAME": list(filters),
        "SAMPLE_BIT_MODE_ID": bit_mode, "SAMPLING_FACTOR": sampling, "LINES": pixels.shape[0],
        "LINE_SAMPLES": pixels.shape[1], "SOLAR_DISTANCE": "7.4172e+08 <km>",
    }
    return RawImage(meta=parse_metadata(label, path="synthetic-Metadata.json"), pixels=pixels,
                    raw_path="synthetic-raw.png")


def scene(n_frames: int = 6, n_bands: int = 3, seed: int = 1) -> np.ndarray:
    """Companded framelets (frames, bands, 128, 1648): smooth planet-like gradient + ~1 unit noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:128, 0:1648]
    smooth = 60 + 40 * np.sin(x / 300.0) * np.cos(y / 90.0)
    frames = smooth[None, None] + rng.normal(0, 1.0, (n_frames, n_bands, 128, 1648))
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def stack(framelets: np.ndarray) -> np.ndarray:
    return framelets.reshape(-1, framelets.shape[-1])


# ----------------------------------------------------------------------------- decompanding

SQROOT_LOWER = {0: 0, 1: 1, 22: 22, 23: 23, 24: 25, 42: 61, 43: 63, 44: 67, 88: 243, 89: 247, 90: 255,
                183: 999, 184: 1007, 185: 1023, 208: 1391, 209: 1407, 210: 1439, 239: 2367, 240: 2399,
                254: 2847, 255: 2879}
SQROOT_STEP = {0: 1, 1: 1, 22: 1, 23: 2, 24: 2, 42: 2, 43: 4, 44: 4, 88: 4, 89: 8, 90: 8, 183: 8, 184: 16,
               185: 16, 208: 16, 209: 32, 210: 32, 239: 32, 240: 32, 254: 32, 255: 32}


def test_sqroot_table_lower_is_the_documented_table():
    table = companding_table("SQROOT", method="lower")
    assert table.dtype == np.float32 and table.shape == (256,)
    for v, dn in SQROOT_LOWER.items():
        assert table[v] == dn, v
    assert table.max() == 2879
    assert np.all(np.diff(table) > 0)
    # piecewise linear: the step is constant inside each documented segment
    for lo, hi, step in ((0, 23, 1), (23, 43, 2), (43, 89, 4), (89, 184, 8), (184, 209, 16), (209, 255, 32)):
        assert np.all(np.diff(table[lo:hi + 1]) == step)


def test_sqroot_table_centre_is_the_bin_centre():
    centre = companding_table("SQROOT")  # the default
    for v, dn in SQROOT_LOWER.items():
        assert centre[v] == dn + (SQROOT_STEP[v] - 1) / 2.0, v
    assert centre[22] == 22 and centre[23] == 23.5 and centre[255] == 2894.5
    # the centre lies inside the bin [lower(v), lower(v+1))
    lower = companding_table("SQROOT", method="lower")
    assert np.all((centre[:-1] >= lower[:-1]) & (centre[:-1] < lower[1:]))


def test_squaring_is_not_the_table():
    assert not np.allclose(companding_table("SQROOT", method="lower"), np.arange(256.0) ** 2)


@pytest.mark.parametrize(("mode", "step"), [("LIN1", 1), ("LIN8", 8), ("LIN16", 16), ("lin8", 8)])
def test_linear_tables(mode, step):
    v = np.arange(256)
    assert np.array_equal(companding_table(mode, method="lower"), v * step)
    assert np.array_equal(companding_table(mode), v * step + (step - 1) / 2)


def test_unknown_bit_mode_names_mode_and_file():
    with pytest.raises(UnsupportedBitModeError) as err:
        companding_table("LOG7", path="x/13544-Metadata.json")
    assert "'LOG7'" in str(err.value) and "x/13544-Metadata.json" in str(err.value)
    raw = synthetic_raw(stack(scene(1)), bit_mode="SQROOT")
    raw = RawImage(meta=raw.meta.__class__(**{**raw.meta.__dict__, "bit_mode": "FANCY"}), pixels=raw.pixels,
                   raw_path="y-raw.png")
    with pytest.raises(UnsupportedBitModeError, match="FANCY"):
        calibrate(raw)


def test_decompand_values_saturation_and_photoactive_columns():
    pixels = np.zeros((384, 1648), np.uint8)
    pixels[0, 100:104] = [23, 43, 239, 240]
    pixels[128, 200] = 255
    cal = decompand(synthetic_raw(pixels), method="lower")
    assert cal.units == "DN" and cal.steps == ("decompand",)
    assert cal.data.dtype == np.float32 and cal.data.shape == (1, 3, 128, 1648)
    assert list(cal.data[0, 0, 0, 100:104]) == [23, 63, 2367, 2399]
    assert list(cal.saturated[0, 0, 0, 100:104]) == [False, False, False, True]
    assert cal.saturated[0, 1, 0, 200]
    cols = photoactive_columns(1)
    assert (cols.start, cols.stop - 1) == (23, 1630)
    assert np.all(cal.flags[..., :23] & FLAG_NOT_PHOTOACTIVE)
    assert np.all(cal.flags[..., 1631:] & FLAG_NOT_PHOTOACTIVE)
    assert not np.any(cal.flags[..., 23:1631] & FLAG_NOT_PHOTOACTIVE)
    assert cal.valid.sum() == 3 * 128 * 1608 - 2


def test_photoactive_columns_summed():
    assert photoactive_columns(2) == slice(12, 815)
    assert photoactive_columns(4) == slice(6, 407)


# ----------------------------------------------------------------------------- particle hits

def test_injected_hits_are_flagged_and_a_small_vortex_is_not():
    frames = scene(n_frames=4)
    rng = np.random.default_rng(7)
    hits = []
    for _ in range(300):  # single-pixel hits
        f, b, y, x = rng.integers(0, 4), rng.integers(0, 3), rng.integers(3, 125), rng.integers(40, 1600)
        frames[f, b, y, x] = min(255, int(frames[f, b, y, x]) + int(rng.integers(20, 150)))
        hits.append((f, b, y, x))
    for _ in range(50):  # two-pixel hits
        f, b, y, x = rng.integers(0, 4), rng.integers(0, 3), rng.integers(3, 124), rng.integers(40, 1600)
        frames[f, b, y:y + 2, x] = 200
        hits += [(f, b, y, x), (f, b, y + 1, x)]
    # a real small feature: a bright vortex 3 px across (Gaussian, sigma 0.8 px), in every band
    yy, xx = np.mgrid[-4:5, -4:5]
    vortex = 60 * np.exp(-(xx**2 + yy**2) / (2 * 0.8**2))
    region = (slice(None), slice(None), slice(60, 69), slice(800, 809))
    frames[region] = np.clip(frames[region] + vortex, 0, 255).astype(np.uint8)
    # and a flat-topped 3 x 3 feature
    frames[:, :, 30:33, 500:503] = 220
    cal = calibrate(synthetic_raw(stack(frames)), units="DN", bad_pixels=False, dark=False, flat=False)
    flagged = (cal.flags & FLAG_PARTICLE_HIT) != 0
    f, b, y, x = np.array(hits).T
    assert flagged[f, b, y, x].all()
    assert not flagged[region].any()
    assert not flagged[:, :, 29:34, 499:504].any()
    injected = np.zeros_like(flagged)
    injected[f, b, y, x] = True
    false_positives = (flagged & ~injected).sum()
    assert false_positives <= 5, false_positives  # out of 2.5 million background pixels
    assert cal.provenance["particle_hits"]["hits"] == flagged.sum()
    unflagged = decompand(synthetic_raw(stack(frames)))
    assert np.array_equal(cal.data[region], unflagged.data[region])  # flags never paint over data


def test_hit_detector_never_looks_into_the_next_framelet():
    """A hit on the last row of a framelet, right above a bright first row of the next one."""
    frames = scene(n_frames=2, n_bands=1)
    frames[0, 0, 127, 700] = 150
    frames[1, 0, 0:2, 690:711] = 150  # bright band in the next framelet, touching the hit
    hits, _, _ = detect_hits(frames, columns=slice(23, 1631))
    assert hits[0, 0, 127, 700]


def _draw_track(frame: np.ndarray, y0: float, x0: float, length: float, angle_deg: float, amplitude: int,
                width: int = 1) -> list[tuple[int, int]]:
    """A straight, sharp particle track (1 or 2 px wide, no blur) added to a companded framelet."""
    pixels = set()
    a = math.radians(angle_deg)
    for t in np.linspace(0.0, length - 1, int(4 * length)):
        y, x = int(round(y0 + t * math.sin(a))), int(round(x0 + t * math.cos(a)))
        pixels.add((y, x))
        if width == 2:
            pixels.add((y + 1, x) if abs(math.cos(a)) > 0.7 else (y, x + 1))
    for y, x in pixels:
        frame[y, x] = min(255, int(frame[y, x]) + amplitude)
    return sorted(pixels)


def test_tracks_of_any_length_and_angle_are_flagged_with_their_faint_ends():
    """The compact test alone keeps every track longer than ~4 px; the track test takes them
    whole, including the faint ends (hysteresis at half the threshold)."""
    frames = scene(n_frames=3, n_bands=2, seed=3)
    tracks = []
    for i, (length, angle, width) in enumerate([(6, 0, 1), (10, 30, 1), (15, 45, 1), (25, 70, 1), (12, 90, 1),
                                                (40, 12, 1), (8, 135, 2), (18, 160, 2)]):
        f, b, y0, x0 = i % 3, i % 2, 40 + 7 * (i % 3), 100 + 180 * i
        core = _draw_track(frames[f, b], y0, x0, length, angle, amplitude=40, width=width)
        # faint ends: 2 px at 7 units (mostly below the hit threshold of 9, above half of it)
        a = math.radians(angle)
        ends = [(round(y0 - k * math.sin(a)), round(x0 - k * math.cos(a))) for k in (1, 2)]
        for y, x in ends:
            frames[f, b, y, x] += 7
        tracks.append((f, b, core, ends))
    hits, _, info = detect_hits(frames, columns=slice(23, 1631))
    for f, b, core, ends in tracks:
        ys, xs = np.array(core).T
        assert hits[f, b, ys, xs].all(), (f, b, core[0], len(core))
        assert all(hits[f, b, y, x] for y, x in ends), (f, b, ends)
    assert info["tracks"] >= 7  # the 6-px track may pass as compact spikes instead
    injected = np.zeros_like(hits)
    for f, b, core, ends in tracks:
        for y, x in core + ends:
            injected[f, b, y, x] = True
    # the only other flags are rasterisation neighbours of a track, never background
    stray = hits & ~injected
    near = np.zeros_like(hits)
    for f, b, core, ends in tracks:
        for y, x in core + ends:
            near[f, b, y - 1:y + 2, x - 1:x + 2] = True
    assert not (stray & ~near).any(), np.argwhere(stray & ~near)[:5]


def test_real_features_shaped_like_tracks_are_not_flagged():
    """A blurred edge, a bright 3x3 blob (a moon), an optically blurred thin cloud band and
    a limb with a bright haze line on it are scene, not particles."""
    frames = scene(n_frames=3, n_bands=1, seed=4)
    y, x = np.mgrid[0:128, 0:1648].astype(np.float64)
    scene_add = np.zeros((128, 1648))
    # blurred step edge, slanted, +80 (erf profile, sigma 0.8 px)
    from scipy.special import erf

    d_edge = (x - 200 - 0.3 * (y - 64)) / (0.8 * math.sqrt(2))
    scene_add += np.where(x < 330, 40 * (1 + erf(d_edge)), 0)
    # a moon: flat-topped 3x3 blob and a blurred one
    scene_add[60:63, 500:503] += 120
    scene_add += 100 * np.exp(-((x - 600) ** 2 + (y - 30) ** 2) / (2 * 0.9**2))
    # a thin cloud band 1 px wide blurred by the optics (sigma 0.9 px), 60 px long, on the planet
    along = (x > 800) & (x < 860)
    scene_add += np.where(along, 50 * np.exp(-((y - 20 - 0.5 * (x - 800)) ** 2) / (2 * 0.9**2)), 0)
    # a limb: disc edge (planet right of a curve), blurred, with a thin bright haze line on it
    r = np.hypot(x - 1500, y - 300) - 260.0
    planet = 90 * 0.5 * (1 + erf(-r / (0.8 * math.sqrt(2))))
    haze = 30 * np.exp(-(r**2) / (2 * 0.8**2))
    scene_add += np.where(x > 1000, planet + haze, 0)
    frames = np.clip(frames.astype(np.float64) + scene_add[None, None], 0, 255).astype(np.uint8)
    hits, _, info = detect_hits(frames, columns=slice(23, 1631))
    regions = {"edge": (slice(None), slice(100, 330)), "flat moon": (slice(57, 66), slice(497, 506)),
               "blurred moon": (slice(25, 36), slice(594, 607)),
               "cloud band": (slice(10, 60), slice(795, 865)),
               # rows 2..125: where this limb crosses a framelet's first or last row, its slanted
               # haze line stands above any 5x5 median that edge row allows and the compact
               # spike test (not the track test) flags 3 px there (as before the track test)
               "limb": (slice(2, 126), slice(1000, 1631))}
    for name, (rs, cs) in regions.items():
        assert not hits[:, :, rs, cs].any(), (name, np.argwhere(hits[:, :, rs, cs])[:5])
    assert info["tracks"] == 0  # (hot is not tested: this scene does not move between frames)


def test_tdi_hot_pixel_streaks_are_flagged_in_every_frame_and_column_offsets_are_not():
    """With TDI a hot pixel adds a faint streak TDI-stages long down its column in every frame
    (44M00040, TDI 32): below the per-frame threshold, found by the median over frames."""
    frames = scene(n_frames=12, n_bands=1, seed=5).astype(np.int16)
    streaks = [(300, 10, 32, 3), (700, 80, 32, 2), (1100, 50, 6, 5)]  # column, first row, length, excess
    for col, row, length, excess in streaks:
        frames[:, 0, row:row + length, col] += excess
    frames[:, 0, :, 900] += 3  # a column offset over the whole framelet: the dark step's, not hot
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    hits, hot, info = detect_hits(frames, columns=slice(23, 1631))
    for col, row, length, _ in streaks:
        assert hot[0, row:row + length, col].all(), (col, np.flatnonzero(hot[0, :, col]))
        assert hot[0, :, col].sum() <= length + 2, (col, hot[0, :, col].sum())
    assert not hot[0, :, 898:903].any()
    assert hot.sum() <= sum(s[2] for s in streaks) + 6  # nothing else (out of 206,000 px)
    assert info["fixed_pattern_threshold_raw"] == [3]  # max(2, ceil(4.5 x 1.2533 x 1.4826 / sqrt(12)))
    cal = calibrate(synthetic_raw(stack(frames), filters=("METHANE",)), units="DN", bad_pixels=False,
                    dark=False, flat=False)
    assert np.all(cal.flags[:, 0, 10:42, 300] & FLAG_HOT)
    assert not np.any(cal.flags[:, 0, :, 900] & FLAG_HOT)

def test_hot_pixels_repeat_in_every_frame():
    frames = scene(n_frames=8)
    frames[:, 1, 40, 900] = 180  # hot in every frame of GREEN
    frames[2, 1, 41, 901] = 180  # a one-off hit nearby
    cal = calibrate(synthetic_raw(stack(frames)), units="DN", bad_pixels=False, dark=False, flat=False)
    assert np.all(cal.flags[:, 1, 40, 900] & FLAG_HOT)
    assert not np.any(cal.flags[:, 0, 40, 900] & FLAG_HOT)
    assert not np.any(cal.flags[:, 1, 41, 901] & FLAG_HOT)
    assert cal.provenance["particle_hits"]["hot_px"]["GREEN"] >= 1


def test_inpaint_fills_flagged_pixels_only():
    frames = scene(n_frames=2)
    frames[0, 0, 50, 600] = 250 - 20  # a hit, not saturated
    cal = calibrate(synthetic_raw(stack(frames)), units="DN", bad_pixels=False, dark=False, flat=False)
    assert cal.flags[0, 0, 50, 600] & FLAG_PARTICLE_HIT
    filled = inpaint(cal)
    assert filled.steps[-1] == "inpaint"
    neighbours = cal.data[0, 0, 49:52, 599:602]
    assert abs(filled.data[0, 0, 50, 600] - np.median(neighbours)) < 30
    assert cal.data[0, 0, 50, 600] > 1000  # the input is untouched
    untouched = cal.valid
    assert np.array_equal(filled.data[untouched], cal.data[untouched])
    with pytest.raises(CalibrationError, match="already applied"):
        inpaint(filled)


# ----------------------------------------------------------------------------- steps and units

def test_steps_cannot_run_twice_or_out_of_order():
    raw = synthetic_raw(stack(scene(2)))
    cal = decompand(raw)
    flagged = mask_bad_pixels(cal)
    with pytest.raises(CalibrationError, match="already applied"):
        mask_bad_pixels(flagged)
    darked = subtract_dark(flagged)
    with pytest.raises(CalibrationError, match="must come before"):
        flag_particle_hits(darked)
    with pytest.raises(CalibrationError, match="needs 'exposure'"):
        to_radiance(darked)
    full = calibrate(raw)
    with pytest.raises(CalibrationError, match="already calibrated"):
        calibrate(full)
    with pytest.raises(CalibrationError, match="already calibrated"):
        decompand(full)
    with pytest.raises(CalibrationError, match="already applied"):
        normalise_exposure(full)
    assert full.steps == ("decompand", "bad_pixels", "particle_hits", "dark", "flat", "exposure")
    assert list(full.steps) == [s for s in STEPS if s in full.steps]


def test_step_functions_return_new_records_and_match_calibrate():
    raw = synthetic_raw(stack(scene(3)))
    cal = decompand(raw)
    before = cal.data.copy()
    chain = normalise_exposure(divide_flat(subtract_dark(flag_particle_hits(mask_bad_pixels(cal)))))
    assert np.array_equal(cal.data, before)  # inputs untouched
    assert cal.steps == ("decompand",)
    direct = calibrate(raw)
    assert chain.steps == direct.steps and chain.units == direct.units == "DN/ms"
    assert np.array_equal(chain.flags, direct.flags)
    np.testing.assert_allclose(chain.data, direct.data, rtol=1e-6)
    assert np.array_equal(chain.valid, direct.valid)


def test_units_chain_exact_factors():
    raw = synthetic_raw(stack(scene(2)), exposure_ms=12.8)
    dn = calibrate(raw, units="DN")
    per_ms = calibrate(raw, units="DN/ms")
    radiance = calibrate(raw, units="W/m^2/sr")
    reflectance = calibrate(raw, units="I/F")
    assert (dn.units, per_ms.units, radiance.units, reflectance.units) == ("DN", "DN/ms", "W/m^2/sr", "I/F")
    np.testing.assert_allclose(per_ms.data, dn.data / 12.8, rtol=1e-6, atol=1e-6)
    d_au = 7.4172e8 / AU_KM
    for b, band in enumerate(raw.meta.filters):
        factor = 1000.0 / RESPONSIVITY_DN_PER_S[band]
        np.testing.assert_allclose(radiance.data[:, b], per_ms.data[:, b] * factor, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(reflectance.data[:, b],
                                   radiance.data[:, b] * math.pi * d_au**2 / SOLAR_IRRADIANCE_1AU_W_M2[band],
                                   rtol=1e-5, atol=1e-9)
    other = to_reflectance(to_radiance(per_ms), solar_distance_km=2 * 7.4172e8)
    np.testing.assert_allclose(other.data, reflectance.data * 4, rtol=1e-5, atol=1e-9)
    assert reflectance.provenance["reflectance"]["solar_distance_km"] == pytest.approx(7.4172e8)


def test_reflectance_needs_a_solar_distance():
    raw = synthetic_raw(stack(scene(1)))
    meta = raw.meta.__class__(**{**raw.meta.__dict__, "solar_distance_km": None})
    with pytest.raises(CalibrationError, match="solar_distance_km"):
        calibrate(RawImage(meta=meta, pixels=raw.pixels), units="I/F")


def test_tdi_does_not_enter_the_exposure_normalisation():
    """EXPOSURE_DURATION already is TDI stages x 3.2 ms: DN/ms divides by it, nothing else."""
    raw = synthetic_raw(stack(scene(1)), exposure_ms=19.2)
    meta = raw.meta.__class__(**{**raw.meta.__dict__, "tdi_stages": 6})
    a = calibrate(RawImage(meta=meta, pixels=raw.pixels), units="DN/ms")
    b = calibrate(raw, units="DN/ms")
    assert np.array_equal(a.data, b.data)
    assert a.provenance["exposure"]["exposure_ms"] == 19.2


def test_hand_built_record_gets_flags():
    data = np.zeros((1, 1, 4, 4), np.float32)
    valid = np.ones(data.shape, bool)
    valid[0, 0, 1, 1] = False
    saturated = np.zeros(data.shape, bool)
    saturated[0, 0, 2, 2] = True
    meta = synthetic_raw(stack(scene(1, 1)), filters=("METHANE",)).meta
    rec = CalibratedImage(meta=meta, data=data, valid=valid, saturated=saturated, steps=("decompand",))
    assert rec.flags[0, 0, 1, 1] != 0 and rec.flags[0, 0, 2, 2] & FLAG_SATURATED
    with pytest.raises(CalibrationError, match="one 4-D shape"):
        CalibratedImage(meta=meta, data=data[0], valid=valid, saturated=saturated)


# ----------------------------------------------------------------------------- calibration files

def test_shipped_calibration_is_small_normalised_and_hashed():
    ref = resources.files("junoproc") / "data" / CALIBRATION_FILE
    blob = ref.read_bytes()
    assert len(blob) < 3 * 1024 * 1024
    cs = load_calibration(1)
    assert cs.files[CALIBRATION_FILE] == hashlib.sha256(blob).hexdigest()
    cols = photoactive_columns(1)
    for band in ("BLUE", "GREEN", "RED", "METHANE"):
        flat = cs.flat[band]
        assert flat.shape == (128, 1648) and flat.dtype == np.float32
        assert flat[:, cols].mean() == pytest.approx(1.0, abs=2e-4)
        assert np.all(flat[:, :cols.start] == 1) and np.all(flat[:, cols.stop:] == 1)
        assert 0.6 < flat[:, cols].min() and flat[:, cols].max() < 1.3
        assert cs.dark_columns[band].shape == (1648,)
    assert cs.blemish["RED"].sum() > 1000 and not cs.blemish["METHANE"].any()
    assert cs.known_hot["GREEN"].sum() > 100
    info = cs.info["methane_vignetting_model"]
    assert all(rms < 0.05 for rms in info["fit_rms_per_band"].values())


def test_binned_calibration_for_summed_products():
    cs2 = load_calibration(2)
    assert cs2.flat["RED"].shape == (64, 824) and cs2.blemish["RED"].shape == (64, 824)
    full = load_calibration(1).flat["RED"]
    np.testing.assert_allclose(cs2.flat["RED"][10, 100], full[20:22, 200:202].mean(), rtol=1e-6)
    frames = np.full((1, 3, 64, 824), 100, np.uint8)
    label_raw = synthetic_raw(frames.reshape(-1, 824), sampling=2)
    cal = calibrate(label_raw)
    assert cal.data.shape == (1, 3, 64, 824)
    with pytest.raises(CalibrationError, match="SAMPLING_FACTOR"):
        calibrate(label_raw, calibration=load_calibration(1))


def test_dark_is_estimated_from_sky_and_skipped_without_sky():
    frames = scene(3)
    frames[:, :, :, :800] = 3  # sky of 3 DN on the left half
    cal = calibrate(synthetic_raw(stack(frames)), units="DN", flat=False)
    for band in ("BLUE", "GREEN", "RED"):
        info = cal.provenance["dark"]["bands"][band]
        # every sky column, less the few the blemish masks take entirely
        assert info["applied"] and 800 - 23 - 5 <= info["sky_columns"] <= 800 - 23
    np.testing.assert_allclose(cal.data[:, :, :, 23:800][cal.valid[:, :, :, 23:800]], 0.0, atol=1e-5)
    bright = calibrate(synthetic_raw(stack(scene(3))), units="DN", flat=False)
    assert not bright.provenance["dark"]["bands"]["RED"]["applied"]


def test_provenance_is_json_serialisable():
    cal = calibrate(synthetic_raw(stack(scene(2))), units="I/F")
    text = json.dumps(dict(cal.provenance))
    assert CALIBRATION_FILE in text and "timings_s" in text


# ----------------------------------------------------------------------------- real data

REAL = ["perijove44/13544-ImageSet", "perijove44/13541-ImageSet", "perijove43/13537-ImageSet",
        "perijove43/13540-ImageSet.zip", "perijove44/13552-ImageSet.zip"]


@pytest.mark.parametrize("relative", REAL)
def test_every_real_product_calibrates(data_dir, relative):
    raw = load(data_dir / relative)
    cal = calibrate(raw, units="I/F")
    assert cal.data.shape == raw.framelets.shape and cal.data.dtype == np.float32
    assert cal.units == "I/F" and cal.steps[-1] == "reflectance"
    assert np.isfinite(cal.data).all()
    assert 0.9 < cal.valid.mean() < 0.99
    valid = cal.data[cal.valid]
    # the sky (the histogram's peak near 0; 35-95 % of the pixels) sits at 0: dark removed.
    # Measured peaks -0.0008..0 I/F; 44M00040's sky was at -2.3 DN when dark planet counted as sky
    counts, edges = np.histogram(valid, bins=400, range=(-0.004, 0.004))
    assert abs(edges[counts.argmax()] + 0.5 * (edges[1] - edges[0])) < 0.001
    assert 0.01 < np.percentile(valid, 99.9) < 0.6  # Jupiter's I/F, not DN
    for band, info in cal.provenance["dark"]["bands"].items():
        assert info["applied"], band
        assert 0.2 < info["mean_dn"] < 5.0
    assert cal.flag_counts()["particle_hit"] > 1000
    assert cal.provenance["flat"]["files"] == {CALIBRATION_FILE: load_calibration(1).files[CALIBRATION_FILE]}


def test_real_pj44_moon_is_not_a_particle_hit(data_dir):
    """13544 shows a small moon (~10 px) in the first frames: it must stay valid."""
    cal = calibrate(load(data_dir / "perijove44/13544-ImageSet"))
    red = cal.band_index("RED")
    moon = cal.data[0, red, 50:62, 444:452]
    assert moon.max() > 10 * np.median(cal.data[0, red, :, 1000:1100])
    assert not np.any(cal.flags[0, red, 50:62, 444:452] & FLAG_PARTICLE_HIT)


def _overlap_mismatch(cal: CalibratedImage, band: str, shift: int = 115, min_dn: float = 100.0,
                      pairs: range | None = None) -> float:
    """|log| brightness ratio of the ~13 rows that consecutive framelets of a band share
    (scene rows move ~115 px per frame), median over frame pairs; planet pixels only."""
    b = cal.band_index(band)
    x, v = cal.data[:, b], cal.valid[:, b]
    overlap = 128 - shift
    ratios = []
    for n in pairs if pairs is not None else range(x.shape[0] - 1):
        a, c = x[n, shift:], x[n + 1, :overlap]
        m = v[n, shift:] & v[n + 1, :overlap] & (a > min_dn) & (c > min_dn)
        if m.sum() > 1000:
            ratios.append(np.log(a[m].sum() / c[m].sum()))
    assert len(ratios) >= 5
    return abs(float(np.median(ratios)))


def test_real_flat_makes_framelet_overlaps_agree(data_dir):
    """Divided by the flat, the rows two framelets share agree better: 13544 measured
    BLUE 1.4 % -> 0.2 %, GREEN 0.7 % -> 0.1 %, RED 2.2 % -> 0.6 %."""
    raw = load(data_dir / "perijove44/13544-ImageSet")
    flat = calibrate(raw, units="DN")
    none = calibrate(raw, units="DN", flat=False)
    for band in ("BLUE", "GREEN", "RED"):
        assert _overlap_mismatch(flat, band) < 0.5 * _overlap_mismatch(none, band), band
        assert _overlap_mismatch(flat, band) < 0.01, band


def test_real_pj44_methane_dark_is_the_sky_not_the_dark_planet(data_dir):
    """44M00040: dark methane planet (3-6 DN) is under the 12-DN sky threshold; taking it for sky
    made the dark 3.34 DN where the sky is ~1 DN, so the sky frames came out at -2.3 DN."""
    cal = calibrate(load(data_dir / "perijove44/13552-ImageSet.zip"), units="DN")
    info = cal.provenance["dark"]["bands"]["METHANE"]
    assert info["applied"] and 0.7 < info["mean_dn"] < 1.5
    sky = cal.data[:3, 0, :, photoactive_columns(1)][cal.valid[:3, 0, :, photoactive_columns(1)]]
    assert abs(float(sky.mean())) < 0.3  # measured -0.14 DN (before: -2.27)


def test_package_level_calibrate_is_callable_even_after_importing_the_module():
    import sys

    import junoproc
    from junoproc.calibrate import companding_table  # noqa: F401  (imports the submodule)

    module = sys.modules["junoproc.calibrate"]
    raw = synthetic_raw(stack(scene(1)))
    assert junoproc.calibrate(raw, units="DN").units == "DN"
    assert module.calibrate(raw).units == "DN/ms"
    assert isinstance(junoproc.calibrate(raw), CalibratedImage)


def test_real_pj44_methane_tdi_streaks_are_all_flagged(data_dir):
    """44M00040 (TDI 32): ~400 hot-pixel streaks per framelet, the same in all 36 frames, made
    the dashes of its projected map. Pixels whose median excess over frames (less the column's)
    is >= 2: 2554; the per-frame test left 2136 of them valid, the fixed-pattern test none."""
    import cv2

    raw = load(data_dir / "perijove44/13552-ImageSet.zip")
    frames, cols = raw.framelets, photoactive_columns(raw.meta.sampling_factor)
    excess = np.stack([cv2.subtract(f, cv2.medianBlur(f, 5)) for f in frames[:, 0]])
    level = np.sort(excess, axis=0)[(len(frames) - 1) // 2].astype(int)
    level -= np.median(level, axis=0).astype(int)
    streak = np.zeros(level.shape, bool)
    streak[:, cols] = level[:, cols] >= 2
    assert streak.sum() > 2000
    _, hot, info = detect_hits(frames, columns=cols)
    assert not (streak & ~hot[0]).any()
    assert hot[0].sum() < 0.025 * hot[0].size  # measured 1.7 %: the streaks, not the scene
