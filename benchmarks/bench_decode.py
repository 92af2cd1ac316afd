"""Decode + calibrate timing and memory for every real product, against the goal.

Usage::

    .venv/bin/python benchmarks/bench_decode.py [DATA_DIR] [--repeat N] [--json OUT.json]

Goal (issue #2): decode + calibrate of JNCE_2022229_44C00032_V01 (66 framelets) in under
0.5 s wall and under 500 MB peak on the 2-core development machine.

For each product: wall time of each decode step (pairing, reading, PNG/IMG decode) and
each calibration step (``provenance["timings_s"]``), best and median of ``--repeat`` runs
(wall times on a shared machine are noisy; the best run is the least disturbed), the
process CPU time of the same run, and the peak memory of one extra run: the
tracemalloc peak (numpy buffers included) and the process's max RSS so far.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import junoproc  # noqa: F401  (before cv2: it sets OpenCV's thread pool, see junoproc.runtime)

# isort: split
import cv2

from junoproc.calibrate import calibrate, load_calibration
from junoproc.paths import shared_data_dir
from junoproc.products import (
    MAX_METADATA_BYTES,
    decode_img,
    decode_png,
    find_products,
    load,
    parse_metadata,
    read_bytes,
    read_pds3_label,
    read_site_json,
)

GOAL_PRODUCT = "JNCE_2022229_44C00032_V01"
GOAL_WALL_S = 0.5
GOAL_PEAK_MB = 500.0


def _decode_steps(entry) -> dict[str, float]:
    """Time the pieces of load() separately (same calls load() makes)."""
    times: dict[str, float] = {}
    tic = time.perf_counter()
    meta_bytes = read_bytes(entry.metadata, limit=MAX_METADATA_BYTES)
    label = (read_pds3_label if entry.kind == "pds3" else read_site_json)(meta_bytes, path=entry.metadata)
    meta = parse_metadata(label, path=str(entry.metadata))
    times["metadata"] = time.perf_counter() - tic
    tic = time.perf_counter()
    raw_bytes = read_bytes(entry.raw)
    times["read_raw"] = time.perf_counter() - tic
    tic = time.perf_counter()
    if entry.kind == "pds3":
        decode_img(raw_bytes, meta, path=entry.raw)
    else:
        decode_png(raw_bytes, path=entry.raw)
    times["decode"] = time.perf_counter() - tic
    return times


def _one_run(path: Path, entry) -> dict[str, float]:
    cpu0 = time.process_time()
    tic = time.perf_counter()
    raw = load(path)
    t_load = time.perf_counter() - tic
    tic = time.perf_counter()
    cal = calibrate(raw)
    t_cal = time.perf_counter() - tic
    cpu = time.process_time() - cpu0
    out = {"load": t_load, "calibrate": t_cal, "total": t_load + t_cal, "cpu_total": cpu}
    out.update({f"cal.{k}": v for k, v in cal.provenance["timings_s"].items()})
    out.update({f"load.{k}": v for k, v in _decode_steps(entry).items()})
    return out


def _peak_memory(path: Path) -> tuple[float, float]:
    """(tracemalloc peak MB of one load + calibrate, the process's max RSS so far in MB)."""
    tracemalloc.start()
    cal = calibrate(load(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del cal
    return peak / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=shared_data_dir())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    load_calibration(1)  # one-off cost (package data), not per image
    print(f"junoproc decode+calibrate benchmark: {os.cpu_count()} cores, cv2 threads {cv2.getNumThreads()}, "
          f"load average {os.getloadavg()[0]:.1f}, {args.repeat} runs per product")
    entries = [e for e in find_products(args.data) if e.complete]
    results = {}
    order = sorted(entries, key=lambda e: e.product_id != GOAL_PRODUCT)
    for entry in order:
        path = Path(entry.raw.path)  # the PNG, or the zip holding it
        runs = [_one_run(path, entry) for _ in range(max(1, args.repeat))]
        best = min(runs, key=lambda r: r["total"])
        median_total = statistics.median(r["total"] for r in runs)
        peak_mb, rss_mb = _peak_memory(path)
        raw = load(path)
        results[entry.product_id] = {"frames": raw.meta.n_frames, "filters": list(raw.meta.filters),
                                     "framelets": raw.meta.n_frames * raw.meta.n_filters,
                                     "best": best, "median_total": median_total,
                                     "tracemalloc_peak_mb": peak_mb, "process_maxrss_mb": rss_mb}
        steps = "  ".join(f"{k.split('.', 1)[1]} {v * 1000:.0f}" for k, v in best.items() if "." in k)
        print(f"\n{entry.product_id}: {raw.meta.n_frames} frames x {len(raw.meta.filters)} "
              f"({'/'.join(raw.meta.filters)}) from {entry.raw}")
        print(f"  best of {len(runs)}: load {best['load']:.3f} s + calibrate {best['calibrate']:.3f} s = "
              f"{best['total']:.3f} s (median {median_total:.3f} s; CPU {best['cpu_total']:.3f} s)")
        print(f"  steps, ms: {steps}")
        print(f"  peak memory: tracemalloc {peak_mb:.0f} MB (arrays of this product); process max RSS so far "
              f"{rss_mb:.0f} MB (Python, numpy, OpenCV included)")
    goal = results.get(GOAL_PRODUCT)
    status = 0
    if goal is not None:
        ok_time = goal["best"]["total"] < GOAL_WALL_S
        ok_mem = goal["tracemalloc_peak_mb"] < GOAL_PEAK_MB
        print(f"\nGOAL {GOAL_PRODUCT}: {goal['best']['total']:.3f} s (< {GOAL_WALL_S} s: "
              f"{'met' if ok_time else 'MISSED'}), peak {goal['tracemalloc_peak_mb']:.0f} MB "
              f"(< {GOAL_PEAK_MB:.0f} MB: {'met' if ok_mem else 'MISSED'})")
        status = 0 if ok_time and ok_mem else 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
