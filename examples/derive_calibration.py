"""Regenerate ``src/junoproc/data/junocam_calibration_v1.npz`` from the public calibration files.

Usage::

    .venv/bin/python examples/derive_calibration.py [SOURCE_DIR] [--kernels DIR] [-o OUT.npz]

SOURCE_DIR is the ``calibration/`` folder of the shared data (default:
``junoproc.paths.shared_data_dir() / "calibration"``); the JunoCam IK (for the optical
centre of each band, used by the METHANE vignetting model) is read from ``--kernels``
(default: the shared data's ``kernels/``). What is derived, and why, is written up in
``src/junoproc/data/PROVENANCE.md``; this script is the executable form of that note.

The package never reads SOURCE_DIR at run time: it reads only the npz written here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import spiceypy
import tifffile

from junoproc.calibrate import (
    CALIBRATION_FILE,
    FLAT_SCALE,
    HOT_PIXEL_DARK_EXCESS_DN,
    photoactive_columns,
)
from junoproc.camera import CameraModel
from junoproc.paths import shared_data_dir
from junoproc.products import CCD_SAMPLES, FRAMELET_ROWS

#: Band order of the files (kmgill's own config: 0 = blue, 1 = green, 2 = red; cosmas-heiss B,G,R rows).
RGB = ("BLUE", "GREEN", "RED")
#: Polynomial degree in r^2 of the radial vignetting model (r^2, r^4).
VIGNETTING_TERMS = 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise SystemExit(f"{path}: cannot read a single-channel image")
    return image


def inpaint_median(image: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace ``bad`` pixels by the median of their 5x5 neighbourhood (good pixels only, iterated)."""
    out = image.astype(np.float32).copy()
    todo = bad.copy()
    for _ in range(8):
        if not todo.any():
            break
        filled = np.where(todo, np.nan, out)
        padded = np.pad(filled, 2, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
        with warnings.catch_warnings():  # all-NaN windows are expected; they are filled next round
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(windows[todo], axis=(1, 2))
        ok = np.isfinite(med)
        idx = np.argwhere(todo)[ok]
        out[idx[:, 0], idx[:, 1]] = med[ok]
        todo[idx[:, 0], idx[:, 1]] = False
    return out


def normalise(image: np.ndarray, columns: slice) -> np.ndarray:
    """Mean 1 over the photoactive area, exactly 1 outside it."""
    out = np.ones_like(image, dtype=np.float64)
    out[:, columns] = image[:, columns] / image[:, columns].mean()
    return out


def radius_px(band: str, cameras: dict[str, CameraModel]) -> np.ndarray:
    """Distance (full-resolution px) of every framelet pixel centre from the band's optical centre."""
    cam = cameras[band]
    y, x = np.mgrid[0:FRAMELET_ROWS, 0:CCD_SAMPLES].astype(np.float64) + 0.5
    return np.hypot(x - cam.cx_px, y - cam.cy_px)


def fit_vignetting(flats: dict[str, np.ndarray], cameras: dict[str, CameraModel], columns: slice):
    """Least squares: flat_b(r) = s_b + sum_k c_k (r/1000)^(2k), one radial shape shared by the bands."""
    rows_a, rows_y = [], []
    for i, band in enumerate(RGB):
        rr = (radius_px(band, cameras)[:, columns] / 1000.0).ravel()
        design = np.zeros((rr.size, len(RGB) + VIGNETTING_TERMS))
        design[:, i] = 1.0
        for k in range(1, VIGNETTING_TERMS + 1):
            design[:, len(RGB) + k - 1] = rr ** (2 * k)
        rows_a.append(design)
        rows_y.append(flats[band][:, columns].ravel())
    design_all = np.vstack(rows_a)
    target = np.concatenate(rows_y)
    coef, *_ = np.linalg.lstsq(design_all, target, rcond=None)
    resid = target - design_all @ coef
    n = rows_y[0].size
    rms = {band: float(resid[i * n:(i + 1) * n].std()) for i, band in enumerate(RGB)}
    return coef, rms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=shared_data_dir() / "calibration")
    parser.add_argument("--kernels", type=Path, default=shared_data_dir() / "kernels")
    parser.add_argument("-o", "--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "src/junoproc/data" / CALIBRATION_FILE)
    args = parser.parse_args()
    src: Path = args.source
    columns = photoactive_columns(1)

    files = {
        **{f"flat_{b}": src / f"kmgill/junocam_rgb_flatfield_v3_{i}.png" for i, b in enumerate(RGB)},
        **{f"dark_{b}": src / f"kmgill/junocam_dark_pj28_v1_{b.lower()}.tif" for b in RGB},
        **{f"mask_{b}": src / f"kmgill/junocam_inpaint_mask_pj32_v1_{b.lower()}.png" for b in RGB},
        "bad_pixel_mask_BGR": src / "cosmas-heiss/BAD_PIXEL_MASK.png",
    }
    ik = sorted((args.kernels / "ik").glob("juno_junocam_v*.ti"))[-1]
    spiceypy.furnsh(str(ik))
    try:
        cameras = {b: CameraModel.from_pool(b) for b in (*RGB, "METHANE")}
    finally:
        spiceypy.unload(str(ik))

    cosmas = read_grey(files["bad_pixel_mask_BGR"]).reshape(len(RGB), FRAMELET_ROWS, CCD_SAMPLES) == 0
    out: dict[str, np.ndarray] = {}
    flats: dict[str, np.ndarray] = {}
    report: dict[str, dict[str, float]] = {}
    for i, band in enumerate(RGB):
        blemish = (read_grey(files[f"mask_{band}"]) == 255) | cosmas[i]
        flat = normalise(inpaint_median(read_grey(files[f"flat_{band}"]), blemish), columns)
        flats[band] = flat
        dark = tifffile.imread(files[f"dark_{band}"]).astype(np.float64)
        dark_column = np.median(dark, axis=0)
        hot = dark > (np.median(dark) + HOT_PIXEL_DARK_EXCESS_DN)
        hot[:, :columns.start] = False
        hot[:, columns.stop:] = False
        profile = np.ones(CCD_SAMPLES)
        profile[columns] = dark_column[columns] / dark_column[columns].mean()
        out[f"flat_{band}"] = np.round(flat * FLAT_SCALE).astype(np.uint16)
        out[f"dark_columns_{band}"] = profile.astype(np.float32)
        out[f"blemish_{band}"] = np.packbits(blemish)
        out[f"hot_{band}"] = np.packbits(hot)
        report[band] = {"blemish_px": int(blemish.sum()), "hot_px": int(hot.sum()),
                        "flat_min": float(flat[:, columns].min()), "flat_max": float(flat[:, columns].max()),
                        "dark_pj28_mean_dn": float(dark[:, columns].mean())}

    coef, rms = fit_vignetting(flats, cameras, columns)
    rr = radius_px("METHANE", cameras) / 1000.0
    offset = float(np.mean(coef[:len(RGB)]))  # the bands' own offsets differ by < 2 %
    model = offset + sum(coef[len(RGB) + k - 1] * rr ** (2 * k) for k in range(1, VIGNETTING_TERMS + 1))
    methane = normalise(model, columns)
    out["flat_METHANE"] = np.round(methane * FLAT_SCALE).astype(np.uint16)
    out["dark_columns_METHANE"] = np.ones(CCD_SAMPLES, np.float32)
    empty = np.zeros((FRAMELET_ROWS, CCD_SAMPLES), bool)
    out["blemish_METHANE"] = np.packbits(empty)
    out["hot_METHANE"] = np.packbits(empty)
    report["METHANE"] = {"flat_min": float(methane[:, columns].min()),
                         "flat_max": float(methane[:, columns].max())}

    info = {
        "version": 1,
        "shape": [FRAMELET_ROWS, CCD_SAMPLES],
        "flat_scale": FLAT_SCALE,
        "sources": {key: {"file": str(path.relative_to(src)), "sha256": sha256(path)}
                    for key, path in files.items()},
        "ik": {"file": ik.name, "sha256": sha256(ik)},
        "methane_vignetting_model": {
            "form": "flat_b(r) = s_b + c1 (r/1000)^2 + c2 (r/1000)^4, r = |px - (cx, cy_b)| in full-res px; "
                    "METHANE uses the mean s_b, then mean 1 over the photoactive area",
            "coefficients": [float(c) for c in coef[len(RGB):]],
            "band_scales": {b: float(coef[i]) for i, b in enumerate(RGB)},
            "fit_rms_per_band": rms,
            "optical_centres_px": {b: [cameras[b].cx_px, cameras[b].cy_px] for b in cameras},
        },
        "hot_pixel_dark_excess_dn": HOT_PIXEL_DARK_EXCESS_DN,
        "report": report,
    }
    out["info_json"] = np.frombuffer(json.dumps(info, sort_keys=True).encode(), np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(args.out)
    print(json.dumps({"written": str(args.out), "bytes": args.out.stat().st_size, "sha256": sha256(args.out),
                      "report": report, "vignetting_fit_rms": rms}, indent=1))


if __name__ == "__main__":
    main()
