"""Reproduce the README's sample composite.

Uses the real PJ44 image JNCE_2022229_44C00032_V01 when the shared data folder is there
(../shared/data or $JUNOPROC_DATA), otherwise a simulated Jupiter scene made on the spot
(works offline anywhere). Says which, and where the result is.

    make example            # or: python examples/make_example.py [OUT]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from junoproc import pipeline, products
from junoproc.paths import shared_data_dir

EXAMPLE_PRODUCT = "JNCE_2022229_44C00032_V01"


def simulated_colour_weights(truth_json: Path) -> tuple[str, ...]:
    """Enhancement overrides for a simulated product: colour weights that undo the
    simulator's own band response (its ``truth.json``), as the per-perijove weights undo
    the real camera's. The simulator labels its products with a real perijove (44) but
    does not model that era's degraded blue, so those weights would turn it blue."""
    response = json.loads(truth_json.read_text())["radiometry"]["band_response"]
    green = float(response["GREEN"])
    return tuple(f"weights.{band}={green / float(r):.6g}" for band, r in sorted(response.items())
                 if band in ("BLUE", "GREEN", "RED"))


def main(out: str = "example-output") -> int:
    data = shared_data_dir()
    overrides: tuple[str, ...] = ()
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
        overrides = simulated_colour_weights(sim.truth_dir / "truth.json")
        source = (f"a SIMULATED Jupiter scene (no real data at {data}) in {folder}; colour weights "
                  f"from the simulator's band response: {' '.join(overrides)}")
    print(f"junoproc example: using {source}")
    entries = [e for e in products.find_products(folder) if not e.missing]
    options = pipeline.BuildOptions(out_dir=out, kernels=kernels, force=True, jobs=1, mosaic=False,
                                    enhance_overrides=overrides)
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
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
