"""Reproduce the README's sample composite.

Uses the real PJ44 image JNCE_2022229_44C00032_V01 when the shared data folder is there
(../shared/data or $JUNOPROC_DATA), otherwise a simulated Jupiter scene made on the spot
(works offline anywhere). Says which, and where the result is.

    make example            # or: python examples/make_example.py [OUT]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from junoproc import pipeline, products
from junoproc.paths import shared_data_dir

EXAMPLE_PRODUCT = "JNCE_2022229_44C00032_V01"


def main(out: str = "example-output") -> int:
    data = shared_data_dir()
    folder = data / "perijove44" / "13544-ImageSet"
    if folder.is_dir() and (data / "kernels").is_dir():
        source = f"real PJ44 image {EXAMPLE_PRODUCT} from {folder}"
        kernels = str(data / "kernels")
    else:
        from junoproc.simulate import simulate

        sim_root = Path(tempfile.mkdtemp(prefix="junoproc-sim-"))
        sim = simulate(sim_root, write_ck=False)
        folder = Path(sim.product_dir)
        kernels = str(sim.kernel_dir)
        source = f"a SIMULATED Jupiter scene (no real data at {data}) in {folder}"
    print(f"junoproc example: using {source}")
    entries = [e for e in products.find_products(folder) if not e.missing]
    options = pipeline.BuildOptions(out_dir=out, kernels=kernels, force=True, jobs=1, mosaic=False)
    result = pipeline.process_product(entries[0], options)
    if result.status != "done":
        print(f"junoproc example: failed: {result.message}", file=sys.stderr)
        return 1
    print(f"junoproc example: {result.product_id} in {result.seconds:.1f} s "
          f"(limb residual {result.limb_rms_px:.2f} px)")
    for name in result.outputs:
        print(f"  {Path(out) / result.product_id / name}")
    picture = Path(out) / result.product_id / f"{result.product_id}-perspective.png"
    print(f"junoproc example: the composite (the README's picture when the data is real): {picture}")
    if "SIMULATED" in source:
        print("junoproc example: note: the simulator does not model JunoCam's weak blue response, which "
              "the per-perijove colour weights correct, so the simulated composite looks blue")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
