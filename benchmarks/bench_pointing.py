"""Time limb detection and the no-CK spin solve on every real product (../shared/data).

Prints per product: RMS per band (px) and points, the limb points' model (the edge model
and its measured blur, or half level), the spin axis's angle from Earth and
the orbit normal, its posterior and limb-only 1-sigma, the limb altitude, the quality
and the solve time (wall and CPU: the wall clock is inflated on a loaded machine; goal
< 3 s per image, band alignment included), and the band alignment: the shift measured
per band pair before the correction, what is left on held-out windows, the windows used
and the median phase-correlation peak.

Then the joint solve (one spin axis per pass, :func:`pointing.solve_from_limbs`) of all the
products on calibrated input, as the pipeline runs it: limbs detected per image, one joint
least squares, band alignment per image; CPU per image vs the same 3 s goal, the shared
axis, each image's axis tension and the band pairs' held-out residuals.
"""

from __future__ import annotations

import sys
import time

import spiceypy

from junoproc import pointing
from junoproc.paths import shared_data_dir
from junoproc.products import find_products, load_entry

GOAL_S = 3.0


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
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            sol = pointing.solve_pointing(raw, points=pts, refuse_ambiguous=False, max_rms_px=10.0)
        except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"{entry.product_id}: {err}")
            continue
        t2, c2 = time.perf_counter(), time.process_time()
        rms = " ".join(f"{b}={v:.3f}px(n={sol.n_points_by_band[b]})"
                       for b, v in sol.residuals_px_by_band.items())
        ax = sol.axis
        blur = sol.limb_edge_blur_px
        model = "half level" if blur is None else f"edge model, blur {blur:.2f} px"
        total_cpu = c2 - c1 + (t1 - t0)
        print(f"{entry.product_id}: detect {t1 - t0:.2f} s, solve {t2 - t1:.2f} s wall / {c2 - c1:.2f} s CPU "
              f"({'ok' if total_cpu < GOAL_S else 'SLOW'} vs {GOAL_S:.0f} s), {rms}; limb points {model}; "
              f"axis {ax.get('axis_from_earth_deg', float('nan')):.1f} deg from Earth, "
              f"{ax.get('axis_from_orbit_normal_deg', float('nan')):.1f} from orbit normal, sigma "
              f"{sol.parameter_sigma['spin_axis_deg']:.2f} deg (limb only "
              f"{sol.parameter_sigma['spin_axis_limb_only_deg']:.2f}); limb altitude {sol.limb_alt_km:.0f} "
              f"+- {sol.parameter_sigma.get('limb_alt_km', float('nan')):.0f} km; rate "
              f"{sol.attitude.rate_deg_s:.3f} deg/s; quality {sol.quality}; {list(sol.notes)}")
        al = sol.band_alignment
        for pair, shift in al.get("shift_px_by_pair", {}).items():
            print(f"    {pair}: shift ({shift[0]:+.3f}, {shift[1]:+.3f}) px -> held-out "
                  f"{al['check_px_by_pair'][pair]:.3f} px; windows {al['n_windows_by_pair'][pair]} fit / "
                  f"{al['n_check_by_pair'][pair]} held out; peak {al['peak_by_pair'][pair]:.2f}")
        if al:
            mrad = al["boresight_mrad_by_band"]
            print(f"    alignment {al['time_s']:.2f} s wall; boresight mrad "
                  + ", ".join(f"{b} ({v[0]:+.4f}, {v[1]:+.4f})" for b, v in mrad.items()))
    joint(data, keys)
    spiceypy.kclear()


def joint(data, keys: list[str]) -> None:
    from junoproc.calibrate import calibrate

    cals = [calibrate(load_entry(e)) for e in find_products(data)
            if not e.missing and (not keys or any(k in e.product_id for k in keys))]
    c0, t0 = time.process_time(), time.perf_counter()
    obs = [pointing.detect_limbs(c) for c in cals]
    c1, t1 = time.process_time(), time.perf_counter()
    sols = pointing.solve_from_limbs(obs, images=cals, on_error="return")
    c2, t2 = time.process_time(), time.perf_counter()
    n = max(len(cals), 1)
    cpu = (c2 - c0) / n
    print(f"joint: {n} images, detect {c1 - c0:.2f} s CPU ({t1 - t0:.2f} wall), solve {c2 - c1:.2f} s CPU "
          f"({t2 - t1:.2f} wall): {cpu:.2f} s CPU per image ({'ok' if cpu < GOAL_S else 'SLOW'} vs "
          f"{GOAL_S:.0f} s; wall inflated on a loaded machine)")
    for s in sols:
        if not isinstance(s, pointing.PointingSolution):
            print(f"  {s}")
            continue
        a, j = s.attitude, s.joint
        check = s.band_alignment.get("check_px_by_pair", {})
        print(f"  {s.product_id}: axis RA {a.spin_axis_ra_deg:.3f} Dec {a.spin_axis_dec_deg:.3f} shared by "
              f"{len(j.get('products', ()))}; tension {j.get('axis_tension_sigma', 0.0):.1f} sigma "
              f"({j.get('axis_tension_deg', 0.0):.2f} deg); limb RMS {s.rms_px:.3f} px; quality {s.quality}; "
              f"held-out band residuals " + ", ".join(f"{k} {v:.3f}" for k, v in check.items()) + " px"
              + (f"; alone: {j['solved_alone_because']}" if j.get("solved_alone_because") else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
