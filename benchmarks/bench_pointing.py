"""Time limb detection and the no-CK spin solve on every real product (../shared/data).

Prints per product: RMS per band (px) and points, the spin axis's angle from Earth and
the orbit normal, its posterior and limb-only 1-sigma, the limb altitude, the quality
and the solve time.
"""

from __future__ import annotations

import sys
import time

import spiceypy

from junoproc import pointing
from junoproc.paths import shared_data_dir
from junoproc.products import find_products, load_entry


def main(keys: list[str]) -> None:
    data = shared_data_dir()
    for path in sorted((data / "kernels").rglob("*")):
        if path.suffix.lower() in {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp"}:
            spiceypy.furnsh(str(path))
    for entry in find_products(data):
        if entry.missing or (keys and not any(k in entry.product_id for k in keys)):
            continue
        raw = load_entry(entry)
        t0 = time.perf_counter()
        pts = pointing.detect_limb(raw)
        t1 = time.perf_counter()
        try:
            sol = pointing.solve_pointing(raw, points=pts, refuse_ambiguous=False, max_rms_px=10.0)
        except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"{entry.product_id}: {err}")
            continue
        t2 = time.perf_counter()
        rms = " ".join(f"{b}={v:.3f}px(n={sol.n_points_by_band[b]})"
                       for b, v in sol.residuals_px_by_band.items())
        ax = sol.axis
        print(f"{entry.product_id}: detect {t1 - t0:.2f} s, solve {t2 - t1:.2f} s, {rms}; "
              f"axis {ax.get('axis_from_earth_deg', float('nan')):.1f} deg from Earth, "
              f"{ax.get('axis_from_orbit_normal_deg', float('nan')):.1f} from orbit normal, sigma "
              f"{sol.parameter_sigma['spin_axis_deg']:.2f} deg (limb only "
              f"{sol.parameter_sigma['spin_axis_limb_only_deg']:.2f}); limb altitude {sol.limb_alt_km:.0f} "
              f"+- {sol.parameter_sigma.get('limb_alt_km', float('nan')):.0f} km; rate "
              f"{sol.attitude.rate_deg_s:.3f} deg/s; quality {sol.quality}; {list(sol.notes)}")
    spiceypy.kclear()


if __name__ == "__main__":
    main(sys.argv[1:])
