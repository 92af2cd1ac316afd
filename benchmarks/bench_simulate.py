"""Time of the simulator on the issue's case: a 22-frame RGB Jupiter product (goal < 10 s)."""

from __future__ import annotations

import shutil
import tempfile
import time

from junoproc.paths import shared_data_dir
from junoproc.simulate import simulate

GOAL_S = 10.0


def main() -> None:
    out = tempfile.mkdtemp(prefix="junoproc-bench-sim-")
    kernels = shared_data_dir() / "kernels"
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        product = simulate(out, kernel_dir=kernels if kernels.is_dir() else None, seed=3)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        flag = "ok" if wall <= GOAL_S else "SLOW"
        print(f"simulate {product.n_frames}-frame {','.join(product.filters)}: {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU (goal {GOAL_S:.0f} s) {flag}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
