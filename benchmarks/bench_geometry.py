"""Geometry speed on the real PJ43/PJ44 products: per-step wall and CPU times, peak memory.

    .venv/bin/python benchmarks/bench_geometry.py [--workers N] [--repeat R]

Goal (issue #3): ``ImageGeometry.all_backplanes()`` for the 66 framelets of
JNCE_2022229_44C00032_V01 (22 frames x 3 bands x 128 x 1648 px) in < 1 s on the 2-core
development machine, SPICE once per frame. The attitude is made up (camera pointed beside
Jupiter's centre, ~88% of the pixels on the planet: the expensive case), as the real data
has no CK. Also reported: the inverse (surface -> pixel, the projection's hot path) in
points/s, and one pixel located (``junoproc locate``'s path).

Each product runs in a fresh process so its peak RSS is its own. "cold" is the first call
in the process (it pays for first-touching ~0.5 GB of output pages; on the development VM
that touch is slow), "warm" the best of the repeats. CPU s / wall s ~ the cores used; on a
shared machine the wall time depends on the neighbours (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

GOAL_ALL_BACKPLANES_S = 1.0
PRODUCTS = {
    "JNCE_2022229_44C00032_V01": "perijove44/13544-ImageSet/DataSet/13544-Metadata.json",
    "JNCE_2022186_43C00078_V01": "perijove43/13537-ImageSet/DataSet/13537-Metadata.json",
}


def _rss_mb(key: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    """Reset the process's peak RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class _Step:
    """Wall time, CPU time and the peak RSS (process, MB) of one step.

    (tracemalloc would trace numpy too but slows its many temporaries 2-3x.)
    """

    def __init__(self, rows: list[tuple[str, float, float, float, str]], name: str, note: str = ""):
        self.rows, self.name, self.note = rows, name, note

    def __enter__(self) -> _Step:
        _reset_peak()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.rows.append((self.name, wall, cpu, _rss_mb(), self.note))
        self.seconds = wall


def _look_beside(target: str, et: float, offset_radii: float = 0.6) -> np.ndarray:
    import spiceypy

    pos, _ = spiceypy.spkpos(target, et, "J2000", "LT+S", "JUNO")
    dist = float(np.linalg.norm(pos))
    alpha = offset_radii * np.arcsin(max(spiceypy.bodvrd(target, "RADII", 3)[1]) / dist)
    z = np.asarray(pos) / dist
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    ry = np.array([[np.cos(alpha), 0, np.sin(alpha)], [0, 1, 0], [-np.sin(alpha), 0, np.cos(alpha)]])
    return ry @ np.stack([x, np.cross(z, x), z])


def bench_product(product_id: str, data: Path, workers: int | None, repeat: int, queue) -> None:
    import spiceypy

    from junoproc.camera import FrameTiming
    from junoproc.geometry import FixedAttitude, body_from_lonlat, image_geometry, is_visible, locate_pixels
    from junoproc.products import parse_metadata

    rows: list[tuple[str, float, float, float, str]] = []
    meta_path = data / PRODUCTS[product_id]
    meta = parse_metadata(json.loads(meta_path.read_text()), path=str(meta_path))
    n_px = meta.n_frames * meta.n_filters * 128 * 1648
    with _Step(rows, "furnish kernels"):
        for path in sorted((data / "kernels").rglob("*")):
            if path.suffix in {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp", ".bc"}:
                spiceypy.furnsh(str(path))
    ets = FrameTiming.for_product(meta).frame_et(np.arange(meta.n_frames))
    att = FixedAttitude(tuple(float(e) for e in ets),
                        tuple(tuple(map(tuple, _look_beside("JUPITER", float(e)))) for e in ets))
    with _Step(rows, "image_geometry (SPICE per frame)", f"{meta.n_frames} frames"):
        geom = image_geometry(meta, att)
    with _Step(rows, "camera rays + tiles (once per band)"):
        for cam in geom.cameras.values():
            _ = cam.framelet_ray_tiles
    with _Step(rows, "all_backplanes cold (1st call)", f"{n_px / 1e6:.1f} Mpx") as step:
        bp = geom.all_backplanes(workers=workers)
    cold = step.seconds
    hit_fraction = float(bp["hit"].mean())
    del bp
    warm = []
    for i in range(repeat):
        note = f"{meta.n_frames * meta.n_filters} framelets"
        with _Step(rows, f"all_backplanes warm #{i + 1}", note) as step:
            bp = geom.all_backplanes(workers=workers)
        warm.append(step.seconds)
        del bp
    with _Step(rows, "all_backplanes 1 thread", "same work, workers=1"):
        bp = geom.all_backplanes(workers=1)
        del bp
    with _Step(rows, "framelet_backplanes (1 framelet, float64)"):
        geom.framelet_backplanes(meta.n_frames // 2, meta.filters[0])
    # the inverse on a map-like set of points on the visible hemisphere of the mid frame
    frame = meta.n_frames // 2
    lat, lon = np.meshgrid(np.linspace(-80, 80, 1000), np.linspace(0, 360, 2000, endpoint=False),
                           indexing="ij")
    pos = body_from_lonlat(lat, lon, geom.target)
    pos = pos[is_visible(pos, geom.observer_pos_body_km(frame), geom.target)]
    xyz = [np.ascontiguousarray(pos[:, i]) for i in range(3)]
    n_inv = len(pos)
    geom.surface_to_px_xyz(frame, meta.filters[0], *xyz, workers=workers)
    inverse = {}
    for label, w in (("all threads", workers), ("1 thread", 1)):
        with _Step(rows, f"surface_to_px_xyz {label}", f"{n_inv / 1e6:.2f} M points") as step:
            geom.surface_to_px_xyz(frame, meta.filters[0], *xyz, workers=w)
        inverse[label] = n_inv / step.seconds
    with _Step(rows, "surface_to_px (N, 3)", f"{n_inv / 1e6:.2f} M points") as step:
        geom.surface_to_px(frame, meta.filters[0], pos, workers=workers)
    inverse["(N, 3) input"] = n_inv / step.seconds
    with _Step(rows, "locate_pixels (3 pixels, 1 frame)"):
        locate_pixels(meta, att, frame, meta.filters[0], [100.5, 824.5, 1500.5], [64.5, 64.5, 64.5])
    queue.put({"product_id": product_id, "rows": rows, "cold": cold, "warm": min(warm) if warm else cold,
               "n_px": n_px, "hit_fraction": hit_fraction, "inverse": inverse,
               "peak_rss_mb": max(row[3] for row in rows)})


def main() -> None:
    from junoproc.paths import shared_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="threads [the CPUs this process may use]")
    parser.add_argument("--repeat", type=int, default=3, help="warm repeats [3]")
    args = parser.parse_args()
    data = shared_data_dir()
    cpus = len(os.sched_getaffinity(0))
    print(f"cpus {cpus}, workers {args.workers or cpus}, load average {os.getloadavg()[0]:.2f} "
          f"(other processes slow the wall times)")
    ctx = mp.get_context("spawn")
    ok = True
    for product_id in PRODUCTS:
        queue = ctx.Queue()
        proc = ctx.Process(target=bench_product, args=(product_id, data, args.workers, args.repeat, queue))
        proc.start()
        res = queue.get()
        proc.join()
        print(f"\n{product_id}: {res['n_px'] / 1e6:.1f} Mpx, {100 * res['hit_fraction']:.0f}% on the planet")
        print(f"  {'step':44s} {'wall s':>8s} {'cpu s':>8s} {'peak RSS MB':>11s}")
        for name, wall, cpu, peak, note in res["rows"]:
            print(f"  {name:44s} {wall:8.3f} {cpu:8.3f} {peak:11.0f}  {note}")
        per_66 = res["warm"] * 66 * 128 * 1648 / res["n_px"]
        verdict = "ok" if per_66 < GOAL_ALL_BACKPLANES_S else "SLOW"
        ok &= per_66 < GOAL_ALL_BACKPLANES_S
        print(f"  all_backplanes: warm {res['warm']:.3f} s, cold {res['cold']:.3f} s; scaled to 66 framelets "
              f"{per_66:.3f} s (goal < {GOAL_ALL_BACKPLANES_S} s) {verdict}; "
              f"{res['n_px'] / res['warm'] / 1e6:.1f} Mpx/s")
        print("  inverse surface -> px: " + ", ".join(f"{k} {v / 1e6:.1f} M points/s"
                                                       for k, v in res["inverse"].items()))
        print(f"  peak RSS {res['peak_rss_mb']:.0f} MB")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
