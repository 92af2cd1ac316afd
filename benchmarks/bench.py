"""Per-stage wall time and peak memory of junoproc on the real images, against the goals.

    make bench          # or: python benchmarks/bench.py [--quick]

Each product runs in a fresh process (so peak RSS is that product's alone); then one
whole perijove folder is built with 2 workers. Goals come from the issues.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from junoproc import pipeline, products
from junoproc.paths import shared_data_dir

GOALS_S = {
    "decode+calibrate": 0.5,
    "pointing": 3.0,
    "geometry": 1.0,
    "project_equirectangular": 2.0,
    "per image end to end": 5.0,
    "perijove folder (2 cores)": 30.0,
}
GOAL_PEAK_MB = 2000.0


def _run_one(entry, out_dir: str, kernels: str, queue) -> None:
    options = pipeline.BuildOptions(out_dir=out_dir, kernels=kernels, force=True, jobs=1, mosaic=False)
    result = pipeline.process_product(entry, options)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    queue.put((result, peak_mb))


def bench_products(data: Path, out: Path) -> None:
    kernels = str(data / "kernels")
    ctx = mp.get_context("fork")
    print(f"{'product':28s} {'stage':26s} {'s':>7s} {'goal':>6s}")
    for folder in ("perijove43", "perijove44"):
        for entry in products.find_products(data / folder):
            if entry.missing:
                print(f"{entry.product_id:28s} (skipped: no {entry.missing})")
                continue
            queue = ctx.Queue()
            proc = ctx.Process(target=_run_one, args=(entry, str(out), kernels, queue))
            proc.start()
            result, peak_mb = queue.get()
            proc.join()
            st = dict(result.stage_seconds)
            st["decode+calibrate"] = st.get("decode", 0) + st.get("calibrate", 0)
            for stage, secs in st.items():
                goal = GOALS_S.get(stage)
                flag = "" if goal is None else ("ok" if secs <= goal else "SLOW")
                print(f"{entry.product_id:28s} {stage:26s} {secs:7.3f} {goal or '':>6} {flag}")
            goal = GOALS_S["per image end to end"]
            print(f"{entry.product_id:28s} {'per image end to end':26s} {result.seconds:7.3f} "
                  f"{goal:>6} {'ok' if result.seconds <= goal else 'SLOW'}  [{result.status}]")
            print(f"{entry.product_id:28s} {'peak memory MB':26s} {peak_mb:7.0f} {GOAL_PEAK_MB:>6.0f} "
                  f"{'ok' if peak_mb <= GOAL_PEAK_MB else 'HIGH'}")


def bench_folder(data: Path, out: Path) -> None:
    for folder in ("perijove44", "perijove43"):
        t0 = time.perf_counter()
        report = pipeline.build(data / folder, pipeline.BuildOptions(
            out_dir=str(out / folder), kernels=str(data / "kernels"), force=True, jobs=2), progress=False)
        secs = time.perf_counter() - t0
        goal = GOALS_S["perijove folder (2 cores)"]
        n = sum(r.status == "done" for r in report.results)
        print(f"{folder:28s} {'perijove folder (2 cores)':26s} {secs:7.2f} {goal:>6} "
              f"{'ok' if secs <= goal else 'SLOW'}  [{n} images built]")


def main(argv: list[str]) -> int:
    data = shared_data_dir()
    if not (data / "kernels").is_dir():
        print(f"bench: no real data at {data} (set JUNOPROC_DATA)", file=sys.stderr)
        return 1
    out = Path(tempfile.mkdtemp(prefix="junoproc-bench-"))
    try:
        bench_products(data, out)
        if "--quick" not in argv:
            bench_folder(data, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
