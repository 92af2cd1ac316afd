"""Time limb detection and the no-CK spin solve on every real product (../shared/data)."""

from __future__ import annotations

import time

import spiceypy

from junoproc import pointing
from junoproc.paths import shared_data_dir
from junoproc.products import find_products, load_entry


def main() -> None:
    data = shared_data_dir()
    for path in sorted((data / "kernels").rglob("*")):
        if path.suffix.lower() in {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp"}:
            spiceypy.furnsh(str(path))
    for entry in find_products(data):
        if entry.missing:
            continue
        raw = load_entry(entry)
        t0 = time.perf_counter()
        pts = pointing.detect_limb(raw)
        t1 = time.perf_counter()
        try:
            sol = pointing.solve_pointing(raw, points=pts, max_axis_sigma_deg=90.0, refuse_ambiguous=False,
                                          max_rms_px=10.0)
        except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"{entry.product_id}: {err}")
            continue
        t2 = time.perf_counter()
        rms = " ".join(f"{b}={v:.3f}px(n={sol.n_points_by_band[b]})"
                       for b, v in sol.residuals_px_by_band.items())
        print(f"{entry.product_id}: detect {t1 - t0:.2f} s, solve {t2 - t1:.2f} s, {rms}, "
              f"axis sigma {sol.parameter_sigma.get('spin_axis_deg', float('nan')):.2f} deg")
    spiceypy.kclear()


if __name__ == "__main__":
    main()
