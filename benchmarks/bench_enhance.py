"""Enhancement speed and memory on a 4000 x 4000 3-band linear map.

Target (issue #7): preset ``enhanced`` (the heaviest) under 1.5 s on a 2-core machine.

    .venv/bin/python benchmarks/bench_enhance.py [--size 4000] [--repeat 3] [--preset enhanced]

Prints the per-step times of each run (median over ``--repeat``), wall and CPU time (on
a machine shared with other jobs the wall time is inflated; CPU time / threads is the
uncontended floor, CPU time the ceiling), the peak of memory
allocated by numpy/OpenCV during one call (tracemalloc, which sees numpy buffers and the
arrays OpenCV returns) and the process's peak RSS. The synthetic map is a banded,
textured, limb-darkened disc with NaN outside it and incidence/emission backplanes, so
every step (photometric fit, flatten, CLAHE, ...) does real work.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc

import junoproc  # noqa: F401  (before cv2: it sets OpenCV's thread pool, see junoproc.runtime)

# isort: split
import cv2
import numpy as np

from junoproc.enhance import enhance
from junoproc.io import LinearMap

TARGET_S = 1.5


def synthetic_map(size: int, seed: int = 0) -> LinearMap:
    """A Jupiter-like disc: zonal bands, small storms, limb darkening, NaN outside."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2.0
    r = 0.47 * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    nx, ny = (xx - c) / r, (c - yy) / r
    rho2 = nx * nx + ny * ny
    inside = rho2 < 1.0
    nz = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    sun = np.array([0.5, 0.2, 0.84], np.float32)
    sun /= np.linalg.norm(sun)
    mu0 = nx * sun[0] + ny * sun[1] + nz * sun[2]
    incidence = np.degrees(np.arccos(np.clip(mu0, -1.0, 1.0))).astype(np.float32)
    emission = np.degrees(np.arccos(np.clip(nz, 0.0, 1.0))).astype(np.float32)
    small = rng.random((size // 16, size // 16), dtype=np.float32)
    texture = cv2.resize(cv2.GaussianBlur(small, (0, 0), 1.0), (size, size), interpolation=cv2.INTER_CUBIC)
    albedo = 0.55 + 0.12 * np.sin(ny * 19.0) + 0.1 * (texture - 0.5)
    shade = np.clip(mu0, 0.0, None) ** 0.9 * np.clip(nz, 1e-3, None) ** -0.1
    base = albedo * shade
    data = np.empty((size, size, 3), np.float32)
    for i, k in enumerate((0.40, 0.85, 1.25)):  # BLUE, GREEN, RED raw-DN-like response
        data[:, :, i] = base * k + rng.normal(0, 0.004, (size, size)).astype(np.float32)
    data[~inside] = np.nan
    incidence[~inside] = np.nan
    emission[~inside] = np.nan
    # planetocentric latitude / east longitude of the sphere (the night-side light model
    # of the jupitershine preset needs them, as it gets them from `junoproc project`)
    lat = np.degrees(np.arcsin(np.clip(ny, -1.0, 1.0))).astype(np.float32)
    lon = np.mod(np.degrees(np.arctan2(nx, nz)), 360.0).astype(np.float32)
    lat[~inside] = np.nan
    lon[~inside] = np.nan
    return LinearMap(
        data,
        ("BLUE", "GREEN", "RED"),
        {"incidence_deg": incidence, "emission_deg": emission, "lat_centric_deg": lat, "lon_east_deg": lon},
        {"perijove": 44},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", action="append", help="preset(s) to time (default: all)")
    args = ap.parse_args(argv)
    presets = args.preset or ["enhanced", "natural", "jupitershine"]

    t0 = time.perf_counter()
    lm = synthetic_map(args.size)
    print(f"synthetic {args.size} x {args.size} x 3 map built in {time.perf_counter() - t0:.2f} s")
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads; numpy {np.__version__}")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ok = True
    for preset in presets:
        enhance(lm, preset=preset)  # warm-up (first-touch allocations, OpenCV init)
        runs = []
        cpu = []
        for _ in range(args.repeat):
            c0 = time.process_time()
            comp = enhance(lm, preset=preset)
            cpu.append(time.process_time() - c0)
            runs.append(dict(comp.timings_s))
        tracemalloc.start()
        comp = enhance(lm, preset=preset)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        steps = [k for k in runs[0] if k != "total"]
        total = statistics.median(r["total"] for r in runs)
        load = os.getloadavg()[0]
        print(
            f"\npreset {preset}: total {total:.3f} s wall, {statistics.median(cpu):.3f} s CPU "
            f"(median of {args.repeat}; best wall {min(r['total'] for r in runs):.3f} s; "
            f"load average {load:.2f} on {os.cpu_count()} cores)"
        )
        for k in steps:
            print(f"  {k:12s} {statistics.median(r.get(k, 0.0) for r in runs) * 1000:8.1f} ms")
        print(f"  peak traced memory {peak / 2**20:8.1f} MiB (input map {lm.data.nbytes / 2**20:.0f} MiB)")
        print(f"  clipped highlights {comp.stats['clipped_high_fraction'] * 100:.3f} % of valid pixels")
        if preset == "enhanced" and total > TARGET_S:
            ok = False
            print(f"  ** slower than the {TARGET_S} s target **")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS {rss:.0f} MiB (after building the map: {rss0:.0f} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
